"""Issue #22, part 1: an edge's second way to the origin (`pops[].fallback`): what validate accepts, what the
edge's nginx and watch get, and the certificates and client CAs that let either hub answer it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from moto import mock_aws

from labs.stack_engine import StackEngine, VmAddress, run_program, secret_value
from plexcdn import render, topology, upstream_watch
from plexcdn.config import ConfigError, StackConfig
from tests.conftest import config_from, fallback_values, wireguard_values, write_stack

ADDRESSES = {"us": "198.18.81.10", "eu": "198.18.81.11", "asia": "198.18.81.12", "sg": "198.18.81.13"}
ADDRESSES["uk"] = "198.18.81.14"


def problems_for(values: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        config_from(values)
    return str(raised.value)


def with_pop(values: dict[str, Any], name: str, **changes: Any) -> dict[str, Any]:
    for pop in values["pops"]:
        if pop["name"] == name:
            pop.update(changes)
    return values


@pytest.mark.parametrize(
    ("pop", "fallback", "expected"),
    [
        ("us", "eu", "pops[0].fallback: POP 'us' is a hub (upstream 'origin')"),
        ("asia", "nowhere", "pops[2].fallback: 'nowhere' is not a POP; use one of "),
        ("asia", "asia", "pops[2].fallback: 'asia' is itself; use another POP"),
        ("asia", "us", "pops[2].fallback: 'us' is its upstream; use another POP"),
        ("uk", "sg", "upstreams and fallbacks go round: sg -> uk -> sg"),
    ],
)
def test_a_fallback_that_is_no_second_way_is_named_with_what_would_do(pop: str, fallback: str, expected: str) -> None:
    values = with_pop(fallback_values(), pop, fallback=fallback)
    if pop == "uk":
        with_pop(values, "eu", upstream="origin")
        with_pop(values, "sg", upstream="uk", fallback="asia")
        with_pop(values, "asia", fallback=None)
    assert expected in problems_for(values)


def test_a_fallback_through_a_pop_behind_the_edge_is_refused() -> None:
    values = with_pop(fallback_values(), "asia", fallback="sg")
    shown = problems_for(values)
    assert "pops[2].fallback: POP 'sg' reaches the origin through sg -> asia -> us, which passes 'asia'" in shown
    assert "such as a second hub" in shown


def test_with_one_hub_a_fallback_must_be_an_edge_of_that_hub_and_wireguard_allows_no_second_hub() -> None:
    values = wireguard_values()
    values["pops"].append(
        {"name": "eu", "provider": "linode", "region": "eu-central", "size": "g6-nanode-1", "upstream": "us"}
    )
    values["pops"].append(
        {"name": "sg", "provider": "digitalocean", "region": "sgp1", "size": "s-1vcpu-1gb", "upstream": "asia"}
    )
    with_pop(values, "sg", fallback="eu")
    config = config_from(values)
    assert topology.place(config, "sg").fallback == "eu"
    assert "sg" in topology.place(config, "eu").downstream


def test_pops_are_made_after_every_pop_they_relay_to() -> None:
    # uk is fewer hops from the origin than sg, but falls back to it.
    config = config_from(with_pop(fallback_values(), "uk", fallback="sg"))
    order = [place.pop.name for place in topology.places(config)]
    assert topology.place(config, "uk").relays_to == ("eu", "sg")
    for place in topology.places(config):
        for way in place.relays_to:
            assert order.index(way) < order.index(place.pop.name), (place.pop.name, way)


def upstream_block(config: StackConfig, pop: str) -> str:
    files = render.nginx_files(config, pop, addresses=ADDRESSES)
    return files["plexcdn-upstream.conf"]


def test_an_edge_with_a_fallback_keeps_it_as_a_backup_checked_by_the_peer_name() -> None:
    config = config_from(fallback_values())
    block = upstream_block(config, "asia")
    servers = [line.split()[1:] for line in block.splitlines() if line.strip().startswith("server ")]
    assert servers == [
        [
            f"{ADDRESSES['us']}:{render.PEER_PORT}",
            "max_fails=1",
            f"fail_timeout={render.UPSTREAM_FAIL_TIMEOUT_SECONDS}s;",
        ],
        [f"{ADDRESSES['eu']}:{render.PEER_PORT}", "backup;"],
    ]
    assert "zone plexcdn_upstream " in block, "every worker learns of a failed upstream at once"
    files = render.nginx_files(config, "asia", addresses=ADDRESSES)
    assert f"proxy_ssl_name {config.peer_name};" in files["plexcdn-proxy.conf"]
    assert "proxy_connect_timeout 1s;" in files["plexcdn-locations.conf"]
    assert "proxy_connect_timeout 1s;" in files["plexcdn-health.conf"]
    # Without a fallback, nothing changes: one server, checked by its own name.
    uk = render.nginx_files(config, "uk", addresses=ADDRESSES)
    assert "backup" not in uk["plexcdn-upstream.conf"] and "zone" not in uk["plexcdn-upstream.conf"]
    assert f"proxy_ssl_name {config.pop_name('eu')};" in uk["plexcdn-proxy.conf"]
    assert "proxy_connect_timeout 5s;" in uk["plexcdn-locations.conf"]


def test_every_peer_port_answers_to_its_own_name_and_the_peer_name() -> None:
    config = config_from(fallback_values())
    for place in topology.places(config):
        if place.downstream:
            main = render.nginx_files(config, place.pop.name, addresses=ADDRESSES)["nginx.conf"]
            assert f"server_name {config.pop_name(place.pop.name)} {config.peer_name};" in main


def test_only_an_edge_with_a_fallback_runs_the_watch_on_its_upstreams_address() -> None:
    config = config_from(fallback_values())
    release = render.pop_release(config, "asia", addresses=ADDRESSES)
    assert render.UPSTREAM_WATCH_PROGRAM in release.programs
    exec_line = next(
        line for line in release.units[render.UPSTREAM_WATCH_UNIT].splitlines() if line.startswith("ExecStart=")
    )
    assert exec_line.split()[1:] == [
        *("--upstream", ADDRESSES["us"], "--port", str(render.PEER_PORT), "--nginx-user", render.NGINX_USER)
    ]
    deploy = render.deploy_nginx_script(config, "asia", release)
    assert f"systemctl restart {render.UPSTREAM_WATCH_UNIT}" in deploy
    assert render.UPSTREAM_WATCH_UNIT not in render.pop_release(config, "uk", addresses=ADDRESSES).units
    without = render.deploy_nginx_script(config, "uk", render.pop_release(config, "uk", addresses=ADDRESSES))
    assert f"systemctl disable --now {render.UPSTREAM_WATCH_UNIT}" in without
    assert f"/usr/local/sbin/{render.UPSTREAM_WATCH_PROGRAM}" in without.split("rm -f /usr/local/sbin/", 1)[1]


def test_the_watch_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    config = config_from(fallback_values())
    release = render.pop_release(config, "asia", addresses=ADDRESSES)
    program = tmp_path / render.UPSTREAM_WATCH_PROGRAM
    program.write_text(release.programs[render.UPSTREAM_WATCH_PROGRAM])
    program.chmod(0o755)
    unit = tmp_path / render.UPSTREAM_WATCH_UNIT
    unit.write_text(
        release.units[render.UPSTREAM_WATCH_UNIT].replace(
            f"/usr/local/sbin/{render.UPSTREAM_WATCH_PROGRAM}", str(program)
        )
    )
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


class Probes:
    def __init__(self, answers: Sequence[bool]) -> None:
        self.answers = list(answers)
        self.commands: list[tuple[int, list[str]]] = []

    def probe(self, address: str, port: int) -> bool:
        return self.answers.pop(0)

    def run(self, commands: Sequence[Sequence[str]]) -> None:
        index = len(self.answers)
        self.commands.extend((index, list(argv)) for argv in commands)


def test_the_watch_blocks_after_two_misses_and_unblocks_after_six_answers() -> None:
    answers = [True, False, True, False, False, False, True, True, True, True, True, False, True, *[True] * 6]
    probes = Probes(answers)
    said: list[str] = []
    state = upstream_watch.watch(
        "198.18.81.10",
        8443,
        33,
        rounds=len(answers),
        interval=0,
        prober=probes.probe,
        runner=probes.run,
        say=said.append,
    )
    assert not state.blocked
    actions = [argv[:4] for _, argv in probes.commands]
    rule_add = ["ip", "-4", "rule", "add"]
    rule_del = ["ip", "-4", "rule", "del"]
    # Start clean; block at the second miss in a row (the fifth probe); unblock at the sixth answer in a row.
    assert actions == [rule_del, rule_add, ["ss", "-K", "dst", "198.18.81.10"], rule_del]
    left = [index for index, _ in probes.commands]
    assert left[1] == len(answers) - 5 and left[3] == 1
    assert said == [
        "upstream 198.18.81.10:8443 does not answer; requests go to the fallback POP",
        "upstream 198.18.81.10:8443 answers again; requests return to it",
    ]
    add = probes.commands[1][1]
    assert add[4:] == [
        "priority",
        str(upstream_watch.RULE_PRIORITY),
        "to",
        "198.18.81.10",
        "uidrange",
        "33-33",
        "unreachable",
    ]
    assert upstream_watch.block_commands("fd00::1", 8443, 33)[0][:2] == ["ip", "-6"]


def test_the_probe_tells_a_listening_port_from_a_closed_one() -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert upstream_watch.probe("127.0.0.1", port)
    assert not upstream_watch.probe("127.0.0.1", port)


def test_under_the_stack_engine_either_hub_proves_itself_to_the_edge_and_accepts_it(tmp_path: Path) -> None:
    """Real certificates, as the tls provider makes them: the edge verifies both hubs by the peer name, and each
    hub's peer port accepts the edge's client CA."""
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    config = config_from(fallback_values())
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        route53 = boto3.client("route53", region_name="us-east-1")
        route53.create_hosted_zone(Name=config.domain, CallerReference="lab")
        engine = StackEngine(iam, route53, lambda name: VmAddress(ADDRESSES[name.removesuffix("-vm")]))

        def program() -> None:
            from components.stack import build_stack

            build_stack(config, tmp_path)

        monitor = run_program(engine, config.stack, program)

    def release_dir(pop: str) -> Path:
        create = dict(secret_value(monitor.named(f"{pop}-nginx-deploy").inputs))["create"]
        return tmp_path / pop / f"release-{create.split('release-')[1].split(chr(34))[0]}" / "nginx"

    edge = release_dir("asia")
    assert f"server {ADDRESSES['eu']}:{render.PEER_PORT} backup;" in (edge / "plexcdn-upstream.conf").read_text()
    peer_ca = Store(x509.load_pem_x509_certificates((edge / render.PEER_CA_FILE).read_bytes()))
    for hub in ("us", "eu"):
        hub_dir = release_dir(hub)
        certificate = x509.load_pem_x509_certificate((hub_dir / render.PEER_SERVER_CERT_FILE).read_bytes())
        PolicyBuilder().store(peer_ca).build_server_verifier(x509.DNSName(config.peer_name)).verify(certificate, [])
        result = subprocess.run(
            [
                *("openssl", "verify", "-CAfile", str(hub_dir / render.PEER_CLIENT_CAS_FILE)),
                *("-purpose", "sslclient", str(edge / render.PEER_CLIENT_CERT_FILE)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, (hub, result.stdout + result.stderr)


def test_validate_prints_each_edges_second_way(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "Pulumi.dev.yaml", fallback_values())
    result = subprocess.run(
        [sys.executable, "-m", "plexcdn", "validate", str(stack)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()}
    assert lines["asia"].endswith("asia -> us -> origin (or eu -> origin)")
    assert lines["sg"].endswith("sg -> asia -> us -> origin (or eu -> origin)")
    assert lines["uk"].endswith("uk -> eu -> origin")
