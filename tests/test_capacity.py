"""Viewers a POP carries (plexcdn/capacity.py) and validate's warning for `viewing.expectedConcurrentViewers`."""

from __future__ import annotations

import json

import pytest

from labs import capacity_report
from plexcdn import capacity
from plexcdn.config import ConfigError, load_stack_file
from tests.conftest import ROOT, config_from, example_values


def test_the_programs_figures_are_the_committed_benchmarks() -> None:
    results = json.loads((ROOT / "bench" / "results" / "capacity.json").read_text())
    per_core = results["per_core"]
    assert pytest.approx(per_core["cpu_s_per_gb"], abs=0.0005) == capacity.MEASURED_CPU_S_PER_GB
    assert pytest.approx(per_core["memory_per_stream_mb"], abs=0.005) == capacity.MEASURED_STREAM_MEMORY_MB
    assert capacity.viewers_per_core(capacity.MEASURED_CPU_S_PER_GB, 30) == per_core["estimated_viewers_per_core"]
    # The benchmark measures the dev stack's POP unless told otherwise.
    assert results["pop"] == "us"
    assert load_stack_file(ROOT / "Pulumi.dev.yaml").nginx.stream_buffer_mb == capacity.MEASURED_STREAM_BUFFER_MB
    for row in results["sizes"]:
        carried = capacity.pop_capacity(row["provider"], row["size"], 30, capacity.MEASURED_STREAM_BUFFER_MB)
        assert (carried.streams, carried.bound_by) == (row["viewers"], row["bound_by"]), row["size"]


def test_the_benchmarks_size_table_is_the_programs_arithmetic() -> None:
    rows = capacity_report.viewers_per_size(100, 10.0, 20.0)
    nanode = next(row for row in rows if row["size"] == "g6-nanode-1")
    # 1 vCPU x 100; 1000 Mbit/s / 20; (1024 - 300) MB / 10 MB
    assert nanode["limits"] == {"cpu": 100, "network": 50, "memory": 72}
    assert (nanode["viewers"], nanode["bound_by"]) == (50, "network")


def viewing(viewers: int, *, bitrate: float = 30, buffer_mb: int = 4, size: str | None = None) -> list[str]:
    values = example_values()
    values["viewing"]["expectedConcurrentViewers"] = viewers
    values["viewing"]["bitrateMbps"] = bitrate
    values["nginx"]["streamBufferMb"] = buffer_mb
    if size is not None:
        values["pops"][0]["size"] = size
    return [w for w in config_from(values).warnings if w.startswith("viewing.expectedConcurrentViewers")]


def test_more_viewers_than_a_pop_carries_is_a_warning_naming_the_setting_the_pop_and_the_bound() -> None:
    # The example's edge is a Linode Nanode: 1000 Mbit/s out carries 33 streams at 30 Mbit/s.
    assert viewing(33) == []
    (warning,) = viewing(34)
    assert "34 viewers at once at 30 Mbit/s" in warning
    assert "POP 'asia' (linode g6-nanode-1)" in warning and "about 33 streams" in warning
    assert "network cap of 1,000 Mbit/s" in warning
    # At 1080p the same POP carries more.
    assert viewing(34, bitrate=15) == []


def test_a_small_pop_with_a_large_read_ahead_is_bound_by_its_memory() -> None:
    warnings = viewing(30, buffer_mb=64, size="s-1vcpu-512mb-10gb")
    us = next(w for w in warnings if "POP 'us'" in w)
    # (512 - 300) MB / (5.35 - 4 + 64) MB per stream
    assert "about 3 streams" in us and "nginx.streamBufferMb 64" in us


def test_a_count_of_no_viewers_is_refused() -> None:
    values = example_values()
    values["viewing"]["expectedConcurrentViewers"] = 0
    with pytest.raises(ConfigError, match=r"viewing.expectedConcurrentViewers: must be a whole number of viewers"):
        config_from(values)
