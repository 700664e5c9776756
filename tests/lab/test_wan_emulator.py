"""The user-space WAN emulator's real links between namespaces (the per-packet model on its own is
tests/test_wan_emulator_model.py).

These tests need root and network namespaces; they send traffic only between namespaces they create,
over 198.19.0.0/16, and every probe is bounded in count and time.
"""

from __future__ import annotations

import contextlib
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
