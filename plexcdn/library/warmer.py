#!/usr/bin/python3 -I
"""Fetches the rest of what Plex is playing from a friend's library into the local IPFS cache.

One file, standard library only (its kubo RPC client is the other service's, repeated on purpose: each file
is installed alone, on peers of a different role): it is copied onto a viewer and run by systemd as

  python3 warmer.py --config /etc/plex-cdn/library/warmer.json [--verbose]

The friends' libraries are IPNS paths mounted through kubo's FUSE mount, where Plex's libraries point.
FUSE fetches blocks only as the player reads them, so every seek and every slow block stalls the stream.
This service asks Plex what is playing, and for each playing file under one of the mounts it has kubo
walk the whole file (`refs -r`), which fetches every block ahead of the player. It runs at most
`max_parallel` of those walks, one per file, cancels a walk when playback stops, and does not start one
that would push kubo's repository over its bound.

Configuration (JSON object):
  plex_url          Plex on this machine                          "http://127.0.0.1:32400"
  plex_token_credential  the systemd credential holding X-Plex-Token (LoadCredential=): read from
                         $CREDENTIALS_DIRECTORY, which only this service's account can open    ""
  plex_token_file   X-Plex-Token from a file instead, if it exists and is not empty  ""
  api               kubo's RPC API: unix:/path or http://host:port  "http://127.0.0.1:5001"
  mounts            local folder -> IPFS path, e.g. {"/mnt/plex-cdn/alice": "/ipns/k51..."}
  interval_s        pause between polls of Plex                   5
  max_parallel      prefetches at once                            2
  max_cache_bytes   bound on the repository with a new prefetch   53687091200
  timeout_s         socket timeout of Plex and kubo calls         30
  stall_timeout_s   a prefetch that receives nothing this long fails   300
  retry_s           wait before retrying a failed or skipped file   60
  completed_ttl_s   how long a finished file is remembered once it stops playing   21600
  fs_status_file    the library file system's status file            "/var/lib/plex-cdn/library/fs-status.json"
  status_file       where this service writes its own status         "" (none)
  rescan_interval_s pause between asks of kubo where each seeder's name points   60

It is also the viewer's health check: each poll it reads the state the library file system writes (a
seeder whose reads stall, or whose peer is not connected), says in its log when a seeder's state changes,
and starts no prefetch from a seeder that is not answering. And it asks Plex to rescan a seeder's folder
when the seeder publishes new content: every `rescan_interval_s` it resolves each seeder's IPNS name, and
when the root moved it finds the Plex libraries whose folders lie in (or hold) the seeder's folder
(`GET /library/sections`) and asks each for a partial scan of that folder
(`GET /library/sections/<key>/refresh?path=<folder>`). What it saw is written to `status_file`.
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
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit
from xml.etree import ElementTree

if TYPE_CHECKING:
    from types import FrameType

DEFAULT_CONFIG = "/etc/plex-cdn/library/warmer.json"
SESSIONS_PATH = "/status/sessions"
REDACTED = "<redacted>"
# Plex's session XML names a played item by its kind: Video (movies, episodes, clips), Track (music).
PLAYED_ELEMENTS = ("Video", "Track", "Metadata")

log = logging.getLogger("plexcdn.library.warmer")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or has a wrong value; the message says which."""


class KuboError(RuntimeError):
    """kubo answered with an error about this file."""


class KuboUnavailableError(RuntimeError):
    """kubo did not answer at all."""


class PlexUnavailableError(RuntimeError):
    """Plex did not answer, or not with a session list."""


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class WarmerConfig:
    plex_url: str = "http://127.0.0.1:32400"
    plex_token_credential: str = ""
    plex_token_file: str = ""
    api: str = "http://127.0.0.1:5001"
    # Longest local prefix first, so that a mount inside another wins.
    mounts: tuple[tuple[str, str], ...] = ()
    interval_s: float = 5.0
    max_parallel: int = 2
    max_cache_bytes: int = 50 * 1024**3
    timeout_s: float = 30.0
    stall_timeout_s: float = 300.0
    retry_s: float = 60.0
    completed_ttl_s: float = 6 * 3600.0
    fs_status_file: str = "/var/lib/plex-cdn/library/fs-status.json"
    status_file: str = ""
    rescan_interval_s: float = 60.0


_NUMBER = (int, float)
_TYPES: dict[str, type | tuple[type, ...]] = {
    "plex_url": str,
    "plex_token_credential": str,
    "plex_token_file": str,
    "api": str,
    "mounts": dict,
    "interval_s": _NUMBER,
    "max_parallel": int,
    "max_cache_bytes": int,
    "timeout_s": _NUMBER,
    "stall_timeout_s": _NUMBER,
    "retry_s": _NUMBER,
    "completed_ttl_s": _NUMBER,
    "fs_status_file": str,
    "status_file": str,
    "rescan_interval_s": _NUMBER,
}


def _clean(path: str) -> str:
    return posixpath.normpath(path).rstrip("/") or "/"


def parse_mounts(raw: dict[Any, Any], where: str) -> tuple[tuple[str, str], ...]:
    mounts: dict[str, str] = {}
    for local, remote in raw.items():
        if not isinstance(local, str) or not local.startswith("/") or _clean(local) == "/":
            raise ConfigError(f"{where}: mount {local!r} must be an absolute folder other than /")
        if not isinstance(remote, str) or not remote.startswith(("/ipns/", "/ipfs/")) or len(remote.split("/")) < 3:
            raise ConfigError(f"{where}: mount {local!r} must map to /ipns/<name> or /ipfs/<cid>, not {remote!r}")
        mounts[_clean(local)] = _clean(remote)
    return tuple(sorted(mounts.items(), key=lambda item: (-len(item[0]), item[0])))


def parse_config(values: object, where: str = "config") -> WarmerConfig:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: the top level must be a JSON object")
    unknown = sorted(set(values) - set(_TYPES))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_TYPES))}")
    for key, value in values.items():
        # bool is an int in Python; max_parallel of `true` is a typo, not a number.
        if (isinstance(value, bool) and _TYPES[key] is not bool) or not isinstance(value, _TYPES[key]):
            raise ConfigError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    settings = dict(values)
    settings["mounts"] = parse_mounts(settings.get("mounts", {}), where)
    for key in ("interval_s", "timeout_s", "stall_timeout_s", "retry_s", "completed_ttl_s", "rescan_interval_s"):
        if key in settings:
            settings[key] = float(settings[key])
    config = WarmerConfig(**settings)
    url = urlsplit(config.plex_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"{where}: plex_url must be an http URL, not {config.plex_url!r}")
    if not api_is_valid(config.api):
        raise ConfigError(f"{where}: api must be unix:/absolute/socket/path or an http:// URL, not {config.api!r}")
    if config.plex_token_credential and not re.fullmatch(r"[A-Za-z0-9_.-]+", config.plex_token_credential):
        raise ConfigError(f"{where}: plex_token_credential must be a credential's name, such as plex-token")
    if config.max_parallel < 1 or config.max_cache_bytes < 0:
        raise ConfigError(f"{where}: max_parallel must be >= 1 and max_cache_bytes >= 0")
    positive = (config.interval_s, config.timeout_s, config.stall_timeout_s, config.rescan_interval_s)
    if min(positive) <= 0 or config.retry_s < 0:
        raise ConfigError(
            f"{where}: interval_s, timeout_s, stall_timeout_s and rescan_interval_s must be > 0, retry_s >= 0"
        )
    return config


def load_config(path: str) -> WarmerConfig:
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not JSON: {error}") from None
    return parse_config(values, path)


# --------------------------------------------------------------------------------------------------
# Plex


def _objects(container: Any, key: str) -> list[dict[str, Any]]:
    """container[key] when it is a list, keeping only its objects: Plex omits empty lists altogether."""
    values = container.get(key) if isinstance(container, dict) else None
    return [value for value in values if isinstance(value, dict)] if isinstance(values, list) else []


def _parts_of_json(document: Any) -> list[str]:
    container = document.get("MediaContainer") if isinstance(document, dict) else None
    found: list[str] = []
    for item in _objects(container, "Metadata"):
        for media in _objects(item, "Media"):
            for part in _objects(media, "Part"):
                if isinstance(part.get("file"), str) and part["file"]:
                    found.append(part["file"])
    return found


def _parts_of_xml(body: bytes) -> list[str]:
    # The document comes from the Plex server on this machine; expat refuses entity-expansion bombs.
    root = ElementTree.fromstring(body)  # noqa: S314
    found: list[str] = []
    for item in root:
        if item.tag not in PLAYED_ELEMENTS:
            continue
        for media in item.iter("Media"):
            for part in media.iter("Part"):
                file = part.get("file")
                if file:
                    found.append(file)
    return found


def parse_sessions(body: bytes) -> list[str]:
    """The files of every part Plex is playing, in session order, each once; JSON or XML."""
    try:
        files = _parts_of_xml(body) if body.lstrip()[:1] == b"<" else _parts_of_json(json.loads(body))
    except (ValueError, ElementTree.ParseError) as error:
        raise PlexUnavailableError(f"Plex sent an unreadable session list: {type(error).__name__}") from None
    return list(dict.fromkeys(files))


def map_to_ipfs(file: str, mounts: Sequence[tuple[str, str]]) -> str | None:
    """The IPFS path of a file under one of the mounts (the longest matching one), else None."""
    path = posixpath.normpath(file)
    for local, remote in mounts:
        if path == local:
            return remote
        if path.startswith(local + "/"):
            return f"{remote}/{path[len(local) + 1 :]}"
    return None


def token_path(config: WarmerConfig) -> str:
    """Where the token is: the service's credential when systemd gave it one, else the configured file."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if config.plex_token_credential and directory:
        return os.path.join(directory, config.plex_token_credential)
    return config.plex_token_file


def read_token(path: str) -> str:
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as error:
        log.warning("cannot read the Plex token file %s (%s); asking Plex without a token", path, type(error).__name__)
        return ""


def redact(text: str, secret: str) -> str:
    return text.replace(secret, REDACTED) if secret else text


# --------------------------------------------------------------------------------------------------
# kubo


def rpc_target(command: str, params: Sequence[tuple[str, str]]) -> str:
    # quote, not quote_plus: Go's query parser reads "+" as a space, so a literal "+" must travel as %2B.
    return f"/api/v0/{command}?{urlencode(list(params), quote_via=quote)}"


def _message(data: bytes) -> str:
    with contextlib.suppress(ValueError):
        value = json.loads(data)
        if isinstance(value, dict) and isinstance(value.get("Message"), str):
            return str(value["Message"])
    return data.decode("utf-8", "replace").strip()[:300] or "no message"


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


class KuboClient:
    def __init__(self, api: str, timeout_s: float) -> None:
        self.socket_path = api[len("unix:") :] if api.startswith("unix:") else ""
        parts = urlsplit(api)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5001
        self.timeout_s = timeout_s

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.socket_path:
            return UnixHTTPConnection(self.socket_path, timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def call(self, command: str, params: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        connection = self.connection(self.timeout_s)
        try:
            connection.request("POST", rpc_target(command, params))
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            raise KuboUnavailableError(f"{command}: {error or type(error).__name__}") from None
        finally:
            connection.close()
        if response.status != http.HTTPStatus.OK:
            raise KuboError(f"{command}: {_message(data)}")
        try:
            value = json.loads(data)
        except ValueError:
            raise KuboError(f"{command}: the answer is not JSON") from None
        if not isinstance(value, dict):
            raise KuboError(f"{command}: the answer is not a JSON object")
        return value


class Prefetch:
    """One `refs -r` walk of one file on its own thread; cancel() closes its connection."""

    def __init__(self, client: KuboClient, ipfs_path: str, size: int, stall_timeout_s: float) -> None:
        self.client = client
        self.ipfs_path = ipfs_path
        self.size = size
        self.stall_timeout_s = stall_timeout_s
        self.refs = 0
        self.error = ""
        self.done = threading.Event()
        self._cancelled = False
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None
        self.thread = threading.Thread(target=self._run, name=f"prefetch {ipfs_path}", daemon=True)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def start(self) -> None:
        self.thread.start()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            connection = self._connection
            if connection is not None and connection.sock is not None:
                # shutdown wakes the thread blocked in recv, which then closes the connection itself:
                # closing it from here would pull the response out from under that thread.
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        connection = self.client.connection(self.stall_timeout_s)
        try:
            with self._lock:
                if self._cancelled:
                    return
                self._connection = connection
            connection.connect()
            with self._lock:
                if self._cancelled:
                    return
            target = rpc_target("refs", [("arg", self.ipfs_path), ("recursive", "true"), ("unique", "true")])
            connection.request("POST", target)
            response = connection.getresponse()
            if response.status != http.HTTPStatus.OK:
                self.error = f"refs: {_message(response.read())}"
                return
            self._read(response)
        except Exception as error:
            # Anything at all: a thread that died without setting `done` would hold its slot for ever.
            if not self._cancelled:
                self.error = f"refs: {error or type(error).__name__}"
        finally:
            connection.close()
            self.done.set()

    def _read(self, response: http.client.HTTPResponse) -> None:
        """Reading to the end is the point: kubo fetches each block before it names the next."""
        while True:
            line = response.readline()
            if not line:
                break
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict) and value.get("Err"):
                self.error = f"refs: {value['Err']}"
            elif isinstance(value, dict) and value.get("Ref"):
                self.refs += 1
        if self._cancelled:
            self.error = ""


# --------------------------------------------------------------------------------------------------
# Seeders: their health, and Plex's rescans when they publish

SECTIONS_PATH = "/library/sections"
STATUS_VERSION = 1


@dataclass(frozen=True)
class SeederState:
    state: str  # ok | stalled | unreachable | unknown
    reason: str = ""


@dataclass(frozen=True)
class PlexLocation:
    section: str  # the section's key
    title: str
    path: str


def _sections_of_json(document: Any) -> list[PlexLocation]:
    container = document.get("MediaContainer") if isinstance(document, dict) else None
    found: list[PlexLocation] = []
    for directory in _objects(container, "Directory"):
        key, title = directory.get("key"), directory.get("title", "")
        for location in _objects(directory, "Location"):
            if isinstance(location.get("path"), str) and key is not None:
                found.append(PlexLocation(str(key), str(title), location["path"]))
    return found


def _sections_of_xml(body: bytes) -> list[PlexLocation]:
    root = ElementTree.fromstring(body)  # noqa: S314 - from the Plex server on this machine
    found: list[PlexLocation] = []
    for directory in root.iter("Directory"):
        key = directory.get("key")
        for location in directory.iter("Location"):
            path = location.get("path")
            if key is not None and path:
                found.append(PlexLocation(key, directory.get("title", ""), path))
    return found


def parse_sections(body: bytes) -> list[PlexLocation]:
    """Every folder of every Plex library (`GET /library/sections`), JSON or XML."""
    try:
        return _sections_of_xml(body) if body.lstrip()[:1] == b"<" else _sections_of_json(json.loads(body))
    except (ValueError, ElementTree.ParseError) as error:
        raise PlexUnavailableError(f"Plex sent an unreadable library list: {type(error).__name__}") from None


def rescan_targets(folder: str, locations: Sequence[PlexLocation]) -> list[tuple[PlexLocation, str]]:
    """(library folder, path to rescan) for each Plex folder inside the seeder's folder or holding it."""
    folder = _clean(folder)
    targets: list[tuple[PlexLocation, str]] = []
    for location in locations:
        path = _clean(location.path)
        if path == folder or path.startswith(folder + "/"):
            targets.append((location, path))
        elif folder.startswith(path + "/"):
            targets.append((location, folder))
    return list(dict.fromkeys(targets))


def read_fs_status(path: str) -> dict[str, SeederState]:
    """Each seeder folder's state as the library file system last wrote it; empty when it wrote nothing."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return {}
    seeders = value.get("seeders") if isinstance(value, dict) else None
    mount_point = value.get("mount_point") if isinstance(value, dict) else None
    if not isinstance(seeders, dict) or not isinstance(mount_point, str):
        return {}
    states: dict[str, SeederState] = {}
    for name, entry in seeders.items():
        if isinstance(entry, dict):
            states[_clean(posixpath.join(mount_point, str(name)))] = SeederState(
                str(entry.get("state", "unknown")), str(entry.get("reason", ""))
            )
    return states


# --------------------------------------------------------------------------------------------------
# The poll loop


class Warmer:
    def __init__(
        self,
        config: WarmerConfig,
        client: KuboClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.client = client or KuboClient(config.api, config.timeout_s)
        self.clock = clock
        self.stop_event = threading.Event()
        self._active: dict[str, Prefetch] = {}
        self._queue: list[str] = []
        # Finished files, with when they were last seen playing.
        self._completed: dict[str, float] = {}
        # Failed or skipped files, with when they may be tried again.
        self._blocked: dict[str, float] = {}
        self._skip_logged: set[str] = set()
        self._cancelled: list[Prefetch] = []
        self._plex_failing = False
        # Per seeder folder: its state as last seen, the root its name resolved to, and what the last rescan did.
        self._states: dict[str, SeederState] = {}
        self._seeders: dict[str, dict[str, Any]] = self._load_status()
        self._next_rescan_check = 0.0
        self._written = ""

    # ---- what tests and the log look at

    @property
    def in_flight(self) -> list[str]:
        return list(self._active)

    @property
    def queued(self) -> list[str]:
        return list(self._queue)

    @property
    def completed(self) -> list[str]:
        return list(self._completed)

    # ---- Plex

    def playing(self) -> list[str]:
        """The IPFS paths of the playing files that lie under a mount."""
        token = read_token(token_path(self.config))
        headers = {"Accept": "application/json"}
        if token:
            headers["X-Plex-Token"] = token
        url = self.config.plex_url.rstrip("/") + SESSIONS_PATH
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - the URL's scheme is checked in parse_config
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:  # noqa: S310
                body = response.read()
        except urllib.error.HTTPError as error:
            raise PlexUnavailableError(f"Plex answered {url} with HTTP {error.code}") from None
        except (OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise PlexUnavailableError(redact(f"Plex at {url} is not answering: {reason}", token)) from None
        paths: list[str] = []
        for file in parse_sessions(body):
            mapped = map_to_ipfs(file, self.config.mounts)
            if mapped is None:
                log.debug("%s is playing but lies under no mount", file)
            elif mapped not in paths:
                paths.append(mapped)
        return paths

    # ---- one poll

    def poll_once(self) -> None:
        self._reap()
        self.check_health()
        if self.clock() >= self._next_rescan_check:
            self._next_rescan_check = self.clock() + self.config.rescan_interval_s
            self.check_publications()
        self.write_status()
        try:
            playing = self.playing()
        except PlexUnavailableError as error:
            # What is playing is unknown: leave the prefetches alone until Plex answers again.
            (log.debug if self._plex_failing else log.warning)("%s; retrying in %s s", error, self.config.interval_s)
            self._plex_failing = True
            return
        if self._plex_failing:
            log.info("Plex answers again")
            self._plex_failing = False
        now = self.clock()
        playing_set = set(playing)
        for path, prefetch in list(self._active.items()):
            if path not in playing_set:
                log.info("playback of %s stopped; cancelling its prefetch", path)
                prefetch.cancel()
                self._cancelled.append(prefetch)
                del self._active[path]
        self._queue = [path for path in self._queue if path in playing_set]
        for path in playing_set & self._completed.keys():
            self._completed[path] = now
        self._completed = {p: seen for p, seen in self._completed.items() if now - seen <= self.config.completed_ttl_s}
        self._blocked = {path: until for path, until in self._blocked.items() if until > now}
        self._skip_logged &= playing_set
        for path in playing:
            known = path in self._active or path in self._completed or path in self._blocked
            if not known and path not in self._queue:
                self._queue.append(path)
        self._start_queued(now)
        self._cancelled = [prefetch for prefetch in self._cancelled if not prefetch.done.is_set()]

    def _reap(self) -> None:
        now = self.clock()
        for path, prefetch in list(self._active.items()):
            if not prefetch.done.is_set():
                continue
            del self._active[path]
            if prefetch.error:
                log.warning("prefetch of %s failed (retrying in %s s): %s", path, self.config.retry_s, prefetch.error)
                self._blocked[path] = now + self.config.retry_s
            else:
                log.info("prefetched %s (%d blocks)", path, prefetch.refs)
                self._completed[path] = now

    def _start_queued(self, now: float) -> None:
        while self._queue and len(self._active) < self.config.max_parallel:
            path = self._queue[0]
            silent = self._silent_seeder(path)
            if silent is not None:
                self._queue.pop(0)
                self._blocked[path] = now + self.config.retry_s
                log.warning("not prefetching %s: seeder %s; retrying in %s s", path, silent, self.config.retry_s)
                continue
            try:
                size = self._room_for(path)
            except KuboUnavailableError as error:
                log.warning("kubo is not answering (%s); retrying in %s s", error, self.config.interval_s)
                return
            except KuboError as error:
                log.warning("cannot prefetch %s (retrying in %s s): %s", path, self.config.retry_s, error)
                self._queue.pop(0)
                self._blocked[path] = now + self.config.retry_s
                continue
            self._queue.pop(0)
            if size is None:
                self._blocked[path] = now + self.config.retry_s
                continue
            prefetch = Prefetch(self.client, path, size, self.config.stall_timeout_s)
            self._active[path] = prefetch
            log.info("prefetching %s (%d bytes)", path, size)
            prefetch.start()

    def _room_for(self, path: str) -> int | None:
        """The file's size if fetching it keeps the repository within bounds, else None."""
        repo = self.client.call("repo/stat", [("size-only", "true")])
        stat = self.client.call("files/stat", [("arg", path)])
        size = _int(stat.get("CumulativeSize")) or _int(stat.get("Size"))
        repo_size = _int(repo.get("RepoSize"))
        storage_max = _int(repo.get("StorageMax"))
        limit = min(self.config.max_cache_bytes, storage_max) if storage_max > 0 else self.config.max_cache_bytes
        # Prefetches under way will grow the repository by up to their whole size too.
        reserved = sum(prefetch.size for prefetch in self._active.values())
        if repo_size + reserved + size > limit:
            if path not in self._skip_logged:
                self._skip_logged.add(path)
                log.warning(
                    "not prefetching %s: %d bytes on top of the repository's %d (+%d in flight) would pass %d",
                    path,
                    size,
                    repo_size,
                    reserved,
                    limit,
                )
            return None
        return size

    # ---- seeders: health and rescans

    def seeder_health(self) -> dict[str, SeederState]:
        """Each mounted seeder folder's state from the library file system; "unknown" when it says nothing."""
        states = read_fs_status(self.config.fs_status_file)
        return {local: states.get(local, SeederState("unknown")) for local, _ in self.config.mounts}

    def check_health(self) -> None:
        for local, state in self.seeder_health().items():
            previous = self._states.get(local)
            self._states[local] = state
            entry = self._seeders.setdefault(posixpath.basename(local), {})
            entry.update({"folder": local, "state": state.state, "reason": state.reason})
            if previous is None or previous.state == state.state:
                if previous is None and state.state in ("stalled", "unreachable"):
                    log.warning("seeder folder %s is %s: %s", local, state.state, state.reason)
                continue
            if state.state == "ok":
                log.info("seeder folder %s answers again (was %s)", local, previous.state)
            else:
                log.warning("seeder folder %s is %s: %s", local, state.state, state.reason)

    def _silent_seeder(self, ipfs_path: str) -> str | None:
        """ "<folder> is <state>" when the file's seeder is not answering, else None."""
        for local, remote in self.config.mounts:
            if ipfs_path == remote or ipfs_path.startswith(remote + "/"):
                state = self._states.get(local)
                if state is not None and state.state in ("stalled", "unreachable"):
                    return f"{posixpath.basename(local)} is {state.state}"
                return None
        return None

    def check_publications(self) -> None:
        """Ask kubo where each seeder's name points; when it moved, ask Plex to rescan that seeder's folder."""
        for local, remote in self.config.mounts:
            if not remote.startswith("/ipns/"):
                continue
            entry = self._seeders.setdefault(posixpath.basename(local), {"folder": local})
            try:
                answer = self.client.call("name/resolve", [("arg", remote), ("recursive", "true")])
            except (KuboError, KuboUnavailableError) as error:
                entry["resolve_error"] = str(error)
                log.info("cannot resolve %s (%s); asking again in %s s", remote, error, self.config.rescan_interval_s)
                continue
            root = answer.get("Path")
            entry.pop("resolve_error", None)
            if not isinstance(root, str) or not root or root == entry.get("root"):
                continue
            log.info("seeder folder %s now holds %s (was %s)", local, root, entry.get("root") or "not seen before")
            try:
                rescanned = self.rescan(local)
            except PlexUnavailableError as error:
                entry["rescan_error"] = str(error)
                log.warning(
                    "could not ask Plex to rescan %s (%s); asking again in %s s",
                    local,
                    error,
                    self.config.rescan_interval_s,
                )
                continue
            entry.update(
                {"root": root, "root_seen_at": time.time(), "rescanned_at": time.time(), "rescanned": rescanned}
            )
            entry.pop("rescan_error", None)

    def _plex_get(self, target: str) -> bytes:
        token = read_token(self.config.plex_token_file)
        headers = {"Accept": "application/json"}
        if token:
            headers["X-Plex-Token"] = token
        url = self.config.plex_url.rstrip("/") + target
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - the URL's scheme is checked in parse_config
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:  # noqa: S310
                body: bytes = response.read()
        except urllib.error.HTTPError as error:
            raise PlexUnavailableError(f"Plex answered {urlsplit(url).path} with HTTP {error.code}") from None
        except (OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise PlexUnavailableError(redact(f"Plex at {url} is not answering: {reason}", token)) from None
        return body

    def rescan(self, folder: str) -> list[str]:
        """Ask each Plex library holding the folder for a partial scan of it; what was asked, as log words."""
        targets = rescan_targets(folder, parse_sections(self._plex_get(SECTIONS_PATH)))
        if not targets:
            log.warning("no Plex library holds %s: add it as a library folder in Plex to see this seeder", folder)
            return []
        asked: list[str] = []
        for location, path in targets:
            self._plex_get(f"{SECTIONS_PATH}/{quote(location.section, safe='')}/refresh?{urlencode({'path': path})}")
            asked.append(f"{location.title or location.section} ({location.section}): {path}")
            log.info("asked Plex to rescan %s in library %s (%s)", path, location.title, location.section)
        return asked

    # ---- the status file

    def _load_status(self) -> dict[str, dict[str, Any]]:
        """What the last run wrote: the roots already rescanned are not rescanned again after a restart."""
        if not self.config.status_file:
            return {}
        try:
            with open(self.config.status_file, encoding="utf-8") as handle:
                value = json.load(handle)
        except (OSError, ValueError):
            return {}
        seeders = value.get("seeders") if isinstance(value, dict) else None
        return {str(k): dict(v) for k, v in seeders.items() if isinstance(v, dict)} if isinstance(seeders, dict) else {}

    def status(self) -> dict[str, Any]:
        return {
            "version": STATUS_VERSION,
            "plex_answering": not self._plex_failing,
            "prefetching": sorted(self._active),
            "seeders": {name: dict(entry) for name, entry in sorted(self._seeders.items())},
        }

    def write_status(self) -> None:
        if not self.config.status_file:
            return
        current = json.dumps(self.status(), sort_keys=True)
        if current == self._written:
            return
        document = dict(self.status(), written_at=time.time())
        directory = posixpath.dirname(self.config.status_file) or "."
        temporary = posixpath.join(directory, f".{posixpath.basename(self.config.status_file)}.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=1, sort_keys=True)
                out.write("\n")
            os.replace(temporary, self.config.status_file)
        except OSError as error:
            log.error("cannot write %s: %s", self.config.status_file, error.strerror)
            return
        self._written = current

    # ---- the service

    def close(self, timeout: float = 5.0) -> None:
        """Cancels every prefetch and forgets the queue."""
        self._queue.clear()
        for prefetch in self._active.values():
            prefetch.cancel()
            self._cancelled.append(prefetch)
        self._active.clear()
        deadline = time.monotonic() + timeout
        for prefetch in self._cancelled:
            prefetch.thread.join(max(0.0, deadline - time.monotonic()))
        self._cancelled.clear()

    def request_stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                try:
                    self.poll_once()
                except Exception:
                    log.exception("poll failed; retrying in %s s", self.config.interval_s)
                self.stop_event.wait(self.config.interval_s)
        finally:
            self.close()


def _int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prefetch what Plex is playing from the friends' IPFS libraries.")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
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
    warmer = Warmer(config)

    def stop(signum: int, frame: FrameType | None) -> None:
        warmer.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    warmer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
