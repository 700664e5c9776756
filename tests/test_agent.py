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
