"""The example stack's POPs as real Debian 13 guests: the program's own user_data, then its own deploy steps.

The whole graph of Pulumi.dev.yaml runs under labs.stack_engine (real keys, certificates and IAM keys), so
each guest boots the exact user_data the program hands the provider and takes the exact steps it hands
pulumi-command. A third guest, of a one-POP stack whose ACME server cannot be reached, boots beside them.
All three boot once for the module. The Plex origin's name does not resolve when the hubs deploy; it is
added to the lab DNS afterwards.

Needs root, QEMU and mmdebstrap, and the network for the package cache. Run under the lab lock:
    flock /tmp/plexcdn-lab.lock .venv/bin/python -m pytest tests/lab/test_boot_pops.py -q
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from labs import boot_lab, package_cache
from labs import guest_environment as env
from labs.boot_lab import BootLab, LabPlan
from labs.guests import Guest, qemu_missing
from labs.netns import lab_unavailable_reason
from labs.plex_standin import MEDIA_PATH, WEBSOCKET_PATH
from labs.remote_steps import Deployment, StepError
from plexcdn import render
from plexcdn.config import StackConfig, load_stack_file
from tests.conftest import config_from, example_values

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_STACK = ROOT / "Pulumi.dev.yaml"
PREFIX = "pcvp-"
# The hub of a stack whose certificates come from Let's Encrypt's production directory, which this lab
# does not answer: its first boot must fail, and its deploy must say where.
UNREACHABLE_ACME_STACK = "acmefail"


def _reason() -> str | None:
    return lab_unavailable_reason() or qemu_missing()


pytestmark = [pytest.mark.lab, pytest.mark.skipif(_reason() is not None, reason=f"boot lab: {_reason()}")]


def unreachable_acme_config() -> StackConfig:
    values = example_values()
    values["acme"]["server"] = "production"
    values["sharedHostname"] = "fail"
    values["pops"] = [
        {"name": "solo", "provider": "digitalocean", "region": "sfo3", "size": "s-1vcpu-1gb", "upstream": "origin"}
    ]
    return config_from(values, UNREACHABLE_ACME_STACK)


@dataclass
class Pops:
    lab: BootLab
    config: StackConfig
    plan: LabPlan
    deployment: Deployment
    failed: StepError
    origin: dict[str, str]
    served_before_origin_resolved: dict[str, Any]

    def guest(self, pop: str) -> Guest:
        return self.lab.guest(pop)

    def on(self, pop: str, command: str, timeout: float = 300) -> str:
        result = self.lab.run(self.guest(pop), command, timeout=timeout)
        assert result.returncode == 0, f"{pop}: {command} exited {result.returncode}: {result.stdout} {result.stderr}"
        return str(result.stdout)

    def view(self, command: str, path: str, *options: str, timeout: float = 300) -> dict[str, Any]:
        """labs/viewer.py in the viewer namespace, trusting Pebble's root as a viewer trusts Let's Encrypt's."""
        assert self.lab.pebble is not None
        scheme = "wss" if command == "websocket" else "https"
        url = f"{scheme}://{self.config.shared_name}{path}"
        argv = [sys.executable, "-m", "labs.viewer", command, url, "--ca", str(self.lab.pebble.root_file), *options]
        result = subprocess.run(
            ["ip", "netns", "exec", self.lab.viewer_namespace, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def headers_seen(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in Path(self.origin["headers_log"]).read_text().splitlines()]


def _wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(3)
    raise AssertionError(f"{what} within {timeout} s")


@pytest.fixture(scope="module")
def pops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pops]:
    state_dir = tmp_path_factory.mktemp("boot-pops") / "state"
    config = load_stack_file(EXAMPLE_STACK)
    with BootLab(state_dir, PREFIX) as lab:
        assert lab.moto is not None
        lab.zone_id = lab.moto.create_zone(config.domain)
        origin = lab.start_origin([config.origin.host], config.origin.port, media_mb=64)
        # The origin's name does not resolve while the hub deploys (a dynamic-DNS name not yet updated).
        lab.remove_record(config.origin.host)
        lab.remove_record("acme-v02.api.letsencrypt.org")
        plan = boot_lab.stack_plan(lab, config)
        failing_plan = boot_lab.stack_plan(lab, unreachable_acme_config(), first_index=len(plan.vms))
        deployment, failed = boot_lab.deploy_all(lab, [plan, failing_plan])
        if isinstance(deployment, StepError):
            lab.collect_logs()
            pytest.fail(f"the example stack's deploy failed: {deployment} (logs: {lab.logs_dir})")
        assert isinstance(failed, StepError), "the stack whose ACME server is unreachable deployed"
        # Viewers are sent to the edge (the lab has no geography to choose by).
        lab.set_record(config.shared_name, "A", [lab.guest("asia").address])
        pops = Pops(lab, config, plan, deployment, failed, origin, {})
        pops.served_before_origin_resolved = pops.view("get", "/identity")
        lab.set_record(config.origin.host, "A", [str(env.ORIGIN_ADDRESS)])
        yield pops
        # Kept after the lab is gone: the guests' logs and each step's time.
        kept = lab.collect_logs(tmp_path_factory.mktemp("boot-pops-logs"))
        (kept / "steps.log").write_text(lab.steps_log.read_text() if lab.steps_log.exists() else "")


def test_every_pop_ends_first_boot_clean_with_nginx_bbr_fq_a_certificate_and_renewal(pops: Pops) -> None:
    assert pops.lab.pebble is not None
    pebble_root = x509.load_pem_x509_certificate(pops.lab.pebble.root_file.read_bytes())
    for pop in ("us", "asia"):
        guest = pops.guest(pop)
        status = guest.cloud_init_status(pops.lab.lab_private_key(), guest.host_key())
        assert status.clean, status.raw
        assert pops.on(pop, "systemctl --failed --no-legend --plain").strip() == "", pop
        assert pops.on(pop, "systemctl is-active nginx").strip() == "active"
        assert pops.on(pop, "sysctl -n net.ipv4.tcp_congestion_control").strip() == "bbr"
        assert "qdisc fq " in pops.on(pop, "tc qdisc show dev eth0"), "fq on the NIC from the first boot"
        assert pops.on(pop, "systemctl is-enabled plexcdn-certbot-renew.timer").strip() == "enabled"
        name = pops.config.pop_name(pop)
        chain = pops.on(pop, f"cat /etc/letsencrypt/live/{name}/fullchain.pem")
        leaf = x509.load_pem_x509_certificate(chain.encode())
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(pops.config.certificate_names(pop))
        blocks = ["-----BEGIN" + block for block in chain.split("-----BEGIN")[1:]]
        issued = [x509.load_pem_x509_certificate(block.encode()) for block in blocks]
        assert issued[-1].issuer == pebble_root.subject, "the chain ends at the lab ACME server's root"
        assert pops.on(pop, "nginx -v 2>&1").startswith("nginx version: nginx/1.26"), "Debian 13's nginx"


def test_only_root_reaches_the_metadata_address_from_the_first_boot_on(pops: Pops) -> None:
    for pop in ("us", "asia"):
        refused = pops.lab.run(pops.guest(pop), "ip route get 169.254.169.254 uid 1000")
        answer = (refused.stdout + refused.stderr).lower()
        assert refused.returncode != 0 and ("prohibit" in answer or "permission denied" in answer), answer
        assert pops.lab.run(pops.guest(pop), "ip route get 169.254.169.254 uid 0").returncode == 0
        assert "uidrange 1-4294967294" in pops.on(pop, "ip -6 rule show")


def test_the_pops_present_the_host_keys_the_program_pinned(pops: Pops) -> None:
    for step in pops.plan.steps:
        guest = pops.lab.guest_at(step.connection.host)
        assert guest is not None and step.connection.host_key is not None, step.name
        assert guest.host_key().split()[:2] == step.connection.host_key.split()[:2], step.name


def test_the_second_pops_packages_come_from_the_cache(pops: Pops) -> None:
    counts = package_cache.read_stats(pops.lab.cache_port)
    for kind in ("apt", "pypi-file"):
        assert counts[kind].get("hit", 0) > 0, counts


def test_a_hub_whose_origin_did_not_resolve_deployed_and_follows_it_once_it_does(pops: Pops) -> None:
    assert pops.served_before_origin_resolved["status"] == 502
    servers = pops.on("us", f"cat /etc/nginx/{render.ORIGIN_SERVERS_FILE}")
    _wait_until(
        lambda: str(env.ORIGIN_ADDRESS) in pops.on("us", f"cat /etc/nginx/{render.ORIGIN_SERVERS_FILE}"),
        timeout=150,
        what="the hub's resolver writes the origin's address",
    )
    assert "server unix:" in servers or str(env.ORIGIN_ADDRESS) in servers
    _wait_until(lambda: pops.view("get", "/identity")["status"] == 200, 60, "the chain serves")


def test_a_viewer_reads_media_through_the_edge_and_the_hub_byte_for_byte(pops: Pops) -> None:
    _wait_until(lambda: pops.view("get", "/identity")["status"] == 200, 150, "the chain serves")
    media = Path(pops.origin["media_file"])
    whole = pops.view("get", MEDIA_PATH, "--sha256")
    assert whole["status"] == 200 and whole["sha256"] == hashlib.sha256(media.read_bytes()).hexdigest()
    size = media.stat().st_size
    start = random.randrange(0, size - 70_000)
    end = start + random.randrange(1, 65_536)
    part = pops.view("get", MEDIA_PATH, "--range", f"{start}-{end}", "--sha256")
    with media.open("rb") as file:
        file.seek(start)
        expected = file.read(end - start + 1)
    assert part["status"] == 206 and part["sha256"] == hashlib.sha256(expected).hexdigest()


def test_a_websocket_passes_both_hops(pops: Pops) -> None:
    result = pops.view("websocket", WEBSOCKET_PATH, "--idle", "2")
    assert len(result["received"]) == 3 and "before idle" in result["received"][1], result
    assert "after idle" in result["received"][2], result


def test_the_origin_sees_the_viewer_first_in_x_forwarded_for(pops: Pops) -> None:
    pops.view("get", "/identity", "--header", "X-Forwarded-For: 192.168.1.5")
    seen = [h for h in pops.headers_seen() if h.get("path") == "/identity"][-1]
    forwarded = [part.strip() for part in seen["headers"]["x-forwarded-for"].split(",")]
    assert forwarded[0] == str(env.VIEWER_ADDRESS), forwarded
    assert "192.168.1.5" not in forwarded


def test_a_first_boot_that_cannot_reach_the_acme_server_fails_and_the_deploy_names_it(pops: Pops) -> None:
    failed = pops.failed
    assert "boot-wait" in str(failed), failed
    assert "first boot of fail-solo.example.com failed at: obtain the certificate" in failed.stderr, failed.stderr
    assert f"after {render.ISSUE_ATTEMPTS} attempts" in pops.on("solo", "cat /var/log/cloud-init-output.log")
    guest = pops.guest("solo")
    status = guest.cloud_init_status(pops.lab.lab_private_key(), guest.host_key())
    assert status.status == "error", status.raw
    # Nothing after the failed step ran: no deploy, no records for a POP that cannot serve.
    assert pops.lab.run(guest, f"test -e /etc/nginx/{render.RELEASE_FILE}").returncode == 1
