"""A read-only FUSE file system that plays kubo's `/ipns/<name>` mount of a seeder's library, and can stop answering.

    python -m labs.stalling_fs MOUNTPOINT --control FILE

It serves a fixed tree (`TREE`: a film whose bytes are `content_byte(offset)`, and a folder of episodes).
While the control file holds `stall-reads`, every read waits until the file changes, the way kubo's mount
waits for a block no connected peer has; listings and attributes still answer, as kubo answers them from
the blocks it holds. `stall-all` makes every call wait. Each wait is bounded (`MAX_STALL_SECONDS`) so that
nothing outlives a test that forgot to let go. It logs each call it answered or held to stderr.
"""

from __future__ import annotations

import argparse
import errno
import logging
import stat
import sys
import time
from pathlib import Path
from typing import Any

import mfusepy  # type: ignore[import-untyped]

FILM = "/Movies/A Film (2024)/A Film (2024).mkv"
FILM_SIZE = 4 * 1024 * 1024
EPISODES = "/Shows/Show/Season 01"
TREE: dict[str, int | None] = {
    "/": None,
    "/Movies": None,
    "/Movies/A Film (2024)": None,
    FILM: FILM_SIZE,
    "/Shows": None,
    "/Shows/Show": None,
    EPISODES: None,
    f"{EPISODES}/Show - S01E01.mkv": 65536,
    f"{EPISODES}/Show - S01E02.mkv": 65536,
}
MAX_STALL_SECONDS = 120.0
POLL_SECONDS = 0.02

log = logging.getLogger("labs.stalling_fs")


def content_byte(offset: int) -> int:
    """The byte at an offset of every file: a pattern a test can check any range against."""
    return (offset * 7 + offset // 251) % 256


def content(offset: int, size: int) -> bytes:
    return bytes(content_byte(position) for position in range(offset, offset + size))


class StallingTree(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, control: Path) -> None:
        self.control = control
        self.started = time.time_ns()

    def mode(self) -> str:
        try:
            return self.control.read_text(encoding="ascii").strip()
        except OSError:
            return ""

    def hold(self, what: str, modes: tuple[str, ...]) -> None:
        if self.mode() not in modes:
            return
        log.info("holding %s", what)
        deadline = time.monotonic() + MAX_STALL_SECONDS
        while self.mode() in modes and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        log.info("let go of %s", what)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if path != "/":
            self.hold(f"stat {path}", ("stall-all",))
        if path not in TREE:
            raise mfusepy.FuseOSError(errno.ENOENT)
        size = TREE[path]
        mode = stat.S_IFDIR | 0o555 if size is None else stat.S_IFREG | 0o444
        return {
            "st_mode": mode,
            "st_nlink": 2 if size is None else 1,
            "st_size": size or 0,
            "st_mtime": self.started,
            "st_ctime": self.started,
            "st_atime": self.started,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        self.hold(f"listing {path}", ("stall-all",))
        prefix = path.rstrip("/") + "/"
        names = {entry[len(prefix) :].split("/")[0] for entry in TREE if entry.startswith(prefix) and entry != path}
        return [".", "..", *sorted(names)]

    def open(self, path: str, flags: int) -> int:
        self.hold(f"open {path}", ("stall-all",))
        if TREE.get(path) is None:
            raise mfusepy.FuseOSError(errno.ENOENT if path not in TREE else errno.EISDIR)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self.hold(f"read {path} at {offset}", ("stall-reads", "stall-all"))
        length = TREE.get(path) or 0
        end = min(offset + size, length)
        log.info("read %s at %d: %d bytes", path, offset, max(0, end - offset))
        return content(offset, max(0, end - offset))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mountpoint")
    parser.add_argument("--control", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # direct_io: every read reaches this process, as every read of a block kubo lacks reaches the network.
    mfusepy.FUSE(
        StallingTree(args.control), args.mountpoint, foreground=True, ro=True, direct_io=True, allow_other=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
