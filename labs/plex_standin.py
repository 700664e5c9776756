"""A stand-in for a Plex Media Server, for the relay lab: the parts of Plex a relay can break.

Endpoints (all paths are constants below):
- `MEDIA_PATH` (any `/library/parts/<id>/<file>`): one media file with single byte ranges, HEAD,
  If-Range, 416 for unsatisfiable ranges, streamed in chunks.
- `WEBSOCKET_PATH`: Plex's notification socket. Sends a hello on connect, echoes every message, pushes
  on request (`POST /lab/push`, or a `{"lab": "push-after", ...}` message), never pings.
- `IDENTITY_PATH`: Plex's unauthenticated identity document.
- `ARTWORK_PATH`: needs X-Plex-Token, as Plex's photo transcoder does; a small deterministic PNG per query
  (X-Plex-Token excluded) with Cache-Control; every hit is counted, so a cache in front can be observed.
- `SECTIONS_PATH`: needs X-Plex-Token (query or header), 401 without it.
- `SLOW_PATH`: a bounded stream at a fixed rate, to hold a connection open across a reload.
- `STATS_PATH`: counters as JSON (also written to `--stats-file`).
- `PREFS_PATH`: Plex's preferences (`GET`, XML or JSON with `Accept: application/json`; `PUT ?<id>=<value>`), the
  owner's token required; a preference named in `refused_prefs` is refused with 400, as Plex refuses a value.
- `SESSIONS_PATH`: Plex's current sessions (XML or JSON), the owner's token required. A media request carrying
  `X-Plex-Client-Identifier` starts or refreshes the session of that client: its address is the peer's, or the
  first `X-Forwarded-For` entry when the peer is private (Plex trusts the header only from a private address).
  `LAB_SESSIONS_PATH` adds sessions (`POST`, a JSON list) and clears them (`DELETE`).

Every request is appended to the headers log as one JSON line with exactly what arrived, tokens
included: the lab checks what reached the origin, so the log is created 0600. Nothing this module
prints carries a token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import hashlib
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractAccessLogger
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MEDIA_PATH: Final = "/library/parts/1/file.mkv"
MEDIA_ROUTE: Final = "/library/parts/{part_id}/{file_name}"
WEBSOCKET_PATH: Final = "/:/websockets/notifications"
IDENTITY_PATH: Final = "/identity"
ARTWORK_PATH: Final = "/photo/:/transcode"
SECTIONS_PATH: Final = "/library/sections"
SLOW_PATH: Final = "/lab/slow"
PUSH_PATH: Final = "/lab/push"
STATS_PATH: Final = "/lab/stats"
PREFS_PATH: Final = "/:/prefs"
SESSIONS_PATH: Final = "/status/sessions"
LAB_SESSIONS_PATH: Final = "/lab/sessions"
CLIENT_ID_HEADER: Final = "X-Plex-Client-Identifier"

TOKEN_NAME: Final = "X-Plex-Token"  # noqa: S105 - the parameter's name, not a token
DEFAULT_MACHINE_IDENTIFIER: Final = "6c61626f726967696e706c65786364e5c0ffee42"
DEFAULT_VERSION: Final = "1.40.0.7998-c29d4c0c8"
DEFAULT_ARTWORK_CACHE_CONTROL: Final = "public, max-age=86400"

MEDIA_CHUNK: Final = 256 * 1024
MEDIA_CONTENT_TYPE: Final = "video/x-matroska"
ARTWORK_MAX_SIDE: Final = 256
ARTWORK_DEFAULT_SIDE: Final = 64
SLOW_MAX_SECONDS: Final = 600.0
SLOW_MAX_RATE: Final = 50_000_000
SLOW_TICK_SECONDS: Final = 0.1
SLOW_PATTERN_PERIOD: Final = 251
PUSH_AFTER_MAX_SECONDS: Final = 3600.0
STATS_FILE_INTERVAL: Final = 0.1
WEBSOCKET_CLOSE_TIMEOUT: Final = 2.0  # how long a shutdown waits for a client's close frame
SESSION_IDLE_SECONDS: Final = 600.0  # a session without a request for this long has ended
SESSION_BITRATE_KBPS: Final = 20000
DEFAULT_OWNER_NAME: Final = "lab-owner"

_log = logging.getLogger("labs.plex_standin")

# --- media files ---------------------------------------------------------------------------------

_AES_BLOCK: Final = 16
_GENERATE_CHUNK: Final = 4 * 1024 * 1024


def _keystream(seed: int, offset: int) -> Any:
    """AES-256-CTR over zeros: seeded, fast (GB/s), and any offset can be produced without the rest."""
    key = hashlib.sha256(f"plexcdn-lab-media:{seed}".encode()).digest()
    counter = (offset // _AES_BLOCK).to_bytes(_AES_BLOCK, "big")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    encryptor.update(bytes(offset % _AES_BLOCK))
    return encryptor


def media_bytes(seed: int, offset: int, length: int) -> bytes:
    """The bytes `make_media_file(..., seed)` puts at `offset`, computed without the file."""
    if offset < 0 or length < 0:
        raise ValueError("offset and length must not be negative")
    return bytes(_keystream(seed, offset).update(bytes(length)))


def make_media_file(path: Path, size: int, seed: int = 0) -> str:
    """Write `size` deterministic pseudo-random bytes (every block really written) and return their sha256."""
    if size < 0:
        raise ValueError("size must not be negative")
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = _keystream(seed, 0)
    digest = hashlib.sha256()
    zeros = bytes(_GENERATE_CHUNK)
    temporary = path.with_name(path.name + ".partial")
    with temporary.open("wb") as out:
        left = size
        while left > 0:
            chunk = stream.update(zeros[: min(left, _GENERATE_CHUNK)])
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    temporary.replace(path)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_GENERATE_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_SLOW_PATTERN: Final = bytes(range(SLOW_PATTERN_PERIOD))


def slow_body(offset: int, length: int) -> bytes:
    """The bytes `SLOW_PATH` sends at `offset`: a period that no chunk size divides, so a lost or
    repeated chunk shows up as a mismatch."""
    phase = offset % SLOW_PATTERN_PERIOD
    repeats = (phase + length) // SLOW_PATTERN_PERIOD + 1
    return (_SLOW_PATTERN * repeats)[phase : phase + length]


# --- byte ranges ---------------------------------------------------------------------------------


class RangeNotSatisfiableError(ValueError):
    """A well-formed single range that selects no byte of the representation (answered with 416)."""


_RANGE_RE: Final = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte a Range header selects, or None to answer with the whole file.

    Only a single range is served. A header that is not one syntactically valid byte range (several
    ranges, another unit, last < first) is ignored, which RFC 9110 allows; a valid range that selects
    nothing raises RangeNotSatisfiableError.
    """
    if header is None:
        return None
    match = _RANGE_RE.match(header)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if first_text == "" and last_text == "":
        return None
    if first_text == "":
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiableError(header)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = int(last_text) if last_text != "" else size - 1
    if last_text != "" and last < first:
        return None
    if first >= size:
        raise RangeNotSatisfiableError(header)
    return first, min(last, size - 1)


# --- tokens and redaction ------------------------------------------------------------------------

_TOKEN_IN_TEXT: Final = re.compile(r"(x-plex-token(?:=|%3d))(.*?)(?=&|%26|$)", re.IGNORECASE)


def redact_tokens(text: str) -> str:
    """Hide X-Plex-Token values in a path or query, also when URL-encoded inside another parameter."""
    return _TOKEN_IN_TEXT.sub(r"\1REDACTED", text)


def _query_pairs(query_string: str) -> list[tuple[str, str]]:
    pairs = []
    for part in query_string.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((urllib.parse.unquote_plus(name), urllib.parse.unquote_plus(value)))
    return pairs


def request_token(request: web.BaseRequest) -> str:
    """The token a Plex server would read: the query parameter (any case), else the header."""
    for name, value in _query_pairs(request.rel_url.raw_query_string):
        if name.lower() == TOKEN_NAME.lower() and value:
            return value
    return request.headers.get(TOKEN_NAME, "")


def artwork_key(raw_path: str, raw_query: str) -> str:
    """What an artwork body depends on, and what its hits are counted by: the raw path and query with the
    top-level X-Plex-Token dropped and any token nested in another parameter (`url=...%3FX-Plex-Token%3D...`)
    redacted, so neither the body nor the stats carry a token."""
    kept = [
        part
        for part in raw_query.split("&")
        if part and urllib.parse.unquote_plus(part.partition("=")[0]).lower() != TOKEN_NAME.lower()
    ]
    return redact_tokens(f"{raw_path}?{'&'.join(kept)}")


# --- artwork -------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def artwork_png(key: str, width: int, height: int) -> bytes:
    """A valid PNG whose size and pixels come from the request, so different requests differ."""
    digest = hashlib.sha256(key.encode()).digest()
    base = digest[:3]
    reds = bytes((base[0] + x) & 0xFF for x in range(width))
    rows = bytearray()
    for y in range(height):
        row = bytearray(3 * width)
        row[0::3] = reds
        row[1::3] = bytes([(base[1] + y) & 0xFF]) * width
        row[2::3] = bytes([base[2]]) * width
        rows += b"\x00" + row  # filter type 0 for each scanline
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    text = b"plexcdn-lab\x00" + digest.hex().encode()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"tEXt", text)
        + _png_chunk(b"IDAT", zlib.compress(bytes(rows), 6))
        + _png_chunk(b"IEND", b"")
    )


def _side(request: web.Request, name: str) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return ARTWORK_DEFAULT_SIDE
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer\n") from None
    return max(1, min(value, ARTWORK_MAX_SIDE))


# --- state ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OriginSettings:
    media: Path
    headers_log: Path
    token: str | None = None  # None: any non-empty token is accepted
    machine_identifier: str = DEFAULT_MACHINE_IDENTIFIER
    version: str = DEFAULT_VERSION
    artwork_cache_control: str = DEFAULT_ARTWORK_CACHE_CONTROL
    stats_file: Path | None = None
    refused_prefs: frozenset[str] = frozenset()  # PUTs of these are answered 400 and change nothing
    initial_prefs: tuple[tuple[str, str], ...] = ()  # values other than Plex's defaults at start
    owner_name: str = DEFAULT_OWNER_NAME


@dataclass
class OriginStats:
    """Counters, read from other threads (BackgroundOrigin), hence the lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    artwork_hits: Counter[str] = field(default_factory=Counter)
    media_responses: int = 0
    media_bytes_sent: int = 0
    media_aborted: int = 0
    websockets_opened: int = 0
    websockets_closed: int = 0
    websocket_messages_received: int = 0
    websocket_messages_sent: int = 0
    slow_started: int = 0
    slow_completed: int = 0
    slow_aborted: int = 0
    changed: bool = True

    def add(self, **amounts: int) -> None:
        with self.lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)
            self.changed = True

    def hit_artwork(self, key: str) -> int:
        with self.lock:
            self.artwork_hits[key] += 1
            self.changed = True
            return self.artwork_hits[key]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "artwork": {"hits": sum(self.artwork_hits.values()), "by_key": dict(self.artwork_hits)},
                "media": {
                    "responses": self.media_responses,
                    "bytes_sent": self.media_bytes_sent,
                    "aborted": self.media_aborted,
                },
                "websockets": {
                    "open": self.websockets_opened - self.websockets_closed,
                    "opened": self.websockets_opened,
                    "closed": self.websockets_closed,
                    "messages_received": self.websocket_messages_received,
                    "messages_sent": self.websocket_messages_sent,
                },
                "slow": {"started": self.slow_started, "completed": self.slow_completed, "aborted": self.slow_aborted},
            }


# --- preferences and sessions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefDefinition:
    """One preference as /:/prefs describes it (ids, labels, types and defaults as Plex lists them)."""

    id: str
    label: str
    summary: str
    type: str  # text | int | bool
    default: str
    hidden: bool = False
    advanced: bool = True
    group: str = "network"
    enum_values: str = ""


PREF_DEFINITIONS: Final = (
    PrefDefinition(
        "FriendlyName", "Friendly name", "This name identifies this media server.", "text", "", False, False, "general"
    ),
    PrefDefinition(
        "customConnections",
        "Custom server access URLs",
        "A comma-separated list of URLs (http or https) which are published up to plex.tv for server discovery.",
        "text",
        "",
    ),
    PrefDefinition(
        "secureConnections",
        "Secure connections",
        'When set to "Required", some unencrypted connections (originating from the Media Server computer) will '
        "still be allowed and apps that don't support secure connections will not be able to connect at all.",
        "int",
        "1",
        advanced=False,
        enum_values="1:Preferred|0:Required",
    ),
    PrefDefinition(
        "PublishServerOnPlexOnlineKey",
        "Publish server on Plex Online",
        "Publishing a server makes it automatically available on your client devices without any configuration of "
        "your router.",
        "bool",
        "0",
        hidden=True,
        advanced=False,
        group="",
    ),
    PrefDefinition(
        "RelayEnabled",
        "Enable Relay",
        "The Relay allows connections to the server through a proxy relay when the server is not accessible "
        "otherwise.  Note: this proxy relay is bandwidth limited",
        "bool",
        "1",
    ),
    PrefDefinition(
        "LanNetworksBandwidth",
        "LAN Networks",
        "Comma separated list of IP addresses or IP/netmask entries for networks that will be considered to be on "
        "the local network when enforcing bandwidth restrictions.",
        "text",
        "",
    ),
    PrefDefinition(
        "allowedNetworks",
        "List of IP addresses and networks that are allowed without auth",
        "Comma separated list of IP addresses or IP/netmask entries for networks that are allowed to access Plex "
        "Media Server without logging in.",
        "text",
        "",
    ),
    PrefDefinition("customCertificateKey", "Custom certificate encryption key", "", "text", ""),
)


def _pref_value(definition: PrefDefinition, raw: str) -> str:
    """A PUT value as the stand-in stores it (bools as 1/0, ints as digits); ValueError when Plex would refuse it."""
    if definition.type == "bool":
        lowered = raw.lower()
        if lowered in ("1", "true"):
            return "1"
        if lowered in ("0", "false"):
            return "0"
        raise ValueError(raw)
    if definition.type == "int":
        number = int(raw)
        if definition.enum_values and str(number) not in [v.split(":")[0] for v in definition.enum_values.split("|")]:
            raise ValueError(raw)
        return str(number)
    return raw


class PrefsState:
    """Plex's preferences as one server holds them, changed only by PUTs."""

    def __init__(self, initial: tuple[tuple[str, str], ...]) -> None:
        self.lock = threading.Lock()
        self.definitions = {definition.id: definition for definition in PREF_DEFINITIONS}
        self.values = {definition.id: definition.default for definition in PREF_DEFINITIONS}
        for name, value in initial:
            self.values[name] = _pref_value(self.definitions[name], value)
        self.puts: list[str] = []  # the names every PUT asked to change, in order

    def get(self, name: str) -> str:
        with self.lock:
            return self.values[name]

    def settings(self) -> list[tuple[PrefDefinition, str]]:
        with self.lock:
            return [(definition, self.values[definition.id]) for definition in PREF_DEFINITIONS]


@dataclass
class LabSession:
    client_id: str
    user: str
    address: str
    product: str
    platform: str
    device: str
    local: bool
    secure: bool
    relayed: bool = False
    transcode: bool = False
    bitrate_kbps: int = SESSION_BITRATE_KBPS
    title: str = "Lab Movie"
    last_seen: float = field(default_factory=time.monotonic)


class SessionsState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions: dict[str, LabSession] = {}

    def put(self, session: LabSession) -> None:
        with self.lock:
            self.sessions[session.client_id] = session

    def current(self) -> list[LabSession]:
        now = time.monotonic()
        with self.lock:
            for key in [k for k, v in self.sessions.items() if now - v.last_seen > SESSION_IDLE_SECONDS]:
                del self.sessions[key]
            return list(self.sessions.values())

    def clear(self) -> None:
        with self.lock:
            self.sessions.clear()


SETTINGS_KEY: Final = web.AppKey("settings", OriginSettings)
STATS_KEY: Final = web.AppKey("stats", OriginStats)
SOCKETS_KEY: Final = web.AppKey[set[web.WebSocketResponse]]("sockets")
HEADERS_LOG_FD_KEY: Final = web.AppKey("headers_log_fd", int)
PUSH_SEQUENCE_KEY: Final = web.AppKey("push_sequence", list[int])
PREFS_KEY: Final = web.AppKey("prefs", PrefsState)
SESSIONS_KEY: Final = web.AppKey("sessions", SessionsState)

# --- request log ---------------------------------------------------------------------------------


def request_record(request: web.BaseRequest) -> dict[str, Any]:
    """What arrived: method, raw path with query, every header as sent, and the peer."""
    raw_headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers]
    headers: dict[str, str] = {}
    for name, value in raw_headers:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return {
        "time": time.time(),
        "method": request.method,
        "path": request.raw_path,
        "http_version": f"{request.version.major}.{request.version.minor}",
        "tls": request.secure,
        "headers": headers,
        "raw_headers": raw_headers,
        "peer": request.remote,
        "peer_port": peer[1] if isinstance(peer, tuple) and len(peer) >= 2 else None,
    }


def iter_headers_log(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a headers log one by one; nothing when the origin has not created it yet."""
    if not path.exists():
        return
    with path.open() as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def read_headers_log(path: Path) -> list[dict[str, Any]]:
    return list(iter_headers_log(path))


@web.middleware
async def _record_request(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    line = json.dumps(request_record(request), separators=(",", ":")) + "\n"
    os.write(request.app[HEADERS_LOG_FD_KEY], line.encode())
    request.app[STATS_KEY].add(requests=1)
    return await handler(request)


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's access log prints the query string; this one prints it with tokens hidden."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.3fs',
            request.remote,
            request.method,
            redact_tokens(request.raw_path),
            response.status,
            response.body_length,
            time,
        )


# --- handlers ------------------------------------------------------------------------------------


def _media_validators(stat: os.stat_result) -> tuple[str, str]:
    etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
    last_modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
    return etag, last_modified


# The networks Plex counts as local; plexcdn.config.HOME_LAN_RANGES, written out because this file runs on its
# own on the boot lab's Plex host (tests/test_status.py keeps the two equal).
HOME_LAN_RANGES: Final = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def on_a_lan(address: str) -> bool:
    """Whether Plex counts a viewer as local: a home network's address (RFC 1918, CGNAT, ULA) or loopback. The
    lab's own addresses (198.18.0.0/15) are remote, as the internet's are."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return parsed.is_loopback or any(parsed.version == n.version and parsed in n for n in HOME_LAN_RANGES)


def _viewer_address(request: web.BaseRequest) -> str:
    """The viewer's address as Plex takes it: the peer, or the first X-Forwarded-For entry from a private peer."""
    peer = request.remote or ""
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
    try:
        trusted = ipaddress.ip_address(peer).is_private
        if forwarded and trusted:
            ipaddress.ip_address(forwarded)
            return forwarded
    except ValueError:
        pass
    return peer


def _query_value(request: web.BaseRequest, name: str) -> str:
    for key, value in _query_pairs(request.rel_url.raw_query_string):
        if key.lower() == name.lower():
            return value
    return ""


def _record_session(request: web.Request) -> None:
    """A media request from a client that names itself starts or refreshes that client's session."""
    client_id = request.headers.get(CLIENT_ID_HEADER) or _query_value(request, CLIENT_ID_HEADER)
    if not client_id:
        return
    settings = request.app[SETTINGS_KEY]
    token = request_token(request)
    user = settings.owner_name if settings.token is None or token == settings.token else "guest"
    address = _viewer_address(request)
    local = on_a_lan(address)
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"
    request.app[SESSIONS_KEY].put(
        LabSession(
            client_id=client_id,
            user=user,
            address=address,
            product=request.headers.get("X-Plex-Product", "Plex Web"),
            platform=request.headers.get("X-Plex-Platform", "Chrome"),
            device=request.headers.get("X-Plex-Device-Name", "lab viewer"),
            local=local,
            secure=secure,
        )
    )


async def _media(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    stats = request.app[STATS_KEY]
    _record_session(request)
    stat = settings.media.stat()
    size = stat.st_size
    etag, last_modified = _media_validators(stat)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": last_modified,
        "Content-Type": MEDIA_CONTENT_TYPE,
    }
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() not in (etag, last_modified):
        range_header = None
    try:
        span = parse_range(range_header, size)
    except RangeNotSatisfiableError:
        return web.Response(status=416, headers={"Accept-Ranges": "bytes", "Content-Range": f"bytes */{size}"})
    if span is None:
        status, first, length = 200, 0, size
    else:
        status, first, length = 206, span[0], span[1] - span[0] + 1
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = length
    await response.prepare(request)
    stats.add(media_responses=1)
    if request.method == "HEAD" or length == 0:
        await response.write_eof()
        return response
    sent = 0
    try:
        with settings.media.open("rb") as source:
            source.seek(first)
            while sent < length:
                chunk = await asyncio.to_thread(source.read, min(MEDIA_CHUNK, length - sent))
                if not chunk:
                    raise RuntimeError(f"media file shrank while serving it (at byte {first + sent})")
                await response.write(chunk)
                sent += len(chunk)
        await response.write_eof()
    except ConnectionError:
        stats.add(media_aborted=1)
    finally:
        stats.add(media_bytes_sent=sent)
    return response


def _notification(kind: str, **fields: object) -> str:
    return json.dumps({"NotificationContainer": {"type": kind, "size": 1, **fields}})


async def _send_text(request: web.Request, socket_: web.WebSocketResponse, text: str) -> None:
    await socket_.send_str(text)
    request.app[STATS_KEY].add(websocket_messages_sent=1)


async def _push_after(request: web.Request, socket_: web.WebSocketResponse, seconds: float, message: str) -> None:
    await asyncio.sleep(seconds)
    if not socket_.closed:
        sequence = _next_push(request.app)
        await _send_text(request, socket_, _notification("lab.push", message=message, sequence=sequence))


def _next_push(app: web.Application) -> int:
    counter = app[PUSH_SEQUENCE_KEY]
    counter[0] += 1
    return counter[0]


def _push_command(text: str) -> tuple[float, str] | None:
    """`{"lab": "push-after", "seconds": s, "message": m}` asks for a server push after an idle gap."""
    try:
        command = json.loads(text)
    except ValueError:
        return None
    if not isinstance(command, dict) or command.get("lab") != "push-after":
        return None
    seconds = command.get("seconds", 0)
    if not isinstance(seconds, int | float) or not 0 <= seconds <= PUSH_AFTER_MAX_SECONDS:
        return None
    return float(seconds), str(command.get("message", ""))


async def _websocket(request: web.Request) -> web.StreamResponse:
    # heartbeat=None: the origin never pings, so only the relay's own timeouts can end an idle socket.
    socket_ = web.WebSocketResponse(
        heartbeat=None, autoping=True, receive_timeout=None, timeout=WEBSOCKET_CLOSE_TIMEOUT
    )
    await socket_.prepare(request)
    stats = request.app[STATS_KEY]
    sockets = request.app[SOCKETS_KEY]
    stats.add(websockets_opened=1)
    sockets.add(socket_)
    pending: set[asyncio.Task[None]] = set()
    try:
        await _send_text(request, socket_, _notification("lab.hello", machineIdentifier="origin"))
        async for message in socket_:
            if message.type == WSMsgType.TEXT:
                stats.add(websocket_messages_received=1)
                await _send_text(request, socket_, message.data)
                command = _push_command(message.data)
                if command is not None:
                    task = asyncio.create_task(_push_after(request, socket_, *command))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            elif message.type == WSMsgType.BINARY:
                stats.add(websocket_messages_received=1)
                await socket_.send_bytes(message.data)
                stats.add(websocket_messages_sent=1)
    except ConnectionError:
        pass
    finally:
        for task in pending:
            task.cancel()
        sockets.discard(socket_)
        stats.add(websockets_closed=1)
    return socket_


async def push_to_websockets(app: web.Application, message: str) -> int:
    """Send a server notification to every open notification socket; returns how many got it."""
    delivered = 0
    sockets = app[SOCKETS_KEY]
    for socket_ in list(sockets):
        if socket_.closed:
            continue
        with contextlib.suppress(ConnectionError):
            await socket_.send_str(_notification("lab.push", message=message, sequence=_next_push(app)))
            app[STATS_KEY].add(websocket_messages_sent=1)
            delivered += 1
    return delivered


async def _push(request: web.Request) -> web.Response:
    delivered = await push_to_websockets(request.app, await request.text())
    return web.json_response({"delivered": delivered})


def _xml_response(body: str) -> web.Response:
    return web.Response(
        text='<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n", content_type="text/xml", charset="utf-8"
    )


def _quote_attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


async def _identity(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    return _xml_response(
        f'<MediaContainer size="0" claimed="1" machineIdentifier="{_quote_attr(settings.machine_identifier)}"'
        f' version="{_quote_attr(settings.version)}"/>'
    )


def _authorized(request: web.Request) -> bool:
    expected = request.app[SETTINGS_KEY].token
    token = request_token(request)
    return bool(token) and (expected is None or token == expected)


def _unauthorized() -> web.Response:
    return web.Response(
        status=401,
        text="<html><head><title>Unauthorized</title></head><body><h1>401 Unauthorized</h1></body></html>",
        content_type="text/html",
    )


async def _sections(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _unauthorized()
    return _xml_response(
        '<MediaContainer size="1" allowSync="0" title1="Plex Library">'
        '<Directory key="1" type="movie" title="Lab Movies" agent="tv.plex.agents.movie" scanner="Plex Movie"/>'
        "</MediaContainer>"
    )


async def _artwork(request: web.Request) -> web.Response:
    # Plex's photo transcoder answers only with a token, whatever the picture's source.
    if not _authorized(request):
        return _unauthorized()
    key = artwork_key(request.rel_url.raw_path, request.rel_url.raw_query_string)
    width, height = _side(request, "width"), _side(request, "height")
    hits = request.app[STATS_KEY].hit_artwork(key)
    body = artwork_png(key, width, height)
    return web.Response(
        body=body,
        content_type="image/png",
        headers={
            "Cache-Control": request.app[SETTINGS_KEY].artwork_cache_control,
            "ETag": f'"{hashlib.sha256(body).hexdigest()[:32]}"',
            "X-Lab-Origin-Hit": str(hits),
        },
    )


def _number(request: web.Request, name: str, default: float, upper: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a number\n") from None
    if not 0 < value <= upper:
        raise web.HTTPBadRequest(text=f"{name} must be in (0, {upper}]\n")
    return value


async def _slow(request: web.Request) -> web.StreamResponse:
    """`?rate=<bytes per second>&seconds=<duration>`: rate*seconds bytes of `slow_body`, paced in ticks."""
    rate = int(_number(request, "rate", 16384, SLOW_MAX_RATE))
    seconds = _number(request, "seconds", 10, SLOW_MAX_SECONDS)
    total = int(rate * seconds)
    stats = request.app[STATS_KEY]
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store"})
    response.content_length = total
    await response.prepare(request)
    stats.add(slow_started=1)
    if request.method == "HEAD":
        await response.write_eof()
        return response
    start = time.monotonic()
    sent = 0
    tick = 0
    try:
        while sent < total:
            tick += 1
            # Paced against absolute deadlines, so a slow write does not stretch the whole stream.
            due = min(total, int(rate * tick * SLOW_TICK_SECONDS))
            if due > sent:
                await response.write(slow_body(sent, due - sent))
                sent = due
            delay = start + tick * SLOW_TICK_SECONDS - time.monotonic()
            if delay > 0 and sent < total:
                await asyncio.sleep(delay)
        await response.write_eof()
    except ConnectionError:
        stats.add(slow_aborted=1)
        return response
    stats.add(slow_completed=1)
    return response


def _owner_only(request: web.Request) -> web.Response | None:
    """Plex's preferences and sessions need the server owner's token: 401 otherwise."""
    expected = request.app[SETTINGS_KEY].token
    token = request_token(request)
    if not token or (expected is not None and token != expected):
        return web.Response(
            status=401, text="<html><body><h1>401 Unauthorized</h1></body></html>", content_type="text/html"
        )
    return None


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _typed(definition: PrefDefinition, value: str) -> object:
    if definition.type == "bool":
        return value == "1"
    if definition.type == "int":
        return int(value)
    return value


async def _prefs_get(request: web.Request) -> web.Response:
    refusal = _owner_only(request)
    if refusal is not None:
        return refusal
    settings = request.app[PREFS_KEY].settings()
    if _wants_json(request):
        entries = []
        for definition, value in settings:
            entry: dict[str, object] = {
                "id": definition.id,
                "label": definition.label,
                "summary": definition.summary,
                "type": definition.type,
                "default": _typed(definition, definition.default),
                "value": _typed(definition, value),
                "hidden": definition.hidden,
                "advanced": definition.advanced,
                "group": definition.group,
            }
            if definition.enum_values:
                entry["enumValues"] = definition.enum_values
            entries.append(entry)
        return web.json_response({"MediaContainer": {"size": len(entries), "Setting": entries}})
    lines = [f'<MediaContainer size="{len(settings)}">']
    for definition, value in settings:
        enum = f' enumValues="{_quote_attr(definition.enum_values)}"' if definition.enum_values else ""
        lines.append(
            f'<Setting id="{definition.id}" label="{_quote_attr(definition.label)}" '
            f'summary="{_quote_attr(definition.summary)}" type="{definition.type}" '
            f'default="{_quote_attr(definition.default)}" value="{_quote_attr(value)}" '
            f'hidden="{int(definition.hidden)}" advanced="{int(definition.advanced)}" '
            f'group="{definition.group}"{enum} />'
        )
    lines.append("</MediaContainer>")
    return _xml_response("\n".join(lines))


async def _prefs_put(request: web.Request) -> web.Response:
    refusal = _owner_only(request)
    if refusal is not None:
        return refusal
    state = request.app[PREFS_KEY]
    refused = request.app[SETTINGS_KEY].refused_prefs
    changes: dict[str, str] = {}
    for name, raw in _query_pairs(request.rel_url.raw_query_string):
        if name.lower() == TOKEN_NAME.lower():
            continue
        definition = state.definitions.get(name)
        if definition is None or name in refused:
            return web.Response(status=400, text=f"{name} cannot be set\n")
        try:
            changes[name] = _pref_value(definition, raw)
        except ValueError:
            return web.Response(status=400, text=f"invalid value for {name}\n")
    if not changes:
        return web.Response(status=400, text="no preference given\n")
    with state.lock:
        state.values.update(changes)
        state.puts.extend(changes)
    return web.Response(status=200)


def _session_json(index: int, session: LabSession) -> dict[str, object]:
    entry: dict[str, object] = {
        "type": "movie",
        "title": session.title,
        "key": "/library/metadata/1",
        "sessionKey": str(index + 1),
        "User": {"id": str(index + 1), "title": session.user},
        "Player": {
            "address": session.address,
            "machineIdentifier": session.client_id,
            "product": session.product,
            "platform": session.platform,
            "title": session.device,
            "state": "playing",
            "local": session.local,
            "relayed": session.relayed,
            "secure": session.secure,
            "remotePublicAddress": session.address,
        },
        "Session": {
            "id": hashlib.sha256(session.client_id.encode()).hexdigest()[:24],
            "bandwidth": session.bitrate_kbps,
            "location": "lan" if session.local else "wan",
        },
        "Media": [
            {
                "bitrate": session.bitrate_kbps,
                "Part": [{"decision": "transcode" if session.transcode else "directplay"}],
            }
        ],
    }
    if session.transcode:
        entry["TranscodeSession"] = {"videoDecision": "transcode", "audioDecision": "transcode"}
    return entry


async def _sessions(request: web.Request) -> web.Response:
    refusal = _owner_only(request)
    if refusal is not None:
        return refusal
    sessions = request.app[SESSIONS_KEY].current()
    entries = [_session_json(index, session) for index, session in enumerate(sessions)]
    if _wants_json(request):
        return web.json_response({"MediaContainer": {"size": len(entries), "Metadata": entries}})
    lines = [f'<MediaContainer size="{len(entries)}">']
    for entry in entries:
        player = entry["Player"]
        assert isinstance(player, dict)
        lines.append(
            f'<Video type="movie" title="{_quote_attr(str(entry["title"]))}">'
            f'<Player machineIdentifier="{_quote_attr(str(player["machineIdentifier"]))}" '
            f'address="{_quote_attr(str(player["address"]))}" local="{int(bool(player["local"]))}" '
            f'relayed="{int(bool(player["relayed"]))}" /></Video>'
        )
    lines.append("</MediaContainer>")
    return _xml_response("\n".join(lines))


_LAB_SESSION_FIELDS: Final = {
    "clientId": ("client_id", str),
    "user": ("user", str),
    "address": ("address", str),
    "product": ("product", str),
    "platform": ("platform", str),
    "device": ("device", str),
    "local": ("local", bool),
    "secure": ("secure", bool),
    "relayed": ("relayed", bool),
    "transcode": ("transcode", bool),
    "bitrateKbps": ("bitrate_kbps", int),
}


async def _lab_sessions_add(request: web.Request) -> web.Response:
    """`[{"clientId": ..., "address": ..., ...}]`: sessions a lab plays without media requests (a LAN viewer,
    Plex's relay)."""
    try:
        items = json.loads(await request.text())
        if not isinstance(items, list):
            raise ValueError("a list")
        for item in items:
            values: dict[str, Any] = {
                "user": request.app[SETTINGS_KEY].owner_name,
                "product": "Plex for Android (TV)",
                "platform": "Android",
                "device": "lab TV",
                "secure": True,
            }
            for key, value in item.items():
                name, kind = _LAB_SESSION_FIELDS[key]
                if not isinstance(value, kind):
                    raise ValueError(key)
                values[name] = value
            if "local" not in values:
                values["local"] = on_a_lan(values["address"])
            request.app[SESSIONS_KEY].put(LabSession(**values))
    except (ValueError, KeyError, TypeError) as error:
        raise web.HTTPBadRequest(text=f"sessions: {error}\n") from None
    return web.json_response({"sessions": len(request.app[SESSIONS_KEY].current())})


async def _lab_sessions_clear(request: web.Request) -> web.Response:
    request.app[SESSIONS_KEY].clear()
    return web.json_response({"sessions": 0})


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS_KEY].snapshot())


# --- application ---------------------------------------------------------------------------------


def _write_stats_file(path: Path, stats: OriginStats) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(stats.snapshot(), sort_keys=True) + "\n")
    temporary.replace(path)


async def _stats_file_writer(path: Path, stats: OriginStats) -> None:
    while True:
        if stats.changed:
            stats.changed = False
            _write_stats_file(path, stats)
        await asyncio.sleep(STATS_FILE_INTERVAL)


async def _close_websockets(app: web.Application) -> None:
    # Runs before the server waits for handlers, so open sockets do not hold a shutdown up.
    sockets = app[SOCKETS_KEY]
    await asyncio.gather(
        *(socket_.close(code=1001, message=b"origin shutting down") for socket_ in list(sockets)),
        return_exceptions=True,
    )


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    if not settings.media.is_file():
        raise FileNotFoundError(f"media file {settings.media} does not exist")
    settings.headers_log.parent.mkdir(parents=True, exist_ok=True)
    app[HEADERS_LOG_FD_KEY] = os.open(settings.headers_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    writer = None
    if settings.stats_file is not None:
        writer = asyncio.create_task(_stats_file_writer(settings.stats_file, app[STATS_KEY]))
    yield
    if writer is not None:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        _write_stats_file(settings.stats_file, app[STATS_KEY])  # type: ignore[arg-type]
    os.close(app[HEADERS_LOG_FD_KEY])


def build_app(settings: OriginSettings) -> web.Application:
    app = web.Application(middlewares=[_record_request])
    app[SETTINGS_KEY] = settings
    app[STATS_KEY] = OriginStats()
    app[SOCKETS_KEY] = set()
    app[PUSH_SEQUENCE_KEY] = [0]
    app[PREFS_KEY] = PrefsState(settings.initial_prefs)
    app[SESSIONS_KEY] = SessionsState()
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_close_websockets)
    app.router.add_get(MEDIA_ROUTE, _media)
    app.router.add_get(WEBSOCKET_PATH, _websocket, allow_head=False)
    app.router.add_get(IDENTITY_PATH, _identity)
    app.router.add_get(ARTWORK_PATH, _artwork)
    app.router.add_get(SECTIONS_PATH, _sections)
    app.router.add_get(SLOW_PATH, _slow)
    app.router.add_post(PUSH_PATH, _push)
    app.router.add_get(STATS_PATH, _stats)
    app.router.add_get(PREFS_PATH, _prefs_get)
    app.router.add_put(PREFS_PATH, _prefs_put)
    app.router.add_get(SESSIONS_PATH, _sessions)
    app.router.add_post(LAB_SESSIONS_PATH, _lab_sessions_add)
    app.router.add_delete(LAB_SESSIONS_PATH, _lab_sessions_clear)
    return app


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def parse_listen(value: str) -> tuple[str, int]:
    """`ADDR:PORT`, `[v6]:PORT`; port 0 picks a free port."""
    host, separator, port_text = value.rpartition(":")
    if not separator or not port_text.isdigit():
        raise ValueError(f"--listen wants ADDR:PORT, got {value!r}")
    host = host.removeprefix("[").removesuffix("]")
    ipaddress.ip_address(host)
    return host, int(port_text)


# Linux's IP_FREEBIND (linux/in.h); Python names it only on some versions.
IP_FREEBIND: Final = getattr(socket, "IP_FREEBIND", 15)


def _listening_socket(host: str, port: int, free_bind: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if free_bind:
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


def base_url(host: str, port: int, tls: bool) -> str:
    shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


async def start_origin(
    settings: OriginSettings, host: str, port: int, tls: ssl.SSLContext | None = None, *, free_bind: bool = False
) -> tuple[web.AppRunner, web.Application, int]:
    """Start serving on the running loop; returns the runner (await `runner.cleanup()` to stop), the app
    and the bound port. `free_bind`: listen on an address the host does not have yet (a tunnel's, before
    the tunnel is up), as a server bound to every address would answer there once it is."""
    app = build_app(settings)
    runner = web.AppRunner(app, access_log_class=RedactingAccessLogger, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    sock = _listening_socket(host, port, free_bind)
    try:
        await web.SockSite(runner, sock, ssl_context=tls).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return runner, app, sock.getsockname()[1]


class BackgroundOrigin:
    """The origin on its own event loop in a thread, for tests and in-process labs.

    `with BackgroundOrigin(settings) as origin:` then `origin.url`, `origin.stats()`, `origin.push(text)`.
    """

    def __init__(
        self, settings: OriginSettings, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.tls = tls
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._app: web.Application | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        return base_url(self.host, self.port, self.tls is not None)

    def __enter__(self) -> BackgroundOrigin:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="lab-origin", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("the lab origin did not start within 30 s")
        if self._failure is not None:
            self._thread.join(timeout=5)
            raise RuntimeError("the lab origin failed to start") from self._failure

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._runner, self._app, self.port = loop.run_until_complete(
                start_origin(self.settings, self.host, self.port, self.tls)
            )
        except BaseException as failure:
            self._failure = failure
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)
        self._thread = None

    def stats(self) -> dict[str, Any]:
        assert self._app is not None, "origin not started"
        return self._app[STATS_KEY].snapshot()

    @property
    def prefs(self) -> PrefsState:
        assert self._app is not None, "origin not started"
        return self._app[PREFS_KEY]

    @property
    def sessions(self) -> SessionsState:
        assert self._app is not None, "origin not started"
        return self._app[SESSIONS_KEY]

    def push(self, message: str) -> int:
        assert self._app is not None and self._loop is not None, "origin not started"
        return asyncio.run_coroutine_threadsafe(push_to_websockets(self._app, message), self._loop).result(10)


def fetch_stats(url: str, tls: ssl.SSLContext | None = None, timeout: float = 10) -> dict[str, Any]:
    """GET `STATS_PATH` from an origin at base URL `url` (loopback or a lab address)."""
    with urllib.request.urlopen(url + STATS_PATH, timeout=timeout, context=tls) as reply:  # noqa: S310
        result: dict[str, Any] = json.loads(reply.read())
    return result


# --- command line --------------------------------------------------------------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m labs.plex_standin", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="ADDR:PORT ([v6]:PORT); port 0 picks one")
    parser.add_argument("--media", required=True, type=Path, help="file served at " + MEDIA_PATH)
    parser.add_argument("--headers-log", required=True, type=Path, help="JSON line per request (holds tokens)")
    parser.add_argument("--tls-cert", type=Path, help="certificate chain (PEM); with --tls-key serves HTTPS")
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--token-file", type=Path, help="the one accepted X-Plex-Token (default: any)")
    parser.add_argument("--machine-identifier", default=DEFAULT_MACHINE_IDENTIFIER)
    parser.add_argument("--artwork-cache-control", default=DEFAULT_ARTWORK_CACHE_CONTROL)
    parser.add_argument("--stats-file", type=Path, help="counters as JSON, rewritten within 0.1 s of a change")
    parser.add_argument(
        "--refuse-pref", action="append", default=[], metavar="ID", help="answer PUTs of this preference with 400"
    )
    parser.add_argument("--pref", action="append", default=[], metavar="ID=VALUE", help="a preference's value at start")
    parser.add_argument("--owner-name", default=DEFAULT_OWNER_NAME, help="the account sessions with the token show")
    parser.add_argument("--ready-file", type=Path, help="written with the bound address once serving")
    parser.add_argument("--quiet", action="store_true", help="no access log")
    parser.add_argument("--free-bind", action="store_true", help="listen even before ADDR exists on the host")
    arguments = parser.parse_args(argv)
    if (arguments.tls_cert is None) != (arguments.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    try:
        arguments.host, arguments.port = parse_listen(arguments.listen)
    except ValueError as error:
        parser.error(str(error))
    return arguments


async def _serve_until_signalled(arguments: argparse.Namespace) -> None:
    token = arguments.token_file.read_text().strip() if arguments.token_file is not None else None
    settings = OriginSettings(
        media=arguments.media,
        headers_log=arguments.headers_log,
        token=token or None,
        machine_identifier=arguments.machine_identifier,
        artwork_cache_control=arguments.artwork_cache_control,
        stats_file=arguments.stats_file,
        refused_prefs=frozenset(arguments.refuse_pref),
        initial_prefs=tuple((name, value) for name, _, value in (item.partition("=") for item in arguments.pref)),
        owner_name=arguments.owner_name,
    )
    tls = server_tls_context(arguments.tls_cert, arguments.tls_key) if arguments.tls_cert is not None else None
    runner, _, port = await start_origin(settings, arguments.host, arguments.port, tls, free_bind=arguments.free_bind)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    url = base_url(arguments.host, port, tls is not None)
    if arguments.ready_file is not None:
        temporary = arguments.ready_file.with_name(arguments.ready_file.name + ".tmp")
        temporary.write_text(json.dumps({"url": url, "host": arguments.host, "port": port, "pid": os.getpid()}))
        temporary.replace(arguments.ready_file)
    print(f"plexcdn lab origin listening on {url} (pid {os.getpid()})", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        print("plexcdn lab origin stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    arguments = _arguments(argv)
    if not arguments.quiet:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(message)s")
    else:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_serve_until_signalled(arguments))
    return 0


if __name__ == "__main__":
    sys.exit(main())
