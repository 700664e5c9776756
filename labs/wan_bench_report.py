"""The pure parts of the WAN benchmark (`python -m labs bench`): the player model that turns bytes
arriving into rebuffering, summaries of repetitions, the baseline ("seed") nginx config, the sysctl set a
POP's cloud-init applies, and the report table.

Nothing here touches the network; `labs.wan_bench` runs the scenarios and
`labs.bench_client` measures inside the client namespace with the player model below.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from labs import render_lab_template
from plexcdn import agent, render, topology
from plexcdn.config import StackConfig

SEED_TEMPLATE: Final = "seed-nginx.conf.j2"
POP_SYSCTL_PATH: Final = "/etc/sysctl.d/90-plex-cdn.conf"
SCENARIOS: Final = ("direct", "seed", "plex-cdn", "plex-cdn + origin agent")
AGENT_SCENARIO: Final = "plex-cdn + origin agent"


def rate_key(bitrate_mbit: float) -> str:
    """How a bitrate names its playback results: "60", "30", "12.5"."""
    return f"{float(bitrate_mbit):g}"


# --- the player ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlayerSettings:
    """A player that plays a constant-bitrate stream once `start_buffer_s` of it has arrived, stalls when
    it runs dry, resumes at `resume_buffer_s`, and reads no further ahead than `max_buffer_s`."""

    bitrate_mbit: float
    start_buffer_s: float = 2.0
    resume_buffer_s: float = 2.0
    max_buffer_s: float = 6.0

    def __post_init__(self) -> None:
        if not self.bitrate_mbit > 0:
            raise ValueError("bitrate_mbit must be above zero")
        if not 0 < self.start_buffer_s <= self.max_buffer_s or not 0 < self.resume_buffer_s <= self.max_buffer_s:
            raise ValueError("start and resume buffers must be above zero and within max_buffer_s")

    @property
    def bytes_per_second(self) -> float:
        return self.bitrate_mbit * 1e6 / 8


@dataclass
class PlaybackResult:
    startup_delay_s: float | None  # None: never started within the window
    rebuffer_events: int
    stall_seconds: float  # rebuffering only; the startup delay is reported on its own
    played_s: float
    window_s: float

    @property
    def played_fraction(self) -> float:
        return self.played_s / self.window_s if self.window_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "startup_delay_s": self.startup_delay_s,
            "rebuffer_events": self.rebuffer_events,
            "stall_seconds": self.stall_seconds,
            "played_s": self.played_s,
            "window_s": self.window_s,
            "played_fraction": self.played_fraction,
        }


@dataclass
class PlayerModel:
    """Playback driven by a clock the caller passes in: `receive(t, n)` when n bytes arrive at time t,
    `ahead_s(t)` for how much unplayed content is buffered, `finish(t)` at the end of the window.

    Times must not go backwards. Playback (re)starts only when data arrives, which is when a real
    player finds its buffer refilled.
    """

    settings: PlayerSettings
    started_at: float
    received_bytes: int = 0
    played_s: float = 0.0
    playing: bool = False
    startup_delay_s: float | None = None
    rebuffer_events: int = 0
    stall_seconds: float = 0.0
    stalled_since: float | None = None
    clock: float = field(init=False)

    def __post_init__(self) -> None:
        self.clock = self.started_at

    def content_s(self) -> float:
        return self.received_bytes / self.settings.bytes_per_second

    def advance(self, now: float) -> None:
        if now < self.clock:
            raise ValueError(f"time went backwards: {now} < {self.clock}")
        if self.playing:
            available = self.content_s() - self.played_s
            elapsed = now - self.clock
            if elapsed > available:
                # Ran dry part-way: the stall starts the moment the last buffered frame was shown.
                self.played_s += available
                self.playing = False
                self.stalled_since = self.clock + available
                self.rebuffer_events += 1
            else:
                self.played_s += elapsed
        self.clock = now

    def ahead_s(self, now: float) -> float:
        self.advance(now)
        return self.content_s() - self.played_s

    def receive(self, now: float, size: int) -> None:
        self.advance(now)
        self.received_bytes += size
        if self.playing:
            return
        needed = self.settings.start_buffer_s if self.startup_delay_s is None else self.settings.resume_buffer_s
        if self.content_s() - self.played_s >= needed:
            if self.startup_delay_s is None:
                self.startup_delay_s = now - self.started_at
            elif self.stalled_since is not None:
                self.stall_seconds += now - self.stalled_since
            self.stalled_since = None
            self.playing = True

    def finish(self, now: float) -> PlaybackResult:
        self.advance(now)
        stall = self.stall_seconds
        if self.stalled_since is not None:
            stall += now - self.stalled_since
        return PlaybackResult(self.startup_delay_s, self.rebuffer_events, stall, self.played_s, now - self.started_at)


def simulate_playback(
    arrivals: Iterable[tuple[float, int]], settings: PlayerSettings, window_s: float, start: float = 0.0
) -> PlaybackResult:
    """Play `arrivals` ((time, bytes) in time order) for `window_s` seconds from `start`.

    The arrivals are taken as given: a player that stops reading when its buffer is full would have
    received them later, so this is for arrival curves that already respect `max_buffer_s` (the live
    client throttles with the same model) or for an unthrottled upper bound.
    """
    model = PlayerModel(settings, started_at=start)
    end = start + window_s
    for when, size in arrivals:
        if when > end:
            break
        model.receive(max(when, start), size)
    return model.finish(end)


# --- summaries -------------------------------------------------------------------------------------


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, min and max of the values that exist, with the values themselves (None where missing)."""
    present = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not present:
        return {"median": None, "min": None, "max": None, "n": 0, "values": list(values)}
    return {
        "median": statistics.median(present),
        "min": min(present),
        "max": max(present),
        "n": len(present),
        "values": list(values),
    }


def ratio(value: float | None, limit: float) -> float | None:
    return None if value is None else value / limit


# --- what the POPs run -----------------------------------------------------------------------------


def seed_context(config: StackConfig, pop_name: str, prefix: str, addresses: Mapping[str, str]) -> dict[str, object]:
    """The values the seed template sees: the same names, ports, addresses and files as the real config."""
    place = topology.place(config, pop_name)
    upstream = render.upstream_of(config, pop_name, addresses)
    return {
        "pop": place.pop,
        "role": place.role,
        "downstream": place.downstream,
        "pop_name": config.pop_name(pop_name),
        "shared_name": config.shared_name,
        "nginx": config.nginx,
        "prefix": prefix.rstrip("/"),
        "peer_port": render.PEER_PORT,
        "upstream_server": upstream.server,
        "upstream_scheme": upstream.scheme,
        "upstream_tls_name": upstream.tls_name,
        "upstream_verify": upstream.verify,
        "upstream_is_pop": place.role == "edge",
        "peer_client_cas_file": render.PEER_CLIENT_CAS_FILE,
        "peer_client_cert_file": render.PEER_CLIENT_CERT_FILE,
        "peer_client_key_file": render.PEER_CLIENT_KEY_FILE,
    }


def seed_nginx_conf(config: StackConfig, pop_name: str, prefix: str, addresses: Mapping[str, str]) -> str:
    """The baseline's nginx.conf for a POP (one file; it reads the peer CA and client certificate that
    the real config's files leave in the same directory)."""
    return render_lab_template(SEED_TEMPLATE, **seed_context(config, pop_name, prefix, addresses))


WORKER_PROCESSES_AUTO: Final = "worker_processes auto;"


def with_workers_of(conf: str, vcpus: int) -> str:
    """The config as nginx runs it on a POP with `vcpus` CPUs, where `worker_processes auto` means that
    many workers: a lab machine with more cores would otherwise start more workers, each with its own
    upstream keepalive pool."""
    if conf.count(WORKER_PROCESSES_AUTO) != 1:
        raise ValueError(f"expected exactly one {WORKER_PROCESSES_AUTO!r} in the nginx config")
    return conf.replace(WORKER_PROCESSES_AUTO, f"worker_processes {vcpus};  # auto, on this POP's {vcpus} vCPU")


def parse_sysctl_conf(text: str) -> dict[str, str]:
    """`key = value` lines of a sysctl.d file, in order; comments and blank lines skipped."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, separator, value = line.partition("=")
        if not separator:
            raise ValueError(f"not a sysctl setting: {raw!r}")
        values[key.strip()] = " ".join(value.split())
    return values


def pop_sysctls(cloud_init_text: str) -> dict[str, str]:
    """The sysctl settings a POP's cloud-init writes to `POP_SYSCTL_PATH`."""
    document = yaml.safe_load(cloud_init_text)
    for entry in document.get("write_files", []):
        if entry.get("path") == POP_SYSCTL_PATH:
            return parse_sysctl_conf(str(entry["content"]))
    raise ValueError(f"the cloud-init writes no {POP_SYSCTL_PATH}")


def agent_sysctls() -> dict[str, str]:
    """The sysctl drop-in the origin agent installs on the Plex host."""
    return parse_sysctl_conf(agent.sysctl_conf())


# --- the report ------------------------------------------------------------------------------------


def _figure(stat: Mapping[str, Any] | None, digits: int, scale: float = 1.0, unit: str = "") -> str:
    if not stat or stat.get("median") is None:
        return "did not start" if stat and stat.get("not_started") else "n/a"
    median, low, high = (float(stat[k]) * scale for k in ("median", "min", "max"))
    text = f"{median:.{digits}f}{unit}"
    if stat.get("n", 1) > 1 and (round(low, digits) != round(high, digits)):
        text += f" ({low:.{digits}f} to {high:.{digits}f})"
    return text


# (label, summary key, digits, scale, unit)
TABLE_ROWS: Final[tuple[tuple[str, str, int, float, str], ...]] = (
    ("Throughput / bottleneck rate", "throughput_ratio", 2, 1.0, ""),
    ("Throughput, second half of the download, Mbit/s", "throughput_mbit", 1, 1.0, ""),
    ("Throughput, whole download from its first byte, Mbit/s", "throughput_whole_mbit", 1, 1.0, ""),
    ("Startup TTFB, fresh session, s", "startup_s", 2, 1.0, ""),
    ("Startup TTFB / path RTT", "startup_rtt", 1, 1.0, "x"),
    ("Startup TTFB, first after (re)start, s", "startup_cold_s", 2, 1.0, ""),
    ("Seek TTFB, s", "seek_ttfb_s", 2, 1.0, ""),
    ("Seek TTFB / path RTT", "seek_ttfb_rtt", 1, 1.0, "x"),
)


def _playback_rows(bitrates: Sequence[str]) -> list[tuple[str, str, int, float, str]]:
    rows: list[tuple[str, str, int, float, str]] = []
    for rate in bitrates:
        rows += [
            (f"{rate} Mbit/s playback: startup, s", f"playback_{rate}.startup_delay_s", 1, 1.0, ""),
            (f"{rate} Mbit/s playback: rebuffer events", f"playback_{rate}.rebuffer_events", 0, 1.0, ""),
            (f"{rate} Mbit/s playback: seconds stalled", f"playback_{rate}.stall_seconds", 1, 1.0, ""),
            (f"{rate} Mbit/s playback: share of window played", f"playback_{rate}.played_fraction", 0, 100.0, " %"),
        ]
    return rows


def markdown_table(results: Mapping[str, Any]) -> str:
    """One row per metric, one column per scenario: median (min to max over the repetitions)."""
    scenarios = [name for name in SCENARIOS if name in results["scenarios"]]
    bitrates = [rate_key(rate) for rate in results["profile"]["player"]["bitrates_mbit"]]
    lines = [
        "| Metric | " + " | ".join(f"`{name}`" for name in scenarios) + " |",
        "|---" * (len(scenarios) + 1) + "|",
    ]
    for label, key, digits, scale, unit in (*TABLE_ROWS, *_playback_rows(bitrates)):
        cells = [_figure(results["scenarios"][name]["summary"].get(key), digits, scale, unit) for name in scenarios]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
