"""Rendered artifacts checked by the tools that consume them: cloud-init's schema, WireGuard's tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from plexcdn import render, wireguard
from plexcdn.config import StackConfig
from tests.conftest import config_from, example_values, five_pop_values, make_vm_identity, wireguard_values

STACKS = {
    "example": example_values,
    "five-pop": five_pop_values,
    "wireguard": wireguard_values,
}


def _configs() -> list[tuple[str, StackConfig, str]]:
    cases: list[tuple[str, StackConfig, str]] = []
    for label, values in STACKS.items():
        config = config_from(values())
        cases.extend((label, config, pop.name) for pop in config.pops)
    return cases


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="needs cloud-init (Debian package cloud-init)")
@pytest.mark.parametrize(("label", "config", "pop"), _configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_cloud_init_passes_cloud_init_schema(tmp_path: Path, label: str, config: StackConfig, pop: str) -> None:
    path = tmp_path / "cloud-init.yaml"
    path.write_text(render.cloud_init(config, pop))
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_cloud_init_writes_what_first_boot_needs(example_config: StackConfig) -> None:
    identity = make_vm_identity(example_config.admin.ssh_public_key)
    text = render.cloud_init(example_config, "us", identity)
    document = yaml.safe_load(text)
    files = {entry["path"]: entry for entry in document["write_files"]}
    # No credentials in user_data: they arrive over SSH. The only secret is the VM's own host key.
    assert render.CREDENTIALS_PATH not in files and "aws_secret_access_key" not in text
    assert document["ssh_keys"] == {
        "ed25519_private": identity.host_private_key,
        "ed25519_public": identity.host_public_key.strip(),
    }
    assert document["ssh_deletekeys"] is True
    keys = files["/root/.ssh/authorized_keys"]
    assert keys["append"] is True and keys["permissions"] == "0600"
    assert example_config.admin.ssh_public_key in keys["content"] and identity.deploy_public_key in keys["content"]
    sysctl = files["/etc/sysctl.d/90-plex-cdn.conf"]["content"]
    for setting in (
        "net.ipv4.tcp_congestion_control = bbr",
        "net.core.default_qdisc = fq",
        "net.ipv4.tcp_slow_start_after_idle = 0",
    ):
        assert setting in sysctl
    env = files["/etc/plex-cdn/certbot.env"]["content"]
    assert "CERT_DOMAINS=plex-us.example.com,plex.example.com" in env
    assert f"ACME_SERVER={example_config.acme.directory_url}" in env
    assert "/etc/letsencrypt/renewal-hooks/deploy/plexcdn-reload-nginx" in files
    # Every step in one program, so that any failing step fails first boot.
    assert document["runcmd"] == [[render.FIRST_BOOT_PATH]]
    first_boot = files[render.FIRST_BOOT_PATH]
    assert first_boot["permissions"] == "0755" and first_boot["content"].startswith("#!/bin/sh\n")
    assert "set -eu" in first_boot["content"]
    assert f"--require-hashes --only-binary :all: -r {render.CERTBOT_LOCK_PATH}" in first_boot["content"]
    assert files[render.CERTBOT_LOCK_PATH]["content"] == render.CERTBOT_LOCK.read_text()
    assert "systemctl enable --now plexcdn-certbot-renew.timer" in first_boot["content"]
    assert (
        "tc qdisc replace" in first_boot["content"] and "install -d -m 0755 /var/cache/nginx" in first_boot["content"]
    )
    assert document["ssh_pwauth"] is False
    # The metadata addresses are closed to every user but root, first thing on every boot.
    rules = " ".join(" ".join(command) for command in document["bootcmd"])
    assert "169.254.169.254/32 uidrange 1-4294967294 prohibit" in rules and "fd00:a9fe:a9fe::1/128" in rules


@pytest.mark.skipif(shutil.which("wg") is None, reason="needs wireguard-tools")
def test_wireguard_public_keys_match_wg_pubkey() -> None:
    for _ in range(3):
        private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
        expected = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True)
        assert wireguard.public_key(private) == expected.stdout.strip()


def test_wireguard_public_key_rejects_a_short_key() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        wireguard.public_key("c2hvcnQ=")


@pytest.mark.skipif(shutil.which("wg-quick") is None, reason="needs wireguard-tools")
def test_wireguard_configs_parse_with_wg_quick(tmp_path: Path) -> None:
    config = config_from(wireguard_values())
    keys_raw = [
        subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip() for _ in "ab"
    ]
    keys = render.WireguardKeys(
        keys_raw[0], wireguard.public_key(keys_raw[0]), keys_raw[1], wireguard.public_key(keys_raw[1])
    )
    for side, text in (
        ("hub", render.wireguard_hub_conf(config, "us", keys)),
        ("home", render.wireguard_home_conf(config, "us", keys)),
    ):
        path = tmp_path / side / f"{render.WIREGUARD_INTERFACE}.conf"
        path.parent.mkdir()
        path.write_text(text)
        path.chmod(0o600)
        stripped = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True, check=False)
        assert stripped.returncode == 0, stripped.stderr
        assert "Address" not in stripped.stdout, "wg-quick keeps its own keys out of what `wg` gets"
        peer_key = keys.home_public_key if side == "hub" else keys.hub_public_key
        assert f"PublicKey = {peer_key}" in stripped.stdout
    home = render.wireguard_home_conf(config, "us", keys)
    assert f"Endpoint = {config.pop_name('us')}:{config.origin.wireguard_port}" in home
    assert f"AllowedIPs = {config.origin.hub_tunnel_address}/32" in home
    assert "PersistentKeepalive = 25" in home
