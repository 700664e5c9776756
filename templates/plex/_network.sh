{% raw %}
# Addresses and networks as Plex's network settings write them: an address, ADDRESS/PREFIX, or (IPv4)
# ADDRESS/NETMASK. Results go into globals, so no subshell is needed.

# plexcdn_ipv4 TEXT: sets plexcdn_v4 to the dotted quad TEXT as a number; fails on anything else.
plexcdn_ipv4() {
    local -a parts
    local part number=0
    [[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || return 1
    IFS=. read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        if ((10#$part > 255)); then
            return 1
        fi
        number=$((number * 256 + 10#$part))
    done
    plexcdn_v4=$number
}

# plexcdn_ipv6 TEXT: sets plexcdn_v6 to the eight 16-bit groups of the IPv6 address TEXT; fails on anything else
# (an embedded IPv4 suffix or a zone included: Plex's lists do not use them).
plexcdn_ipv6() {
    local text=${1,,} group missing
    local -a head=() tail=()
    plexcdn_v6=()
    [[ $text =~ ^[0-9a-f:]+$ && $text == *:* ]] || return 1
    if [[ ($text == :* && $text != ::*) || ($text == *: && $text != *::) ]]; then
        return 1
    fi
    if [[ $text == *::* ]]; then
        [[ ${text#*::} != *::* ]] || return 1
        if [[ -n ${text%%::*} ]]; then
            IFS=: read -r -a head <<<"${text%%::*}"
        fi
        if [[ -n ${text#*::} ]]; then
            IFS=: read -r -a tail <<<"${text#*::}"
        fi
        missing=$((8 - ${#head[@]} - ${#tail[@]}))
        ((missing >= 1)) || return 1
        while ((missing > 0)); do
            head+=(0)
            missing=$((missing - 1))
        done
        head+=("${tail[@]}")
    else
        IFS=: read -r -a head <<<"$text"
        ((${#head[@]} == 8)) || return 1
    fi
    for group in "${head[@]}"; do
        [[ $group =~ ^[0-9a-f]{1,4}$ ]] || return 1
        plexcdn_v6+=($((16#$group)))
    done
}

# plexcdn_network_holds NETWORK ADDRESS: whether ADDRESS lies in NETWORK. Status 1: it does not (or the families
# differ); status 2: NETWORK is not a network Plex would understand.
plexcdn_network_holds() {
    local base=${1%%/*} suffix="" mask take index
    local -a network
    if [[ $1 == */* ]]; then
        suffix=${1#*/}
    fi
    if plexcdn_ipv4 "$base"; then
        network=("$plexcdn_v4")
        if [[ -z $suffix ]]; then
            mask=4294967295
        elif [[ $suffix =~ ^[0-9]{1,2}$ ]] && ((10#$suffix <= 32)); then
            mask=$(((4294967295 << (32 - 10#$suffix)) & 4294967295))
        elif plexcdn_ipv4 "$suffix"; then
            mask=$plexcdn_v4
        else
            return 2
        fi
        plexcdn_ipv4 "$2" || return 1
        (((network[0] & mask) == (plexcdn_v4 & mask)))
        return
    fi
    if plexcdn_ipv6 "$base"; then
        network=("${plexcdn_v6[@]}")
        take=128
        if [[ -n $suffix ]]; then
            if [[ ! $suffix =~ ^[0-9]{1,3}$ ]] || ((10#$suffix > 128)); then
                return 2
            fi
            take=$((10#$suffix))
        fi
        plexcdn_ipv6 "$2" || return 1
        for ((index = 0; index < 8 && take > 0; index++)); do
            if ((take >= 16)); then
                mask=65535
            else
                mask=$(((65535 << (16 - take)) & 65535))
            fi
            if (((network[index] & mask) != (plexcdn_v6[index] & mask))); then
                return 1
            fi
            take=$((take - 16))
        done
        return 0
    fi
    return 2
}
{% endraw %}
