"""SSH access to a relay lab's POPs and Plex host, as `python -m plexcdn status` reads a deployed stack.

An `admin` namespace plays the admin's machine: a veth pair joins it to every POP's namespace and to the origin's,
each of which runs sshd with a host key of its own and the admin's key authorised for root. `outputs()` is what
`pulumi stack output --json` would print for the lab's POPs: their addresses (as the admin reaches them) and
host keys. Addresses come from 198.18.16.0/20, apart from the relay lab's own 198.18.0.0/20.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from labs.netns import Lab, LabError
from labs.relay_lab import RelayLab

ADMIN_ROLE: Final = "admin"
ADMIN_NETWORK: Final = ipaddress.IPv4Network("198.18.16.0/20")
PROJECT_ROOT: Final = Path(__file__).resolve().parents[1]


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    kind, key = path.with_suffix(".pub").read_text().split()[:2]
    return f"{kind} {key}"


def admin_address(index: int) -> tuple[str, str]:
    """(the admin's end, the far end) of the `index`th link: deterministic, so a stack file can name the Plex
    host's address before the lab exists."""
    subnet = list(ADMIN_NETWORK.subnets(new_prefix=30))[index]
    hosts = list(subnet.hosts())
    return str(hosts[0]), str(hosts[1])


@dataclass
class HostKeys:
    """Host keys made before the lab, so the stack file can pin the Plex host's."""

    directory: Path
    public: dict[str, str] = field(default_factory=dict)

    def make(self, role: str) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{role}_host_ed25519_key"
        if role not in self.public:
            self.public[role] = _keygen(path, role)
        return self.public[role]

    def private(self, role: str) -> Path:
        return self.directory / f"{role}_host_ed25519_key"


@dataclass
class StatusAccess:
    relay: RelayLab
    directory: Path
    admin_key: Path
    addresses: dict[str, str]  # role -> its address as the admin namespace reaches it
    host_keys: HostKeys
    sshd: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def lab(self) -> Lab:
        return self.relay.lab

    def outputs(self, extra_pops: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
        """The lab's POPs as `pulumi stack output --json` prints the `pops` output."""
        pops: dict[str, Any] = {
            pop.name: {
                "name": self.relay.config.pop_name(pop.name),
                "role": "hub" if pop.upstream == "origin" else "edge",
                "ipv4": self.addresses[pop.name],
                "ipv6": "",
                "hostKey": self.host_keys.public[pop.name],
            }
            for pop in self.relay.config.pops
        }
        pops.update(extra_pops or {})
        return {"sharedUrl": self.relay.config.shared_url, "pops": pops}

    def status(self, stack_file: Path, outputs: dict[str, Any], *arguments: str) -> subprocess.CompletedProcess[str]:
        """`python -m plexcdn status` in the admin namespace, with the lab's outputs on stdin."""
        command = [
            sys.executable,
            "-m",
            "plexcdn",
            "status",
            str(stack_file),
            "--outputs",
            "-",
            "--identity",
            str(self.admin_key),
            "--pop-prefix",
            str(self.relay.root / "pops" / "{pop}"),
            *arguments,
        ]
        return self.lab.run(
            ADMIN_ROLE, command, check=False, timeout=180, input=json.dumps(outputs), cwd=str(PROJECT_ROOT)
        )

    def start_sshd(self, role: str, timeout: float = 10) -> None:
        log = self.directory / f"sshd-{role}.log"
        before = log.read_text(errors="replace") if log.exists() else ""
        self.sshd[role] = self.lab.start(
            role, ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.directory / f"sshd-{role}.conf")], log=log
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Server listening on" in log.read_text(errors="replace")[len(before) :]:
                return
            if self.sshd[role].poll() is not None:
                raise LabError(f"sshd in {self.lab.ns(role)} exited: {log.read_text(errors='replace')[len(before) :]}")
            time.sleep(0.05)
        raise LabError(f"sshd in {self.lab.ns(role)} did not start within {timeout:g} s")

    def stop_sshd(self, role: str) -> None:
        process = self.sshd.pop(role)
        process.terminate()
        process.wait(timeout=10)
        self.lab.processes.remove(process)


def _sshd_config(address: str, host_key: Path, authorized_keys: Path) -> str:
    return "\n".join(
        [
            f"ListenAddress {address}:22",
            f"HostKey {host_key}",
            "PidFile none",
            f"AuthorizedKeysFile {authorized_keys}",
            "AuthenticationMethods publickey",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            # bash run by sshd reads ~/.bashrc unless nested; this machine's root .bashrc is not the lab's.
            "SetEnv SHLVL=1",
            "UsePAM no",
            "StrictModes no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            "",
        ]
    )


def add_status_access(relay: RelayLab, directory: Path, host_keys: HostKeys, roles: Sequence[str]) -> StatusAccess:
    """Join the admin namespace to each of `roles` (POP names, `origin`) and start sshd there. The `index`th role
    gets `admin_address(index)`."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    directory.mkdir(parents=True, exist_ok=True)
    admin_key = directory / "admin_ed25519"
    authorized = directory / "authorized_keys"
    authorized.write_text(_keygen(admin_key, "plex-cdn lab admin") + "\n")
    relay.lab.add_namespace(ADMIN_ROLE)
    access = StatusAccess(relay, directory, admin_key, {}, host_keys)
    for index, role in enumerate(roles):
        admin_side, far_side = admin_address(index)
        subnet = ipaddress.ip_network(f"{admin_side}/30", strict=False)
        link = relay.lab.link(ADMIN_ROLE, role, str(subnet))
        if (str(link.a_addr), str(link.b_addr)) != (admin_side, far_side):
            raise LabError(f"the admin link to {role} got {link.a_addr}/{link.b_addr}, not {admin_side}/{far_side}")
        access.addresses[role] = far_side
        host_keys.make(role)
        (directory / f"sshd-{role}.conf").write_text(_sshd_config(far_side, host_keys.private(role), authorized))
        access.start_sshd(role)
    return access
