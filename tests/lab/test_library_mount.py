"""The viewer's library folder over a real FUSE mount that stops answering (root, /dev/fuse, fusermount3).

`labs/stalling_fs.py` plays kubo's `/ipns/<name>` mount of a seeder and can stop answering; the product's
`plexcdn/library/libraryfs.py` is mounted over it as the viewer's library folder, as on a viewer. A read
that the seeder cannot serve must fail with EIO (not hang), the status file and the warmer's health check
must name the seeder, and reads must work again once the seeder answers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from labs.stalling_fs import EPISODES, FILM, FILM_SIZE, content
from plexcdn.library import libraryfs, status
from plexcdn.library import warmer as warmer_module

OP_TIMEOUT = 2.0
# Far beyond the bound: only a hang reaches it.
HANG_GUARD = 60.0


def fuse_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (/dev/fuse is root's here)"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (Debian package fuse3)"
    try:
        import mfusepy  # type: ignore[import-untyped]  # noqa: F401
    except (ImportError, OSError) as error:
        return f"mfusepy cannot load libfuse: {error}"
    return None


pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(fuse_unavailable_reason() is not None, reason=f"FUSE lab: {fuse_unavailable_reason()}"),
]


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def is_mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines())


@dataclass
class Viewer:
    root: Path
    seeder_mount: Path  # what kubo's /ipns/<name> would be
    library: Path  # the folder Plex's libraries point into
    control: Path
    status_file: Path
    fs_log: Path
    processes: list[subprocess.Popen[bytes]]

    def stall(self, mode: str) -> None:
        self.control.write_text(mode, encoding="ascii")

    def answer(self) -> None:
        self.control.write_text("", encoding="ascii")

    def status(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.status_file.read_text(encoding="utf-8"))
        return value


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
def viewer(tmp_path: Path) -> Iterator[Viewer]:
    seeder_mount = tmp_path / "ipns-alice"
    library = tmp_path / "plex-cdn-library"
    seeder_mount.mkdir()
    library.mkdir()
    control = tmp_path / "control"
    control.write_text("")
    config = {
        "mount_point": str(library),
        "seeders": {"alice": {"source": str(seeder_mount)}},
        "op_timeout_s": OP_TIMEOUT,
        "workers_per_seeder": 2,
        "status_file": str(tmp_path / "fs-status.json"),
        "health_interval_s": 3600,
    }
    libraryfs.parse_config(config)
    (tmp_path / "fs.json").write_text(json.dumps(config))
    made = Viewer(tmp_path, seeder_mount, library, control, tmp_path / "fs-status.json", tmp_path / "fs.log", [])
    try:
        stand_in = [sys.executable, "-m", "labs.stalling_fs", str(seeder_mount), "--control", str(control)]
        made.processes.append(start(stand_in, tmp_path / "stand-in.log"))
        assert wait_until(lambda: is_mounted(seeder_mount)), (tmp_path / "stand-in.log").read_text()
        service = [sys.executable, "-m", "plexcdn.library.libraryfs", "--config", str(tmp_path / "fs.json")]
        made.processes.append(start(service, made.fs_log))
        assert wait_until(lambda: is_mounted(library)), made.fs_log.read_text()
        yield made
    finally:
        control.write_text("")
        for mountpoint in (library, seeder_mount):
            if is_mounted(mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False, capture_output=True)
        for process in made.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def in_thread(call: Callable[[], bytes]) -> tuple[bytes | None, OSError | None]:
    """Run a read on another thread and wait for it no longer than HANG_GUARD: a hang fails the test, not CI."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["data"] = call()
        except OSError as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_GUARD)
    assert not thread.is_alive(), f"the read did not return within {HANG_GUARD:g} s: it hangs"
    return outcome.get("data"), outcome.get("error")


def read_range(path: Path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def test_a_seeder_that_stops_answering_fails_reads_then_serves_them_again(viewer: Viewer) -> None:
    film = viewer.library / "alice" / FILM.lstrip("/")
    assert sorted(os.listdir(viewer.library)) == ["alice"]
    assert os.stat(film).st_size == FILM_SIZE
    assert read_range(film, 0, 65536) == content(0, 65536)
    assert viewer.status()["seeders"]["alice"]["state"] == "ok"

    # The seeder goes away: what the viewer's kubo holds (the listings) still answers, reads do not.
    viewer.stall("stall-reads")
    assert sorted(os.listdir(viewer.library / "alice" / EPISODES.lstrip("/"))) == [
        "Show - S01E01.mkv",
        "Show - S01E02.mkv",
    ]
    data, error = in_thread(lambda: read_range(film, 2 * 1024 * 1024, 65536))
    assert data is None and error is not None and error.errno == errno.EIO
    alice = viewer.status()["seeders"]["alice"]
    assert alice["state"] == "stalled"
    assert alice["stuck_calls"] >= 1 and alice["timeouts"] >= 1
    assert f"within {OP_TIMEOUT:g} s" in alice["reason"]
    assert "seeder alice is stalled" in viewer.fs_log.read_text()

    # The health check the cache warmer runs reads the same state, and `status` describes it.
    config = warmer_module.parse_config(
        {"mounts": {str(viewer.library / "alice"): "/ipns/k51alice"}, "fs_status_file": str(viewer.status_file)}
    )
    health = warmer_module.Warmer(config).seeder_health()
    assert health[str(viewer.library / "alice")].state == "stalled"
    report = status.describe(status.read(viewer.root, fs_file="fs-status.json"))
    assert any(line.startswith("alice: stalled") for line in report), report

    # Every worker of the seeder waiting on it: further reads fail at once rather than queue.
    for offset in (3 * 1024 * 1024, 3 * 1024 * 1024 + 65536):
        _, error = in_thread(lambda offset=offset: read_range(film, offset, 4096))  # type: ignore[misc]
        assert error is not None and error.errno == errno.EIO

    # The seeder answers again: the held reads finish, the state clears, and reads work.
    viewer.answer()
    assert wait_until(lambda: viewer.status()["seeders"]["alice"]["state"] == "ok"), viewer.status()
    assert viewer.status()["seeders"]["alice"]["stuck_calls"] == 0
    assert read_range(film, 2 * 1024 * 1024, 65536) == content(2 * 1024 * 1024, 65536)
    assert "seeder alice answers again" in viewer.fs_log.read_text()


def test_a_kubo_that_hangs_on_everything_leaves_the_library_folder_usable(viewer: Viewer) -> None:
    viewer.stall("stall-all")
    _, error = in_thread(lambda: os.listdir(viewer.library / "alice" / "Shows").__str__().encode())
    assert error is not None and error.errno == errno.EIO
    # The mount point itself never waits on kubo: Plex sees which seeders exist.
    assert os.listdir(viewer.library) == ["alice"]
    assert viewer.status()["seeders"]["alice"]["state"] == "stalled"
    viewer.answer()
    assert wait_until(lambda: viewer.status()["seeders"]["alice"]["state"] == "ok")
    assert sorted(os.listdir(viewer.library / "alice" / "Shows")) == ["Show"]


def test_the_library_is_read_only(viewer: Viewer) -> None:
    film = viewer.library / "alice" / FILM.lstrip("/")
    with pytest.raises(OSError) as raised:
        os.open(film, os.O_WRONLY)
    assert raised.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(OSError):
        (viewer.library / "alice" / "new.txt").write_text("x")
