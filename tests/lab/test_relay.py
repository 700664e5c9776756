"""The example stack's rendered configs run as a chain, viewer -> edge (asia) -> hub (us) -> origin,
with Plex-shaped traffic pushed through them."""

from __future__ import annotations

import datetime
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labs import plex_standin as lab_origin
from labs import relay_lab as relay
from labs import tls_scan
from labs.lab_ca import LabCA
from labs.netns import existing_namespaces, lab_unavailable_reason
from labs.wan_bench_report import with_workers_of
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


def test_a_restarted_edge_opens_its_connection_to_the_hub_before_the_first_viewer(lab: relay.RelayLab) -> None:
    """Issue #22, part 2: nginx's new workers hold no connection up the chain; the warm-up the edge runs after
    a (re)start opens it, and the first viewer's request rides it instead of paying the handshakes."""
    edge = lab.viewer_pop
    # As many workers as the POP has vCPUs (`auto` there), not as this machine has: each worker keeps a pool of
    # its own, and the warm-up opens a connection in the one that answers it.
    conf = lab.conf(edge)
    conf.write_text(with_workers_of(conf.read_text(), lab.config.pop(edge).size_info.vcpus))
    lab.stop_nginx(edge)
    lab.start_nginx(edge)
    try:
        before = len(access_log(lab, "us"))
        warmed = lab.warm_chain(edge)
        assert warmed.returncode == 0, warmed.stderr
        assert view(lab, "get", "/identity")["status"] == 200
        hub_lines = access_log(lab, "us")[before:]
    finally:
        lab.render_pop(edge)
        lab.stop_nginx(edge)
        lab.start_nginx(edge)
    connections = [re.search(r" conn=(\d+) ", line).group(1) for line in hub_lines]  # type: ignore[union-attr]
    assert len(hub_lines) == 2, hub_lines
    assert "plex-cdn health check" in hub_lines[0], "the warm-up asks what the health check asks"
    assert connections[0] == connections[1], f"the viewer's first request opened a connection of its own: {hub_lines}"


def _png(result: dict[str, Any]) -> bool:
    return bytes.fromhex(result["body_hex"]).startswith(b"\x89PNG")


def _unique(prefix: str) -> str:
    return prefix + "".join(random.choices("abcdefghjkmnpqrstuvwxyz23456789", k=10))


def test_artwork_from_a_public_image_host_is_cached_once_and_shared_between_token_holders(lab: relay.RelayLab) -> None:
    public = f"/photo/:/transcode?width=300&url=https%3A%2F%2Fimage.tmdb.org%2Ft%2Fp%2Fw300%2F{_unique('p')}.jpg"
    first = view(lab, "get", f"{public}&X-Plex-Token={TOKEN}")
    second = view(lab, "get", f"{public}&X-Plex-Token=someone-else")
    by_header = view(lab, "get", public, "--header", "X-Plex-Token:a-third-viewer")
    anonymous = view(lab, "get", public)
    cache = [r["headers"].get("X-PlexCDN-Cache") for r in (first, second, by_header, anonymous)]
    assert cache[:3] == ["MISS", "HIT", "HIT"]
    assert first["headers"]["X-Lab-Origin-Hit"] == second["headers"]["X-Lab-Origin-Hit"] == "1"
    assert _png(second) and second["body_hex"] == first["body_hex"]
    assert cache[3] != "HIT" and anonymous["status"] == 401, "without a token the cache answers no one"


def test_library_artwork_a_token_holder_fetched_is_not_served_without_a_token(lab: relay.RelayLab) -> None:
    """Issue #20, finding 1: the server's own library, named by loopback URL or by path, is never cached."""
    for source in (
        f"http%3A%2F%2F127.0.0.1%3A32400%2Flibrary%2Fmetadata%2F{random.randrange(10**6)}%2Fthumb%2F1700000000",
        f"%2Flibrary%2Fmetadata%2F{random.randrange(10**6)}%2Fart%2F1700000000",
    ):
        artwork = f"/photo/:/transcode?width=300&height=450&url={source}"
        holder = view(lab, "get", f"{artwork}&X-Plex-Token={TOKEN}")
        again = view(lab, "get", artwork, "--header", f"X-Plex-Token:{TOKEN}")
        anonymous = view(lab, "get", artwork)
        assert holder["status"] == again["status"] == 200 and _png(holder)
        assert again["headers"]["X-Lab-Origin-Hit"] == "2", "Plex answered again: nothing was cached"
        assert [r["headers"].get("X-PlexCDN-Cache") for r in (holder, again, anonymous)] == ["BYPASS"] * 3
        assert anonymous["status"] == 401 and not _png(anonymous)


def test_no_pop_writes_a_token_to_its_cache(lab: relay.RelayLab) -> None:
    """Issue #20, finding 2: after artwork requests carrying a token every way a client sends one, no file
    under a POP's cache directories holds it; the public artwork is there, under a key without it."""
    secret = _unique("cache-probe-token-")
    tmdb = f"url=https%3A%2F%2Fimage.tmdb.org%2Ft%2Fp%2Fw300%2F{_unique('k')}.jpg"
    for path, headers in (
        (f"/photo/:/transcode?{tmdb}&X-Plex-Token={secret}", []),
        (f"/photo/:/transcode?X-Plex-Token={secret}&width=80&{tmdb}", []),
        (f"/photo/:/transcode?width=90&{tmdb}", ["--header", f"X-Plex-Token:{secret}"]),
        (f"/photo/:/transcode?{tmdb}%3FX-Plex-Token%3D{secret}&X-Plex-Token={secret}", []),
        (f"/photo/:/transcode?url=%2Flibrary%2Fmetadata%2F3%2Fthumb&X-Plex-Token={secret}", []),
        (
            f"/photo/:/transcode?url=http%3A%2F%2F127.0.0.1%3A32400%2Flibrary%2Fmetadata%2F3%2Fart&X-Plex-Token={secret}",
            [],
        ),
    ):
        assert view(lab, "get", path, *headers)["status"] == 200
    cache_dirs = [str(lab.pop_dir(pop.name) / "var" / "cache" / "nginx") for pop in lab.config.pops]
    files = [path for directory in cache_dirs for path in Path(directory).rglob("*") if path.is_file()]
    assert any(b"image.tmdb.org" in path.read_bytes() for path in files), "the public artwork was cached"
    grep = subprocess.run(["grep", "-rlai", secret, *cache_dirs], capture_output=True, text=True, check=False)
    assert grep.returncode == 1, f"the token is on disk in {grep.stdout}"


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


def _health(lab: relay.RelayLab, pop: str, *curl_options: str, query: str = "") -> tuple[int, str, str]:
    """Port 80's health answer, asked from inside the POP's namespace: (status, headers, body)."""
    url = "http://127.0.0.1/plexcdn/health" + (f"?{query}" if query else "")
    argv = ["curl", "-s", "-D", "-", "--max-time", "20", *curl_options, url]
    output = lab.lab.run(pop, argv, check=False).stdout
    head, _, body = output.partition("\n\n")  # text mode: curl's CRLFs arrive as newlines
    status = int(head.split()[1]) if head.startswith("HTTP/") else 0
    return status, head, body


def _until_health(lab: relay.RelayLab, pop: str, status: int) -> tuple[int, str, str]:
    """The health answer once it is `status`: answers are reused for 5 s, so ask a bounded number of times."""
    answer = _health(lab, pop)
    for _ in range(15):
        if answer[0] == status:
            break
        time.sleep(1)
        answer = _health(lab, pop)
    return answer


def test_a_certificate_under_two_weeks_turns_its_pop_unhealthy_until_it_is_renewed(lab: relay.RelayLab) -> None:
    """Issue #22, part 5: a renewal that keeps failing shows in DNS before the certificate expires."""
    pop, config = lab.viewer_pop, lab.config
    letsencrypt = lab.pop_dir(pop) / "etc" / "letsencrypt"
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10)
    try:
        lab.ca.issue(config.certificate_names(pop), letsencrypt, config.pop_name(pop), not_after=soon)
        checked = lab.check_certificate(pop)
        assert checked.returncode == 0 and "renewal is failing" in checked.stderr, checked.stderr
        assert _health(lab, pop)[0] == 503, "the expiring certificate answers before the chain is asked"
        assert _until_health(lab, "us", 200)[0] == 200, "the other POP's certificate is good"
    finally:
        lab.ca.issue(config.certificate_names(pop), letsencrypt, config.pop_name(pop))
        renewed = lab.check_certificate(pop)
    assert renewed.returncode == 0 and renewed.stderr == "", renewed.stderr
    assert _until_health(lab, pop, 200)[0] == 200


HEALTH_HEADERS_AT_PLEX = {
    "host",
    "user-agent",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
}


def test_the_health_check_asks_plex_a_plain_get_and_answers_only_a_status(lab: relay.RelayLab) -> None:
    """Issue #20, finding 3: whatever a caller sends to port 80's health check, Plex sees the same plain GET of
    /identity, and the caller sees a status and a word, nothing of Plex's identity."""
    marker = _unique("odd-")
    attack = [
        *("-X", "POST", "--data-binary", f"body-{marker}"),
        *("-H", "X-Real-IP: 192.168.1.5", "-H", "X-Forwarded-For: 192.168.1.5", "-H", "Forwarded: for=192.168.1.5"),
        *("-H", f"X-Lab-Odd: {marker}", "-H", f"Cookie: session={marker}", "-H", f"X-Plex-Token: {TOKEN}"),
        *("-H", "Range: bytes=0-1", "-H", "Authorization: Basic b2RkOm9kZA=="),
    ]
    for pop in (lab.viewer_pop, "us"):
        before = len(headers_seen(lab))
        fresh: list[dict[str, Any]] = []
        for _ in range(15):  # the chain is asked at most every 5 s
            status, head, body = _health(lab, pop, *attack, query=f"X-Plex-Token={TOKEN}&q={marker}")
            # Nothing else asks for /identity meanwhile: whatever arrives is what the health check sent.
            fresh = [h for h in headers_seen(lab)[before:] if h["path"].startswith("/identity")]
            if fresh:
                break
            time.sleep(1)
        assert fresh, f"{pop}'s health check never reached Plex"
        for record in fresh:
            seen = json.dumps(record)
            assert (record["method"], record["path"]) == ("GET", "/identity")
            assert f"health check ({pop})" in record["headers"]["user-agent"]
            assert set(record["headers"]) <= HEALTH_HEADERS_AT_PLEX, record["headers"]
            for leak in (marker, "192.168.1.5", TOKEN):
                assert leak not in seen, leak
        assert (status, body) == (200, "healthy\n")
        answer = (head + body).lower()
        for identity in (lab_origin.DEFAULT_MACHINE_IDENTIFIER, lab_origin.DEFAULT_VERSION, "mediacontainer"):
            assert identity.lower() not in answer


def test_hub_down_gives_a_clean_502_naming_no_address_and_service_returns_by_itself(lab: relay.RelayLab) -> None:
    hub = lab.addresses[(lab.viewer_pop, "us")][1]
    lab.stop_nginx("us")
    try:
        down = view(lab, "get", f"/identity?X-Plex-Token={TOKEN}")
        assert down["status"] == 502
        assert down["headers"].get("Retry-After") == "10"
        reason = bytes.fromhex(down["body_hex"]).decode()
        assert "cannot be reached" in reason
        for detail in (hub, lab.config.pop_name("us"), str(render.PEER_PORT), lab.config.origin.host):
            assert detail not in reason
        assert _until_health(lab, lab.viewer_pop, 503)[::2] == (503, "unhealthy\n")
    finally:
        lab.start_nginx("us")
    assert view(lab, "get", "/identity")["status"] == 200
    assert _until_health(lab, lab.viewer_pop, 200)[::2] == (200, "healthy\n")
    for log in lab.logs_dir().rglob("*.log"):
        assert TOKEN not in log.read_text()


def test_no_client_address_header_a_viewer_sends_reaches_plex(lab: relay.RelayLab) -> None:
    """Issue #20, finding 4: every header that claims a client's address or how a request arrived is replaced
    by the POPs' own value or does not reach Plex at all."""
    claim = "10.66.77.88"
    marker = _unique("probe-")
    options = [arg for name in render.CLIENT_ADDRESS_HEADERS for arg in ("--header", f"{name}:{claim}")]
    assert view(lab, "get", f"/identity?probe={marker}", *options)["status"] == 200
    (record,) = [h for h in headers_seen(lab) if marker in h["path"]]
    assert claim not in json.dumps(record["raw_headers"])
    sent = record["headers"]
    for name in render.CLIENT_ADDRESS_HEADERS:
        assert (name.lower() in sent) == (name in render.CLIENT_ADDRESS_HEADERS_SET), name
    client_address = lab.addresses[("client", lab.viewer_pop)][0]
    edge_address = lab.addresses[(lab.viewer_pop, "us")][0]
    assert sent["x-forwarded-for"] == f"{client_address}, {edge_address}"
    assert sent["x-real-ip"] == client_address
    assert (sent["x-forwarded-proto"], sent["x-forwarded-port"]) == ("https", "443")
    assert sent["x-forwarded-host"] == lab.config.shared_name


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


def assert_mozilla_intermediate(report: tls_scan.TlsScanReport) -> None:
    """Every check Mozilla's configuration needs ran, and none found a deviation from either guideline."""
    print(report.summary())
    assert set(report.commands) and not report.not_completed, report.command_errors
    assert report.deviations == {guideline: {} for guideline in tls_scan.GUIDELINES}, report.deviations
    assert sorted(report.accepted["cipher_suites"]) == ["TLSv1.2", "TLSv1.3"]
    assert report.accepted["curves"] == ["X25519", "secp256r1", "secp384r1"]


def test_the_viewer_and_peer_ports_are_mozilla_intermediate(lab: relay.RelayLab) -> None:
    """Issue #20, finding 6, with sslyze: the edge's and the hub's viewer ports, and the hub's peer port
    scanned with the edge's client certificate."""
    edge = lab.viewer_pop
    hub_address = lab.addresses[(edge, "us")][1]
    scans = [
        (
            "client",
            tls_scan.TlsTarget(lab.addresses[("client", edge)][1], 443, lab.config.shared_name, lab.ca.bundle_path),
        ),
        (edge, tls_scan.TlsTarget(hub_address, 443, lab.config.shared_name, lab.ca.bundle_path)),
        (
            edge,
            tls_scan.TlsTarget(
                hub_address,
                render.PEER_PORT,
                lab.config.pop_name("us"),
                lab.peer_ca.root_path,
                client_cert=lab.pop_dir(edge) / "peer-client.crt",
                client_key=lab.conf(edge).parent / render.PEER_CLIENT_KEY_FILE,
            ),
        ),
    ]
    for role, target in scans:
        assert_mozilla_intermediate(tls_scan.scan(target, wrap=in_namespace(lab, role)))


def in_namespace(lab: relay.RelayLab, role: str) -> Callable[[list[str]], list[str]]:
    def wrap(argv: list[str]) -> list[str]:
        return lab.lab.command(role, argv)

    return wrap


@pytest.fixture(scope="module")
def three_pops() -> Iterator[relay.RelayLab]:
    """The example stack with a second edge on the hub: eu, where the viewer is, and asia."""
    values = example_values()
    values["pops"].append(
        {"name": "eu", "provider": "linode", "region": "eu-central", "size": "g6-nanode-1", "upstream": "us"}
    )
    root = Path(tempfile.mkdtemp(prefix="plexcdn-retire-"))
    root.chmod(0o755)
    try:
        with relay.relay_lab(parse_config(values, "dev"), root, 8, prefix=f"pcq{os.getpid() % 1000}-") as built:
            yield built
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _peer_port_answer(lab: relay.RelayLab, edge: str) -> str:
    """The hub's peer port, asked by `edge` with its own client certificate: the HTTP status, or 000."""
    hub = lab.addresses[(edge, "us")][1]
    name = lab.config.pop_name("us")
    argv = [
        *("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20"),
        *("--cacert", str(lab.peer_ca.root_path), "--resolve", f"{name}:{render.PEER_PORT}:{hub}"),
        *("--cert", str(lab.pop_dir(edge) / "peer-client.crt")),
        *("--key", str(lab.conf(edge).parent / render.PEER_CLIENT_KEY_FILE)),
        f"https://{name}:{render.PEER_PORT}/identity",
    ]
    return lab.lab.run(edge, argv, check=False).stdout


def test_a_retired_edge_is_refused_by_its_hub_while_the_other_edge_still_works(three_pops: relay.RelayLab) -> None:
    """Issue #20, finding 5: asia leaves the stack; `pulumi up` gives the hub a release whose peer port no longer
    accepts asia's client CA. asia, still running with its credentials, is refused; eu is not."""
    lab = three_pops
    assert lab.viewer_pop == "eu"
    assert _peer_port_answer(lab, "asia") == _peer_port_answer(lab, "eu") == "200"
    retired = example_values()
    retired["pops"] = [pop for pop in retired["pops"] if pop["name"] != "asia"]
    retired["pops"].append(
        {"name": "eu", "provider": "linode", "region": "eu-central", "size": "g6-nanode-1", "upstream": "us"}
    )
    try:
        assert _redeploy(lab, ("us",), parse_config(retired, "dev")) == [0]
        time.sleep(1)  # old workers finish; new ones take the next connection
        assert _peer_port_answer(lab, "asia") == "400", "nginx refuses a client certificate it does not trust"
        assert _until_health(lab, "asia", 503)[0] == 503
        assert _peer_port_answer(lab, "eu") == "200"
        assert view(lab, "get", "/identity")["status"] == 200, "eu's viewers still reach Plex"
        assert _until_health(lab, "eu", 200)[0] == 200
    finally:
        assert _redeploy(lab, ("us",)) == [0]
