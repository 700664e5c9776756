"""The boot lab's engine: the program's graph with real keys, real certificates and moto's IAM, so that what
the guests get is what `pulumi up` would hand the providers and pulumi-command."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.verification import PolicyBuilder, Store
from moto import mock_aws

from labs import remote_steps, stack_engine
from labs.mock_engine import RecordingMonitor
from labs.stack_engine import StackEngine, VmAddress, run_program, secret_value
from plexcdn import render
from plexcdn.config import StackConfig
from tests.conftest import config_from, example_values

ADDRESSES = {"us-vm": VmAddress("198.18.80.10", "fd00:198:18::10"), "asia-vm": VmAddress("198.18.80.11")}


@pytest.fixture
def engine_run(tmp_path: Path) -> Iterator[tuple[StackConfig, RecordingMonitor, Any]]:
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        route53 = boto3.client("route53", region_name="us-east-1")
        config = config_from(example_values())
        route53.create_hosted_zone(Name=config.domain, CallerReference="lab")
        engine = StackEngine(iam, route53, lambda name: ADDRESSES[name])

        def program() -> None:
            from components.stack import build_stack

            build_stack(config, tmp_path)

        monitor = run_program(engine, config.stack, program)
        yield config, monitor, iam


def plain_inputs(monitor: RecordingMonitor, name: str) -> dict[str, Any]:
    return dict(secret_value(monitor.named(name).inputs))


def test_vms_get_the_lab_addresses_and_their_user_data_carries_a_real_host_key(engine_run: Any) -> None:
    _, monitor, _ = engine_run
    droplet = plain_inputs(monitor, "us-vm")
    document = yaml.safe_load(droplet["userData"])
    private = serialization.load_ssh_private_key(document["ssh_keys"]["ed25519_private"].encode(), password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert document["ssh_keys"]["ed25519_public"] == public.decode()
    for step in ("us-certbot-credentials", "us-boot-wait", "us-nginx-release", "us-nginx-deploy"):
        connection = plain_inputs(monitor, step)["connection"]
        assert connection["host"] == ADDRESSES["us-vm"].ipv4
        assert connection["hostKey"] == public.decode(), step
    linode = plain_inputs(monitor, "asia-vm")
    assert yaml.safe_load(base64.b64decode(linode["metadatas"][0]["userData"]))["ssh_keys"]["ed25519_public"]
    assert plain_inputs(monitor, "asia-nginx-deploy")["connection"]["host"] == ADDRESSES["asia-vm"].ipv4


def test_the_certbot_key_on_stdin_is_the_one_iam_holds(engine_run: Any) -> None:
    config, monitor, iam = engine_run
    stdin = plain_inputs(monitor, "us-certbot-credentials")["stdin"]
    key_id = stdin.split("aws_access_key_id = ")[1].split("\n")[0]
    user = f"plex-cdn-{config.stack}-certbot"
    assert [key["AccessKeyId"] for key in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]] == [key_id]
    stored = iam.get_user_policy(UserName=user, PolicyName="certbot-policy")["PolicyDocument"]
    assert stored == json.loads(plain_inputs(monitor, "certbot-policy")["policy"])


def test_peer_certificates_chain_to_the_stacks_cas_and_match_their_keys(engine_run: Any, tmp_path: Path) -> None:
    """The hub's peer-port certificate verifies against the peer CA the edge trusts; the edge's client
    certificate against the client CAs the hub accepts."""
    config, monitor, _ = engine_run

    def release_dir(pop: str) -> Path:
        create = plain_inputs(monitor, f"{pop}-nginx-deploy")["create"]
        return tmp_path / pop / f"release-{create.split('release-')[1].split(chr(34))[0]}" / "nginx"

    hub, edge = release_dir("us"), release_dir("asia")

    def verify(ca_file: Path, purpose: str, certificate: Path) -> None:
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca_file), "-purpose", purpose, str(certificate)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    server_cert = hub / render.PEER_SERVER_CERT_FILE
    verify(edge / render.PEER_CA_FILE, "sslserver", server_cert)
    verify(hub / render.PEER_CLIENT_CAS_FILE, "sslclient", edge / render.PEER_CLIENT_CERT_FILE)
    certificate = x509.load_pem_x509_certificate(server_cert.read_bytes())
    # RFC 5280's profile as `cryptography` (and sslyze with it) applies it: stricter than OpenSSL's default,
    # it wants the key identifiers that link a leaf to its CA.
    peer_ca = Store(x509.load_pem_x509_certificates((edge / render.PEER_CA_FILE).read_bytes()))
    PolicyBuilder().store(peer_ca).build_server_verifier(x509.DNSName(config.pop_name("us"))).verify(certificate, [])
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [config.pop_name("us"), config.peer_name]
    keys = json.loads(plain_inputs(monitor, "us-nginx-deploy")["stdin"])
    key = serialization.load_pem_private_key(keys[render.PEER_SERVER_KEY_FILE].encode(), None)
    assert key.public_key().public_numbers() == certificate.public_key().public_numbers()  # type: ignore[union-attr]


def test_the_plan_runs_each_vms_credentials_before_any_step_waits_for_a_first_boot(
    engine_run: Any, tmp_path: Path
) -> None:
    _, monitor, _ = engine_run
    planned = stack_engine.plan(monitor, Path.cwd())
    assert {(vm.resource, vm.label) for vm in planned.vms} == {
        ("us-vm", "plex-cdn-dev-us"),
        ("asia-vm", "plex-cdn-dev-asia"),
    }
    assert all(yaml.safe_load(vm.user_data)["ssh_keys"] for vm in planned.vms)
    names = [step.name for step in planned.steps]
    assert set(names[:2]) == {"us-certbot-credentials", "asia-certbot-credentials"}
    for pop in ("us", "asia"):
        chain = [f"{pop}-certbot-credentials", f"{pop}-boot-wait", f"{pop}-nginx-release", f"{pop}-nginx-deploy"]
        assert [names.index(step) for step in chain] == sorted(names.index(step) for step in chain)
    steps = {step.name: step for step in planned.steps}
    assert steps["us-boot-wait"].depends_on == ("us-certbot-credentials",)
    assert steps["us-nginx-deploy"].depends_on == ("us-nginx-release",)
    copy = steps["us-nginx-release"]
    assert isinstance(copy, remote_steps.CopyStep) and Path(copy.source).is_dir()
    assert copy.source.startswith(str(tmp_path)) and copy.remote_path == render.NGINX_RELEASES_DIR
    credentials = steps["us-certbot-credentials"]
    assert isinstance(credentials, remote_steps.CommandStep) and "stdin" in credentials.secret_inputs
    assert {record["name"] for record in planned.records} == {
        "plex.example.com",
        "plex-us.example.com",
        "plex-asia.example.com",
    }


def test_a_second_run_with_a_changed_setting_keeps_every_key_and_changes_only_the_deploy(tmp_path: Path) -> None:
    """What `pulumi up` of the same stack does after a config change: the VMs, keys and certificates stay;
    the nginx release and its deploy command change."""
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        route53 = boto3.client("route53", region_name="us-east-1")
        values = example_values()
        route53.create_hosted_zone(Name="example.com", CallerReference="lab")
        state: dict[str, stack_engine.MadeResource] = {}
        runs = []
        for buffer_mb in (4, 8):
            values["nginx"]["streamBufferMb"] = buffer_mb
            config = config_from(values)
            engine = StackEngine(iam, route53, lambda name: ADDRESSES[name], state)

            def program(config: StackConfig = config) -> None:
                from components.stack import build_stack

                build_stack(config, tmp_path)

            runs.append(stack_engine.plan(run_program(engine, config.stack, program), Path.cwd()))
        first, second = runs
        assert {vm.resource: vm.user_data for vm in first.vms} == {vm.resource: vm.user_data for vm in second.vms}
        before = {step.name: step for step in first.steps}
        after = {step.name: step for step in second.steps}
        changed = {name for name in before if before[name].digest() != after[name].digest()}
        assert changed == {"us-nginx-release", "us-nginx-deploy", "asia-nginx-release", "asia-nginx-deploy"}
        assert len(iam.list_access_keys(UserName="plex-cdn-dev-certbot")["AccessKeyMetadata"]) == 1
