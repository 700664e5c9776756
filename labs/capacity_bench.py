"""The capacity benchmark: how many 30 Mbit/s viewers does one POP core carry? (`python -m labs bench capacity`)

One POP (the stack's first hub, Pulumi.dev.yaml's `us` by default) runs in the relay lab on its own
rendered config: TLS in from the viewers, TLS out to the Plex stand-in, as in production. Its nginx runs
one worker, as `worker_processes auto` gives on a 1 vCPU POP, and master and worker are pinned to one core
and held to 1 GiB in a memory cgroup where one can be made. The viewers (`labs.capacity_client`) and the
origin are pinned to the other core. Levels of 1, 2, 5, 10, 20, 40, ... viewers each pull a paced stream
for a fixed time, until the POP saturates (its core at 95 % or a viewer below 95 % of the bitrate) or the
cap is reached. Results go to bench/results/capacity.{json,md,png}.

It is a benchmark, not a test: it asserts nothing about the numbers. On a 2-core machine the client side
shares a core with the origin and may saturate first; each level says which side limited it.
All traffic stays between the lab's namespaces (198.18.0.0/15); every step is bounded in time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from labs import capacity_report as report
from labs import relay_lab as relay
from labs import wan_bench_report as wanbench
from labs.netns import Lab, LabError
from labs.wan_bench import machine_stamp
from plexcdn import PROJECT_ROOT, capacity, topology
from plexcdn.config import StackConfig, load_stack_file
from plexcdn.topology import ORIGIN

# The pid keeps a benchmark out of the namespaces of tests, a `lab up` or another benchmark.
PREFIX: Final = f"pcc{os.getpid() % 1000}-"
RESULTS_DIR: Final = PROJECT_ROOT / "bench" / "results"
DEFAULT_STACK: Final = PROJECT_ROOT / "Pulumi.dev.yaml"
POP_CORE: Final = 0
CLIENT_CORE: Final = 1
MEMORY_LIMIT_BYTES: Final = 1 << 30
POP_VCPUS: Final = 1
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
MEMORY_SAMPLE_S: Final = 1.0
SETTLE_S: Final = 0.5  # the viewers close their connections before nginx is asked to quit gracefully


@dataclass(frozen=True)
class CapacityPlan:
    mode: str
    level_s: float
    ramp_s: float  # the viewers start spread over this long
    max_viewers: int = report.DEFAULT_CAP
    bitrate_mbit: float = report.STREAM_MBIT
    startup_s: float = 2.0
    max_buffer_s: float = 4.0
    range_mb: int = 8
    media_mb: int = 256

    @property
    def warmup_s(self) -> float:
        """Figures count from here: the last viewer has started, begun playing and filled its buffer."""
        return self.ramp_s + self.startup_s + 1.0

    def __post_init__(self) -> None:
        if self.ramp_s < 0 or self.level_s < self.warmup_s + 2.0:
            raise ValueError(f"a level needs at least {self.warmup_s + 2.0:g} s: the warm-up and a 2 s window")


FULL: Final = CapacityPlan("full", level_s=20.0, ramp_s=2.0)
SHORT: Final = CapacityPlan("short", level_s=8.0, ramp_s=1.0)


def plan_for(short: bool, max_viewers: int | None = None, level_s: float | None = None) -> CapacityPlan:
    """The full or short plan, with a lower cap or other level lengths for a quick look."""
    plan = SHORT if short else FULL
    if max_viewers is not None:
        plan = dataclasses.replace(plan, max_viewers=max_viewers)
    if level_s is not None:
        # The ramp keeps its share of the level.
        plan = dataclasses.replace(plan, level_s=level_s, ramp_s=plan.ramp_s * level_s / plan.level_s)
    return plan


def single_pop(config: StackConfig) -> tuple[StackConfig, str]:
    """The stack cut down to its first hub: the viewers reach it directly, it reaches Plex."""
    hub = topology.hubs(config)[0]
    return config.model_copy(update={"pops": [hub]}), hub.name


# --- processes, cores and memory ------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def nginx_pids(master: int) -> list[int]:
    """The master and its children (the workers)."""
    pids = [master]
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _read(f"/proc/{entry}/stat")) and report.parent_pid(stat) == master:
            pids.append(int(entry))
    return pids


def master_pid(built: relay.RelayLab, pop: str) -> int:
    text = _read(str(built.pop_dir(pop) / "run" / "nginx.pid"))
    if not text:
        raise LabError(f"POP {pop}'s nginx wrote no pid file")
    return int(text.strip())


def namespace_pids(lab: Lab, role: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", lab.ns(role)], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


def pin(pids: Sequence[int], core: int) -> None:
    """Every thread of each process onto one core."""
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task), {core})


def cpu_seconds(pids: Sequence[int]) -> float:
    return sum(report.process_ticks(stat) for pid in pids if (stat := _read(f"/proc/{pid}/stat"))) / CLOCK_TICKS


def socket_memory_kb(lab: Lab, pop: str) -> int:
    """What the POP namespace's TCP sockets hold, kB."""
    listed = lab.run(pop, ["ss", "-tmnH"], check=False, timeout=10).stdout
    return report.socket_memory_bytes(listed) // 1024


def worker_memory_kb(pids: Sequence[int]) -> tuple[int, int]:
    """Summed (Rss, Pss) of the processes, kB."""
    rss = pss = 0
    for pid in pids:
        values = report.smaps_rollup_kb(_read(f"/proc/{pid}/smaps_rollup") or "")
        rss += values.get("Rss", 0)
        pss += values.get("Pss", 0)
    return rss, pss


@dataclass
class MemoryCgroup:
    """A memory cgroup made beneath this process's own, so any limit above it still applies."""

    enforced: bool
    how: str = ""
    why_not: str = ""
    path: Path | None = None
    usage_file: str = ""
    added: list[int] = field(default_factory=list)

    def add(self, pids: Sequence[int]) -> None:
        if self.path is None:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                (self.path / "cgroup.procs").write_text(f"{pid}\n")
                self.added.append(pid)

    def usage_bytes(self) -> int | None:
        text = _read(str(self.path / self.usage_file)) if self.path is not None else None
        return int(text) if text and text.strip().isdigit() else None

    def describe(self) -> dict[str, Any]:
        return {"enforced": self.enforced, "how": self.how, "why_not": self.why_not, "limit_bytes": MEMORY_LIMIT_BYTES}


def _own_cgroup(controller: str | None) -> str | None:
    """This process's cgroup path in the v1 hierarchy of `controller`, or in the v2 one (None)."""
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        number, controllers, path = line.split(":", 2)
        if controller is None and number == "0" and controllers == "":
            return path
        if controller is not None and controller in controllers.split(","):
            return path
    return None


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, super options) of every mount."""
    mounts = []
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        before, _, after = line.partition(" - ")
        fstype, _, options = after.split(" ", 2) if after.count(" ") >= 2 else (after, "", "")
        mounts.append((before.split()[4], fstype, options))
    return mounts


def _try_cgroup(base: Path, name: str, limit_file: str, usage_file: str, how: str) -> MemoryCgroup:
    path = base / name
    try:
        path.mkdir()
    except OSError as error:
        return MemoryCgroup(False, why_not=f"cannot make a {how} memory cgroup: {error.strerror}")
    try:
        (path / limit_file).write_text(f"{MEMORY_LIMIT_BYTES}\n")
        if int((path / limit_file).read_text().split()[0]) > MEMORY_LIMIT_BYTES:
            raise OSError(0, f"{limit_file} did not take the limit")
    except (OSError, ValueError) as error:
        with contextlib.suppress(OSError):
            path.rmdir()
        return MemoryCgroup(False, why_not=f"cannot set {how} {limit_file}: {error}")
    # The cgroup's place in the hierarchy says nothing about the POP and stays out of the results.
    return MemoryCgroup(True, how=f"{how} {limit_file}", path=path, usage_file=usage_file)


def make_memory_cgroup(name: str) -> MemoryCgroup:
    """A 1 GiB memory cgroup: cgroup v2's memory.max where this process's v2 cgroup delegates the memory
    controller, else cgroup v1's memory.limit_in_bytes, else none (and why)."""
    reasons = []
    for mount, fstype, _options in _mounts():
        if fstype == "cgroup2":
            own = _own_cgroup(None)
            base = Path(mount + (own or "/"))
            if own is None or "memory" not in (_read(str(base / "cgroup.subtree_control")) or "").split():
                reasons.append(f"the cgroup v2 hierarchy at {mount} gives this process no memory controller")
                continue
            made = _try_cgroup(base, name, "memory.max", "memory.current", "cgroup v2")
            if made.enforced:
                return made
            reasons.append(made.why_not)
    for mount, fstype, options in _mounts():
        if fstype == "cgroup" and "memory" in options.split(","):
            own = _own_cgroup("memory")
            made = _try_cgroup(
                Path(mount + (own or "/")), name, "memory.limit_in_bytes", "memory.usage_in_bytes", "cgroup v1"
            )
            if made.enforced:
                return made
            reasons.append(made.why_not)
    return MemoryCgroup(False, why_not="; ".join(reasons) or "no memory cgroup hierarchy is mounted")


@contextlib.contextmanager
def memory_cgroup(name: str) -> Iterator[MemoryCgroup]:
    """The cgroup for the run, removed afterwards (its processes are gone by then, or moved back out)."""
    group = make_memory_cgroup(name)
    try:
        yield group
    finally:
        if group.path is not None:
            parent = group.path.parent / "cgroup.procs"
            for pid in group.added:
                with contextlib.suppress(OSError):
                    parent.write_text(f"{pid}\n")
            deadline = time.monotonic() + 10
            while group.path.exists() and time.monotonic() < deadline:
                try:
                    group.path.rmdir()
                except OSError:
                    time.sleep(0.2)


# --- the lab ----------------------------------------------------------------------------------------------------


@dataclass
class Capacity:
    built: relay.RelayLab
    pop: str
    group: MemoryCgroup
    nginx: list[int] = field(default_factory=list)

    @property
    def lab(self) -> Lab:
        return self.built.lab

    def url(self) -> str:
        return self.built.config.shared_url + relay.MEDIA_PATH


def one_worker(built: relay.RelayLab, pop: str) -> None:
    """The POP's config as nginx runs it on a 1 vCPU POP."""
    conf = built.conf(pop)
    conf.write_text(wanbench.with_workers_of(conf.read_text(), POP_VCPUS))
    test = built.nginx(pop, "-t")
    if test.returncode != 0:
        raise LabError(f"nginx -t rejected POP {pop}'s one-worker config: {test.stderr}")


def fresh_nginx(built: relay.RelayLab, pop: str) -> None:
    """nginx restarted before each level: a worker keeps the heap an earlier level grew, so its memory
    would not rise again and a level's memory per stream would read low."""
    built.stop_nginx(pop)
    if (built.pop_dir(pop) / "run" / "nginx.pid").exists():
        raise LabError(f"POP {pop}'s nginx did not stop")
    built.start_nginx(pop)
    # What plexcdn-warm-chain does once nginx starts on a POP.
    built.warm_chain(pop)


def place_processes(capacity: Capacity) -> None:
    """nginx on the POP core and in the memory cgroup; the origin on the client core."""
    capacity.nginx = nginx_pids(master_pid(capacity.built, capacity.pop))
    pin(capacity.nginx, POP_CORE)
    capacity.group.add([pid for pid in capacity.nginx if pid not in capacity.group.added])
    pin(namespace_pids(capacity.lab, ORIGIN), CLIENT_CORE)


# --- one level --------------------------------------------------------------------------------------------------


def _core_snapshot() -> dict[int, report.CoreTimes]:
    return report.core_times(_read("/proc/stat") or "")


def run_level(capacity: Capacity, plan: CapacityPlan, viewers: int, media_size: int, root: Path) -> dict[str, Any]:
    fresh_nginx(capacity.built, capacity.pop)
    place_processes(capacity)
    workers = capacity.nginx[1:] or capacity.nginx
    rss_before, pss_before = worker_memory_kb(workers)
    sockets_before = socket_memory_kb(capacity.lab, capacity.pop)
    out = root / f"level-{viewers}.json"
    start_at = time.monotonic() + 1.0
    argv = [
        *("taskset", "-c", str(CLIENT_CORE), sys.executable, "-m", "labs.capacity_client", capacity.url()),
        *("--ca", str(capacity.built.ca.bundle_path), "--viewers", str(viewers)),
        *("--start-at", f"{start_at:.6f}", "--seconds", f"{plan.level_s:g}", "--ramp", f"{plan.ramp_s:g}"),
        *("--bitrate", f"{plan.bitrate_mbit:g}", "--startup", f"{plan.startup_s:g}"),
        *("--max-buffer", f"{plan.max_buffer_s:g}", "--range-bytes", str(plan.range_mb * 1024 * 1024)),
        *("--media-size", str(media_size), "--out", str(out)),
    ]
    client = capacity.lab.start(
        "client",
        argv,
        log=root / "client.log",
        cwd=str(PROJECT_ROOT),
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    window_start, window_end = start_at + plan.warmup_s, start_at + plan.level_s
    time.sleep(max(window_start - time.monotonic(), 0.0))
    client_side = namespace_pids(capacity.lab, "client") + namespace_pids(capacity.lab, ORIGIN)
    cores_before, nginx_before, client_before = _core_snapshot(), cpu_seconds(capacity.nginx), cpu_seconds(client_side)
    measured_from = time.monotonic()
    rss_peak, pss_peak, cgroup_peak = rss_before, pss_before, capacity.group.usage_bytes()
    sockets_peak = sockets_before
    while (left := window_end - time.monotonic()) > 0:
        time.sleep(min(MEMORY_SAMPLE_S, left))
        rss, pss = worker_memory_kb(workers)
        rss_peak, pss_peak = max(rss_peak, rss), max(pss_peak, pss)
        sockets_peak = max(sockets_peak, socket_memory_kb(capacity.lab, capacity.pop))
        usage = capacity.group.usage_bytes()
        if usage is not None:
            cgroup_peak = max(cgroup_peak or 0, usage)
    cores_after, nginx_after, client_after = _core_snapshot(), cpu_seconds(capacity.nginx), cpu_seconds(client_side)
    measured_s = time.monotonic() - measured_from
    try:
        client.wait(timeout=plan.level_s + 30)
    except subprocess.TimeoutExpired as error:
        raise LabError(f"the viewers did not finish the {viewers}-viewer level") from error
    if not out.exists():
        raise LabError(f"the viewers wrote no results for the {viewers}-viewer level (see {root / 'client.log'})")
    traces = json.loads(out.read_text())["viewers"]

    def busy(core: int) -> float | None:
        if core not in cores_before or core not in cores_after:
            return None
        return report.busy_share(cores_before[core], cores_after[core])

    cpu = report.CpuWindow(
        seconds=measured_s,
        nginx_cpu_s=nginx_after - nginx_before,
        pop_core_busy=busy(POP_CORE),
        client_core_busy=busy(CLIENT_CORE),
        client_side_cpu_s=client_after - client_before,
    )
    memory = {
        "rss_before": rss_before,
        "rss_peak": rss_peak,
        "pss_before": pss_before,
        "pss_peak": pss_peak,
        "sockets_before": sockets_before,
        "sockets_peak": sockets_peak,
    }
    level = report.summarize_level(
        viewers,
        traces,
        cpu,
        (window_start, window_end),
        memory,
        bitrate_mbit=plan.bitrate_mbit,
        startup_s=plan.startup_s,
    )
    level["cgroup_usage_peak_bytes"] = cgroup_peak
    time.sleep(SETTLE_S)
    return level


# --- running --------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[capacity {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _lscpu_model() -> str:
    result = subprocess.run(["lscpu"], capture_output=True, text=True, check=False, env={"LC_ALL": "C"})
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            return value.strip()
    return ""


def _load_note() -> str | None:
    """Other work on the machine, which shares both cores with the benchmark."""
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load < 0.5 * cores:
        return None
    return f"the machine was busy with other work at the start (load average {load:.1f} on {cores} cores)."


def run(plan: CapacityPlan, stack_file: Path = DEFAULT_STACK) -> dict[str, Any]:
    if (os.cpu_count() or 1) < 2 or not {POP_CORE, CLIENT_CORE} <= os.sched_getaffinity(0):
        raise LabError(f"the capacity benchmark needs cores {POP_CORE} and {CLIENT_CORE}")
    started = time.monotonic()
    config, pop = single_pop(load_stack_file(stack_file))
    busy_note = _load_note()
    root = Path(tempfile.mkdtemp(prefix="plexcdn-capacity-"))
    # nginx workers run as www-data and must reach the POP directories.
    root.chmod(0o755)
    levels: list[dict[str, Any]] = []
    try:
        with memory_cgroup(f"plexcdn-capacity-{os.getpid()}") as group, Lab(PREFIX) as lab:
            log(f"{plan.mode} run: building the relay lab with POP {pop} alone")
            built = relay.build(config, root, lab, plan.media_mb)
            one_worker(built, pop)
            capacity = Capacity(built, pop, group)
            media_size = built.media_file.stat().st_size
            for viewers in report.viewer_levels(plan.max_viewers):
                log(f"{viewers} viewers for {plan.level_s:g} s")
                level = run_level(capacity, plan, viewers, media_size, root)
                levels.append(level)
                rate = level["rate_mbit"]
                log(
                    f"{viewers} viewers: min {rate['min']:.1f} Mbit/s, nginx {level['nginx_core_share'] * 100:.0f} % "
                    f"of its core, {level['rebuffer_events']} rebuffers"
                    + (f"; saturated ({level['limited_by']})" if level["saturated"] else "")
                )
                if level["saturated"]:
                    break
            memory = group.describe()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    per_core = report.viewers_per_core(levels, plan.bitrate_mbit)
    machine = {**machine_stamp(), "lscpu_model": _lscpu_model()}
    return {
        "machine": machine,
        "mode": plan.mode,
        "duration_s": round(time.monotonic() - started, 1),
        "pop": pop,
        "pop_core": POP_CORE,
        "client_core": CLIENT_CORE,
        "two_core_limit": (
            f"nginx alone on core {POP_CORE}; the viewers and the origin share core {CLIENT_CORE}, so the client "
            "side may saturate first: each level's limited_by says which side stopped it"
        ),
        "busy_machine": busy_note,
        "memory_limit": memory,
        "plan": {**dataclasses.asdict(plan), "warmup_s": plan.warmup_s},
        "levels": levels,
        "per_core": per_core,
        "sizes": report.viewers_per_size(per_core["estimated_viewers_per_core"], per_core["memory_per_stream_mb"]),
    }


# --- writing the results -----------------------------------------------------------------------------------------


def write_plot(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results["levels"]
    viewers = [level["viewers"] for level in levels]
    bitrate = results["plan"]["bitrate_mbit"]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5))

    def values(key: str, scale: float = 1.0) -> list[float]:
        return [float("nan") if level.get(key) is None else level[key] * scale for level in levels]

    rate = axes[0][0]
    rate.plot(viewers, [level["rate_mbit"]["min"] for level in levels], "o-", label="slowest viewer")
    rate.plot(viewers, [level["rate_mbit"]["median"] for level in levels], "s--", label="median viewer")
    rate.axhline(bitrate, color="black", linewidth=0.8, linestyle="--", label=f"{bitrate:g} Mbit/s")
    rate.axhline(bitrate * report.RATE_FLOOR, color="grey", linewidth=0.8, linestyle=":", label="95 %")
    rate.set_ylim(0, bitrate * 1.25)
    rate.set_title("Delivered rate per viewer")
    rate.set_ylabel("Mbit/s")
    cpu = axes[0][1]
    cpu.plot(viewers, values("nginx_core_share", 100), "o-", label="nginx (master + worker)")
    cpu.plot(viewers, values("pop_core_busy", 100), "s--", label="POP core, everything on it")
    cpu.plot(viewers, values("client_core_busy", 100), "^:", label="client + origin core")
    cpu.axhline(capacity.CPU_CEILING * 100, color="black", linewidth=0.8, linestyle="--")
    cpu.set_ylim(0, 105)
    cpu.set_title("CPU busy")
    cpu.set_ylabel("% of one core")
    cost = axes[1][0]
    cost.plot(viewers, values("cpu_s_per_gb"), "o-")
    cost.set_title("nginx CPU seconds per GB relayed")
    cost.set_ylabel("CPU s / GB")
    memory = axes[1][1]
    memory.plot(viewers, values("pss_per_stream_mb"), "o-", label="PSS")
    memory.plot(viewers, values("rss_per_stream_mb"), "s--", label="RSS")
    memory.plot(viewers, values("sockets_per_stream_mb"), "^:", label="socket buffers")
    memory.set_title("Memory per stream: nginx worker and its sockets")
    memory.set_ylabel("MB")
    for axis in (rate, cpu, cost, memory):
        axis.set_xscale("log")
        axis.set_xticks(viewers, [str(n) for n in viewers])
        axis.set_xlabel("concurrent viewers")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    for level in levels:
        if level["saturated"]:
            for axis in (rate, cpu, cost, memory):
                axis.axvline(level["viewers"], color="#c0392b", linewidth=0.8)
    machine = results["machine"]
    figure.suptitle(
        f"plex-cdn capacity ({results['mode']}): one POP core, {bitrate:g} Mbit/s viewers, "
        f"{machine['hostname']}, {machine['cores']} cores, {machine['date']}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_results(results: Mapping[str, Any], out_dir: Path = RESULTS_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "capacity.json", out_dir / "capacity.md", out_dir / "capacity.png"]
    paths[0].write_text(json.dumps(results, indent=1) + "\n")
    paths[1].write_text(report.markdown_report(results))
    write_plot(results, paths[2])
    return paths
