"""The whole graph under Pulumi's mock engine: resources, parents, DNS, firewalls, IAM, secrets."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pulumi
import pytest

from labs.mock_engine import RecordingMonitor, install_mocks
from plexcdn import iam, inventory, preflight, render
from plexcdn.config import StackConfig
from tests.conftest import HOME_HOST_KEY, config_from, example_values, five_pop_values, wireguard_values
from tests.library_fixtures import library_values


def build(
    config: StackConfig, build_dir: Path, home_ssh_key: str | None = None
) -> tuple[RecordingMonitor, dict[str, Any]]:
    """Run the program's graph for `config` and return what the engine saw plus resolved stack outputs."""
    _, monitor = install_mocks(config.stack)
    resolved: dict[str, Any] = {}

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> pulumi.Output[Any]:
        from components.stack import build_stack

        key = pulumi.Output.secret(home_ssh_key) if home_ssh_key is not None else None
        outputs = build_stack(config, build_dir, key)
        pops = {name: pulumi.Output.all(p.ipv4, p.ipv6) for name, p in outputs.pops.items()}
        home_config = outputs.home_wireguard_config
        home_secret: pulumi.Output[bool | None] = pulumi.Output.from_input(
            home_config.is_secret() if home_config is not None else None
        )

        def keep(values: list[Any]) -> None:
            resolved.update(
                allow_list=values[0],
                policy=json.loads(values[1]),
                pops=values[2],
                home_config_secret=values[3],
                agent_firewall=values[4],
            )

        return pulumi.Output.all(
            outputs.origin_allow_list,
            outputs.certbot_policy_json,
            pulumi.Output.all(**pops),
            home_secret,
            outputs.agent_firewall_rules if outputs.agent_firewall_rules is not None else None,
        ).apply(keep)

    program()
    return monitor, resolved


@pytest.fixture
def example(tmp_path: Path) -> tuple[StackConfig, RecordingMonitor, dict[str, Any]]:
    config = config_from(example_values())
    monitor, resolved = build(config, tmp_path)
    return config, monitor, resolved


def test_example_stack_makes_each_resource_type_the_expected_number_of_times(example: Any) -> None:
    _, monitor, _ = example
    counts: dict[str, int] = {}
    for registration in monitor.registrations:
        counts[registration.type] = counts.get(registration.type, 0) + 1
    assert counts == {
        "plex-cdn:stack_keys:StackKeys": 1,
        "digitalocean:index/sshKey:SshKey": 1,
        # deploy key, peer CA key, the edge's client CA key, a host key per VM, the edge's client key, the
        # hub's peer-port key
        "tls:index/privateKey:PrivateKey": 7,
        # the peer CA and the edge's client CA
        "tls:index/selfSignedCert:SelfSignedCert": 2,
        "tls:index/certRequest:CertRequest": 2,
        "tls:index/locallySignedCert:LocallySignedCert": 2,
        "plex-cdn:certbot_user:CertbotUser": 1,
        "aws:iam/user:User": 1,
        "aws:iam/userPolicy:UserPolicy": 1,
        "aws:iam/accessKey:AccessKey": 1,
        "plex-cdn:edge_pop:EdgePop": 2,
        "digitalocean:index/droplet:Droplet": 1,
        "digitalocean:index/firewall:Firewall": 1,
        "linode:index/instance:Instance": 1,
        "linode:index/firewall:Firewall": 1,
        "command:remote:Command": 6,  # certbot credentials, boot wait and deploy, per POP
        "command:remote:CopyToRemote": 2,
        "plex-cdn:latency_dns:LatencyDns": 2,
        "aws:route53/healthCheck:HealthCheck": 2,
        "aws:route53/record:Record": 8,  # shared A/AAAA + own A/AAAA per POP
        "plex-cdn:origin_link:OriginLink": 1,
    }


def test_every_child_is_parented_to_its_component_and_named_after_it(example: Any) -> None:
    _, monitor, _ = example
    components = {r.urn: r for r in monitor.registrations if not r.custom}
    for registration in monitor.registrations:
        if registration.custom:
            assert registration.parent in components, f"{registration.type} {registration.name} has no component parent"
            parent = components[registration.parent]
            assert registration.name.startswith(f"{parent.name}-"), (registration.name, parent.name)
        else:
            assert registration.type.startswith("plex-cdn:"), registration.type
            module = registration.type.split(":")[1]
            assert Path(__file__).parent.parent.joinpath("components", f"{module}.py").is_file(), module


def test_vms_ignore_changes_to_their_first_boot_user_data(example: Any) -> None:
    _, monitor, _ = example
    assert monitor.named("us-vm").ignore_changes == ["userData"]
    # A Linode's user_data lives inside `metadatas`.
    assert monitor.named("asia-vm").ignore_changes == ["metadatas"]


def test_resources_with_account_unique_names_are_deleted_before_their_replacement(example: Any) -> None:
    config, monitor, _ = example
    assert monitor.named("certbot-user").delete_before_replace
    assert monitor.named("certbot-user").inputs["name"] == f"plex-cdn-{config.stack}-certbot"
    assert monitor.named("asia-vm").delete_before_replace and monitor.named("asia-firewall").delete_before_replace
    assert monitor.named("asia-vm").inputs["label"] == f"plex-cdn-{config.stack}-asia"
    assert not monitor.named("us-vm").delete_before_replace, "Droplet names need not be unique: no downtime on replace"


def test_latency_records_carry_the_region_table_and_a_health_check(example: Any) -> None:
    config, monitor, _ = example
    shared = [r for r in monitor.of_type("aws:route53/record:Record") if r.inputs["name"] == config.shared_name]
    assert sorted((r.inputs["setIdentifier"], r.inputs["type"]) for r in shared) == [
        ("asia", "A"),
        ("asia", "AAAA"),
        ("us", "A"),
        ("us", "AAAA"),
    ]
    regions = {r.inputs["setIdentifier"]: r.inputs["latencyRoutingPolicies"][0]["region"] for r in shared}
    assert regions == {"us": "us-east-1", "asia": "ap-northeast-1"}
    checks = {r.name: r for r in monitor.of_type("aws:route53/healthCheck:HealthCheck")}
    for record in shared:
        pop = record.inputs["setIdentifier"]
        check = checks[f"{pop}-dns-health"]
        assert record.inputs["healthCheckId"] == f"{pop}-dns-health-id"
        assert check.inputs["resourcePath"] == render.HEALTH_PATH
        assert check.inputs["port"] == 80
        assert check.inputs["fqdn"] == config.pop_name(pop)
    own = [r for r in monitor.of_type("aws:route53/record:Record") if r.inputs["name"] != config.shared_name]
    assert sorted(r.inputs["name"] for r in own) == sorted([config.pop_name("us"), config.pop_name("asia")] * 2)
    assert all("setIdentifier" not in r.inputs for r in own)


def test_records_point_at_the_vm_addresses(example: Any) -> None:
    _, monitor, resolved = example
    for pop, (ipv4, ipv6) in resolved["pops"].items():
        records = [r for r in monitor.of_type("aws:route53/record:Record") if r.name.startswith(f"{pop}-dns-")]
        by_type = {r.inputs["type"]: r.inputs["records"] for r in records}
        assert by_type == {"A": [ipv4], "AAAA": [ipv6]}
        assert ":" not in ipv4 and "/" not in ipv6


def test_firewalls_open_ssh_to_the_admin_network_only(example: Any) -> None:
    config, monitor, _ = example
    droplet_fw = monitor.named("us-firewall").inputs["inboundRules"]
    by_port = {rule.get("portRange", "icmp"): rule["sourceAddresses"] for rule in droplet_fw}
    assert by_port["22"] == [str(config.admin.cidr)]
    assert by_port["80"] == by_port["443"] == by_port["8443"] == ["0.0.0.0/0", "::/0"]
    assert set(by_port) == {"22", "80", "443", "8443", "icmp"}
    linode_fw = monitor.named("asia-firewall").inputs
    assert linode_fw["inboundPolicy"] == "DROP"
    ports = {rule.get("ports", "icmp"): rule for rule in linode_fw["inbounds"]}
    assert set(ports) == {"22", "80", "443", "icmp"}, "an edge with no downstream POP keeps the peer port closed"
    assert ports["22"]["ipv4s"] == [str(config.admin.cidr)] and "ipv6s" not in ports["22"]


def test_certbot_policy_names_exactly_the_challenge_records_of_every_certificate(example: Any) -> None:
    config, monitor, resolved = example
    policy = resolved["policy"]
    assert policy == iam.certbot_policy("Z0MOCKZONE", config.all_certificate_names())
    write = policy["Statement"][2]
    assert write["Resource"] == "arn:aws:route53:::hostedzone/Z0MOCKZONE"
    assert write["Condition"]["ForAllValues:StringEquals"] == {
        iam.RECORD_NAMES_KEY: [
            "_acme-challenge.plex-asia.example.com",
            "_acme-challenge.plex-us.example.com",
            "_acme-challenge.plex.example.com",
        ],
        iam.RECORD_TYPES_KEY: ["TXT"],
        iam.ACTIONS_KEY: ["CREATE", "DELETE"],
    }
    assert json.loads(monitor.named("certbot-policy").inputs["policy"]) == policy


def test_secrets_reach_the_engine_as_secrets(example: Any) -> None:
    _, monitor, _ = example
    assert "userData" in monitor.named("us-vm").secret_inputs
    assert monitor.named("asia-vm").secret_inputs == ["metadatas[0].userData"]
    for command in monitor.of_type("command:remote:Command") + monitor.of_type("command:remote:CopyToRemote"):
        assert any(p.startswith("connection") for p in command.secret_inputs), command.name
    assert "stdin" in monitor.named("asia-nginx-deploy").secret_inputs
    # The certbot key travels on a command's stdin, never in user_data, which holds the VM's own host key.
    credentials = monitor.named("us-certbot-credentials")
    assert "stdin" in credentials.secret_inputs
    assert "mock-secret-" in credentials.inputs["stdin"]["value"]
    user_data = monitor.named("us-vm").inputs["userData"]["value"]
    assert "mock-secret-" not in user_data and "aws_secret_access_key" not in user_data
    assert "mock-us-ssh-host-key" in user_data, "the VM's host key reaches its first boot"


def test_no_secret_value_appears_outside_secret_inputs(example: Any) -> None:
    _, monitor, _ = example
    for registration in monitor.registrations:
        plain = json.dumps(_without_secrets(registration.inputs))
        assert "mock-secret-" not in plain, registration.name
        assert "PRIVATE KEY" not in plain, registration.name


def _without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        if "4dabf18193072939515e22adb298388d" in value:
            return "<secret>"
        return {k: _without_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


def test_edge_deploy_renders_the_hub_address_and_writes_the_release(example: Any, tmp_path: Path) -> None:
    _, monitor, resolved = example
    hub_ipv4 = resolved["pops"]["us"][0]
    create = monitor.named("asia-nginx-deploy").inputs["create"]
    assert "nginx -t" in create and "systemctl reload-or-restart nginx" in create
    release = create.split("release-")[1].split('"')[0]
    release_dir = tmp_path / "asia" / f"release-{release}" / "nginx"
    upstream = (release_dir / "plexcdn-upstream.conf").read_text()
    assert f"server {hub_ipv4}:{render.PEER_PORT};" in upstream
    assert f'default "{release}";' in (release_dir / render.RELEASE_FILE).read_text()
    # The edge verifies its hub against the stack's own peer CA, not the system's CAs.
    proxy = (release_dir / "plexcdn-proxy.conf").read_text()
    assert f"proxy_ssl_trusted_certificate {render.PEER_CA_FILE};" in proxy
    assert "-----BEGIN CERTIFICATE-----\nmock-keys-peer-ca" in (release_dir / render.PEER_CA_FILE).read_text()
    assert monitor.named("asia-nginx-release").inputs["remotePath"] == render.NGINX_RELEASES_DIR


def test_origin_link_public_allows_the_hub_addresses(example: Any) -> None:
    _, _, resolved = example
    assert resolved["allow_list"] == sorted(resolved["pops"]["us"])
    assert resolved["home_config_secret"] is None


def test_five_pop_tree(tmp_path: Path) -> None:
    config = config_from(five_pop_values())
    monitor, resolved = build(config, tmp_path)
    assert len(monitor.of_type("plex-cdn:edge_pop:EdgePop")) == 5
    assert len(monitor.of_type("plex-cdn:origin_link:OriginLink")) == 1
    assert len(monitor.of_type("aws:route53/healthCheck:HealthCheck")) == 5
    # A client certificate per edge, a peer-port certificate per POP with downstream POPs (us, eu, asia).
    assert len(monitor.of_type("tls:index/locallySignedCert:LocallySignedCert")) == 6
    # Each edge's client certificate comes from a client CA of its own, and a POP's peer port accepts the CAs
    # of its own downstream POPs and no one else's.
    client_cas = {r.name for r in monitor.of_type("tls:index/selfSignedCert:SelfSignedCert")} - {"keys-peer-ca"}
    assert client_cas == {f"keys-{pop}-client-ca" for pop in ("asia", "sg", "uk")}
    for pop, downstream in {"us": ("asia",), "eu": ("uk",), "asia": ("sg",)}.items():
        release = monitor.named(f"{pop}-nginx-deploy").inputs["create"].split("release-")[1].split('"')[0]
        accepted = (tmp_path / pop / f"release-{release}" / "nginx" / render.PEER_CLIENT_CAS_FILE).read_text()
        assert sorted(re.findall(r"mock-keys-(\w+)-client-ca", accepted)) == sorted(downstream), pop
    regions = {
        r.inputs["setIdentifier"]: r.inputs["latencyRoutingPolicies"][0]["region"]
        for r in monitor.of_type("aws:route53/record:Record")
        if r.inputs.get("type") == "A" and "setIdentifier" in r.inputs
    }
    assert regions == {
        "us": "us-east-1",
        "eu": "eu-central-1",
        "asia": "ap-northeast-1",
        "sg": "ap-southeast-1",
        "uk": "eu-west-2",
    }
    sg_release = monitor.named("sg-nginx-deploy").inputs["create"].split("release-")[1].split('"')[0]
    upstream = (tmp_path / "sg" / f"release-{sg_release}" / "nginx" / "plexcdn-upstream.conf").read_text()
    assert f"server {resolved['pops']['asia'][0]}:{render.PEER_PORT};" in upstream
    peer_port_open = {
        r.name: any(rule.get("portRange") == "8443" or rule.get("ports") == "8443" for rule in _rules(r))
        for r in monitor.registrations
        if r.name.endswith("-firewall")
    }
    assert peer_port_open == {
        "us-firewall": True,
        "eu-firewall": True,
        "asia-firewall": True,
        "sg-firewall": False,
        "uk-firewall": False,
    }
    assert sorted(resolved["allow_list"]) == sorted(resolved["pops"]["us"] + resolved["pops"]["eu"])


def _rules(registration: Any) -> list[dict[str, Any]]:
    return list(registration.inputs.get("inboundRules", registration.inputs.get("inbounds", [])))


def test_wireguard_link_keeps_keys_secret_and_outputs_the_home_config(tmp_path: Path) -> None:
    config = config_from(wireguard_values())
    monitor, resolved = build(config, tmp_path)
    tunnel = monitor.named("origin-hub-tunnel")
    assert "stdin" in tunnel.secret_inputs
    assert tunnel.inputs["logging"] == "none"
    assert "systemctl disable --now wg-quick@" in tunnel.inputs["delete"], "leaving WireGuard takes the tunnel down"
    assert resolved["home_config_secret"] is True
    assert resolved["allow_list"] == [str(config.origin.hub_tunnel_address)]
    firewall = {rule.get("portRange"): rule for rule in monitor.named("us-firewall").inputs["inboundRules"]}
    assert firewall[str(config.origin.wireguard_port)]["protocol"] == "udp"
    for key in monitor.of_type("random:index/randomBytes:RandomBytes"):
        assert key.parent_type == "plex-cdn:origin_link:OriginLink"


def agent_values() -> dict[str, Any]:
    values = example_values()
    values["origin"]["agent"] = {"listenPort": 32443, "sshHost": "192.168.1.10", "sshHostKey": HOME_HOST_KEY}
    return values


def test_origin_agent_is_installed_over_ssh_with_its_key_on_stdin(tmp_path: Path) -> None:
    config = config_from(agent_values())
    monitor, resolved = build(config, tmp_path, home_ssh_key="-----BEGIN OPENSSH PRIVATE KEY-----\nhome\n")
    command = monitor.named("origin-agent")
    assert command.parent_type == "plex-cdn:origin_link:OriginLink"
    assert "stdin" in command.secret_inputs and "connection" in command.secret_inputs
    assert command.inputs["connection"]["value"]["host"] == "192.168.1.10"
    assert "nginx -t" in command.inputs["create"] and "agent removed" in command.inputs["delete"]
    assert "PRIVATE KEY" not in command.inputs["create"]
    hub_addresses = sorted(resolved["pops"]["us"])
    assert resolved["allow_list"] == hub_addresses
    ipv4, ipv6 = hub_addresses
    assert f"ip saddr {{ {ipv4} }} accept" in resolved["agent_firewall"]
    assert f"ip6 saddr {{ {ipv6} }} accept" in resolved["agent_firewall"]
    assert "dport 32443 drop" in resolved["agent_firewall"]
    # The hub verifies the agent by the stack's origin CA and shows a client certificate from its own client
    # CA, which is the one the agent accepts.
    assert len(monitor.of_type("tls:index/selfSignedCert:SelfSignedCert")) == 4  # peer, origin, us and asia clients
    encoded = re.search(r"echo '([A-Za-z0-9+/=]+)' \| base64 -d > \S+/hub-client-cas\.pem", command.inputs["create"])
    assert encoded is not None
    accepted = base64.b64decode(encoded.group(1)).decode()
    assert re.findall(r"mock-keys-\S+", accepted) == ["mock-keys-us-client-ca"], "the hub's own CA, nothing else"
    assert monitor.named("us-origin-client-cert").parent_type == "plex-cdn:edge_pop:EdgePop"
    assert "stdin" in monitor.named("us-nginx-deploy").secret_inputs
    release = monitor.named("us-nginx-deploy").inputs["create"].split("release-")[1].split('"')[0]
    release_dir = tmp_path / "us" / f"release-{release}" / "nginx"
    assert "-----BEGIN CERTIFICATE-----\nmock-keys-origin-ca" in (release_dir / render.ORIGIN_CA_FILE).read_text()
    proxy = (release_dir / "plexcdn-proxy.conf").read_text()
    assert f"proxy_ssl_certificate {render.ORIGIN_CLIENT_CERT_FILE};" in proxy
    assert f"proxy_ssl_trusted_certificate {render.ORIGIN_CA_FILE};" in proxy
    upstream = (release_dir / "plexcdn-upstream.conf").read_text()
    # home.example.net is a name: the hub's resolver keeps its addresses in a file the upstream includes.
    assert f"include {render.ORIGIN_SERVERS_FILE};" in upstream
    programs = tmp_path / "us" / f"release-{release}" / "sbin"
    assert (programs / render.ORIGIN_RESOLVER_PROGRAM).read_text().startswith("#!/usr/bin/env python3")
    assert f"--host {config.origin.host} --port 32443" in monitor.named("us-nginx-deploy").inputs["create"]


def test_dns_names_a_pop_only_once_its_deploy_has_run(example: Any) -> None:
    _, monitor, _ = example
    for pop in ("us", "asia"):
        deploy = monitor.named(f"{pop}-nginx-deploy").urn
        children = [r for r in monitor.registrations if r.name.startswith(f"{pop}-dns-") and r.custom]
        assert len(children) == 5  # the health check, shared and own A and AAAA
        for child in children:
            assert deploy in child.depends_on, child.name


def test_every_connection_pins_the_host_key_of_the_machine_it_reaches(example: Any) -> None:
    _, monitor, _ = example
    for pop in ("us", "asia"):
        host_key = monitor.named(f"{pop}-ssh-host-key")
        assert host_key.inputs["algorithm"] == "ED25519" and host_key.parent_type == "plex-cdn:edge_pop:EdgePop"
        expected = "ssh-ed25519 " + base64.b64encode(hashlib.sha256(f"{pop}-ssh-host-key".encode()).digest()).decode()
        steps = [r for r in monitor.registrations if r.type.startswith("command:remote:") and r.name.startswith(pop)]
        assert len(steps) == 4
        for step in steps:
            connection = step.inputs["connection"]["value"]
            assert connection["hostKey"] == expected, step.name
        # The private half reaches the VM only inside its (secret) user_data.
        assert any("userData" in path for path in monitor.named(f"{pop}-vm").secret_inputs)
        assert f"mock-{pop}-ssh-host-key" in _user_data(monitor, pop)


def _user_data(monitor: RecordingMonitor, pop: str) -> str:
    inputs = monitor.named(f"{pop}-vm").inputs
    if "userData" in inputs:
        return str(inputs["userData"]["value"])
    return base64.b64decode(inputs["metadatas"][0]["userData"]["value"]).decode()


def test_droplets_carry_the_stacks_one_digitalocean_ssh_key(tmp_path: Path) -> None:
    values = five_pop_values()
    config = config_from(values)
    monitor, _ = build(config, tmp_path)
    keys = monitor.of_type("digitalocean:index/sshKey:SshKey")
    assert len(keys) == 1
    assert keys[0].inputs["name"] == f"plex-cdn-{config.stack}-deploy"
    fingerprint = ":".join(f"{b:02x}" for b in hashlib.sha256(keys[0].name.encode()).digest()[:16])
    droplets = monitor.of_type("digitalocean:index/droplet:Droplet")
    assert len(droplets) == 3
    for droplet in droplets:
        assert droplet.inputs["sshKeys"] == [fingerprint], droplet.name


def test_a_stack_without_droplets_adds_no_key_to_a_digitalocean_account(tmp_path: Path) -> None:
    values = example_values()
    values["pops"][0].update(provider="linode", region="us-east", size="g6-nanode-1")
    monitor, _ = build(config_from(values), tmp_path)
    assert monitor.of_type("digitalocean:index/sshKey:SshKey") == []


DEPLOY_FROM = ["198.51.100.0/28", "2001:db8:77::/48"]


def test_every_firewall_admits_deploy_from_on_the_ssh_port_and_nowhere_else(tmp_path: Path) -> None:
    """A deploying machine outside admin.cidr (a CI runner with a fixed address) reaches every VM it makes."""
    values = library_values()  # POPs on DigitalOcean and Linode, a cloud library peer on Linode
    values["admin"]["deployFrom"] = DEPLOY_FROM
    config = config_from(values)
    monitor, _ = build(config, tmp_path, home_ssh_key="-----BEGIN OPENSSH PRIVATE KEY-----\nhome\n")
    admin = str(config.admin.cidr)
    droplet = {rule.get("portRange", "icmp"): rule["sourceAddresses"] for rule in _rules(monitor.named("us-firewall"))}
    assert droplet["22"] == [admin, *DEPLOY_FROM]
    for name in ("asia-firewall", "library-tokyo-firewall"):
        by_port = {rule.get("ports", "icmp"): rule for rule in _rules(monitor.named(name))}
        assert by_port["22"]["ipv4s"] == [admin, DEPLOY_FROM[0]], name
        assert by_port["22"]["ipv6s"] == [DEPLOY_FROM[1]], name
    firewalls = monitor.of_type("digitalocean:index/firewall:Firewall") + monitor.of_type(
        "linode:index/firewall:Firewall"
    )
    assert len(firewalls) == 3
    for firewall in firewalls:
        for rule in _rules(firewall):
            if rule.get("portRange", rule.get("ports")) != "22":
                sources = [source for key in ("sourceAddresses", "ipv4s", "ipv6s") for source in rule.get(key) or []]
                assert not set(DEPLOY_FROM) & set(sources), (firewall.name, rule)


def test_the_inventory_knows_the_labels_and_set_identifiers_the_program_gives(tmp_path: Path) -> None:
    """preflight finds the stack's own VMs by label and its latency records by set identifier."""
    config = config_from(library_values())
    monitor, _ = build(config, tmp_path, home_ssh_key="-----BEGIN OPENSSH PRIVATE KEY-----\nhome\n")
    labels = {
        r.inputs.get("name", r.inputs.get("label"))
        for r in monitor.of_type("digitalocean:index/droplet:Droplet")
        + monitor.of_type("linode:index/instance:Instance")
    }
    assert labels == {vm.label for vm in inventory.cloud_vms(config)}
    identifiers = {
        r.inputs["setIdentifier"] for r in monitor.of_type("aws:route53/record:Record") if "setIdentifier" in r.inputs
    }
    assert identifiers == {pop.name for pop in config.pops}
    user = monitor.named("certbot-user").inputs
    assert user["name"] == inventory.certbot_user_name(config)
    assert user["tags"][preflight.STACK_TAG] == config.stack


def test_every_certificate_the_stack_issues_lives_a_year_at_most_and_is_renewed_before_its_end(tmp_path: Path) -> None:
    """Peer and agent certificates: a year at most (Mozilla's guidelines allow 366 days), reissued by any
    `pulumi up` in their last 90 days."""
    config = config_from(agent_values())
    monitor, _ = build(config, tmp_path, home_ssh_key="-----BEGIN OPENSSH PRIVATE KEY-----\nhome\n")
    leaves = monitor.of_type("tls:index/locallySignedCert:LocallySignedCert")
    # the agent's server certificate, the hub's for the agent and its peer port, the edge's client certificate
    assert sorted(leaf.name for leaf in leaves) == [
        "asia-peer-client-cert",
        "keys-agent-cert",
        "us-origin-client-cert",
        "us-peer-server-cert",
    ]
    for leaf in leaves:
        validity, renewal = int(leaf.inputs["validityPeriodHours"]), int(leaf.inputs["earlyRenewalHours"])
        assert validity <= 365 * 24, leaf.name
        assert 30 * 24 <= renewal < validity, leaf.name
        assert leaf.inputs["setSubjectKeyId"] is True, leaf.name
    # Each POP's client certificate comes from that POP's own client CA.
    assert monitor.named("asia-peer-client-cert").inputs["caCertPem"] == _mock_cert("keys-asia-client-ca")
    assert monitor.named("us-origin-client-cert").inputs["caCertPem"] == _mock_cert("keys-us-client-ca")
    assert monitor.named("us-peer-server-cert").inputs["caCertPem"] == _mock_cert("keys-peer-ca")
    for authority in monitor.of_type("tls:index/selfSignedCert:SelfSignedCert"):
        assert authority.inputs["isCaCertificate"] and authority.inputs["maxPathLength"] == 0, authority.name
        assert 0 < int(authority.inputs["earlyRenewalHours"]) < int(authority.inputs["validityPeriodHours"])
        assert authority.inputs["setSubjectKeyId"] is True and authority.inputs["setAuthorityKeyId"] is True


def _mock_cert(name: str) -> str:
    return f"-----BEGIN CERTIFICATE-----\nmock-{name}\n-----END CERTIFICATE-----\n"
