"""The config loader: every mistake a user can make is reported by setting name, all at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from plexcdn import regions, render, topology
from plexcdn.config import ConfigError, load_stack_file, parse_config
from tests.conftest import EXAMPLE_STACK, ROOT, example_values, five_pop_values, write_stack
from tests.library_fixtures import library_values
from tests.transcode_fixtures import transcode_values


def problems_for(values: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(values, "dev")
    return list(caught.value.problems)


def test_example_stack_is_valid_and_typed() -> None:
    config = load_stack_file(EXAMPLE_STACK)
    assert config.stack == "dev"
    assert config.shared_name == "plex.example.com"
    assert config.pop_name("asia") == "plex-asia.example.com"
    assert config.acme.directory_url == "https://acme-staging-v02.api.letsencrypt.org/directory"
    assert [p.role for p in topology.places(config)] == ["hub", "edge"]
    assert config.plex_custom_access_url == "https://plex.example.com:443"


def test_config_objects_are_frozen() -> None:
    config = load_stack_file(EXAMPLE_STACK)
    with pytest.raises(ValidationError, match="frozen"):
        config.domain = "other.example"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        config.pops[0].size = "huge"  # type: ignore[misc]
    assert isinstance(config.pops, tuple) and isinstance(config.admin.deploy_from, tuple)


def _with_pop(index: int, **changes: Any) -> dict[str, Any]:
    values = example_values()
    values["pops"][index].update(changes)
    return values


@pytest.mark.parametrize(
    ("values", "setting", "hint"),
    [
        (_with_pop(1, provider="aws"), "pops[1].provider", "one of digitalocean, linode"),
        (_with_pop(1, region="nyc3"), "pops[1].region", "ap-northeast"),
        (_with_pop(0, size="s-64vcpu"), "pops[0].size", "s-1vcpu-1gb"),
        (_with_pop(1, name="us"), "pops[1].name", "unique"),
        (_with_pop(1, upstream="eu"), "pops[1].upstream", "'origin' or one of us, asia"),
        (_with_pop(1, name="Asia!"), "pops[1].name", "lower-case"),
        (_with_pop(0, upstream="asia"), "pops", "no POP has upstream 'origin'"),
        (_with_pop(0, colour="blue"), "pops[0].colour", "valid settings here"),
    ],
)
def test_pop_problems_name_the_setting_and_what_is_valid(values: dict[str, Any], setting: str, hint: str) -> None:
    problems = problems_for(values)
    assert any(p.startswith(f"{setting}:") and hint in p for p in problems), problems


def test_upstream_cycle_is_reported_once_with_its_path() -> None:
    values = five_pop_values()
    values["pops"][2]["upstream"] = "sg"  # asia -> sg -> asia
    problems = problems_for(values)
    cycles = [p for p in problems if "cycle" in p]
    assert len(cycles) == 1
    assert "asia -> sg -> asia" in cycles[0] or "sg -> asia -> sg" in cycles[0]


def test_wireguard_link_reaches_only_one_hub() -> None:
    values = five_pop_values()
    values["origin"] = {"host": "home.example.net", "link": "wireguard"}
    problems = problems_for(values)
    assert any(p.startswith("pops:") and "us, eu" in p and "wireguard" in p for p in problems), problems


def test_public_link_to_a_private_origin_is_refused() -> None:
    values = example_values()
    values["origin"]["host"] = "192.168.1.20"
    problems = problems_for(values)
    assert any(p.startswith("origin.host:") and "link wireguard" in p for p in problems), problems
    values["origin"]["link"] = "wireguard"
    assert parse_config(values, "dev").origin.link == "wireguard"


@pytest.mark.parametrize(
    ("path", "value", "setting"),
    [
        (("domain",), "not a domain", "domain"),
        (("acme", "email"), "nobody", "acme.email"),
        (("acme", "server"), "prod", "acme.server"),
        (("admin", "cidr"), "203.0.113.7/24", "admin.cidr"),
        (("admin", "cidr"), "0.0.0.0/0", "admin.cidr"),
        (("admin", "sshPublicKey"), "hello", "admin.sshPublicKey"),
        (("origin", "port"), 70000, "origin.port"),
        (("origin", "port"), "http", "origin.port"),
        (("origin", "link"), "vpn", "origin.link"),
        (("origin", "tunnelSubnet"), "8.8.8.0/24", "origin.tunnelSubnet"),
        (("nginx", "viewerHttp2"), "maybe", "nginx.viewerHttp2"),
        (("nginx", "streamBufferMb"), 1024, "nginx.streamBufferMb"),
        (("nginx", "streamBufferMb"), -1, "nginx.streamBufferMb"),
    ],
)
def test_bad_scalars_name_the_setting(path: tuple[str, ...], value: object, setting: str) -> None:
    values = example_values()
    target = values
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    problems = problems_for(values)
    assert any(p.startswith(f"{setting}:") for p in problems), problems


@pytest.mark.parametrize(
    ("deploy_from", "setting", "hint"),
    [
        ("198.51.100.4/32", "admin.deployFrom", "must be a list of at most 20 networks in CIDR form"),
        ([f"198.51.100.{i}/32" for i in range(21)], "admin.deployFrom", "at most 20"),
        (["0.0.0.0/0"], "admin.deployFrom[0]", "would open SSH on every VM to the whole internet"),
        (["::/0"], "admin.deployFrom[0]", "the whole internet"),
        (["198.51.100.4/32", "0.0.0.0/1"], "admin.deployFrom[1]", "a large share of the internet"),
        (["2001::/16"], "admin.deployFrom[0]", "at most a /8 or an IPv6 /32"),
        (["192.168.1.0/24"], "admin.deployFrom[0]", "is a private network: a cloud firewall sees the public address"),
        (["198.51.100.4/24"], "admin.deployFrom[0]", "host bits must be zero"),
        (["runner"], "admin.deployFrom[0]", "is not a network in CIDR form such as 198.51.100.4/32"),
    ],
)
def test_deploy_from_refusals_name_the_setting_and_what_is_valid(deploy_from: object, setting: str, hint: str) -> None:
    values = example_values()
    values["admin"]["deployFrom"] = deploy_from
    problems = problems_for(values)
    assert [p for p in problems if p.startswith(f"{setting}:") and hint in p], problems
    assert all(p.startswith("admin.deployFrom") for p in problems), problems


def test_deploy_from_joins_admin_cidr_in_the_ssh_sources_once() -> None:
    values = example_values()
    assert parse_config(values, "dev").admin.ssh_sources == ("203.0.113.7/32",)
    values["admin"]["deployFrom"] = ["198.51.100.4", "2001:db8:77::/48", "203.0.113.7/32"]
    admin = parse_config(values, "dev").admin
    assert admin.ssh_sources == ("203.0.113.7/32", "198.51.100.4/32", "2001:db8:77::/48")


def test_every_problem_is_reported_in_one_run() -> None:
    values = example_values()
    values["domain"] = "nope"
    values["acme"]["email"] = "nope"
    values["pops"][1]["region"] = "mars-1"
    problems = problems_for(values)
    assert {p.split(":")[0] for p in problems} >= {"domain", "acme.email", "pops[1].region"}


def test_missing_sections_are_named() -> None:
    problems = problems_for({})
    assert {p.split(":")[0] for p in problems} >= {"domain", "acme", "origin", "admin", "pops"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plexcdn", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


def test_cli_validate_accepts_the_example() -> None:
    result = run_cli("validate", str(EXAMPLE_STACK))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout and "us-east-1" in result.stdout


def test_cli_validate_prints_one_line_per_problem_and_no_traceback(tmp_path: Path) -> None:
    values = example_values()
    values["pops"][1]["region"] = "mars-1"
    values["admin"]["cidr"] = "not-a-cidr"
    result = run_cli("validate", str(write_stack(tmp_path / "Pulumi.bad.yaml", values)))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("error: ") for line in lines)
    assert "Traceback" not in result.stderr
    assert any("pops[1].region" in line for line in lines) and any("admin.cidr" in line for line in lines)


@pytest.mark.parametrize("text", ["config: [", "just a string", "config:\n  plex-cdn:pops: 3\n"])
def test_cli_validate_survives_broken_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "Pulumi.broken.yaml"
    path.write_text(text)
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")


def test_cli_render_writes_each_pop_and_placeholders_for_secrets(tmp_path: Path) -> None:
    result = run_cli("render", str(EXAMPLE_STACK), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for pop in ("us", "asia"):
        assert (tmp_path / pop / "nginx.conf").is_file()
        cloud_init = (tmp_path / pop / "cloud-init.yaml").read_text()
        assert "<SECRET: this VM's SSH host key" in cloud_init and "aws_secret_access_key" not in cloud_init
    assert (tmp_path / "us" / render.PEER_CLIENT_CAS_FILE).is_file()
    assert (tmp_path / "us" / render.PEER_SERVER_CERT_FILE).is_file()
    assert (tmp_path / "asia" / render.PEER_CA_FILE).is_file()
    assert (tmp_path / "asia" / render.PEER_CLIENT_CERT_FILE).is_file()
    assert not (tmp_path / "asia" / render.PEER_CLIENT_KEY_FILE).exists()
    assert not (tmp_path / "us" / render.PEER_SERVER_KEY_FILE).exists()


# Strategies for property tests.
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.text(max_size=12),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    values = example_values()
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(["domain", "sharedHostname", "acme", "origin", "admin", "nginx", "pops", "x"]))
        current = values.get(section)
        if isinstance(current, dict) and current and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(current)))
            current[key] = draw(junk)
        elif isinstance(current, list) and current and draw(st.booleans()):
            pop = draw(st.sampled_from(current))
            key = draw(st.sampled_from(["name", "provider", "region", "size", "upstream", "extra"]))
            if isinstance(pop, dict):
                pop[key] = draw(junk)
        else:
            values[section] = draw(junk)
    return values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_bad_configs_raise_only_config_errors(values: dict[str, Any]) -> None:
    try:
        config = parse_config(values, "dev")
    except ConfigError as error:
        assert error.problems
        assert all(isinstance(p, str) and ": " in p for p in error.problems)
    else:
        assert config.pops


@st.composite
def good_configs(draw: st.DrawFn) -> dict[str, Any]:
    values = example_values()
    count = draw(st.integers(1, 8))
    names = [f"p{i}" for i in range(count)]
    hub_count = draw(st.integers(1, count))
    link = "wireguard" if hub_count == 1 and draw(st.booleans()) else "public"
    values["origin"] = {"host": "home.example.net", "link": link, "port": draw(st.integers(1, 65535))}
    # Route53 takes one latency record per AWS region, so no two POPs share one.
    places = draw(
        st.lists(
            st.sampled_from(
                [(provider, slug) for provider, table in sorted(regions.PROVIDERS.items()) for slug in table.regions]
            ),
            min_size=count,
            max_size=count,
            unique_by=lambda place: regions.region(*place).aws_region,
        )
    )
    pops = []
    for index, (name, (provider, region_slug)) in enumerate(zip(names, places, strict=True)):
        table = regions.PROVIDERS[provider]
        upstream = "origin" if index < hub_count else draw(st.sampled_from(names[:index]))
        pops.append(
            {
                "name": name,
                "provider": provider,
                "region": region_slug,
                "size": draw(st.sampled_from(sorted(table.sizes))),
                "upstream": upstream,
            }
        )
    values["pops"] = draw(st.permutations(pops))
    return values


@settings(max_examples=60, deadline=None)
@given(good_configs())
def test_good_configs_always_render(tmp_path_factory: pytest.TempPathFactory, values: dict[str, Any]) -> None:
    config = parse_config(values, "dev")
    out = tmp_path_factory.mktemp("render")
    written = render.render_stack(config, out)
    for pop in config.pops:
        assert (out / pop.name / "nginx.conf") in written
        assert (out / pop.name / "cloud-init.yaml") in written
        upstream = (out / pop.name / "plexcdn-upstream.conf").read_text()
        expected = render.upstream_of(config, pop.name, render.placeholder_addresses(config))
        if expected.servers_file:
            # The origin by name: the hub's resolver writes the addresses; until then, the never-resolved file.
            assert f"include {expected.servers_file};" in upstream
            assert "server unix:" in (out / pop.name / expected.servers_file).read_text()
        else:
            assert f"server {expected.server};" in upstream


def test_a_hub_far_from_the_plex_server_is_a_warning_with_its_cost() -> None:
    values = example_values()
    values["origin"]["location"] = {"latitude": 48.85, "longitude": 2.35}  # Paris; the example hub is in New York
    config = parse_config(values, "dev")
    far = [w for w in config.warnings if "hub 'us'" in w]
    assert len(far) == 1
    assert "5,8" in far[0] and "km from the Plex server" in far[0]  # New York to Paris is about 5,840 km
    assert "closest region is lon1 (" in far[0]
    values["origin"]["location"] = {"latitude": 40.7, "longitude": -74.0}
    assert not [w for w in parse_config(values, "dev").warnings if "hub 'us'" in w]
    values["origin"]["location"] = {"latitude": 123, "longitude": 0}
    assert any(p.startswith("origin.location.latitude:") for p in problems_for(values))


def test_both_stack_files_are_valid_and_use_their_acme_server() -> None:
    dev = load_stack_file(ROOT / "Pulumi.dev.yaml")
    prod = load_stack_file(ROOT / "Pulumi.prod.yaml")
    assert (dev.stack, dev.acme.server) == ("dev", "staging")
    assert (prod.stack, prod.acme.server) == ("prod", "production")
    assert dev.shared_name != prod.shared_name


def test_a_stream_buffer_too_large_for_a_pops_memory_is_a_warning() -> None:
    values = example_values()
    assert not [w for w in parse_config(values, "dev").warnings if w.startswith("nginx.streamBufferMb")]
    values["nginx"]["streamBufferMb"] = 128
    warned = [w for w in parse_config(values, "dev").warnings if w.startswith("nginx.streamBufferMb")]
    # The example's POPs have 1 GB (s-1vcpu-1gb) and 1 GB (g6-nanode-1): four streams in half of it.
    assert warned and all("with 4 streams" in w for w in warned), warned


def test_two_pops_in_one_aws_latency_region_are_refused_with_the_regions_that_would_work() -> None:
    values = example_values()
    # Atlanta and New York both answer from us-east-1, where the hub 'us' (nyc3) already is.
    values["pops"].append(
        {"name": "south", "provider": "linode", "region": "us-southeast", "size": "g6-nanode-1", "upstream": "us"}
    )
    problems = problems_for(values)
    assert len(problems) == 1, problems
    problem = problems[0]
    assert problem.startswith(
        "pops[2].region: linode us-southeast (Atlanta) answers for the shared name in AWS region us-east-1"
    )
    assert "as pops[0].region does (POP 'us', digitalocean nyc3)" in problem
    assert "Route53 allows one latency record per AWS region" in problem
    # The nearest Linode regions whose AWS region no POP uses yet, closest first.
    assert "nearest: us-ord (Chicago, us-east-2, 948 km), us-central (Dallas, us-east-2," in problem
    assert "or leave out one of the two" in problem
    values["pops"][2]["region"] = "us-ord"
    assert parse_config(values, "dev").pop("south").region_info.aws_region == "us-east-2"


def test_every_pop_after_the_first_in_an_aws_region_is_named() -> None:
    values = five_pop_values()
    values["pops"][1].update(provider="digitalocean", region="nyc1", size="s-1vcpu-1gb")  # us-east-1, as 'us'
    problems = [p for p in problems_for(values) if "latency record" in p]
    assert [p.split(":")[0] for p in problems] == ["pops[1].region"], problems
    values["pops"].append(
        {"name": "nyc", "provider": "digitalocean", "region": "nyc3", "size": "s-1vcpu-1gb", "upstream": "us"}
    )
    problems = [p for p in problems_for(values) if "latency record" in p]
    assert [p.split(":")[0] for p in problems] == ["pops[1].region", "pops[5].region"]
    assert all("as pops[0].region does (POP 'us'" in p for p in problems)


def test_every_linode_region_in_the_table_is_confirmed_to_serve_metadata() -> None:
    linode = regions.PROVIDERS["linode"].regions
    assert set(linode) <= regions.LINODE_METADATA_REGIONS, sorted(set(linode) - regions.LINODE_METADATA_REGIONS)
    # The example stacks' Tokyo POP: a legacy data centre, with Metadata since mid-2024.
    assert regions.serves_user_data("linode", "ap-northeast")
    for stack in ("Pulumi.dev.yaml", "Pulumi.prod.yaml"):
        config = load_stack_file(ROOT / stack)
        for pop in config.pops:
            assert regions.serves_user_data(pop.provider, pop.region), (stack, pop.name)


def test_a_linode_region_not_confirmed_to_serve_metadata_is_refused_wherever_user_data_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(regions, "LINODE_METADATA_REGIONS", regions.LINODE_METADATA_REGIONS - {"ap-northeast"})
    # The example's Tokyo POP, and the fixtures' Tokyo transcode slave and library cache node: all Linodes
    # that boot from user data in ap-northeast.
    values = transcode_values()
    values["library"] = library_values()["library"]
    problems = problems_for(values)
    settings = ["pops[1].region", "transcode.slaves[2].region", "library.viewers[1].region"]
    assert [p.split(":")[0] for p in problems] == settings, problems
    for problem in problems:
        assert "linode region 'ap-northeast' (Tokyo) is not confirmed to serve Metadata" in problem
        assert "boot without the cloud-init document" in problem
        assert "nearest: jp-tyo-3 (Tokyo, 0 km), jp-osa (Osaka, 396 km)" in problem
        assert f"as of {regions.LINODE_METADATA_AS_OF}" in problem
    values["pops"][1]["region"] = values["transcode"]["slaves"][2]["region"] = "jp-tyo-3"
    values["library"]["viewers"][1]["region"] = "jp-osa"
    assert parse_config(values, "dev").pop("asia").region == "jp-tyo-3"
