"""Reads a library viewer's status files and says, one line per seeder, whether Plex can read its library.

Two services write them into one folder on the viewer (`/var/lib/plex-cdn/library/`; the format is in
docs/library-sharing.md): `plexcdn-library-fs` writes `fs-status.json` (each seeder's state: ok, stalled or
unreachable, why, since when) and the cache warmer writes `warmer-status.json` (what each seeder's name
resolves to, and the Plex rescans it asked for). Either may be missing: a viewer without Plex runs no
warmer. `read` never raises on a missing or broken file; it records the problem instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

DEFAULT_DIRECTORY: Final = "/var/lib/plex-cdn/library"
FS_STATUS: Final = "fs-status.json"
WARMER_STATUS: Final = "warmer-status.json"
STATUS_VERSION: Final = 1
# The file system rewrites its file at least every health interval (30 s); far older means it stopped.
STALE_AFTER_S: Final = 300.0


@dataclass
class LibraryStatus:
    directory: Path
    fs: dict[str, Any] | None = None
    warmer: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


def _load(path: Path, what: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"{path} does not exist ({what} has not written it)")
        return None
    except (OSError, ValueError) as error:
        problems.append(f"{path} is unreadable: {error}")
        return None
    if (
        not isinstance(value, dict)
        or value.get("version") != STATUS_VERSION
        or not isinstance(value.get("seeders"), dict)
    ):
        problems.append(f"{path} is not a version {STATUS_VERSION} status file")
        return None
    return value


def read(
    directory: str | Path = DEFAULT_DIRECTORY, *, fs_file: str = FS_STATUS, warmer_file: str = WARMER_STATUS
) -> LibraryStatus:
    folder = Path(directory)
    status = LibraryStatus(folder)
    status.fs = _load(folder / fs_file, "plexcdn-library-fs", status.problems)
    status.warmer = _load(folder / warmer_file, "plexcdn-library-warmer", status.problems)
    return status


def _when(stamp: object) -> str:
    if not isinstance(stamp, (int, float)) or isinstance(stamp, bool) or stamp <= 0:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def describe(status: LibraryStatus, clock: Callable[[], float] = time.time) -> list[str]:
    """One line per seeder (`name: state ...`), then what the warmer saw and any problem with the files."""
    lines: list[str] = []
    fs_seeders: dict[str, Any] = status.fs["seeders"] if status.fs else {}
    warmer_seeders: dict[str, Any] = status.warmer["seeders"] if status.warmer else {}
    for name in sorted(set(fs_seeders) | set(warmer_seeders)):
        entry = fs_seeders.get(name) or {}
        state = str(entry.get("state") or (warmer_seeders.get(name) or {}).get("state") or "unknown")
        line = f"{name}: {state}"
        if state != "ok" and entry:
            line += f" since {_when(entry.get('since'))}: {entry.get('reason', '')}"
        if entry.get("peer_connected") is False and state == "stalled":
            line += "; its peer is not connected"
        lines.append(line)
        seen = warmer_seeders.get(name) or {}
        if seen.get("root"):
            rescans = "; ".join(seen.get("rescanned") or []) or "no Plex library holds its folder"
            lines.append(f"  {seen['root']} since {_when(seen.get('root_seen_at'))}; Plex rescanned: {rescans}")
        for key in ("resolve_error", "rescan_error"):
            if seen.get(key):
                lines.append(f"  {key.replace('_', ' ')}: {seen[key]}")
    if status.fs:
        if status.fs.get("kubo_error"):
            lines.append(f"kubo's API: {status.fs['kubo_error']}")
        age = clock() - float(status.fs.get("written_at") or 0)
        if age > STALE_AFTER_S:
            lines.append(f"fs-status.json was written {age:.0f} s ago: is plexcdn-library-fs running?")
    if status.warmer and status.warmer.get("plex_answering") is False:
        lines.append("Plex is not answering the cache warmer")
    lines.extend(status.problems)
    return lines
