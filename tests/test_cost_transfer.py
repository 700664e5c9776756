"""The transfer part of the monthly estimate: viewing hours become bytes leaving each POP on the way from the
origin, summed per provider pool against the allowances the providers publish. Every expected number here is
worked out in the test from the published figures, not read back from the code under test."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from plexcdn import regions, topology, transfer
from plexcdn.__main__ import main
from plexcdn.config import ConfigError, StackConfig, parse_config
from plexcdn.cost import estimate
from tests.conftest import example_values, five_pop_values, write_stack

GIB = 2**30
GB = 10**9
# One hour at 30 Mbit/s: 30e6 / 8 bytes a second for 3,600 seconds.
FOUR_K_HOUR = 13_500_000_000

# The allowances as the providers publish them: DigitalOcean in GiB (docs.digitalocean.com, Droplet pricing),
# Linode in GB (linode.com/pricing); the overage per unit beyond the pool.
PUBLISHED_ALLOWANCE = {
    ("digitalocean", "s-1vcpu-512mb-10gb"): 500 * GIB,
    ("digitalocean", "s-1vcpu-1gb"): 1_000 * GIB,
    ("digitalocean", "s-1vcpu-2gb"): 2_000 * GIB,
    ("digitalocean", "s-2vcpu-2gb"): 3_000 * GIB,
    ("digitalocean", "s-2vcpu-4gb"): 4_000 * GIB,
    ("digitalocean", "s-4vcpu-8gb"): 5_000 * GIB,
    ("digitalocean", "c-2"): 4_000 * GIB,
    ("digitalocean", "c-4"): 5_000 * GIB,
    ("linode", "g6-nanode-1"): 1_000 * GB,
    ("linode", "g6-standard-1"): 2_000 * GB,
    ("linode", "g6-standard-2"): 4_000 * GB,
    ("linode", "g6-standard-4"): 5_000 * GB,
    ("linode", "g6-dedicated-2"): 4_000 * GB,
    ("linode", "g6-dedicated-4"): 5_000 * GB,
}
PUBLISHED_OVERAGE = {"digitalocean": Decimal("0.01"), "linode": Decimal("0.005")}


def config_with(values: dict[str, Any], viewing: dict[str, Any] | None) -> StackConfig:
    values = dict(values)
    values.pop("viewing", None)
    if viewing is not None:
        values["viewing"] = viewing
    return parse_config(values, "dev")


def one_hub(provider: str, region: str, size: str) -> dict[str, Any]:
    values = example_values()
    values["pops"] = [{"name": "home", "provider": provider, "region": region, "size": size, "upstream": "origin"}]
    return values


def pool(config: StackConfig, provider: str, region: str | None = None) -> transfer.Pool:
    found = [p for p in estimate(config).transfer_out.pools if (p.provider, p.region) == (provider, region)]
    assert len(found) == 1, estimate(config).transfer_out.pools
    return found[0]


def test_an_hour_at_30_mbit_weighs_13_5_gb() -> None:
    assert transfer.stream_bytes(1, 30) == FOUR_K_HOUR
    assert transfer.stream_bytes(2, 8.5) == 2 * 8_500_000 // 8 * 3600


@pytest.mark.parametrize(("provider", "size"), sorted(PUBLISHED_ALLOWANCE))
def test_each_size_adds_its_published_allowance_to_its_pool(provider: str, size: str) -> None:
    region = "nyc3" if provider == "digitalocean" else "us-east"
    assert (
        pool(config_with(one_hub(provider, region, size), None), provider).allowance_bytes
        == (PUBLISHED_ALLOWANCE[(provider, size)])
    )


def test_the_overage_prices_are_the_published_ones() -> None:
    for provider, price in PUBLISHED_OVERAGE.items():
        assert regions.overage_usd_per_unit((provider, None)) == price
    assert regions.overage_usd_per_unit(regions.transfer_pool("linode", "id-cgk")) == Decimal("0.015")
    assert regions.overage_usd_per_unit(regions.transfer_pool("linode", "br-gru")) == Decimal("0.007")


def test_a_relayed_hour_leaves_the_edge_and_the_hub_and_a_hub_viewer_only_the_hub() -> None:
    # The example: hub `us` on DigitalOcean, edge `asia` on Linode relaying through it; 100 hours, 50 on each.
    config = config_with(example_values(), {"hoursPerMonth": 100})
    moved = estimate(config).transfer_out
    assert moved.per_pop_bytes == {"us": 100 * FOUR_K_HOUR, "asia": 50 * FOUR_K_HOUR}
    assert pool(config, "digitalocean").expected_bytes == 1_350_000_000_000
    assert pool(config, "linode").expected_bytes == 675_000_000_000
    # 1,350 GB is over 1,000 GiB by 276,258,176,000 bytes: 257.28 GiB at $0.01, up to the cent.
    assert pool(config, "digitalocean").overage_usd == Decimal("2.58")
    assert pool(config, "linode").overage_bytes == 0 and pool(config, "linode").left_bytes == 325 * GB


def test_viewers_on_a_hub_alone_count_once() -> None:
    config = config_with(one_hub("linode", "us-east", "g6-nanode-1"), {"hoursPerMonth": 100})
    moved = estimate(config).transfer_out
    assert moved.landing == ("home",)
    assert moved.per_pop_bytes == {"home": 100 * FOUR_K_HOUR}


def test_a_tree_spreads_the_hours_evenly_and_counts_each_pop_on_the_way() -> None:
    # us and eu are hubs; asia relays through us, sg through asia and us, uk through eu. A fifth of the hours
    # lands on each, and leaves every POP on its path to the origin.
    config = config_with(five_pop_values(), {"hoursPerMonth": 100, "bitrateMbps": 30})
    fifth = 20 * FOUR_K_HOUR
    paths = {"us": ["us"], "eu": ["eu"], "asia": ["asia", "us"], "sg": ["sg", "asia", "us"], "uk": ["uk", "eu"]}
    expected = {name: sum(fifth for path in paths.values() if name in path) for name in paths}
    assert expected == {"us": 3 * fifth, "eu": 2 * fifth, "asia": 2 * fifth, "sg": fifth, "uk": fifth}
    moved = estimate(config).transfer_out
    assert moved.per_pop_bytes == expected
    assert pool(config, "digitalocean").expected_bytes == expected["us"] + expected["sg"] + expected["uk"]
    assert pool(config, "linode").expected_bytes == expected["eu"] + expected["asia"]
    # us, sg (1,000 GiB each) and uk (2,000 GiB); eu and asia (1,000 GB each).
    assert pool(config, "digitalocean").allowance_bytes == 4_000 * GIB
    assert pool(config, "linode").allowance_bytes == 2_000 * GB
    # An hour of 4K sends one hour out of DigitalOcean (3/5 + 1/5 + 1/5) and 4/5 of one out of Linode.
    assert pool(config, "digitalocean").four_k_hours == math.floor(4_000 * GIB / FOUR_K_HOUR) == 318
    assert pool(config, "linode").four_k_hours == math.floor(2_000 * GB / (FOUR_K_HOUR * 4 / 5)) == 185
    assert moved.four_k_hours == 185 and moved.first_to_run_out is not None
    assert moved.first_to_run_out.provider == "linode"


def test_overage_is_rounded_up_to_the_cent_once_and_not_by_float_error() -> None:
    # 80 hours on one 1,000 GiB Droplet: 1,080,000,000,000 bytes, 6,258,176,000 over: 5.828 GiB, 5.83 cents.
    droplet = config_with(one_hub("digitalocean", "nyc3", "s-1vcpu-1gb"), {"hoursPerMonth": 80})
    over = 80 * FOUR_K_HOUR - 1_000 * GIB
    assert pool(droplet, "digitalocean").overage_bytes == over == 6_258_176_000
    assert pool(droplet, "digitalocean").overage_usd == Decimal("0.06")
    # 100 hours on a Nanode: 350 GB over at $0.005 is exactly $1.75, not a cent more.
    nanode = config_with(one_hub("linode", "us-east", "g6-nanode-1"), {"hoursPerMonth": 100})
    assert pool(nanode, "linode").overage_usd == Decimal("1.75")
    # A megabyte short of the allowance (a bitrate as Pulumi's strings give it): nothing to pay.
    short = config_with(one_hub("linode", "us-east", "g6-nanode-1"), {"hoursPerMonth": 10, "bitrateMbps": "222.222"})
    assert pool(short, "linode").expected_bytes == 10 * 222_222_000 // 8 * 3600 == 1_000 * GB - 10**6
    assert pool(short, "linode").left_bytes == 10**6 and pool(short, "linode").overage_usd == Decimal("0")


def test_jakarta_and_sao_paulo_keep_pools_of_their_own_at_their_own_price() -> None:
    values = example_values()
    values["pops"] = [
        {"name": "us", "provider": "linode", "region": "us-east", "size": "g6-nanode-1", "upstream": "origin"},
        {"name": "id", "provider": "linode", "region": "id-cgk", "size": "g6-nanode-1", "upstream": "us"},
    ]
    config = config_with(values, {"hoursPerMonth": 200})
    own = pool(config, "linode", "id-cgk")
    assert own.allowance_bytes == 1_000 * GB and pool(config, "linode").allowance_bytes == 1_000 * GB
    # 100 hours land on id and leave it once: 1,350 GB, 350 over at $0.015.
    assert own.expected_bytes == 100 * FOUR_K_HOUR
    assert own.overage_usd == Decimal("5.25")
    # us sends its own 100 hours and id's: 2,700 GB, 1,700 over at $0.005.
    assert pool(config, "linode").overage_usd == Decimal("8.50")
    assert estimate(config).transfer_overage_usd == pytest.approx(13.75)
    assert "Jakarta" in own.name


def test_other_vms_add_their_allowance_but_no_viewing() -> None:
    places = topology.places(config_with(one_hub("linode", "us-east", "g6-nanode-1"), None))
    slave = transfer.Vm("transcode-gpu", "linode", "us-east", regions.size("linode", "g6-standard-4"))
    hub = transfer.Vm("home", "linode", "us-east", regions.size("linode", "g6-nanode-1"))
    moved = transfer.estimate(places, [hub, slave], 100, 30)
    (only,) = moved.pools
    assert only.allowance_bytes == 6_000 * GB and only.expected_bytes == 100 * FOUR_K_HOUR
    lone = transfer.estimate(places, [hub, transfer.Vm("library-x", "digitalocean", "nyc3", slave.size)], 100, 30)
    do_pool = next(p for p in lone.pools if p.provider == "digitalocean")
    assert do_pool.four_k_hours is None and do_pool.expected_bytes == 0


def test_the_total_adds_the_overage_to_the_vms_and_health_checks() -> None:
    config = config_with(example_values(), {"hoursPerMonth": 100})
    cost = estimate(config)
    assert cost.transfer_overage_usd == 2.58
    assert cost.total_usd == round(6 + 5 + 2 * regions.ROUTE53_HEALTH_CHECK_USD + 2.58, 2)
    assert estimate(config_with(example_values(), None)).transfer_overage_usd == 0


def test_viewing_over_a_pool_is_a_warning_naming_the_setting_and_under_it_none() -> None:
    over = config_with(example_values(), {"hoursPerMonth": 100})
    warned = [w for w in over.warnings if w.startswith("viewing.hoursPerMonth: ")]
    assert len(warned) == 1, over.warnings
    assert "digitalocean" in warned[0] and "$2.58" in warned[0] and "79 hours of 4K" in warned[0]
    under = config_with(example_values(), {"hoursPerMonth": 60})
    assert not [w for w in under.warnings if w.startswith("viewing.")]


def test_only_hours_given_means_4k() -> None:
    config = config_with(example_values(), {"hoursPerMonth": "40"})
    assert config.viewing is not None and config.viewing.bitrate_mbps == 30
    assert estimate(config).transfer_out.per_pop_bytes["us"] == 40 * FOUR_K_HOUR


@pytest.mark.parametrize(
    ("viewing", "expected"),
    [
        ({}, "viewing.hoursPerMonth: is required: the hours of video all viewers together watch"),
        ({"hoursPerMonth": -1}, "viewing.hoursPerMonth: must be a whole number of hours from 0 to 100000, got -1"),
        ({"hoursPerMonth": 10, "bitrateMbps": "fast"}, "viewing.bitrateMbps: must be a bitrate in Mbit/s from 0.1"),
        ({"hoursPerMonth": 10, "bitrateMbps": 0}, "viewing.bitrateMbps: must be a bitrate in Mbit/s from 0.1 to 500"),
        ({"hoursPerMonth": 10, "bitrateMbps": True}, "viewing.bitrateMbps: must be a bitrate in Mbit/s"),
        ({"hoursPerMonth": 10, "perPop": 1}, "viewing.perPop: unknown setting; valid settings here: hoursPerMonth"),
    ],
)
def test_a_wrong_viewing_names_the_setting_and_what_would_be_valid(viewing: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_with(example_values(), viewing)
    assert [p for p in caught.value.problems if p.startswith(expected)], caught.value.problems


def test_validate_prints_each_pool_and_says_how_the_hours_were_spread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = example_values()
    values["viewing"] = {"hoursPerMonth": 100}
    assert main(["validate", str(write_stack(tmp_path / "Pulumi.dev.yaml", values))]) == 0
    out, err = capsys.readouterr()
    assert "estimated monthly cost: $15.08 (prices as of 2025-06; $2.58 of it transfer beyond the allowances)" in out
    assert "spread evenly over the 2 POPs viewers land on (asia, us): the stack file does not say where" in out
    assert (
        "  digitalocean: allowance 1,000.0 GiB (us; $0.01/GiB beyond it, as of 2025-05), expected 1,257.3 GiB, "
        "over by 257.3 GiB: $2.58 a month, covers 79 hours of 4K (30 Mbit/s) a month"
    ) in out
    assert (
        "  linode: allowance 1,000.0 GB (asia; $0.005/GB beyond it, as of 2023-10), expected 675.0 GB, 325.0 GB left"
        in out
    )
    assert "the stack's allowances cover 79 hours of 4K (30 Mbit/s) a month" in out
    assert "warning: viewing.hoursPerMonth: " in err
