"""The policy pack: each policy on passing and failing resources, the pack as the engine runs it (pulumi-policy's
analyzer service, fed the wire format the engine sends), and the real program's stacks against every policy."""

from __future__ import annotations

import base64
import copy
import os
import runpy
import select
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pulumi
import pulumi_policy
import pytest
import yaml
from google.protobuf import empty_pb2, json_format, struct_pb2  # type: ignore[import-untyped]
from pulumi.runtime import proto
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResourceOptions,
    ResourceValidation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)
from pulumi_policy.deserialize import deserialize_properties, serialize_properties
from pulumi_policy.policy import _NotApplicableError, _PolicyAnalyzerServicer
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from labs.mock_engine import SECRET_SIG, SECRET_SIG_KEY, RecordingMonitor, install_mocks
from plexcdn import config as plexcdn_config
from plexcdn import regions
from plexcdn.config import StackConfig, load_stack_file, needs_home_ssh_key
from policy import plexcdn_policies as policies
from tests.conftest import ROOT, config_from
from tests.library_fixtures import library_values

UNKNOWN = UNKNOWN_STRING_VALUE
STAGING = policies.ACME_DIRECTORIES["staging"]
PRODUCTION = policies.ACME_DIRECTORIES["production"]
ADMIN = "203.0.113.7/32"
PRICES = {
    ("digitalocean", "s-1vcpu-1gb"): 6.0,
    ("digitalocean", "s-4vcpu-8gb"): 48.0,
    ("linode", "g6-standard-1"): 12.0,
}


def fake_prices(provider: str, size: str) -> float | None:
    return PRICES.get((provider, size))


def resource(
    resource_type: str,
    props: dict[str, Any],
    *,
    name: str = "us-vm",
    ignore_changes: list[str] | None = None,
    config: dict[str, Any] | None = None,
) -> ResourceValidationArgs:
    """What a validation receives from pulumi-policy: inputs behind the proxy that raises on unknowns."""
    opts = PolicyResourceOptions(False, ignore_changes or [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)
    urn = f"urn:pulumi:dev::plex-cdn::{resource_type}::{name}"
    return ResourceValidationArgs(
        resource_type, unknown_checking_proxy(copy.deepcopy(props)), urn, name, opts, None, config
    )


def violations(validate: ResourceValidation, args: ResourceValidationArgs) -> list[str]:
    found: list[str] = []

    def report(message: str, urn: str | None = None) -> None:
        found.append(message)

    validate(args, report)
    return found


def secret(value: Any) -> dict[str, Any]:
    """A secret as the engine sends it over the wire."""
    return {SECRET_SIG_KEY: SECRET_SIG, "value": value}


def do_rule(port: str | None, sources: list[str], protocol: str = "tcp", **extra: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"protocol": protocol, "sourceAddresses": sources, **extra}
    if port is not None:
        rule["portRange"] = port
    return rule


def linode_rule(
    ports: str | None, protocol: str = "TCP", action: str = "ACCEPT", **families: list[str]
) -> dict[str, Any]:
    rule: dict[str, Any] = {"label": "rule", "action": action, "protocol": protocol, **families}
    if ports is not None:
        rule["ports"] = ports
    return rule


# --- SSH ----------------------------------------------------------------------------------------------------


def test_digitalocean_firewall_with_ssh_from_the_admin_network_only_passes() -> None:
    args = resource(
        policies.DIGITALOCEAN_FIREWALL,
        {
            "inboundRules": [
                do_rule("22", [ADMIN]),
                do_rule("443", ["0.0.0.0/0", "::/0"]),
                do_rule(None, ["0.0.0.0/0", "::/0"], protocol="icmp"),
                do_rule("22", ["0.0.0.0/0"], protocol="udp"),
                do_rule("1-65535", ["0.0.0.0/0"], action="deny"),
            ]
        },
        name="us-firewall",
    )
    assert violations(policies.validate_ssh_not_open_to_world, args) == []


def test_digitalocean_firewall_with_ssh_from_anywhere_is_reported_by_rule_and_source() -> None:
    args = resource(
        policies.DIGITALOCEAN_FIREWALL,
        {"inboundRules": [do_rule("443", ["0.0.0.0/0"]), do_rule("22", ["0.0.0.0/0", ADMIN, "::/0"])]},
        name="us-firewall",
    )
    [message] = violations(policies.validate_ssh_not_open_to_world, args)
    assert message.startswith('digitalocean Firewall "us-firewall": inbound_rules[1].source_addresses')
    assert "0.0.0.0/0, ::/0" in message and ADMIN not in message


@pytest.mark.parametrize("port_range", ["1-65535", "20-30", "all", "0", None])
def test_digitalocean_port_ranges_that_include_22_count(port_range: str | None) -> None:
    args = resource(policies.DIGITALOCEAN_FIREWALL, {"inboundRules": [do_rule(port_range, ["::/0"])]})
    assert len(violations(policies.validate_ssh_not_open_to_world, args)) == 1


def test_linode_firewall_that_drops_by_default_and_admits_ssh_from_the_admin_network_passes() -> None:
    args = resource(
        policies.LINODE_FIREWALL,
        {
            "inboundPolicy": "DROP",
            "inbounds": [
                linode_rule("22", ipv4s=[ADMIN]),
                linode_rule("80, 443", ipv4s=["0.0.0.0/0"], ipv6s=["::/0"]),
                linode_rule(None, protocol="ICMP", ipv4s=["0.0.0.0/0"]),
                linode_rule("22", action="DROP", ipv4s=["0.0.0.0/0"]),
            ],
        },
        name="asia-firewall",
    )
    assert violations(policies.validate_ssh_not_open_to_world, args) == []


def test_linode_firewall_rules_open_to_the_world_are_reported_per_address_family() -> None:
    args = resource(
        policies.LINODE_FIREWALL,
        {
            "inboundPolicy": "DROP",
            "inbounds": [
                linode_rule("80, 20-25", ipv6s=["::/0"]),
                linode_rule(None, protocol="ALL", ipv4s=["0.0.0.0/0"]),
            ],
        },
        name="asia-firewall",
    )
    found = violations(policies.validate_ssh_not_open_to_world, args)
    assert [m.split(" admits")[0] for m in found] == [
        'linode Firewall "asia-firewall": inbounds[0].ipv6s',
        'linode Firewall "asia-firewall": inbounds[1].ipv4s',
    ]


def test_linode_firewall_that_accepts_by_default_is_reported() -> None:
    args = resource(policies.LINODE_FIREWALL, {"inboundPolicy": "ACCEPT", "inbounds": []}, name="asia-firewall")
    [message] = violations(policies.validate_ssh_not_open_to_world, args)
    assert 'linode Firewall "asia-firewall": inbound_policy is ACCEPT' in message


def test_ssh_rules_whose_sources_are_not_known_yet_are_left_for_the_update() -> None:
    args = resource(policies.DIGITALOCEAN_FIREWALL, {"inboundRules": [do_rule("22", [UNKNOWN]), UNKNOWN]})
    assert violations(policies.validate_ssh_not_open_to_world, args) == []


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("22", True), ("2222", False), ("80, 22", True), ("80,443", False), ("1-21", False), ("22-22", True), ("", True)],
)
def test_port_lists(spec: str, expected: bool) -> None:
    assert policies.ports_include(spec, 22) is expected


# --- cost ceiling -------------------------------------------------------------------------------------------


def test_vm_sizes_under_the_ceiling_pass_and_sizes_above_it_name_the_price() -> None:
    validate = policies.cost_ceiling_validator(fake_prices)
    assert violations(validate, resource(policies.DROPLET, {"size": "s-1vcpu-1gb"})) == []
    [message] = violations(validate, resource(policies.DROPLET, {"size": "s-4vcpu-8gb"}, name="eu-vm"))
    assert message.startswith('digitalocean Droplet "eu-vm": size')
    assert "'s-4vcpu-8gb' costs $48/month, above the ceiling of $24/month" in message


def test_the_ceiling_comes_from_policy_config() -> None:
    validate = policies.cost_ceiling_validator(fake_prices)
    linode = resource(policies.LINODE_INSTANCE, {"type": "g6-standard-1"}, name="asia-vm")
    assert violations(validate, linode) == []
    strict = resource(
        policies.LINODE_INSTANCE, {"type": "g6-standard-1"}, name="asia-vm", config={"maxMonthlyUsdPerVm": 10}
    )
    [message] = violations(validate, strict)
    assert message.startswith('linode Instance "asia-vm": type') and "ceiling of $10/month" in message


def test_a_size_without_a_price_is_reported_rather_than_waved_through() -> None:
    validate = policies.cost_ceiling_validator(fake_prices)
    [message] = violations(validate, resource(policies.DROPLET, {"size": "gpu-h100x8-640gb"}))
    assert "'gpu-h100x8-640gb' has no price" in message


def test_the_pack_prices_sizes_with_the_projects_table() -> None:
    lookup = policies.regions_price_lookup()
    for provider, table in regions.PROVIDERS.items():
        for slug, size in table.sizes.items():
            assert lookup(provider, slug) == size.monthly_usd
    assert lookup("digitalocean", "no-such-size") is None


# --- ACME server per stack ----------------------------------------------------------------------------------


def acme_violations(stack: str, resource_args: ResourceValidationArgs) -> list[str]:
    return violations(policies.acme_validator(lambda: stack), resource_args)


def cloud_config(directory: str) -> str:
    return f"#cloud-config\nwrite_files:\n  - content: |\n      ACME_SERVER={directory}\n"


def test_dev_stacks_use_staging_and_prod_stacks_use_production() -> None:
    assert acme_violations("dev", resource(policies.DROPLET, {"userData": cloud_config(STAGING)})) == []
    assert acme_violations("prod", resource(policies.DROPLET, {"userData": cloud_config(PRODUCTION)})) == []

    [message] = acme_violations("dev", resource(policies.DROPLET, {"userData": cloud_config(PRODUCTION)}))
    assert message.startswith('digitalocean Droplet "us-vm": user_data points certbot at')
    assert "production server" in message and "stack 'dev' must use staging" in message

    [message] = acme_violations("prod", resource(policies.DROPLET, {"userData": cloud_config(STAGING)}))
    assert "staging server" in message and "stack 'prod' must use production" in message


def test_linode_user_data_is_decoded_from_base64() -> None:
    encoded = base64.b64encode(cloud_config(STAGING).encode()).decode()
    linode = resource(policies.LINODE_INSTANCE, {"metadatas": [{"userData": encoded}]}, name="asia-vm")
    assert acme_violations("dev", linode) == []
    [message] = acme_violations("prod", linode)
    assert message.startswith('linode Instance "asia-vm": metadatas[0].user_data points certbot at')

    garbled = resource(policies.LINODE_INSTANCE, {"metadatas": [{"userData": "not base64!"}]}, name="asia-vm")
    [message] = acme_violations("dev", garbled)
    assert "metadatas[0].user_data is not base64" in message


def test_user_data_without_an_acme_directory_is_reported() -> None:
    [message] = acme_violations("dev", resource(policies.DROPLET, {"userData": "#cloud-config\n"}))
    assert "user_data names no ACME directory" in message and STAGING in message


def test_the_stack_and_the_production_stacks_can_come_from_policy_config() -> None:
    droplet = {"userData": cloud_config(PRODUCTION)}
    assert acme_violations("dev", resource(policies.DROPLET, droplet, config={"stack": "prod"})) == []
    live = resource(policies.DROPLET, droplet, config={"productionStacks": ["live"]})
    assert acme_violations("live", live) == []
    assert len(acme_violations("prod", live)) == 1, "prod is no production stack once productionStacks is set"


def test_user_data_not_known_during_preview_makes_the_acme_check_not_applicable() -> None:
    with pytest.raises(_NotApplicableError) as caught:
        acme_violations("dev", resource(policies.DROPLET, {"userData": UNKNOWN}))
    assert caught.value.reason is not None
    assert caught.value.reason.startswith('digitalocean Droplet "us-vm": user_data is not known during this preview')
    with pytest.raises(_NotApplicableError) as caught:
        acme_violations("dev", resource(policies.DROPLET, {"userData": "56d76e59c9bfaa6955001dbdec98af6a3de841ac"}))
    assert caught.value.reason is not None and "user_data arrives as a SHA-1 hash" in caught.value.reason


def test_the_pack_knows_the_same_acme_directories_as_the_program() -> None:
    assert policies.ACME_DIRECTORIES == plexcdn_config.ACME_DIRECTORIES


# --- ignore_changes on user_data ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_type", "ignored"),
    [
        (policies.DROPLET, ["userData"]),
        (policies.DROPLET, ["tags", "*"]),
        (policies.LINODE_INSTANCE, ["metadatas"]),
        (policies.LINODE_INSTANCE, ["metadatas[0].userData"]),
        (policies.LINODE_INSTANCE, ['metadatas[*]["userData"]']),
    ],
)
def test_vms_that_ignore_user_data_changes_pass(resource_type: str, ignored: list[str]) -> None:
    args = resource(resource_type, {}, ignore_changes=ignored)
    assert violations(policies.validate_vm_ignores_user_data_changes, args) == []


def test_vms_that_do_not_ignore_user_data_changes_are_reported() -> None:
    [message] = violations(policies.validate_vm_ignores_user_data_changes, resource(policies.DROPLET, {}))
    assert message.startswith('digitalocean Droplet "us-vm": ignore_changes must include user_data, but lists nothing')
    # The Python SDK sends `userData`; a snake_case path would not match anything in the engine.
    args = resource(policies.DROPLET, {}, ignore_changes=["user_data"])
    assert "lists user_data" in violations(policies.validate_vm_ignores_user_data_changes, args)[0]
    args = resource(policies.LINODE_INSTANCE, {}, name="asia-vm", ignore_changes=["tags", "metadatas[0].label"])
    [message] = violations(policies.validate_vm_ignores_user_data_changes, args)
    assert message.startswith('linode Instance "asia-vm": ignore_changes must include metadatas')


def test_property_paths() -> None:
    assert policies.property_path("metadatas[0].userData") == ("metadatas", "0", "userData")
    assert policies.property_path('metadatas[*]["userData"]') == ("metadatas", "*", "userData")
    assert policies.property_path("*") == ("*",)


# --- secret inputs ------------------------------------------------------------------------------------------


def remediation_args(resource_type: str, wire_props: dict[str, Any], name: str = "us-vm") -> ResourceValidationArgs:
    """What a remediation receives: secrets kept as `Secret`, behind the proxies that unwrap them on read."""
    props = unknown_checking_proxy(deserialize_properties(copy.deepcopy(wire_props), proxy_secrets=True))
    opts = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)
    return ResourceValidationArgs(
        resource_type, props, f"urn:pulumi:dev::plex-cdn::{resource_type}::{name}", name, opts, None
    )


def remediated(resource_type: str, wire_props: dict[str, Any]) -> Mapping[str, Any] | None:
    """The new inputs on the wire, as the engine would receive them, or None when nothing changes."""
    new = policies.remediate_secret_inputs(remediation_args(resource_type, wire_props))
    return None if new is None else serialize_properties(new)


def test_secret_user_data_needs_no_remediation() -> None:
    assert remediated(policies.DROPLET, {"size": "s-1vcpu-1gb", "userData": secret("#cloud-config")}) is None
    assert remediated(policies.DROPLET, {"userData": secret(UNKNOWN)}) is None
    linode = {"metadatas": secret([{"userData": "I2Nsb3Vk"}])}
    assert remediated(policies.LINODE_INSTANCE, linode) is None


def test_plain_user_data_is_made_secret_and_nothing_else_changes() -> None:
    new = remediated(policies.DROPLET, {"size": "s-1vcpu-1gb", "userData": "#cloud-config", "tags": ["plex-cdn"]})
    assert new == {"size": "s-1vcpu-1gb", "userData": secret("#cloud-config"), "tags": ["plex-cdn"]}
    new = remediated(policies.LINODE_INSTANCE, {"type": "g6-nanode-1", "metadatas": [{"userData": "I2Nsb3Vk"}]})
    assert new == {"type": "g6-nanode-1", "metadatas": [{"userData": secret("I2Nsb3Vk")}]}


def test_the_remediation_names_what_it_marked() -> None:
    raw = deserialize_properties(
        {"connection": {"host": "198.51.100.1", "privateKey": "KEY", "proxy": {"password": "pw"}}, "stdin": "PEM"},
        proxy_secrets=True,
    )
    _, marked = policies.secret_inputs_marked(policies.REMOTE_COMMAND, raw)
    assert marked == ["connection.privateKey", "connection.proxy.password", "stdin"]


def test_ssh_credentials_of_remote_commands_must_be_secret() -> None:
    whole = {"connection": secret({"host": "198.51.100.1", "privateKey": "KEY"}), "create": "true"}
    assert remediated(policies.REMOTE_COMMAND, whole) is None
    key_only = {"connection": {"host": "198.51.100.1", "privateKey": secret("KEY")}, "stdin": secret("PEM")}
    assert remediated(policies.REMOTE_COMMAND, key_only) is None

    plain_key = {"connection": {"host": "198.51.100.1", "user": "root", "privateKey": "KEY"}, "create": "true"}
    assert remediated(policies.REMOTE_COMMAND, plain_key) == {
        "connection": {"host": "198.51.100.1", "user": "root", "privateKey": secret("KEY")},
        "create": "true",
    }


def test_copy_to_remote_keeps_its_archive_when_its_key_is_made_secret(tmp_path: Path) -> None:
    archive = {"4dabf18193072939515e22adb298388d": "0def7320c3a5731c473e5ecbe6d01bc7", "path": str(tmp_path)}
    wire = {"connection": {"host": "198.51.100.1", "privateKey": "KEY"}, "source": archive, "remotePath": "/srv"}
    new = remediated(policies.COPY_TO_REMOTE, wire)
    assert new == {
        "connection": {"host": "198.51.100.1", "privateKey": secret("KEY")},
        "source": archive,
        "remotePath": "/srv",
    }


def test_validation_time_props_carry_no_secret_markers_so_the_remediation_does_nothing_there() -> None:
    args = resource(policies.DROPLET, {"userData": "#cloud-config"})
    assert policies.props_with_secret_markers(args.props) is None
    assert policies.remediate_secret_inputs(args) is None


# --- the pack as the engine runs it -------------------------------------------------------------------------


def analyzer(stack: str = "dev", config: dict[str, dict[str, Any]] | None = None) -> _PolicyAnalyzerServicer:
    """pulumi-policy's analyzer service for the pack, configured as `pulumi preview --policy-pack` would."""
    service = _PolicyAnalyzerServicer(
        policies.POLICY_PACK_NAME,
        "0.1.0",
        policies.build_policies(policies.regions_price_lookup(), lambda: stack),
        EnforcementLevel.MANDATORY,
    )
    if config:
        request = proto.ConfigureAnalyzerRequest(
            policyConfig={
                name: proto.PolicyConfig(
                    enforcementLevel=proto.MANDATORY, properties=json_format.ParseDict(values, struct_pb2.Struct())
                )
                for name, values in config.items()
            }
        )
        service.Configure(request, None)  # type: ignore[no-untyped-call]
    return service


def analyze_request(
    resource_type: str, name: str, wire_props: Mapping[str, Any], ignore_changes: list[str] | None = None
) -> Any:
    return proto.AnalyzeRequest(
        type=resource_type,
        name=name,
        urn=f"urn:pulumi:dev::plex-cdn::{resource_type}::{name}",
        properties=json_format.ParseDict(dict(wire_props), struct_pb2.Struct()),
        options=proto.AnalyzerResourceOptions(ignoreChanges=ignore_changes or []),
    )


def analyze(service: _PolicyAnalyzerServicer, request: Any) -> Any:
    return service.Analyze(request, None)  # type: ignore[no-untyped-call]


def remediate(service: _PolicyAnalyzerServicer, request: Any) -> Any:
    return service.Remediate(request, None)  # type: ignore[no-untyped-call]


def test_the_analyzer_reports_a_world_open_ssh_rule_as_mandatory() -> None:
    wire = {"inboundRules": [do_rule("22", ["0.0.0.0/0"])], "dropletIds": [UNKNOWN]}
    response = analyze(analyzer(), analyze_request(policies.DIGITALOCEAN_FIREWALL, "us-firewall", wire))
    [diagnostic] = response.diagnostics
    assert diagnostic.policyName == "ssh-not-open-to-the-world"
    assert diagnostic.enforcementLevel == proto.MANDATORY
    assert 'digitalocean Firewall "us-firewall": inbound_rules[0].source_addresses' in diagnostic.message


def test_the_analyzer_reads_secret_user_data_and_skips_it_while_unknown() -> None:
    service = analyzer("prod")
    known = {"size": "s-1vcpu-1gb", "userData": secret(cloud_config(STAGING))}
    response = analyze(service, analyze_request(policies.DROPLET, "us-vm", known, ["userData"]))
    assert [d.policyName for d in response.diagnostics] == ["acme-server-matches-stack"]

    unknown = {"size": "s-1vcpu-1gb", "userData": secret(UNKNOWN)}
    response = analyze(service, analyze_request(policies.DROPLET, "us-vm", unknown, ["userData"]))
    assert list(response.diagnostics) == []
    skipped = {n.policy_name: n.reason for n in response.not_applicable}
    assert "not known during this preview" in skipped["acme-server-matches-stack"]


def test_the_analyzer_applies_policy_config() -> None:
    wire = {"size": "s-1vcpu-2gb", "userData": secret(cloud_config(STAGING))}
    assert list(analyze(analyzer(), analyze_request(policies.DROPLET, "us-vm", wire, ["userData"])).diagnostics) == []
    strict = analyzer(config={"pop-vm-monthly-cost-ceiling": {"maxMonthlyUsdPerVm": 10}})
    [diagnostic] = analyze(strict, analyze_request(policies.DROPLET, "us-vm", wire, ["userData"])).diagnostics
    assert diagnostic.policyName == "pop-vm-monthly-cost-ceiling" and "$12/month" in diagnostic.message


def test_the_analyzer_remediates_plain_user_data_into_a_secret() -> None:
    wire: dict[str, Any] = {"size": "s-1vcpu-1gb", "userData": cloud_config(STAGING)}
    response = remediate(analyzer(), analyze_request(policies.DROPLET, "us-vm", wire, ["userData"]))
    [remediation] = response.remediations
    assert remediation.policyName == "secret-inputs-are-secret"
    assert json_format.MessageToDict(remediation.properties)["userData"] == secret(cloud_config(STAGING))

    wire["userData"] = secret(cloud_config(STAGING))
    response = remediate(analyzer(), analyze_request(policies.DROPLET, "us-vm", wire, ["userData"]))
    assert list(response.remediations) == []


# --- the real program's stacks ------------------------------------------------------------------------------


def program_registrations(config: StackConfig, build_dir: Path) -> RecordingMonitor:
    """Every resource the program registers for `config`, recorded as the engine receives it (mock engine)."""
    _, monitor = install_mocks(config.stack)
    home_key = pulumi.Output.secret("-----BEGIN OPENSSH PRIVATE KEY-----\nmock\n-----END OPENSSH PRIVATE KEY-----\n")

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> None:
        from components.stack import build_stack

        build_stack(config, build_dir, home_key if needs_home_ssh_key(config) else None)

    program()
    return monitor


@pytest.mark.parametrize("stack_file", ["Pulumi.dev.yaml", "Pulumi.prod.yaml"])
def test_the_example_stacks_pass_every_policy(stack_file: str, tmp_path: Path) -> None:
    config = load_stack_file(ROOT / stack_file)
    monitor = program_registrations(config, tmp_path)
    service = analyzer(config.stack)
    checked: set[str] = set()
    for registration in monitor.registrations:
        request = analyze_request(
            registration.type, registration.name, registration.inputs, registration.ignore_changes
        )
        found = [f"{d.policyName}: {d.message}" for d in analyze(service, request).diagnostics]
        assert found == [], registration.name
        assert list(remediate(service, request).remediations) == [], f"{registration.name} has a plain secret input"
        checked.add(registration.type)
    assert {
        policies.DROPLET,
        policies.LINODE_INSTANCE,
        policies.DIGITALOCEAN_FIREWALL,
        policies.LINODE_FIREWALL,
    } <= checked
    assert {policies.REMOTE_COMMAND, policies.COPY_TO_REMOTE} <= checked


def test_a_stack_with_a_library_swarm_passes_every_policy(tmp_path: Path) -> None:
    config = config_from(library_values())
    monitor = program_registrations(config, tmp_path)
    service = analyzer(config.stack)
    library = [r for r in monitor.registrations if r.name.startswith("library")]
    assert {r.type for r in library} >= {policies.LINODE_INSTANCE, policies.LINODE_FIREWALL, policies.REMOTE_COMMAND}
    for registration in library:
        request = analyze_request(
            registration.type, registration.name, registration.inputs, registration.ignore_changes
        )
        assert [d.policyName for d in analyze(service, request).diagnostics] == [], registration.name
        assert list(remediate(service, request).remediations) == [], f"{registration.name} has a plain secret input"


def test_the_policies_catch_a_broken_program(tmp_path: Path) -> None:
    config = load_stack_file(ROOT / "Pulumi.dev.yaml")
    monitor = program_registrations(config, tmp_path)
    firewall = monitor.named("us-firewall")
    [ssh_rule] = [rule for rule in firewall.inputs["inboundRules"] if rule.get("portRange") == "22"]
    ssh_rule["sourceAddresses"] = ["0.0.0.0/0"]
    droplet = monitor.named("us-vm")
    service = analyzer("prod")
    request = analyze_request(firewall.type, firewall.name, firewall.inputs, firewall.ignore_changes)
    assert [d.policyName for d in analyze(service, request).diagnostics] == ["ssh-not-open-to-the-world"]
    request = analyze_request(droplet.type, droplet.name, droplet.inputs, [])
    found = sorted(d.policyName for d in analyze(service, request).diagnostics)
    assert found == ["acme-server-matches-stack", "vm-ignores-user-data-changes"]


# --- the pack's files ---------------------------------------------------------------------------------------


def test_policy_pack_project_file_runs_python_from_its_own_virtualenv() -> None:
    project = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    assert project["runtime"]["name"] == "python"
    assert project["runtime"]["options"]["virtualenv"] == "venv"


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[name.lower()] = version
    return pins


def test_policy_pack_requirements_match_the_projects_versions() -> None:
    pack = _pins(ROOT / "policy" / "requirements.txt")
    project = _pins(ROOT / "requirements.txt") | _pins(ROOT / "requirements-dev.txt")
    assert set(pack) == {"pulumi", "pulumi-policy"}
    assert {name: project[name] for name in pack} == pack


def test_main_registers_every_policy_with_the_project_price_table(monkeypatch: pytest.MonkeyPatch) -> None:
    registered: dict[str, Any] = {}

    def capture(**kwargs: Any) -> None:
        registered.update(kwargs)

    monkeypatch.setattr(pulumi_policy, "PolicyPack", capture)
    runpy.run_path(str(ROOT / "policy"), run_name="__main__")
    assert registered["name"] == "plex-cdn"
    assert registered["enforcement_level"] == EnforcementLevel.MANDATORY
    by_name = {p.name: p for p in registered["policies"]}
    assert set(by_name) == {
        "ssh-not-open-to-the-world",
        "pop-vm-monthly-cost-ceiling",
        "acme-server-matches-stack",
        "vm-ignores-user-data-changes",
        "secret-inputs-are-secret",
    }
    assert by_name["secret-inputs-are-secret"].enforcement_level == EnforcementLevel.REMEDIATE
    cost = by_name["pop-vm-monthly-cost-ceiling"]
    assert isinstance(cost, ResourceValidationPolicy)
    found = violations(cost.validate, resource(policies.DROPLET, {"size": "c-4"}))
    assert "costs $84/month" in found[0], "the pack prices sizes with plexcdn.regions"


@pytest.fixture
def running_pack() -> Iterator[int]:
    """The pack started the way Pulumi's Python host starts one; yields the loopback port it serves on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "pulumi.policy", "127.0.0.1:1", str(ROOT / "policy")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        # The pack prints its port first thing; select keeps a pack that hangs from hanging the test.
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline().strip() if ready else ""
        assert line.isdigit(), f"the pack did not print its port within 60 s: {line!r}"
        yield int(line)
    finally:
        process.kill()
        process.wait(timeout=10)


def test_the_pack_starts_and_answers_the_engine_over_grpc(running_pack: int) -> None:
    import grpc  # type: ignore[import-untyped]
    from pulumi.runtime.proto import analyzer_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{running_pack}") as channel:
        stub = analyzer_pb2_grpc.AnalyzerStub(channel)
        info = stub.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
        assert info.name == "plex-cdn"
        assert sorted(p.name for p in info.policies) == sorted(
            [
                "acme-server-matches-stack",
                "pop-vm-monthly-cost-ceiling",
                "secret-inputs-are-secret",
                "ssh-not-open-to-the-world",
                "vm-ignores-user-data-changes",
            ]
        )
        wire = {"inboundPolicy": "DROP", "inbounds": [linode_rule("22", ipv6s=["::/0"])]}
        response = stub.Analyze(analyze_request(policies.LINODE_FIREWALL, "asia-firewall", wire), timeout=30)
        assert [d.policyName for d in response.diagnostics] == ["ssh-not-open-to-the-world"]
        assert 'linode Firewall "asia-firewall": inbounds[0].ipv6s' in response.diagnostics[0].message


@pytest.mark.parametrize("kind_tag", ["plex-cdn-transcode", "plex-cdn-library"])
def test_pop_rules_leave_transcode_slaves_and_library_peers_alone(kind_tag: str) -> None:
    slave = {"size": "c-4", "tags": ["plex-cdn", "plex-cdn-dev", kind_tag], "userData": "#cloud-config\n"}
    pop = {**slave, "tags": ["plex-cdn", "plex-cdn-dev", "plex-cdn-hub"]}
    lookup = policies.regions_price_lookup()
    assert policies.cost_problem(policies.DROPLET, slave, lookup, 24) is None
    assert policies.cost_problem(policies.DROPLET, pop, lookup, 24) is not None
    assert policies.acme_problems(policies.DROPLET, slave, "dev", ["prod"]) == ([], [])
    assert policies.acme_problems(policies.DROPLET, pop, "dev", ["prod"])[0]
