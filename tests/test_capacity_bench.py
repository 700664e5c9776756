"""The capacity benchmark's pure parts: the ladder of levels, reading /proc, the viewers' rate and
rebuffers, saturation and which side limited it, viewers per provider size, and the report. The benchmark
itself (`python -m labs bench capacity`) is not a test: it needs root and asserts nothing about its numbers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from labs import __main__ as labs_cli
from labs import capacity_bench
from labs import capacity_report as report
from labs.capacity_client import Viewer, ViewerPlan
from plexcdn import capacity, regions
from plexcdn.config import StackConfig

RATE = report.stream_bytes_per_s(30.0)  # 3.75 MB/s


def paced(seconds: float, rate: float = RATE, start: float = 0.0, step: float = 0.1) -> list[list[float]]:
    """A trace receiving `rate` bytes a second from `start`, one read every `step`."""
    count = round(seconds / step)
    return [[start + n * step, rate * n * step] for n in range(count + 1)]


# --- levels and /proc ------------------------------------------------------------------------------------------


def test_levels_climb_one_two_five_ten_then_double_up_to_the_cap() -> None:
    assert report.viewer_levels() == [1, 2, 5, 10, 20, 40, 80]
    assert report.viewer_levels(30) == [1, 2, 5, 10, 20, 30]
    assert report.viewer_levels(3) == [1, 2, 3]
    assert report.viewer_levels(1) == [1]
    with pytest.raises(ValueError):
        report.viewer_levels(0)


def test_process_ticks_count_from_the_last_parenthesis() -> None:
    # A command name with spaces and parentheses must not shift the fields.
    stat = "4242 (nginx: (worker) x) S 4241 4241 4241 0 -1 4194624 100 0 0 0 1234 567 0 0 20 0 1 0 99 0 0"
    assert report.process_ticks(stat) == 1234 + 567
    assert report.parent_pid(stat) == 4241


def test_core_times_take_busy_and_total_per_core() -> None:
    proc_stat = (
        "cpu  300 0 100 1000 50 0 0 10 0 0\n"
        "cpu0 100 0 50 500 25 0 0 5 7 0\n"
        "cpu1 200 0 50 500 25 0 0 5 0 0\n"
        "intr 12345\n"
    )
    cores = report.core_times(proc_stat)
    assert set(cores) == {0, 1}
    # guest time is already inside user: only the first eight columns count; steal is busy.
    assert cores[0] == report.CoreTimes(busy=155, total=680)
    later = report.CoreTimes(busy=155 + 90, total=680 + 100)
    assert report.busy_share(cores[0], later) == pytest.approx(0.9)
    assert report.busy_share(cores[0], cores[0]) is None


def test_smaps_rollup_reads_the_kilobyte_lines() -> None:
    text = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  10240 kB\nPss:   4096 kB\nPss_Anon: 2048 kB\n"
    assert report.smaps_rollup_kb(text) == {"Rss": 10240, "Pss": 4096, "Pss_Anon": 2048}


def test_socket_memory_sums_what_the_sockets_hold_unread_and_queued() -> None:
    listed = (
        "ESTAB 0 0 198.18.0.2:443 198.18.0.1:50000\n"
        "\t skmem:(r1000,rb131072,t5,tb87040,f0,w2000,o0,bl0,d0)\n"
        "ESTAB 0 0 198.18.0.5:41000 198.18.0.6:32400\n"
        "\t skmem:(r300,rb6291456,t0,tb46080,f4096,w0,o0,bl0,d1)\n"
    )
    assert report.socket_memory_bytes(listed) == 1000 + 2000 + 300
    assert report.socket_memory_bytes("") == 0


# --- one viewer ------------------------------------------------------------------------------------------------


def test_a_paced_viewer_gets_its_bitrate_and_never_rebuffers() -> None:
    trace = [[t, b + 4 * RATE] for t, b in paced(10.0)]  # the 4 s buffer at once, then the bitrate
    assert report.delivered_mbit(trace, 4.0, 10.0) == pytest.approx(30.0)
    assert report.rebuffers(trace, 0.0, 10.0) == report.Rebuffers(0, 0.0)


def test_bytes_count_from_the_read_that_brought_them() -> None:
    trace = [[0.0, 0], [1.0, 1000], [2.0, 3000]]
    assert report.bytes_at(trace, 0.5) == 0
    assert report.bytes_at(trace, 1.0) == 1000
    assert report.bytes_at(trace, 9.0) == 3000
    assert report.delivered_mbit(trace, 0.5, 2.0) == pytest.approx(3000 * 8 / 1.5 / 1e6)
    with pytest.raises(ValueError):
        report.delivered_mbit(trace, 2.0, 2.0)


def test_a_gap_longer_than_the_buffer_is_one_rebuffer_of_known_length() -> None:
    # 4 s of content by 1 s, then nothing until 7 s, then plenty: playback starts at 2 s, so the content
    # runs out at 6 s and the viewer is behind from 6 s to 7 s.
    trace = [[0.0, 0], [1.0, 4 * RATE], [7.0, 20 * RATE]]
    result = report.rebuffers(trace, 0.0, 10.0, startup_s=2.0)
    assert result.events == 1
    assert result.stalled_s == pytest.approx(1.0, abs=0.06)


def test_a_slow_viewer_falls_behind_once_and_stays_behind() -> None:
    trace = paced(10.0, rate=RATE * 0.4)
    result = report.rebuffers(trace, 0.0, 10.0, startup_s=2.0)
    assert result.events == 1
    # 40 % of the rate with a 2 s head start: behind from 3.33 s on (0.4 t < t - 2), never catching up.
    assert result.stalled_s == pytest.approx(10.0 - 10.0 / 3, abs=0.11)


def test_nothing_arriving_is_one_stall_for_the_whole_playback() -> None:
    result = report.rebuffers([[0.0, 0]], 0.0, 5.0, startup_s=2.0)
    assert result.events == 1
    assert result.stalled_s == pytest.approx(3.0, abs=0.06)


def test_the_viewer_reads_only_up_to_its_buffer() -> None:
    plan = ViewerPlan("https://x/", "ca.pem", 30.0, startup_s=2.0, max_buffer_s=4.0, range_bytes=1, media_size=10)
    viewer = Viewer(0, plan, offset=0)
    viewer.started = 100.0
    assert viewer.allowed(101.0) == pytest.approx(4 * RATE)  # before playback: the buffer only
    assert viewer.allowed(103.0) == pytest.approx(5 * RATE)  # playing for 1 s
    viewer.total = int(6 * RATE)
    assert viewer.allowed(103.0) < 0


def test_the_viewer_keeps_the_latest_read_and_thins_the_rest() -> None:
    plan = ViewerPlan("https://x/", "ca.pem", 30.0, startup_s=2.0, max_buffer_s=4.0, range_bytes=1, media_size=10)
    viewer = Viewer(0, plan, offset=0)
    for n in range(10):
        viewer.total = n
        viewer.record(n * 0.01)
    # One sample per step at most, and the last one is the latest read: no byte dated after it arrived.
    assert viewer.samples[-1] == (0.09, 9)
    assert len(viewer.samples) <= 3


# --- a level and the run ---------------------------------------------------------------------------------------


def test_which_side_limited_a_level() -> None:
    assert report.limiting_side(0.5, 0.6, 0.5, 1.0) is None
    assert report.limiting_side(0.97, 0.99, 0.5, 1.0) == "pop"
    assert report.limiting_side(0.97, 0.99, 0.99, 0.5) == "pop"  # nginx using its core comes first
    assert report.limiting_side(0.6, 0.7, 0.98, 0.8) == "clients"
    assert report.limiting_side(0.6, 0.99, 0.5, 0.8) == "pop core (other work)"
    # Both cores full: the busier one kept its side waiting.
    assert report.limiting_side(0.24, 0.95, 0.88, 0.7) == "pop core (other work)"
    assert report.limiting_side(0.24, 0.91, 0.97, 0.7) == "clients"
    assert report.limiting_side(0.6, 0.7, 0.5, 0.8) == "undetermined"
    assert report.limiting_side(0.6, None, None, None) == "undetermined"


def cpu_window(nginx_s: float = 1.0, pop: float = 0.5, client: float = 0.5) -> report.CpuWindow:
    return report.CpuWindow(
        seconds=10.0, nginx_cpu_s=nginx_s, pop_core_busy=pop, client_core_busy=client, client_side_cpu_s=3.0
    )


MEMORY = {
    "rss_before": 10_000,
    "rss_peak": 30_480,
    "pss_before": 8_000,
    "pss_peak": 28_480,
    "sockets_before": 100,
    "sockets_peak": 8_292,
}


def level_of(viewers: int, traces: list[dict[str, Any]], cpu: report.CpuWindow) -> dict[str, Any]:
    return report.summarize_level(viewers, traces, cpu, (5.0, 15.0), MEMORY)


def test_a_clean_level_has_its_rate_cpu_cost_and_memory_per_stream() -> None:
    traces = [{"started": 0.0, "samples": paced(15.0), "errors": []} for _ in range(2)]
    level = level_of(2, traces, cpu_window(nginx_s=0.15))
    assert level["rate_mbit"]["min"] == pytest.approx(30.0)
    assert level["relayed_gb"] == pytest.approx(2 * RATE * 10 / 1e9)
    assert level["cpu_s_per_gb"] == pytest.approx(0.15 / (2 * RATE * 10 / 1e9))
    assert level["nginx_core_share"] == pytest.approx(0.015)
    assert level["rss_per_stream_mb"] == pytest.approx(10.0)  # 20,480 kB over two viewers
    assert level["pss_per_stream_mb"] == pytest.approx(10.0)
    assert level["sockets_per_stream_mb"] == pytest.approx(4.0)
    assert level["rebuffer_events"] == 0
    assert not level["saturated"]
    assert level["limited_by"] is None
    json.dumps(level)


def test_a_slow_viewer_saturates_the_level_and_the_full_core_is_named() -> None:
    slow = {"started": 0.0, "samples": paced(15.0, rate=RATE * 0.8), "errors": ["TimeoutError: x"]}
    fine = {"started": 0.0, "samples": paced(15.0), "errors": []}
    level = level_of(2, [slow, fine], cpu_window(client=0.99))
    assert level["slowest_share_of_bitrate"] == pytest.approx(0.8)
    assert level["saturated"]
    assert level["limited_by"] == "clients"
    assert level["viewers_rebuffered"] == 1
    assert level["error_count"] == 1


def test_a_viewer_that_never_reported_counts_as_getting_nothing() -> None:
    level = level_of(3, [{"started": 0.0, "samples": paced(15.0), "errors": []}], cpu_window())
    assert level["missing_viewers"] == 2
    assert level["rate_mbit"]["min"] == 0.0
    assert level["viewers_rebuffered"] == 2
    assert level["saturated"]


def test_nginx_at_its_core_saturates_even_with_every_viewer_served() -> None:
    traces = [{"started": 0.0, "samples": paced(15.0), "errors": []}]
    level = level_of(1, traces, cpu_window(nginx_s=9.7))
    assert level["saturated"]
    assert level["limited_by"] == "pop"


def fake_level(viewers: int, cost: float | None, saturated: bool = False, pss: float = 2.0) -> dict[str, Any]:
    return {
        "viewers": viewers,
        "cpu_s_per_gb": cost,
        "saturated": saturated,
        "limited_by": "clients" if saturated else None,
        "pss_per_stream_mb": pss,
        "sockets_per_stream_mb": 1.5,
    }


def test_viewers_per_core_come_from_the_cpu_cost_of_the_clean_levels() -> None:
    levels = [fake_level(1, 9.0), fake_level(5, 1.5), fake_level(10, 2.0, pss=3.0), fake_level(20, 1.0, True)]
    per_core = report.viewers_per_core(levels)
    # The largest clean level's cost: 2 CPU s per GB at 3.75 MB/s a viewer is 0.0075 of a core each, so
    # 126 viewers to 95 %.
    assert per_core["cpu_s_per_gb"] == pytest.approx(2.0)
    assert per_core["estimated_viewers_per_core"] == 126
    assert per_core["largest_clean_level"] == 10
    assert per_core["saturated_at"] == 20
    assert per_core["limited_by"] == "clients"
    # nginx's own memory and its sockets', the largest over the clean levels of five or more.
    assert per_core["memory_per_stream_mb"] == 4.5
    nothing = report.viewers_per_core([fake_level(1, None, True)])
    assert nothing["estimated_viewers_per_core"] is None
    assert nothing["largest_clean_level"] is None


def test_every_size_the_program_offers_has_a_network_cap_and_a_row() -> None:
    sizes = {(provider, slug) for provider, table in regions.PROVIDERS.items() for slug in table.sizes}
    assert sizes == set(capacity.NETWORK_OUT_MBIT)
    rows = report.viewers_per_size(100, 4.0)
    assert {(row["provider"], row["size"]) for row in rows} == sizes


def test_viewers_per_size_is_the_tightest_of_cpu_network_and_memory() -> None:
    rows = {row["size"]: row for row in report.viewers_per_size(100, 4.0)}
    nanode = rows["g6-nanode-1"]  # 1 vCPU, 1 GB, 1 Gbps out
    assert nanode["limits"] == {"cpu": 100, "network": 33, "memory": (1024 - 300) // 4}
    assert (nanode["viewers"], nanode["bound_by"]) == (33, "network")
    four = {row["size"]: row for row in report.viewers_per_size(20, 4.0)}["g6-standard-4"]  # 4 vCPU, 5 Gbps
    assert (four["viewers"], four["bound_by"]) == (80, "cpu")
    unknown = report.viewers_per_size(None, None)[0]
    assert unknown["bound_by"] == "network"
    assert unknown["limits"]["cpu"] is None


def results_of(levels: list[dict[str, Any]]) -> dict[str, Any]:
    per_core = report.viewers_per_core(levels)
    return {
        "machine": {"date": "2026-01-01T00:00:00+00:00", "hostname": "h", "cpu": "c", "cores": 2, "kernel": "6"},
        "mode": "short",
        "duration_s": 42.0,
        "pop": "us",
        "pop_core": 0,
        "client_core": 1,
        "busy_machine": "the machine was busy.",
        "memory_limit": {"enforced": False, "how": "", "why_not": "no memory controller"},
        "plan": {**capacity_bench.SHORT.__dict__, "warmup_s": capacity_bench.SHORT.warmup_s},
        "levels": levels,
        "per_core": per_core,
        "sizes": report.viewers_per_size(per_core["estimated_viewers_per_core"], per_core["memory_per_stream_mb"]),
    }


def test_the_report_has_a_row_per_level_and_says_what_limited_it() -> None:
    clean = level_of(1, [{"started": 0.0, "samples": paced(15.0), "errors": []}], cpu_window(nginx_s=0.1))
    slow = level_of(2, [{"started": 0.0, "samples": paced(15.0, rate=RATE / 2), "errors": []}], cpu_window(client=1))
    text = report.markdown_report(results_of([clean, slow]))
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2
    assert rows[0].endswith("| no |")
    assert rows[1].endswith("| yes: clients |")
    assert "saturated at 2 viewers, limited by **clients**" in text
    assert "not enforced (no memory controller)" in text
    assert "Note: the machine was busy." in text
    # Both levels had the POP core half busy with nginx at a few per cent: the rest was other work.
    assert "Note: other work ran on nginx's core during the levels (up to 49 %" in text
    assert "| linode | `g6-nanode-1` | 1 | 1 | 1000 |" in text


def test_other_work_on_the_pop_core_is_noted_only_when_it_matters() -> None:
    quiet: list[dict[str, Any]] = [
        {"pop_core_busy": 0.55, "nginx_core_share": 0.5},
        {"pop_core_busy": None, "nginx_core_share": 0.1},
    ]
    assert report.other_work_note(quiet) is None
    assert report.other_work_note([]) is None
    noisy = [{"pop_core_busy": 0.9, "nginx_core_share": 0.2}]
    assert "up to 70 %" in (report.other_work_note(noisy) or "")


def test_the_tables_mark_missing_figures() -> None:
    level = level_of(1, [{"started": 0.0, "samples": [[0.0, 0]], "errors": []}], cpu_window())
    assert level["cpu_s_per_gb"] is None
    table = report.levels_table(
        [{**level, "pss_per_stream_mb": None, "rss_per_stream_mb": None, "sockets_per_stream_mb": None}]
    )
    assert "n/a / n/a / n/a" in table
    assert "| n/a |" in report.sizes_table(report.viewers_per_size(None, None))


# --- the command line and the plans ----------------------------------------------------------------------------


def test_bench_keeps_its_wan_default_and_takes_capacity_as_a_mode() -> None:
    parser = labs_cli.build_parser()
    plain = parser.parse_args(["bench", "--short"])
    assert (plain.benchmark, plain.short) == ("wan", True)
    capacity = parser.parse_args(["bench", "capacity", "--short", "--max-viewers", "10", "--out", "o"])
    assert (capacity.benchmark, capacity.short, capacity.max_viewers, capacity.out) == ("capacity", True, 10, "o")
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "capacity", "--max-viewers", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "bogus"])


def test_capacity_options_are_refused_for_the_wan_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    args = labs_cli.build_parser().parse_args(["bench", "--max-viewers", "5"])
    assert args.handler(args) == 2
    assert "bench capacity" in capsys.readouterr().err


def test_plans_leave_a_steady_window_after_the_warm_up() -> None:
    for plan in (capacity_bench.FULL, capacity_bench.SHORT):
        assert plan.level_s - plan.warmup_s >= 2.0
        assert plan.warmup_s == plan.ramp_s + plan.startup_s + 1.0
    assert capacity_bench.plan_for(short=False) == capacity_bench.FULL
    quick = capacity_bench.plan_for(short=True, max_viewers=5, level_s=6.0)
    assert (quick.max_viewers, quick.level_s, quick.ramp_s) == (5, 6.0, 0.75)
    with pytest.raises(ValueError):
        capacity_bench.plan_for(short=True, level_s=3.0)


def test_the_capacity_lab_is_the_first_hub_alone(example_config: StackConfig) -> None:
    config, pop = capacity_bench.single_pop(example_config)
    assert pop == "us"
    assert [p.name for p in config.pops] == ["us"]
    assert config.pop("us").upstream == "origin"
