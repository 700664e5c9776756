"""A user-space WAN emulator for the namespace labs: delay, jitter, loss and a rate cap on a link.

The kernel the labs run on may have no `netem` qdisc, so the link is emulated in user space: each end
of a link is a TUN device in its namespace, and a relay process copies packets between the two TUN
file descriptors, holding each packet back until it is due and dropping the ones the loss model or the
bottleneck queue says to drop.

Profiles
    `LinkProfile` is a frozen dataclass: round-trip time, random loss per packet and direction, an
    optional bursty Gilbert-Elliott loss model (`GilbertElliott`), rate cap in Mbit/s (None = none),
    jitter, the bottleneck queue in milliseconds, and whether jitter may reorder packets. Profiles are
    symmetric: each direction gets half the RTT and its own loss and rate. `PROFILES` holds the named
    ones (`isp-longhaul`, `isp-longhaul-bursty`, `isp-local`, `cloud-backbone`, `lossless-local`);
    `profile(name, rate_mbit=..., loss=..., ...)` looks one up and overrides fields.

Joining namespaces
    `connect(lab, "edge", "hub", "198.18.4.0/30", profile("cloud-backbone"), seed=1)` makes a TUN
    device in each of the two namespaces of a `labs.netns.Lab`, gives them the first two host
    addresses of the subnet, starts the relay with `lab.start` (so `Lab.close()` kills it, and deleting
    either namespace does too) and returns a `WanLink` with both addresses. Route further subnets over
    it with `lab.route(role, destination, via=link.b_addr)` as with a veth link.

    `WanLink.counters()` asks the running relay for its per-direction counters (packets forwarded,
    lost to the loss model, dropped by the full queue). `iperf3_mbit(lab, client, server, address)`
    measures TCP goodput across a lab.

How each packet is treated, per direction
    1. Loss: dropped with probability `loss` (and, when set, by the Gilbert-Elliott chain), drawn from
       a `random.Random` seeded from the link's seed and the direction, so a run is reproducible.
    2. Rate: a token bucket of `burst_bytes` filled at `rate_mbit`; a packet leaves the bottleneck when
       the bucket holds its size. The packets waiting for tokens are the bottleneck queue: when a
       packet would wait longer than `queue_ms` (default: one bandwidth-delay product, i.e. the RTT),
       it is dropped (drop-tail).
    3. Delay: it is delivered half the RTT after leaving the bottleneck, plus a jitter drawn uniformly
       from [-jitter, +jitter]. Unless `reorder` is set, a packet that would overtake the one in front
       of it waits behind it instead, because TCP takes reordering for loss; at high packet rates that
       pulls the mean delay towards half the RTT plus the jitter.
    Packets are never delivered early. They are late by the relay's wake-up time, a fraction of a
    millisecond per direction on an idle machine (about 0.5 ms added to a 10 ms RTT here).

Sysctls for the labs
    Inside a non-initial network namespace the kernel lets `net.ipv4.tcp_congestion_control` be set
    only to algorithms listed in the root namespace's `net.ipv4.tcp_allowed_congestion_control`.
    `congestion_controls_allowed("cubic", "bbr")` widens that list for the duration of a `with` block
    and restores it afterwards (once no other process is inside such a block: the setting is global);
    `set_congestion_control(lab, role, "cubic")` sets it in one namespace, `congestion_control` reads it.

Command line
    `python -m labs.wan_emulator profiles` lists the profiles;
    `python -m labs.wan_emulator ceiling` measures the relay's own maximum TCP throughput (iperf3, no
    rate cap, one and four streams) with no delay and with 100 ms RTT, and prints Mbit/s;
    `python -m labs.wan_emulator relay ...` is the relay process itself, started by `connect`.

The relay runs one process per direction (the second forked from the first after both TUN devices
are open), so the two directions do not share an interpreter lock; each reads packets in batches and
sleeps in `select` until the next packet is due or one arrives.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import fcntl
import heapq
import ipaddress
import json
import math
import os
import random
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from labs.netns import LAB_RANGE, Lab, LabError, lab_unavailable_reason

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
PR_SET_PDEATHSIG = 1
PR_SET_TIMERSLACK = 29

NETNS_RUN = Path("/var/run/netns")
ALLOWED_CONGESTION_CONTROL = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
AVAILABLE_CONGESTION_CONTROL = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")
ALLOWANCE_STATE = Path("/run/plexcdn-lab/tcp-allowed-congestion-control.json")
ALLOWANCE_LOCK = ALLOWANCE_STATE.with_suffix(".lock")

# Reading more than this many packets before looking at the delivery queue again would delay due
# packets by the time the reads take.
READ_BATCH = 64
# Without a rate cap nothing bounds the delay line but memory; a lab never needs more in flight.
MAX_IN_FLIGHT_PACKETS = 100_000
MIN_QUEUE_MS = 5.0
MIN_QUEUE_PACKETS = 4
READY_TIMEOUT_S = 15.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class GilbertElliott:
    """A two-state Markov loss model: losses come in bursts while the chain is in its bad state.

    Per packet, the chain moves good -> bad with `p_enter_bad` and bad -> good with `p_leave_bad`; a
    packet is then lost with `loss_good` or `loss_bad` depending on the state it is in.
    """

    p_enter_bad: float
    p_leave_bad: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    def __post_init__(self) -> None:
        for name in ("p_enter_bad", "p_leave_bad", "loss_good", "loss_bad"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"GilbertElliott.{name} must be within [0, 1], not {value}")
        if self.p_enter_bad + self.p_leave_bad == 0.0:
            raise ValueError("GilbertElliott needs p_enter_bad or p_leave_bad above zero")

    @property
    def time_in_bad(self) -> float:
        """The share of packets that meet the chain in its bad state, in the long run."""
        return self.p_enter_bad / (self.p_enter_bad + self.p_leave_bad)

    @property
    def mean_loss(self) -> float:
        bad = self.time_in_bad
        return bad * self.loss_bad + (1.0 - bad) * self.loss_good

    @classmethod
    def with_mean_loss(cls, mean_loss: float, mean_burst_packets: float, loss_bad: float = 1.0) -> GilbertElliott:
        """The chain with a lossless good state whose bad spells last `mean_burst_packets` on average."""
        p_leave_bad = 1.0 / mean_burst_packets
        time_in_bad = mean_loss / loss_bad
        p_enter_bad = p_leave_bad * time_in_bad / (1.0 - time_in_bad)
        return cls(p_enter_bad=p_enter_bad, p_leave_bad=p_leave_bad, loss_good=0.0, loss_bad=loss_bad)


@dataclass(frozen=True)
class LinkProfile:
    """How one emulated link behaves; every figure except the RTT applies to each direction alone."""

    name: str
    rtt_ms: float
    loss: float = 0.0
    rate_mbit: float | None = 40.0
    jitter_ms: float = 0.0
    reorder: bool = False
    bursty_loss: GilbertElliott | None = None
    queue_ms: float | None = None
    burst_bytes: int | None = None
    mtu: int = 1500

    def __post_init__(self) -> None:
        if self.rtt_ms < 0 or self.jitter_ms < 0:
            raise ValueError(f"profile {self.name}: rtt_ms and jitter_ms must not be negative")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"profile {self.name}: loss is a probability below 1, not {self.loss}")
        if self.rate_mbit is not None and not self.rate_mbit > 0:
            raise ValueError(f"profile {self.name}: rate_mbit must be above zero, or None for no cap")
        if self.queue_ms is not None and not self.queue_ms > 0:
            raise ValueError(f"profile {self.name}: queue_ms must be above zero")
        if not 576 <= self.mtu <= 65535:
            raise ValueError(f"profile {self.name}: mtu {self.mtu} is outside 576..65535")
        if self.burst_bytes is not None and self.burst_bytes < self.mtu:
            raise ValueError(f"profile {self.name}: burst_bytes must hold at least one MTU ({self.mtu})")

    @property
    def one_way_ms(self) -> float:
        return self.rtt_ms / 2.0

    @property
    def effective_queue_ms(self) -> float:
        """The bottleneck queue's limit in milliseconds at the link rate: one BDP unless set."""
        if self.queue_ms is not None:
            return self.queue_ms
        floor = MIN_QUEUE_MS
        if self.rate_mbit is not None:
            floor = max(floor, MIN_QUEUE_PACKETS * self.mtu * 8 / (self.rate_mbit * 1000.0))
        return max(self.rtt_ms, floor)

    @property
    def effective_burst_bytes(self) -> int:
        """The token bucket's depth: one millisecond at the link rate, and never less than an MTU."""
        if self.burst_bytes is not None:
            return self.burst_bytes
        if self.rate_mbit is None:
            return self.mtu
        return max(self.mtu, int(self.rate_mbit * 1e6 / 8 / 1000))

    @property
    def mean_loss(self) -> float:
        """The expected loss rate per direction, the random and the bursty model together."""
        bursty = self.bursty_loss.mean_loss if self.bursty_loss is not None else 0.0
        return 1.0 - (1.0 - self.loss) * (1.0 - bursty)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LinkProfile:
        values: dict[str, Any] = json.loads(text)
        bursty = values.pop("bursty_loss", None)
        return cls(**values, bursty_loss=GilbertElliott(**bursty) if bursty is not None else None)

    def describe(self) -> str:
        rate = f"{self.rate_mbit:g} Mbit/s" if self.rate_mbit is not None else "no rate cap"
        parts = [f"{self.name}: RTT {self.rtt_ms:g} ms", rate, f"loss {self.loss * 100:g} %"]
        if self.bursty_loss is not None:
            parts.append(f"bursty loss {self.bursty_loss.mean_loss * 100:.2g} % mean")
        if self.jitter_ms:
            parts.append(f"jitter ±{self.jitter_ms:g} ms" + (" (reordering)" if self.reorder else ""))
        parts.append(f"queue {self.effective_queue_ms:g} ms")
        return ", ".join(parts)


PROFILES: dict[str, LinkProfile] = {
    p.name: p
    for p in (
        LinkProfile("isp-longhaul", rtt_ms=220.0, loss=0.01),
        LinkProfile(
            "isp-longhaul-bursty",
            rtt_ms=220.0,
            loss=0.0,
            bursty_loss=GilbertElliott.with_mean_loss(0.01, mean_burst_packets=4.0, loss_bad=0.5),
        ),
        LinkProfile("isp-local", rtt_ms=10.0, loss=0.001),
        LinkProfile("cloud-backbone", rtt_ms=180.0, loss=0.0),
        LinkProfile("lossless-local", rtt_ms=30.0, loss=0.0),
    )
}


def profile(name: str, **overrides: Any) -> LinkProfile:
    """A named profile, with any field replaced: `profile("isp-local", rate_mbit=100, loss=0.05)`."""
    try:
        base = PROFILES[name]
    except KeyError:
        raise KeyError(f"no link profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
    unknown = set(overrides) - {f.name for f in dataclasses.fields(LinkProfile)}
    if unknown:
        raise TypeError(f"LinkProfile has no field(s) {', '.join(sorted(unknown))}")
    return dataclasses.replace(base, **overrides)


@dataclass
class DirectionCounters:
    packets_in: int = 0
    bytes_in: int = 0
    forwarded: int = 0
    lost_random: int = 0
    lost_bursty: int = 0
    dropped_queue: int = 0
    dropped_overflow: int = 0

    @property
    def dropped(self) -> int:
        return self.lost_random + self.lost_bursty + self.dropped_queue + self.dropped_overflow


class DirectionShaper:
    """The per-direction decision for each packet: dropped (None) or the monotonic time it is due.

    Pure and clock-free (the caller passes `now`), so the model can be tested without namespaces.
    """

    def __init__(self, link: LinkProfile, seed: int, direction: int) -> None:
        self.profile = link
        # Reproducible by seed is the point here; nothing about it needs to be unpredictable.
        self.rng = random.Random(seed * 2 + direction)  # noqa: S311
        self.counters = DirectionCounters()
        self.delay_s = link.one_way_ms / 1000.0
        self.jitter_s = link.jitter_ms / 1000.0
        self.seconds_per_byte = 8.0 / (link.rate_mbit * 1e6) if link.rate_mbit is not None else 0.0
        self.burst_s = link.effective_burst_bytes * self.seconds_per_byte
        self.queue_s = link.effective_queue_ms / 1000.0
        self.bursty = link.bursty_loss
        self.bad_state = False
        # The time the bucket would be empty had it no cap: tokens at t are rate * (t - bucket_empty_at).
        self.bucket_empty_at = -math.inf
        self.last_due = -math.inf

    def admit(self, now: float, size: int) -> float | None:
        counters = self.counters
        counters.packets_in += 1
        counters.bytes_in += size
        rng = self.rng
        if self.profile.loss and rng.random() < self.profile.loss:
            counters.lost_random += 1
            return None
        bursty = self.bursty
        if bursty is not None:
            if self.bad_state:
                if rng.random() < bursty.p_leave_bad:
                    self.bad_state = False
            elif rng.random() < bursty.p_enter_bad:
                self.bad_state = True
            if rng.random() < (bursty.loss_bad if self.bad_state else bursty.loss_good):
                counters.lost_bursty += 1
                return None
        leaves = now
        if self.seconds_per_byte:
            # A full bucket holds burst_s worth of tokens, so tokens older than that are forgotten.
            empty_at = max(self.bucket_empty_at, now - self.burst_s) + size * self.seconds_per_byte
            leaves = max(now, empty_at)
            if leaves - now > self.queue_s:
                counters.dropped_queue += 1
                return None
            self.bucket_empty_at = empty_at
        due = leaves + self.delay_s
        if self.jitter_s:
            due = max(leaves, due + self.rng.uniform(-self.jitter_s, self.jitter_s))
            if not self.profile.reorder:
                due = max(due, self.last_due)
        self.last_due = max(self.last_due, due)
        return due


# ---------------------------------------------------------------------------------------------------
# The relay process


def _setns(fd: int) -> None:
    native = getattr(os, "setns", None)
    if native is not None:
        native(fd, CLONE_NEWNET)
        return
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def _attach_tun(ifname: str) -> int:
    """Attach to the TUN device `ifname` of the current network namespace; returns a non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    os.set_blocking(fd, False)
    return fd


def _attach_tun_in(namespace: str, ifname: str) -> int:
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(NETNS_RUN / namespace, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            return _attach_tun(ifname)
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


class _RelayStoppedError(Exception):
    pass


_stopping = False


def _raise_stop(signum: int, frame: object) -> None:
    # Only once: a second signal (the other direction exiting, a repeated SIGTERM) must not break
    # into the clean-up that the first one started.
    global _stopping  # noqa: PLW0603
    if not _stopping:
        _stopping = True
        raise _RelayStoppedError


def _log_line(record: dict[str, object]) -> None:
    # One write per line: both directions append to the same log, and print() may write in pieces.
    os.write(sys.stdout.fileno(), (json.dumps(record) + "\n").encode())


class FifoDelayLine:
    """Packets on their way, delivered in arrival order (their due times never decrease)."""

    def __init__(self) -> None:
        self.packets: deque[tuple[float, bytes]] = deque()

    def __len__(self) -> int:
        return len(self.packets)

    def push(self, due: float, packet: bytes) -> None:
        self.packets.append((due, packet))

    def pop_due(self, now: float) -> list[bytes]:
        packets = self.packets
        due: list[bytes] = []
        while packets and packets[0][0] <= now:
            due.append(packets.popleft()[1])
        return due

    def next_due(self) -> float | None:
        return self.packets[0][0] if self.packets else None


class HeapDelayLine:
    """Packets on their way, delivered in due-time order, so jitter can reorder them."""

    def __init__(self) -> None:
        self.packets: list[tuple[float, int, bytes]] = []
        self.arrivals = 0

    def __len__(self) -> int:
        return len(self.packets)

    def push(self, due: float, packet: bytes) -> None:
        self.arrivals += 1
        heapq.heappush(self.packets, (due, self.arrivals, packet))

    def pop_due(self, now: float) -> list[bytes]:
        packets = self.packets
        due: list[bytes] = []
        while packets and packets[0][0] <= now:
            due.append(heapq.heappop(packets)[2])
        return due

    def next_due(self) -> float | None:
        return self.packets[0][0] if self.packets else None


def _pump(in_fd: int, out_fd: int, shaper: DirectionShaper, label: str) -> None:
    """Move packets from `in_fd` to `out_fd` through `shaper` until SIGTERM; counters go to stdout."""
    counters = shaper.counters
    line = HeapDelayLine() if shaper.profile.reorder and shaper.jitter_s > 0 else FifoDelayLine()

    def report(signum: int = 0, frame: object = None) -> None:
        _log_line({"direction": label, **dataclasses.asdict(counters), "in_flight": len(line)})

    signal.signal(signal.SIGUSR1, report)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    _log_line({"pumping": label})
    read, write, clock, wait = os.read, os.write, time.monotonic, select.select
    admit, push, pop_due, next_due = shaper.admit, line.push, line.pop_due, line.next_due
    buffer_size = shaper.profile.mtu + 64
    try:
        while True:
            now = clock()
            for packet in pop_due(now):
                try:
                    write(out_fd, packet)
                    counters.forwarded += 1
                except OSError:
                    # The receiving stack refused it (device going down): a loss like any other.
                    counters.dropped_overflow += 1
            due = next_due()
            if not wait((in_fd,), (), (), 1.0 if due is None else max(due - now, 0.0))[0]:
                continue
            now = clock()
            room = MAX_IN_FLIGHT_PACKETS - len(line)
            for _ in range(READ_BATCH):
                try:
                    packet = read(in_fd, buffer_size)
                except BlockingIOError:
                    break
                due = admit(now, len(packet))
                if due is None:
                    continue
                if room <= 0:
                    counters.dropped_overflow += 1
                    continue
                room -= 1
                push(due, packet)
    except _RelayStoppedError:
        pass
    finally:
        report()


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _die_with_parent() -> None:
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _wake_on_time() -> None:
    # The default 50 us timer slack lets every delivery wake-up run late by that much.
    _libc().prctl(PR_SET_TIMERSLACK, 1)


def run_relay(a_ns: str, a_if: str, b_ns: str, b_if: str, *, link: LinkProfile, seed: int) -> int:
    """The relay process: attach both TUN devices, fork the b->a direction, pump a->b here."""
    a_fd = _attach_tun_in(a_ns, a_if)
    b_fd = _attach_tun_in(b_ns, b_if)
    _wake_on_time()
    # Until _pump installs its handler, SIGUSR1 would kill the relay.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    _log_line({"relay": f"{a_ns}/{a_if} <-> {b_ns}/{b_if}", "profile": link.to_json(), "seed": seed})
    child = os.fork()
    if child == 0:
        code = 0
        try:
            _die_with_parent()
            _pump(b_fd, a_fd, DirectionShaper(link, seed, 1), f"{b_ns}->{a_ns}")
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            os._exit(code)
    # A relay with one direction dead would look like a link with total loss one way: stop whole.
    signal.signal(signal.SIGCHLD, _raise_stop)
    try:
        _pump(a_fd, b_fd, DirectionShaper(link, seed, 0), f"{a_ns}->{b_ns}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)
        os.waitpid(child, 0)
    return 0


# ---------------------------------------------------------------------------------------------------
# Building links in a Lab


@dataclass
class WanLink:
    """An emulated link between two namespaces of a Lab; addresses as for a veth link."""

    a_ns: str
    b_ns: str
    a_if: str
    b_if: str
    a_addr: ipaddress.IPv4Address
    b_addr: ipaddress.IPv4Address
    prefixlen: int
    profile: LinkProfile
    seed: int
    process: subprocess.Popen[bytes]
    log: Path
    unnamed_log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def addresses(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        return self.a_addr, self.b_addr

    def _lines(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def counters(self, timeout: float = 3.0) -> dict[str, dict[str, int]]:
        """The relay's counters per direction ("a->b", "b->a"), asked for now over SIGUSR1."""
        if self.process.poll() is not None:
            raise LabError(f"the relay for {self.a_ns}<->{self.b_ns} has exited: {self._lines()[-5:]}")
        before = len(self._lines())
        os.killpg(self.process.pid, signal.SIGUSR1)
        labels = {f"{self.a_ns}->{self.b_ns}": "a->b", f"{self.b_ns}->{self.a_ns}": "b->a"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found: dict[str, dict[str, int]] = {}
            for line in self._lines()[before:]:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict) and record.get("direction") in labels:
                        direction = labels[record.pop("direction")]
                        found[direction] = {k: int(v) for k, v in record.items()}
            if len(found) == 2:
                return found
            time.sleep(0.02)
        raise LabError(f"the relay for {self.a_ns}<->{self.b_ns} did not report its counters")


def _link_names(namespace: str) -> set[str]:
    out = subprocess.run(["ip", "-n", namespace, "-o", "link", "show"], capture_output=True, text=True, check=False)
    return {line.split(": ")[1].split("@")[0] for line in out.stdout.splitlines() if ": " in line}


def _free_tun_name(namespace: str, peer_role: str) -> str:
    taken = _link_names(namespace)
    for index in range(100):
        name = f"w{index}{peer_role}"[:15]
        if name not in taken:
            return name
    raise LabError(f"no free TUN device name in {namespace}")


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _has_carrier(namespace: str, ifname: str) -> bool:
    out = subprocess.run(
        ["ip", "-n", namespace, "-o", "link", "show", "dev", ifname], capture_output=True, text=True, check=False
    ).stdout
    return "LOWER_UP" in out and "NO-CARRIER" not in out


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def connect(
    lab: Lab, a_role: str, b_role: str, subnet: str, link: LinkProfile, *, seed: int = 0, log: Path | None = None
) -> WanLink:
    """Join two of the lab's namespaces with an emulated link over `subnet` (a /30 or wider in 198.18.0.0/15).

    `a_role` gets the subnet's first host address, `b_role` the second. The relay runs in `a_role`'s
    namespace and is one of the lab's processes. Its counters go to `log`; without one, to an unnamed
    temporary file that lives as long as the returned `WanLink`.
    """
    network = ipaddress.ip_network(subnet)
    if not isinstance(network, ipaddress.IPv4Network) or not network.subnet_of(LAB_RANGE):  # type: ignore[arg-type]
        raise LabError(f"lab subnet {subnet} is outside the benchmarking range {LAB_RANGE}")
    if network.prefixlen > 30:
        raise LabError(f"lab subnet {subnet} has no two host addresses; use a /30")
    a_addr, b_addr = list(network.hosts())[:2]
    a_ns, b_ns = lab.ns(a_role), lab.ns(b_role)
    a_if, b_if = _free_tun_name(a_ns, b_role), _free_tun_name(b_ns, a_role)
    for ns_name, ifname, addr in ((a_ns, a_if, a_addr), (b_ns, b_if, b_addr)):
        # Persistent, so the addresses and routes exist before the relay attaches and stay until
        # the namespace goes; the relay's attaching is what raises the carrier.
        _ip("-n", ns_name, "tuntap", "add", "dev", ifname, "mode", "tun")
        # The labs are IPv4; IPv6 link-local chatter would only add noise to the relay's counters.
        subprocess.run(
            ["ip", "netns", "exec", ns_name, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=1"],
            capture_output=True,
            check=False,
        )
        _ip("-n", ns_name, "link", "set", ifname, "mtu", str(link.mtu))
        _ip("-n", ns_name, "addr", "add", f"{addr}/{network.prefixlen}", "dev", ifname)
        _ip("-n", ns_name, "link", "set", ifname, "up")
    unnamed_log: IO[bytes] | None = None
    if log is None:
        # An unlinked file, reached through our own descriptor, so that no log outlives the link.
        unnamed_log = tempfile.TemporaryFile(prefix="plexcdn-wan-")  # noqa: SIM115
        log = Path(f"/proc/{os.getpid()}/fd/{unnamed_log.fileno()}")
    argv = [
        sys.executable,
        "-m",
        "labs.wan_emulator",
        "relay",
        "--a-ns",
        a_ns,
        "--a-if",
        a_if,
        "--b-ns",
        b_ns,
        "--b-if",
        b_if,
        "--seed",
        str(seed),
        "--profile-json",
        link.to_json(),
    ]
    process = lab.start(a_role, argv, log=log, env=_python_env())
    deadline = time.monotonic() + READY_TIMEOUT_S
    pumps = {f'"pumping": "{a_ns}->{b_ns}"', f'"pumping": "{b_ns}->{a_ns}"'}
    while not (
        all(pump in log.read_text(errors="replace") for pump in pumps)
        and _has_carrier(a_ns, a_if)
        and _has_carrier(b_ns, b_if)
    ):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            raise LabError(f"the WAN relay {a_ns}<->{b_ns} did not come up: {tail}")
        time.sleep(0.02)
    return WanLink(a_ns, b_ns, a_if, b_if, a_addr, b_addr, network.prefixlen, link, seed, process, log, unnamed_log)


# ---------------------------------------------------------------------------------------------------
# Congestion control


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _allowance_state() -> Iterator[dict[str, Any]]:
    """The shared record of who widened the allowed list and what it was before, held exclusively."""
    ALLOWANCE_STATE.parent.mkdir(parents=True, exist_ok=True)
    with ALLOWANCE_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state: dict[str, Any] = {"original": None, "holders": []}
            with contextlib.suppress(FileNotFoundError, ValueError):
                state = json.loads(ALLOWANCE_STATE.read_text())
            state["holders"] = [pid for pid in state["holders"] if _alive(pid)]
            yield state
            if state["holders"]:
                ALLOWANCE_STATE.write_text(json.dumps(state))
            else:
                ALLOWANCE_STATE.unlink(missing_ok=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def congestion_controls_allowed(*names: str) -> Iterator[list[str]]:
    """Widen the root namespace's tcp_allowed_congestion_control by `names` for the `with` block.

    The setting is global to the machine, and several labs or test runs may want it at once: the
    list is put back to what it was before the first of them only when the last one leaves (a
    record under /run tracks who holds it, forgetting processes that died without leaving).
    """
    wanted_names = names or ("reno", "cubic", "bbr")
    available = AVAILABLE_CONGESTION_CONTROL.read_text().split()
    for name in wanted_names:
        if name not in available:
            subprocess.run(["modprobe", f"tcp_{name}"], capture_output=True, check=False)
    available = AVAILABLE_CONGESTION_CONTROL.read_text().split()
    missing = [name for name in wanted_names if name not in available]
    if missing:
        raise LabError(f"this kernel has no TCP congestion control {', '.join(missing)} (has {' '.join(available)})")
    with _allowance_state() as state:
        current = ALLOWED_CONGESTION_CONTROL.read_text().split()
        if state["original"] is None:
            # Holders that died inside their block leave the original behind: it is still the original.
            state["original"] = current
        state["holders"].append(os.getpid())
        widened = current + [name for name in wanted_names if name not in current]
        ALLOWED_CONGESTION_CONTROL.write_text(" ".join(widened))
        allowed = ALLOWED_CONGESTION_CONTROL.read_text().split()
    try:
        yield allowed
    finally:
        with _allowance_state() as state:
            with contextlib.suppress(ValueError):
                state["holders"].remove(os.getpid())
            if not state["holders"] and state["original"] is not None:
                ALLOWED_CONGESTION_CONTROL.write_text(" ".join(state["original"]))


def set_congestion_control(lab: Lab, role: str, algorithm: str) -> None:
    """Set a namespace's default TCP congestion control (inside `congestion_controls_allowed`)."""
    result = lab.run(role, ["sysctl", "-qw", f"net.ipv4.tcp_congestion_control={algorithm}"], check=False)
    if result.returncode != 0:
        allowed = ALLOWED_CONGESTION_CONTROL.read_text().strip()
        raise LabError(
            f"cannot set tcp_congestion_control={algorithm} in {lab.ns(role)} (root namespace allows "
            f"only: {allowed}; wrap in congestion_controls_allowed({algorithm!r})): {result.stderr.strip()}"
        )


def congestion_control(lab: Lab, role: str) -> str:
    return lab.run(role, ["sysctl", "-n", "net.ipv4.tcp_congestion_control"]).stdout.strip()


# ---------------------------------------------------------------------------------------------------
# Measuring


IPERF3_PORT = 5201


def _wait_for_listener(lab: Lab, role: str, port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        listening = lab.run(role, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout.strip()
        if listening:
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"nothing listens on port {port} in {lab.ns(role)}")
        time.sleep(0.05)


def iperf3_mbit(
    lab: Lab,
    client_role: str,
    server_role: str,
    server_addr: ipaddress.IPv4Address,
    *,
    seconds: float = 4.0,
    omit_seconds: int = 0,
    streams: int = 1,
) -> float:
    """TCP goodput client -> server in Mbit/s (all `streams` together), as the receiver counted it.

    `omit_seconds` leaves the start (slow start) out of the figure; the run lasts that much longer.
    """
    server = lab.start(server_role, ["iperf3", "-s", "-1", "-B", str(server_addr), "-p", str(IPERF3_PORT)])
    try:
        _wait_for_listener(lab, server_role, IPERF3_PORT, server)
        probe = lab.run(
            client_role,
            [
                *("iperf3", "-c", str(server_addr), "-p", str(IPERF3_PORT), "-t", f"{seconds:g}"),
                *("-O", str(omit_seconds), "-P", str(streams), "-J", "--connect-timeout", "3000"),
            ],
            check=False,
            timeout=seconds + omit_seconds + 30,
        )
        # iperf3 3.12 exits 0 even when it could not connect; the JSON's "error" tells.
        try:
            report = json.loads(probe.stdout)
            return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6
        except (ValueError, KeyError):
            raise LabError(
                f"iperf3 {client_role} -> {server_role} gave no result (exit {probe.returncode}): "
                f"{probe.stdout[-800:]} {probe.stderr[-400:]}"
            ) from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=5)


# The pid keeps two measurements on one machine out of each other's namespaces.
CEILING_PREFIX = f"pcwc{os.getpid()}-"
CEILING_SOCKET_BUFFER = 64 * 1024 * 1024
CEILING_OMIT_S = 1


@dataclass(frozen=True)
class CeilingResult:
    rtt_ms: float
    streams: int
    mbit: float


def measure_ceiling(
    rtts_ms: Sequence[float] = (0.0, 100.0),
    seconds: float = 5.0,
    streams: Sequence[int] = (1, 4),
    subnet: str = "198.19.254.0/30",
) -> list[CeilingResult]:
    """The relay's own maximum TCP throughput with no rate cap, per RTT and number of parallel streams.

    One stream shows what a single transfer gets; several show the relay's packet ceiling itself,
    which one stream's congestion control may not reach at long RTTs within a few seconds.
    """
    results: list[CeilingResult] = []
    for rtt in rtts_ms:
        with Lab(CEILING_PREFIX) as lab:
            lab.add_namespace("a")
            lab.add_namespace("b")
            link = connect(lab, "a", "b", subnet, LinkProfile(f"ceiling-{rtt:g}ms", rtt_ms=rtt, rate_mbit=None))
            # Default socket buffers cap one stream near 4 MB in flight, which at 100 ms is the
            # limit long before the relay is.
            lab.run("a", ["sysctl", "-qw", f"net.ipv4.tcp_wmem=4096 16384 {CEILING_SOCKET_BUFFER}"])
            lab.run("b", ["sysctl", "-qw", f"net.ipv4.tcp_rmem=4096 131072 {CEILING_SOCKET_BUFFER}"])
            for count in streams:
                mbit = iperf3_mbit(
                    lab, "a", "b", link.b_addr, seconds=seconds, omit_seconds=CEILING_OMIT_S, streams=count
                )
                results.append(CeilingResult(rtt, count, mbit))
    return results


# ---------------------------------------------------------------------------------------------------
# Command line


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.wan_emulator", description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("profiles", help="list the link profiles")
    ceiling = commands.add_parser("ceiling", help="measure the relay's maximum TCP throughput (needs root)")
    ceiling.add_argument("--seconds", type=float, default=5.0)
    ceiling.add_argument("--rtt", type=float, action="append", help="RTT in ms (repeatable; default 0 and 100)")
    ceiling.add_argument("--streams", type=int, action="append", help="parallel streams (repeatable; default 1 and 4)")
    relay = commands.add_parser("relay", help="the relay process itself (started by connect())")
    relay.add_argument("--a-ns", required=True)
    relay.add_argument("--a-if", required=True)
    relay.add_argument("--b-ns", required=True)
    relay.add_argument("--b-if", required=True)
    relay.add_argument("--seed", type=int, default=0)
    relay.add_argument("--profile-json", required=True)
    args = parser.parse_args(argv)
    if args.command == "profiles":
        for item in PROFILES.values():
            print(item.describe())
        return 0
    if args.command == "relay":
        link = LinkProfile.from_json(args.profile_json)
        return run_relay(args.a_ns, args.a_if, args.b_ns, args.b_if, link=link, seed=args.seed)
    if (reason := lab_unavailable_reason()) is not None:
        print(f"error: the WAN emulator {reason}", file=sys.stderr)
        return 1
    rtts = args.rtt or [0.0, 100.0]
    for result in measure_ceiling(rtts, args.seconds, args.streams or [1, 4]):
        label = "1 TCP stream" if result.streams == 1 else f"{result.streams} TCP streams"
        print(f"relay ceiling, no rate cap, RTT {result.rtt_ms:g} ms, {label}: {result.mbit:.0f} Mbit/s")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
