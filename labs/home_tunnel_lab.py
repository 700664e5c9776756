"""The Plex host's end of a WireGuard tunnel, with the filter its rendered wg-quick config loads, in namespaces.

WireGuard is not in this host's kernel, so a veth pair stands in for the tunnel: the Plex host's end carries the
tunnel's interface name (what the filter matches) and its tunnel address, the peer's end the peer's. The filter
is loaded the way wg-quick loads it: the config's PreUp line, with %i replaced by the interface name, run by bash.
Behind the Plex host sits a machine of the home network, reachable through it when it forwards.
"""

from __future__ import annotations

import contextlib
import ipaddress
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from labs.netns import Lab, LabError

PREFIX = "pht-"
LAN_SUBNET = "198.18.57.0/30"  # the Plex host .1, a machine of the home network .2
# Accepts and closes every connection on the ports given, so that a probe tells open from refused from dropped.
LISTENER = """
import socket, sys, threading
ready, ports = sys.argv[1], [int(port) for port in sys.argv[2:]]
def serve(server):
    while True:
        connection, _ = server.accept()
        connection.close()
for port in ports:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(16)
    threading.Thread(target=serve, args=(server,), daemon=True).start()
open(ready, "w").close()
threading.Event().wait()
"""
PROBE = """
import socket, sys
host, timeout = sys.argv[1], float(sys.argv[2])
for port in sys.argv[3:]:
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        print(port, "open")
    except ConnectionRefusedError:
        print(port, "refused")
    except OSError:
        print(port, "dropped")
"""


@dataclass(frozen=True)
class Probe:
    host: str
    outcomes: dict[int, str]  # port -> open, refused or dropped


class HomeTunnelLab:
    """The Plex host ("home"), the tunnel's peer ("peer") and a machine of the home network ("lan")."""

    def __init__(self, interface: str, home_address: str, peer_address: str, prefixlen: int) -> None:
        self.interface = interface
        self.home_address = home_address
        self.peer_address = peer_address
        self.prefixlen = prefixlen
        self.lab = Lab(PREFIX)
        self.directory = Path(tempfile.mkdtemp(prefix=PREFIX))
        self.lan_address = ""

    def __enter__(self) -> HomeTunnelLab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        lab = self.lab
        for role in ("home", "peer", "lan"):
            lab.add_namespace(role)
        # The tunnel: a veth pair, the Plex host's end named as wg-quick names the tunnel.
        home_end, peer_end = f"{PREFIX}h", f"{PREFIX}p"
        lab.run("home", ["ip", "link", "add", home_end, "type", "veth", "peer", "name", peer_end])
        lab.run("home", ["ip", "link", "set", peer_end, "netns", lab.ns("peer")])
        lab.run("home", ["ip", "link", "set", home_end, "name", self.interface])
        lab.run("home", ["ip", "addr", "add", f"{self.home_address}/{self.prefixlen}", "dev", self.interface])
        lab.run("home", ["ip", "link", "set", self.interface, "up"])
        lab.run("peer", ["ip", "addr", "add", f"{self.peer_address}/{self.prefixlen}", "dev", peer_end])
        lab.run("peer", ["ip", "link", "set", peer_end, "up"])
        lan = lab.link("home", "lan", LAN_SUBNET)
        self.lan_address = str(lan.b_addr)
        lab.route("lan", "0.0.0.0/0", lan.a_addr)
        # A peer that sends the home network's traffic into the tunnel, as a compromised one would.
        lab.route("peer", LAN_SUBNET, ipaddress.IPv4Address(self.home_address))
        lab.run("home", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

    def listen(self, role: str, ports: Sequence[int], timeout: float = 10) -> None:
        ready = self.directory / f"{role}.ready"
        self.lab.start(role, ["/usr/bin/python3", "-c", LISTENER, str(ready), *map(str, ports)])
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if time.monotonic() > deadline:
                raise LabError(f"the listener in {self.lab.ns(role)} did not start")
            time.sleep(0.05)

    def probe(self, source: str, host: str, ports: Sequence[int], timeout: float = 0.5) -> Probe:
        result = self.lab.run(source, ["/usr/bin/python3", "-c", PROBE, host, str(timeout), *map(str, ports)])
        outcomes = {int(port): outcome for port, outcome in (line.split() for line in result.stdout.splitlines())}
        return Probe(host, outcomes)

    def reachable(self, source: str, host: str) -> bool:
        ping = self.lab.run(source, ["ping", "-c", "1", "-W", "1", host], check=False)
        return ping.returncode == 0

    def run_pre_up(self, config_text: str) -> None:
        """Load the filter as wg-quick does for this config: each PreUp line, %i replaced, run by bash."""
        hooks = [line.split("=", 1)[1].strip() for line in config_text.splitlines() if line.startswith("PreUp")]
        if not hooks:
            raise LabError("the config has no PreUp hook")
        for hook in hooks:
            self.lab.run("home", ["bash", "-c", hook.replace("%i", self.interface)])

    def run_post_down(self, config_text: str) -> None:
        for line in config_text.splitlines():
            if line.startswith("PostDown"):
                self.lab.run("home", ["bash", "-c", line.split("=", 1)[1].strip().replace("%i", self.interface)])

    def close(self) -> None:
        try:
            self.lab.close()
        finally:
            with contextlib.suppress(OSError):
                for path in self.directory.iterdir():
                    path.unlink()
                self.directory.rmdir()
