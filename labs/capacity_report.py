"""The pure parts of the capacity benchmark (`python -m labs bench capacity`): the ladder of viewer counts,
reading /proc, the viewers' delivered rate and rebuffers, the CPU and memory figures of a level, where the
POP saturates and which side limited it, viewers per provider size, and the report table.

Nothing here touches the network or a process; `labs.capacity_bench` runs the levels and
`labs.capacity_client` is the viewers inside the client namespace.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from plexcdn import regions
from plexcdn.capacity import CPU_CEILING, NETWORK_OUT_MBIT, POP_BASE_MEMORY_MB, size_capacity

STREAM_MBIT: Final = 30.0  # a 4K stream, the bitrate the stack's viewing estimate assumes
# A whole core this busy leaves a process on it waiting for its turn: the level's rate shortfall is put
# down to it. Lower than CPU_CEILING because the share is sampled over a few seconds on a shared machine.
CORE_FULL: Final = 0.9
RATE_FLOOR: Final = 0.95  # a viewer below this share of its bitrate drains its buffer and rebuffers
DEFAULT_CAP: Final = 80
GB: Final = 1e9
MIB: Final = 1024 * 1024


def viewer_levels(cap: int = DEFAULT_CAP) -> list[int]:
    """1, 2, 5, 10, then doubling (20, 40, 80, ...), never above `cap`; `cap` itself ends the ladder."""
    if cap < 1:
        raise ValueError("the cap must be at least one viewer")
    ladder = [1, 2, 5, 10]
    while ladder[-1] * 2 <= cap:
        ladder.append(ladder[-1] * 2)
    levels = [n for n in ladder if n <= cap]
    if levels[-1] != cap:
        levels.append(cap)
    return levels


def stream_bytes_per_s(bitrate_mbit: float = STREAM_MBIT) -> float:
    return bitrate_mbit * 1e6 / 8


# --- /proc ---------------------------------------------------------------------------------------------


def process_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks) from a /proc/<pid>/stat line. The command name may hold spaces and
    parentheses, so fields are counted from its last closing parenthesis: utime and stime are fields 14
    and 15, the 12th and 13th after it."""
    rest = stat_text[stat_text.rindex(")") + 1 :].split()
    return int(rest[11]) + int(rest[12])


def parent_pid(stat_text: str) -> int:
    """The parent's pid (field 4) from a /proc/<pid>/stat line."""
    return int(stat_text[stat_text.rindex(")") + 1 :].split()[1])


@dataclass(frozen=True)
class CoreTimes:
    busy: int  # ticks the core ran anything, steal (the hypervisor's other guests) included
    total: int


def core_times(proc_stat: str) -> dict[int, CoreTimes]:
    """Per-core busy and total ticks from /proc/stat. guest and guest_nice are already inside user and
    nice, so only the first eight columns count; idle and iowait are the idle ones."""
    cores: dict[int, CoreTimes] = {}
    for line in proc_stat.splitlines():
        name, *columns = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        values = [int(value) for value in columns[:8]]
        total = sum(values)
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        cores[int(name[3:])] = CoreTimes(total - idle, total)
    return cores


def busy_share(before: CoreTimes, after: CoreTimes) -> float | None:
    """The share of a core's time it was busy between two readings."""
    total = after.total - before.total
    return (after.busy - before.busy) / total if total > 0 else None


def smaps_rollup_kb(text: str) -> dict[str, int]:
    """The kB figures of /proc/<pid>/smaps_rollup (Rss, Pss, ...)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, separator, rest = line.partition(":")
        fields = rest.split()
        if separator and len(fields) == 2 and fields[1] == "kB":
            values[key.strip()] = int(fields[0])
    return values


_SKMEM: Final = re.compile(r"skmem:\(([^)]*)\)")
_SKMEM_FIELD: Final = re.compile(r"([a-z]+)(\d+)")


def socket_memory_bytes(ss_text: str) -> int:
    """What the sockets in `ss -tm` output hold in the kernel: received data not yet read (r) and data
    queued to send (w), summed. A relay's streams sit there as much as in nginx's own buffers, and a POP's
    RAM must hold both."""
    total = 0
    for match in _SKMEM.finditer(ss_text):
        fields = dict(_SKMEM_FIELD.findall(match.group(1)))
        total += int(fields.get("r", 0)) + int(fields.get("w", 0))
    return total


# --- one viewer ------------------------------------------------------------------------------------------

Samples = Sequence[Sequence[float]]  # (monotonic time, cumulative bytes received), in time order


def bytes_at(samples: Samples, when: float) -> float:
    """Bytes received by `when`: the last sample at or before it (bytes arrive in reads, not smoothly)."""
    received = 0.0
    for time_s, total in samples:
        if time_s > when:
            break
        received = float(total)
    return received


def delivered_mbit(samples: Samples, start: float, end: float) -> float:
    """The viewer's rate between `start` and `end`, Mbit/s."""
    if end <= start:
        raise ValueError("the window must end after it starts")
    return (bytes_at(samples, end) - bytes_at(samples, start)) * 8 / (end - start) / 1e6


@dataclass(frozen=True)
class Rebuffers:
    events: int
    stalled_s: float


def rebuffers(
    samples: Samples,
    started: float,
    end: float,
    *,
    bitrate_mbit: float = STREAM_MBIT,
    startup_s: float = 2.0,
    step_s: float = 0.05,
) -> Rebuffers:
    """A simple playback-buffer model: playback begins `startup_s` after the viewer's first request and
    then needs `bitrate` x elapsed bytes; the viewer is stalled whenever what it has received falls behind
    that. An event is each fall behind; the stalled time is the time spent behind. The playhead does not
    pause in a stall, so a viewer must catch up with real time to recover: it counts a slow stretch as
    one long stall rather than many short ones."""
    rate = stream_bytes_per_s(bitrate_mbit)
    events, stalled, behind = 0, 0.0, False
    steps = max(math.floor((end - started - startup_s) / step_s), 0)
    for index in range(1, steps + 1):
        now = started + startup_s + index * step_s
        needed = rate * (now - started - startup_s)
        if bytes_at(samples, now) < needed:
            if not behind:
                events += 1
            behind = True
            stalled += step_s
        else:
            behind = False
    return Rebuffers(events, round(stalled, 3))


# --- one level ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuWindow:
    """What the parent measured over a level's window."""

    seconds: float
    nginx_cpu_s: float  # master and workers, user + system
    pop_core_busy: float | None  # the whole core nginx is pinned to, other tenants included
    client_core_busy: float | None  # the core the viewers and the origin share
    client_side_cpu_s: float  # the viewers' and the origin's processes


def limiting_side(
    nginx_share: float, pop_core_busy: float | None, client_core_busy: float | None, slowest_ratio: float | None
) -> str | None:
    """Which side stopped the level: None while the POP had headroom and every viewer got its bitrate.

    nginx using its core is the POP's limit. A viewer short of its bitrate while nginx had headroom is the
    client side's limit when their core was full (the viewers and the origin share one core), or the POP
    core's when other work filled it, the busier of the two when both were; otherwise the cause was not
    seen."""
    if nginx_share >= CPU_CEILING:
        return "pop"
    if slowest_ratio is not None and slowest_ratio >= RATE_FLOOR:
        return None
    full = [
        (busy, side)
        for side, busy in (("clients", client_core_busy), ("pop core (other work)", pop_core_busy))
        if busy is not None and busy >= CORE_FULL
    ]
    return max(full)[1] if full else "undetermined"


def memory_per_stream_mb(baseline_kb: int | None, peak_kb: int | None, viewers: int) -> float | None:
    if baseline_kb is None or peak_kb is None or viewers < 1:
        return None
    return max(peak_kb - baseline_kb, 0) / 1024 / viewers


def summarize_level(
    viewers: int,
    traces: Sequence[Mapping[str, Any]],
    cpu: CpuWindow,
    window: tuple[float, float],
    memory: Mapping[str, int | None],
    *,
    bitrate_mbit: float = STREAM_MBIT,
    startup_s: float = 2.0,
) -> dict[str, Any]:
    """One level's figures from the viewers' traces and the parent's CPU and memory readings.

    `traces`: per viewer {"started": t, "samples": [[t, bytes], ...], "errors": [...]}; `window`: the
    steady part of the level (after the viewers started and filled their buffers); `memory`: the
    workers' summed Rss/Pss, and the POP's socket buffers, in kB before the level and at its peak."""
    start, end = window
    rates = [delivered_mbit(trace["samples"], start, end) for trace in traces]
    missing = max(viewers - len(traces), 0)
    stalls = [
        rebuffers(trace["samples"], float(trace["started"]), end, bitrate_mbit=bitrate_mbit, startup_s=startup_s)
        for trace in traces
    ]
    relayed = sum(bytes_at(trace["samples"], end) - bytes_at(trace["samples"], start) for trace in traces)
    errors = [error for trace in traces for error in trace.get("errors", [])]
    # A viewer that never reported got nothing.
    all_rates = rates + [0.0] * missing
    slowest = min(all_rates) if all_rates else None
    slowest_ratio = None if slowest is None else slowest / bitrate_mbit
    nginx_share = cpu.nginx_cpu_s / cpu.seconds if cpu.seconds > 0 else 0.0
    limit = limiting_side(nginx_share, cpu.pop_core_busy, cpu.client_core_busy, slowest_ratio)
    return {
        "viewers": viewers,
        "window_s": round(cpu.seconds, 3),
        "rate_mbit": {
            "min": slowest,
            "median": statistics.median(all_rates) if all_rates else None,
            "max": max(all_rates) if all_rates else None,
        },
        "slowest_share_of_bitrate": slowest_ratio,
        "relayed_gb": relayed / GB,
        "relayed_mbit": relayed * 8 / cpu.seconds / 1e6 if cpu.seconds > 0 else None,
        "rebuffer_events": sum(stall.events for stall in stalls),
        "viewers_rebuffered": sum(1 for stall in stalls if stall.events) + missing,
        "max_stalled_s": max((stall.stalled_s for stall in stalls), default=0.0),
        "nginx_cpu_s": cpu.nginx_cpu_s,
        "nginx_core_share": nginx_share,
        "cpu_s_per_gb": cpu.nginx_cpu_s / (relayed / GB) if relayed > 0 else None,
        "pop_core_busy": cpu.pop_core_busy,
        "client_core_busy": cpu.client_core_busy,
        "client_side_core_share": cpu.client_side_cpu_s / cpu.seconds if cpu.seconds > 0 else None,
        "memory_kb": dict(memory),
        "rss_per_stream_mb": memory_per_stream_mb(memory.get("rss_before"), memory.get("rss_peak"), viewers),
        "pss_per_stream_mb": memory_per_stream_mb(memory.get("pss_before"), memory.get("pss_peak"), viewers),
        "sockets_per_stream_mb": memory_per_stream_mb(
            memory.get("sockets_before"), memory.get("sockets_peak"), viewers
        ),
        "errors": errors[:20],
        "error_count": len(errors),
        "missing_viewers": missing,
        "saturated": limit is not None,
        "limited_by": limit,
    }


# --- the whole run -----------------------------------------------------------------------------------------


def viewers_per_core(levels: Sequence[Mapping[str, Any]], bitrate_mbit: float = STREAM_MBIT) -> dict[str, Any]:
    """The per-core figure: the largest level that did not saturate, and the count the measured CPU cost
    says one core carries at `CPU_CEILING`. The cost is the largest clean level's: a byte costs more with
    more connections open (more wake-ups, smaller writes), so the level nearest saturation predicts it
    best. The estimate is what counts when the client side saturated first and the POP never reached its
    own limit."""
    clean = [level for level in levels if not level["saturated"]]
    saturated = next((level for level in levels if level["saturated"]), None)
    costed = [level for level in clean if level["cpu_s_per_gb"]]
    cost = max(costed, key=lambda level: level["viewers"])["cpu_s_per_gb"] if costed else None
    per_viewer_share = None if cost is None else cost * stream_bytes_per_s(bitrate_mbit) / GB
    estimate = None if not per_viewer_share else math.floor(CPU_CEILING / per_viewer_share)
    memory = [
        (level["pss_per_stream_mb"] or 0.0) + (level.get("sockets_per_stream_mb") or 0.0)
        for level in clean
        if level["viewers"] >= 5 and level["pss_per_stream_mb"] is not None
    ]
    return {
        "largest_clean_level": max((level["viewers"] for level in clean), default=None),
        "saturated_at": saturated["viewers"] if saturated else None,
        "limited_by": saturated["limited_by"] if saturated else None,
        "cpu_s_per_gb": cost,
        "estimated_viewers_per_core": estimate,
        # nginx's own memory and its sockets' buffers: the largest over the clean levels of five or more.
        "memory_per_stream_mb": max(memory) if memory else None,
    }


def viewers_per_size(
    per_core: int | None, memory_per_stream_mb: float | None, bitrate_mbit: float = STREAM_MBIT
) -> list[dict[str, Any]]:
    """Viewers per provider size: each limit on its own (CPU: vCPUs x the per-core figure; network: the
    plan's outbound cap over the bitrate; memory: RAM less the base over memory per stream) and the
    smallest of them. A POP sends each viewer's stream out once; what it pulls from upstream is inbound."""
    rows = []
    for provider, table in regions.PROVIDERS.items():
        for size in table.sizes.values():
            capacity = size_capacity(
                provider, size.slug, bitrate_mbit=bitrate_mbit, per_core=per_core, stream_memory=memory_per_stream_mb
            )
            rows.append(
                {
                    "provider": provider,
                    "size": size.slug,
                    "vcpus": size.vcpus,
                    "memory_gb": size.memory_gb,
                    "network_out_mbit": NETWORK_OUT_MBIT.get((provider, size.slug)),
                    "limits": capacity.limits,
                    "viewers": capacity.streams,
                    "bound_by": capacity.bound_by,
                }
            )
    return rows


def other_work_note(levels: Sequence[Mapping[str, Any]], threshold: float = 0.1) -> str | None:
    """Whether other processes took a share of nginx's core during the levels (its busy share beyond
    nginx's own): such figures understate what a core of its own would carry."""
    shares = [
        level["pop_core_busy"] - level["nginx_core_share"] for level in levels if level["pop_core_busy"] is not None
    ]
    if not shares or max(shares) < threshold:
        return None
    return (
        f"other work ran on nginx's core during the levels (up to {max(shares) * 100:.0f} % of it beyond nginx's "
        "own share), so these figures understate a core of its own."
    )


# --- the report ----------------------------------------------------------------------------------------------


def _number(value: float | None, digits: int, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f} %"


def levels_table(levels: Sequence[Mapping[str, Any]]) -> str:
    """One row per concurrency level."""
    lines = [
        "| Viewers | Rate per viewer, Mbit/s (min / median) | Rebuffers (viewers) | nginx CPU (its core busy) "
        "| Client core busy | CPU s per GB | Memory per stream, MB (PSS / RSS / sockets) | Saturated |",
        "|---:|---|---|---|---|---:|---|---|",
    ]
    for level in levels:
        rate = level["rate_mbit"]
        saturated = f"yes: {level['limited_by']}" if level["saturated"] else "no"
        lines.append(
            f"| {level['viewers']} | {_number(rate['min'], 1)} / {_number(rate['median'], 1)} "
            f"| {level['rebuffer_events']} ({level['viewers_rebuffered']}) "
            f"| {_percent(level['nginx_core_share'])} ({_percent(level['pop_core_busy'])}) "
            f"| {_percent(level['client_core_busy'])} | {_number(level['cpu_s_per_gb'], 2)} "
            f"| {_number(level['pss_per_stream_mb'], 2)} / {_number(level['rss_per_stream_mb'], 2)} "
            f"/ {_number(level.get('sockets_per_stream_mb'), 2)} | {saturated} |"
        )
    return "\n".join(lines) + "\n"


def sizes_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Viewers per provider size, each limit and the one that binds."""
    lines = [
        "| Provider | Size | vCPUs | RAM, GB | Network out, Mbit/s | CPU limit | Network limit | Memory limit "
        "| Viewers |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        limits = row["limits"]
        cells = [("n/a" if limits[name] is None else str(limits[name])) for name in ("cpu", "network", "memory")]
        viewers = "n/a" if row["viewers"] is None else f"{row['viewers']} ({row['bound_by']})"
        cap = "n/a" if row["network_out_mbit"] is None else f"{row['network_out_mbit']:.0f}"
        lines.append(
            f"| {row['provider']} | `{row['size']}` | {row['vcpus']} | {row['memory_gb']:g} | {cap} | "
            + " | ".join(cells)
            + f" | {viewers} |"
        )
    return "\n".join(lines) + "\n"


def markdown_report(results: Mapping[str, Any]) -> str:
    machine = results["machine"]
    plan = results["plan"]
    memory = results["memory_limit"]
    per_core = results["per_core"]
    saturated = (
        f"saturated at {per_core['saturated_at']} viewers, limited by **{per_core['limited_by']}**"
        if per_core["saturated_at"] is not None
        else f"did not saturate up to the cap of {plan['max_viewers']} viewers"
    )
    lines = [
        f"# plex-cdn capacity benchmark ({results['mode']} run)",
        "",
        f"{machine['date']} on `{machine['hostname']}` ({machine['cpu']}, {machine['cores']} cores, "
        f"Linux {machine['kernel']}); the run took {results['duration_s']:.0f} s.",
        "",
        f"One POP (`{results['pop']}`, the example stack's hub) runs its rendered nginx config with "
        f"`worker_processes 1`, pinned to core {results['pop_core']}; TLS in from the viewers, TLS out to the "
        f"Plex stand-in. The viewers and the origin share core {results['client_core']}, so the client side "
        f"can saturate before the POP does: the table says which side limited a level. Memory limit 1 GiB: "
        + (f"enforced ({memory['how']})." if memory["enforced"] else f"not enforced ({memory['why_not']}).")
        + f" Each viewer pulls a {plan['bitrate_mbit']:g} Mbit/s stream as paced {plan['range_mb']} MB ranged "
        f"GETs, reading at most {plan['max_buffer_s']:g} s ahead; {plan['level_s']:g} s per level, figures over "
        f"the last {plan['level_s'] - plan['warmup_s']:g} s.",
        "",
        f"Result: {saturated}; the largest clean level had "
        f"{per_core['largest_clean_level'] if per_core['largest_clean_level'] is not None else 'no'} viewers. "
        f"nginx's CPU cost at the largest clean level: {_number(per_core['cpu_s_per_gb'], 2)} CPU s per GB "
        "relayed, so one core carries "
        f"about {per_core['estimated_viewers_per_core'] or 'n/a'} viewers at {CPU_CEILING * 100:.0f} % busy.",
        "",
    ]
    notes = [note for note in (results.get("busy_machine"), other_work_note(results["levels"])) if note]
    lines += [f"Note: {note}" for note in notes] + ([""] if notes else [])
    lines += [
        levels_table(results["levels"]),
        "Rate: each viewer's bytes over the level's steady window. Rebuffers: falls behind "
        f"{plan['bitrate_mbit']:g} Mbit/s x elapsed less a {plan['startup_s']:g} s startup buffer, summed over the "
        "viewers (viewers that fell behind at least once). nginx CPU: master and worker user + system time over "
        'the window, as a share of one core; "its core busy" counts everything that ran on that core. CPU s per '
        "GB: nginx's CPU time per GB of media delivered to the viewers (TLS overhead not counted in the GB). "
        "Memory per stream: the rise of the worker's PSS (RSS) from nginx's start before the level to the level's "
        "peak, and of the data the POP's sockets hold (`ss -tm`: unread and queued), over the viewers.",
        "",
        "## Viewers per POP size",
        "",
        sizes_table(results["sizes"]),
        "CPU limit: vCPUs x the estimated viewers per core; network limit: the plan's outbound cap (an "
        f"assumption, see docs/benchmark.md) over {plan['bitrate_mbit']:g} Mbit/s; memory limit: RAM less "
        f"{POP_BASE_MEMORY_MB:.0f} MB over the memory per stream (PSS and sockets, the largest of the clean "
        "levels of five viewers or more).",
        "",
    ]
    return "\n".join(lines)
