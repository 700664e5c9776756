# shellcheck shell=bash
# The passphrase Pulumi's local backend encrypts the stack's secrets with (the SSH keys, the tunnel keys, the swarm
# key, the AWS access key): never a fixed one. Sourced by scripts/setup.sh.
#
# plexcdn_local_passphrase: with PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE already set, keeps
# yours. Otherwise uses (or first makes, from 32 random bytes) ~/.config/plex-cdn/pulumi-passphrase, mode 0600,
# outside the repository, and exports PULUMI_CONFIG_PASSPHRASE_FILE, which Pulumi reads itself. Refuses a file
# inside the repository or one other accounts can read. Keep a copy somewhere safe: without it the stack's
# secrets cannot be decrypted.
plexcdn_local_passphrase() {
    local repository=$1 file mode
    if [ -n "${PULUMI_CONFIG_PASSPHRASE:-}" ]; then
        return 0
    fi
    file=${PULUMI_CONFIG_PASSPHRASE_FILE:-${XDG_CONFIG_HOME:-$HOME/.config}/plex-cdn/pulumi-passphrase}
    case "$(realpath -m "$file")/" in
        "$(realpath -m "$repository")"/*)
            echo "plex-cdn setup: $file is inside the repository; keep the passphrase outside it" >&2
            return 1
            ;;
    esac
    if [ ! -e "$file" ]; then
        (
            umask 077
            mkdir -p "$(dirname "$file")"
            head -c 32 /dev/urandom | base64 > "$file.new"
            mv "$file.new" "$file"
        )
        echo "plex-cdn setup: made a passphrase for the local backend in $file (mode 0600); keep a copy somewhere safe"
    fi
    mode=$(stat -c '%a' "$file")
    if [ "$mode" != 600 ] && [ "$mode" != 400 ]; then
        echo "plex-cdn setup: $file has mode $mode; other accounts must not read it (chmod 600 $file)" >&2
        return 1
    fi
    if [ ! -s "$file" ]; then
        echo "plex-cdn setup: $file is empty" >&2
        return 1
    fi
    export PULUMI_CONFIG_PASSPHRASE_FILE=$file
}
