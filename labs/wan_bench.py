"""The WAN benchmark: does the relay beat the direct path, and by how much? (`python -m labs bench`)

One relay lab (the example stack: viewer -> edge -> hub -> origin) is built with emulated WAN links
(`labs.wan_emulator`) instead of veth pairs, plus a direct link from the viewer to the Plex stand-in. The
same viewer then fetches the same media three ways, interleaved over several repetitions:

- `direct`: straight to the Plex server over a long-haul ISP path, TLS with the server's own certificate;
- `seed`: through the edge and hub running the naive nginx plex-cdn replaces (labs/templates/), with
  the kernel's stock TCP settings and cubic;
- `plex-cdn`: through the same POPs running the project's rendered configs, with the sysctl set the
  POP cloud-init applies (BBR among it) set inside the POP namespaces;
- `plex-cdn + origin agent`: as `plex-cdn`, with the hubs' hop ending at the origin agent's nginx on the
  Plex host (mutual TLS, Plex on loopback) and the agent's sysctl drop-in set in the origin namespace.

The viewer keeps cubic and stock settings throughout, as it would at home; so does the Plex server but
in the agent scenario. Every
figure is reported against its physical limit: throughput against the bottleneck rate, times to first
byte against the path's round-trip time. Results go to bench/results/latest.{json,md,png}.

All traffic stays between the lab's namespaces (198.18.0.0/15); every step is bounded in time.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from labs import relay_lab as relay
from labs import wan_bench_report as wanbench
from labs import wan_emulator as wan
from labs.netns import Lab, LabError
from plexcdn import PROJECT_ROOT, render, topology
from plexcdn.config import OriginAgent, StackConfig, load_stack_file
from plexcdn.topology import ORIGIN

# The pid keeps a benchmark out of the namespaces of tests or a `lab up` running at the same time.
PREFIX: Final = f"pcb{os.getpid() % 1000}-"
RESULTS_DIR: Final = PROJECT_ROOT / "bench" / "results"
DEFAULT_STACK: Final = PROJECT_ROOT / "Pulumi.dev.yaml"
DIRECT_SUBNET: Final = "198.18.15.252/30"
LINK_RATE_MBIT: Final = 40.0

VIEWER_HOP: Final = wan.profile("isp-local", rate_mbit=LINK_RATE_MBIT)
BACKBONE_HOP: Final = wan.profile("cloud-backbone", rate_mbit=LINK_RATE_MBIT)
ORIGIN_HOP: Final = dataclasses.replace(
    wan.profile("isp-local", rtt_ms=30.0, rate_mbit=LINK_RATE_MBIT), name="isp-regional"
)
DIRECT_PATH: Final = wan.profile("isp-longhaul", rate_mbit=LINK_RATE_MBIT)
AGENT_PORT: Final = 32443

# Linux's own values for the keys the POP tuning sets; Debian 12 changes none of them.
STOCK_SYSCTLS: Final = {
    "net.ipv4.tcp_congestion_control": "cubic",
    "net.core.rmem_max": "212992",
    "net.core.wmem_max": "212992",
    "net.ipv4.tcp_rmem": "4096 131072 6291456",
    "net.ipv4.tcp_wmem": "4096 16384 4194304",
    "net.ipv4.tcp_slow_start_after_idle": "1",
    "net.ipv4.tcp_mtu_probing": "0",
    "net.ipv4.tcp_notsent_lowat": "4294967295",
}
FQ_KEY: Final = "net.core.default_qdisc"


@dataclass(frozen=True)
class BenchPlan:
    mode: str
    repetitions: int
    throughput_s: float
    playback_s: float
    seeks: int
    startups: int
    ceiling_s: float
    ceiling_rtts_ms: tuple[float, ...] = (100.0,)
    ceiling_streams: tuple[int, ...] = (1,)
    # 4K remux, a bitrate that fits the 40 Mbit/s links, and Plex's "1080p 8 Mbps" quality.
    bitrates_mbit: tuple[float, ...] = (60.0, 30.0, 8.0)
    start_buffer_s: float = 2.0
    resume_buffer_s: float = 2.0
    max_buffer_s: float = 6.0
    pause_s: float = 0.5
    media_mb: int = 200
    leg_seconds: float = 0.0  # 0: no per-leg iperf3 measurement

    def client_plan(self, seed: int) -> dict[str, Any]:
        return {
            "seed": seed,
            "startups": self.startups,
            "seeks": self.seeks,
            "throughput_s": self.throughput_s,
            "playback_s": self.playback_s,
            "bitrates_mbit": list(self.bitrates_mbit),
            "pause_s": self.pause_s,
            "player": {
                "start_buffer_s": self.start_buffer_s,
                "resume_buffer_s": self.resume_buffer_s,
                "max_buffer_s": self.max_buffer_s,
            },
        }

    def client_budget_s(self) -> float:
        """How long one scenario's client run may take before it is stopped."""
        probes = (1 + self.startups + self.seeks + 1) * 20.0
        return 60.0 + probes + self.throughput_s + len(self.bitrates_mbit) * self.playback_s + 10 * self.pause_s


SHORT: Final = BenchPlan("short", repetitions=2, throughput_s=6.0, playback_s=8.0, seeks=4, startups=2, ceiling_s=3.0)
FULL: Final = BenchPlan(
    "full",
    repetitions=3,
    throughput_s=20.0,
    playback_s=120.0,
    seeks=10,
    startups=3,
    ceiling_s=5.0,
    ceiling_rtts_ms=(0.0, 100.0),
    ceiling_streams=(1, 4),
    leg_seconds=8.0,
)


@dataclass
class Bench:
    """The lab the scenarios run in, and what was found out about applying the POP tuning."""

    relay: relay.RelayLab
    hops: dict[tuple[str, str], wan.WanLink]
    direct: wan.WanLink
    agent_config: StackConfig  # the lab's stack with the origin agent turned on
    tuned: dict[str, str]  # the POP sysctls that can be set inside a namespace
    not_applied: dict[str, str] = field(default_factory=dict)  # key -> why not
    fq_error: str | None = None  # None: fq set on the POPs' WAN devices in the plex-cdn scenario
    initial: dict[str, str] = field(default_factory=dict)

    @property
    def lab(self) -> Lab:
        return self.relay.lab

    @property
    def config(self) -> StackConfig:
        return self.relay.config

    def pops(self) -> list[str]:
        return [place.pop.name for place in topology.places(self.config)]

    def pop_devices(self) -> Iterator[tuple[str, str]]:
        """(role, device) for every WAN device inside a POP namespace."""
        return self.devices_of(set(self.pops()))

    def devices_of(self, roles: set[str]) -> Iterator[tuple[str, str]]:
        """(role, device) for every relayed-path WAN device inside the given namespaces."""
        for (a_role, b_role), link in self.hops.items():
            if a_role in roles:
                yield a_role, link.a_if
            if b_role in roles:
                yield b_role, link.b_if

    def agent_tuning(self) -> dict[str, str]:
        """The agent's sysctls that a namespace accepts (the same keys as the POPs')."""
        return {key: value for key, value in wanbench.agent_sysctls().items() if key in self.tuned}

    def relayed_path(self) -> list[tuple[str, str]]:
        path = topology.place(self.config, self.relay.viewer_pop).path_to_origin
        return [("client", path[0]), *itertools.pairwise(path), (path[-1], ORIGIN)]

    def path_rtt_s(self, scenario: str) -> float:
        if scenario == "direct":
            return self.direct.profile.rtt_ms / 1000
        return sum(self.hops[hop].profile.rtt_ms for hop in self.relayed_path()) / 1000

    def url(self, scenario: str) -> str:
        if scenario == "direct":
            origin = self.config.origin
            return f"https://{origin.host}:{origin.port}{relay.MEDIA_PATH}"
        return self.config.shared_url + relay.MEDIA_PATH


def hop_profile(a_role: str, b_role: str) -> wan.LinkProfile:
    if a_role == "client":
        return VIEWER_HOP
    if b_role == ORIGIN:
        return ORIGIN_HOP
    return BACKBONE_HOP


# --- sysctls -----------------------------------------------------------------------------------------


def read_sysctl(lab: Lab, role: str, key: str) -> str | None:
    result = lab.run(role, ["sysctl", "-n", key], check=False)
    return " ".join(result.stdout.split()) if result.returncode == 0 else None


def set_sysctls(lab: Lab, role: str, values: Mapping[str, str]) -> dict[str, str]:
    """Set each key inside the namespace; returns the keys that did not take, with the reason.

    `sysctl -w` exits 0 on some refusals, so every value is read back.
    """
    failures: dict[str, str] = {}
    for key, value in values.items():
        result = lab.run(role, ["sysctl", "-w", f"{key}={value}"], check=False)
        now = read_sysctl(lab, role, key)
        if now != " ".join(value.split()):
            reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"reads back {now!r}"
            failures[key] = reason
    return failures


def probe_pop_tuning(bench: Bench) -> None:
    """Find out which of the cloud-init's sysctls a namespace accepts, and whether fq can be set."""
    pops = bench.pops()
    wanted = wanbench.pop_sysctls(render.cloud_init(bench.config, pops[0]))
    probe_role = pops[0]
    for key in wanted:
        bench.initial[key] = read_sysctl(bench.lab, probe_role, key) or "(absent)"
    settable = {key: value for key, value in wanted.items() if key != FQ_KEY}
    failures = set_sysctls(bench.lab, probe_role, settable)
    bench.tuned = {key: value for key, value in settable.items() if key not in failures}
    bench.not_applied = failures
    if FQ_KEY not in wanted:
        bench.fq_error = "the cloud-init asks for no default qdisc"
        return
    why = "not a per-namespace setting (the host's default for new devices)"
    if wanted[FQ_KEY] != "fq":
        bench.fq_error = f"the cloud-init asks for {wanted[FQ_KEY]}, not fq"
        bench.not_applied[FQ_KEY] = why
        return
    role, device = next(bench.pop_devices())
    result = bench.lab.run(role, ["tc", "qdisc", "replace", "dev", device, "root", "fq"], check=False)
    if result.returncode != 0:
        bench.fq_error = result.stderr.strip() or f"tc exited {result.returncode}"
        bench.not_applied[FQ_KEY] = (
            f"{why}; nor can fq be set on the POPs' WAN devices with tc ({bench.fq_error}): "
            "BBR paces its packets itself without it"
        )
        return
    bench.lab.run(role, ["tc", "qdisc", "del", "dev", device, "root"], check=False)


def set_fq(bench: Bench, roles: set[str]) -> None:
    """fq on the WAN devices of `roles` (the tuning's default qdisc); every other device back to its default."""
    if bench.fq_error is not None:
        return
    for role, device in bench.devices_of({*bench.pops(), ORIGIN}):
        action = ["replace", "dev", device, "root", "fq"] if role in roles else ["del", "dev", device, "root"]
        bench.lab.run(role, ["tc", "qdisc", *action], check=False)


# --- building the lab --------------------------------------------------------------------------------


def wait_for_listener(lab: Lab, role: str, address: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listening = lab.run(role, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
        if f"{address}:{port}" in listening:
            return
        time.sleep(0.1)
    raise LabError(f"nothing listens on {address}:{port} in {lab.ns(role)} after {timeout:.0f} s")


# Nothing in the bench logs in to the origin: a well-formed key stands in for the one `pulumi up` would pin.
UNUSED_HOST_KEY: Final = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchOriginIsNeverReachedOverSshNotARealKey00"


def with_agent(config: StackConfig) -> StackConfig:
    """The stack with `origin.agent` on, as a user turns it on (the SSH settings play no part in the lab)."""
    settings = OriginAgent.model_validate(
        {"listenPort": AGENT_PORT, "sshHost": config.origin.host, "sshHostKey": UNUSED_HOST_KEY}
    )
    return config.model_copy(update={"origin": config.origin.model_copy(update={"agent": settings})})


def build_bench(config: StackConfig, root: Path, lab: Lab, plan: BenchPlan) -> Bench:
    hops: dict[tuple[str, str], wan.WanLink] = {}

    def wan_link(lab: Lab, a_role: str, b_role: str, subnet: str) -> tuple[str, str]:
        link = wan.connect(lab, a_role, b_role, subnet, hop_profile(a_role, b_role), seed=len(hops) + 1)
        hops[(a_role, b_role)] = link
        return str(link.a_addr), str(link.b_addr)

    built = relay.build(config, root, lab, plan.media_mb, link=wan_link)
    agent_config = with_agent(config)
    relay.add_agent(built, agent_config)
    direct = wan.connect(lab, "client", ORIGIN, DIRECT_SUBNET, DIRECT_PATH, seed=len(hops) + 1)
    bench = Bench(built, hops, direct, agent_config, tuned={})
    probe_pop_tuning(bench)

    # The viewer reaches the Plex server by its own name over the direct link, as it would without a CDN.
    origin = config.origin
    cert = built.ca.issue([origin.host], root / "origin" / "direct-tls", "origin-direct")
    direct_address = str(bench.direct.b_addr)
    lab.start(
        ORIGIN,
        [
            *(sys.executable, "-m", "labs.plex_standin", "--quiet"),
            *("--listen", f"{direct_address}:{origin.port}", "--media", str(built.media_file)),
            *("--headers-log", str(root / "origin" / "direct-headers.jsonl")),
            *("--tls-cert", str(cert.fullchain), "--tls-key", str(cert.privkey)),
        ],
        log=root / "origin" / "direct-origin.out",
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    wait_for_listener(lab, ORIGIN, direct_address, origin.port)
    viewer_address = built.addresses[("client", built.viewer_pop)][1]
    hosts = {config.shared_name: viewer_address, origin.host: direct_address}
    hosts.update({config.pop_name(pop.name): viewer_address for pop in config.pops})
    lab.write_hosts("client", hosts)
    for role in ("client", ORIGIN):
        failures = set_sysctls(lab, role, {k: v for k, v in STOCK_SYSCTLS.items() if k in bench.tuned})
        if "net.ipv4.tcp_congestion_control" in failures:
            raise LabError(f"cannot give {role} cubic: {failures}")
    return bench


# --- scenarios ---------------------------------------------------------------------------------------


def restart_nginx(bench: Bench, pop: str) -> None:
    built = bench.relay
    test = built.nginx(pop, "-t")
    if test.returncode != 0:
        raise LabError(f"nginx -t rejected POP {pop}'s config: {test.stderr}")
    built.stop_nginx(pop)
    pid_file = built.pop_dir(pop) / "run" / "nginx.pid"
    if pid_file.exists():
        # A graceful quit waits for open connections; the benchmark has none left that matter.
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (ValueError, ProcessLookupError):
            pid_file.unlink(missing_ok=True)
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    built.start_nginx(pop)


def use_scenario(bench: Bench, scenario: str) -> dict[str, Any]:
    """Put the POPs in the scenario's state; returns what they run with, read back from them."""
    with_agent = scenario == wanbench.AGENT_SCENARIO
    origin_values = bench.agent_tuning() if with_agent else {k: v for k, v in STOCK_SYSCTLS.items() if k in bench.tuned}
    failures = set_sysctls(bench.lab, ORIGIN, origin_values)
    if failures:
        raise LabError(f"the origin namespace refused sysctls: {failures}")
    if scenario == "direct":
        set_fq(bench, set())
        return {}
    for pop in bench.pops():
        if scenario == "seed":
            upstream = bench.config.pop(pop).upstream
            # As relay.render_pop does: an edge reaches its upstream POP by the address on their link.
            addresses = {upstream: bench.relay.addresses[(pop, upstream)][1]} if upstream != ORIGIN else {}
            conf = wanbench.seed_nginx_conf(bench.config, pop, str(bench.relay.pop_dir(pop)), addresses)
            bench.relay.conf(pop).write_text(conf)
            values = {k: v for k, v in STOCK_SYSCTLS.items() if k in bench.tuned}
        else:
            bench.relay.render_pop(pop, bench.agent_config if with_agent else bench.config)
            values = bench.tuned
        conf_path = bench.relay.conf(pop)
        conf_path.write_text(wanbench.with_workers_of(conf_path.read_text(), bench.config.pop(pop).size_info.vcpus))
        failures = set_sysctls(bench.lab, pop, values)
        if failures:
            raise LabError(f"POP {pop} refused sysctls it took before: {failures}")
    set_fq(bench, ({*bench.pops(), ORIGIN} if with_agent else set(bench.pops())) if scenario != "seed" else set())
    for pop in bench.pops():
        restart_nginx(bench, pop)
    if scenario != "seed":
        # What plexcdn-warm-chain does on a POP once nginx starts; the naive relay has nothing like it.
        for pop in bench.pops():
            bench.relay.warm_chain(pop)
    return {
        role: {
            "tcp_congestion_control": wan.congestion_control(bench.lab, role),
            "tcp_slow_start_after_idle": read_sysctl(bench.lab, role, "net.ipv4.tcp_slow_start_after_idle"),
        }
        for role in (*bench.pops(), ORIGIN)
    }


def measure_legs(bench: Bench, scenario: str, seconds: float) -> dict[str, Any]:
    """Each leg's own single-stream rate in the download direction, with the sender's congestion control:
    a relay that splits the path into TCP legs cannot deliver more than its slowest leg."""
    hops = [(ORIGIN, "client", bench.direct)] if scenario == "direct" else []
    hops += [(b, a, bench.hops[(a, b)]) for a, b in bench.relayed_path()] if scenario != "direct" else []
    legs: dict[str, Any] = {}
    for sender, receiver, link in hops:
        receiver_address = link.a_addr if link.a_ns == bench.lab.ns(receiver) else link.b_addr
        try:
            mbit: float | None = wan.iperf3_mbit(bench.lab, sender, receiver, receiver_address, seconds=seconds)
        except (LabError, KeyError, ValueError) as error:
            log(f"leg {sender}->{receiver}: {error}")
            mbit = None
        legs[f"{sender}->{receiver}"] = {
            "congestion_control": wan.congestion_control(bench.lab, sender),
            "rtt_ms": link.profile.rtt_ms,
            "loss": link.profile.loss,
            "mbit": mbit,
        }
    return legs


def run_client(bench: Bench, scenario: str, plan: BenchPlan, seed: int) -> dict[str, Any]:
    argv = [
        *(sys.executable, "-m", "labs.bench_client", bench.url(scenario)),
        *("--ca", str(bench.relay.ca.bundle_path), "--plan", json.dumps(plan.client_plan(seed))),
    ]
    result = bench.lab.run(
        "client",
        argv,
        check=False,
        timeout=plan.client_budget_s(),
        cwd=str(PROJECT_ROOT),
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    if result.returncode != 0:
        raise LabError(f"the bench client failed in scenario {scenario}: {result.stderr[-2000:]}")
    measured: dict[str, Any] = json.loads(result.stdout)
    return measured


# --- summarising ---------------------------------------------------------------------------------------


def _get(record: Mapping[str, Any], *path: str) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def summarize_scenario(reps: Sequence[Mapping[str, Any]], path_rtt_s: float, plan: BenchPlan) -> dict[str, Any]:
    """Median and spread of each metric over the repetitions (startups and seeks pooled)."""
    startups = [s["ttfb_s"] for rep in reps for s in rep.get("startups", [])]
    seeks = [t for rep in reps for t in (_get(rep, "seeks", "ttfb_s") or [])]
    sustained = [_get(rep, "throughput", "second_half_mbit") for rep in reps]
    summary: dict[str, Any] = {
        "throughput_mbit": wanbench.spread(sustained),
        "throughput_ratio": wanbench.spread([wanbench.ratio(v, LINK_RATE_MBIT) for v in sustained]),
        "throughput_whole_mbit": wanbench.spread([_get(rep, "throughput", "mbit") for rep in reps]),
        "startup_s": wanbench.spread(startups),
        "startup_rtt": wanbench.spread([wanbench.ratio(v, path_rtt_s) for v in startups]),
        "startup_cold_s": wanbench.spread([_get(rep, "startup_cold", "ttfb_s") for rep in reps]),
        "seek_ttfb_s": wanbench.spread(seeks),
        "seek_ttfb_rtt": wanbench.spread([wanbench.ratio(v, path_rtt_s) for v in seeks]),
    }
    for rate in plan.bitrates_mbit:
        key = wanbench.rate_key(rate)
        plays = [_get(rep, "playback", key) for rep in reps]
        # A playback that never started had no rebuffers to count: its stalls are "did not start", not 0.
        not_started = sum(1 for play in plays if play is not None and play.get("startup_delay_s") is None)
        for metric in ("startup_delay_s", "rebuffer_events", "stall_seconds", "played_fraction"):
            values = [
                None
                if play is None or (metric != "played_fraction" and play.get("startup_delay_s") is None)
                else play.get(metric)
                for play in plays
            ]
            summary[f"playback_{key}.{metric}"] = {**wanbench.spread(values), "not_started": not_started}
    return summary


def scenario_result(reps: Sequence[Mapping[str, Any]], path_rtt_s: float, plan: BenchPlan) -> dict[str, Any]:
    summary = summarize_scenario(reps, path_rtt_s, plan)
    primary, *others = (wanbench.rate_key(rate) for rate in plan.bitrates_mbit)
    result: dict[str, Any] = {
        "path_rtt_ms": path_rtt_s * 1000,
        "throughput_ratio": summary["throughput_ratio"]["median"],
        "throughput_mbit": summary["throughput_mbit"]["median"],
        "seek_ttfb_rtt": summary["seek_ttfb_rtt"]["median"],
        "seek_ttfb_s": summary["seek_ttfb_s"]["median"],
        "startup_s": summary["startup_s"]["median"],
        "startup_rtt": summary["startup_rtt"]["median"],
        "startup_cold_s": summary["startup_cold_s"]["median"],
        "playback_bitrate_mbit": float(primary),
        "rebuffer_events": summary[f"playback_{primary}.rebuffer_events"]["median"],
        "stall_seconds": summary[f"playback_{primary}.stall_seconds"]["median"],
        "played_fraction": summary[f"playback_{primary}.played_fraction"]["median"],
    }
    for key in others:
        result[f"rebuffer_events_{key}mbit"] = summary[f"playback_{key}.rebuffer_events"]["median"]
        result[f"stall_seconds_{key}mbit"] = summary[f"playback_{key}.stall_seconds"]["median"]
        result[f"played_fraction_{key}mbit"] = summary[f"playback_{key}.played_fraction"]["median"]
    result["summary"] = summary
    result["repetitions"] = list(reps)
    return result


def machine_stamp() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def profile_record(bench: Bench, plan: BenchPlan) -> dict[str, Any]:
    def describe(link: wan.LinkProfile) -> dict[str, Any]:
        return {"name": link.name, "rtt_ms": link.rtt_ms, "loss": link.loss, "rate_mbit": link.rate_mbit}

    return {
        "link_rate_mbit": LINK_RATE_MBIT,
        "hops": {f"{a}<->{b}": describe(link.profile) for (a, b), link in bench.hops.items()},
        "direct": describe(bench.direct.profile),
        "path_rtt_ms": {name: bench.path_rtt_s(name) * 1000 for name in wanbench.SCENARIOS},
        "congestion_control": {
            "client": "cubic",
            "origin": {
                "without the agent": "cubic",
                wanbench.AGENT_SCENARIO: bench.agent_tuning().get("net.ipv4.tcp_congestion_control", "?"),
            },
            "pops": {"seed": "cubic", "plex-cdn": bench.tuned.get("net.ipv4.tcp_congestion_control", "?")},
        },
        "pop_sysctls": {
            "applied_in_plex_cdn": bench.tuned,
            "applied_on_origin_with_agent": bench.agent_tuning(),
            "stock_in_seed": {k: v for k, v in STOCK_SYSCTLS.items() if k in bench.tuned},
            "not_applied": bench.not_applied,
            "namespace_initial": bench.initial,
        },
        "player": {
            "bitrates_mbit": list(plan.bitrates_mbit),
            "start_buffer_s": plan.start_buffer_s,
            "resume_buffer_s": plan.resume_buffer_s,
            "max_buffer_s": plan.max_buffer_s,
            "window_s": plan.playback_s,
        },
        "plan": dataclasses.asdict(plan),
    }


# --- running -----------------------------------------------------------------------------------------


def measure_ceiling(plan: BenchPlan) -> dict[str, Any]:
    """The emulator's own limit: the benchmark's figures mean something only well below it."""
    try:
        found = wan.measure_ceiling(rtts_ms=plan.ceiling_rtts_ms, seconds=plan.ceiling_s, streams=plan.ceiling_streams)
    except (LabError, KeyError, ValueError, OSError) as error:
        return {"mbit": None, "results": [], "error": f"{type(error).__name__}: {error}"}
    single = [result.mbit for result in found if result.streams == 1]
    return {
        # The benchmark's transfers are single streams: the slowest single-stream figure is their ceiling.
        "mbit": min(single) if single else None,
        "results": [dataclasses.asdict(result) for result in found],
    }


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(plan: BenchPlan, stack_file: Path = DEFAULT_STACK) -> dict[str, Any]:
    started = time.monotonic()
    config = load_stack_file(stack_file)
    log(f"{plan.mode} run: measuring the WAN emulator's own ceiling")
    ceiling = measure_ceiling(plan)
    root = Path(tempfile.mkdtemp(prefix="plexcdn-wanbench-"))
    # nginx workers run as www-data and must reach the POP directories.
    root.chmod(0o755)
    reps: dict[str, list[dict[str, Any]]] = {name: [] for name in wanbench.SCENARIOS}
    try:
        with wan.congestion_controls_allowed("cubic", "bbr"), Lab(PREFIX) as lab:
            log("building the relay lab with emulated WAN links")
            bench = build_bench(config, root, lab, plan)
            legs: dict[str, Any] = {}
            if plan.leg_seconds > 0:
                for scenario in wanbench.SCENARIOS:
                    log(f"measuring each leg on its own: {scenario}")
                    use_scenario(bench, scenario)
                    legs[scenario] = measure_legs(bench, scenario, plan.leg_seconds)
            for repetition in range(plan.repetitions):
                turn = repetition % len(wanbench.SCENARIOS)
                order = wanbench.SCENARIOS[turn:] + wanbench.SCENARIOS[:turn]
                for scenario in order:
                    log(f"repetition {repetition + 1}/{plan.repetitions}: {scenario}")
                    pops = use_scenario(bench, scenario)
                    measured = run_client(bench, scenario, plan, seed=repetition)
                    measured["repetition"] = repetition
                    measured["pops"] = pops
                    reps[scenario].append(measured)
            counters = {f"{a}<->{b}": link.counters() for (a, b), link in bench.hops.items()}
            counters["client<->origin"] = bench.direct.counters()
            profile = profile_record(bench, plan)
            paths = {name: bench.path_rtt_s(name) for name in wanbench.SCENARIOS}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "machine": machine_stamp(),
        "mode": plan.mode,
        "duration_s": round(time.monotonic() - started, 1),
        "emulator_ceiling_mbit": ceiling["mbit"],
        "emulator_ceiling": ceiling,
        "profile": profile,
        "scenarios": {name: scenario_result(reps[name], paths[name], plan) for name in wanbench.SCENARIOS},
        "legs": legs,
        "link_counters": counters,
    }


# --- writing the results -------------------------------------------------------------------------------


def markdown_report(results: Mapping[str, Any]) -> str:
    machine = results["machine"]
    profile = results["profile"]
    hops = ", ".join(
        f"{name} `{hop['name']}` {hop['rtt_ms']:g} ms {hop['loss'] * 100:g} % loss"
        for name, hop in profile["hops"].items()
    )
    direct = profile["direct"]
    ceiling = results["emulator_ceiling_mbit"]
    not_applied = "; ".join(f"`{key}`: {why}" for key, why in profile["pop_sysctls"]["not_applied"].items())
    player = profile["player"]
    lines = [
        f"# plex-cdn WAN benchmark ({results['mode']} run)",
        "",
        f"{machine['date']} on `{machine['hostname']}` ({machine['cpu']}, {machine['cores']} cores, "
        f"Linux {machine['kernel']}); the run took {results['duration_s']:.0f} s.",
        "",
        f"Links {profile['link_rate_mbit']:g} Mbit/s each. Relayed: {hops}. Direct: client<->origin "
        f"`{direct['name']}` {direct['rtt_ms']:g} ms {direct['loss'] * 100:g} % loss. Path RTT "
        f"{profile['path_rtt_ms']['direct']:g} ms direct, {profile['path_rtt_ms']['plex-cdn']:g} ms relayed. "
        f"Emulator ceiling (one TCP stream, no cap): "
        + (f"{ceiling:.0f} Mbit/s." if ceiling is not None else "not measured.")
        + f" {results['profile']['plan']['repetitions']} repetitions per scenario: median (min to max).",
        "",
        wanbench.markdown_table(results),
        f"Throughput is the rate over the second half of a {profile['plan']['throughput_s']:g} s download (after "
        "slow start). Startup: a new connection's time to the first byte of media, with the POPs already "
        "serving; the cold row is the first request after the POPs restarted. Seeks: ranges at fresh offsets on "
        f"an open connection. Playback: {player['window_s']:g} s windows, play at {player['start_buffer_s']:g} s "
        f"buffered, resume at {player['resume_buffer_s']:g} s, read ahead at most {player['max_buffer_s']:g} s.",
        "",
        "Viewer: cubic. Plex server: cubic, but for the agent's sysctl drop-in in the last scenario. POPs: cubic "
        "and stock sysctls (`seed`), the cloud-init's sysctls (both `plex-cdn` scenarios). "
        f"Not applied inside the namespaces: {not_applied or 'none'}.",
        "",
    ]
    if results.get("legs"):
        lines += [_legs_line(results["legs"]), ""]
    return "\n".join(lines)


def _legs_line(legs: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    for scenario, measured in legs.items():
        figures = ", ".join(
            f"{leg} {value['congestion_control']} " + (f"{value['mbit']:.1f}" if value["mbit"] is not None else "n/a")
            for leg, value in measured.items()
        )
        parts.append(f"`{scenario}`: {figures}")
    return (
        "Each leg on its own (iperf3, one stream, download direction, the sender's congestion control), Mbit/s: "
        + "; ".join(parts)
        + ". Split at the POPs, a path delivers no more than its slowest leg."
    )


def write_plot(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [name for name in wanbench.SCENARIOS if name in results["scenarios"]]
    colours = {"direct": "#c0392b", "seed": "#7f8c8d", "plex-cdn": "#2471a3", wanbench.AGENT_SCENARIO: "#1e8449"}
    bitrates = [wanbench.rate_key(rate) for rate in results["profile"]["player"]["bitrates_mbit"]]
    figure, axes = plt.subplots(2, 3, figsize=(15, 8.5))

    def bars(axis: Any, keys: Sequence[tuple[str, str]], title: str, ylabel: str, scale: float = 1.0) -> None:
        width = 0.8 / len(scenarios)
        for index, name in enumerate(scenarios):
            summary = results["scenarios"][name]["summary"]
            medians, lows, highs = [], [], []
            for _, key in keys:
                stat = summary.get(key) or {}
                median = stat.get("median")
                medians.append((median or 0.0) * scale)
                lows.append(((median or 0.0) - (stat.get("min") or median or 0.0)) * scale)
                highs.append(((stat.get("max") or median or 0.0) - (median or 0.0)) * scale)
            positions = [k + (index - (len(scenarios) - 1) / 2) * width for k in range(len(keys))]
            axis.bar(positions, medians, width, yerr=[lows, highs], capsize=3, label=name, color=colours.get(name))
            for position, (_, key) in zip(positions, keys, strict=True):
                stat = summary.get(key) or {}
                if stat.get("median") is None and stat.get("not_started"):
                    axis.text(position, 0, "did not start", rotation=90, ha="center", va="bottom", fontsize=8)
        axis.set_xticks(range(len(keys)), [label for label, _ in keys])
        axis.set_title(title)
        axis.set_ylabel(ylabel)
        axis.grid(axis="y", alpha=0.3)

    bars(axes[0][0], [("sustained", "throughput_ratio")], "Throughput / bottleneck (40 Mbit/s)", "ratio")
    axes[0][0].axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    axes[0][0].legend()
    bars(
        axes[0][1],
        [("startup", "startup_rtt"), ("seek", "seek_ttfb_rtt")],
        "Time to first byte / path RTT",
        "round trips",
    )
    axes[0][1].axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    _plot_download_curves(axes[0][2], results, scenarios, colours)
    bars(axes[1][0], [(f"{r} Mbit/s", f"playback_{r}.rebuffer_events") for r in bitrates], "Rebuffer events", "count")
    bars(axes[1][1], [(f"{r} Mbit/s", f"playback_{r}.stall_seconds") for r in bitrates], "Seconds stalled", "s")
    bars(
        axes[1][2],
        [(f"{r} Mbit/s", f"playback_{r}.played_fraction") for r in bitrates],
        f"Share of the {results['profile']['player']['window_s']:g} s window played",
        "%",
        scale=100.0,
    )
    machine = results["machine"]
    figure.suptitle(
        f"plex-cdn WAN benchmark ({results['mode']}): viewer -> edge -> hub -> Plex vs. direct, "
        f"{machine['hostname']}, {machine['cores']} cores, {machine['date']}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_download_curves(
    axis: Any, results: Mapping[str, Any], scenarios: Sequence[str], colours: dict[str, str]
) -> None:
    for name in scenarios:
        reps = results["scenarios"][name]["repetitions"]
        curve = _get(reps[0], "throughput", "curve") if reps else None
        if curve:
            axis.plot([t for t, _ in curve], [b * 8 / 1e6 for _, b in curve], label=name, color=colours.get(name))
    if axis.lines:
        end = max(line.get_xdata()[-1] for line in axis.lines)
        axis.plot([0, end], [0, end * LINK_RATE_MBIT], color="black", linewidth=0.8, linestyle="--", label="40 Mbit/s")
    axis.set_title("Bulk download, first repetition")
    axis.set_xlabel("seconds")
    axis.set_ylabel("Mbit delivered")
    axis.legend()
    axis.grid(alpha=0.3)


def write_results(results: Mapping[str, Any], out_dir: Path = RESULTS_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "latest.json", out_dir / "latest.md", out_dir / "latest.png"]
    paths[0].write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    paths[1].write_text(markdown_report(results))
    write_plot(results, paths[2])
    return paths
