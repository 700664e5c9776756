"""A private IPFS swarm in network namespaces, configured from kubo's files, to prove they form one.

kubo cannot be installed on the lab machines, so each peer is `libp2p/peer.mjs`: js-libp2p with the same
pre-shared-key protector (libp2p's pnet spec v1, XSalsa20), Noise and yamux over TCP, and bitswap, reading
kubo's JSON config (`Identity.PeerID`, `Identity.PrivKey`, `Addresses.Swarm`, `Bootstrap`) and
`swarm.key` as kubo would. Peers print one JSON event per line, which this module reads back.

Addresses come from 198.18.40.0/24, one switched segment, and no namespace has a default route, so nothing
leaves the lab.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from labs.netns import Lab, LabError, lab_unavailable_reason
from plexcdn.library.keys import PeerIdentity

LIBP2P_DIR: Final = Path(__file__).resolve().parent / "libp2p"
PEER_SCRIPT: Final = LIBP2P_DIR / "peer.mjs"
LAB_SUBNET: Final = ipaddress.IPv4Network("198.18.40.0/24")
SWARM_PORT: Final = 4001
# kubo's default swarm address; inside a namespace without a default route "every interface" means the
# lab's own veths.
LISTEN_ALL: Final = f"/ip4/0.0.0.0/tcp/{SWARM_PORT}"
MIN_NODE_MAJOR: Final = 20
NPM_CI_HINT: Final = "npm ci --prefix labs/libp2p"
# Beyond a peer's own --timeout: node's start-up and the exit after it gives up.
_EXIT_GRACE_SECONDS: Final = 10.0
_POLL_SECONDS: Final = 0.05


def node_unavailable_reason() -> str | None:
    """Why the js-libp2p peers cannot run here (no Node.js, too old, packages not installed), or None."""
    node = shutil.which("node")
    if node is None:
        return f"needs Node.js {MIN_NODE_MAJOR} or newer (`node`) for the js-libp2p peers"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False, timeout=30).stdout
    try:
        major = int(version.strip().lstrip("v").split(".")[0])
    except ValueError:
        return f"`node --version` printed {version.strip()!r}"
    if major < MIN_NODE_MAJOR:
        return f"needs Node.js {MIN_NODE_MAJOR} or newer for the js-libp2p peers, found {version.strip()}"
    if not (LIBP2P_DIR / "node_modules" / "libp2p" / "package.json").is_file():
        return f"the lab's js-libp2p packages are not installed: run `{NPM_CI_HINT}`"
    return None


def swarm_lab_unavailable_reason() -> str | None:
    """Why the swarm lab cannot run here (no root, no `ip netns`, no node, no node_modules), or None."""
    return lab_unavailable_reason() or node_unavailable_reason()


def minimal_kubo_config(identity: PeerIdentity, listen_multiaddr: str, bootstrap: Sequence[str]) -> dict[str, Any]:
    """The part of kubo's config a private-swarm peer is defined by, in kubo's field names."""
    return {
        "Identity": {"PeerID": identity.peer_id, "PrivKey": identity.private_key_b64},
        "Addresses": {"Swarm": [listen_multiaddr], "Announce": [], "NoAnnounce": []},
        "Bootstrap": list(bootstrap),
    }


def tcp_multiaddr(address: ipaddress.IPv4Address | str, port: int = SWARM_PORT) -> str:
    return f"/ip4/{address}/tcp/{port}"


def peer_multiaddr(address: ipaddress.IPv4Address | str, peer_id: str, port: int = SWARM_PORT) -> str:
    """A Bootstrap entry: where a peer listens and which key it must prove it holds."""
    return f"{tcp_multiaddr(address, port)}/p2p/{peer_id}"


def parse_events(text: str) -> list[dict[str, Any]]:
    """The JSON events in a peer's output; node's own warnings and stack traces share the log and are skipped."""
    events: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            events.append(event)
    return events


@dataclass(frozen=True)
class IdentityCheck:
    returncode: int
    peer_id: str | None
    reason: str | None


def node_command(*args: str) -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise LabError(f"needs Node.js {MIN_NODE_MAJOR} or newer (`node`) for the js-libp2p peers")
    return [node, str(PEER_SCRIPT), *args]


def check_identity(config_path: Path, timeout: float = 30) -> IdentityCheck:
    """Ask js-libp2p which peer ID the config's Identity.PrivKey has; it refuses a config whose PeerID differs."""
    result = subprocess.run(
        node_command("--config", str(config_path), "--check-identity"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    events = parse_events(result.stdout)
    identity = next((e for e in events if e["event"] == "identity"), None)
    failed = next((e for e in events if e["event"] == "failed"), None)
    return IdentityCheck(
        result.returncode,
        str(identity["peerId"]) if identity else None,
        str(failed["reason"]) if failed else (result.stderr.strip() or None),
    )


@dataclass(frozen=True)
class PeerFiles:
    """A peer's kubo config and (for a private swarm) swarm.key, as written into the lab's work directory."""

    role: str
    peer_id: str
    config_path: Path
    swarm_key_path: Path | None


@dataclass
class PeerProcess:
    """A running peer.mjs and the log its stdout and stderr go to."""

    files: PeerFiles
    process: subprocess.Popen[bytes]
    log: Path
    timeout: float

    def events(self) -> list[dict[str, Any]]:
        return parse_events(self.log.read_text(errors="replace")) if self.log.exists() else []

    def first(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events() if e["event"] == name), None)

    def connected_peers(self) -> set[str]:
        """Every peer this one completed a connection with: the protector, Noise and yamux all succeeded."""
        return {str(e["peer"]) for e in self.events() if e["event"] == "connected"}

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for(self, name: str, timeout: float) -> dict[str, Any]:
        """The first `name` event, waiting at most `timeout` seconds; a LabError if the peer exits or fails first."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.first(name)
            if event is not None:
                return event
            failed = self.first("failed")
            if failed is not None:
                raise LabError(f"peer {self.files.role} failed before {name!r}: {failed['reason']}")
            if self.process.poll() is not None:
                # The last lines may have landed between reading the log and the exit.
                event = self.first(name)
                if event is not None:
                    return event
                raise LabError(
                    f"peer {self.files.role} exited {self.process.returncode} before {name!r}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise LabError(f"peer {self.files.role}: no {name!r} within {timeout}s:\n{self.tail()}")
            time.sleep(_POLL_SECONDS)

    def wait_exit(self) -> int:
        """The exit code; the peer stops itself at its --timeout, so this waits only a little longer than that."""
        try:
            return self.process.wait(timeout=self.timeout + _EXIT_GRACE_SECONDS)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"peer {self.files.role} outlived its {self.timeout}s timeout:\n{self.tail()}") from exc


@dataclass(frozen=True)
class FetchOutcome:
    returncode: int
    fetched: dict[str, Any] | None
    failed: dict[str, Any] | None
    connected: frozenset[str]
    events: list[dict[str, Any]]


@dataclass
class SwarmLab:
    """Namespaces named `<prefix><role>` on one switched segment, each running one js-libp2p peer.

    Use as a context manager: leaving it kills every peer, deletes every namespace and the work directory
    (which holds private keys and swarm keys, so it stays mode 0700: the peers run as root).
    """

    prefix: str = field(default_factory=lambda: f"pcs{os.getpid() % 1000}-")
    lab: Lab = field(init=False)
    workdir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.lab = Lab(self.prefix)
        self.workdir = Path(tempfile.mkdtemp(prefix="plexcdn-swarm-"))

    def __enter__(self) -> SwarmLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.lab.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def add_hosts(self, roles: Iterable[str]) -> None:
        for role in roles:
            self.lab.add_namespace(role)

    def segment(self, roles: Sequence[str]) -> dict[str, ipaddress.IPv4Address]:
        """Make the namespaces and join them on one switched segment; returns each role's address."""
        self.add_hosts(["lan", *roles])
        return self.lab.switch("lan", roles, str(LAB_SUBNET))

    def write_peer(self, role: str, config: Mapping[str, Any], swarm_key: str | None) -> PeerFiles:
        """Write a peer's kubo config and swarm.key (its rendered text) the way a kubo repo holds them."""
        directory = self.workdir / role
        directory.mkdir(mode=0o700)
        config_path = directory / "config"
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        key_path = None
        if swarm_key is not None:
            key_path = directory / "swarm.key"
            key_path.write_text(swarm_key)
            key_path.chmod(0o600)
        return PeerFiles(role, str(config["Identity"]["PeerID"]), config_path, key_path)

    def _start(self, files: PeerFiles, mode: Sequence[str], timeout: float) -> PeerProcess:
        argv = ["--config", str(files.config_path)]
        if files.swarm_key_path is not None:
            argv += ["--swarm-key", str(files.swarm_key_path)]
        argv += [*mode, "--timeout", f"{timeout:g}"]
        log = self.workdir / f"{files.role}.log"
        process = self.lab.start(files.role, node_command(*argv), log=log)
        return PeerProcess(files, process, log, timeout)

    def serve(self, files: PeerFiles, path: Path, timeout: float, ready_timeout: float = 30) -> tuple[PeerProcess, str]:
        """Start a peer that adds `path` and serves it over bitswap; returns it once listening, with the CID."""
        peer = self._start(files, ["--serve", str(path)], timeout)
        peer.wait_for("listening", ready_timeout)
        added = peer.wait_for("added", ready_timeout)
        return peer, str(added["cid"])

    def start_fetch(self, files: PeerFiles, cid: str, out: Path, timeout: float) -> PeerProcess:
        return self._start(files, ["--fetch", cid, "--out", str(out)], timeout)

    def fetch(self, files: PeerFiles, cid: str, out: Path, timeout: float) -> FetchOutcome:
        """Run a peer that dials its Bootstrap list and fetches `cid` into `out`, until it succeeds or gives up."""
        peer = self.start_fetch(files, cid, out, timeout)
        return finish_fetch(peer)


def finish_fetch(peer: PeerProcess) -> FetchOutcome:
    returncode = peer.wait_exit()
    return FetchOutcome(
        returncode,
        peer.first("fetched"),
        peer.first("failed"),
        frozenset(peer.connected_peers()),
        peer.events(),
    )


@contextlib.contextmanager
def swarm_lab(prefix: str | None = None) -> Iterator[SwarmLab]:
    built = SwarmLab(prefix) if prefix is not None else SwarmLab()
    with built:
        yield built
