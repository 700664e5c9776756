"""The example stack's rendered configs run as a chain, viewer -> edge (asia) -> hub (us) -> origin,
with Plex-shaped traffic pushed through them."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labs import relay_lab as relay
from labs.lab_ca import LabCA
from labs.netns import existing_namespaces, lab_unavailable_reason
from plexcdn import render, topology
from plexcdn.config import StackConfig, load_stack_file, parse_config
from tests.conftest import EXAMPLE_STACK, example_values

pytestmark = pytest.mark.skipif(lab_unavailable_reason() is not None, reason=str(lab_unavailable_reason()))

# Its own namespace names, so a person's `lab up` and this test never tear down each other's lab.
PREFIX = f"pcr{os.getpid() % 1000}-"
TOKEN = "lab-token-" + "".join(random.choices("abcdefghjkmnpqrstuvwxyz23456789", k=16))
MEDIA_MB = 200


@pytest.fixture(scope="module")
def lab() -> Iterator[relay.RelayLab]:
    # nginx workers run as www-data and must reach the cache directories, which pytest's 0700 tmp hides.
    root = Path(tempfile.mkdtemp(prefix="plexcdn-relay-"))
    root.chmod(0o755)
    try:
        with relay.relay_lab(load_stack_file(EXAMPLE_STACK), root, MEDIA_MB, prefix=PREFIX) as built:
            yield built
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert not [ns for ns in existing_namespaces() if ns.startswith(PREFIX)], "tear-down left namespaces"


def view(lab: relay.RelayLab, command: str, path: str, *options: str, timeout: float = 180) -> dict[str, Any]:
    url = lab.config.shared_url.replace("https://", "wss://" if command == "websocket" else "https://") + path
    argv = [sys.executable, "-m", "labs.viewer", command, url, "--ca", str(lab.ca.bundle_path), *options]
    result = lab.lab.run("client", argv, timeout=timeout, cwd=str(Path(__file__).resolve().parents[2]))
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def headers_seen(lab: relay.RelayLab) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lab.headers_log.read_text().splitlines()]


def access_log(lab: relay.RelayLab, pop: str) -> list[str]:
    return (lab.pop_dir(pop) / "var" / "log" / "nginx" / "access.log").read_text().splitlines()


def test_a_range_at_a_random_offset_returns_the_origins_bytes(lab: relay.RelayLab) -> None:
    size = lab.media_file.stat().st_size
    for _ in range(3):
        start = random.randrange(0, size - 70_000)
        end = start + random.randrange(1, 65_536)
        result = view(lab, "get", relay.MEDIA_PATH, "--range", f"{start}-{end}")
        assert result["status"] == 206
        assert result["headers"]["Content-Range"] == f"bytes {start}-{end}/{size}"
        with lab.media_file.open("rb") as media:
            media.seek(start)
            assert bytes.fromhex(result["body_hex"]) == media.read(end - start + 1)


def test_the_whole_media_file_arrives_byte_identical(lab: relay.RelayLab) -> None:
    expected = hashlib.sha256(lab.media_file.read_bytes()).hexdigest()
    result = view(lab, "get", relay.MEDIA_PATH, "--sha256")
    assert result["status"] == 200
    assert result["size"] == MEDIA_MB * 1024 * 1024
    assert result["sha256"] == expected


def test_websocket_crosses_both_hops_both_ways_and_outlives_a_60_second_silence(lab: relay.RelayLab) -> None:
    result = view(lab, "websocket", "/:/websockets/notifications", "--idle", "65", timeout=200)
    hello, before, after = result["received"]
    assert json.loads(hello)["NotificationContainer"]["type"] == "lab.hello", "origin -> viewer"
    assert (before, after) == ("before idle", "after idle"), "viewer -> origin -> viewer, before and after the silence"
    upgrades = [h for h in headers_seen(lab) if h["path"] == "/:/websockets/notifications"]
    assert upgrades and upgrades[-1]["headers"].get("upgrade", "").lower() == "websocket"


def test_origin_sees_the_viewer_first_in_x_forwarded_for_and_the_real_host(lab: relay.RelayLab) -> None:
    view(lab, "get", "/identity", "--header", "X-Forwarded-For: 10.9.9.9")
    seen = [h for h in headers_seen(lab) if h["path"] == "/identity"][-1]["headers"]
    client_address = lab.addresses[("client", lab.viewer_pop)][0]
    edge_address = lab.addresses[(lab.viewer_pop, "us")][0]
    assert seen["x-forwarded-for"] == f"{client_address}, {edge_address}", "a viewer's own header is replaced"
    assert seen["x-real-ip"] == client_address
    assert seen["host"] == lab.config.shared_name


def test_sequential_requests_share_one_connection_from_edge_to_hub(lab: relay.RelayLab) -> None:
    before = len(access_log(lab, "us"))
    result = view(lab, "sequence", "/identity", "--count", "12")
    assert result["statuses"] == [200] * 12
    hub_lines = access_log(lab, "us")[before:]
    connections = {re.search(r" conn=(\d+) ", line).group(1) for line in hub_lines}  # type: ignore[union-attr]
    assert len(hub_lines) == 12
    assert len(connections) == 1, f"the edge opened {len(connections)} connections to the hub"


def test_artwork_is_cached_per_token_and_shared_for_public_sources(lab: relay.RelayLab) -> None:
    private = "/photo/:/transcode?width=300&height=450&url=%2Flibrary%2Fmetadata%2F7%2Fthumb"
    first = view(lab, "get", private, "--header", f"X-Plex-Token: {TOKEN}")
    second = view(lab, "get", private, "--header", f"X-Plex-Token: {TOKEN}")
    other_user = view(lab, "get", private, "--header", "X-Plex-Token: someone-else")
    anonymous = view(lab, "get", private)
    cache = [r["headers"].get("X-PlexCDN-Cache") for r in (first, second, other_user, anonymous)]
    assert cache[:3] == ["MISS", "HIT", "MISS"]
    assert cache[3] in ("BYPASS", None, "MISS") and cache[3] != "HIT"
    public = "/photo/:/transcode?width=300&url=https%3A%2F%2Fmetadata-static.plex.tv%2Fposter.jpg"
    view(lab, "get", f"{public}&X-Plex-Token={TOKEN}")
    shared = view(lab, "get", f"{public}&X-Plex-Token=someone-else")
    assert shared["headers"].get("X-PlexCDN-Cache") == "HIT"


def test_the_token_never_reaches_a_log(lab: relay.RelayLab) -> None:
    view(lab, "get", f"/library/sections?X-Plex-Token={TOKEN}")
    view(lab, "get", "/library/sections", "--header", f"X-Plex-Token: {TOKEN}")
    view(lab, "get", f"/photo/:/transcode?url=%2Flibrary%2Fmetadata%2F1%2Fart%3FX-Plex-Token%3D{TOKEN}")
    view(lab, "get", f"/does/not/exist?x-plex-token={TOKEN}")
    logs = sorted(lab.logs_dir().rglob("*.log"))
    assert any(p.name == "access.log" for p in logs) and any(p.name == "error.log" for p in logs)
    for log in logs:
        assert TOKEN not in log.read_text(), f"{log} contains the token"
    assert sum(TOKEN in json.dumps(h) for h in headers_seen(lab)) >= 3, "the token still reaches Plex"


def _swap_hub_peer_certificate(lab: relay.RelayLab, authority: LabCA, name: str) -> None:
    """Give the hub's peer port (where the edge connects) a certificate for `name` from `authority`."""
    conf_dir = lab.conf("us").parent
    authority.issue_server(name, conf_dir / render.PEER_SERVER_CERT_FILE, conf_dir / render.PEER_SERVER_KEY_FILE)
    assert lab.nginx("us", "-s", "reload").returncode == 0
    time.sleep(0.5)


def test_edge_refuses_a_hub_with_the_wrong_name_or_the_wrong_ca(lab: relay.RelayLab, tmp_path: Path) -> None:
    hub_name = lab.config.pop_name("us")
    try:
        _swap_hub_peer_certificate(lab, lab.peer_ca, "wrong.example.com")
        assert view(lab, "get", "/identity")["status"] == 502
        stranger = LabCA.create(tmp_path / "stranger", "unrelated CA", intermediate=False)
        _swap_hub_peer_certificate(lab, stranger, hub_name)
        assert view(lab, "get", "/identity")["status"] == 502
    finally:
        _swap_hub_peer_certificate(lab, lab.peer_ca, hub_name)
    assert view(lab, "get", "/identity")["status"] == 200


def test_the_backbone_does_not_depend_on_the_hubs_public_certificate(lab: relay.RelayLab, tmp_path: Path) -> None:
    """The edge checks its hub against the stack's own CA: a public certificate the edge could not verify (a
    staging one, say) on the hub's viewer port changes nothing for the edge's viewers."""
    lineage = lab.config.pop_name("us")
    stranger = LabCA.create(tmp_path / "staging", "a CA the edge does not trust")
    try:
        stranger.issue(list(lab.config.certificate_names("us")), lab.pop_dir("us") / "etc" / "letsencrypt", lineage)
        assert lab.nginx("us", "-s", "reload").returncode == 0
        time.sleep(0.5)
        assert view(lab, "get", "/identity")["status"] == 200
    finally:
        lab.ca.issue(list(lab.config.certificate_names("us")), lab.pop_dir("us") / "etc" / "letsencrypt", lineage)
        assert lab.nginx("us", "-s", "reload").returncode == 0


def test_the_peer_port_refuses_a_client_without_a_peer_certificate(lab: relay.RelayLab) -> None:
    hub = lab.addresses[(lab.viewer_pop, "us")][1]
    result = lab.lab.run(
        lab.viewer_pop,
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            str(lab.peer_ca.root_path),
            "--resolve",
            f"{lab.config.pop_name('us')}:{render.PEER_PORT}:{hub}",
            f"https://{lab.config.pop_name('us')}:{render.PEER_PORT}/identity",
        ],
        check=False,
    )
    assert result.stdout == "400", "nginx answers 400 when the required client certificate is missing"


def test_hub_down_gives_a_clean_502_and_service_returns_by_itself(lab: relay.RelayLab) -> None:
    lab.stop_nginx("us")
    try:
        down = view(lab, "get", f"/identity?X-Plex-Token={TOKEN}")
        assert down["status"] == 502
        assert down["headers"].get("Retry-After") == "10"
        assert "is not answering" in bytes.fromhex(down["body_hex"]).decode()
    finally:
        lab.start_nginx("us")
    assert view(lab, "get", "/identity")["status"] == 200
    for log in lab.logs_dir().rglob("*.log"):
        assert TOKEN not in log.read_text()


def test_a_config_change_applied_like_the_deploy_keeps_an_open_stream(lab: relay.RelayLab) -> None:
    stream = subprocess.Popen(
        lab.lab.command(
            "client",
            [
                sys.executable,
                "-m",
                "labs.viewer",
                "get",
                f"{lab.config.shared_url}/lab/slow?seconds=6&rate=500000",
                "--ca",
                str(lab.ca.bundle_path),
                "--sha256",
            ],
        ),
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    time.sleep(2)
    values = example_values()
    values["nginx"]["artworkCacheMb"] = 256
    changed = parse_config(values, "dev")
    lab.render_pop(lab.viewer_pop, changed)
    assert "max_size=256m" in lab.conf(lab.viewer_pop).read_text()
    assert lab.nginx(lab.viewer_pop, "-t").returncode == 0
    assert lab.nginx(lab.viewer_pop, "-s", "reload").returncode == 0
    out, _ = stream.communicate(timeout=60)
    result = json.loads(out)
    assert result["status"] == 200
    assert result["size"] == 6 * 500_000, "the stream ran to its end across the reload"
    lab.render_pop(lab.viewer_pop)
    assert lab.nginx(lab.viewer_pop, "-s", "reload").returncode == 0


def _redeploy(lab: relay.RelayLab, pops: tuple[str, ...], config: StackConfig | None = None) -> list[int]:
    """Render the POPs from `config` (default: the lab's) and reload them; the reloads' exit codes."""
    codes = []
    for pop in pops:
        lab.render_pop(pop, config)
        codes.append(lab.nginx(pop, "-s", "reload").returncode)
    return codes


def _socket_totals(lab: relay.RelayLab, pop: str) -> dict[tuple[str, str], dict[str, int]]:
    """Every established TCP socket in a POP's namespace, by (local, peer): its queues and byte counters."""
    lines = lab.lab.run(pop, ["ss", "-Htin", "state", "established"]).stdout.splitlines()
    sockets: dict[tuple[str, str], dict[str, int]] = {}
    for head, info in zip(lines[::2], lines[1::2], strict=False):
        recv_q, send_q, local, peer = head.split()[:4]
        counters = {k: int(v) for k, v in re.findall(r"\b(bytes_received|bytes_acked):(\d+)", info)}
        sockets[(local, peer)] = {"recv_q": int(recv_q), "send_q": int(send_q), **counters}
    return sockets


def _held_by_nginx(
    lab: relay.RelayLab, pop: str, before: dict[tuple[str, str], dict[str, int]], upstream_port: int
) -> int:
    """Bytes the POP's nginx has read from its upstream but not yet handed to its downstream's socket,
    counted over the sockets that moved since `before`."""
    held = 0
    for (local, peer), now in _socket_totals(lab, pop).items():
        old = before.get((local, peer), {})
        if peer.endswith(f":{upstream_port}"):
            held += now.get("bytes_received", 0) - old.get("bytes_received", 0) - now["recv_q"]
        elif local.endswith(f":{render.PEER_PORT}"):
            held -= now.get("bytes_acked", 0) - old.get("bytes_acked", 0) + now["send_q"]
    return held


@pytest.mark.parametrize("buffer_mb", [2, 0])
def test_a_paused_viewer_lets_the_hub_read_ahead_what_the_stream_buffer_allows(
    lab: relay.RelayLab, buffer_mb: int
) -> None:
    hub = topology.place(lab.config, lab.viewer_pop).pop.upstream
    values = example_values()
    values["nginx"]["streamBufferMb"] = buffer_mb
    assert _redeploy(lab, (lab.viewer_pop, hub), parse_config(values, "dev")) == [0, 0]
    time.sleep(1)  # old workers finish; new ones take the next request
    before = _socket_totals(lab, hub)
    argv = [sys.executable, "-m", "labs.viewer", "pause", lab.config.shared_url + relay.MEDIA_PATH]
    paused = subprocess.Popen(
        lab.lab.command("client", [*argv, "--ca", str(lab.ca.bundle_path), "--read", "65536", "--seconds", "20"]),
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    try:
        # The chain fills from the viewer back: held grows until the hub stops reading, then stays put.
        readings = [-1]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            time.sleep(0.5)
            readings.append(_held_by_nginx(lab, hub, before, lab.origin_port))
            if readings[-1] == readings[-2] and readings[-1] > 0:
                break
    finally:
        paused.kill()
        paused.wait()
        assert _redeploy(lab, (lab.viewer_pop, hub)) == [0, 0]
    held = readings[-1]
    if buffer_mb:
        assert 0.85 * buffer_mb * 2**20 <= held <= 1.1 * buffer_mb * 2**20, readings
    else:
        assert held < 128 * 1024, readings
