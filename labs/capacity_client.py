"""The capacity benchmark's viewers, run inside the client namespace: N viewers, each pulling one stream
at a fixed bitrate through the POP over TLS, as a player does, and recording when its bytes arrived.

    python -m labs.capacity_client URL --ca CA --viewers N --start-at T --seconds S --out FILE [...]

T is a time on the monotonic clock (shared with the parent, which measures the POP over the same
window). Each viewer asks for ranges of the media file one after another on one keep-alive connection and
reads only while it holds less than `--max-buffer` seconds of content beyond its playhead, so a healthy
viewer takes exactly the bitrate. Every viewer stops at T + S; the number of requests is bounded too.
One JSON object goes to FILE.
"""

from __future__ import annotations

import argparse
import json
import math
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from labs.bench_client import Connection, StepTimeoutError
from labs.capacity_report import stream_bytes_per_s

SAMPLE_STEP_S: Final = 0.05
PACE_SLEEP_S: Final = 0.05  # a reader with a full buffer looks again after this long (about 190 KB at 30 Mbit/s)
RECONNECTS: Final = 3
JOIN_GRACE_S: Final = 15.0
MAX_SECONDS: Final = 600.0


@dataclass(frozen=True)
class ViewerPlan:
    url: str
    ca_file: str
    bitrate_mbit: float
    startup_s: float
    max_buffer_s: float
    range_bytes: int
    media_size: int


class Viewer:
    """One paced player: its trace is (time, cumulative bytes) every `SAMPLE_STEP_S` at most."""

    def __init__(self, index: int, plan: ViewerPlan, offset: int) -> None:
        self.index = index
        self.plan = plan
        self.position = offset
        self.started = 0.0
        self.total = 0
        self.samples: list[tuple[float, int]] = []
        self.requests = 0
        self.reconnects = 0
        self.errors: list[str] = []

    def record(self, now: float, force: bool = False) -> None:
        """The latest read is always the last sample, so no byte is dated later than it arrived; earlier
        samples are thinned to one per `SAMPLE_STEP_S`."""
        sample = (round(now, 4), self.total)
        if not force and len(self.samples) >= 2 and now - self.samples[-2][0] < SAMPLE_STEP_S:
            self.samples[-1] = sample
        else:
            self.samples.append(sample)

    def allowed(self, now: float) -> float:
        """Bytes the player may still read: its playhead plus the buffer it keeps, less what it has."""
        rate = stream_bytes_per_s(self.plan.bitrate_mbit)
        playhead = rate * max(now - self.started - self.plan.startup_s, 0.0)
        return playhead + rate * self.plan.max_buffer_s - self.total

    def run(self, start_at: float, end_at: float) -> None:
        time.sleep(max(start_at - time.monotonic(), 0.0))
        self.started = time.monotonic()
        self.record(self.started, force=True)
        rate = stream_bytes_per_s(self.plan.bitrate_mbit)
        # Enough ranges for the whole window at the bitrate plus the buffer; a bounded loop either way.
        budget = math.ceil((end_at - self.started + self.plan.max_buffer_s) * rate / self.plan.range_bytes) + 2
        connection = Connection(self.plan.url, self.plan.ca_file)
        try:
            connection.open(end_at)
            while time.monotonic() < end_at and self.requests < budget:
                try:
                    self.read_range(connection, end_at)
                except (ConnectionError, ssl.SSLError, OSError) as error:
                    if isinstance(error, StepTimeoutError) or self.reconnects >= RECONNECTS:
                        raise
                    self.errors.append(f"{type(error).__name__}: {error}")
                    self.reconnects += 1
                    connection.close()
                    connection.open(end_at)
        except StepTimeoutError:
            pass
        except (ConnectionError, ssl.SSLError, OSError, ValueError) as error:
            self.errors.append(f"{type(error).__name__}: {error}")
        finally:
            connection.close()
            self.record(time.monotonic(), force=True)

    def read_range(self, connection: Connection, end_at: float) -> None:
        last = min(self.position + self.plan.range_bytes, self.plan.media_size) - 1
        response = connection.request(self.position, last, end_at)
        self.requests += 1
        if response.status != 206:
            raise ConnectionError(f"a range answered {response.status}")
        done = response.leftover
        self.total += done
        self.record(response.first_byte_at)
        while done < response.length:
            now = time.monotonic()
            if now >= end_at:
                break
            room = self.allowed(now)
            if room <= 0:
                time.sleep(min(-room / stream_bytes_per_s(self.plan.bitrate_mbit) + PACE_SLEEP_S, end_at - now))
                continue
            count = connection.receive(end_at)
            if count:
                done += count
                self.total += count
                self.record(time.monotonic())
        self.position = (self.position + done) % self.plan.media_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "started": self.started,
            "samples": self.samples,
            "bytes": self.total,
            "requests": self.requests,
            "reconnects": self.reconnects,
            "errors": self.errors,
        }


def run(plan: ViewerPlan, viewers: int, start_at: float, seconds: float, ramp_s: float) -> dict[str, Any]:
    """Start `viewers` viewers spread evenly over `ramp_s` (viewers do not press play in the same
    millisecond), each at its own place in the file, and stop them all at `start_at + seconds`."""
    end_at = start_at + min(seconds, MAX_SECONDS)
    spacing = plan.media_size // max(viewers, 1)
    players = [Viewer(index, plan, (index * spacing) // 65536 * 65536) for index in range(viewers)]
    threads = [
        threading.Thread(target=player.run, args=(start_at + ramp_s * index / max(viewers, 1), end_at), daemon=True)
        for index, player in enumerate(players)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(end_at - time.monotonic(), 0.0) + JOIN_GRACE_S)
    return {
        "start_at": start_at,
        "end_at": end_at,
        "viewers": [player.to_dict() for player in players],
        "unfinished": sum(1 for thread in threads if thread.is_alive()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.capacity_client", description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--viewers", type=int, required=True)
    parser.add_argument("--start-at", type=float, required=True, help="monotonic clock time the first viewer starts")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds over which the viewers start")
    parser.add_argument("--bitrate", type=float, default=30.0, help="Mbit/s")
    parser.add_argument("--startup", type=float, default=2.0, help="seconds of content before playback starts")
    parser.add_argument("--max-buffer", type=float, default=4.0, help="seconds of content read ahead at most")
    parser.add_argument("--range-bytes", type=int, default=8 * 1024 * 1024)
    parser.add_argument("--media-size", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    plan = ViewerPlan(args.url, args.ca, args.bitrate, args.startup, args.max_buffer, args.range_bytes, args.media_size)
    result = run(plan, min(args.viewers, 1000), args.start_at, args.seconds, args.ramp)
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
