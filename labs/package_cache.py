"""A caching HTTP proxy for the boot lab's guests: Debian's apt archive and PyPI, without public DNS.

Guests reach it over QEMU's user-mode network (`guestfwd`, see `labs.guests`); it runs on this
machine's loopback and fetches from the real registries. Two kinds of traffic:

- apt, through `Acquire::http::Proxy`: requests carry absolute URLs (`GET http://deb.debian.org/...`).
  Only the Debian archive hosts in `APT_HOSTS` are served, so the cache is no open proxy.
- pip, through `index-url = http://<cache>/pypi/simple/`: `/pypi/simple/...` is fetched from
  https://pypi.org/simple/... and the file links in it are rewritten to `/pypi/files/...`, which is
  fetched from https://files.pythonhosted.org/... (with this machine's CA bundle).

What is kept where:
- immutable objects (`.deb` files, apt's `by-hash` indexes, PyPI's files, which live under
  content-addressed paths) in the persistent cache directory, shared by every run;
- everything else (InRelease, the simple index pages) in a per-run directory that goes with the run,
  so a second guest of the same run finds them while a new run sees the registries' current state.

Concurrent requests for the same URL share one upstream fetch. `GET /_lab/stats` answers counters
(hits, misses, shared fetches, ...) per kind, which the tests read.

`python -m labs.package_cache --port P --cache-dir D --run-dir R` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import json
import os
import re
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Final, Literal

PERSISTENT_CACHE_DIR: Final = Path("/var/cache/plexcdn-lab/packages")
HOST_CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")
PYPI_SIMPLE: Final = "https://pypi.org/simple/"
PYPI_FILES: Final = "https://files.pythonhosted.org/"
SIMPLE_PREFIX: Final = "/pypi/simple/"
FILES_PREFIX: Final = "/pypi/files/"
STATS_PATH: Final = "/_lab/stats"
# The Debian archive hosts a trixie guest's sources name; anything else is refused.
APT_HOSTS: Final = frozenset({"deb.debian.org", "security.debian.org", "ftp.debian.org"})
# pip sends a preference for PEP 691 JSON; the proxy always asks PyPI for the HTML form, whose links it rewrites.
SIMPLE_HTML: Final = "application/vnd.pypi.simple.v1+html"
MAX_OBJECT_BYTES: Final = 1 << 30
MAX_CONNECTIONS: Final = 64
UPSTREAM_TIMEOUT_S: Final = 60
CLIENT_TIMEOUT_S: Final = 120
# The persistent cache is trimmed to this size at start, least recently used first.
MAX_CACHE_BYTES: Final = 8 << 30
CHUNK: Final = 1 << 16

Kind = Literal["apt", "pypi-simple", "pypi-file"]
Lifetime = Literal["persistent", "run"]


class RefusedTargetError(ValueError):
    """A request the cache will not forward (not a registry it serves)."""


@dataclass(frozen=True)
class Route:
    """What a guest's request maps to: the upstream URL, its kind and how long its answer is kept."""

    kind: Kind
    upstream: str
    lifetime: Lifetime

    @property
    def key(self) -> str:
        return cache_key(self.upstream)


def normalize_url(url: str) -> str:
    """The URL as a cache key sees it: scheme and host lower case, default port and fragment dropped."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    default_port = {"http": 80, "https": 443}.get(scheme)
    netloc = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def cache_key(url: str) -> str:
    return hashlib.sha256(normalize_url(url).encode()).hexdigest()


def apt_lifetime(path: str) -> Lifetime:
    """Packages and by-hash indexes never change under their URL; Release files and plain indexes do."""
    if "/by-hash/" in path or re.search(r"\.(u?deb|dsc)$|\.(orig|debian)\.tar\.\w+$", path):
        return "persistent"
    return "run"


def route(request_target: str) -> Route:
    """Map a request line's target to its upstream; raises RefusedTargetError for anything else."""
    if request_target.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(request_target)
        if parts.scheme != "http" or (parts.hostname or "").lower() not in APT_HOSTS:
            raise RefusedTargetError(f"not a Debian archive this cache serves: {request_target}")
        if ".." in parts.path.split("/"):
            raise RefusedTargetError(f"path escapes the archive: {request_target}")
        return Route("apt", normalize_url(request_target), apt_lifetime(parts.path))
    path, _, query = request_target.partition("?")
    if ".." in path.split("/"):
        raise RefusedTargetError(f"path escapes the registry: {request_target}")
    suffix = f"?{query}" if query else ""
    if path.startswith(SIMPLE_PREFIX):
        return Route("pypi-simple", PYPI_SIMPLE + path.removeprefix(SIMPLE_PREFIX) + suffix, "run")
    if path.startswith(FILES_PREFIX) and path.removeprefix(FILES_PREFIX).startswith("packages/"):
        return Route("pypi-file", PYPI_FILES + path.removeprefix(FILES_PREFIX) + suffix, "persistent")
    raise RefusedTargetError(f"no registry under {path}: use {SIMPLE_PREFIX} or an apt proxy URL")


_FILES_LINK = re.compile(r"""(href=["'])(https://files\.pythonhosted\.org/)""", re.IGNORECASE)


def rewrite_simple_page(page: str, proxy_base: str) -> str:
    """A PEP 503 page whose file links point through the proxy (`proxy_base` like http://198.18.64.100:3142).

    Only the link targets change: their `#sha256=` fragments and the data-* attributes (requires-python,
    core metadata hashes, yanked) stay, so pip checks what it downloads against PyPI's own hashes.
    """
    base = proxy_base.rstrip("/") + FILES_PREFIX
    return _FILES_LINK.sub(lambda match: match.group(1) + html.escape(base, quote=True), page)


# --- the cache on disk -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedObject:
    body: Path
    content_type: str
    length: int


class ObjectStore:
    """Objects by cache key in a directory: `<hh>/<key>` for the body, `<hh>/<key>.json` for its headers.

    A body appears by rename, complete, or not at all.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _paths(self, key: str) -> tuple[Path, Path]:
        directory = self.root / key[:2]
        return directory / key, directory / f"{key}.json"

    def get(self, key: str) -> CachedObject | None:
        body, meta = self._paths(key)
        try:
            headers = json.loads(meta.read_text())
            length = body.stat().st_size
        except (OSError, ValueError):
            return None
        if length != headers.get("length"):
            return None
        with contextlib.suppress(OSError):
            os.utime(body)  # least-recently-used trimming reads this
        return CachedObject(body, str(headers.get("content_type", "application/octet-stream")), length)

    @contextlib.contextmanager
    def writer(self, key: str, url: str, content_type: str) -> Iterator[tuple[Path, Callable[[], None]]]:
        """A temporary file to fill; `commit()` moves it into place, leaving without it discards it."""
        body, meta = self._paths(key)
        body.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary_name = tempfile.mkstemp(dir=body.parent, prefix=".partial-")
        os.close(fd)
        temporary = Path(temporary_name)
        committed = False

        def commit() -> None:
            nonlocal committed
            length = temporary.stat().st_size
            meta_tmp = meta.with_name(f".{meta.name}.tmp")
            meta_tmp.write_text(json.dumps({"url": url, "content_type": content_type, "length": length}))
            temporary.replace(body)
            meta_tmp.replace(meta)
            committed = True

        try:
            yield temporary, commit
        finally:
            if not committed:
                temporary.unlink(missing_ok=True)

    def size(self) -> int:
        return sum(path.stat().st_size for path in self.root.rglob("*") if path.is_file())

    def trim(self, max_bytes: int) -> int:
        """Remove the least recently used objects until the store is within max_bytes; returns bytes freed."""
        bodies = [path for path in self.root.glob("??/*") if path.is_file() and not path.name.endswith(".json")]
        for stale in self.root.glob("??/.partial-*"):
            stale.unlink(missing_ok=True)
        entries = sorted(((path.stat().st_mtime, path.stat().st_size, path) for path in bodies), key=lambda e: e[0])
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, path in entries:
            if total - freed <= max_bytes:
                break
            path.unlink(missing_ok=True)
            path.with_name(f"{path.name}.json").unlink(missing_ok=True)
            freed += size
        return freed


# --- the server ----------------------------------------------------------------------------------------


class Stats:
    """Counters by kind and outcome: hit, miss, shared (waited for another request's fetch), refused, error."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {}
        self.bytes_served = 0
        self.bytes_fetched = 0

    def add(self, kind: str, outcome: str) -> None:
        with self.lock:
            per_kind = self.counts.setdefault(kind, {})
            per_kind[outcome] = per_kind.get(outcome, 0) + 1

    def add_bytes(self, served: int = 0, fetched: int = 0) -> None:
        with self.lock:
            self.bytes_served += served
            self.bytes_fetched += fetched

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            return {
                "counts": {kind: dict(outcomes) for kind, outcomes in self.counts.items()},
                "bytes_served": self.bytes_served,
                "bytes_fetched": self.bytes_fetched,
            }


class UpstreamError(RuntimeError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class PackageCache:
    """The cache's state: stores, in-flight fetches and counters; `serve()` runs the HTTP side."""

    def __init__(self, cache_dir: Path, run_dir: Path, ca_bundle: Path = HOST_CA_BUNDLE) -> None:
        self.persistent = ObjectStore(cache_dir)
        self.per_run = ObjectStore(run_dir)
        self.tls = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle.exists() else None)
        self.stats = Stats()
        self.inflight_lock = threading.Lock()
        self.inflight: dict[str, threading.Lock] = {}
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=self.tls))

    def store(self, target: Route) -> ObjectStore:
        return self.persistent if target.lifetime == "persistent" else self.per_run

    def _key_lock(self, key: str) -> threading.Lock:
        with self.inflight_lock:
            return self.inflight.setdefault(key, threading.Lock())

    def fetch(self, target: Route) -> tuple[CachedObject, str]:
        """The object for a route, from the cache or fetched once however many ask at the same time;
        returns it and the outcome (hit, miss or shared)."""
        store = self.store(target)
        found = store.get(target.key)
        if found is not None:
            return found, "hit"
        lock = self._key_lock(target.key)
        waited = not lock.acquire(blocking=False)
        if waited:
            lock.acquire()
        try:
            found = store.get(target.key)
            if found is not None:
                return found, "shared" if waited else "hit"
            return self._download(target, store), "miss"
        finally:
            lock.release()

    def _download(self, target: Route, store: ObjectStore) -> CachedObject:
        headers = {"User-Agent": "plexcdn-boot-lab-cache"}
        if target.kind == "pypi-simple":
            headers["Accept"] = SIMPLE_HTML
        request = urllib.request.Request(target.upstream, headers=headers)  # noqa: S310 - https/http registries only
        try:
            response = self.opener.open(request, timeout=UPSTREAM_TIMEOUT_S)
        except urllib.error.HTTPError as error:
            raise UpstreamError(error.code, str(error.reason)) from None
        except (urllib.error.URLError, OSError) as error:
            raise UpstreamError(502, f"upstream {target.upstream}: {error}") from None
        with response:
            content_type = response.headers.get("Content-Type", "application/octet-stream")
            with store.writer(target.key, target.upstream, content_type) as (temporary, commit):
                fetched = 0
                with temporary.open("wb") as out:
                    while chunk := response.read(CHUNK):
                        fetched += len(chunk)
                        if fetched > MAX_OBJECT_BYTES:
                            raise UpstreamError(502, f"{target.upstream} is larger than {MAX_OBJECT_BYTES} bytes")
                        out.write(chunk)
                self.stats.add_bytes(fetched=fetched)
                commit()
        found = store.get(target.key)
        if found is None:
            raise UpstreamError(502, f"{target.upstream} vanished from the cache right after it was stored")
        return found


def _handler_for(cache: PackageCache) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "plexcdn-lab-cache"
        timeout = CLIENT_TIMEOUT_S

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def do_CONNECT(self) -> None:
            self._error(405, "this cache tunnels nothing: use http:// archive URLs")

        def _serve(self, send_body: bool) -> None:
            if not cache.connections.acquire(timeout=30):
                self._error(503, "too many requests at once")
                return
            try:
                self._serve_bounded(send_body)
            finally:
                cache.connections.release()

        def _serve_bounded(self, send_body: bool) -> None:
            if self.path == STATS_PATH:
                self._send(200, "application/json", json.dumps(cache.stats.snapshot()).encode(), send_body)
                return
            try:
                target = route(self.path)
            except RefusedTargetError as refused:
                cache.stats.add("refused", "refused")
                self._error(403, str(refused))
                return
            try:
                found, outcome = cache.fetch(target)
            except UpstreamError as error:
                cache.stats.add(target.kind, "error" if error.status >= 500 else f"upstream-{error.status}")
                self._error(error.status if 400 <= error.status < 600 else 502, error.reason)
                return
            cache.stats.add(target.kind, outcome)
            if target.kind == "pypi-simple":
                page = found.body.read_text(errors="replace")
                body = rewrite_simple_page(page, f"http://{self.headers.get('Host', '')}").encode()
                self._send(200, found.content_type, body, send_body)
                return
            self.send_response(200)
            self.send_header("Content-Type", found.content_type)
            self.send_header("Content-Length", str(found.length))
            self.end_headers()
            if send_body:
                with found.body.open("rb") as source:
                    shutil.copyfileobj(source, self.wfile, CHUNK)
                cache.stats.add_bytes(served=found.length)

        def _send(self, status: int, content_type: str, body: bytes, send_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)
                cache.stats.add_bytes(served=len(body))

        def _error(self, status: int, message: str) -> None:
            self._send(status, "text/plain; charset=utf-8", (message + "\n").encode(), True)

    return Handler


class CacheServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = MAX_CONNECTIONS


def make_server(cache: PackageCache, host: str = "127.0.0.1", port: int = 0) -> CacheServer:
    return CacheServer((host, port), _handler_for(cache))


def read_stats(port: int, host: str = "127.0.0.1", timeout: float = 5) -> dict[str, dict[str, int]]:
    """The counters of a running cache, by kind then outcome."""
    with urllib.request.urlopen(f"http://{host}:{port}{STATS_PATH}", timeout=timeout) as response:
        counts: dict[str, dict[str, int]] = json.loads(response.read())["counts"]
    return counts


def wait_until_serving(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.package_cache", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--cache-dir", type=Path, default=PERSISTENT_CACHE_DIR, help="kept between runs")
    parser.add_argument("--run-dir", type=Path, required=True, help="this run's mutable indexes (removed by the lab)")
    parser.add_argument("--max-cache-bytes", type=int, default=MAX_CACHE_BYTES)
    args = parser.parse_args(argv)
    cache = PackageCache(args.cache_dir, args.run_dir)
    cache.persistent.trim(args.max_cache_bytes)
    server = make_server(cache, port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"package cache on 127.0.0.1:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


def stats_delta(
    before: Mapping[str, Mapping[str, int]], after: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    """after - before, per kind and outcome, leaving out zeros."""
    delta: dict[str, dict[str, int]] = {}
    for kind, outcomes in after.items():
        for outcome, count in outcomes.items():
            change = count - before.get(kind, {}).get(outcome, 0)
            if change:
                delta.setdefault(kind, {})[outcome] = change
    return delta


if __name__ == "__main__":
    sys.exit(main())
