"""The WAN benchmark's viewer, run inside the client namespace: one scenario's measurements, as a player
would make them, printed as one JSON object.

    python -m labs.bench_client URL --ca CA_FILE --plan PLAN_JSON

URL is the media file as the viewer reaches it (through its POP, or straight at the Plex server). In
order: the first startup after the POPs (re)started, fresh sessions' startups, seeks on one open
connection, a bulk download, then one playback per bitrate. HTTP/1.1 over TLS is spoken directly on the
socket, so every time is taken where the bytes are, and reads never block past a step's deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import socket
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from labs.wan_bench_report import PlayerModel, PlayerSettings, rate_key

POLL_S: Final = 0.2
RECV_SIZE: Final = 256 * 1024
HEAD_LIMIT: Final = 64 * 1024
PROBE_BYTES: Final = 64 * 1024  # what a startup or a seek asks for: enough to see the first byte arrive
SEEK_ALIGN: Final = 64 * 1024
CURVE_STEP_S: Final = 0.25
READ_AHEAD_STEP_S: Final = 0.5  # a player with a full buffer reads again once this much has played
STEP_LIMIT_S: Final = 900.0
PLAYBACK_RECONNECTS: Final = 5


class StepTimeoutError(TimeoutError):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    length: int
    sent_at: float
    first_byte_at: float
    leftover: int  # body bytes that came with the head

    @property
    def ttfb_s(self) -> float:
        return self.first_byte_at - self.sent_at

    def total_size(self) -> int | None:
        match = re.fullmatch(r"bytes \d+-\d+/(\d+)", self.headers.get("content-range", ""))
        return int(match.group(1)) if match else None


class Connection:
    """One keep-alive HTTP/1.1 connection over TLS, verified against the lab CA."""

    def __init__(self, url: str, ca_file: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host = parsed.hostname or ""
        self.port = parsed.port or 443
        self.path = parsed.path
        self.context = ssl.create_default_context(cafile=ca_file)
        self.tls: ssl.SSLSocket | None = None
        self.buffer = bytearray(RECV_SIZE)

    def open(self, deadline: float) -> dict[str, float]:
        started = time.monotonic()
        raw = socket.create_connection((self.host, self.port), timeout=max(deadline - started, 0.1))
        connected = time.monotonic()
        # As players and browsers do: without it the request after the TLS handshake waits for an ACK.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            # No session resumption: every open is a fresh viewer session.
            self.tls = self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self.tls.settimeout(POLL_S)
        return {"tcp_s": connected - started, "tls_s": time.monotonic() - connected}

    def close(self) -> None:
        if self.tls is not None:
            self.tls.close()
            self.tls = None

    def receive(self, deadline: float) -> int:
        """Bytes read into `buffer` (0: nothing before the poll interval ended); EOF raises."""
        assert self.tls is not None
        if time.monotonic() >= deadline:
            raise StepTimeoutError("deadline passed while reading")
        try:
            count = self.tls.recv_into(self.buffer, RECV_SIZE)
        except TimeoutError:
            return 0
        if count == 0:
            raise ConnectionError("the server closed the connection")
        return count

    def request(self, first_byte: int, last_byte: int | None, deadline: float) -> Response:
        assert self.tls is not None
        span = f"{first_byte}-{'' if last_byte is None else last_byte}"
        head = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nRange: bytes={span}\r\n"
            "User-Agent: plexcdn-bench\r\nAccept: */*\r\n\r\n"
        )
        sent_at = time.monotonic()
        self.tls.sendall(head.encode())
        received = bytearray()
        first_byte_at = 0.0
        while b"\r\n\r\n" not in received:
            count = self.receive(deadline)
            if count and not received:
                first_byte_at = time.monotonic()
            received += self.buffer[:count]
            if len(received) > HEAD_LIMIT:
                raise ConnectionError("response head too long")
        head_bytes, _, rest = bytes(received).partition(b"\r\n\r\n")
        status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise ConnectionError(f"no Content-Length in the response: {status_line}")
        return Response(
            int(status_line.split()[1]), headers, int(headers["content-length"]), sent_at, first_byte_at, len(rest)
        )

    def drain(self, response: Response, deadline: float, on_data: Callable[[float, int], None] | None = None) -> int:
        """Read the rest of the body (or until the deadline); returns the body bytes read in all."""
        done = response.leftover
        if on_data is not None and done:
            on_data(response.first_byte_at, done)
        while done < response.length and time.monotonic() < deadline:
            count = self.receive(deadline)
            if count:
                done += count
                if on_data is not None:
                    on_data(time.monotonic(), count)
        return done


def probe(url: str, ca_file: str, offset: int, deadline: float) -> dict[str, Any]:
    """A fresh session's startup: connect, TLS, one small range; the TTFB counts from the first SYN."""
    connection = Connection(url, ca_file)
    started = time.monotonic()
    try:
        timings = connection.open(deadline)
        response = connection.request(offset, offset + PROBE_BYTES - 1, deadline)
        connection.drain(response, deadline)
    finally:
        connection.close()
    return {
        "status": response.status,
        "ttfb_s": response.first_byte_at - started,
        "request_ttfb_s": response.ttfb_s,
        **timings,
    }


def seeks(url: str, ca_file: str, count: int, *, rng: random.Random, pause_s: float, deadline: float) -> dict[str, Any]:
    """`count` ranges at offsets not asked for before, one after another on one open connection."""
    connection = Connection(url, ca_file)
    try:
        connection.open(deadline)
        warm = connection.request(0, PROBE_BYTES - 1, deadline)
        connection.drain(warm, deadline)
        size = warm.total_size() or PROBE_BYTES
        slots = rng.sample(range(1, max(size // SEEK_ALIGN - 1, 2)), k=min(count, max(size // SEEK_ALIGN - 2, 1)))
        ttfbs = []
        for slot in slots:
            time.sleep(pause_s)
            response = connection.request(slot * SEEK_ALIGN, slot * SEEK_ALIGN + PROBE_BYTES - 1, deadline)
            connection.drain(response, deadline)
            if response.status != 206:
                raise ConnectionError(f"seek answered {response.status}")
            ttfbs.append(response.ttfb_s)
    finally:
        connection.close()
    return {"ttfb_s": ttfbs}


def throughput(url: str, ca_file: str, seconds: float) -> dict[str, Any]:
    """A bulk download from the start of the file for `seconds`; the rate counts from the first byte."""
    connection = Connection(url, ca_file)
    curve: list[tuple[float, int]] = []
    total = 0
    try:
        connection.open(time.monotonic() + seconds)
        response = connection.request(0, None, time.monotonic() + seconds)
        end = response.sent_at + seconds
        next_sample = response.sent_at
        halfway = response.first_byte_at + (end - response.first_byte_at) / 2
        at_halfway: int | None = None

        def on_data(now: float, count: int) -> None:
            nonlocal total, next_sample, at_halfway
            if at_halfway is None and now >= halfway:
                at_halfway = total
            total += count
            if now >= next_sample:
                curve.append((round(now - response.sent_at, 3), total))
                next_sample = now + CURVE_STEP_S

        with contextlib.suppress(StepTimeoutError):
            connection.drain(response, end, on_data)
    finally:
        connection.close()
    whole_s = end - response.first_byte_at
    return {
        "status": response.status,
        "bytes": total,
        "ttfb_s": response.ttfb_s,
        "mbit": total * 8 / whole_s / 1e6,
        "second_half_mbit": (total - (at_halfway or 0)) * 8 / (end - halfway) / 1e6,
        "curve": curve,
    }


def playback(url: str, ca_file: str, settings: PlayerSettings, window_s: float) -> dict[str, Any]:
    """Press play on a fresh session and watch for `window_s`: the player reads only while its buffer
    is below `max_buffer_s`, asks again from where it is when a response ends, and reconnects (a few
    times at most) when the server closes the connection."""
    connection = Connection(url, ca_file)
    started = time.monotonic()
    end = started + window_s
    model = PlayerModel(settings, started_at=started)
    position, requests, reconnects = 0, 0, 0
    try:
        connection.open(end)
        while time.monotonic() < end:
            try:
                position = _play_one_response(connection, model, position, end)
                requests += 1
            except ConnectionError:
                if reconnects >= PLAYBACK_RECONNECTS:
                    raise
                reconnects += 1
                connection.close()
                connection.open(end)
    except StepTimeoutError:
        pass
    finally:
        connection.close()
    result = model.finish(end).to_dict()
    return {**result, "requests": requests, "reconnects": reconnects, "bytes": model.received_bytes}


def _play_one_response(connection: Connection, model: PlayerModel, position: int, end: float) -> int:
    """Request the file from `position` and feed the player until the body ends or time is up;
    returns where the next request starts."""
    settings = model.settings
    response = connection.request(position, None, end)
    if response.status not in (200, 206):
        raise ConnectionError(f"playback request answered {response.status}")
    # Bytes that arrive after the window closed are not the player's: a read may return late.
    if response.leftover and response.first_byte_at < end:
        model.receive(response.first_byte_at, response.leftover)
    done = response.leftover
    while done < response.length:
        now = time.monotonic()
        if now >= end:
            break
        ahead = model.ahead_s(now)
        if ahead >= settings.max_buffer_s:
            time.sleep(min(ahead - settings.max_buffer_s + READ_AHEAD_STEP_S, end - now))
            continue
        count = connection.receive(end)
        arrived = time.monotonic()
        if count and arrived < end:
            done += count
            model.receive(arrived, count)
    size = response.total_size() or 0
    return (position + done) % size if size else 0


def run_plan(url: str, ca_file: str, plan: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(plan.get("seed", 0))  # noqa: S311 - offsets to fetch, nothing secret
    pause_s = float(plan.get("pause_s", 1.0))
    result: dict[str, Any] = {"errors": []}

    def step(name: str, action: Callable[[], Any]) -> None:
        try:
            result[name] = action()
        except (OSError, ValueError, ssl.SSLError) as error:
            result["errors"].append(f"{name}: {type(error).__name__}: {error}")
        time.sleep(pause_s)

    def limit(seconds: float) -> float:
        return time.monotonic() + min(seconds, STEP_LIMIT_S)

    probe_limit = float(plan.get("probe_limit_s", 20.0))
    step("startup_cold", lambda: probe(url, ca_file, 0, limit(probe_limit)))
    result["startups"] = []
    for index in range(int(plan.get("startups", 2))):
        try:
            result["startups"].append(probe(url, ca_file, (index + 1) * SEEK_ALIGN, limit(probe_limit)))
        except (OSError, ValueError, ssl.SSLError) as error:
            result["errors"].append(f"startup {index}: {type(error).__name__}: {error}")
        time.sleep(pause_s)
    seek_count = int(plan.get("seeks", 4))
    step(
        "seeks",
        lambda: seeks(
            url, ca_file, seek_count, rng=rng, pause_s=pause_s / 2, deadline=limit(probe_limit * (seek_count + 1))
        ),
    )
    step("throughput", lambda: throughput(url, ca_file, min(float(plan["throughput_s"]), STEP_LIMIT_S)))
    result["playback"] = {}
    for rate in plan["bitrates_mbit"]:
        settings = PlayerSettings(float(rate), **plan.get("player", {}))
        try:
            result["playback"][rate_key(rate)] = playback(
                url, ca_file, settings, min(float(plan["playback_s"]), STEP_LIMIT_S)
            )
        except (OSError, ValueError, ssl.SSLError) as error:
            result["errors"].append(f"playback {rate}: {type(error).__name__}: {error}")
        time.sleep(pause_s)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.bench_client", description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--ca", required=True, help="CA bundle the servers' certificates chain to")
    parser.add_argument("--plan", required=True, help="JSON: startups, seeks, throughput_s, playback_s, ...")
    args = parser.parse_args(argv)
    print(json.dumps(run_plan(args.url, args.ca, json.loads(args.plan))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
