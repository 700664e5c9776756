"""A tunnel peer at the Plex host, with and without the filter the tunnel's rendered wg-quick config loads: a hub
reaches Plex and nothing else, a cloud transcode slave NFS and nothing else, and neither reaches the home network
behind the Plex host. (labs/home_tunnel_lab.py: veth pairs stand in for WireGuard, which this kernel lacks.)"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from labs.home_tunnel_lab import HomeTunnelLab
from labs.netns import lab_unavailable_reason
from plexcdn import render
from plexcdn.transcode import render as tr
from tests.conftest import config_from, wireguard_values
from tests.transcode_fixtures import transcode_values

# Every port a compromised peer would try on the Plex host: SSH, rpcbind, NFS, Plex, the agent, anything else.
PORTS = [22, 111, 2049, 32400, 32443, 8080]

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(lab_unavailable_reason() is not None, reason=f"tunnel lab: {lab_unavailable_reason()}"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (Debian package nftables)"),
]


def hub_config_text() -> tuple[str, str, str, int]:
    values = wireguard_values()
    values["origin"]["tunnelSubnet"] = "198.18.56.0/24"
    config = config_from(values)
    text = render.wireguard_home_conf(config, config.pops[0].name, render.PLACEHOLDER_WIREGUARD_KEYS)
    origin = config.origin
    return text, str(origin.home_tunnel_address), str(origin.hub_tunnel_address), origin.tunnel_subnet.prefixlen


@pytest.fixture
def hub_lab() -> Iterator[tuple[HomeTunnelLab, str]]:
    text, home, hub, prefixlen = hub_config_text()
    with HomeTunnelLab(render.WIREGUARD_INTERFACE, home, hub, prefixlen) as lab:
        lab.listen("home", PORTS)
        lab.listen("lan", [22, 80])
        yield lab, text


def test_a_hub_reaches_plex_and_nothing_else_at_home(hub_lab: tuple[HomeTunnelLab, str]) -> None:
    lab, text = hub_lab
    before = lab.probe("peer", lab.home_address, PORTS)
    assert set(before.outcomes.values()) == {"open"}, "without the filter every port answers the hub"
    assert lab.probe("peer", lab.lan_address, [22, 80]).outcomes == {22: "open", 80: "open"}

    lab.run_pre_up(text)
    after = lab.probe("peer", lab.home_address, PORTS)
    assert after.outcomes == {
        22: "dropped",
        111: "dropped",
        2049: "dropped",
        32400: "open",
        32443: "dropped",
        8080: "dropped",
    }
    assert lab.probe("peer", lab.lan_address, [22, 80]).outcomes == {22: "dropped", 80: "dropped"}
    assert not lab.reachable("peer", lab.home_address)
    # The home network still reaches the Plex host, and the host reaches the hub (the tunnel's other uses).
    assert lab.probe("lan", "198.18.57.1", [22]).outcomes == {22: "open"}
    assert lab.reachable("home", lab.peer_address)

    lab.run_post_down(text)
    assert lab.probe("peer", lab.home_address, [22]).outcomes == {22: "open"}, "the table goes with the tunnel"


def test_the_filter_loads_again_over_itself(hub_lab: tuple[HomeTunnelLab, str]) -> None:
    lab, text = hub_lab
    lab.run_pre_up(text)
    lab.run_pre_up(text)
    listing = lab.lab.run("home", ["nft", "list", "table", "inet", render.HUB_TUNNEL_FILTER_TABLE]).stdout
    assert listing.count("tcp dport 32400 accept") == 1
    assert lab.probe("peer", lab.home_address, [22, 32400]).outcomes == {22: "dropped", 32400: "open"}


def test_a_cloud_slave_reaches_nfs_and_nothing_else_at_home() -> None:
    config = config_from(transcode_values(tunnelSubnet="198.18.58.0/24"))
    transcode = config.transcode
    assert transcode is not None
    text = tr.origin_wireguard_conf(config, tr.placeholder_peers(config))
    home = str(transcode.origin_tunnel_address)
    slave = str(transcode.tunnel_address("nyc"))
    with HomeTunnelLab(tr.WIREGUARD_INTERFACE, home, slave, 24) as lab:
        lab.listen("home", PORTS)
        lab.listen("peer", [22])
        lab.listen("lan", [22])
        lab.run_pre_up(text)
        after = lab.probe("peer", home, PORTS)
        assert after.outcomes == {
            22: "dropped",
            111: "dropped",
            2049: "open",
            32400: "dropped",
            32443: "dropped",
            8080: "dropped",
        }
        assert lab.probe("peer", lab.lan_address, [22]).outcomes == {22: "dropped"}
        # The dispatcher's SSH goes out from the Plex host to the slave, and its answers come back.
        assert lab.probe("home", slave, [22]).outcomes == {22: "open"}
