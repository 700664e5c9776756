#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for plex-cdn, then checks and renders the example stack.
# Needs root (or sudo) for the Debian packages; everything Python goes into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    python3 python3-venv python3-pip
    nginx cloud-init wireguard-tools openssl ca-certificates curl
    iproute2 iputils-ping procps psmisc iperf3
    pebble openssh-server openssh-client ffmpeg shellcheck nftables fuse3 gpg gcc strace
    qemu-system-x86 qemu-utils mmdebstrap cloud-image-utils e2fsprogs
)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if command -v apt-get >/dev/null; then
    missing=()
    for package in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "plex-cdn setup: installing ${missing[*]}"
        as_root apt-get update -qq
        # Installing nginx must not start a system nginx on ports the labs use.
        as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
# The certificate lab runs the certbot a POP installs (pinned, in a virtualenv of its own).
.venv/bin/python -m labs.cert_lab venv >/dev/null
# The TLS checks run sslyze, pinned, in a virtualenv of its own (its cryptography pin differs from ours).
.venv/bin/python -m labs.tls_scan venv >/dev/null
# The private-swarm lab's js-libp2p peers (kubo itself cannot be installed from the package registries).
# They need Node.js 20 or newer; Debian 12's own is 18, on which the lab reports why it skips.
if ! command -v npm >/dev/null && command -v apt-get >/dev/null; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if command -v npm >/dev/null; then
    npm ci --prefix labs/libp2p --no-audit --no-fund --loglevel=error
fi

echo "plex-cdn setup: validating and rendering Pulumi.dev.yaml"
.venv/bin/python -m plexcdn validate Pulumi.dev.yaml
rm -rf out/dev
.venv/bin/python -m plexcdn render Pulumi.dev.yaml --out out/dev >/dev/null
for file in out/dev/*/cloud-init.yaml; do
    cloud-init schema --config-file "$file" >/dev/null
done
echo "plex-cdn setup: rendered into out/dev ($(ls out/dev | tr '\n' ' ')); each cloud-init.yaml passes cloud-init schema"

if command -v pulumi >/dev/null; then
    echo "plex-cdn setup: Pulumi CLI found; previewing the dev stack on a local backend in .pulumi-local/"
    mkdir -p .pulumi-local
    export PULUMI_BACKEND_URL="file://$PWD/.pulumi-local"
    # shellcheck source=scripts/local-passphrase.sh
    . scripts/local-passphrase.sh
    plexcdn_local_passphrase "$PWD"
    pulumi stack select dev --create --non-interactive
    pulumi preview --non-interactive --diff || {
        echo "plex-cdn setup: the preview needs AWS credentials for the Route53 zone lookup and provider tokens"
        echo "  (see README.md: Deploying); the offline render above is complete without them."
    }
else
    echo "plex-cdn setup: no Pulumi CLI on PATH; skipping 'pulumi preview' (install it from pulumi.com to deploy)"
fi
