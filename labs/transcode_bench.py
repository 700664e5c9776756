"""What the dispatcher costs: time to the first HLS segment, through a slave and locally.

    python -m labs.transcode_bench [--runs N]

Needs root: it builds the transcode lab (network namespaces, an sshd per slave). Every path
transcodes the same clip into 1-second HLS segments; the time runs from starting "Plex Transcoder"
until the playlist lists the first finished segment, which is when a player could start.
The slave is on a veth link on this machine, so the figures hold no network latency.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from labs.netns import lab_unavailable_reason
from labs.transcode_lab import (
    TranscodeLab,
    first_segment_listed,
    lab_environment,
    lab_tools_missing,
    nfs_unavailable_reason,
)

PLAYLIST = "stream index.m3u8"
MAX_RUNS = 20
RUN_TIMEOUT = 60.0


@dataclass
class Timing:
    first_segment: float
    done: float


@dataclass
class Case:
    name: str
    prepare: Callable[[TranscodeLab], None]
    before_each: Callable[[TranscodeLab], None]
    direct: bool = False


def time_one(lab: TranscodeLab, case: Case, index: int) -> Timing:
    out = lab.output_dir(f"bench-{index}")
    case.before_each(lab)
    playlist = out / PLAYLIST
    started = time.monotonic()
    process = lab.spawn(
        lab.hls_args(out), cwd=out, env=lab_environment(), program=lab.real_transcoder if case.direct else None
    )
    first = 0.0
    deadline = started + RUN_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if not first and first_segment_listed(playlist):
                first = time.monotonic() - started
            if process.poll() is not None:
                break
            time.sleep(0.002)
        else:
            raise RuntimeError(f"{case.name}: no exit within {RUN_TIMEOUT:g}s")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{case.name}: exited {process.returncode}")
    if not first:
        first = time.monotonic() - started if first_segment_listed(playlist) else float("nan")
    return Timing(first, time.monotonic() - started)


def nothing(_lab: TranscodeLab) -> None:
    return None


def cases() -> list[Case]:
    return [
        Case("transcoder run directly", lambda lab: lab.write_origin_config([]), nothing, direct=True),
        Case("dispatcher, no slave: local exec", lambda lab: lab.write_origin_config([]), nothing),
        Case(
            "dispatcher to slave, warm, probe cached",
            lambda lab: lab.write_origin_config(["slave1"], probe_cache_seconds=600),
            nothing,
        ),
        Case("dispatcher to slave, ssh master warm", lambda lab: lab.write_origin_config(["slave1"]), nothing),
        Case(
            "dispatcher to slave, new ssh connection",
            lambda lab: lab.write_origin_config(["slave1"]),
            TranscodeLab.close_masters,
        ),
    ]


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help=f"runs per path, 1 to {MAX_RUNS} (default 5)")
    options = parser.parse_args(argv)
    runs = max(1, min(MAX_RUNS, options.runs))
    reason = lab_unavailable_reason() or lab_tools_missing()
    if reason is not None:
        sys.stderr.write(f"transcode bench: {reason}\n")
        return 2
    results: list[tuple[str, list[Timing]]] = []
    with TranscodeLab(slave_count=1) as lab:
        for case in cases():
            case.prepare(lab)
            time_one(lab, case, 0)  # warm-up: page cache, and the ssh master for the warm case
            timings = [time_one(lab, case, index) for index in range(1, runs + 1)]
            results.append((case.name, timings))

    baseline = statistics.median(t.first_segment for t in results[0][1])
    nfs = nfs_unavailable_reason()
    storage = "NFS is possible here, but" if nfs is None else f"no NFS ({nfs}):"
    print(f"Time to first HLS segment, {runs} runs per path, {os.cpu_count()} CPUs, milliseconds")
    print(f"Shared storage: {storage} one filesystem seen by every namespace at the same paths")
    header = ["path", "first segment median", "min", "max", "overhead (median)", "whole transcode median"]
    rows = []
    for name, timings in results:
        first = [t.first_segment for t in timings]
        median = statistics.median(first)
        rows.append(
            [
                name,
                milliseconds(median),
                milliseconds(min(first)),
                milliseconds(max(first)),
                f"{'+' if median >= baseline else ''}{milliseconds(median - baseline)}",
                milliseconds(statistics.median(t.done for t in timings)),
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(header)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in rows:
        print("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
