"""The user-space WAN emulator's per-packet model on its own: profiles, delay, rate cap, loss and jitter.
Nothing here needs root; the emulator's real links between namespaces are tests/lab/test_wan_emulator.py."""

from __future__ import annotations

import itertools
import math

import pytest

from labs import wan_emulator as wan
from labs.netns import Lab, LabError

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
