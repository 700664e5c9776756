"""Shared fixtures: the example stack, stacks built from dicts, and test certificates."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from plexcdn.config import StackConfig, parse_config, read_stack_file
from plexcdn.vm_identity import VmIdentity

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_STACK = ROOT / "Pulumi.dev.yaml"
# A machine at home's SSH host key, as `ssh-keyscan -t ed25519` prints it (a public key: no secret).
HOME_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHomeHostKeyForTheTestsOnlyNotARealMachine0"


def example_values() -> dict[str, Any]:
    return copy.deepcopy(read_stack_file(EXAMPLE_STACK))


def five_pop_values() -> dict[str, Any]:
    """A tree: two hubs in public mode, three edges, one of them two hops from the origin."""
    values = example_values()
    values["origin"] = {"host": "home.example.net", "port": 32400, "link": "public", "verifyName": "home.example.net"}
    values["pops"] = [
        {"name": "us", "provider": "digitalocean", "region": "nyc3", "size": "s-1vcpu-1gb", "upstream": "origin"},
        {"name": "eu", "provider": "linode", "region": "eu-central", "size": "g6-nanode-1", "upstream": "origin"},
        {"name": "asia", "provider": "linode", "region": "ap-northeast", "size": "g6-nanode-1", "upstream": "us"},
        {"name": "sg", "provider": "digitalocean", "region": "sgp1", "size": "s-1vcpu-1gb", "upstream": "asia"},
        {"name": "uk", "provider": "digitalocean", "region": "lon1", "size": "s-1vcpu-2gb", "upstream": "eu"},
    ]
    return values


def fallback_values() -> dict[str, Any]:
    """The five-POP tree with second ways: asia falls back to the other hub, sg (behind asia) to eu."""
    values = five_pop_values()
    for pop in values["pops"]:
        if pop["name"] in ("asia", "sg"):
            pop["fallback"] = "eu"
    return values


def wireguard_values() -> dict[str, Any]:
    values = example_values()
    values["origin"] = {"host": "home.example.net", "port": 32400, "link": "wireguard"}
    return values


def config_from(values: dict[str, Any], stack: str = "dev") -> StackConfig:
    return parse_config(values, stack)


@pytest.fixture
def example_config() -> StackConfig:
    return config_from(example_values())


def write_stack(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"config": {f"plex-cdn:{k}": v for k, v in values.items()}}))
    return path


def make_vm_identity(admin_ssh_public_key: str) -> VmIdentity:
    """A VM identity with a real Ed25519 host key, as `pulumi up` generates one."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return VmIdentity(
        admin_ssh_public_key=admin_ssh_public_key,
        deploy_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDeployKeyForTheTest plex-cdn-dev-deploy",
        host_private_key=private,
        host_public_key=public,
    )


# --- CI cannot go green by skipping -----------------------------------------------------------------------------

LAB_DIR = Path(__file__).resolve().parent / "lab"
# Tests that may skip in CI, each with the reason it cannot run there. A skip not listed fails the run when
# CI=true: a real-tool check that did not run is not a pass.
ALLOWED_SKIPS_IN_CI: dict[str, str] = {}
_skipped: list[tuple[str, str]] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/lab/ needs root, namespaces or guests: it carries the `lab` marker."""
    for item in items:
        if LAB_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.lab)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and report.nodeid not in ALLOWED_SKIPS_IN_CI:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() == "true" and _skipped:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line(f"CI=true: {len(_skipped)} tests skipped, and a skip in CI fails the run:", red=True)
            for nodeid, reason in _skipped:
                reporter.write_line(f"  {nodeid}: {reason}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
