#!/usr/bin/python3 -I
"""Shows Plex the friends' libraries through a read-only file system whose every call answers within a bound.

kubo's FUSE mount (`/ipns/<name>`) fetches blocks as they are read and waits for them without limit: when a
seeder is offline, or kubo hangs, a read of a block this viewer does not hold blocks Plex's thread for ever,
with nothing to time it out. This program mounts the viewer's library folder (`mount_point`, one folder per
seeder) over kubo's mount and runs each call on kubo's mount in a worker of that seeder's pool: a call that
has not answered within `op_timeout_s` fails with EIO, so Plex reports an error instead of hanging. What kubo
holds locally (a prefetched film, the folder listings) still answers at once while the seeder is away.

A call past its bound keeps its worker until kubo answers it; while any does, the seeder is "stalled", and
once every worker of a seeder waits on kubo, calls for it fail at once. When kubo answers them (the seeder is
back), the seeder is "ok" again. Every `health_interval_s` the program also asks kubo which peers are
connected: a seeder whose peer is not is "unreachable". Changes are logged and written to `status_file`
(format in docs/library-sharing.md), which the cache warmer and `plexcdn.library.status` read.

One file. It needs a FUSE binding (mfusepy, pinned with its hash by the install script, in a virtualenv of
its own) and `fusermount3`; everything else is the standard library. Run by systemd as

  python libraryfs.py --config /etc/plex-cdn/library/fs.json [--verbose]

Configuration (JSON object):
  mount_point        the folder Plex's libraries point into        "/mnt/plex-cdn-library"
  seeders            folder name -> {"source": "/ipns/<name>", "peer_id": "12D3Koo..."}
  op_timeout_s       bound on every call on kubo's mount            15
  workers_per_seeder calls on one seeder's files at once            8
  status_file        where the state is written                     "/var/lib/plex-cdn/library/fs-status.json"
  api                kubo's RPC API: unix:/path or http://host:port  "http://127.0.0.1:5001"
  health_interval_s  pause between asks of kubo's peer list         30
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import errno
import http.client
import json
import logging
import os
import posixpath
import re
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

DEFAULT_CONFIG = "/etc/plex-cdn/library/fs.json"
STATUS_VERSION = 1
SEEDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# The mount point itself: a read-only folder that lists the seeders.
ROOT_MODE = stat.S_IFDIR | 0o555
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

log = logging.getLogger("plexcdn.library.fs")
Result = TypeVar("Result")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or has a wrong value; the message says which."""


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class SeederSource:
    name: str
    source: str
    peer_id: str = ""


@dataclass(frozen=True)
class FsConfig:
    mount_point: str = "/mnt/plex-cdn-library"
    seeders: tuple[SeederSource, ...] = ()
    op_timeout_s: float = 15.0
    workers_per_seeder: int = 8
    status_file: str = "/var/lib/plex-cdn/library/fs-status.json"
    api: str = "http://127.0.0.1:5001"
    health_interval_s: float = 30.0


_TYPES: dict[str, type | tuple[type, ...]] = {
    "mount_point": str,
    "seeders": dict,
    "op_timeout_s": (int, float),
    "workers_per_seeder": int,
    "status_file": str,
    "api": str,
    "health_interval_s": (int, float),
}


def _parse_seeders(raw: Mapping[Any, Any], where: str) -> tuple[SeederSource, ...]:
    seeders: list[SeederSource] = []
    for name, entry in sorted(raw.items()):
        if not isinstance(name, str) or not SEEDER_NAME.fullmatch(name):
            raise ConfigError(f"{where}: seeder name {name!r} must be a plain folder name (letters, digits, _ . -)")
        if not isinstance(entry, dict) or set(entry) - {"source", "peer_id"}:
            raise ConfigError(f"{where}: seeders.{name} must be an object with source and, optionally, peer_id")
        source, peer_id = entry.get("source"), entry.get("peer_id", "")
        if not isinstance(source, str) or not source.startswith("/") or posixpath.normpath(source) != source:
            raise ConfigError(f"{where}: seeders.{name}.source must be an absolute, normalised path, not {source!r}")
        if not isinstance(peer_id, str):
            raise ConfigError(f"{where}: seeders.{name}.peer_id must be a string")
        seeders.append(SeederSource(name, source, peer_id))
    return tuple(seeders)


def parse_config(values: object, where: str = "config") -> FsConfig:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: the top level must be a JSON object")
    unknown = sorted(set(values) - set(_TYPES))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_TYPES))}")
    for key, value in values.items():
        if (isinstance(value, bool) and _TYPES[key] is not bool) or not isinstance(value, _TYPES[key]):
            raise ConfigError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    settings = dict(values)
    seeders = _parse_seeders(settings.pop("seeders", {}), where)
    for key in ("op_timeout_s", "health_interval_s"):
        if key in settings:
            settings[key] = float(settings[key])
    config = FsConfig(seeders=seeders, **settings)
    if not os.path.isabs(config.mount_point) or posixpath.normpath(config.mount_point) in ("/", config.status_file):
        raise ConfigError(f"{where}: mount_point must be an absolute folder other than /")
    if config.op_timeout_s <= 0 or config.health_interval_s <= 0 or config.workers_per_seeder < 1:
        raise ConfigError(f"{where}: op_timeout_s and health_interval_s must be > 0, workers_per_seeder >= 1")
    if not _api_is_valid(config.api):
        raise ConfigError(f"{where}: api must be unix:/absolute/socket/path or an http:// URL, not {config.api!r}")
    return config


def load_config(path: str) -> FsConfig:
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not JSON: {error}") from None
    return parse_config(values, path)


# --------------------------------------------------------------------------------------------------
# Health: what each seeder's calls and kubo's peer list say


@dataclass
class SeederHealth:
    name: str
    state: str = "ok"  # ok | stalled | unreachable
    since: float = 0.0
    reason: str = ""
    # Calls past their bound whose worker still waits on kubo.
    stuck: int = 0
    timeouts: int = 0
    last_answer: float = 0.0
    last_timeout: float = 0.0
    peer_connected: bool | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "since": self.since,
            "reason": self.reason,
            "stuck_calls": self.stuck,
            "timeouts": self.timeouts,
            "last_answer": self.last_answer,
            "last_timeout": self.last_timeout,
            "peer_connected": self.peer_connected,
        }


class Health:
    """Every seeder's state, changed under one lock; each change is logged and written to the status file."""

    def __init__(self, config: FsConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.Lock()
        now = clock()
        self.seeders = {seeder.name: SeederHealth(seeder.name, since=now) for seeder in config.seeders}
        self.kubo_error = ""
        self.started = now

    def _settle(self, health: SeederHealth) -> None:
        """Recompute the state from the facts; log and note the time when it changes."""
        if health.stuck > 0:
            state = "stalled"
            reason = (
                f"{health.stuck} call(s) on its files have not answered within {self.config.op_timeout_s:g} s; "
                "reads of what this viewer does not hold fail"
            )
        elif health.peer_connected is False:
            state = "unreachable"
            reason = (
                "its peer is not connected to this viewer's kubo; reads of what this viewer does not hold will fail"
            )
        else:
            state, reason = "ok", ""
        if state == health.state:
            health.reason = reason
            return
        previous = health.state
        health.state, health.reason, health.since = state, reason, self.clock()
        if state == "ok":
            log.info("seeder %s answers again (was %s)", health.name, previous)
        else:
            log.warning("seeder %s is %s: %s", health.name, state, reason)

    def timed_out(self, seeder: str, what: str) -> None:
        with self.lock:
            health = self.seeders[seeder]
            health.stuck += 1
            health.timeouts += 1
            health.last_timeout = self.clock()
            log.warning(
                "seeder %s: %s did not answer within %g s; failed it with EIO", seeder, what, self.config.op_timeout_s
            )
            self._settle(health)
        self.write()

    def late_answer(self, seeder: str) -> None:
        with self.lock:
            health = self.seeders[seeder]
            health.stuck = max(0, health.stuck - 1)
            health.last_answer = self.clock()
            before = health.state
            self._settle(health)
            changed = before != health.state
        if changed:
            self.write()

    def answered(self, seeder: str) -> None:
        with self.lock:
            self.seeders[seeder].last_answer = self.clock()

    def peers(self, connected: set[str] | None, error: str = "") -> None:
        """The outcome of asking kubo for its peers: the connected peer IDs, or None and why kubo did not say."""
        with self.lock:
            if error and error != self.kubo_error:
                log.warning("kubo's API did not list its peers: %s", error)
            elif not error and self.kubo_error:
                log.info("kubo's API answers again")
            self.kubo_error = error
            for seeder in self.config.seeders:
                health = self.seeders[seeder.name]
                health.peer_connected = None if connected is None or not seeder.peer_id else seeder.peer_id in connected
                self._settle(health)
        self.write()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "version": STATUS_VERSION,
                "written_at": self.clock(),
                "started_at": self.started,
                "mount_point": self.config.mount_point,
                "op_timeout_s": self.config.op_timeout_s,
                "kubo_error": self.kubo_error,
                "seeders": {name: health.as_json() for name, health in sorted(self.seeders.items())},
            }

    def write(self) -> None:
        write_json_atomically(self.config.status_file, self.snapshot())


def write_json_atomically(path: str, value: Mapping[str, Any]) -> None:
    """Replace the file in one rename, so a reader never sees half of it; a failure is logged, not raised."""
    directory = os.path.dirname(path) or "."
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(value, out, indent=1, sort_keys=True)
            out.write("\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as error:
        log.error("cannot write %s: %s", path, error.strerror)
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _api_is_valid(api: str) -> bool:
    if api.startswith("unix:"):
        return api[len("unix:") :].startswith("/")
    parts = urlsplit(api)
    return parts.scheme == "http" and bool(parts.hostname)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP to kubo's API on its Unix socket (this file is copied alone: the warmer's twin is not importable)."""

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


def _kubo_connection(api: str, timeout: float) -> http.client.HTTPConnection:
    if api.startswith("unix:"):
        return _UnixHTTPConnection(api[len("unix:") :], timeout)
    parts = urlsplit(api)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 5001, timeout=timeout)


def connected_peers(api: str, timeout: float) -> set[str]:
    """The peer IDs kubo is connected to (`swarm/peers`); raises OSError or ValueError when kubo does not say."""
    connection = _kubo_connection(api, timeout)
    try:
        connection.request("POST", "/api/v0/swarm/peers")
        response = connection.getresponse()
        body = response.read()
    except http.client.HTTPException as error:
        raise OSError(str(error) or type(error).__name__) from None
    finally:
        connection.close()
    if response.status != http.HTTPStatus.OK:
        raise ValueError(f"swarm/peers answered HTTP {response.status}")
    value = json.loads(body)
    peers = value.get("Peers") if isinstance(value, dict) else None
    # kubo sends "Peers": null when no peer is connected.
    return {str(peer.get("Peer")) for peer in peers or [] if isinstance(peer, dict)}


# --------------------------------------------------------------------------------------------------
# The file system


class BoundedLibrary:
    """The operations, as plain methods that return values or raise OSError; `main` hands them to FUSE.

    Times are in nanoseconds. The kernel reads ahead through its page cache and, when a read-ahead fails,
    asks for the page once more: a read of a silent seeder can take up to twice op_timeout_s to fail.
    """

    def __init__(self, config: FsConfig, health: Health | None = None) -> None:
        self.config = config
        self.health = health or Health(config)
        self.sources = {seeder.name: seeder.source for seeder in config.seeders}
        self.pools = {
            seeder.name: concurrent.futures.ThreadPoolExecutor(
                max_workers=config.workers_per_seeder, thread_name_prefix=f"seeder-{seeder.name}"
            )
            for seeder in config.seeders
        }
        self.stop_event = threading.Event()
        self._root_attrs = {"st_mode": ROOT_MODE, "st_nlink": 2 + len(config.seeders), "st_uid": 0, "st_gid": 0}

    # ---- where a path goes

    def route(self, path: str) -> tuple[str, str] | None:
        """(seeder, path on kubo's mount) for a path under a seeder's folder; None for the mount point itself."""
        parts = path.strip("/").split("/", 1)
        if parts == [""]:
            return None
        seeder = parts[0]
        if seeder not in self.sources:
            raise FileNotFoundError(errno.ENOENT, "no such seeder", path)
        rest = parts[1] if len(parts) > 1 else ""
        if rest and (".." in rest.split("/") or "" in rest.split("/")):
            raise FileNotFoundError(errno.ENOENT, "not a plain path", path)
        return seeder, posixpath.join(self.sources[seeder], rest) if rest else self.sources[seeder]

    def bounded(
        self,
        seeder: str,
        what: str,
        call: Callable[[], Result],
        late: Callable[[Result], None] | None = None,
    ) -> Result:
        """The call's result, or EIO once op_timeout_s has passed; a late result goes to `late` (to close it)."""
        health = self.health.seeders[seeder]
        if health.stuck >= self.config.workers_per_seeder:
            # Every worker waits on kubo for this seeder: nothing could run the call.
            raise OSError(errno.EIO, f"seeder {seeder} is not answering")
        future = self.pools[seeder].submit(call)
        try:
            result = future.result(timeout=self.config.op_timeout_s)
        except concurrent.futures.TimeoutError:
            if future.cancel():
                # It never started (the pool was busy): nothing waits on kubo for it.
                log.warning(
                    "seeder %s: %s waited %g s for a worker; failed it with EIO", seeder, what, self.config.op_timeout_s
                )
                raise OSError(errno.EIO, f"seeder {seeder} is busy") from None
            self.health.timed_out(seeder, what)

            def finished(done: concurrent.futures.Future[Result]) -> None:
                self.health.late_answer(seeder)
                if late is not None and done.exception() is None:
                    with contextlib.suppress(OSError):
                        late(done.result())

            future.add_done_callback(finished)
            raise OSError(errno.EIO, f"seeder {seeder} did not answer within {self.config.op_timeout_s:g} s") from None
        except OSError:
            self.health.answered(seeder)
            raise
        self.health.answered(seeder)
        return result

    # ---- operations

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        routed = self.route(path)
        if routed is None:
            started_ns = int(self.health.started * 1e9)
            return dict(self._root_attrs, st_atime=started_ns, st_mtime=started_ns, st_ctime=started_ns)
        seeder, source = routed
        info = self.bounded(seeder, f"stat of {path}", lambda: os.lstat(source))
        attrs = {key: getattr(info, key) for key in ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid")}
        attrs.update(st_atime=info.st_atime_ns, st_mtime=info.st_mtime_ns, st_ctime=info.st_ctime_ns)
        # Read-only, whatever kubo's mount says.
        attrs["st_mode"] &= ~0o222
        return attrs

    def readdir(self, path: str, fh: int | None = None) -> list[str]:
        routed = self.route(path)
        if routed is None:
            return [".", "..", *sorted(self.sources)]
        seeder, source = routed
        return [".", "..", *self.bounded(seeder, f"listing of {path}", lambda: sorted(os.listdir(source)))]

    def readlink(self, path: str) -> str:
        routed = self.route(path)
        if routed is None:
            raise OSError(errno.EINVAL, "not a link", path)
        seeder, source = routed
        return self.bounded(seeder, f"readlink of {path}", lambda: os.readlink(source))

    def open(self, path: str, flags: int) -> int:
        if flags & WRITE_FLAGS:
            raise OSError(errno.EROFS, "the library is read-only", path)
        routed = self.route(path)
        if routed is None:
            raise OSError(errno.EISDIR, "a folder", path)
        seeder, source = routed
        return self.bounded(seeder, f"open of {path}", lambda: os.open(source, os.O_RDONLY | os.O_CLOEXEC), os.close)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        routed = self.route(path)
        if routed is None:
            raise OSError(errno.EISDIR, "a folder", path)
        seeder, _ = routed
        return self.bounded(seeder, f"read of {path} at {offset}", lambda: os.pread(fh, size, offset))

    def release(self, path: str, fh: int) -> int:
        routed = self.route(path)
        if routed is not None:
            # A close can wait on kubo too; past the bound it finishes in its worker.
            with contextlib.suppress(OSError):
                self.bounded(routed[0], f"close of {path}", lambda: os.close(fh))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0, "f_namemax": 255}

    # ---- the health check

    def check_peers(self) -> None:
        if not any(seeder.peer_id for seeder in self.config.seeders):
            return
        try:
            connected = connected_peers(self.config.api, min(self.config.op_timeout_s, 10.0))
        except (OSError, ValueError) as error:
            self.health.peers(None, str(error) or type(error).__name__)
            return
        self.health.peers(connected)

    def run_health_checks(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.check_peers()
            except Exception:
                log.exception("health check failed; retrying in %s s", self.config.health_interval_s)
            self.stop_event.wait(self.config.health_interval_s)

    def close(self) -> None:
        self.stop_event.set()
        for pool in self.pools.values():
            # Workers stuck on kubo cannot be joined; they end with the process.
            pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------------------------------
# The service


def fuse_operations(library: BoundedLibrary) -> Any:
    """The library as an mfusepy Operations object (imported here: the rest of this file needs no binding)."""
    import mfusepy  # type: ignore[import-untyped]  # only the service needs the FUSE binding

    class Operations(mfusepy.Operations):  # type: ignore[misc]
        # getattr gives times in nanoseconds, as os.stat_result has them.
        use_ns = True

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            return library.getattr(path, fh)

        def readdir(self, path: str, fh: int) -> list[str]:
            return library.readdir(path, fh)

        def readlink(self, path: str) -> str:
            return library.readlink(path)

        def open(self, path: str, flags: int) -> int:
            return library.open(path, flags)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return library.read(path, size, offset, fh)

        def release(self, path: str, fh: int) -> int:
            return library.release(path, fh)

        def statfs(self, path: str) -> dict[str, int]:
            return library.statfs(path)

    return Operations()


def serve(config: FsConfig, *, foreground: bool = True) -> None:
    import mfusepy

    library = BoundedLibrary(config)
    library.health.write()
    checker = threading.Thread(target=library.run_health_checks, name="health", daemon=True)
    checker.start()
    log.info(
        "serving %s at %s; every call on kubo's mount answers within %g s",
        ", ".join(f"{s.name} ({s.source})" for s in config.seeders) or "no seeder",
        config.mount_point,
        config.op_timeout_s,
    )
    try:
        # allow_other: Plex runs as another account; ro: nothing may write into a friend's library.
        mfusepy.FUSE(
            fuse_operations(library),
            config.mount_point,
            foreground=foreground,
            allow_other=True,
            ro=True,
            fsname="plexcdn-library",
            subtype="plexcdn-library",
            default_permissions=True,
        )
    finally:
        library.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the friends' libraries to Plex with bounded reads.")
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

    # libfuse's own SIGTERM handler ends the loop and unmounts; a Python handler would never run meanwhile.
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
