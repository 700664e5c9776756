#!/usr/bin/python3 -I
"""Adds a seeder's media folder to IPFS through MFS and publishes it under the seeder's IPNS name.

One file, standard library only (its kubo RPC client is the other service's, repeated on purpose: each file
is installed alone, on peers of a different role): it is copied onto the seeder and run by systemd as

  python3 watcher.py --config /etc/plex-cdn/library/watcher.json [--once] [--verbose]

It polls the folder (inotify is not in the standard library, and a poll also notices what changed while
it was not running). A file is added once its size and mtime have stayed the same for `settle_s`, so a
copy in progress is not published half-written; a file replaced in place is removed from MFS and added
again; a file deleted from disk is removed from MFS. After a scan that changed MFS, the MFS root is
published under `ipns_key` if its CID moved. What has been added is kept in `state_file`, so a restart
adds nothing again.

Configuration (JSON object; every key optional):
  media_dir          the folder to share                            "/srv/media"
  mfs_root           where it appears in MFS                        "/plex-cdn-library"
  api                kubo's RPC API: unix:/path or http://host:port  "http://127.0.0.1:5001"
  interval_s         pause between scans                            30
  settle_s           how long a file must stay unchanged            60
  ipns_key           kubo key to publish under                      "self"
  extensions         file endings to share (any case), null: all    null
  state_file         what has been added, kept across restarts      "/var/lib/plex-cdn/library/watcher-state.json"
  nocopy             add through kubo's filestore (no second copy)  false
  max_adds_per_scan  files added per scan before publishing         16
  publish_lifetime   IPNS record lifetime                           "48h"
  publish_ttl        IPNS record TTL                                "5m"
  timeout_s          socket timeout of RPC calls                    30
  add_timeout_s      socket timeout while kubo imports a file       3600
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import posixpath
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

if TYPE_CHECKING:
    from types import FrameType

DEFAULT_CONFIG = "/etc/plex-cdn/library/watcher.json"
# A name with one of these is not shared: line breaks (CR, LF, NEL, U+2028/9), terminal escapes and the other C0
# and C1 controls would reach kubo's MFS, the friends' Plex libraries and this service's log as they are.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
CHUNK_SIZE = 1 << 20
STATE_VERSION = 1
Params = Sequence[tuple[str, str]]

log = logging.getLogger("plexcdn.library.watcher")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or has a wrong value; the message says which."""


class KuboError(RuntimeError):
    """kubo answered, with an error: this item is retried on the next scan."""


class KuboUnavailableError(RuntimeError):
    """kubo did not answer at all: the rest of the scan waits for the next one."""


class MediaReadError(RuntimeError):
    """Reading a media file failed while it was being sent to kubo."""


class AddCancelledError(RuntimeError):
    """The service is stopping; an add in progress is abandoned rather than finished."""


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class WatcherConfig:
    media_dir: str = "/srv/media"
    mfs_root: str = "/plex-cdn-library"
    api: str = "http://127.0.0.1:5001"
    interval_s: float = 30.0
    settle_s: float = 60.0
    ipns_key: str = "self"
    extensions: tuple[str, ...] | None = None
    state_file: str = "/var/lib/plex-cdn/library/watcher-state.json"
    nocopy: bool = False
    max_adds_per_scan: int = 16
    publish_lifetime: str = "48h"
    publish_ttl: str = "5m"
    timeout_s: float = 30.0
    add_timeout_s: float = 3600.0


_NUMBER = (int, float)
_TYPES: dict[str, type | tuple[type, ...]] = {
    "media_dir": str,
    "mfs_root": str,
    "api": str,
    "interval_s": _NUMBER,
    "settle_s": _NUMBER,
    "ipns_key": str,
    "extensions": (list, type(None)),
    "state_file": str,
    "nocopy": bool,
    "max_adds_per_scan": int,
    "publish_lifetime": str,
    "publish_ttl": str,
    "timeout_s": _NUMBER,
    "add_timeout_s": _NUMBER,
}


def parse_config(values: object, where: str = "config") -> WatcherConfig:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: the top level must be a JSON object")
    unknown = sorted(set(values) - set(_TYPES))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_TYPES))}")
    for key, value in values.items():
        # bool is an int in Python; an interval of `true` is a typo, not a number.
        if (isinstance(value, bool) and _TYPES[key] is not bool) or not isinstance(value, _TYPES[key]):
            raise ConfigError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    settings = dict(values)
    extensions = settings.pop("extensions", None)
    if extensions is not None:
        if not all(isinstance(item, str) and item for item in extensions):
            raise ConfigError(f"{where}: extensions must be a list of non-empty strings, or null")
        settings["extensions"] = tuple(item.lower() for item in extensions)
    for key in ("interval_s", "settle_s", "timeout_s", "add_timeout_s"):
        if key in settings:
            settings[key] = float(settings[key])
    config = WatcherConfig(**settings)
    _check_ranges(config, where)
    return config


def _check_ranges(config: WatcherConfig, where: str) -> None:
    root = config.mfs_root
    if not root.startswith("/") or posixpath.normpath(root) != root or root == "/":
        raise ConfigError(f"{where}: mfs_root must be a normalised absolute MFS path other than /, not {root!r}")
    if not os.path.isabs(config.media_dir):
        raise ConfigError(f"{where}: media_dir must be an absolute path")
    if not api_is_valid(config.api):
        raise ConfigError(f"{where}: api must be unix:/absolute/socket/path or an http:// URL, not {config.api!r}")
    if config.interval_s <= 0 or config.settle_s < 0 or config.max_adds_per_scan < 1:
        raise ConfigError(f"{where}: interval_s must be > 0, settle_s >= 0 and max_adds_per_scan >= 1")
    if min(config.timeout_s, config.add_timeout_s) <= 0:
        raise ConfigError(f"{where}: timeout_s and add_timeout_s must be > 0")


def load_config(path: str) -> WatcherConfig:
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not JSON: {error}") from None
    return parse_config(values, path)


# --------------------------------------------------------------------------------------------------
# kubo's RPC API


def api_is_valid(api: str) -> bool:
    if api.startswith("unix:"):
        return api[len("unix:") :].startswith("/")
    parts = urlsplit(api)
    return parts.scheme == "http" and bool(parts.hostname)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP to kubo's API on a Unix socket: whoever may enter the socket's directory may talk to kubo."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.settimeout(self.timeout)
            connection.connect(self.socket_path)
        except BaseException:
            connection.close()
            raise
        self.sock = connection


def rpc_target(command: str, params: Params) -> str:
    # quote, not quote_plus: Go's query parser reads "+" as a space, so a literal "+" must travel as %2B.
    return f"/api/v0/{command}?{urlencode(list(params), quote_via=quote)}"


def decode_values(data: bytes) -> list[Any]:
    """Every JSON value of a response: kubo streams one per line, and a plain command sends one."""
    text = data.decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    values: list[Any] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return values
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            raise KuboError(f"kubo sent something that is not JSON: {text[index : index + 200]!r}") from None
        values.append(value)


def error_message(data: bytes) -> str:
    try:
        values = decode_values(data)
    except KuboError:
        values = []
    for value in values:
        if isinstance(value, dict) and isinstance(value.get("Message"), str):
            return str(value["Message"])
    return data.decode("utf-8", "replace").strip()[:300] or "no message"


def iter_chunks(stream: IO[bytes], chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The stream in pieces of at most chunk_size bytes, so a file of many GB never sits in memory."""
    while True:
        try:
            chunk = stream.read(chunk_size)
        except OSError as error:
            raise MediaReadError(f"reading {getattr(stream, 'name', 'the file')}: {error}") from error
        if not chunk:
            return
        yield chunk


def multipart_file_body(
    stream: IO[bytes],
    filename: str,
    boundary: str,
    *,
    abspath: str = "",
    stop: threading.Event | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[bytes]:
    """A multipart/form-data body with one file part, produced piece by piece."""
    # kubo reads the part's filename through url.QueryUnescape, so it is sent escaped.
    headers = [
        f"--{boundary}",
        f'Content-Disposition: form-data; name="file"; filename="{quote(filename, safe="")}"',
        "Content-Type: application/octet-stream",
    ]
    if abspath:
        # The filestore records where the blocks live instead of copying them. kubo reads this header through
        # url.QueryUnescape ('+' would be a space), so every byte but '/' and the unreserved ones travels escaped:
        # a name can never end the header line or carry bytes a header may not hold.
        headers.append(f"Abspath-Encoded: {quote(abspath, safe='/')}")
    yield ("\r\n".join(headers) + "\r\n\r\n").encode("utf-8")
    for chunk in iter_chunks(stream, chunk_size):
        if stop is not None and stop.is_set():
            raise AddCancelledError("stopping")
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode("ascii")


class KuboClient:
    def __init__(self, api: str, timeout_s: float = 30.0, add_timeout_s: float = 3600.0) -> None:
        self.socket_path = api[len("unix:") :] if api.startswith("unix:") else ""
        parts = urlsplit(api)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5001
        self.timeout_s = timeout_s
        self.add_timeout_s = add_timeout_s

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.socket_path:
            return UnixHTTPConnection(self.socket_path, timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def call(self, command: str, params: Params = ()) -> list[Any]:
        connection = self._connection(self.timeout_s)
        try:
            connection.request("POST", rpc_target(command, params))
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            raise KuboUnavailableError(f"{command}: {error or type(error).__name__}") from None
        finally:
            connection.close()
        if response.status != http.HTTPStatus.OK:
            raise KuboError(f"{command}: {error_message(data)}")
        return decode_values(data)

    def add(self, source: str, params: Params, abspath: str = "", stop: threading.Event | None = None) -> list[Any]:
        """Streams the file to `add` with chunked transfer: its size may still change while it is read."""
        boundary = secrets.token_hex(16)
        connection = self._connection(self.add_timeout_s)
        try:
            with open(source, "rb") as stream:
                body = multipart_file_body(stream, os.path.basename(source), boundary, abspath=abspath, stop=stop)
                headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
                try:
                    connection.request(
                        "POST", rpc_target("add", params), body=body, headers=headers, encode_chunked=True
                    )
                except (OSError, http.client.HTTPException) as error:
                    # kubo may have refused the request before reading it all; its answer says why.
                    raise self._early_answer(connection, error) from None
            try:
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as error:
                raise KuboUnavailableError(f"add: {error or type(error).__name__}") from None
        finally:
            connection.close()
        if response.status != http.HTTPStatus.OK:
            raise KuboError(f"add: {error_message(data)}")
        return decode_values(data)

    @staticmethod
    def _early_answer(connection: http.client.HTTPConnection, error: Exception) -> Exception:
        with contextlib.suppress(OSError, http.client.HTTPException):
            response = connection.getresponse()
            if response.status != http.HTTPStatus.OK:
                return KuboError(f"add: {error_message(response.read())}")
        return KuboUnavailableError(f"add: {error or type(error).__name__}")


# --------------------------------------------------------------------------------------------------
# State kept across restarts


@dataclass
class Added:
    size: int
    mtime_ns: int
    cid: str


@dataclass
class Pending:
    size: int
    mtime_ns: int
    since: float


@dataclass
class WatcherState:
    files: dict[str, Added] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    # The MFS root CID last seen, and the one last published.
    root: str = ""
    published: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "files": {rel: [e.size, e.mtime_ns, e.cid] for rel, e in sorted(self.files.items())},
            "pending": {rel: [p.size, p.mtime_ns, p.since] for rel, p in sorted(self.pending.items())},
            "root": self.root,
            "published": self.published,
        }

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> WatcherState:
        if values.get("version") != STATE_VERSION:
            raise ValueError(f"state version {values.get('version')!r}, expected {STATE_VERSION}")
        return cls(
            files={str(rel): Added(int(s), int(m), str(c)) for rel, (s, m, c) in values["files"].items()},
            pending={str(rel): Pending(int(s), int(m), float(t)) for rel, (s, m, t) in values["pending"].items()},
            root=str(values.get("root", "")),
            published=str(values.get("published", "")),
        )


def load_state(path: str) -> WatcherState:
    try:
        with open(path, encoding="utf-8") as handle:
            return WatcherState.from_json(json.load(handle))
    except FileNotFoundError:
        return WatcherState()
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        # Starting empty re-adds every file (the same CIDs come back): slow, but it converges.
        log.error("state file %s is unusable (%s); starting from an empty state", path, error)
        with contextlib.suppress(OSError):
            os.replace(path, path + ".bad")
        return WatcherState()


def save_state(path: str, state: WatcherState) -> None:
    """Written beside the target and renamed over it: a crash leaves the old file or the new one."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(state.to_json(), handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# --------------------------------------------------------------------------------------------------
# Scanning


@dataclass
class ScanReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    waiting: int = 0
    published: str = ""
    error: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


@dataclass(frozen=True)
class Tree:
    files: dict[str, tuple[int, int]]
    # Relative paths that could not be read: what was added under them is not taken as deleted.
    unreadable: tuple[str, ...]


def _is_under(rel: str, prefixes: Sequence[str]) -> bool:
    return any(prefix in ("", rel) or rel.startswith(prefix + "/") for prefix in prefixes)


class Watcher:
    def __init__(
        self,
        config: WatcherConfig,
        client: KuboClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.client = client or KuboClient(config.api, config.timeout_s, config.add_timeout_s)
        self.clock = clock
        self.stop_event = threading.Event()
        self.state = load_state(config.state_file)
        self._saved = json.dumps(self.state.to_json())
        self._root_checked = False
        self._warned: set[str] = set()

    # ---- the media folder

    def _wanted(self, name: str) -> bool:
        if name.startswith("."):
            # Hidden files are how rsync and many downloaders keep a copy in progress.
            return False
        extensions = self.config.extensions
        return extensions is None or name.lower().endswith(extensions)

    def _shareable(self, rel: str) -> bool:
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            reason = "its name is not UTF-8"
        else:
            control = CONTROL_CHARACTERS.search(rel)
            if control is None:
                return True
            reason = f"its name holds the control character {control.group(0)!r}"
        if rel not in self._warned:
            self._warned.add(rel)
            # repr: the name goes into the journal escaped, never as the line breaks or terminal codes it holds.
            log.warning("not sharing %r: %s", rel, reason)
        return False

    def walk(self) -> Tree:
        """Sizes and mtimes of the files to share; symlinked files count, symlinked folders are not entered."""
        top = self.config.media_dir
        if not os.path.isdir(top):
            raise FileNotFoundError(f"media_dir {top} is not a directory")
        found: dict[str, tuple[int, int]] = {}
        unreadable: list[str] = []
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            try:
                with os.scandir(os.path.join(top, rel_dir)) as entries:
                    listing = sorted(entries, key=lambda entry: entry.name)
            except OSError as error:
                log.warning("cannot list %s: %s", os.path.join(top, rel_dir), error.strerror)
                unreadable.append(rel_dir)
                continue
            for entry in listing:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not entry.name.startswith("."):
                            stack.append(rel)
                        continue
                    if not entry.is_file() or not self._wanted(entry.name) or not self._shareable(rel):
                        continue
                    info = entry.stat()
                except OSError:
                    unreadable.append(rel)
                    continue
                found[rel] = (info.st_size, info.st_mtime_ns)
        return Tree(found, tuple(unreadable))

    def _update_pending(self, found: Mapping[str, tuple[int, int]], now: float) -> list[str]:
        """The files whose (size, mtime) is new and has held for settle_s, oldest first."""
        state = self.state
        for rel in [rel for rel in state.pending if rel not in found]:
            del state.pending[rel]
        ready: list[str] = []
        for rel, (size, mtime_ns) in found.items():
            known = state.files.get(rel)
            if known is not None and (known.size, known.mtime_ns) == (size, mtime_ns):
                state.pending.pop(rel, None)
                continue
            pending = state.pending.get(rel)
            if pending is None or (pending.size, pending.mtime_ns) != (size, mtime_ns):
                pending = state.pending[rel] = Pending(size, mtime_ns, now)
            if now - pending.since >= self.config.settle_s:
                ready.append(rel)
        ready.sort(key=lambda rel: (state.pending[rel].since, rel))
        return ready

    # ---- MFS

    def mfs_path(self, rel: str) -> str:
        return f"{self.config.mfs_root}/{rel}"

    def _root_cid(self) -> str:
        stat = self.client.call("files/stat", [("arg", self.config.mfs_root), ("hash", "true")])
        cid = stat[0].get("Hash") if stat and isinstance(stat[0], dict) else None
        if not isinstance(cid, str) or not cid:
            raise KuboError(f"files/stat {self.config.mfs_root} gave no Hash")
        return cid

    def _check_root(self) -> None:
        """Once per start: make the root, and if MFS moved without us (a new repository), forget what is gone."""
        self.client.call("files/mkdir", [("arg", self.config.mfs_root), ("parents", "true"), ("cid-version", "1")])
        root = self._root_cid()
        if self.state.files and root != self.state.root:
            lost = []
            for rel, entry in list(self.state.files.items()):
                try:
                    stat = self.client.call("files/stat", [("arg", self.mfs_path(rel))])
                    present = bool(stat) and isinstance(stat[0], dict) and stat[0].get("Hash") == entry.cid
                except KuboError:
                    present = False
                if not present:
                    lost.append(rel)
                    del self.state.files[rel]
                    # It had settled before: it need not wait again unless it changes.
                    self.state.pending[rel] = Pending(entry.size, entry.mtime_ns, 0.0)
            if lost:
                log.warning(
                    "MFS changed outside the watcher: %d file(s) are no longer in it and are added again", len(lost)
                )
        self.state.root = root

    def _remove(self, rel: str) -> None:
        answer = self.client.call("files/rm", [("arg", self.mfs_path(rel)), ("force", "true")])
        # files/rm reports per-path failures as JSON strings in a 200 answer.
        problems = [value for value in answer if isinstance(value, str) and value.strip() and "not exist" not in value]
        if problems:
            raise KuboError(f"files/rm: {'; '.join(problems)}")
        old = self.state.files.pop(rel, None)
        if old is not None and all(entry.cid != old.cid for entry in self.state.files.values()):
            # Without this the pin would keep a deleted file's blocks from GC for ever.
            try:
                self.client.call("pin/rm", [("arg", old.cid)])
            except KuboError as error:
                log.info("pin/rm %s (%s): %s", old.cid, rel, error)

    def _add(self, rel: str, signature: tuple[int, int], report: ScanReport) -> None:
        source = os.path.join(self.config.media_dir, rel)
        target = self.mfs_path(rel)
        # An MFS entry in the way (the old version, or one left by an add that was cut short) makes `add` fail.
        had = rel in self.state.files
        self._remove(rel)
        if had:
            report.removed.append(rel)
        self.client.call("files/mkdir", [("arg", posixpath.dirname(target)), ("parents", "true"), ("cid-version", "1")])
        params = [("to-files", target), ("pin", "true"), ("cid-version", "1"), ("raw-leaves", "true")]
        if self.config.nocopy:
            params.append(("nocopy", "true"))
        events = self.client.add(source, params, os.path.abspath(source) if self.config.nocopy else "", self.stop_event)
        hashes = [event["Hash"] for event in events if isinstance(event, dict) and event.get("Hash")]
        if not hashes:
            raise KuboError(f"add gave no CID for {rel}")
        cid = str(hashes[-1])
        # kubo links the file into MFS after it has answered; a failure there only shows in an HTTP trailer.
        stat = self.client.call("files/stat", [("arg", target)])
        linked = stat[0].get("Hash") if stat and isinstance(stat[0], dict) else None
        if linked != cid:
            raise KuboError(f"added {rel} as {cid} but MFS holds {linked or 'nothing'} at {target}")
        self.state.files[rel] = Added(signature[0], signature[1], cid)
        report.added.append(rel)
        try:
            info = os.stat(source)
            after = (info.st_size, info.st_mtime_ns)
        except OSError:
            after = signature
        if after != signature:
            log.info("%s changed while it was added; it is added again once it settles", rel)
            self.state.pending[rel] = Pending(after[0], after[1], self.clock())
        else:
            self.state.pending.pop(rel, None)
        log.info("added %s as %s", rel, cid)

    def _publish(self, report: ScanReport) -> None:
        root = self._root_cid()
        self.state.root = root
        if root == self.state.published:
            return
        self.client.call(
            "name/publish",
            [
                ("arg", f"/ipfs/{root}"),
                ("key", self.config.ipns_key),
                ("allow-offline", "true"),
                ("lifetime", self.config.publish_lifetime),
                ("ttl", self.config.publish_ttl),
            ],
        )
        self.state.published = root
        report.published = root
        log.info("published /ipfs/%s under key %s", root, self.config.ipns_key)

    # ---- one scan

    def scan_once(self) -> ScanReport:
        """One pass: remove what left the disk, add what settled (at most max_adds_per_scan), publish if moved.

        kubo's errors are logged and left for the next scan; nothing but a bug raises.
        """
        report = ScanReport()
        now = self.clock()
        try:
            tree = self.walk()
        except OSError as error:
            log.error("not scanning: %s", error)
            report.error = str(error)
            return report
        try:
            if not self._root_checked:
                self._check_root()
                self._root_checked = True
        except (KuboError, KuboUnavailableError) as error:
            log.warning("cannot open %s in MFS (%s); retrying next scan", self.config.mfs_root, error)
            report.error = str(error)
        ready = self._update_pending(tree.files, now)
        report.waiting = len(self.state.pending) - len(ready)
        if report.error:
            self._save()
            return report
        try:
            self._remove_deleted(tree, report)
            for rel in ready[: self.config.max_adds_per_scan]:
                if self.stop_event.is_set():
                    break
                self._add_one(rel, tree.files[rel], report)
            if report.changed or self.state.published != self.state.root:
                try:
                    self._publish(report)
                except KuboError as error:
                    log.error("could not publish the library (retrying next scan): %s", error)
                    report.error = str(error)
        except KuboUnavailableError as error:
            log.warning("kubo is not answering (%s); retrying next scan", error)
            report.error = str(error)
        finally:
            self._save()
        return report

    def _remove_deleted(self, tree: Tree, report: ScanReport) -> None:
        gone = [rel for rel in self.state.files if rel not in tree.files and not _is_under(rel, tree.unreadable)]
        if gone and not tree.files:
            # Everything gone at once is an unmounted disk far more often than a deleted library.
            log.warning("%s holds no files at all; not removing the %d shared ones", self.config.media_dir, len(gone))
            return
        for rel in gone:
            try:
                self._remove(rel)
            except KuboError as error:
                log.error("could not remove %s from MFS (retrying next scan): %s", rel, error)
                report.failed.append(rel)
                continue
            report.removed.append(rel)
            log.info("removed %s", rel)

    def _add_one(self, rel: str, signature: tuple[int, int], report: ScanReport) -> None:
        try:
            self._add(rel, signature, report)
        except KuboError as error:
            log.error("could not add %s (retrying next scan): %s", rel, error)
            report.failed.append(rel)
        except (OSError, MediaReadError) as error:
            log.warning("could not read %s (retrying next scan): %s", rel, error)
            report.failed.append(rel)
        except AddCancelledError:
            log.info("stopping: the add of %s is abandoned", rel)
        self._save()

    def _save(self) -> None:
        current = json.dumps(self.state.to_json())
        if current == self._saved:
            return
        try:
            save_state(self.config.state_file, self.state)
        except OSError as error:
            log.error("cannot write %s: %s", self.config.state_file, error)
            return
        self._saved = current

    # ---- the service

    def request_stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.scan_once()
            except Exception:
                log.exception("scan failed; retrying in %s s", self.config.interval_s)
            self.stop_event.wait(self.config.interval_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Share a media folder through IPFS (MFS + IPNS).")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--once", action="store_true", help="scan once and exit")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        config = load_config(args.config)
    except ConfigError as error:
        log.error("%s", error)
        return 2
    watcher = Watcher(config)
    if args.once:
        report = watcher.scan_once()
        return 1 if report.error or report.failed else 0

    def stop(signum: int, frame: FrameType | None) -> None:
        watcher.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    watcher.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
