"""The lab's Plex stand-in, on loopback: ranges checked against the file's bytes, the notification
socket, identity, artwork counting, the token check, the headers log and the command line."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import random
import signal
import ssl
import stat
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from labs.lab_ca import LabCA
from labs.plex_standin import (
    ARTWORK_PATH,
    IDENTITY_PATH,
    MEDIA_PATH,
    SECTIONS_PATH,
    SLOW_PATH,
    WEBSOCKET_PATH,
    BackgroundOrigin,
    OriginSettings,
    RangeNotSatisfiableError,
    artwork_key,
    fetch_stats,
    make_media_file,
    media_bytes,
    parse_range,
    read_headers_log,
    redact_tokens,
    sha256_file,
    slow_body,
)

ROOT = Path(__file__).resolve().parent.parent
MEDIA_SIZE = 8 * 1024 * 1024 + 12345  # not a multiple of the chunk or AES block sizes
MEDIA_SEED = 7
TOKEN = "lab-token-7f3a9c"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("media") / "file.mkv"
    return path, make_media_file(path, MEDIA_SIZE, seed=MEDIA_SEED)


@pytest.fixture(scope="module")
def origin(media: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundOrigin]:
    log = tmp_path_factory.mktemp("logs") / "headers.jsonl"
    with BackgroundOrigin(OriginSettings(media=media[0], headers_log=log, token=TOKEN)) as running:
        yield running


Reply = tuple[int, Mapping[str, str], bytes]


def request(
    origin: BackgroundOrigin, path: str, headers: Mapping[str, str] | None = None, method: str = "GET"
) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=30)
    try:
        connection.request(method, path, headers=dict(headers or {}))
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


# --- media ---------------------------------------------------------------------------------------


def test_media_file_is_deterministic_and_seeded(media: tuple[Path, str], tmp_path: Path) -> None:
    path, digest = media
    assert path.stat().st_size == MEDIA_SIZE
    assert sha256_file(path) == digest
    again = make_media_file(tmp_path / "again.mkv", MEDIA_SIZE, seed=MEDIA_SEED)
    assert again == digest
    assert make_media_file(tmp_path / "other.mkv", MEDIA_SIZE, seed=MEDIA_SEED + 1) != digest
    data = path.read_bytes()
    assert len(set(data[:4096])) > 200  # not a repeated or sparse pattern
    for offset, length in ((0, 100), (5, 33), (1_000_003, 70_001), (MEDIA_SIZE - 17, 17)):
        assert media_bytes(MEDIA_SEED, offset, length) == data[offset : offset + length]


def test_full_get_and_head(origin: BackgroundOrigin, media: tuple[Path, str]) -> None:
    status, headers, body = request(origin, MEDIA_PATH)
    assert status == 200
    assert headers["accept-ranges"] == "bytes"
    assert int(headers["content-length"]) == MEDIA_SIZE
    assert hashlib.sha256(body).hexdigest() == media[1]
    status, headers, body = request(origin, "/library/parts/42/other-name.mkv", method="HEAD")
    assert status == 200
    assert int(headers["content-length"]) == MEDIA_SIZE
    assert headers["accept-ranges"] == "bytes"
    assert body == b""


def test_ranges_at_random_offsets(origin: BackgroundOrigin, media: tuple[Path, str]) -> None:
    data = media[0].read_bytes()
    rng = random.Random(20240611)
    cases: list[tuple[str, int, int]] = [
        ("bytes=0-0", 0, 0),
        (f"bytes={MEDIA_SIZE - 1}-", MEDIA_SIZE - 1, MEDIA_SIZE - 1),
        (f"bytes=-{MEDIA_SIZE + 10}", 0, MEDIA_SIZE - 1),
        (f"bytes=100-{MEDIA_SIZE * 2}", 100, MEDIA_SIZE - 1),
    ]
    for _ in range(12):
        first = rng.randrange(MEDIA_SIZE)
        last = min(MEDIA_SIZE - 1, first + rng.randrange(1, 600_000))
        cases.append((f"bytes={first}-{last}", first, last))
    for _ in range(4):
        first = rng.randrange(MEDIA_SIZE - 300_000, MEDIA_SIZE)
        cases.append((f"bytes={first}-", first, MEDIA_SIZE - 1))
        suffix = rng.randrange(1, 300_000)
        cases.append((f"bytes=-{suffix}", MEDIA_SIZE - suffix, MEDIA_SIZE - 1))
    for header, first, last in cases:
        status, headers, body = request(origin, MEDIA_PATH, {"Range": header})
        assert status == 206, header
        assert headers["content-range"] == f"bytes {first}-{last}/{MEDIA_SIZE}", header
        assert int(headers["content-length"]) == last - first + 1
        assert body == data[first : last + 1], header


def test_unsatisfiable_and_ignored_ranges(origin: BackgroundOrigin) -> None:
    for header in (f"bytes={MEDIA_SIZE}-", f"bytes={MEDIA_SIZE + 5}-{MEDIA_SIZE + 9}", "bytes=-0"):
        status, headers, body = request(origin, MEDIA_PATH, {"Range": header})
        assert status == 416, header
        assert headers["content-range"] == f"bytes */{MEDIA_SIZE}"
        assert body == b""
    for header in ("bytes=0-1,5-6", "items=0-10", "bytes=10-5", "bytes=x-y"):
        status, headers, _ = request(origin, MEDIA_PATH, {"Range": header}, method="HEAD")
        assert status == 200, header
        assert int(headers["content-length"]) == MEDIA_SIZE


def test_if_range(origin: BackgroundOrigin) -> None:
    _, headers, _ = request(origin, MEDIA_PATH, method="HEAD")
    status, _, body = request(origin, MEDIA_PATH, {"Range": "bytes=0-9", "If-Range": headers["etag"]})
    assert (status, len(body)) == (206, 10)
    status, _, body = request(origin, MEDIA_PATH, {"Range": "bytes=0-9", "If-Range": '"stale"'}, method="HEAD")
    assert status == 200


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=2-4", 10, (2, 4)),
        ("BYTES = 2 - 4", 10, (2, 4)),
        ("bytes=7-", 10, (7, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("bytes=3-300", 10, (3, 9)),
        ("bytes=-", 10, None),
        ("bytes=5-2", 10, None),
        ("bytes=1-2, 4-5", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=-5", 0), ("bytes=0-", 0)])
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiableError):
        parse_range(header, size)


# --- websocket -----------------------------------------------------------------------------------


def _wait_for(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def test_websocket_echo_push_and_no_pings(origin: BackgroundOrigin) -> None:
    opened_before = origin.stats()["websockets"]["opened"]

    async def scenario() -> list[Any]:
        seen: list[Any] = []
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(origin.url + WEBSOCKET_PATH, autoping=False) as socket_,
        ):
            hello = await socket_.receive(timeout=5)
            seen.append(json.loads(hello.data)["NotificationContainer"]["type"])
            await socket_.send_str("hello origin")
            seen.append((await socket_.receive(timeout=5)).data)
            await socket_.send_bytes(b"\x00\x01binary")
            seen.append((await socket_.receive(timeout=5)).data)
            # Silence: with autoping off a ping would surface here as a message.
            try:
                quiet = await socket_.receive(timeout=1.5)
                seen.append(("unexpected", quiet.type, quiet.data))
            except TimeoutError:
                seen.append("quiet")
            command = json.dumps({"lab": "push-after", "seconds": 0.2, "message": "after idle"})
            await socket_.send_str(command)
            seen.append((await socket_.receive(timeout=5)).data == command)
            pushed = json.loads((await socket_.receive(timeout=5)).data)["NotificationContainer"]
            seen.append((pushed["type"], pushed["message"]))
            delivered = await asyncio.get_running_loop().run_in_executor(None, origin.push, "from the test")
            seen.append(delivered)
            pushed = json.loads((await socket_.receive(timeout=5)).data)["NotificationContainer"]
            seen.append((pushed["type"], pushed["message"]))
            seen.append(origin.stats()["websockets"]["open"])
        return seen

    seen = asyncio.run(scenario())
    assert seen == [
        "lab.hello",
        "hello origin",
        b"\x00\x01binary",
        "quiet",
        True,
        ("lab.push", "after idle"),
        1,
        ("lab.push", "from the test"),
        1,
    ]
    assert _wait_for(lambda: origin.stats()["websockets"]["open"] == 0)
    assert origin.stats()["websockets"]["opened"] == opened_before + 1


def test_http_push_reaches_open_sockets(origin: BackgroundOrigin) -> None:
    async def scenario() -> tuple[Any, Any]:
        async with aiohttp.ClientSession() as session, session.ws_connect(origin.url + WEBSOCKET_PATH) as socket_:
            await socket_.receive(timeout=5)
            async with session.post(origin.url + "/lab/push", data="via http") as reply:
                answer = await reply.json()
            pushed = json.loads((await socket_.receive(timeout=5)).data)
            return answer, pushed["NotificationContainer"]["message"]

    assert asyncio.run(scenario()) == ({"delivered": 1}, "via http")


# --- identity, token, artwork --------------------------------------------------------------------


def test_identity_is_plex_like_xml(origin: BackgroundOrigin) -> None:
    status, headers, body = request(origin, IDENTITY_PATH)
    assert status == 200
    assert headers["content-type"].startswith("text/xml")
    container = ET.fromstring(body)  # noqa: S314 - the test's own origin wrote it
    assert container.tag == "MediaContainer"
    assert container.get("size") == "0"
    assert container.get("machineIdentifier") == origin.settings.machine_identifier
    assert container.get("version")


def test_sections_need_the_token(origin: BackgroundOrigin) -> None:
    assert request(origin, SECTIONS_PATH)[0] == 401
    assert request(origin, f"{SECTIONS_PATH}?X-Plex-Token=wrong")[0] == 401
    assert request(origin, SECTIONS_PATH, {"X-Plex-Token": "wrong"})[0] == 401
    assert request(origin, f"{SECTIONS_PATH}?X-Plex-Token=")[0] == 401
    status, _, body = request(origin, f"{SECTIONS_PATH}?X-Plex-Token={TOKEN}")
    assert status == 200
    assert ET.fromstring(body).find("Directory") is not None  # noqa: S314 - the test's own origin wrote it
    assert request(origin, SECTIONS_PATH, {"X-Plex-Token": TOKEN})[0] == 200
    assert request(origin, f"{SECTIONS_PATH}?x-plex-token={TOKEN}&other=1")[0] == 200


def _png_size(body: bytes) -> tuple[int, int]:
    assert body[:8] == b"\x89PNG\r\n\x1a\n"
    assert body[12:16] == b"IHDR"
    width, height = struct.unpack(">II", body[16:24])
    return width, height


def test_artwork_is_deterministic_and_counted(origin: BackgroundOrigin) -> None:
    query = "url=%2Flibrary%2Fmetadata%2F7%2Fthumb%2F1700000000&width=120&height=180"
    key = artwork_key(ARTWORK_PATH, query)
    first = request(origin, f"{ARTWORK_PATH}?{query}&X-Plex-Token={TOKEN}")
    second = request(origin, f"{ARTWORK_PATH}?X-Plex-Token={TOKEN}&{query}")
    assert first[0] == second[0] == 200
    assert first[2] == second[2]
    assert _png_size(first[2]) == (120, 180)
    assert first[1]["content-type"] == "image/png"
    assert "max-age" in first[1]["cache-control"]
    assert (first[1]["x-lab-origin-hit"], second[1]["x-lab-origin-hit"]) == ("1", "2")
    assert origin.stats()["artwork"]["by_key"][key] == 2
    assert fetch_stats(origin.url)["artwork"]["by_key"][key] == 2

    other = request(
        origin, f"{ARTWORK_PATH}?url=%2Flibrary%2Fmetadata%2F8%2Fthumb&width=120&height=180", {"X-Plex-Token": TOKEN}
    )
    assert other[2] != first[2]
    smaller = request(
        origin, f"{ARTWORK_PATH}?url=%2Flibrary%2Fmetadata%2F7%2Fthumb%2F1700000000&width=60", {"X-Plex-Token": TOKEN}
    )
    assert _png_size(smaller[2]) == (60, 64)
    assert origin.stats()["artwork"]["by_key"][key] == 2
    assert request(origin, f"{ARTWORK_PATH}?width=wide", {"X-Plex-Token": TOKEN})[0] == 400


def test_artwork_needs_the_token(origin: BackgroundOrigin) -> None:
    query = "url=https%3A%2F%2Fimage.tmdb.org%2Ft%2Fp%2Fw300%2Fposter.jpg&width=120"
    assert request(origin, f"{ARTWORK_PATH}?{query}")[0] == 401
    assert request(origin, f"{ARTWORK_PATH}?{query}&X-Plex-Token=someone-else")[0] == 401
    assert request(origin, f"{ARTWORK_PATH}?{query}", {"X-Plex-Token": TOKEN})[0] == 200


def test_artwork_key_drops_and_redacts_tokens() -> None:
    nested = "url=%2Fthumb%3FX-Plex-Token%3Dnested-secret&width=10&X-Plex-Token=top-secret"
    key = artwork_key(ARTWORK_PATH, nested)
    assert "secret" not in key
    assert key == f"{ARTWORK_PATH}?url=%2Fthumb%3FX-Plex-Token%3DREDACTED&width=10"
    assert redact_tokens("/a?x-plex-token=abc&b=1") == "/a?x-plex-token=REDACTED&b=1"


# --- slow stream ---------------------------------------------------------------------------------


def test_slow_stream_is_complete_and_counted(origin: BackgroundOrigin) -> None:
    before = origin.stats()["slow"]
    status, headers, body = request(origin, f"{SLOW_PATH}?rate=40000&seconds=0.5")
    assert status == 200
    assert int(headers["content-length"]) == 20000
    assert body == slow_body(0, 20000)
    # The handler counts after its last write, which the client may have read already.
    assert _wait_for(lambda: origin.stats()["slow"]["completed"] == before["completed"] + 1)
    assert request(origin, f"{SLOW_PATH}?seconds=100000")[0] == 400


def test_slow_stream_abort_is_seen(origin: BackgroundOrigin) -> None:
    before = origin.stats()["slow"]["aborted"]
    connection = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=10)
    connection.request("GET", f"{SLOW_PATH}?rate=20000&seconds=30")
    response = connection.getresponse()
    assert response.read(1000) == slow_body(0, 1000)
    connection.close()
    assert _wait_for(lambda: origin.stats()["slow"]["aborted"] == before + 1)


def test_slow_body_period() -> None:
    assert slow_body(0, 600) == slow_body(0, 250) + slow_body(250, 350)
    assert slow_body(251, 10) == slow_body(0, 10)


# --- headers log ---------------------------------------------------------------------------------


def test_headers_log_records_what_arrived(origin: BackgroundOrigin) -> None:
    marker = f"marker-{os.getpid()}-{time.monotonic_ns()}"
    path = f"{SECTIONS_PATH}?X-Plex-Token={TOKEN}&probe={marker}"
    request(origin, path, {"X-Forwarded-For": "198.18.0.9", "X-Lab-Marker": marker, "X-Plex-Token": TOKEN})
    lines = origin.settings.headers_log.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == read_headers_log(origin.settings.headers_log)
    mine = [record for record in records if marker in record["path"]]
    assert len(mine) == 1
    record = mine[0]
    assert record["method"] == "GET"
    assert record["path"] == path
    assert record["peer"] == "127.0.0.1"
    assert isinstance(record["peer_port"], int)
    assert record["tls"] is False
    assert record["headers"]["x-forwarded-for"] == "198.18.0.9"
    assert record["headers"]["x-lab-marker"] == marker
    assert record["headers"]["x-plex-token"] == TOKEN
    assert ["X-Lab-Marker", marker] in record["raw_headers"]
    assert stat.S_IMODE(origin.settings.headers_log.stat().st_mode) == 0o600


# --- command line, with TLS ----------------------------------------------------------------------


def test_command_line_origin_over_tls(media: tuple[Path, str], tmp_path: Path) -> None:
    ca = LabCA.create(tmp_path / "ca", "Origin Lab")
    leaf = ca.issue(["origin.lab.test", "127.0.0.1"], tmp_path / "letsencrypt", "origin")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    ready, stats_file, log = tmp_path / "ready.json", tmp_path / "stats.json", tmp_path / "headers.jsonl"
    argv = [
        sys.executable,
        "-m",
        "labs.plex_standin",
        "--listen",
        "127.0.0.1:0",
        "--media",
        str(media[0]),
        "--headers-log",
        str(log),
        "--tls-cert",
        str(leaf.fullchain),
        "--tls-key",
        str(leaf.privkey),
        "--token-file",
        str(token_file),
        "--ready-file",
        str(ready),
        "--stats-file",
        str(stats_file),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        assert _wait_for(ready.exists, timeout=20), "origin did not write its ready file"
        port = json.loads(ready.read_text())["port"]
        context = ssl.create_default_context(cafile=str(ca.bundle_path))
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
        connection.request("GET", f"{SECTIONS_PATH}?X-Plex-Token={TOKEN}")
        reply = connection.getresponse()
        reply.read()
        assert reply.status == 200
        connection.request("GET", MEDIA_PATH, headers={"Range": "bytes=1000-1999"})
        reply = connection.getresponse()
        assert reply.status == 206
        assert reply.read() == media_bytes(MEDIA_SEED, 1000, 1000)
        connection.request("GET", f"{ARTWORK_PATH}?url=%2Fa%3FX-Plex-Token%3D{TOKEN}&X-Plex-Token={TOKEN}")
        assert connection.getresponse().read()[:4] == b"\x89PNG"
        connection.close()
        assert _wait_for(lambda: stats_file.exists() and json.loads(stats_file.read_text())["requests"] == 3)
        assert all(record["tls"] for record in read_headers_log(log))
        assert TOKEN not in stats_file.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    assert process.returncode == 0
    printed = output.decode()
    assert "listening on https://127.0.0.1:" in printed
    assert "REDACTED" in printed
    assert TOKEN not in printed
