"""The user-space WAN emulator: the per-packet model on its own, then real links between namespaces.

The model tests need nothing. The link tests need root and network namespaces; they send traffic only
between namespaces they create, over 198.19.0.0/16, and every probe is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs import wan_emulator as wan
from labs.netns import Lab, LabError, existing_namespaces, lab_unavailable_reason

needs_lab = pytest.mark.skipif(lab_unavailable_reason() is not None, reason=str(lab_unavailable_reason()))

# The pid keeps concurrent runs of this suite on one machine out of each other's namespaces.
PREFIX = f"pcw-{os.getpid()}-"
# Outside this z the binomial tail is below 1e-5: a failure means the loss model is wrong, not unlucky.
Z_BOUND = 4.5


def _binomial_bounds(trials: int, probability: float) -> tuple[float, float]:
    spread = Z_BOUND * math.sqrt(probability * (1 - probability) / trials)
    return probability - spread, probability + spread


# ---------------------------------------------------------------------------------------------------
# Profiles and the per-packet model


def test_named_profiles_have_the_documented_figures() -> None:
    expected = {
        "isp-longhaul": (220.0, 0.01),
        "isp-local": (10.0, 0.001),
        "cloud-backbone": (180.0, 0.0),
        "lossless-local": (30.0, 0.0),
    }
    for name, (rtt, loss) in expected.items():
        link = wan.profile(name)
        assert (link.rtt_ms, link.loss, link.rate_mbit) == (rtt, loss, 40.0)
        assert link.one_way_ms == rtt / 2
        assert not link.reorder
    bursty = wan.profile("isp-longhaul-bursty")
    assert bursty.bursty_loss is not None
    assert bursty.mean_loss == pytest.approx(0.01)


def test_profile_overrides_and_rejects_nonsense() -> None:
    link = wan.profile("isp-local", rate_mbit=100.0, loss=0.05)
    assert (link.rate_mbit, link.loss, link.rtt_ms) == (100.0, 0.05, 10.0)
    assert wan.PROFILES["isp-local"].rate_mbit == 40.0
    assert wan.profile("cloud-backbone", rate_mbit=None).rate_mbit is None
    with pytest.raises(KeyError, match="known: "):
        wan.profile("dial-up")
    with pytest.raises(TypeError, match="no field"):
        wan.profile("isp-local", latency=3)
    for bad in ({"loss": 1.0}, {"loss": -0.1}, {"rate_mbit": 0.0}, {"rtt_ms": -1.0}, {"burst_bytes": 100}):
        with pytest.raises(ValueError, match="profile isp-local"):
            wan.profile("isp-local", **bad)
    with pytest.raises(ValueError, match="within"):
        wan.GilbertElliott(p_enter_bad=1.5, p_leave_bad=0.5)


def test_profile_survives_the_relay_command_line() -> None:
    for link in [*wan.PROFILES.values(), wan.profile("lossless-local", jitter_ms=3.0, reorder=True, queue_ms=50.0)]:
        assert wan.LinkProfile.from_json(link.to_json()) == link


def test_default_queue_is_one_bdp_and_bucket_holds_an_mtu() -> None:
    assert wan.profile("cloud-backbone").effective_queue_ms == 180.0
    assert wan.profile("cloud-backbone", queue_ms=25.0).effective_queue_ms == 25.0
    # A near-zero RTT still gets a queue that holds a few full-size packets.
    tiny = wan.LinkProfile("tiny", rtt_ms=0.1, rate_mbit=1.0)
    assert tiny.effective_queue_ms * 1e-3 * 1e6 / 8 >= 4 * tiny.mtu
    assert wan.profile("isp-local", rate_mbit=1.0).effective_burst_bytes == 1500
    assert wan.profile("isp-local", rate_mbit=400.0).effective_burst_bytes == 50_000


def test_delay_is_half_the_rtt_in_each_direction() -> None:
    shaper = wan.DirectionShaper(wan.profile("cloud-backbone", rate_mbit=None), seed=1, direction=0)
    for now in (0.0, 1.0, 1.5):
        assert shaper.admit(now, 1500) == pytest.approx(now + 0.090)


def test_rate_cap_spaces_packets_and_drops_at_the_tail() -> None:
    # 12 Mbit/s: one 1500-byte packet per millisecond; bucket one packet deep; queue 10.5 ms.
    link = wan.LinkProfile("cap", rtt_ms=0.0, rate_mbit=12.0, queue_ms=10.5, burst_bytes=1500)
    shaper = wan.DirectionShaper(link, seed=1, direction=0)
    dues = [shaper.admit(5.0, 1500) for _ in range(30)]
    admitted = [due for due in dues if due is not None]
    # The first leaves on the bucket's tokens, the next ten wait up to 10 ms, the rest are dropped.
    assert len(admitted) == 11
    assert dues[11:] == [None] * 19
    assert [round((due - 5.0) * 1000, 6) for due in admitted] == [float(n) for n in range(11)]
    assert shaper.counters.dropped_queue == 19
    # Once the queue has drained, the link takes packets again.
    assert shaper.admit(5.0 + 0.011, 1500) is not None


def test_rate_cap_holds_over_a_long_overload() -> None:
    link = wan.LinkProfile("cap", rtt_ms=40.0, rate_mbit=40.0)
    shaper = wan.DirectionShaper(link, seed=1, direction=0)
    size, arrivals_per_s, seconds = 1500, 8000, 5.0  # 96 Mbit/s offered
    dues = [shaper.admit(n / arrivals_per_s, size) for n in range(int(arrivals_per_s * seconds))]
    admitted = [due for due in dues if due is not None]
    delivered_mbit = len(admitted) * size * 8 / 1e6
    span = admitted[-1] - admitted[0]
    assert delivered_mbit / span == pytest.approx(40.0, rel=0.01)
    assert shaper.counters.dropped_queue == len(dues) - len(admitted)
    # No packet waits in the queue longer than the queue's limit (one BDP = the RTT, 40 ms).
    waits = [due - n / arrivals_per_s - link.one_way_ms / 1000 for n, due in enumerate(dues) if due is not None]
    assert max(waits) <= 0.040 + 1e-9


def test_random_loss_is_binomial_and_reproducible_by_seed() -> None:
    link = wan.LinkProfile("lossy", rtt_ms=10.0, rate_mbit=None, loss=0.05)
    trials = 100_000

    def pattern(seed: int, direction: int) -> list[bool]:
        shaper = wan.DirectionShaper(link, seed=seed, direction=direction)
        return [shaper.admit(n * 1e-4, 100) is None for n in range(trials)]

    first = pattern(7, 0)
    low, high = _binomial_bounds(trials, 0.05)
    assert low <= sum(first) / trials <= high
    assert pattern(7, 0) == first
    assert pattern(8, 0) != first
    assert pattern(7, 1) != first


def test_gilbert_elliott_loss_comes_in_bursts_at_the_stationary_rate() -> None:
    chain = wan.GilbertElliott.with_mean_loss(0.02, mean_burst_packets=5.0, loss_bad=0.6)
    assert chain.mean_loss == pytest.approx(0.02)
    link = wan.LinkProfile("bursty", rtt_ms=10.0, rate_mbit=None, bursty_loss=chain)
    shaper = wan.DirectionShaper(link, seed=3, direction=0)
    lost = [shaper.admit(n * 1e-4, 100) is None for n in range(400_000)]
    rate = sum(lost) / len(lost)
    # Bursts make the losses correlated, so the spread is wider than binomial: allow 15 %.
    assert rate == pytest.approx(0.02, rel=0.15)
    after_loss = [b for a, b in itertools.pairwise(lost) if a]
    # In a bad spell (mean 5 packets) the next packet is lost with about 0.6 * 0.8: far above 2 %.
    assert sum(after_loss) / len(after_loss) > 0.3
    assert shaper.counters.lost_bursty == sum(lost)


def test_jitter_never_reorders_unless_asked() -> None:
    link = wan.LinkProfile("jittery", rtt_ms=40.0, rate_mbit=None, jitter_ms=5.0)
    in_order = wan.DirectionShaper(link, seed=1, direction=0)
    dues = [in_order.admit(n * 1e-4, 100) for n in range(5000)]
    times = [due for due in dues if due is not None]
    assert times == sorted(times)
    delays = [due - n * 1e-4 for n, due in enumerate(times)]
    assert min(delays) >= 0.020 - 0.005 - 1e-9
    assert max(delays) <= 0.020 + 0.005 + 1e-9
    reordering = wan.DirectionShaper(wan.LinkProfile("r", 40.0, rate_mbit=None, jitter_ms=5.0, reorder=True), 1, 0)
    times = [due for due in (reordering.admit(n * 1e-4, 100) for n in range(5000)) if due is not None]
    assert times != sorted(times)
    spread = [due - n * 1e-4 for n, due in enumerate(times)]
    assert max(spread) - min(spread) > 0.008


def test_delay_lines_deliver_due_packets_in_order() -> None:
    fifo = wan.FifoDelayLine()
    for due, packet in ((1.0, b"a"), (2.0, b"b"), (2.0, b"c"), (3.0, b"d")):
        fifo.push(due, packet)
    assert fifo.pop_due(0.5) == []
    assert fifo.pop_due(2.0) == [b"a", b"b", b"c"]
    assert (len(fifo), fifo.next_due()) == (1, 3.0)
    heap = wan.HeapDelayLine()
    for due, packet in ((3.0, b"late"), (1.0, b"early"), (2.0, b"mid"), (1.0, b"early2")):
        heap.push(due, packet)
    assert heap.pop_due(2.5) == [b"early", b"early2", b"mid"]
    assert heap.next_due() == 3.0


def test_connect_refuses_addresses_outside_the_lab_range() -> None:
    lab = Lab("pcw-unused-")
    with pytest.raises(LabError, match="outside the benchmarking range"):
        wan.connect(lab, "a", "b", "10.0.0.0/30", wan.profile("isp-local"))
    with pytest.raises(LabError, match="no two host addresses"):
        wan.connect(lab, "a", "b", "198.19.0.0/31", wan.profile("isp-local"))
    assert lab.namespaces == []


# ---------------------------------------------------------------------------------------------------
# Real links between namespaces

UDP_RECEIVER = r"""
import json, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
SO_RCVBUFFORCE = 33  # past net.core.rmem_max, so a stalled receiver does not look like link loss
sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.settimeout(0.2)
print("listening", flush=True)
deadline, idle_after = time.monotonic() + float(sys.argv[3]), None
seen, size = [], 0
while time.monotonic() < deadline and (idle_after is None or time.monotonic() < idle_after):
    try:
        data = sock.recv(65536)
    except TimeoutError:
        continue
    seen.append(int.from_bytes(data[:4], "big"))
    size += len(data)
    idle_after = time.monotonic() + 1.5
late = sum(1 for before, after in zip(seen, seen[1:]) if after < before)
print(json.dumps({"received": len(seen), "distinct": len(set(seen)), "out_of_order": late, "bytes": size}))
"""

UDP_SENDER = r"""
import json, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
destination, count, per_ms, size = (sys.argv[1], int(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
start = time.monotonic()
for seq in range(count):
    sock.sendto(seq.to_bytes(4, "big") + bytes(size - 4), destination)
    if seq % per_ms == per_ms - 1:
        ahead = start + (seq + 1) / per_ms / 1000 - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
print(json.dumps({"sent": count, "seconds": time.monotonic() - start}))
"""


def _udp_probe(
    lab: Lab, sender: str, receiver: str, address: str, *, count: int, per_ms: int, size: int, log: Path
) -> tuple[dict[str, int], dict[str, float]]:
    """Send `count` numbered datagrams, `per_ms` each millisecond; what the receiver saw, and the sender."""
    port = "9000"
    listener = lab.start(receiver, [sys.executable, "-c", UDP_RECEIVER, address, port, "30"], log=log)
    deadline = time.monotonic() + 10
    while "listening" not in log.read_text():
        assert time.monotonic() < deadline, "UDP receiver did not start"
        time.sleep(0.02)
    sent = lab.run(sender, [sys.executable, "-c", UDP_SENDER, address, port, str(count), str(per_ms), str(size)])
    listener.wait(timeout=40)
    return json.loads(log.read_text().splitlines()[-1]), json.loads(sent.stdout)


def _ping_rtts(lab: Lab, role: str, address: str, count: int, interval: float) -> tuple[float, float, float]:
    result = lab.run(role, ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2", address])
    match = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", result.stdout)
    assert match, result.stdout
    low, mean, high = (float(value) for value in match.groups())
    return low, mean, high


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(PREFIX) as built:
        built.add_namespace("a")
        built.add_namespace("b")
        yield built


@needs_lab
def test_ping_round_trip_matches_the_profile(lab: Lab) -> None:
    far = wan.connect(lab, "a", "b", "198.19.1.0/30", wan.profile("cloud-backbone"))
    lab.add_namespace("c")
    near = wan.connect(lab, "a", "c", "198.19.1.4/30", wan.profile("isp-local", loss=0.0))
    for link, interval in ((far, 0.2), (near, 0.05)):
        low, mean, high = _ping_rtts(lab, "a", str(link.b_addr), count=12, interval=interval)
        rtt = link.profile.rtt_ms
        # Never early; late only by the relay's wake-ups (a fraction of a millisecond per hop).
        assert low >= rtt
        assert mean <= rtt * 1.03 + 1.0, (link.profile.name, low, mean, high)
    counters = far.counters()
    assert counters["a->b"]["forwarded"] >= 12
    assert counters["b->a"]["forwarded"] >= 12


@needs_lab
def test_loss_rate_is_within_binomial_bounds(lab: Lab, tmp_path: Path) -> None:
    probability, count = 0.05, 20_000
    link = wan.connect(lab, "a", "b", "198.19.2.0/30", wan.profile("isp-local", loss=probability, rate_mbit=None))
    seen, _ = _udp_probe(lab, "a", "b", str(link.b_addr), count=count, per_ms=20, size=64, log=tmp_path / "rx.log")
    lost = count - seen["received"]
    low, high = _binomial_bounds(count, probability)
    assert low <= lost / count <= high, (lost, count)
    assert seen["distinct"] == seen["received"]
    counters = link.counters()["a->b"]
    # Every missing datagram is one the loss model dropped, and nothing else went missing.
    assert counters["lost_random"] == lost
    assert counters["dropped_queue"] == counters["dropped_overflow"] == 0
    assert counters["packets_in"] == count


@needs_lab
def test_rate_cap_drops_udp_offered_above_it(lab: Lab, tmp_path: Path) -> None:
    rate_mbit, queue_ms, size = 10.0, 20.0, 1000
    link = wan.connect(
        lab, "a", "b", "198.19.3.0/30", wan.profile("lossless-local", rate_mbit=rate_mbit, queue_ms=queue_ms)
    )
    count = 8000  # 8 datagrams a millisecond: about 66 Mbit/s offered for one second
    seen, sent = _udp_probe(lab, "a", "b", str(link.b_addr), count=count, per_ms=8, size=size, log=tmp_path / "r")
    ip_bytes = size + 28
    capacity = rate_mbit * 1e6 / 8 * (sent["seconds"] + queue_ms / 1000) + link.profile.effective_burst_bytes
    assert seen["received"] * ip_bytes <= capacity
    assert seen["received"] * ip_bytes >= 0.9 * rate_mbit * 1e6 / 8 * sent["seconds"]
    counters = link.counters()["a->b"]
    assert counters["dropped_queue"] == count - seen["received"]
    assert seen["out_of_order"] == 0


@needs_lab
def test_jitter_keeps_order_unless_reordering_is_asked_for(lab: Lab, tmp_path: Path) -> None:
    steady = wan.connect(lab, "a", "b", "198.19.4.0/30", wan.profile("lossless-local", jitter_ms=5.0, rate_mbit=None))
    lab.add_namespace("c")
    shuffled = wan.connect(
        lab, "a", "c", "198.19.4.4/30", wan.profile("lossless-local", jitter_ms=5.0, reorder=True, rate_mbit=None)
    )
    kept, _ = _udp_probe(lab, "a", "b", str(steady.b_addr), count=2000, per_ms=10, size=64, log=tmp_path / "b")
    mixed, _ = _udp_probe(lab, "a", "c", str(shuffled.b_addr), count=2000, per_ms=10, size=64, log=tmp_path / "c")
    assert kept["received"] == mixed["received"] == 2000
    assert kept["out_of_order"] == 0
    assert mixed["out_of_order"] > 100
    low, _, high = _ping_rtts(lab, "a", str(steady.b_addr), count=20, interval=0.05)
    assert low >= 30.0 - 10.0
    assert high - low > 2.0


@needs_lab
@pytest.mark.parametrize("algorithm", ["bbr", "cubic"])
def test_tcp_throughput_stays_under_the_cap(lab: Lab, algorithm: str) -> None:
    cap = 40.0
    link = wan.connect(lab, "a", "b", "198.19.5.0/30", wan.profile("lossless-local", rate_mbit=cap))
    with wan.congestion_controls_allowed(algorithm):
        wan.set_congestion_control(lab, "a", algorithm)
        assert wan.congestion_control(lab, "a") == algorithm
        mbit = wan.iperf3_mbit(lab, "a", "b", link.b_addr, seconds=4.0)
    # Goodput carries 1448 of every 1500 bytes the cap counts; slow start costs a little more.
    assert mbit <= cap
    assert mbit >= 0.75 * cap, mbit


ALLOWANCE_HOLDER = """
import sys
from labs import wan_emulator as wan
with wan.congestion_controls_allowed("cubic"):
    print("holding", flush=True)
    sys.stdin.read()
"""


def _allowed() -> list[str]:
    return wan.ALLOWED_CONGESTION_CONTROL.read_text().split()


def _foreign_holders() -> bool:
    """Whether processes outside this test (another lab on the machine) hold the allowance too."""
    try:
        holders = json.loads(wan.ALLOWANCE_STATE.read_text())["holders"]
    except FileNotFoundError:
        return False
    return any(pid != os.getpid() and Path(f"/proc/{pid}").exists() for pid in holders)


@contextlib.contextmanager
def _holder() -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(
        [sys.executable, "-c", ALLOWANCE_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"holding\n"
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


@needs_lab
def test_congestion_control_allowance_is_restored_by_the_last_holder() -> None:
    before = _allowed()
    with Lab(PREFIX) as built:
        built.add_namespace("cc")
        with _holder() as other:
            with wan.congestion_controls_allowed("cubic", "reno") as allowed:
                assert {"cubic", "reno"} <= set(allowed)
                wan.set_congestion_control(built, "cc", "cubic")
                assert wan.congestion_control(built, "cc") == "cubic"
            # Left, but the other process still holds the allowance.
            assert "cubic" in _allowed()
            assert other.stdin is not None
            other.stdin.close()
            other.wait(timeout=10)
        if not _foreign_holders():
            assert _allowed() == before
        # A holder killed inside its block is forgotten by the next one to leave.
        with _holder():
            pass
        assert "cubic" in _allowed()
        with wan.congestion_controls_allowed("cubic"):
            pass
        if _foreign_holders():
            return
        assert _allowed() == before
        if "cubic" not in before:
            wan.set_congestion_control(built, "cc", "reno")
            with pytest.raises(LabError, match="congestion_controls_allowed"):
                wan.set_congestion_control(built, "cc", "cubic")


def _relay_processes(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"labs.wan_emulator" in argv and marker.encode() in argv:
                found.append(int(entry.name))
    return found


@needs_lab
def test_tear_down_leaves_no_namespace_or_relay(tmp_path: Path) -> None:
    prefix = f"{PREFIX}td-"
    with pytest.raises(RuntimeError, match="test failure"), Lab(prefix) as built:
        built.add_namespace("a")
        built.add_namespace("b")
        link = wan.connect(built, "a", "b", "198.19.6.0/30", wan.profile("isp-longhaul"), log=tmp_path / "r.log")
        relays = _relay_processes(link.a_ns)
        # The relay and its forked second direction.
        assert len(relays) == 2, relays
        raise RuntimeError("test failure inside the lab")
    assert not [ns for ns in existing_namespaces() if ns.startswith(prefix)]
    assert _relay_processes(link.a_ns) == []
    # Both directions reported their counters on the way out.
    directions = [json.loads(line).get("direction") for line in (tmp_path / "r.log").read_text().splitlines()]
    assert {f"{link.a_ns}->{link.b_ns}", f"{link.b_ns}->{link.a_ns}"} <= set(directions)
