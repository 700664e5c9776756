"""Network namespaces, veth links and processes for the labs, with a tear-down that always completes.

Every lab address comes from the benchmarking range 198.18.0.0/15 and no namespace gets a default
route, so nothing a lab starts can reach beyond the lab.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
NETNS_ETC = Path("/etc/netns")


class LabError(RuntimeError):
    """A lab could not be built or run; the message says which step and why."""


def lab_unavailable_reason() -> str | None:
    """Why namespace labs cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root: network namespaces, veth links and nginx on port 443 inside them"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` command"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()}"
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def existing_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def remove_namespace(name: str) -> None:
    """Kill everything running in a namespace, then delete it and its /etc/netns files."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
        if not left.stdout.split():
            break
        time.sleep(0.05)
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


def remove_namespaces_with_prefix(prefix: str) -> list[str]:
    removed = [ns for ns in existing_namespaces() if ns.startswith(prefix)]
    for ns in removed:
        remove_namespace(ns)
    return removed


@dataclass(frozen=True)
class VethLink:
    a_ns: str
    b_ns: str
    a_if: str
    b_if: str
    a_addr: ipaddress.IPv4Address
    b_addr: ipaddress.IPv4Address
    prefixlen: int


@dataclass
class Lab:
    """A set of namespaces named `<prefix><role>` and the processes started in them.

    Use as a context manager: leaving it, normally or by an exception, kills every process and
    deletes every namespace it made.
    """

    prefix: str
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    links: list[VethLink] = field(default_factory=list)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ns(self, role: str) -> str:
        return f"{self.prefix}{role}"

    def add_namespace(self, role: str, hosts: Mapping[str, str] | None = None) -> str:
        name = self.ns(role)
        if name in existing_namespaces():
            remove_namespace(name)
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        if hosts is not None:
            self.write_hosts(role, hosts)
        return name

    def write_hosts(self, role: str, hosts: Mapping[str, str]) -> None:
        """Give a namespace its own /etc/hosts (bind-mounted by `ip netns exec`)."""
        directory = NETNS_ETC / self.ns(role)
        directory.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost"] + [f"{addr} {name}" for name, addr in sorted(hosts.items())]
        (directory / "hosts").write_text("\n".join(lines) + "\n")

    def link(self, a_role: str, b_role: str, subnet: str) -> VethLink:
        """Join two namespaces with a veth pair, the first two host addresses of `subnet` on each end."""
        network = ipaddress.ip_network(subnet)
        if not network.subnet_of(LAB_RANGE):  # type: ignore[arg-type]
            raise LabError(f"lab subnet {subnet} is outside the benchmarking range {LAB_RANGE}")
        hosts = list(network.hosts())
        a_addr, b_addr = hosts[0], hosts[1]
        index = len(self.links)
        a_if, b_if = f"v{index}{a_role[:5]}", f"v{index}{b_role[:5]}"
        a_ns, b_ns = self.ns(a_role), self.ns(b_role)
        tmp_a, tmp_b = f"{self.prefix[:6]}{index}a", f"{self.prefix[:6]}{index}b"
        _ip("link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        _ip("link", "set", tmp_a, "netns", a_ns, "name", a_if)
        _ip("link", "set", tmp_b, "netns", b_ns, "name", b_if)
        for ns_name, ifname, addr in ((a_ns, a_if, a_addr), (b_ns, b_if, b_addr)):
            _ip("-n", ns_name, "addr", "add", f"{addr}/{network.prefixlen}", "dev", ifname)
            _ip("-n", ns_name, "link", "set", ifname, "up")
        veth = VethLink(a_ns, b_ns, a_if, b_if, a_addr, b_addr, network.prefixlen)  # type: ignore[arg-type]
        self.links.append(veth)
        return veth

    def switch(self, switch_role: str, roles: Sequence[str], subnet: str) -> dict[str, ipaddress.IPv4Address]:
        """Join namespaces on one segment: a bridge in the namespace `switch_role` and a veth from each role
        to it, with consecutive host addresses of `subnet`; returns each role's address. Every member then
        reaches every other at one address, as hosts on the internet do."""
        network = ipaddress.ip_network(subnet)
        if not network.subnet_of(LAB_RANGE):  # type: ignore[arg-type]
            raise LabError(f"lab subnet {subnet} is outside the benchmarking range {LAB_RANGE}")
        hosts = list(network.hosts())
        if len(hosts) < len(roles):
            raise LabError(f"lab subnet {subnet} has fewer than {len(roles)} addresses")
        switch = self.ns(switch_role)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        addresses: dict[str, ipaddress.IPv4Address] = {}
        for role, address in zip(roles, hosts, strict=False):
            index = len(self.links)
            port_if, role_if = f"s{index}{role[:6]}", f"v{index}{switch_role[:5]}"
            tmp_a, tmp_b = f"{self.prefix[:6]}{index}a", f"{self.prefix[:6]}{index}b"
            _ip("link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
            _ip("link", "set", tmp_a, "netns", switch, "name", port_if)
            _ip("link", "set", tmp_b, "netns", self.ns(role), "name", role_if)
            _ip("-n", switch, "link", "set", port_if, "master", "br0", "up")
            _ip("-n", self.ns(role), "addr", "add", f"{address}/{network.prefixlen}", "dev", role_if)
            _ip("-n", self.ns(role), "link", "set", role_if, "up")
            self.links.append(
                VethLink(switch, self.ns(role), port_if, role_if, address, address, network.prefixlen)  # type: ignore[arg-type]
            )
            addresses[role] = address  # type: ignore[assignment]
        return addresses

    def route(self, role: str, destination: str, via: ipaddress.IPv4Address) -> None:
        _ip("-n", self.ns(role), "route", "add", destination, "via", str(via))

    def command(self, role: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def run(
        self, role: str, argv: Sequence[str], check: bool = True, timeout: float = 120, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(role, argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )  # type: ignore[call-overload]
        if check and result.returncode != 0:
            raise LabError(f"in {self.ns(role)}: {' '.join(argv)} exited {result.returncode}: {result.stderr}")
        return result  # type: ignore[no-any-return]

    def start(
        self, role: str, argv: Sequence[str], log: Path | None = None, **kwargs: object
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in a namespace, in its own process group, tracked for tear-down."""
        out = log.open("ab") if log is not None else subprocess.DEVNULL
        process = subprocess.Popen(  # type: ignore[call-overload]
            self.command(role, argv), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
        self.processes.append(process)
        return process  # type: ignore[no-any-return]

    def close(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=3)
        self.processes.clear()
        for name in reversed(self.namespaces):
            remove_namespace(name)
        self.namespaces.clear()
        self.links.clear()


@contextlib.contextmanager
def lab(prefix: str) -> Iterator[Lab]:
    with Lab(prefix) as built:
        yield built
