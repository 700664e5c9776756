"""The Plex settings in the program's graph, under Pulumi's mock engine: where the script runs, what it carries,
and what the stack outputs say."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pulumi
import pytest

from labs.mock_engine import RecordingMonitor, install_mocks
from plexcdn.config import StackConfig
from tests.conftest import HOME_HOST_KEY, config_from, example_values, wireguard_values

HOME_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nhome\n-----END OPENSSH PRIVATE KEY-----\n"
PLEX_TOKEN = "graph-test-plex-token-42"


def build(
    config: StackConfig, build_dir: Path, home_ssh_key: str | None = None, plex_token: str | None = None
) -> tuple[RecordingMonitor, dict[str, Any]]:
    _, monitor = install_mocks(config.stack)
    resolved: dict[str, Any] = {}

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> pulumi.Output[Any]:
        from components.stack import build_stack

        key = pulumi.Output.secret(home_ssh_key) if home_ssh_key is not None else None
        token = pulumi.Output.secret(plex_token) if plex_token is not None else None
        outputs = build_stack(config, build_dir, key, token)
        assert outputs.plex is not None
        resolved["applied_by"] = outputs.plex.applied_by
        resolved["settings"] = outputs.plex.settings
        host_keys = {name: pop.host_key for name, pop in outputs.pops.items()}
        return pulumi.Output.all(**host_keys).apply(lambda keys: resolved.update(host_keys=keys))

    program()
    return monitor, resolved


def script_of(command: str) -> str:
    """The script a `/bin/bash -c SCRIPT` command line runs."""
    argv = shlex.split(command)
    assert argv[:2] == ["/bin/bash", "-c"] and len(argv) == 3, argv[:2]
    return argv[2]


def agent_values() -> dict[str, Any]:
    values = example_values()
    values["origin"]["agent"] = {"listenPort": 32443, "sshHost": "192.168.1.10", "sshHostKey": HOME_HOST_KEY}
    return values


def test_on_the_managed_host_the_script_reads_the_token_there_and_nothing_secret_travels(tmp_path: Path) -> None:
    config = config_from(agent_values())
    monitor, resolved = build(config, tmp_path, home_ssh_key=HOME_KEY)
    assert resolved["applied_by"] == "plex-host"
    command = monitor.named("plex-settings-apply")
    assert command.parent_type == "plex-cdn:plex_settings:PlexSettings"
    connection = command.inputs["connection"]["value"]
    assert connection["host"] == "192.168.1.10" and connection["hostKey"] == HOME_HOST_KEY
    create = script_of(command.inputs["create"])
    assert "PlexOnlineToken" in create and "Preferences.xml" in create
    assert "pref_ids=('customConnections' 'secureConnections'" in create
    assert "'https://plex.example.com:443'" in create
    assert "allowedNetworks=" not in create.replace("allowedNetworks holds", "")
    assert "'127.0.0.1' '::1'" in create, "the agent's loopback may never skip sign-in"
    assert "stdin" not in command.inputs, "the token never leaves the Plex host"
    assert "plex-settings.previous" in command.inputs["delete"]
    # Apps are pointed at the CDN only once every POP serves.
    for pop in ("us", "asia"):
        assert monitor.named(f"{pop}-nginx-deploy").urn in command.depends_on
    assert resolved["settings"]["settings"]["customConnections"] == "https://plex.example.com:443"


def test_through_the_hub_the_token_is_a_secret_on_stdin(tmp_path: Path) -> None:
    config = config_from(example_values())
    monitor, resolved = build(config, tmp_path, plex_token=PLEX_TOKEN)
    assert resolved["applied_by"] == "hub"
    command = monitor.named("plex-settings-apply")
    assert "stdin" in command.secret_inputs
    assert monitor.named("us-ssh-host-key")  # the hub's own pinned key
    assert command.inputs["connection"]["value"]["hostKey"] == resolved["host_keys"]["us"]
    for text in (script_of(command.inputs["create"]), script_of(command.inputs["delete"])):
        assert PLEX_TOKEN not in text
        assert "IFS= read -r plexcdn_token" in text
    assert "plexcdn_url='https://home.example.net:32400'" in script_of(command.inputs["create"])
    every_input = str([r.inputs for r in monitor.registrations if "stdin" not in r.inputs])
    assert PLEX_TOKEN not in every_input


def test_wireguard_hub_reaches_plex_through_the_tunnel(tmp_path: Path) -> None:
    monitor, _ = build(config_from(wireguard_values()), tmp_path, plex_token=PLEX_TOKEN)
    create = script_of(monitor.named("plex-settings-apply").inputs["create"])
    assert "plexcdn_url='http://10.77.0.2:32400'" in create
    assert "'10.77.0.1'" in create, "the hub's tunnel address may never skip sign-in"


@pytest.mark.parametrize("token", [None, PLEX_TOKEN])
def test_without_a_managed_host_or_a_verified_hop_nothing_is_applied(tmp_path: Path, token: str | None) -> None:
    values = example_values()
    if token is not None:
        del values["origin"]["verifyName"]
    monitor, resolved = build(config_from(values), tmp_path, plex_token=token)
    assert resolved["applied_by"] == "none"
    assert not monitor.of_type("plex-cdn:plex_settings:PlexSettings")
    assert resolved["settings"]["settings"]["RelayEnabled"] == "false", "the values are still there to set by hand"


def test_every_pop_exports_its_pinned_host_key(tmp_path: Path) -> None:
    _, resolved = build(config_from(example_values()), tmp_path)
    for pop, key in resolved["host_keys"].items():
        assert key.startswith("ssh-ed25519 ") and key.strip() == key, pop
