"""The preflight against the providers' real clients: pydo and linode_api4 talk HTTPS to a fake of each API on
127.0.0.1 answering the documented shapes (tests/fixtures/preflight), boto3 talks to moto's Route53 and IAM."""

from __future__ import annotations

import ipaddress
import json
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from parliament import analyze_policy_string

from labs.iam_eval import Request, is_allowed
from labs.lab_ca import LabCA
from plexcdn import preflight, regions
from plexcdn.__main__ import main
from plexcdn.config import StackConfig
from plexcdn.inventory import cloud_vms, home_hosts
from plexcdn.preflight import DeployOrigin, Report
from plexcdn.provider_apis import (
    DIGITALOCEAN_API_ENV,
    LINODE_API_ENV,
    PREFLIGHT_AWS_ACTIONS,
    PREVIEW_AWS_ACTIONS,
    DigitalOceanApi,
    aws_read_policy,
)
from tests.conftest import HOME_HOST_KEY, ROOT, config_from, example_values, write_stack
from tests.provider_fakes import DIGITALOCEAN_TOKEN, LINODE_TOKEN, FakeProviders, serve

ZONE_NAME = "example.com"
ACCOUNT_ID = "123456789012"  # moto's account
DO_IMAGE = regions.provider_table("digitalocean").image
LINODE_IMAGE = regions.provider_table("linode").image
# The example stack: POP us on DigitalOcean nyc3, POP asia on Linode ap-northeast.
US_ADDRESSES = ("192.0.2.21", "2001:db8:21::1")
ASIA_ADDRESSES = ("203.0.113.44", "2001:db8:44::1")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    directory = tmp_path_factory.mktemp("preflight-tls")
    ca = LabCA.create(directory / "ca", "preflight fake APIs")
    issued = ca.issue(["127.0.0.1"], directory / "letsencrypt")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.fullchain, issued.privkey)
    return context, ca.bundle_path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials, no proxies, no AWS config files, and no instance-metadata lookup (it leaves the machine)."""
    for name in (
        "DIGITALOCEAN_TOKEN",
        "DIGITALOCEAN_ACCESS_TOKEN",
        "LINODE_TOKEN",
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "RUNNER_ENVIRONMENT",
        preflight.DEPLOY_ADDRESS_ENV,
        DIGITALOCEAN_API_ENV,
        LINODE_API_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def providers(
    tls: tuple[ssl.SSLContext, Path], clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeProviders]:
    context, bundle = tls
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    yield from serve(FakeProviders(), context)


@dataclass
class Aws:
    route53: Any
    iam: Any
    zone_id: str

    def record(self, name: str, kind: str, *values: str, **routing: Any) -> None:
        record_set: dict[str, Any] = {"Name": name, "Type": kind, "TTL": 60}
        record_set["ResourceRecords"] = [{"Value": value} for value in values]
        record_set.update(routing)
        self.route53.change_resource_record_sets(
            HostedZoneId=self.zone_id, ChangeBatch={"Changes": [{"Action": "CREATE", "ResourceRecordSet": record_set}]}
        )


@pytest.fixture
def aws(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        route53 = boto3.client("route53", region_name="us-east-1")
        zone = route53.create_hosted_zone(Name=ZONE_NAME, CallerReference="preflight")["HostedZone"]["Id"]
        yield Aws(route53, boto3.client("iam", region_name="us-east-1"), zone.removeprefix("/hostedzone/"))


def env_for(fake: FakeProviders) -> dict[str, str]:
    return {
        "DIGITALOCEAN_TOKEN": DIGITALOCEAN_TOKEN,
        "LINODE_TOKEN": LINODE_TOKEN,
        DIGITALOCEAN_API_ENV: fake.url,
        LINODE_API_ENV: f"{fake.url}/v4",
    }


@pytest.fixture
def example() -> StackConfig:
    return config_from(example_values())


def lines(findings: list[preflight.Finding]) -> list[str]:
    return [finding.line for finding in findings]


def only(report: Report, setting: str) -> str:
    """The one problem line for `setting`: each problem is reported once."""
    found = [finding.line for finding in report.problems if finding.setting == setting]
    assert len(found) == 1, lines(report.problems)
    return found[0]


def add_stack_vms(fake: FakeProviders, config: StackConfig) -> None:
    """This stack's POPs as an earlier `pulumi up` left them."""
    fake.add_droplet(f"plex-cdn-{config.stack}-us", "nyc3", *US_ADDRESSES)
    fake.add_linode(f"plex-cdn-{config.stack}-asia", "ap-northeast", *ASIA_ADDRESSES)


# --- the whole account, clean -------------------------------------------------------------------------------


def test_a_clean_account_has_no_problem_and_every_provider_was_asked(
    providers: FakeProviders, aws: Aws, example: StackConfig
) -> None:
    report = preflight.run(example, env_for(providers))
    assert report.problems == [] and report.warnings == []
    checked = "\n".join(report.checked)
    assert f"digitalocean: image {DO_IMAGE}; pops[0] nyc3/s-1vcpu-1gb" in checked
    assert f"linode: image {LINODE_IMAGE}; pops[1] ap-northeast/g6-nanode-1" in checked
    assert "digitalocean account: 1 of 25 Droplets in use, this stack adds 1" in checked
    assert f"route53: zone example.com ({aws.zone_id})" in checked
    assert "iam: user plex-cdn-dev-certbot is free" in checked
    asked = {path.split("?")[0] for _, path in providers.requests}
    assert asked >= {
        "/v2/account",
        "/v2/regions",
        "/v2/sizes",
        "/v2/images",
        "/v2/droplets",
        "/v4/regions",
        "/v4/linode/types",
        f"/v4/images/{LINODE_IMAGE}",
        "/v4/regions/availability",
        "/v4/linode/instances",
        "/v4/account/availability",
    }
    assert (
        "linode account: room for 1 more (Linode's API exposes no limit on the number of Linodes; 1 Linode on the "
        "account now)"
    ) in report.not_checked


def test_the_cli_prints_no_problem_lines_and_exits_0_for_a_clean_account(
    providers: FakeProviders, aws: Aws, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in env_for(providers).items():
        monkeypatch.setenv(name, value)
    assert main(["preflight", str(ROOT / "Pulumi.dev.yaml")]) == 0
    out, err = capsys.readouterr()
    assert "error:" not in err and "Traceback" not in err
    assert out.splitlines()[-1].startswith(f"{ROOT / 'Pulumi.dev.yaml'}: no problems found")
    assert "checked: digitalocean" in out and "checked: linode" in out and "checked: route53" in out


# --- each problem produces its line -------------------------------------------------------------------------


def test_a_removed_digitalocean_image_is_named_with_the_debian_images_offered_now(
    providers: FakeProviders, aws: Aws, example: StackConfig
) -> None:
    images = providers.digitalocean["images"]["images"]
    images[:] = [image for image in images if image["slug"] != DO_IMAGE]
    report = preflight.run(example, env_for(providers))
    line = only(report, "digitalocean image")
    assert f"{DO_IMAGE} (plexcdn/regions.py), which DigitalOcean no longer offers" in line
    remaining = sorted(image["slug"] for image in images if image["distribution"] == "Debian")
    assert f"its Debian images now: {', '.join(remaining)}" in line
    assert len(report.problems) == 1


def test_a_removed_linode_image_and_one_without_cloud_init(
    providers: FakeProviders, aws: Aws, example: StackConfig
) -> None:
    images = providers.linode["images"]["data"]
    kept = [image for image in images if image["id"] != LINODE_IMAGE]
    images[:] = kept
    report = preflight.run(example, env_for(providers))
    assert f"{LINODE_IMAGE} (plexcdn/regions.py), which Linode no longer offers" in only(report, "linode image")

    images[:] = [*kept, {**_linode_image(providers, LINODE_IMAGE), "capabilities": ["distributed-sites"]}]
    report = preflight.run(example, env_for(providers))
    assert "lacks Linode's cloud-init capability" in only(report, "linode image")


def _linode_image(providers: FakeProviders, image_id: str) -> dict[str, Any]:
    template = json.loads((Path(__file__).parent / "fixtures/preflight/linode/images.json").read_text())["data"][0]
    return {**template, "id": image_id}


def test_an_image_not_offered_in_the_pops_region(providers: FakeProviders, aws: Aws, example: StackConfig) -> None:
    image = next(i for i in providers.digitalocean["images"]["images"] if i["slug"] == DO_IMAGE)
    image["regions"].remove("nyc3")
    report = preflight.run(example, env_for(providers))
    line = only(report, "pops[0].region")
    assert f"DigitalOcean does not offer {DO_IMAGE} in nyc3; regions with it:" in line and "fra1" in line


def test_a_linode_region_without_metadata(providers: FakeProviders, aws: Aws, example: StackConfig) -> None:
    region = providers.linode_region("ap-northeast")
    region["capabilities"] = [c for c in region["capabilities"] if c != "Metadata"]
    report = preflight.run(example, env_for(providers))
    line = only(report, "pops[1].region")
    assert "Linode's ap-northeast (Tokyo 2, JP) has no Metadata" in line
    assert "first-boot user data" in line
    alternatives = line.split("nearest regions with Linodes, Metadata and Cloud Firewalls: ")[1].split(", ")
    assert "ap-northeast" not in alternatives and alternatives[0] == "jp-osa", "Osaka is nearest to Tokyo"
    assert len(report.problems) == 1


def test_a_digitalocean_region_closed_to_new_droplets_and_a_size_missing_there(
    providers: FakeProviders, aws: Aws
) -> None:
    values = example_values()
    values["pops"][0]["region"] = "atl1"
    values["pops"][0]["size"] = "c-2"
    report = preflight.run(config_from(values), env_for(providers))
    assert "c-2 cannot be created in atl1 now" in only(report, "pops[0].size")

    providers.do_region("atl1")["available"] = False
    report = preflight.run(config_from(values), env_for(providers))
    assert "DigitalOcean's atl1 (Atlanta 1) takes no new Droplets now" in only(report, "pops[0].region")


def test_account_availability_and_a_sold_out_plan_at_linode(providers: FakeProviders, aws: Aws) -> None:
    values = example_values()
    # One latency record per AWS region: the hub moves west so that Newark may take us-east-1.
    values["pops"][0]["region"] = "sfo3"
    values["pops"][1]["region"] = "us-east"
    next(r for r in providers.linode["account_availability"]["data"] if r["region"] == "us-east")["unavailable"] = [
        "Linodes"
    ]
    providers.linode["regions_availability"]["data"].append(
        {"region": "us-east", "plan": "g6-nanode-1", "available": False}
    )
    report = preflight.run(config_from(values), env_for(providers))
    assert "this Linode account may not create Linodes in us-east" in only(report, "pops[1].region")
    assert "g6-nanode-1 is sold out in us-east now" in only(report, "pops[1].size")


def test_an_exhausted_droplet_limit_names_the_vms_that_would_not_fit(
    providers: FakeProviders, aws: Aws, example: StackConfig
) -> None:
    providers.digitalocean["account"]["account"]["droplet_limit"] = 3
    providers.add_droplets(2)
    report = preflight.run(example, env_for(providers))
    line = only(report, "digitalocean account")
    assert "may have 3 Droplets and has 3; this stack needs 1 more (pops[0] (POP us))" in line
    assert "raise the Droplet limit" in line


def test_the_stacks_own_droplets_need_no_room(providers: FakeProviders, aws: Aws, example: StackConfig) -> None:
    providers.digitalocean["account"]["account"]["droplet_limit"] = 2
    add_stack_vms(providers, example)  # the limit is full, but with this stack's own Droplet
    report = preflight.run(example, env_for(providers))
    assert report.problems == []
    assert "digitalocean account: 2 of 2 Droplets in use, this stack adds 0" in report.checked


def test_droplets_are_read_past_the_first_page(providers: FakeProviders, aws: Aws) -> None:
    providers.add_droplets(260)
    facts = DigitalOceanApi(DIGITALOCEAN_TOKEN, providers.url).facts()
    assert len(facts.droplets) == 261
    assert ("digitalocean", "/v2/droplets?per_page=200&page=2") in providers.requests


# --- Route53 and IAM ----------------------------------------------------------------------------------------


def test_a_plain_record_at_the_shared_name_blocks_the_latency_records(
    providers: FakeProviders, aws: Aws, example: StackConfig
) -> None:
    aws.record("plex.example.com", "A", "192.0.2.80")
    report = preflight.run(example, env_for(providers))
    line = only(report, "sharedHostname")
    assert "plex.example.com already has a simple A record (192.0.2.80), not latency-routed" in line
    assert "choose another sharedHostname" in line


def test_a_cname_at_a_pops_name_and_at_a_challenge_name(
    providers: FakeProviders, aws: Aws, example: StackConfig
) -> None:
    aws.record("plex-asia.example.com", "CNAME", "elsewhere.example.net")
    aws.record("_acme-challenge.plex.example.com", "CNAME", "acme.example.net")
    report = preflight.run(example, env_for(providers))
    assert "plex-asia.example.com is a CNAME (elsewhere.example.net)" in only(report, "pops[1].name")
    assert "certbot writes its DNS-01 TXT record" in only(report, "sharedHostname")


def test_another_stacks_latency_record_with_the_same_set_identifier(
    providers: FakeProviders, aws: Aws, example: StackConfig
) -> None:
    aws.record("plex.example.com", "A", "198.51.100.7", SetIdentifier="us", Region="us-east-1")
    aws.record("plex.example.com", "A", "198.51.100.8", SetIdentifier="eu", Region="eu-central-1")
    report = preflight.run(example, env_for(providers))
    line = only(report, "pops[0].name")
    assert "latency A record with set identifier 'us' (198.51.100.7) that is not this stack's POP 'us'" in line
    assert lines(report.warnings) == [
        "sharedHostname: plex.example.com also has a latency A record 'eu' (eu-central-1: 198.51.100.8) that is "
        "not a POP of this stack: viewers nearest eu-central-1 are sent there"
    ]


def test_records_an_earlier_pulumi_up_made_are_this_stacks_own(
    providers: FakeProviders, aws: Aws, example: StackConfig
) -> None:
    add_stack_vms(providers, example)
    for pop, (ipv4, ipv6) in (("us", US_ADDRESSES), ("asia", ASIA_ADDRESSES)):
        aws.record(example.pop_name(pop), "A", ipv4)
        aws.record(example.pop_name(pop), "AAAA", ipv6)
        region = "us-east-1" if pop == "us" else "ap-northeast-1"
        aws.record(example.shared_name, "A", ipv4, SetIdentifier=pop, Region=region)
        aws.record(example.shared_name, "AAAA", ipv6, SetIdentifier=pop, Region=region)
    report = preflight.run(example, env_for(providers))
    assert report.problems == [] and report.warnings == [] and report.notes == []

    # The same records, with a POP's VM gone: its records now belong to nobody this stack knows.
    providers.digitalocean["droplets"]["droplets"] = [
        d for d in providers.digitalocean["droplets"]["droplets"] if d["name"] != "plex-cdn-dev-us"
    ]
    report = preflight.run(example, env_for(providers))
    assert {finding.setting for finding in report.problems} == {"pops[0].name"}
    assert len(report.problems) == 4  # own A and AAAA, latency A and AAAA


def test_without_a_providers_credentials_record_ownership_is_a_note(
    providers: FakeProviders, aws: Aws, example: StackConfig
) -> None:
    aws.record(example.pop_name("us"), "A", US_ADDRESSES[0])
    env = {key: value for key, value in env_for(providers).items() if "DIGITALOCEAN" not in key}
    report = preflight.run(example, env)
    assert report.problems == []
    assert report.notes == [
        f"plex-us.example.com has an A record ({US_ADDRESSES[0]}); without the provider's credentials preflight "
        "cannot tell whether it is this stack's POP"
    ]


@pytest.mark.parametrize(
    ("zones", "expected"),
    [
        ([], "this AWS account has no public Route53 hosted zone named example.com: create it"),
        ([("example.com", True)], "(there is a private zone of that name, which viewers cannot resolve)"),
        ([("example.com", False), ("example.com", False)], "pulumi up looks the zone up by name and needs exactly one"),
    ],
)
def test_the_zone_must_exist_once_and_be_public(
    providers: FakeProviders, aws: Aws, example: StackConfig, zones: list[tuple[str, bool]], expected: str
) -> None:
    aws.route53.delete_hosted_zone(Id=aws.zone_id)
    for index, (name, private) in enumerate(zones):
        extra: dict[str, Any] = {}
        if private:
            extra = {
                "VPC": {"VPCRegion": "us-east-1", "VPCId": "vpc-1a2b3c4d"},
                "HostedZoneConfig": {"PrivateZone": True},
            }
        aws.route53.create_hosted_zone(Name=name, CallerReference=f"zone-{index}", **extra)
    aws.route53.create_hosted_zone(Name="other.example.org", CallerReference="unrelated")
    report = preflight.run(example, env_for(providers))
    assert expected in only(report, "domain")


def test_a_certbot_user_another_stack_or_hand_made_blocks_pulumi_up(
    providers: FakeProviders, aws: Aws, example: StackConfig
) -> None:
    aws.iam.create_user(UserName="plex-cdn-dev-certbot", Path="/")
    report = preflight.run(example, env_for(providers))
    assert "an IAM user named plex-cdn-dev-certbot exists that plex-cdn did not make for stack 'dev'" in only(
        report, "stack"
    )
    aws.iam.tag_user(UserName="plex-cdn-dev-certbot", Tags=[{"Key": "plex-cdn:stack", "Value": "dev"}])
    assert preflight.run(example, env_for(providers)).problems == []


def test_the_read_only_aws_policy_allows_every_call_preflight_makes_and_nothing_that_writes(
    providers: FakeProviders, aws: Aws, example: StackConfig
) -> None:
    made: list[str] = []

    def session() -> boto3.Session:
        recorded = boto3.Session()
        recorded.events.register(
            "before-call", lambda model, **_: made.append(f"{model.service_model.signing_name}:{model.name}")
        )
        return recorded

    aws.iam.create_user(
        UserName="plex-cdn-dev-certbot", Path="/plex-cdn/", Tags=[{"Key": "plex-cdn:stack", "Value": "dev"}]
    )
    assert preflight.run(example, env_for(providers), aws_session=session).problems == []
    assert sorted(set(made)) == sorted(PREFLIGHT_AWS_ACTIONS)
    resources = {
        "route53:ListHostedZonesByName": "*",
        "route53:ListHostedZones": "*",
        "route53:ListResourceRecordSets": f"arn:aws:route53:::hostedzone/{aws.zone_id}",
        "route53:GetHostedZone": f"arn:aws:route53:::hostedzone/{aws.zone_id}",
        "route53:ListTagsForResource": f"arn:aws:route53:::hostedzone/{aws.zone_id}",
        "iam:GetUser": f"arn:aws:iam::{ACCOUNT_ID}:user/plex-cdn/plex-cdn-dev-certbot",
        "iam:ListUserTags": f"arn:aws:iam::{ACCOUNT_ID}:user/plex-cdn/plex-cdn-dev-certbot",
        "iam:GetAccountSummary": "*",
    }
    policy = aws_read_policy()
    for action in (*PREFLIGHT_AWS_ACTIONS, *PREVIEW_AWS_ACTIONS):
        assert is_allowed(policy, Request(action, resources[action])), action
    # A conflicting user may sit at any path; the policy must let preflight see it.
    assert is_allowed(policy, Request("iam:GetUser", f"arn:aws:iam::{ACCOUNT_ID}:user/plex-cdn-dev-certbot"))
    for write in ("route53:ChangeResourceRecordSets", "iam:CreateUser", "iam:DeleteUser", "iam:CreateAccessKey"):
        assert not is_allowed(policy, Request(write, resources.get(write.replace("Change", "List"), "*"))), write
    assert analyze_policy_string(json.dumps(policy)).findings == []


def test_docs_give_the_same_read_only_policy() -> None:
    text = (ROOT / "docs" / "ci.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)
    assert aws_read_policy() in [json.loads(block) for block in blocks]


# --- credentials ----------------------------------------------------------------------------------------------


def test_without_credentials_it_lists_the_checks_it_could_not_make_and_exits_0(
    providers: FakeProviders, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["preflight", str(ROOT / "Pulumi.dev.yaml")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    not_checked = [line for line in out.splitlines() if line.startswith("not checked: ")]
    assert [line.split(" (")[0] for line in not_checked] == [
        "not checked: digitalocean",
        "not checked: linode",
        "not checked: aws",
        "not checked: deploy: whether this machine can reach the VMs and the machines at home",
    ]
    assert f"image {DO_IMAGE}, regions and sizes of pops[0], the Droplet limit" in not_checked[0]
    assert "the public hosted zone example.com, records at plex.example.com" in not_checked[2]
    assert out.splitlines()[-1].endswith("no problems found; 4 checks not made")
    assert providers.requests == [], "nothing is asked without credentials"


def test_a_refused_token_is_a_problem_named_by_its_variable(
    providers: FakeProviders, aws: Aws, example: StackConfig
) -> None:
    env = {**env_for(providers), "DIGITALOCEAN_TOKEN": "dop_v1_revoked", "LINODE_TOKEN": "expired"}
    report = preflight.run(example, env)
    assert "DigitalOcean refused the token for the account (GET /v2/account) (401: Unable to authenticate you)" in (
        only(report, "DIGITALOCEAN_TOKEN")
    )
    assert "Linode refused the token for regions (GET /regions) (401: Invalid Token)" in only(report, "LINODE_TOKEN")


def test_a_linode_token_without_the_account_scope_leaves_that_check_out(
    providers: FakeProviders, aws: Aws, example: StackConfig
) -> None:
    providers.linode_denied = ("/v4/account/",)
    report = preflight.run(example, env_for(providers))
    assert report.problems == []
    assert any("GET /account/availability needs the account:read_only scope" in line for line in report.not_checked)


# --- where pulumi up runs from --------------------------------------------------------------------------------


def test_a_deploying_machine_outside_admin_cidr_and_deploy_from_cannot_reach_the_vms(example: StackConfig) -> None:
    report = preflight.check(
        example, preflight.Accounts(), Report(), DeployOrigin(ipaddress.ip_address("198.51.100.4"), False)
    )
    line = only(report, "admin.deployFrom")
    assert "this machine's address 198.51.100.4 is outside admin.cidr (203.0.113.7/32)" in line
    assert "add 198.51.100.4/32 to plex-cdn:admin.deployFrom" in line

    values = example_values()
    values["admin"]["deployFrom"] = ["198.51.100.0/28"]
    admitted = preflight.check(
        config_from(values), preflight.Accounts(), Report(), DeployOrigin(ipaddress.ip_address("198.51.100.4"), False)
    )
    assert admitted.problems == []
    assert "deploy: 198.51.100.4 is admitted to SSH on every VM" in admitted.checked


def _transcode_values() -> dict[str, Any]:
    return {
        "origin": {"host": "192.168.1.10", "hostKey": HOME_HOST_KEY},
        "plexVersion": "1.41.3.9314-a0bfb8370",
        "plexUid": 999,
        "plexGid": 999,
        "transcodeDir": "/srv/plex-transcode",
        "mediaPaths": ["/srv/media"],
        "slaves": [{"name": "den", "kind": "host", "host": "192.168.1.20", "hostKey": HOME_HOST_KEY}],
    }


def _with_home_hosts() -> StackConfig:
    values = example_values()
    values["transcode"] = _transcode_values()
    values["library"] = {
        "swarm": "friends",
        "seeders": [
            {
                "name": "alice",
                "kind": "host",
                "host": "alice.example.org",
                "hostKey": HOME_HOST_KEY,
                "swarmCidrs": ["198.51.100.0/24"],
                "mediaDir": "/srv/media",
            }
        ],
        "viewers": [
            {"name": "tokyo", "kind": "cloud", "provider": "linode", "region": "ap-northeast", "size": "g6-nanode-1"}
        ],
    }
    return config_from(values)


def test_home_hosts_cannot_be_deployed_from_a_github_hosted_runner() -> None:
    config = _with_home_hosts()
    inside = DeployOrigin(ipaddress.ip_address("203.0.113.7"), hosted_runner=True)
    report = preflight.check(config, preflight.Accounts(), Report(), inside)
    assert {finding.setting for finding in report.problems} == {"transcode.origin.host", "transcode.slaves[0].host"}
    assert "192.168.1.20 (transcode slave den) is an address on your home network, which a GitHub-hosted runner " in (
        only(report, "transcode.slaves[0].host")
    )
    assert [finding.setting for finding in report.warnings] == ["library.seeders[0].host"]

    at_home = preflight.check(config, preflight.Accounts(), Report(), DeployOrigin(inside.address, hosted_runner=False))
    assert at_home.problems == [] and at_home.warnings == []
    assert len(at_home.notes) == 2 and all("reaches it only from inside that network" in note for note in at_home.notes)


def test_the_inventory_names_every_vm_and_home_host_by_its_setting() -> None:
    config = _with_home_hosts()
    assert [(vm.setting, vm.label) for vm in cloud_vms(config)] == [
        ("pops[0]", "plex-cdn-dev-us"),
        ("pops[1]", "plex-cdn-dev-asia"),
        ("library.viewers[0]", "plex-cdn-dev-library-tokyo"),
    ]
    assert [(host.setting, host.on_home_network) for host in home_hosts(config)] == [
        ("transcode.origin.host", True),
        ("transcode.slaves[0].host", True),
        ("library.seeders[0].host", None),
    ]


def test_the_cli_checks_the_address_it_is_given_and_what_the_runner_can_reach(
    clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = write_stack(tmp_path / "Pulumi.dev.yaml", {**example_values(), "transcode": _transcode_values()})
    monkeypatch.setenv("RUNNER_ENVIRONMENT", "github-hosted")
    assert main(["preflight", str(stack), "--address", "198.51.100.4"]) == 1
    _, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert [line.split(":")[1].strip() for line in errors] == [
        "admin.deployFrom",
        "transcode.origin.host",
        "transcode.slaves[0].host",
    ]

    monkeypatch.setenv(preflight.DEPLOY_ADDRESS_ENV, "not-an-address")
    assert main(["preflight", str(stack)]) == 1
    assert "use this machine's public IP address" in capsys.readouterr().err


def test_detect_public_address_reads_the_plain_text_answer() -> None:
    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"198.51.100.4\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        assert preflight.detect_public_address(url) == ipaddress.ip_address("198.51.100.4")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
