"""nftables for the WireGuard tunnels the Plex host at home carries: the machine at the other end of a tunnel (a
hub POP, a cloud transcode slave) reaches the port its role needs on the Plex host, and nothing else there or
behind it.

Without this, a tunnel peer comes in from a private address on an interface no firewall rule names: a compromised
hub or cloud slave could reach SSH, NFS, Plex and the home network through the Plex host. The rules travel inside
the tunnel's own wg-quick config, as PreUp/PostDown hooks: installing the tunnel installs its filter, loaded before
the interface exists (nft matches the interface by name), so no packet ever arrives unfiltered, and a host where the
table cannot load (no nft) does not bring the tunnel up at all.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# wg-quick puts the interface's name here when it runs a hook.
INTERFACE_PLACEHOLDER: Final = "%i"


@dataclass(frozen=True)
class Admission:
    """One thing a tunnel peer may reach on the Plex host: TCP to PORT at LOCAL, from PEER, for WHY."""

    peer: str
    local: str
    port: int
    why: str

    def __post_init__(self) -> None:
        for address in (self.peer, self.local):
            if ipaddress.ip_address(address).version != 4:
                raise ValueError(f"{address}: the tunnels carry IPv4 only")
        if not 0 < self.port <= 65535:
            raise ValueError(f"{self.port} is not a TCP port")


_TABLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")


def rules(table: str, admissions: Sequence[Admission], interface: str = INTERFACE_PLACEHOLDER) -> str:
    """The table as one nft command line (wg-quick hooks are single lines): replaced whole each time it loads."""
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(f"{table!r} is not an nftables table name plex-cdn uses")
    on_tunnel = f'iifname "{interface}"'
    admitted = [
        f"{on_tunnel} ip saddr {item.peer} ip daddr {item.local} tcp dport {item.port} accept" for item in admissions
    ]
    inbound = [
        "type filter hook input priority filter - 5; policy accept",
        # The Plex host's own connections out through the tunnel (the dispatcher's SSH to a slave) get their answers.
        f"{on_tunnel} ct state established,related accept",
        *admitted,
        f"{on_tunnel} counter drop",
    ]
    # Nothing from the tunnel is routed on into the home network, whatever the host's forwarding setting.
    forwarded = ["type filter hook forward priority filter - 5; policy accept", f"{on_tunnel} counter drop"]
    body = f"chain input {{ {'; '.join(inbound)}; }}; chain forward {{ {'; '.join(forwarded)}; }}; "
    return f"table inet {table} {{ }}; delete table inet {table}; table inet {table} {{ {body}}}"


def hooks(table: str, admissions: Sequence[Admission]) -> tuple[str, str]:
    """The PreUp and PostDown lines of a wg-quick [Interface] that load and remove the tunnel's filter."""
    return (
        f"PreUp = nft '{rules(table, admissions)}'",
        f"PostDown = nft delete table inet {table}",
    )


def comment(admissions: Sequence[Admission]) -> str:
    """What the filter admits, in words, for the config's reader."""
    if not admissions:
        return "# Filtered by nftables (PreUp): nothing on this host answers the tunnel's peers."
    lines = ["# Filtered by nftables (PreUp): through this tunnel, this host answers only"]
    lines += [f"#   {item.peer} -> {item.local} TCP {item.port}: {item.why}" for item in admissions]
    lines.append("# and routes nothing on. The table goes with the tunnel (PostDown). Needs nft (Debian: nftables).")
    return "\n".join(lines)
