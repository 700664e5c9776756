"""`nginx -t` on every POP's rendered config, exactly as rendered, with certificates made here.

The hub's upstream may be the Plex server's DNS name: the hub's plexcdn-origin-resolve writes its
addresses into a file the upstream includes, so each check runs that program in a network namespace whose
/etc/hosts answers the name with a lab address (or, in one test, does not answer it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs import pop_tree
from labs.lab_ca import LabCA
from labs.netns import Lab, lab_unavailable_reason
from plexcdn import render
from plexcdn.config import StackConfig
from tests.conftest import config_from, example_values, fallback_values, five_pop_values, wireguard_values

pytestmark = pytest.mark.skipif(lab_unavailable_reason() is not None, reason=str(lab_unavailable_reason()))

ORIGIN_LAB_ADDRESS = "198.18.250.2"
PREFIX = f"pcn{os.getpid() % 1000}-"


def _write_pop_tree(config: StackConfig, pop: str, prefix: Path, lab: Lab, role: str = "check") -> Path:
    """Render the POP into `prefix/etc/nginx` and give it the files a real POP has beside the config."""
    conf_dir = prefix / "etc" / "nginx"
    conf_dir.mkdir(parents=True)
    authority = LabCA.create(prefix / "ca", "nginx check")
    peer_ca = LabCA.create(prefix / "peer-ca", "nginx check peer", intermediate=False)
    client_cas = pop_tree.client_cas(config, prefix / "client-cas")
    peer = pop_tree.peer_certificates(config, pop, peer_ca, conf_dir, prefix, client_authorities=client_cas)
    for name, text in render.nginx_files(config, pop, prefix=str(prefix), peer=peer).items():
        (conf_dir / name).write_text(text)
    pop_tree.resolve_origin(lab, role, config, pop, conf_dir)
    authority.issue(config.certificate_names(pop), prefix / "etc" / "letsencrypt", config.pop_name(pop))
    bundle = prefix / "etc" / "ssl" / "certs" / "ca-certificates.crt"
    bundle.parent.mkdir(parents=True)
    bundle.write_text(authority.bundle_path.read_text())
    for directory in ("run", "var/log/nginx", "var/cache/nginx"):
        (prefix / directory).mkdir(parents=True, exist_ok=True)
    return conf_dir / "nginx.conf"


CASES = [
    (label, pop.name)
    for label, values in (("example", example_values), ("five-pop", five_pop_values), ("wireguard", wireguard_values))
    for pop in config_from(values()).pops
]
STACKS = {
    "example": example_values,
    "five-pop": five_pop_values,
    "fallback": fallback_values,
    "wireguard": wireguard_values,
}


@pytest.fixture(scope="module")
def resolver_lab() -> Iterator[Lab]:
    with Lab(PREFIX) as lab:
        lab.add_namespace("check", hosts={"home.example.net": ORIGIN_LAB_ADDRESS})
        yield lab


@pytest.mark.parametrize(("stack", "pop"), CASES)
def test_rendered_nginx_config_passes_nginx_t(resolver_lab: Lab, tmp_path: Path, stack: str, pop: str) -> None:
    config = config_from(STACKS[stack]())
    main = _write_pop_tree(config, pop, tmp_path, resolver_lab)
    result = resolver_lab.run("check", ["nginx", "-t", "-c", str(main)], check=False)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.mark.parametrize("buffer_mb", [0, 1, 256])
def test_every_stream_buffer_size_passes_nginx_t(resolver_lab: Lab, tmp_path: Path, buffer_mb: int) -> None:
    values = example_values()
    values["nginx"]["streamBufferMb"] = buffer_mb
    main = _write_pop_tree(config_from(values), "asia", tmp_path, resolver_lab)
    locations = (main.parent / "plexcdn-locations.conf").read_text()
    assert ("location /library/parts/ {" in locations) == (buffer_mb > 0)
    result = resolver_lab.run("check", ["nginx", "-t", "-c", str(main)], check=False)
    assert result.returncode == 0, result.stderr


def test_nginx_t_catches_a_broken_config(resolver_lab: Lab, tmp_path: Path) -> None:
    config = config_from(example_values())
    main = _write_pop_tree(config, "asia", tmp_path, resolver_lab)
    (main.parent / "plexcdn-upstream.conf").write_text("upstream plexcdn_upstream { server; }\n")
    result = resolver_lab.run("check", ["nginx", "-t", "-c", str(main)], check=False)
    assert result.returncode != 0
    assert "plexcdn-upstream.conf" in result.stderr


def test_a_hub_whose_origin_name_does_not_resolve_still_passes_nginx_t(tmp_path: Path) -> None:
    config = config_from(example_values())
    with Lab(PREFIX) as lab:
        lab.add_namespace("nodns", hosts={})
        main = _write_pop_tree(config, "us", tmp_path, lab, role="nodns")
        servers = (main.parent / render.ORIGIN_SERVERS_FILE).read_text()
        assert "server unix:" in servers and "has not resolved yet" in servers
        result = lab.run("nodns", ["nginx", "-t", "-c", str(main)], check=False)
    assert result.returncode == 0, result.stderr


def test_the_hub_follows_the_origin_name_to_the_address_it_resolves_to(resolver_lab: Lab, tmp_path: Path) -> None:
    config = config_from(example_values())
    main = _write_pop_tree(config, "us", tmp_path, resolver_lab)
    servers = (main.parent / render.ORIGIN_SERVERS_FILE).read_text()
    assert f"server {ORIGIN_LAB_ADDRESS}:{config.origin.port};" in servers


@pytest.mark.parametrize(
    ("pop", "file_name", "placeholder"),
    [
        ("us", render.PEER_CLIENT_CAS_FILE, render.PLACEHOLDER_PEER_CLIENT_CAS),
        ("asia", render.PEER_CA_FILE, render.PLACEHOLDER_PEER_CA),
    ],
)
def test_placeholder_peer_files_are_rejected_rather_than_deployed(
    resolver_lab: Lab, tmp_path: Path, pop: str, file_name: str, placeholder: str
) -> None:
    config = config_from(example_values())
    main = _write_pop_tree(config, pop, tmp_path, resolver_lab)
    (main.parent / file_name).write_text(placeholder)
    result = resolver_lab.run("check", ["nginx", "-t", "-c", str(main)], check=False)
    assert result.returncode != 0
