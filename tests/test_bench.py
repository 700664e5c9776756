"""The WAN benchmark's pure parts: the player model, the summaries, the baseline config and the POP
sysctls; and the benchmark's viewer against the lab origin on loopback. The benchmark itself
(`python -m labs bench`) is not a test: it prints and writes numbers and asserts nothing about them."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labs import bench_client, render_lab_template
from labs import wan_bench as lab_wanbench
from labs import wan_bench_report as wanbench
from labs.lab_ca import LabCA
from labs.plex_standin import BackgroundOrigin, OriginSettings, make_media_file, server_tls_context
from labs.wan_bench_report import PlayerModel, PlayerSettings, simulate_playback
from plexcdn import render
from plexcdn.config import StackConfig

MB = 1_000_000
# 8 Mbit/s: one megabyte is one second of content, so the expected figures below can be read off.
ONE_MB_PER_S = PlayerSettings(bitrate_mbit=8.0, start_buffer_s=2.0, resume_buffer_s=2.0, max_buffer_s=6.0)


# --- the player model ----------------------------------------------------------------------------------


def test_arrivals_ahead_of_the_bitrate_never_rebuffer() -> None:
    arrivals = [(0.1 * n, 200_000) for n in range(1, 101)]  # 2 MB/s for 10 s
    result = simulate_playback(arrivals, ONE_MB_PER_S, window_s=10.0)
    assert result.startup_delay_s == pytest.approx(1.0)  # 2 s of content after ten 0.2 MB chunks
    assert result.rebuffer_events == 0
    assert result.stall_seconds == 0.0
    assert result.played_s == pytest.approx(9.0)


def test_a_gap_in_the_arrivals_is_one_rebuffer_of_known_length() -> None:
    # 3 s of content at t=1, the next 3 s at t=6: plays 1..4, stalls 4..6, plays 6..9, stalls 9..10.
    result = simulate_playback([(1.0, 3 * MB), (6.0, 3 * MB)], ONE_MB_PER_S, window_s=10.0)
    assert result.startup_delay_s == pytest.approx(1.0)
    assert result.rebuffer_events == 2
    assert result.stall_seconds == pytest.approx(2.0 + 1.0)
    assert result.played_s == pytest.approx(6.0)
    assert result.played_fraction == pytest.approx(0.6)


def test_resume_waits_for_the_resume_buffer_not_the_first_byte() -> None:
    settings = PlayerSettings(bitrate_mbit=8.0, start_buffer_s=1.0, resume_buffer_s=3.0, max_buffer_s=6.0)
    # Start at t=0 with 1 s; dry at t=1; half a second arrives at t=2 (not enough), 2.5 s more at t=4.
    arrivals = [(0.0, 1 * MB), (2.0, MB // 2), (4.0, 5 * MB // 2)]
    result = simulate_playback(arrivals, settings, window_s=5.0)
    assert result.startup_delay_s == 0.0
    assert result.rebuffer_events == 1
    assert result.stall_seconds == pytest.approx(3.0)
    assert result.played_s == pytest.approx(2.0)


def test_a_stream_at_half_the_bitrate_stalls_every_cycle() -> None:
    # 0.5 MB/s for a 1 MB/s stream: start at 4 s, then play 4 s (the buffer drains at 0.5 s/s), stall
    # 4 s to refill 2 s of content, and so on: dry at 8, 16 and 24, playing again at 12, 20 and 28.
    arrivals = [(0.2 * n, 100_000) for n in range(1, 151)]
    result = simulate_playback(arrivals, ONE_MB_PER_S, window_s=30.0)
    assert result.startup_delay_s == pytest.approx(4.0)
    assert result.rebuffer_events == 3
    assert result.stall_seconds == pytest.approx(12.0, abs=0.5)
    assert result.played_s == pytest.approx(30.0 - 4.0 - result.stall_seconds, abs=1e-6)


def test_too_little_data_never_starts() -> None:
    result = simulate_playback([(0.5, MB), (5.0, MB // 2)], ONE_MB_PER_S, window_s=10.0)
    assert result.startup_delay_s is None
    assert (result.rebuffer_events, result.stall_seconds, result.played_s) == (0, 0.0, 0.0)
    assert result.to_dict()["played_fraction"] == 0.0


def test_arrivals_after_the_window_are_ignored() -> None:
    result = simulate_playback([(1.0, 3 * MB), (11.0, 10 * MB)], ONE_MB_PER_S, window_s=10.0)
    assert result.played_s == pytest.approx(3.0)
    assert result.stall_seconds == pytest.approx(6.0)


def test_the_model_reports_the_buffer_a_player_throttles_on() -> None:
    model = PlayerModel(ONE_MB_PER_S, started_at=100.0)
    model.receive(100.5, 5 * MB)
    assert model.ahead_s(100.5) == pytest.approx(5.0)
    assert model.ahead_s(102.5) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="backwards"):
        model.receive(101.0, 1)


def test_player_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="bitrate"):
        PlayerSettings(bitrate_mbit=0.0)
    with pytest.raises(ValueError, match="within max_buffer_s"):
        PlayerSettings(bitrate_mbit=8.0, start_buffer_s=10.0, max_buffer_s=6.0)


# --- summaries -----------------------------------------------------------------------------------------


def test_spread_ignores_missing_values_and_keeps_them_listed() -> None:
    stat = wanbench.spread([3.0, None, 1.0, 2.0, float("inf")])
    assert (stat["median"], stat["min"], stat["max"], stat["n"]) == (2.0, 1.0, 3.0, 3)
    assert stat["values"][1] is None
    assert wanbench.spread([None])["median"] is None
    assert wanbench.ratio(None, 40.0) is None
    assert wanbench.ratio(10.0, 40.0) == 0.25


def _rep(second_half_mbit: float, startups: list[float], seeks: list[float], rebuffers: int) -> dict[str, Any]:
    playback = {"startup_delay_s": 1.0, "rebuffer_events": rebuffers, "stall_seconds": 2.0 * rebuffers}
    return {
        "startup_cold": {"ttfb_s": 0.66},
        "startups": [{"ttfb_s": value} for value in startups],
        "seeks": {"ttfb_s": seeks},
        "throughput": {"second_half_mbit": second_half_mbit, "mbit": second_half_mbit - 1},
        "playback": {"60": {**playback, "played_fraction": 0.5}, "30": {**playback, "played_fraction": 0.9}},
    }


def test_scenario_figures_are_ratios_to_the_physical_limits() -> None:
    reps = [_rep(30.0, [0.22, 0.44], [0.22, 0.22], 3), _rep(10.0, [0.66], [0.44], 5), _rep(20.0, [], [], 4)]
    result = lab_wanbench.scenario_result(reps, path_rtt_s=0.22, plan=lab_wanbench.SHORT)
    assert result["throughput_ratio"] == pytest.approx(20.0 / lab_wanbench.LINK_RATE_MBIT)
    assert result["summary"]["throughput_ratio"]["min"] == pytest.approx(10.0 / 40.0)
    assert result["startup_s"] == pytest.approx(0.44)  # pooled over the repetitions' fresh sessions
    assert result["startup_rtt"] == pytest.approx(2.0)
    assert result["seek_ttfb_rtt"] == pytest.approx(1.0)
    assert result["summary"]["seek_ttfb_rtt"]["max"] == pytest.approx(2.0)
    assert result["rebuffer_events"] == 4  # the first bitrate, 60 Mbit/s, is the headline
    assert result["stall_seconds"] == pytest.approx(8.0)
    assert result["rebuffer_events_30mbit"] == 4
    assert result["repetitions"] == reps


def test_markdown_table_has_a_column_per_scenario_and_marks_missing_figures() -> None:
    reps = [_rep(20.0, [0.3], [0.25], 1)]
    scenarios = {
        "direct": lab_wanbench.scenario_result([_rep(1.0, [0.9], [0.22], 0)], 0.22, lab_wanbench.SHORT),
        "plex-cdn": lab_wanbench.scenario_result(reps, 0.22, lab_wanbench.SHORT),
    }
    scenarios["direct"]["summary"]["playback_60.startup_delay_s"] = wanbench.spread([None])
    never = _rep(0.5, [0.9], [0.22], 0)
    never["playback"]["30"]["startup_delay_s"] = None
    scenarios["seed"] = lab_wanbench.scenario_result([never], 0.22, lab_wanbench.SHORT)
    table = wanbench.markdown_table({"scenarios": scenarios, "profile": {"player": {"bitrates_mbit": [60.0, 30.0]}}})
    lines = table.splitlines()
    assert lines[0] == "| Metric | `direct` | `seed` | `plex-cdn` |"
    row = next(line for line in lines if line.startswith("| Throughput / bottleneck rate"))
    assert row == "| Throughput / bottleneck rate | 0.03 | 0.01 | 0.50 |"
    assert "| 60 Mbit/s playback: startup, s | n/a | 1.0 | 1.0 |" in lines
    # A playback that never started has no rebuffers to count, which is not the same as none.
    assert "| 30 Mbit/s playback: rebuffer events | 0 | did not start | 1 |" in lines
    assert "| 30 Mbit/s playback: share of window played | 90 % | 90 % | 90 % |" in lines


# --- what the POPs run ---------------------------------------------------------------------------------


HUB_ADDRESS = {"us": "198.18.0.6"}


def _in(seconds: float) -> float:
    return time.monotonic() + seconds


def test_seed_config_renders_and_differs_where_it_must(example_config: StackConfig) -> None:
    for place_name in ("us", "asia"):
        seed = wanbench.seed_nginx_conf(example_config, place_name, "/lab/pops/x", HUB_ADDRESS)
        real = render.nginx_files(example_config, place_name, prefix="/lab/pops/x", addresses=HUB_ADDRESS)
        real_text = "\n".join(real.values())
        # The real config keeps upstream connections open and asks for an upgrade only when the viewer did.
        assert re.search(r"^\s*keepalive \d+;", real_text, re.MULTILINE)
        assert "proxy_set_header Connection $plexcdn_connection_upgrade;" in real_text
        # The seed opens a connection per request and always sends "Connection: upgrade".
        directives = "\n".join(line.split("#", 1)[0] for line in seed.splitlines())
        assert not re.search(r"^\s*(keepalive|upstream)\s", directives, re.MULTILINE)
        assert 'proxy_set_header Connection "upgrade";' in seed
        assert "$plexcdn_connection_upgrade" not in seed
        # Same names, certificates and prefix as the real config, so the lab runs either unchanged.
        assert f"/lab/pops/x/etc/letsencrypt/live/{example_config.pop_name(place_name)}/fullchain.pem" in seed
        assert "pid /lab/pops/x/run/nginx.pid;" in seed
        assert seed.count(wanbench.WORKER_PROCESSES_AUTO) == 1
    edge = wanbench.seed_nginx_conf(example_config, "asia", "/p", HUB_ADDRESS)
    hub = wanbench.seed_nginx_conf(example_config, "us", "/p", HUB_ADDRESS)
    assert "proxy_pass https://198.18.0.6:8443;" in edge
    assert f"proxy_ssl_name {example_config.pop_name('us')};" in edge
    assert "proxy_ssl_certificate plexcdn-peer-client.crt;" in edge
    assert f"listen {render.PEER_PORT} ssl;" in hub and f"listen {render.PEER_PORT}" not in edge
    assert f"proxy_pass https://{example_config.origin.host}:{example_config.origin.port};" in hub


def test_seed_template_is_strict_about_its_context(example_config: StackConfig) -> None:
    context = wanbench.seed_context(example_config, "us", "/p", {})
    del context["peer_port"]
    with pytest.raises(Exception, match="peer_port"):
        render_lab_template(wanbench.SEED_TEMPLATE, **context)


def test_workers_are_those_auto_gives_on_the_pop_size(example_config: StackConfig) -> None:
    conf = render.nginx_files(example_config, "us")["nginx.conf"]
    vcpus = example_config.pop("us").size_info.vcpus
    adjusted = wanbench.with_workers_of(conf, vcpus)
    assert f"worker_processes {vcpus};" in adjusted and "worker_processes auto;" not in adjusted
    assert adjusted.replace(f"worker_processes {vcpus};  # auto, on this POP's {vcpus} vCPU", "") == conf.replace(
        "worker_processes auto;", ""
    )
    with pytest.raises(ValueError, match="exactly one"):
        wanbench.with_workers_of(adjusted, vcpus)


def test_pop_sysctls_come_from_the_rendered_cloud_init(example_config: StackConfig) -> None:
    values = wanbench.pop_sysctls(render.cloud_init(example_config, "asia"))
    assert values["net.ipv4.tcp_congestion_control"] == "bbr"
    assert values["net.core.default_qdisc"] == "fq"
    assert values["net.ipv4.tcp_rmem"] == "4096 131072 67108864"
    assert values["net.ipv4.tcp_slow_start_after_idle"] == "0"
    assert not any(key.startswith("#") for key in values)
    # The seed's stock values cover every key the tuning sets, except the qdisc (not per namespace).
    assert set(values) - set(lab_wanbench.STOCK_SYSCTLS) == {lab_wanbench.FQ_KEY}


def test_sysctl_parsing() -> None:
    text = "# comment\n\n; other comment\nnet.a.b = 1\nnet.c =  4096\t131072  6291456 \n"
    assert wanbench.parse_sysctl_conf(text) == {"net.a.b": "1", "net.c": "4096 131072 6291456"}
    with pytest.raises(ValueError, match="not a sysctl"):
        wanbench.parse_sysctl_conf("net.a.b 1\n")
    with pytest.raises(ValueError, match="writes no"):
        wanbench.pop_sysctls("#cloud-config\nwrite_files:\n  - path: /etc/other\n    content: x\n")


def test_hop_profiles_are_the_documented_ones() -> None:
    assert (lab_wanbench.hop_profile("client", "asia").rtt_ms, lab_wanbench.hop_profile("client", "asia").loss) == (
        10.0,
        0.001,
    )
    assert lab_wanbench.hop_profile("asia", "us").name == "cloud-backbone"
    origin_hop = lab_wanbench.hop_profile("us", "origin")
    assert (origin_hop.rtt_ms, origin_hop.loss) == (30.0, 0.001)
    assert (lab_wanbench.DIRECT_PATH.rtt_ms, lab_wanbench.DIRECT_PATH.loss) == (220.0, 0.01)
    rates = {p.rate_mbit for p in (lab_wanbench.VIEWER_HOP, lab_wanbench.BACKBONE_HOP, origin_hop)}
    assert rates == {lab_wanbench.DIRECT_PATH.rate_mbit} == {lab_wanbench.LINK_RATE_MBIT}


# --- the benchmark's viewer, on loopback ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    directory = tmp_path_factory.mktemp("bench-origin")
    ca = LabCA.create(directory / "ca", "bench client test")
    cert = ca.issue(["localhost"], directory / "tls", "localhost")
    media = directory / "media.mkv"
    make_media_file(media, 4 * 1024 * 1024)
    settings = OriginSettings(media=media, headers_log=directory / "headers.jsonl")
    with BackgroundOrigin(settings, tls=server_tls_context(cert.fullchain, cert.privkey)) as running:
        yield f"https://localhost:{running.port}/library/parts/1/file.mkv", str(ca.bundle_path), media


def test_client_seeks_fetch_fresh_offsets_on_one_connection(tls_origin: tuple[str, str, Path]) -> None:
    url, ca, _ = tls_origin
    result = bench_client.seeks(url, ca, 5, rng=random.Random(1), pause_s=0.0, deadline=_in(20))
    assert len(result["ttfb_s"]) == 5
    assert all(value > 0 for value in result["ttfb_s"])


def test_client_probe_and_download_read_whole_responses(tls_origin: tuple[str, str, Path]) -> None:
    url, ca, media = tls_origin
    probe = bench_client.probe(url, ca, 65536, _in(20))
    assert probe["status"] == 206
    assert probe["ttfb_s"] >= probe["tcp_s"] + probe["tls_s"]
    download = bench_client.throughput(url, ca, 1.5)
    assert download["status"] == 206
    # On loopback the whole file arrives well within the window, and nothing more.
    assert download["bytes"] == media.stat().st_size
    assert download["curve"][-1][1] <= download["bytes"]


def test_client_playback_plays_and_stops_reading_when_the_buffer_is_full(tls_origin: tuple[str, str, Path]) -> None:
    url, ca, media = tls_origin
    settings = PlayerSettings(bitrate_mbit=4.0, start_buffer_s=1.0, resume_buffer_s=1.0, max_buffer_s=2.0)
    result = bench_client.playback(url, ca, settings, window_s=2.0)
    assert result["startup_delay_s"] is not None
    assert result["rebuffer_events"] == 0
    # 4 Mbit/s is 0.5 MB per second of content: never more than the window plus the buffer was read.
    most = (2.0 + settings.max_buffer_s + bench_client.READ_AHEAD_STEP_S) * settings.bytes_per_second
    assert result["bytes"] <= most + bench_client.RECV_SIZE
    assert result["bytes"] < media.stat().st_size


def test_agent_scenario_points_the_hub_at_the_agent_and_tunes_the_plex_host(example_config: StackConfig) -> None:
    agent_config = lab_wanbench.with_agent(example_config)
    origin = example_config.origin
    with_agent = "\n".join(render.nginx_files(agent_config, "us", addresses=HUB_ADDRESS).values())
    without = "\n".join(render.nginx_files(example_config, "us", addresses=HUB_ADDRESS).values())
    assert f"{origin.host}:{lab_wanbench.AGENT_PORT}" in with_agent
    assert f"{origin.host}:{lab_wanbench.AGENT_PORT}" not in without
    assert render.ORIGIN_CLIENT_CERT_FILE in with_agent and render.ORIGIN_CLIENT_CERT_FILE not in without
    # Only the hub's hop changes: the edge's config is the same either way.
    assert render.nginx_files(agent_config, "asia", addresses=HUB_ADDRESS) == render.nginx_files(
        example_config, "asia", addresses=HUB_ADDRESS
    )
    tuning = wanbench.agent_sysctls()
    assert tuning["net.ipv4.tcp_congestion_control"] == "bbr"
    assert tuning["net.ipv4.tcp_slow_start_after_idle"] == "0"
    assert set(tuning) <= set(lab_wanbench.STOCK_SYSCTLS) | {lab_wanbench.FQ_KEY}, "every key has a stock value"
