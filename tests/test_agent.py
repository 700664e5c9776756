"""The origin agent's rendered files, checked by the tools that consume them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from plexcdn import agent
from plexcdn.config import ConfigError, parse_config
from tests.conftest import HOME_HOST_KEY, example_values


def agent_config(**settings: Any) -> Any:
    values = example_values()
    values["origin"]["agent"] = {"listenPort": 32443, "sshHostKey": HOME_HOST_KEY, **settings}
    return parse_config(values, "dev")


def test_agent_settings_are_validated_by_name() -> None:
    values = example_values()
    values["origin"]["agent"] = {"listenPort": 32400}
    with pytest.raises(ConfigError) as caught:
        parse_config(values, "dev")
    assert any(p.startswith("origin.agent.listenPort:") for p in caught.value.problems)
    values["origin"] = {"host": "home.example.net", "link": "wireguard", "agent": {}}
    with pytest.raises(ConfigError) as caught:
        parse_config(values, "dev")
    assert any(p.startswith("origin.agent:") and "origin.link public" in p for p in caught.value.problems)


def test_the_agent_proxies_to_plex_on_loopback_and_demands_a_client_certificate() -> None:
    config = agent_config()
    conf = agent.nginx_conf(config)
    assert f"server 127.0.0.1:{config.origin.port};" in conf
    assert "ssl_verify_client on;" in conf
    assert "listen 32443 ssl;" in conf
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
    assert "$request_uri" not in conf and "$args" not in conf, "the query string carries the token"


def test_the_sysctl_drop_in_is_the_pops_tuning() -> None:
    sysctl = agent.sysctl_conf()
    assert "net.ipv4.tcp_congestion_control = bbr" in sysctl
    assert "net.ipv4.tcp_slow_start_after_idle = 0" in sysctl


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("apply_firewall", [False, True])
def test_install_and_uninstall_scripts_parse(tmp_path: Path, apply_firewall: bool) -> None:
    config = agent_config(applyFirewall=apply_firewall)
    script = agent.install_script(config, agent.AgentCertificates("CERT", "CA"), ["198.51.100.7", "2001:db8::7"])
    for text in (script, agent.uninstall_script()):
        path = tmp_path / "script.sh"
        path.write_text(text)
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True, check=False).returncode == 0
    assert ("nft -f" in script) is apply_firewall
    assert "cat > /etc/plex-cdn/agent/server.key" in script


def test_firewall_rules_name_exactly_the_hubs() -> None:
    rules = agent.firewall_rules(agent_config(), ["198.51.100.7", "2001:db8::7", ""])
    assert "ip saddr { 198.51.100.7 } accept" in rules
    assert "ip6 saddr { 2001:db8::7 } accept" in rules
    assert rules.strip().splitlines()[-3].strip() == "tcp dport 32443 drop"


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables to check the rule syntax")
def test_firewall_rules_parse_with_nft(tmp_path: Path) -> None:
    path = tmp_path / "rules.nft"
    path.write_text(agent.firewall_rules(agent_config(), ["198.51.100.7", "2001:db8::7"]))
    result = subprocess.run(["nft", "--check", "-f", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck")
def test_install_and_uninstall_scripts_pass_shellcheck(tmp_path: Path) -> None:
    paths = []
    for apply_firewall in (False, True):
        script = agent.install_script(agent_config(applyFirewall=apply_firewall), agent.AgentCertificates("C", "A"), [])
        paths.append(tmp_path / f"install-{apply_firewall}.sh")
        paths[-1].write_text("#!/bin/sh\n" + script)
    paths.append(tmp_path / "uninstall.sh")
    paths[-1].write_text("#!/bin/sh\n" + agent.uninstall_script())
    result = subprocess.run(["shellcheck", "--shell=sh", *map(str, paths)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_the_firewall_is_loaded_at_every_boot_by_a_unit_of_its_own(tmp_path: Path) -> None:
    config = agent_config(applyFirewall=True)
    unit = agent.firewall_unit(config)
    assert f"ExecStart=/usr/sbin/nft -f {agent.FIREWALL_PATH}" in unit
    assert "Before=network-pre.target" in unit and "WantedBy=sysinit.target" in unit
    script = agent.install_script(config, agent.AgentCertificates("CERT", "CA"), ["198.51.100.7"])
    assert f"systemctl enable {agent.FIREWALL_UNIT}" in script
    # The rules replace the table as a whole, so loading them again (an update, the unit) never stacks rules.
    rules = agent.firewall_rules(config, ["198.51.100.7"]).splitlines()
    assert rules.index("delete table inet plexcdn_agent") < rules.index("table inet plexcdn_agent {")
    if shutil.which("systemd-analyze") is not None:
        path = tmp_path / agent.FIREWALL_UNIT
        path.write_text(unit)
        verified = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True, check=False
        )
        assert verified.returncode == 0, verified.stderr
    # Turning the firewall off takes the unit and the table away again.
    without = agent.install_script(agent_config(applyFirewall=False), agent.AgentCertificates("CERT", "CA"), [])
    assert (
        f"systemctl disable --now {agent.FIREWALL_UNIT}" in without and "nft delete table inet plexcdn_agent" in without
    )


def test_uninstall_undoes_everything_install_did() -> None:
    install = agent.install_script(agent_config(applyFirewall=True), agent.AgentCertificates("CERT", "CA"), [])
    uninstall = agent.uninstall_script()
    # Packages: only those the agent installed, recorded at install, purged by dpkg (which keeps what others need).
    assert f">> {agent.AGENT_DIR}/installed-packages" in install
    assert "dpkg --purge $packages" in uninstall and "apt-get" not in uninstall
    # An nginx the agent installed serves the agent alone.
    assert "rm -f /etc/nginx/sites-enabled/default" in install
    # The TCP settings go back to what they were.
    assert f"> {agent.AGENT_DIR}/sysctl-before.conf" in install
    assert f"sysctl -q -p {agent.AGENT_DIR}/sysctl-before.conf" in uninstall
    for path in (agent.CONF_PATH, agent.SYSCTL_PATH, agent.FIREWALL_PATH, agent.FIREWALL_UNIT_PATH):
        assert path in uninstall
    assert "/var/log/nginx/plexcdn-agent.access.log*" in uninstall
    assert f"rm -rf {agent.AGENT_DIR}" in uninstall and "rmdir /etc/plex-cdn" in uninstall
    # The server key is read before anything else can take stdin (apt's and dpkg's scripts get /dev/null).
    assert install.index(f"cat > {agent.AGENT_DIR}/server.key") < install.index("apt-get")
    assert all("</dev/null" in line for line in install.splitlines() if "apt-get" in line and "install" in line)
