"""The library file system's logic without a mount: bounded calls, seeder states, the status files and their reader.

The same code mounted for real over a FUSE file system that stops answering is in tests/lab/test_library_mount.py.
"""

from __future__ import annotations

import errno
import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from plexcdn.library import libraryfs, status
from plexcdn.library.libraryfs import BoundedLibrary, ConfigError, parse_config

PEER = "12D3KooWAlicePeer"


def make(tmp_path: Path, **changes: Any) -> BoundedLibrary:
    source = tmp_path / "ipns-alice"
    (source / "Movies").mkdir(parents=True, exist_ok=True)
    (source / "Movies" / "a.mkv").write_bytes(b"0123456789")
    values: dict[str, Any] = {
        "mount_point": str(tmp_path / "library"),
        "seeders": {"alice": {"source": str(source), "peer_id": PEER}, "bob": {"source": str(tmp_path / "none")}},
        "op_timeout_s": 0.2,
        "workers_per_seeder": 2,
        "status_file": str(tmp_path / "fs-status.json"),
    }
    values.update(changes)
    return BoundedLibrary(parse_config(values))


@pytest.fixture
def library(tmp_path: Path) -> Iterator[BoundedLibrary]:
    made = make(tmp_path)
    yield made
    made.close()


def saved(library: BoundedLibrary) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(Path(library.config.status_file).read_text())
    return value


def test_config_refuses_what_would_not_work() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"mountpoint": "/mnt/x"})
    with pytest.raises(ConfigError, match="plain folder name"):
        parse_config({"seeders": {"../etc": {"source": "/ipns/k51"}}})
    with pytest.raises(ConfigError, match="absolute, normalised"):
        parse_config({"seeders": {"alice": {"source": "ipns/k51"}}})
    with pytest.raises(ConfigError, match="peer_id"):
        parse_config({"seeders": {"alice": {"source": "/ipns/k51", "peer": "x"}}})
    with pytest.raises(ConfigError, match="op_timeout_s"):
        parse_config({"op_timeout_s": 0})
    with pytest.raises(ConfigError, match="mount_point"):
        parse_config({"mount_point": "/"})


def test_paths_map_onto_each_seeders_source(library: BoundedLibrary, tmp_path: Path) -> None:
    assert library.route("/") is None
    assert library.route("/alice") == ("alice", str(tmp_path / "ipns-alice"))
    assert library.route("/alice/Movies/a.mkv") == ("alice", str(tmp_path / "ipns-alice" / "Movies" / "a.mkv"))
    for path in ("/carol", "/alice/../bob", "/alice/Movies//a.mkv"):
        with pytest.raises(FileNotFoundError):
            library.route(path)
    assert library.readdir("/") == [".", "..", "alice", "bob"]
    assert library.readdir("/alice/Movies") == [".", "..", "a.mkv"]
    assert library.getattr("/alice/Movies/a.mkv")["st_size"] == 10
    assert library.getattr("/alice/Movies/a.mkv")["st_mode"] & 0o222 == 0
    fh = library.open("/alice/Movies/a.mkv", 0)
    assert library.read("/alice/Movies/a.mkv", 4, 3, fh) == b"3456"
    library.release("/alice/Movies/a.mkv", fh)
    with pytest.raises(OSError) as raised:
        library.open("/alice/Movies/a.mkv", 1)  # O_WRONLY
    assert raised.value.errno == errno.EROFS
    with pytest.raises(FileNotFoundError):
        library.getattr("/bob/x")


def test_a_call_past_its_bound_fails_with_eio_and_marks_the_seeder_until_it_answers(library: BoundedLibrary) -> None:
    release = threading.Event()
    closed: list[int] = []

    def hangs() -> int:
        release.wait(30)
        return 42

    with pytest.raises(OSError) as raised:
        library.bounded("alice", "read of /alice/x", hangs, closed.append)
    assert raised.value.errno == errno.EIO
    alice = saved(library)["seeders"]["alice"]
    assert (alice["state"], alice["stuck_calls"], alice["timeouts"]) == ("stalled", 1, 1)
    assert "within 0.2 s" in alice["reason"]
    # bob shares nothing with alice: his calls still answer.
    assert library.bounded("bob", "stat", lambda: 7) == 7

    with pytest.raises(OSError):
        library.bounded("alice", "read of /alice/y", hangs)
    # Both of alice's workers wait: the next call fails at once, without queueing behind them.
    ran: list[bool] = []
    with pytest.raises(OSError) as raised:
        library.bounded("alice", "read of /alice/z", lambda: ran.append(True))
    assert raised.value.errno == errno.EIO and ran == []

    release.set()
    for _ in range(200):
        if saved(library)["seeders"]["alice"]["state"] == "ok":
            break
        threading.Event().wait(0.01)
    alice = saved(library)["seeders"]["alice"]
    assert (alice["state"], alice["stuck_calls"]) == ("ok", 0)
    assert closed == [42], "what a late open returns is closed, not leaked"
    assert library.bounded("alice", "read", lambda: b"ok") == b"ok"


def test_errors_of_kubos_mount_pass_through_as_they_are(library: BoundedLibrary) -> None:
    with pytest.raises(FileNotFoundError):
        library.getattr("/alice/Movies/missing.mkv")
    assert library.health.seeders["alice"].state == "ok"


def test_the_peer_check_marks_a_seeder_whose_peer_is_gone(library: BoundedLibrary) -> None:
    library.health.peers({PEER, "12D3KooWother"})
    assert saved(library)["seeders"]["alice"]["peer_connected"] is True
    library.health.peers({"12D3KooWother"})
    alice = saved(library)["seeders"]["alice"]
    assert (alice["state"], alice["peer_connected"]) == ("unreachable", False)
    # bob's peer ID is not known: his state does not depend on it.
    assert saved(library)["seeders"]["bob"]["state"] == "ok"
    library.health.peers(None, "connection refused")
    assert saved(library)["kubo_error"] == "connection refused"
    assert saved(library)["seeders"]["alice"]["state"] == "ok", "no answer from kubo is not a gone peer"


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FakeKuboPeers:
    def __init__(self, peers: Any, unix_socket: str = "") -> None:
        answer = json.dumps({"Peers": peers}).encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                status = 200 if self.path == "/api/v0/swarm/peers" else 404
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server: socketserver.BaseServer
        if unix_socket:
            self.server = _UnixHTTPServer(unix_socket, Handler)
            self.url = f"unix:{unix_socket}"
        else:
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("answer", "expected"), [(None, set()), ([{"Peer": PEER, "Addr": "/ip4/x"}], {PEER})])
def test_connected_peers_reads_kubos_answer(answer: Any, expected: set[str]) -> None:
    kubo = FakeKuboPeers(answer)
    try:
        assert libraryfs.connected_peers(kubo.url, 5) == expected
    finally:
        kubo.close()


def test_connected_peers_asks_kubo_on_its_unix_socket(tmp_path: Path) -> None:
    """Peers serve kubo's API on a Unix socket only its group may reach (see what-home-machines-trust.md)."""
    kubo = FakeKuboPeers([{"Peer": PEER, "Addr": "/ip4/x"}], unix_socket=str(tmp_path / "api.sock"))
    try:
        assert libraryfs.connected_peers(kubo.url, 5) == {PEER}
    finally:
        kubo.close()


def test_status_describes_each_seeder_from_both_files(tmp_path: Path) -> None:
    library = make(tmp_path)
    try:
        library.health.peers({"12D3KooWother"})
    finally:
        library.close()
    (tmp_path / "warmer-status.json").write_text(
        json.dumps(
            {
                "version": 1,
                "plex_answering": True,
                "seeders": {
                    "alice": {"root": "/ipfs/bafyroot", "root_seen_at": 1, "rescanned": ["Films (3): /mnt/a"]},
                    "bob": {"resolve_error": "name/resolve: could not resolve name"},
                },
            }
        )
    )
    report = status.describe(status.read(tmp_path))
    assert report[0].startswith("alice: unreachable since ")
    assert "its peer is not connected" in report[0]
    assert report[1].startswith("  /ipfs/bafyroot since ") and report[1].endswith("Plex rescanned: Films (3): /mnt/a")
    assert report[2:] == ["bob: ok", "  resolve error: name/resolve: could not resolve name"]

    empty = status.describe(status.read(tmp_path / "nothing"))
    assert any("fs-status.json does not exist" in line for line in empty)
    (tmp_path / "fs-status.json").write_text('{"version": 9, "seeders": {}}')
    assert any("not a version 1 status file" in line for line in status.describe(status.read(tmp_path)))


def test_a_status_written_long_ago_is_called_stale(tmp_path: Path) -> None:
    library = make(tmp_path)
    library.health.write()
    library.close()
    written = saved(library)["written_at"]
    report = status.describe(status.read(tmp_path), clock=lambda: written + 3600)
    assert any("is plexcdn-library-fs running?" in line for line in report)
    assert not any("running?" in line for line in status.describe(status.read(tmp_path), clock=lambda: written))
