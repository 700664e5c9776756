"""The swarm lab's driver without namespaces: kubo-format configs, event parsing, addressing, preconditions,
and js-libp2p's reading of our identities and swarm.key (which needs node, not root)."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from labs import swarm_lab as swarm
from plexcdn.library.keys import identity, private_key_pem, swarm_key_file

NODE_UNAVAILABLE = swarm.node_unavailable_reason()
needs_node = pytest.mark.skipif(NODE_UNAVAILABLE is not None, reason=str(NODE_UNAVAILABLE))


def test_minimal_kubo_config_uses_kubos_field_names() -> None:
    peer = identity(private_key_pem())
    bootstrap = [swarm.peer_multiaddr("198.18.40.1", peer.peer_id)]
    config = swarm.minimal_kubo_config(peer, swarm.LISTEN_ALL, bootstrap)
    assert config["Identity"] == {"PeerID": peer.peer_id, "PrivKey": peer.private_key_b64}
    assert config["Addresses"]["Swarm"] == ["/ip4/0.0.0.0/tcp/4001"]
    assert config["Bootstrap"] == [f"/ip4/198.18.40.1/tcp/4001/p2p/{peer.peer_id}"]


def test_events_are_read_from_a_log_shared_with_node_warnings() -> None:
    log = "\n".join(
        [
            '{"event":"listening","peerId":"12D3KooWx","addrs":[]}',
            "(node:1) ExperimentalWarning: something",
            '{"not":"an event"}',
            "{broken json",
            '{"event":"connected","peer":"12D3KooWy"}',
        ]
    )
    assert [e["event"] for e in swarm.parse_events(log)] == ["listening", "connected"]


def test_a_missing_node_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    reason = swarm.node_unavailable_reason()
    assert reason is not None and "Node.js" in reason


@needs_node
def test_missing_node_modules_say_how_to_install_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(swarm, "LIBP2P_DIR", tmp_path)
    reason = swarm.node_unavailable_reason()
    assert reason is not None and "npm ci --prefix labs/libp2p" in reason


def write_config(path: Path, config: dict[str, object]) -> Path:
    path.write_text(json.dumps(config))
    return path


@needs_node
def test_js_libp2p_reads_our_identity_and_refuses_a_mismatched_peer_id(tmp_path: Path) -> None:
    ours, theirs = identity(private_key_pem()), identity(private_key_pem())
    check = swarm.check_identity(write_config(tmp_path / "ok", swarm.minimal_kubo_config(ours, swarm.LISTEN_ALL, [])))
    assert (check.returncode, check.peer_id) == (0, ours.peer_id), check.reason

    config = swarm.minimal_kubo_config(ours, swarm.LISTEN_ALL, [])
    config["Identity"]["PeerID"] = theirs.peer_id
    check = swarm.check_identity(write_config(tmp_path / "bad", config))
    assert check.returncode == 3
    assert check.reason is not None and ours.peer_id in check.reason and theirs.peer_id in check.reason


@needs_node
@pytest.mark.parametrize(
    ("mangle", "complaint"),
    [
        (lambda key: key.replace("/key/swarm/psk/1.0.0/", "/key/swarm/psk/2.0.0/"), "first line"),
        (lambda key: key.replace("/base16/", "/base64/"), "encoding line"),
        (lambda key: key[:-3] + "\n", "64 hex digits"),
    ],
)
def test_a_swarm_key_kubo_would_refuse_is_refused(tmp_path: Path, mangle: Callable[[str], str], complaint: str) -> None:
    peer = identity(private_key_pem())
    config = write_config(tmp_path / "config", swarm.minimal_kubo_config(peer, "/ip4/127.0.0.1/tcp/0", []))
    key = tmp_path / "swarm.key"
    key.write_text(mangle(swarm_key_file(secrets.token_hex(32))))
    media = tmp_path / "media"
    media.write_bytes(b"x")
    # The key is checked before libp2p starts, so this opens no socket even outside a namespace.
    result = subprocess.run(
        swarm.node_command("--config", str(config), "--swarm-key", str(key), "--serve", str(media), "--timeout", "5"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    failed = [e for e in swarm.parse_events(result.stdout) if e["event"] == "failed"]
    assert failed and complaint in failed[0]["reason"]
    assert not [e for e in swarm.parse_events(result.stdout) if e["event"] == "listening"]
