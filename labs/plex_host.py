"""The user's Plex server in the boot lab: a Debian 13 guest as a user would have it before plex-cdn.

The stack's origin modes end on this machine: the hub connects to its Plex over the internet (`public`),
through a WireGuard tunnel the user brings up with the stack's `homeWireguardConfig` (`wireguard`), or
to the origin agent `pulumi up` installs on it over SSH (`origin.agent`). It is not one of the program's
machines, so the lab prepares it from its own user_data, as the user would have set it up:

- the Plex stand-in (`labs/plex_standin.py`, on Debian's python3-aiohttp and python3-cryptography) in
  three systemd services, each where Plex (which listens on every address) answers one origin mode:
  TLS on the LAN address with a lab-CA certificate for the origin's name (`public`), plain HTTP on
  127.0.0.1 (behind the agent) and plain HTTP on the tunnel's home address (`wireguard`; bound before
  the tunnel exists, as a wildcard listener would answer there once it does); each logs the headers
  that reached it;
- wireguard-tools and nftables, which the WireGuard config needs (its `PreUp` loads an nftables table:
  without `nft` wg-quick does not bring the tunnel up);
- the user's own SSH key for root (what `plex-cdn:homeSshKey` holds), beside the lab's key that the
  image authorizes.

`snapshot()` records what plex-cdn could leave on the machine (files, /etc's contents, units, firewall
rules, users, packages, listening ports, the TCP settings the agent sets), so a test can compare the
machine before the stack existed with the machine after `pulumi destroy`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from labs import plex_standin

HOSTNAME: Final = "plex-home"
STANDIN_DIR: Final = "/opt/plex-standin"
DATA_DIR: Final = "/var/lib/plex-standin"
MEDIA_FILE: Final = f"{DATA_DIR}/media.mkv"
TLS_DIR: Final = "/etc/plex-standin"
PACKAGES: Final = ("python3-aiohttp", "python3-cryptography", "wireguard-tools", "nftables")
PLEX_PORT: Final = 32400


@dataclass(frozen=True)
class Listener:
    """One of the stand-in's services: where it listens, and whether it speaks TLS."""

    name: str
    address: str
    tls: bool = False
    free_bind: bool = False

    @property
    def unit(self) -> str:
        return f"plex-standin-{self.name}.service"

    @property
    def headers_log(self) -> str:
        return f"{DATA_DIR}/{self.name}-headers.jsonl"


def listeners(lan_address: str, tunnel_address: str) -> tuple[Listener, ...]:
    return (
        Listener("lan", lan_address, tls=True),
        Listener("loopback", "127.0.0.1"),
        Listener("tunnel", tunnel_address, free_bind=True),
    )


def _unit(listener: Listener) -> str:
    command = [
        "/usr/bin/python3",
        f"{STANDIN_DIR}/plex_standin.py",
        *("--listen", f"{listener.address}:{PLEX_PORT}", "--media", MEDIA_FILE),
        *("--headers-log", listener.headers_log, "--quiet"),
    ]
    if listener.tls:
        command += ["--tls-cert", f"{TLS_DIR}/fullchain.pem", "--tls-key", f"{TLS_DIR}/privkey.pem"]
    if listener.free_bind:
        command.append("--free-bind")
    return (
        "[Unit]\n"
        f"Description=Plex stand-in on {listener.address}:{PLEX_PORT}{' (TLS)' if listener.tls else ''}\n"
        "After=network-online.target\nWants=network-online.target\n\n"
        f"[Service]\nExecStart={' '.join(command)}\nRestart=on-failure\nRestartSec=2\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def user_data(
    *,
    lan_address: str,
    tunnel_address: str,
    home_public_key: str,
    tls_fullchain: bytes,
    tls_key: bytes,
    media_bytes: int,
) -> bytes:
    """The Plex host's cloud-config: packages, the stand-in and its services, the user's key for root."""
    served = listeners(lan_address, tunnel_address)
    make_media = (
        f"import sys; sys.path.insert(0, {STANDIN_DIR!r}); from pathlib import Path; import plex_standin; "
        f"plex_standin.make_media_file(Path({MEDIA_FILE!r}), {media_bytes})"
    )
    files = [
        {
            "path": "/root/.ssh/authorized_keys",
            "owner": "root:root",
            "permissions": "0600",
            "append": True,
            "content": home_public_key.strip() + "\n",
        },
        {
            "path": f"{STANDIN_DIR}/plex_standin.py",
            "permissions": "0644",
            "encoding": "b64",
            "content": base64.b64encode(Path(plex_standin.__file__).read_bytes()).decode(),
        },
        {"path": f"{TLS_DIR}/fullchain.pem", "permissions": "0644", "content": tls_fullchain.decode()},
        {"path": f"{TLS_DIR}/privkey.pem", "permissions": "0600", "content": tls_key.decode()},
        *({"path": f"/etc/systemd/system/{one.unit}", "content": _unit(one)} for one in served),
    ]
    document = {
        "disable_root": False,
        "package_update": True,
        "packages": list(PACKAGES),
        "write_files": files,
        "runcmd": [
            ["install", "-d", "-m", "0755", DATA_DIR],
            ["python3", "-c", make_media],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", *(one.unit for one in served)],
        ],
    }
    return ("#cloud-config\n" + yaml.safe_dump(document, sort_keys=False, width=1000)).encode()


# --- what plex-cdn could leave behind -----------------------------------------------------------------------

# Left out of the file listing: the kernel's and systemd's runtime trees, logs, caches and package
# databases (apt's indexes, which an install refreshes; the package list is compared on its own), systemd's
# and cloud-init's records of boots, and the stand-in's own request logs.
PRUNED_PATHS: Final = (
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",  # noqa: S108 - a path on the guest, left out of the listing
    "/var/tmp",  # noqa: S108
    "/var/log",
    "/var/cache",
    "/var/backups",
    "/var/lib/apt",
    "/var/lib/dpkg",
    "/var/lib/systemd",
    "/var/lib/cloud",
    "/var/lib/private",
    DATA_DIR,
)
# The TCP settings the origin agent sets (templates/sysctl/90-plex-cdn.conf.j2).
SYSCTL_KEYS: Final = (
    "net.core.default_qdisc",
    "net.ipv4.tcp_congestion_control",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_mtu_probing",
    "net.ipv4.tcp_notsent_lowat",
)
SECTIONS: Final = ("files", "etc", "units", "firewall", "users", "groups", "packages", "listening", "sysctl", "links")


def snapshot_script() -> str:
    prune = " -o ".join(f"-path {path}" for path in PRUNED_PATHS)
    return "\n".join(
        [
            "set -u",
            "echo '## files'",
            f"find / -xdev \\( {prune} \\) -prune -o -printf '%p %y %m %u:%g\\n' | LC_ALL=C sort",
            "echo '## etc'",
            "find /etc -xdev -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum",
            "echo '## units'",
            # Transient units (the SSH session's own scope) come and go with logins.
            "systemctl list-unit-files --no-legend --no-pager | awk '$2 != \"transient\" {print $1, $2}'"
            " | LC_ALL=C sort",
            "echo '## firewall'",
            "if command -v nft >/dev/null; then nft list ruleset; else echo '(no nft)'; fi",
            "echo '## users'",
            "getent passwd | LC_ALL=C sort",
            "echo '## groups'",
            "getent group | LC_ALL=C sort",
            "echo '## packages'",
            "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' | LC_ALL=C sort",
            "echo '## listening'",
            "ss -Hltnu | awk '{print $1, $5}' | LC_ALL=C sort -u",
            "echo '## sysctl'",
            f"sysctl {' '.join(SYSCTL_KEYS)}",
            "echo '## links'",
            "ip -o link show | awk -F': ' '{print $2}' | LC_ALL=C sort",
        ]
    )


def parse_snapshot(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
        elif current is not None and line.strip():
            current.append(re.sub(r"\s+", " ", line.strip()))
    missing = [name for name in SECTIONS if name not in sections]
    if missing:
        raise ValueError(f"the snapshot has no section {', '.join(missing)}")
    return sections


@dataclass(frozen=True)
class Difference:
    section: str
    gone: tuple[str, ...]
    added: tuple[str, ...]

    def __str__(self) -> str:
        lines = [f"{self.section}:"]
        lines += [f"  - {line}" for line in self.gone[:40]]
        lines += [f"  + {line}" for line in self.added[:40]]
        return "\n".join(lines)


def compare(before: Mapping[str, Sequence[str]], after: Mapping[str, Sequence[str]]) -> list[Difference]:
    """What changed between two snapshots, section by section (empty: the same machine)."""
    differences = []
    for section in SECTIONS:
        old, new = list(before.get(section, ())), list(after.get(section, ()))
        if old != new:
            old_lines, new_lines = set(old), set(new)
            gone = tuple(line for line in old if line not in new_lines)
            added = tuple(line for line in new if line not in old_lines)
            differences.append(Difference(section, gone, added))
    return differences
