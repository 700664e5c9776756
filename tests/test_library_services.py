"""The library's host services against fake kubo and Plex servers: the seeder's watcher and the viewer's warmer."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import socket
import socketserver
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit
from xml.sax.saxutils import quoteattr

import pytest

from plexcdn.library import warmer as warmer_module
from plexcdn.library import watcher as watcher_module
from plexcdn.library.warmer import Warmer, map_to_ipfs, parse_sessions
from plexcdn.library.watcher import CHUNK_SIZE, Watcher, iter_chunks, multipart_file_body

ROOT = "/plex-cdn-library"
MOUNT = "/mnt/plex-cdn/alice"
IPNS = "/ipns/k51alice"


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(step)


# --------------------------------------------------------------------------------------------------
# A fake kubo RPC API


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


# What RFC 9110 allows in a field value (and what Go's net/textproto, kubo's header reader, accepts).
_HEADER_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class MalformedHeaderError(ValueError):
    """A multipart part header kubo would refuse, or read as more headers than the client meant."""


def parse_part_headers(block: bytes) -> dict[str, str]:
    """A part's header block read line by line, as a MIME reader does: any LF ends a line (a CR before it is
    dropped), each line must be Name: value with a value of allowed bytes."""
    headers: dict[str, str] = {}
    for raw in block.split(b"\n"):
        line = raw.removesuffix(b"\r")
        name, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise MalformedHeaderError(f"malformed MIME header line: {line!r}")
        headers[name.decode("ascii").lower()] = value.strip(b" \t").decode("utf-8", "surrogateescape")
    return headers


class FakeKubo:
    """Records every call; keeps a small MFS; streams `refs` slowly so a test can watch a prefetch.

    With UNIX_SOCKET it answers on that Unix socket, as kubo's API does on a peer, instead of loopback TCP."""

    def __init__(self, unix_socket: str = "") -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, dict[str, list[str]]]] = []
        self.files: dict[str, tuple[str, int]] = {}
        self.dirs: set[str] = {"/"}
        self.adds: list[dict[str, Any]] = []
        self.pins: set[str] = set()
        self.fail: dict[str, int] = {}
        self.repo_size = 0
        self.storage_max = 10**12
        self.sizes: dict[str, int] = {}
        self.refs_lines = 5
        self.refs_delay = 0.01
        self.refs_started: list[str] = []
        self.refs_finished: list[str] = []
        self.refs_disconnected: list[str] = []
        self.refs_active: dict[str, int] = {}
        self.max_active_per_path: dict[str, int] = {}
        self.max_active_total = 0
        # IPNS path -> what name/resolve answers (an /ipfs/ path); a missing name fails as kubo does.
        self.names: dict[str, str] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                fake.handle(self)

        self.unix_socket = unix_socket
        self.server: socketserver.BaseServer
        if unix_socket:
            self.server = _UnixHTTPServer(unix_socket, Handler)
        else:
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.server.daemon_threads = True
        self.malformed: list[str] = []
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix:{self.unix_socket}"
        address = self.server.server_address
        assert isinstance(address, tuple)
        return f"http://127.0.0.1:{address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- what tests look at

    def commands(self, since: int = 0) -> list[str]:
        with self.lock:
            return [command for command, _ in self.calls[since:]]

    def calls_of(self, command: str, since: int = 0) -> list[dict[str, list[str]]]:
        with self.lock:
            return [args for name, args in self.calls[since:] if name == command]

    def dir_hash(self, directory: str) -> str:
        with self.lock:
            return self._dir_hash(directory)

    def _dir_hash(self, directory: str) -> str:
        prefix = directory.rstrip("/") + "/"
        entries = sorted(
            [(path, cid) for path, (cid, _) in self.files.items() if path.startswith(prefix)]
            + [(path, "dir") for path in self.dirs if path.startswith(prefix)]
        )
        return "bafydir" + hashlib.sha256(repr(entries).encode()).hexdigest()[:16]

    # ---- the server side

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        command = url.path.removeprefix("/api/v0/")
        args = parse_qs(url.query, keep_blank_values=True)
        with self.lock:
            self.calls.append((command, args))
            failing = self.fail.get(command, 0) > 0
            if failing:
                self.fail[command] -= 1
        chunks = _request_body(request)
        if command == "add":
            self._add(request, args, chunks, failing)
            return
        for _ in chunks:
            pass
        if failing:
            _send_json(request, 500, {"Message": f"injected failure of {command}", "Code": 0, "Type": "error"})
            return
        if command == "refs":
            self._refs(request, args["arg"][0])
            return
        status, answer = self._answer(command, args)
        _send_json(request, status, answer)

    def _answer(self, command: str, args: dict[str, list[str]]) -> tuple[int, Any]:
        arg = args.get("arg", [""])[0]
        answers: dict[str, Callable[[str, dict[str, list[str]]], tuple[int, Any]]] = {
            "files/mkdir": self._mkdir,
            "files/rm": self._rm,
            "files/stat": self._stat,
            "name/publish": lambda arg, _: (200, {"Name": "k51seeder", "Value": arg}),
            "repo/stat": lambda *_: (200, {"RepoSize": self.repo_size, "StorageMax": self.storage_max}),
            "pin/rm": self._unpin,
            "name/resolve": self._resolve,
        }
        if command not in answers:
            return 404, {"Message": f"unknown command {command}"}
        with self.lock:
            return answers[command](arg, args)

    def _mkdir(self, arg: str, args: dict[str, list[str]]) -> tuple[int, Any]:
        if arg in self.files:
            return 500, {"Message": "file exists"}
        if args.get("parents") != ["true"] and os.path.dirname(arg) not in self.dirs:
            return 500, {"Message": "file does not exist"}
        while arg != "/":
            self.dirs.add(arg)
            arg = os.path.dirname(arg)
        return 200, None

    def _rm(self, arg: str, args: dict[str, list[str]]) -> tuple[int, Any]:
        if arg in self.files:
            del self.files[arg]
        elif arg in self.dirs:
            self.dirs = {d for d in self.dirs if d != arg and not d.startswith(arg + "/")}
            self.files = {p: v for p, v in self.files.items() if not p.startswith(arg + "/")}
        elif args.get("force") != ["true"]:
            return 500, {"Message": "can't remove some files"}
        return 200, None

    def _stat(self, arg: str, args: dict[str, list[str]]) -> tuple[int, Any]:
        if arg.startswith(("/ipns/", "/ipfs/")):
            if arg not in self.sizes:
                return 500, {"Message": f"no link named {os.path.basename(arg)!r}"}
            size = self.sizes[arg]
            return 200, {"Hash": "bafyfile", "Size": size, "CumulativeSize": size, "Type": "file"}
        if arg in self.files:
            cid, size = self.files[arg]
            return 200, {"Hash": cid, "Size": size, "CumulativeSize": size + 11, "Type": "file"}
        if arg not in self.dirs:
            return 500, {"Message": "file does not exist"}
        return 200, {"Hash": self._dir_hash(arg), "Size": 0, "CumulativeSize": 0, "Type": "directory"}

    def _resolve(self, arg: str, args: dict[str, list[str]]) -> tuple[int, Any]:
        if arg not in self.names:
            return 500, {"Message": f"could not resolve name: {arg}"}
        return 200, {"Path": self.names[arg]}

    def _unpin(self, arg: str, args: dict[str, list[str]]) -> tuple[int, Any]:
        self.pins.discard(arg)
        return 200, {"Pins": [arg]}

    def _add(
        self, request: BaseHTTPRequestHandler, args: dict[str, list[str]], chunks: Iterator[bytes], failing: bool
    ) -> None:
        match = re.search(r"boundary=([^;\s]+)", request.headers.get("Content-Type", ""))
        assert match is not None
        boundary = match.group(1).encode()
        max_chunk = 0
        head = b""
        for chunk in chunks:
            max_chunk = max(max_chunk, len(chunk))
            head += chunk
            if b"\r\n\r\n" in head:
                break
        part_head, buffer = head.split(b"\r\n\r\n", 1)
        delimiter, _, header_block = part_head.partition(b"\r\n")
        assert delimiter == b"--" + boundary
        try:
            headers = parse_part_headers(header_block)
        except MalformedHeaderError as error:
            with self.lock:
                self.malformed.append(str(error))
            for _ in chunks:
                pass
            _send_json(request, 400, {"Message": str(error), "Code": 0, "Type": "error"})
            return
        disposition = re.search(r'filename="([^"]*)"', headers["content-disposition"])
        assert disposition is not None
        # As boxo's multipart reader: abspath-encoded through url.QueryUnescape, else abspath as it is.
        encoded = headers.get("abspath-encoded")
        abspath = unquote_plus(encoded) if encoded is not None else headers.get("abspath", "")
        tail = b"\r\n--" + boundary + b"--\r\n"
        digest = hashlib.sha256()
        count = 0
        # Hash as it arrives: holding the body would hide whether the client streams it.
        for chunk in chunks:
            max_chunk = max(max_chunk, len(chunk))
            buffer += chunk
            if len(buffer) > len(tail):
                digest.update(buffer[: -len(tail)])
                count += len(buffer) - len(tail)
                buffer = buffer[-len(tail) :]
        assert buffer.endswith(tail)
        digest.update(buffer[: -len(tail)])
        count += len(buffer) - len(tail)
        cid = "bafk" + digest.hexdigest()[:20]
        target = args["to-files"][0]
        name = unquote_plus(disposition.group(1))
        with self.lock:
            self.adds.append(
                {
                    "to_files": target,
                    "filename": name,
                    "bytes": count,
                    "cid": cid,
                    "max_chunk": max_chunk,
                    "chunked": request.headers.get("Transfer-Encoding") == "chunked",
                    "abspath": abspath,
                    "args": args,
                }
            )
        if failing:
            _send_json(request, 500, {"Message": "injected failure of add", "Code": 0, "Type": "error"})
            return
        with self.lock:
            problem = ""
            if os.path.dirname(target) not in self.dirs:
                problem = "to-files: MFS destination parent does not exist"
            elif target in self.files or target in self.dirs:
                problem = "to-files: cannot put node in path: directory already has entry by that name"
            else:
                self.files[target] = (cid, count)
                self.pins.add(cid)
        # Like kubo, the event goes out before the file is linked into MFS, so a link error is a trailer.
        event = json.dumps({"Name": name, "Hash": cid, "Size": str(count)}).encode() + b"\n"
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Transfer-Encoding", "chunked")
        request.send_header("Trailer", "X-Stream-Error")
        request.end_headers()
        request.wfile.write(b"%x\r\n%s\r\n0\r\n" % (len(event), event))
        request.wfile.write(f"X-Stream-Error: {problem}\r\n\r\n".encode() if problem else b"\r\n")

    def _refs(self, request: BaseHTTPRequestHandler, path: str) -> None:
        with self.lock:
            self.refs_started.append(path)
            self.refs_active[path] = self.refs_active.get(path, 0) + 1
            self.max_active_per_path[path] = max(self.max_active_per_path.get(path, 0), self.refs_active[path])
            self.max_active_total = max(self.max_active_total, sum(self.refs_active.values()))
            lines, delay = self.refs_lines, self.refs_delay
        try:
            request.send_response(200)
            request.send_header("Content-Type", "application/json")
            request.send_header("Transfer-Encoding", "chunked")
            request.end_headers()
            for index in range(lines):
                line = json.dumps({"Ref": f"bafyblock{index}", "Err": ""}).encode() + b"\n"
                request.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                request.wfile.flush()
                time.sleep(delay)
            request.wfile.write(b"0\r\n\r\n")
            request.wfile.flush()
            with self.lock:
                self.refs_finished.append(path)
        except OSError:
            with self.lock:
                self.refs_disconnected.append(path)
            request.close_connection = True
        finally:
            with self.lock:
                self.refs_active[path] -= 1


def _request_body(request: BaseHTTPRequestHandler) -> Iterator[bytes]:
    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        while True:
            size = int(request.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while request.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return
            yield request.rfile.read(size)
            request.rfile.readline()
    remaining = int(request.headers.get("Content-Length") or 0)
    while remaining > 0:
        data = request.rfile.read(min(remaining, 65536))
        if not data:
            return
        remaining -= len(data)
        yield data


def _send_json(request: BaseHTTPRequestHandler, status: int, value: Any) -> None:
    # kubo's files/mkdir and files/rm answer success with an empty body.
    body = b"" if value is None else json.dumps(value).encode() + b"\n"
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


# --------------------------------------------------------------------------------------------------
# A fake Plex


class FakePlex:
    def __init__(self) -> None:
        self.sessions: list[str] = []
        self.xml = False
        self.status = 200
        self.tokens: list[str | None] = []
        self.accepts: list[str | None] = []
        # Plex's libraries: (key, title, [folders]); every refresh asked for, as (key, path, token).
        self.sections: list[tuple[str, str, list[str]]] = []
        self.refreshes: list[tuple[str, str, str | None]] = []
        self.refresh_status = 200
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        token = request.headers.get("X-Plex-Token")
        self.tokens.append(token)
        self.accepts.append(request.headers.get("Accept"))
        url = urlsplit(request.path)
        if url.path == "/library/sections" and self.status == 200:
            self._send(request, self._sections_xml() if self.xml else self._sections_json())
            return
        refresh = re.fullmatch(r"/library/sections/([^/]+)/refresh", url.path)
        if refresh is not None and self.status == 200:
            path = parse_qs(url.query).get("path", [""])[0]
            self.refreshes.append((unquote_plus(refresh.group(1)), path, token))
            request.send_response(self.refresh_status)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if url.path not in ("/status/sessions", "/library/sections") and refresh is None:
            request.send_error(404)
            return
        if self.status != 200:
            # An error page that repeats the token: nothing of it may reach the log.
            body = f"unauthorized {token}".encode()
            request.send_response(self.status, f"Unauthorized {token}")
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
            return
        body = self._xml() if self.xml else self._json()
        request.send_response(200)
        request.send_header("Content-Type", "text/xml" if self.xml else "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, body: bytes) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "text/xml" if body.startswith(b"<") else "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def _sections_json(self) -> bytes:
        directories = [
            {"key": key, "title": title, "type": "movie", "Location": [{"id": n, "path": f} for n, f in enumerate(fs)]}
            for key, title, fs in self.sections
        ]
        return json.dumps({"MediaContainer": {"size": len(directories), "Directory": directories}}).encode()

    def _sections_xml(self) -> bytes:
        items = "".join(
            f"<Directory key={quoteattr(key)} title={quoteattr(title)} type='movie'>"
            + "".join(f"<Location id='{n}' path={quoteattr(f)}/>" for n, f in enumerate(folders))
            + "</Directory>"
            for key, title, folders in self.sections
        )
        head = "<?xml version='1.0' encoding='UTF-8'?>"
        return f"{head}<MediaContainer size='{len(self.sections)}'>{items}</MediaContainer>".encode()

    def _json(self) -> bytes:
        items = [{"type": "movie", "title": f, "Media": [{"Part": [{"file": f, "size": 1}]}]} for f in self.sessions]
        container: dict[str, Any] = {"size": len(items)}
        if items:
            container["Metadata"] = items
        return json.dumps({"MediaContainer": container}).encode()

    def _xml(self) -> bytes:
        items = "".join(
            f"<{'Track' if f.endswith('.flac') else 'Video'} title='x'><Media><Part file={quoteattr(f)}/></Media>"
            f"<User title='bob'/></{'Track' if f.endswith('.flac') else 'Video'}>"
            for f in self.sessions
        )
        head = "<?xml version='1.0' encoding='UTF-8'?>"
        return f"{head}<MediaContainer size='{len(self.sessions)}'>{items}</MediaContainer>".encode()


@pytest.fixture
def kubo() -> Iterator[FakeKubo]:
    fake = FakeKubo()
    yield fake
    fake.close()


@pytest.fixture
def plex() -> Iterator[FakePlex]:
    fake = FakePlex()
    yield fake
    fake.close()


# --------------------------------------------------------------------------------------------------
# The warmer


@pytest.fixture
def make_warmer(tmp_path: Path, kubo: FakeKubo, plex: FakePlex) -> Iterator[Callable[..., Warmer]]:
    made: list[Warmer] = []

    def make(**overrides: Any) -> Warmer:
        values: dict[str, Any] = {
            "plex_url": plex.url,
            "plex_token_file": str(tmp_path / "plex-token"),
            "api": kubo.url,
            "mounts": {MOUNT: IPNS, "/mnt/plex-cdn/bob": "/ipns/k51bob"},
            "interval_s": 0.05,
            "max_parallel": 2,
            "max_cache_bytes": 10**12,
            "timeout_s": 5,
        }
        values.update(overrides)
        warmer = Warmer(warmer_module.parse_config(values))
        made.append(warmer)
        return warmer

    yield make
    for warmer in made:
        warmer.close()


def poll_until(warmer: Warmer, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        warmer.poll_once()
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError("timed out polling")
        time.sleep(0.02)


def playing(kubo: FakeKubo, plex: FakePlex, *names: str, size: int = 1000) -> list[str]:
    """Has Plex play these files of alice's library; returns their IPFS paths."""
    plex.sessions = [f"{MOUNT}/{name}" for name in names]
    paths = [f"{IPNS}/{name}" for name in names]
    for path in paths:
        kubo.sizes.setdefault(path, size)
    return paths


def test_warmer_prefetches_a_playing_file_exactly_once(
    kubo: FakeKubo, plex: FakePlex, make_warmer: Callable[..., Warmer]
) -> None:
    warmer = make_warmer()
    [path] = playing(kubo, plex, "Movies/A Movie (2020)/A Movie + 4K.mkv")
    poll_until(warmer, lambda: path in warmer.completed)
    for _ in range(5):
        warmer.poll_once()
    assert kubo.refs_started == [path]
    assert kubo.refs_finished == [path]
    [refs] = kubo.calls_of("refs")
    assert refs == {"arg": [path], "recursive": ["true"], "unique": ["true"]}
    assert warmer.in_flight == []


def test_warmer_never_runs_two_prefetches_of_one_file(
    kubo: FakeKubo, plex: FakePlex, make_warmer: Callable[..., Warmer]
) -> None:
    kubo.refs_lines, kubo.refs_delay = 30, 0.02
    warmer = make_warmer(max_parallel=4)
    [path] = playing(kubo, plex, "Shows/Show/S01E01.mkv")
    plex.sessions *= 2  # two viewers on the same episode
    for _ in range(15):
        warmer.poll_once()
        time.sleep(0.02)
    assert warmer.in_flight == [path]
    poll_until(warmer, lambda: path in warmer.completed)
    warmer.poll_once()
    assert kubo.refs_started == [path]
    assert kubo.max_active_per_path[path] == 1


def test_warmer_runs_at_most_max_parallel_and_queues_the_rest(
    kubo: FakeKubo, plex: FakePlex, make_warmer: Callable[..., Warmer]
) -> None:
    kubo.refs_lines, kubo.refs_delay = 10, 0.03
    warmer = make_warmer(max_parallel=2)
    paths = playing(kubo, plex, "a.mkv", "b.mkv", "c.mkv")
    warmer.poll_once()
    assert warmer.in_flight == paths[:2]
    assert warmer.queued == paths[2:]
    poll_until(warmer, lambda: set(warmer.completed) == set(paths))
    assert sorted(kubo.refs_started) == sorted(paths)
    assert kubo.max_active_total == 2


def test_warmer_cancels_a_prefetch_and_drops_the_queue_when_playback_stops(
    kubo: FakeKubo, plex: FakePlex, make_warmer: Callable[..., Warmer]
) -> None:
    kubo.refs_lines, kubo.refs_delay = 2000, 0.01
    warmer = make_warmer(max_parallel=1)
    first, second = playing(kubo, plex, "long.mkv", "next.mkv")
    warmer.poll_once()
    assert (warmer.in_flight, warmer.queued) == ([first], [second])
    wait_for(lambda: kubo.refs_active.get(first) == 1)
    plex.sessions = []
    warmer.poll_once()
    assert (warmer.in_flight, warmer.queued) == ([], [])
    wait_for(lambda: first in kubo.refs_disconnected, timeout=3)
    assert kubo.refs_started == [first]
    assert kubo.refs_finished == []
    # Playing again starts a new walk: a cancelled prefetch did not complete.
    playing(kubo, plex, "long.mkv")
    warmer.poll_once()
    assert warmer.in_flight == [first]


def test_warmer_ignores_files_outside_every_mount(
    kubo: FakeKubo, plex: FakePlex, make_warmer: Callable[..., Warmer]
) -> None:
    warmer = make_warmer()
    plex.sessions = ["/srv/media/Movies/local.mkv", "/mnt/plex-cdn/alicex/y.mkv", "/mnt/plex-cdn"]
    for _ in range(3):
        warmer.poll_once()
    assert [command for command in kubo.commands() if command != "name/resolve"] == []
    assert (warmer.in_flight, warmer.queued) == ([], [])
    mounts = warmer_module.parse_mounts({"/mnt/a/": "/ipns/A", "/mnt/a/b": "/ipns/B/sub"}, "test")
    assert map_to_ipfs("/mnt/a/b/c d.mkv", mounts) == "/ipns/B/sub/c d.mkv"
    assert map_to_ipfs("/mnt/a/bc.mkv", mounts) == "/ipns/A/bc.mkv"
    assert map_to_ipfs("/mnt/a/x/../b/y.mkv", mounts) == "/ipns/B/sub/y.mkv"
    assert map_to_ipfs("/mnt/ab/c.mkv", mounts) is None


@pytest.mark.parametrize("limits", [(1000, 10**12), (10**12, 1000)], ids=["max_cache_bytes", "StorageMax"])
def test_warmer_skips_a_file_that_would_overfill_the_cache(
    kubo: FakeKubo,
    plex: FakePlex,
    make_warmer: Callable[..., Warmer],
    caplog: pytest.LogCaptureFixture,
    limits: tuple[int, int],
) -> None:
    max_cache_bytes, storage_max = limits
    kubo.repo_size, kubo.storage_max = 900, storage_max
    warmer = make_warmer(max_cache_bytes=max_cache_bytes)
    [big] = playing(kubo, plex, "big.mkv", size=101)
    [small] = [f"{IPNS}/small.mkv"]
    kubo.sizes[small] = 100
    plex.sessions.append(f"{MOUNT}/small.mkv")
    with caplog.at_level(logging.INFO, logger="plexcdn.library.warmer"):
        poll_until(warmer, lambda: small in warmer.completed)
        warmer.poll_once()
    assert kubo.refs_started == [small]
    assert f"not prefetching {big}" in caplog.text
    assert caplog.text.count(f"not prefetching {big}") == 1
    assert kubo.calls_of("repo/stat")[0] == {"size-only": ["true"]}


def test_warmer_sends_the_token_as_a_header_and_never_logs_it(
    kubo: FakeKubo,
    plex: FakePlex,
    make_warmer: Callable[..., Warmer],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "plexTOKEN-s3cr3t-value"
    warmer = make_warmer()
    token_file = Path(warmer.config.plex_token_file)
    token_file.write_text(secret + "\n")
    kubo.fail["refs"] = 1
    with caplog.at_level(logging.DEBUG):
        plex.status = 401
        warmer.poll_once()
        warmer.poll_once()
        plex.status = 200
        [path] = playing(kubo, plex, "x.mkv")
        poll_until(warmer, lambda: warmer.in_flight == [] and kubo.calls_of("refs") != [])
        warmer.close()
    assert plex.tokens and all(token == secret for token in plex.tokens)
    assert set(plex.accepts) == {"application/json"}
    assert "Plex answered" in caplog.text
    assert "injected failure of refs" in caplog.text
    captured = capsys.readouterr()
    assert secret not in caplog.text
    assert secret not in captured.out + captured.err
    assert all(secret not in value for _, args in kubo.calls for values in args.values() for value in values)
    assert kubo.calls_of("refs")[0]["arg"] == [path]
    token_file.write_text("")
    make_warmer().poll_once()
    assert plex.tokens[-1] is None


def test_xml_sessions_are_read_like_json(kubo: FakeKubo, plex: FakePlex, make_warmer: Callable[..., Warmer]) -> None:
    document = b"""<?xml version="1.0" encoding="UTF-8"?>
<MediaContainer size="3">
  <Video type="movie" title="Two Parts"><Media id="1"><Part id="1" file="/mnt/plex-cdn/alice/M/cd1.mkv" size="5"/>
    <Part id="2" file="/mnt/plex-cdn/alice/M/cd2.mkv"/></Media><User title="ann"/><Player state="playing"/></Video>
  <Track type="track" title="Song"><Media><Part file="/mnt/plex-cdn/bob/Music/s &amp; t.flac"/></Media></Track>
  <Video type="episode"><Media><Part file="/mnt/plex-cdn/alice/M/cd1.mkv"/></Media></Video>
</MediaContainer>"""
    assert parse_sessions(document) == [
        "/mnt/plex-cdn/alice/M/cd1.mkv",
        "/mnt/plex-cdn/alice/M/cd2.mkv",
        "/mnt/plex-cdn/bob/Music/s & t.flac",
    ]
    assert parse_sessions(b'{"MediaContainer": {"size": 0}}') == []
    plex.xml = True
    [path] = playing(kubo, plex, "Music/Ünïcode & co.flac")
    warmer = make_warmer()
    poll_until(warmer, lambda: path in warmer.completed)
    assert kubo.refs_started == [path]


# --------------------------------------------------------------------------------------------------
# The watcher


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def media(tmp_path: Path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    return folder


@pytest.fixture
def make_watcher(tmp_path: Path, kubo: FakeKubo, media: Path) -> Callable[..., Watcher]:
    def make(clock: Callable[[], float], **overrides: Any) -> Watcher:
        values: dict[str, Any] = {
            "media_dir": str(media),
            "mfs_root": ROOT,
            "api": kubo.url,
            "interval_s": 0.05,
            "settle_s": 10,
            "ipns_key": "self",
            "extensions": [".mkv", ".mp4"],
            "state_file": str(tmp_path / "state" / "watcher-state.json"),
        }
        values.update(overrides)
        return Watcher(watcher_module.parse_config(values), clock=clock)

    return make


def write(media: Path, rel: str, data: bytes) -> Path:
    path = media / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def add_settled(watcher: Watcher, clock: Clock) -> watcher_module.ScanReport:
    """A scan that first sees the files, then one once they have settled."""
    watcher.scan_once()
    clock.now += 11
    return watcher.scan_once()


def test_watcher_adds_new_files_under_the_mfs_root(
    kubo: FakeKubo, media: Path, make_watcher: Callable[..., Watcher]
) -> None:
    movie = "Movies/A Movie (2020)/A Movie (2020).mkv"
    show = "Shows/Ünïcode Show/S01E01 #1 + 50% off?.MKV"
    write(media, movie, b"m" * 1000)
    write(media, show, b"s" * 777)
    write(media, "notes.txt", b"not media")
    write(media, ".partial.mkv", b"rsync's temporary file")
    write(media, ".incoming/x.mkv", b"a download in progress")
    clock = Clock()
    watcher = make_watcher(clock)
    first = watcher.scan_once()
    assert first.added == [] and first.waiting == 2
    assert kubo.adds == []
    clock.now += 11
    report = watcher.scan_once()
    assert sorted(report.added) == sorted([movie, show])
    assert {add["to_files"]: add["bytes"] for add in kubo.adds} == {f"{ROOT}/{movie}": 1000, f"{ROOT}/{show}": 777}
    assert {add["filename"] for add in kubo.adds} == {os.path.basename(movie), os.path.basename(show)}
    for add in kubo.adds:
        assert add["chunked"]
        assert {key: add["args"][key] for key in ("pin", "cid-version", "raw-leaves")} == {
            "pin": ["true"],
            "cid-version": ["1"],
            "raw-leaves": ["true"],
        }
        assert "nocopy" not in add["args"]
    assert kubo.files[f"{ROOT}/{show}"][1] == 777
    assert {"arg": [f"{ROOT}/Shows/Ünïcode Show"], "parents": ["true"], "cid-version": ["1"]} in kubo.calls_of(
        "files/mkdir"
    )
    publish = kubo.calls_of("name/publish")[-1]
    assert publish == {
        "arg": [f"/ipfs/{kubo.dir_hash(ROOT)}"],
        "key": ["self"],
        "allow-offline": ["true"],
        "lifetime": ["48h"],
        "ttl": ["5m"],
    }
    assert report.published == kubo.dir_hash(ROOT)


def test_watcher_waits_until_a_file_stops_changing(
    kubo: FakeKubo, media: Path, make_watcher: Callable[..., Watcher]
) -> None:
    path = write(media, "copying.mkv", b"x" * 100)
    clock = Clock()
    watcher = make_watcher(clock)
    watcher.scan_once()
    with path.open("ab") as handle:
        handle.write(b"y" * 100)
    clock.now += 11
    assert watcher.scan_once().added == []
    clock.now += 5
    assert watcher.scan_once().added == []
    assert kubo.adds == []
    clock.now += 6
    assert watcher.scan_once().added == ["copying.mkv"]
    assert [add["bytes"] for add in kubo.adds] == [200]


def test_watcher_removes_a_replaced_file_then_adds_it_again(
    kubo: FakeKubo, media: Path, make_watcher: Callable[..., Watcher]
) -> None:
    path = write(media, "Movies/film.mkv", b"old cut" * 100)
    clock = Clock()
    watcher = make_watcher(clock)
    add_settled(watcher, clock)
    old_cid = kubo.files[f"{ROOT}/Movies/film.mkv"][0]
    publishes = len(kubo.calls_of("name/publish"))
    path.write_bytes(b"new cut" * 100)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5 * 10**9))
    mark = len(kubo.calls)
    report = add_settled(watcher, clock)
    assert report.added == ["Movies/film.mkv"]
    commands = kubo.commands(mark)
    assert commands.index("files/rm") < commands.index("add")
    assert kubo.calls_of("files/rm", mark)[0] == {"arg": [f"{ROOT}/Movies/film.mkv"], "force": ["true"]}
    assert kubo.calls_of("pin/rm", mark) == [{"arg": [old_cid]}]
    new_cid = kubo.files[f"{ROOT}/Movies/film.mkv"][0]
    assert new_cid != old_cid
    assert new_cid == "bafk" + hashlib.sha256(b"new cut" * 100).hexdigest()[:20]
    assert len(kubo.calls_of("name/publish")) == publishes + 1


def test_watcher_removes_a_deleted_file_from_mfs(
    kubo: FakeKubo, media: Path, make_watcher: Callable[..., Watcher]
) -> None:
    gone = write(media, "Shows/old show.mkv", b"a" * 10)
    write(media, "Shows/kept.mkv", b"b" * 10)
    clock = Clock()
    watcher = make_watcher(clock)
    add_settled(watcher, clock)
    gone_cid = kubo.files[f"{ROOT}/Shows/old show.mkv"][0]
    gone.unlink()
    mark = len(kubo.calls)
    clock.now += 1
    report = watcher.scan_once()
    assert report.removed == ["Shows/old show.mkv"]
    assert kubo.calls_of("files/rm", mark) == [{"arg": [f"{ROOT}/Shows/old show.mkv"], "force": ["true"]}]
    assert kubo.calls_of("pin/rm", mark) == [{"arg": [gone_cid]}]
    assert kubo.calls_of("add", mark) == []
    assert sorted(kubo.files) == [f"{ROOT}/Shows/kept.mkv"]
    assert kubo.calls_of("name/publish", mark)[0]["arg"] == [f"/ipfs/{kubo.dir_hash(ROOT)}"]


def test_watcher_keeps_the_library_when_the_media_folder_looks_unmounted(
    kubo: FakeKubo, media: Path, make_watcher: Callable[..., Watcher], caplog: pytest.LogCaptureFixture
) -> None:
    write(media, "a.mkv", b"a")
    clock = Clock()
    watcher = make_watcher(clock)
    add_settled(watcher, clock)
    (media / "a.mkv").unlink()
    mark = len(kubo.calls)
    report = watcher.scan_once()
    assert report.removed == []
    assert kubo.calls_of("files/rm", mark) == []
    assert "holds no files at all" in caplog.text


def test_watcher_publishes_only_when_the_root_cid_changes(
    kubo: FakeKubo, media: Path, make_watcher: Callable[..., Watcher]
) -> None:
    path = write(media, "a.mkv", b"a" * 50)
    clock = Clock()
    watcher = make_watcher(clock)
    add_settled(watcher, clock)
    publishes = kubo.calls_of("name/publish")
    assert publishes[-1]["arg"] == [f"/ipfs/{kubo.dir_hash(ROOT)}"]
    mark = len(kubo.calls)
    clock.now += 30
    watcher.scan_once()
    assert kubo.commands(mark) == []
    # The same bytes with a new mtime: added again, but the root CID does not move.
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    report = add_settled(watcher, clock)
    assert report.added == ["a.mkv"]
    assert {"arg": [ROOT], "hash": ["true"]} in kubo.calls_of("files/stat", mark)
    assert kubo.calls_of("name/publish") == publishes
    path.write_bytes(b"b" * 50)
    add_settled(watcher, clock)
    assert len(kubo.calls_of("name/publish")) == len(publishes) + 1


def test_watcher_survives_kubo_errors_and_retries_next_scan(
    kubo: FakeKubo, media: Path, make_watcher: Callable[..., Watcher], caplog: pytest.LogCaptureFixture
) -> None:
    write(media, "a.mkv", b"a" * 64)
    clock = Clock()
    watcher = make_watcher(clock)
    kubo.fail["add"] = 1
    report = add_settled(watcher, clock)
    assert report.failed == ["a.mkv"]
    assert "injected failure of add" in caplog.text
    assert watcher.state.files == {}
    kubo.fail["name/publish"] = 1
    clock.now += 1
    assert watcher.scan_once().added == ["a.mkv"]
    assert "injected failure of name/publish" in caplog.text
    root = kubo.dir_hash(ROOT)
    assert watcher.state.published != root
    clock.now += 1
    assert watcher.scan_once().published == root
    # kubo gone altogether: the scan reports it and returns.
    write(media, "b.mkv", b"b")
    kubo.close()
    report = add_settled(watcher, clock)
    assert "Connection refused" in report.error and report.added == []
    assert "kubo is not answering" in caplog.text


def test_watcher_stops_cleanly_when_kubo_never_answered(tmp_path: Path, media: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write(media, "a.mkv", b"a")
    config = watcher_module.parse_config(
        {"media_dir": str(media), "api": f"http://127.0.0.1:{port}", "interval_s": 0.01, "settle_s": 0,
         "state_file": str(tmp_path / "s.json")}
    )  # fmt: skip
    watcher = Watcher(config)
    runner = threading.Thread(target=watcher.run)
    runner.start()
    time.sleep(0.1)
    watcher.request_stop()
    runner.join(2)
    assert not runner.is_alive()


def test_watcher_restarted_with_its_state_adds_nothing_again(
    tmp_path: Path, kubo: FakeKubo, media: Path, make_watcher: Callable[..., Watcher]
) -> None:
    for index in range(3):
        write(media, f"Show/E{index}.mkv", bytes([index]) * 10)
    clock = Clock()
    add_settled(make_watcher(clock), clock)
    assert len(kubo.adds) == 3
    state_dir = tmp_path / "state"
    assert [p.name for p in state_dir.iterdir()] == ["watcher-state.json"]
    assert len(json.loads((state_dir / "watcher-state.json").read_text())["files"]) == 3
    mark = len(kubo.calls)
    clock.now += 3600
    restarted = make_watcher(clock)
    restarted.scan_once()
    clock.now += 11
    restarted.scan_once()
    assert set(kubo.commands(mark)) <= {"files/mkdir", "files/stat"}
    assert len(kubo.adds) == 3


def test_watcher_adds_again_what_a_new_kubo_repository_lost(
    kubo: FakeKubo, media: Path, make_watcher: Callable[..., Watcher]
) -> None:
    write(media, "a.mkv", b"a" * 10)
    clock = Clock()
    add_settled(make_watcher(clock), clock)
    kubo.files.clear()
    kubo.dirs = {"/"}
    restarted = make_watcher(clock)
    # It had settled long ago, so it goes back at once.
    report = restarted.scan_once()
    assert report.added == ["a.mkv"]
    assert f"{ROOT}/a.mkv" in kubo.files


def test_watcher_streams_a_large_file_in_chunks(
    kubo: FakeKubo, media: Path, make_watcher: Callable[..., Watcher]
) -> None:
    size = 50 * 1024 * 1024
    with (media / "big.mkv").open("wb") as handle:
        handle.truncate(size)
    clock = Clock()
    watcher = make_watcher(clock)
    watcher.scan_once()
    clock.now += 11
    tracemalloc.start()
    try:
        report = watcher.scan_once()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.added == ["big.mkv"]
    [add] = kubo.adds
    assert add["bytes"] == size
    assert add["cid"] == "bafk" + hashlib.sha256(bytes(size)).hexdigest()[:20]
    assert add["chunked"] and add["max_chunk"] <= CHUNK_SIZE
    assert peak < 16 * 1024 * 1024


def test_the_chunked_reader_never_asks_for_more_than_a_chunk() -> None:
    reads: list[int] = []

    class Recording(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            reads.append(-1 if size is None else size)
            return super().read(size)

    assert list(iter_chunks(Recording(b"abcdefghij"), 4)) == [b"abcd", b"efgh", b"ij"]
    assert reads == [4, 4, 4, 4]
    body = b"".join(multipart_file_body(io.BytesIO(b"data"), "a b+c%.mkv", "B", abspath="/srv/m/a b+c%.mkv"))
    assert body == (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a%20b%2Bc%25.mkv"\r\n'
        b"Content-Type: application/octet-stream\r\nAbspath-Encoded: /srv/m/a%20b%2Bc%25.mkv\r\n\r\ndata\r\n--B--\r\n"
    )


def test_watcher_nocopy_sends_the_absolute_path(
    kubo: FakeKubo, media: Path, make_watcher: Callable[..., Watcher]
) -> None:
    write(media, "Film Ä.mp4", b"z" * 5)
    clock = Clock()
    add_settled(make_watcher(clock, nocopy=True, extensions=None), clock)
    [add] = kubo.adds
    assert add["args"]["nocopy"] == ["true"]
    assert add["abspath"] == str(media / "Film Ä.mp4")


def test_configs_reject_typos_and_accept_the_deployed_files() -> None:
    with pytest.raises(watcher_module.ConfigError, match="unknown key"):
        watcher_module.parse_config({"media_dirs": "/srv/media"})
    with pytest.raises(watcher_module.ConfigError, match="mfs_root"):
        watcher_module.parse_config({"mfs_root": "/"})
    with pytest.raises(warmer_module.ConfigError, match="max_parallel"):
        warmer_module.parse_config({"max_parallel": True})
    with pytest.raises(warmer_module.ConfigError, match="/ipns/"):
        warmer_module.parse_config({"mounts": {"/mnt/a": "k51"}})
    deployed = watcher_module.parse_config(
        {"media_dir": "/srv/media", "mfs_root": ROOT, "api": "http://127.0.0.1:5001", "interval_s": 30,
         "settle_s": 60, "ipns_key": "self", "extensions": None, "state_file": "/var/lib/x/s.json", "nocopy": True}
    )  # fmt: skip
    assert deployed.extensions is None and deployed.nocopy
    assert warmer_module.parse_config({"mounts": {MOUNT: IPNS}, "max_cache_bytes": 53687091200}).mounts == (
        (MOUNT, IPNS),
    )


# --------------------------------------------------------------------------------------------------
# The warmer as health check and rescanner


def test_plex_rescans_the_seeders_folder_when_its_root_moves(
    tmp_path: Path, kubo: FakeKubo, plex: FakePlex, make_warmer: Callable[..., Warmer], caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "plex-token").write_text("plex-token-for-rescans\n")
    plex.sections = [
        ("3", "Alice's films", [f"{MOUNT}/Movies"]),
        ("4", "Friends", ["/mnt/plex-cdn"]),
        ("5", "Mine", ["/srv/media", "/mnt/plex-cdn/alicex"]),
    ]
    status_file = tmp_path / "warmer-status.json"
    warmer = make_warmer(status_file=str(status_file), rescan_interval_s=0.01)
    kubo.names[IPNS] = "/ipfs/bafyroot1"
    caplog.set_level(logging.INFO, "plexcdn.library.warmer")
    warmer.poll_once()
    assert sorted(plex.refreshes) == [
        ("3", f"{MOUNT}/Movies", "plex-token-for-rescans"),
        ("4", MOUNT, "plex-token-for-rescans"),
    ]
    # bob's name does not resolve: nothing is asked for him, and the status says why.
    saved = json.loads(status_file.read_text())
    assert saved["seeders"]["alice"]["root"] == "/ipfs/bafyroot1"
    assert "could not resolve name" in saved["seeders"]["bob"]["resolve_error"]
    assert "plex-token-for-rescans" not in status_file.read_text() + caplog.text

    time.sleep(0.02)
    warmer.poll_once()
    assert len(plex.refreshes) == 2, "the same root is not rescanned twice"

    kubo.names[IPNS] = "/ipfs/bafyroot2"
    time.sleep(0.02)
    warmer.poll_once()
    assert len(plex.refreshes) == 4
    assert "asked Plex to rescan /mnt/plex-cdn/alice in library Friends (4)" in caplog.text

    # A restarted warmer knows which root it had Plex rescan.
    again = make_warmer(status_file=str(status_file), rescan_interval_s=0.01)
    again.poll_once()
    assert len(plex.refreshes) == 4


def test_a_rescan_plex_refused_is_asked_again(
    tmp_path: Path, kubo: FakeKubo, plex: FakePlex, make_warmer: Callable[..., Warmer]
) -> None:
    plex.sections = [("7", "Alice", [MOUNT])]
    plex.xml = True
    plex.refresh_status = 401
    kubo.names[IPNS] = "/ipfs/bafyroot1"
    warmer = make_warmer(status_file=str(tmp_path / "status.json"), rescan_interval_s=0.01)
    warmer.poll_once()
    assert [(key, path) for key, path, _ in plex.refreshes] == [("7", MOUNT)]
    assert "HTTP 401" in json.loads((tmp_path / "status.json").read_text())["seeders"]["alice"]["rescan_error"]
    plex.refresh_status = 200
    time.sleep(0.02)
    warmer.poll_once()
    assert [(key, path) for key, path, _ in plex.refreshes] == [("7", MOUNT), ("7", MOUNT)]
    saved = json.loads((tmp_path / "status.json").read_text())["seeders"]["alice"]
    assert saved["root"] == "/ipfs/bafyroot1" and "rescan_error" not in saved
    assert saved["rescanned"] == [f"Alice (7): {MOUNT}"]


def test_no_plex_library_for_the_seeder_is_said_once_per_root(
    kubo: FakeKubo, plex: FakePlex, make_warmer: Callable[..., Warmer], caplog: pytest.LogCaptureFixture
) -> None:
    plex.sections = [("5", "Mine", ["/srv/media"])]
    kubo.names[IPNS] = "/ipfs/bafyroot1"
    warmer = make_warmer(rescan_interval_s=0.01)
    for _ in range(3):
        warmer.poll_once()
        time.sleep(0.02)
    assert plex.refreshes == []
    assert caplog.text.count(f"no Plex library holds {MOUNT}") == 1


def write_fs_status(path: Path, **states: str) -> None:
    seeders = {name: {"state": state, "reason": f"reason for {state}"} for name, state in states.items()}
    path.write_text(json.dumps({"version": 1, "mount_point": "/mnt/plex-cdn", "seeders": seeders}))


def test_the_warmer_says_when_a_seeder_stops_answering_and_prefetches_nothing_from_it(
    tmp_path: Path, kubo: FakeKubo, plex: FakePlex, make_warmer: Callable[..., Warmer], caplog: pytest.LogCaptureFixture
) -> None:
    fs_status = tmp_path / "fs-status.json"
    write_fs_status(fs_status, alice="stalled", bob="ok")
    warmer = make_warmer(fs_status_file=str(fs_status), status_file=str(tmp_path / "w.json"), retry_s=0)
    [path] = playing(kubo, plex, "Movies/Film.mkv")
    caplog.set_level(logging.INFO, "plexcdn.library.warmer")
    warmer.poll_once()
    assert warmer.in_flight == [] and kubo.refs_started == []
    assert f"seeder folder {MOUNT} is stalled: reason for stalled" in caplog.text
    assert f"not prefetching {path}: seeder alice is stalled" in caplog.text
    saved = json.loads((tmp_path / "w.json").read_text())["seeders"]
    assert saved["alice"]["state"] == "stalled" and saved["bob"]["state"] == "ok"

    write_fs_status(fs_status, alice="ok", bob="ok")
    poll_until(warmer, lambda: path in warmer.completed)
    assert f"seeder folder {MOUNT} answers again (was stalled)" in caplog.text
    assert kubo.refs_started == [path]


def test_without_a_status_from_the_library_file_system_the_seeders_are_unknown(
    tmp_path: Path, make_warmer: Callable[..., Warmer]
) -> None:
    warmer = make_warmer(fs_status_file=str(tmp_path / "missing.json"))
    assert {state.state for state in warmer.seeder_health().values()} == {"unknown"}
    (tmp_path / "garbage.json").write_text("{not json")
    assert warmer_module.read_fs_status(str(tmp_path / "garbage.json")) == {}


def test_names_with_line_breaks_or_control_characters_are_refused_and_the_rest_travel_escaped(
    kubo: FakeKubo, media: Path, make_watcher: Callable[..., Watcher], caplog: pytest.LogCaptureFixture
) -> None:
    """A file dropped into the seeder's folder names its own upload header: it must not end the header line,
    add a header of its choosing, or write terminal codes into the journal."""
    hostile = [
        "Evil\r\nAbspath: /etc/shadow\r\nX: .mkv",
        "Bare\nLF.mkv",
        "Escape \x1b[2J\x1b]0;owned\x07.mkv",
        "Tab\there.mkv",
        "Next line\x85.mkv",
        "Line separator\u2028.mkv",
        "Dir\rwith CR/inside.mkv",
    ]
    fine = ["Plain.mkv", "A + B = 100% (Ünï).mkv"]
    for name in [*hostile, *fine]:
        write(media, name, b"x" * 10)
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="plexcdn.library.watcher"):
        report = add_settled(make_watcher(clock, nocopy=True), clock)
    assert kubo.malformed == [], "every upload header reached kubo well-formed"
    assert sorted(report.added) == sorted(fine) and report.failed == []
    assert sorted(add["abspath"] for add in kubo.adds) == sorted(str(media / name) for name in fine)
    assert sorted(kubo.files) == sorted(f"{ROOT}/{name}" for name in fine)
    for name in hostile:
        assert f"not sharing {name!r}" in caplog.text
    assert not re.search("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]", caplog.text.replace("\n", "")), "log escaped"


def test_watcher_and_warmer_talk_to_kubo_on_its_unix_socket(tmp_path: Path, media: Path) -> None:
    socket_path = tmp_path / "api" / "api.sock"
    socket_path.parent.mkdir()
    kubo = FakeKubo(unix_socket=str(socket_path))
    try:
        write(media, "Film.mkv", b"f" * 100)
        clock = Clock()
        watcher = Watcher(
            watcher_module.parse_config(
                {
                    "media_dir": str(media),
                    "api": kubo.url,
                    "settle_s": 10,
                    "state_file": str(tmp_path / "state.json"),
                }
            ),
            clock=clock,
        )
        assert add_settled(watcher, clock).added == ["Film.mkv"]
        assert kubo.calls_of("name/publish"), "the library was published over the socket"
        client = warmer_module.KuboClient(kubo.url, timeout_s=5)
        assert client.call("repo/stat", [("size-only", "true")])["RepoSize"] == 0
    finally:
        kubo.close()
    with pytest.raises(watcher_module.ConfigError, match="unix:/absolute"):
        watcher_module.parse_config({"api": "unix:relative.sock"})
    with pytest.raises(warmer_module.ConfigError, match="unix:/absolute"):
        warmer_module.parse_config({"api": "ftp://127.0.0.1:5001"})


def test_the_warmer_reads_the_token_from_its_systemd_credential(
    kubo: FakeKubo,
    plex: FakePlex,
    make_warmer: Callable[..., Warmer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "plex-token").write_text("credential-token-77\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    warmer = make_warmer(plex_token_credential="plex-token", plex_token_file="")
    [path] = playing(kubo, plex, "x.mkv")
    poll_until(warmer, lambda: path in warmer.completed)
    assert plex.tokens and set(plex.tokens) == {"credential-token-77"}
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert warmer_module.token_path(warmer.config) == "", "outside systemd, with no file, Plex is asked without one"
