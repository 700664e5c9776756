"""The tunnel filters' rendering; tests/lab/test_home_tunnel_filter.py loads them and tries every port."""

from __future__ import annotations

import re

import pytest

from plexcdn import render, tunnel_filter
from plexcdn.transcode import render as tr
from tests.conftest import config_from, wireguard_values
from tests.transcode_fixtures import transcode_values


def test_the_hub_is_admitted_to_plex_only_and_the_table_rides_in_the_home_config() -> None:
    config = config_from(wireguard_values())
    text = render.wireguard_home_conf(config, config.pops[0].name, render.PLACEHOLDER_WIREGUARD_KEYS)
    hub, home = config.origin.hub_tunnel_address, config.origin.home_tunnel_address
    pre_up = [line for line in text.splitlines() if line.startswith("PreUp = ")]
    assert len(pre_up) == 1
    assert f"ip saddr {hub} ip daddr {home} tcp dport {config.origin.port} accept" in pre_up[0]
    accepted = re.findall(r'iifname "%i"[^;]* accept;', pre_up[0])
    assert len(accepted) == 2, "established answers and the hub's Plex port, nothing more"
    assert 'iifname "%i" counter drop' in pre_up[0] and "hook forward" in pre_up[0]
    assert f"PostDown = nft delete table inet {render.HUB_TUNNEL_FILTER_TABLE}" in text
    assert text.index("PreUp") < text.index("[Peer]"), "wg-quick reads hooks in [Interface]"


def test_each_cloud_slave_is_admitted_to_nfs_only() -> None:
    config = config_from(transcode_values())
    transcode = config.transcode
    assert transcode is not None
    text = tr.origin_wireguard_conf(config, tr.placeholder_peers(config))
    for slave in transcode.cloud_slaves:
        rule = f"ip saddr {transcode.tunnel_address(slave.name)} ip daddr {transcode.origin_tunnel_address}"
        assert f"{rule} tcp dport {tr.NFS_PORT} accept" in text
    assert text.count("tcp dport") == len(transcode.cloud_slaves)


def test_admissions_and_tables_are_checked() -> None:
    with pytest.raises(ValueError, match="IPv4"):
        tunnel_filter.Admission("fd00::1", "10.0.0.1", 1, "x")
    with pytest.raises(ValueError, match="port"):
        tunnel_filter.Admission("10.0.0.2", "10.0.0.1", 0, "x")
    with pytest.raises(ValueError, match="table"):
        tunnel_filter.rules("evil; flush ruleset", [])
    assert "'" not in tunnel_filter.rules("plexcdn_t", [tunnel_filter.Admission("10.0.0.2", "10.0.0.1", 2049, "x")])
