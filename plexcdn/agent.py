"""The origin agent: what `pulumi up` installs on the Plex server when `origin.agent` is set.

nginx on the Plex host terminates the hubs' TLS (mutual: only a certificate from one of the hubs' own
client CAs is accepted) and proxies to Plex on loopback, so Plex sees a private address and honours
X-Forwarded-For; the same TCP tuning as the POPs goes into a sysctl drop-in; a firewall rule admits
only the hubs to the agent's port. Everything is removed again on `pulumi destroy`.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from plexcdn.config import OriginAgent, StackConfig
from plexcdn.render import MOZILLA_INTERMEDIATE, blanked_headers, release_id, render_template

AGENT_DIR: Final = "/etc/plex-cdn/agent"
CONF_PATH: Final = "/etc/nginx/conf.d/plexcdn-agent.conf"
SYSCTL_PATH: Final = "/etc/sysctl.d/90-plexcdn-agent.conf"
FIREWALL_PATH: Final = "/etc/plex-cdn/agent-firewall.nft"
# Loads FIREWALL_PATH at every boot: `nft -f` alone lasts until the next one.
FIREWALL_UNIT: Final = "plexcdn-agent-firewall.service"
FIREWALL_UNIT_PATH: Final = f"/etc/systemd/system/{FIREWALL_UNIT}"


def require_agent(config: StackConfig) -> OriginAgent:
    if config.origin.agent is None:
        raise ValueError("origin.agent is not set in this stack")
    return config.origin.agent


def tls_name(config: StackConfig) -> str:
    """The name on the agent's server certificate, which the hubs verify."""
    return config.origin.verify_name or config.origin.host


def sysctl_conf() -> str:
    return render_template("sysctl/90-plex-cdn.conf.j2")


def nginx_conf(config: StackConfig, prefix: str = "") -> str:
    agent = require_agent(config)
    return render_template(
        "agent/plexcdn-agent.conf.j2",
        plex_port=config.origin.port,
        listen_port=agent.listen_port,
        tls_name=tls_name(config),
        agent_dir=f"{prefix}{AGENT_DIR}",
        log_dir=f"{prefix}/var/log/nginx",
        nginx=config.nginx,
        tls=MOZILLA_INTERMEDIATE,
        blanked_headers=blanked_headers(),
    )


def firewall_rules(config: StackConfig, hub_addresses: Sequence[str]) -> str:
    agent = require_agent(config)
    addresses = [ipaddress.ip_address(a) for a in hub_addresses if a]
    return render_template(
        "agent/firewall.nft.j2",
        listen_port=agent.listen_port,
        hub_ipv4=sorted(str(a) for a in addresses if a.version == 4),
        hub_ipv6=sorted(str(a) for a in addresses if a.version == 6),
    )


def firewall_unit(config: StackConfig) -> str:
    return render_template(
        "agent/plexcdn-agent-firewall.service.j2",
        listen_port=require_agent(config).listen_port,
        firewall_path=FIREWALL_PATH,
    )


@dataclass(frozen=True)
class AgentCertificates:
    server_cert_pem: str
    hub_client_cas_pem: str  # the client CAs of the hubs, each hub's own: the only certificates accepted


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def install_script(config: StackConfig, certificates: AgentCertificates, hub_addresses: Sequence[str]) -> str:
    """The remote command that installs or updates the agent; the server key is read from stdin.

    Every file but the key is embedded (base64: no quoting pitfalls), so any change to one changes the
    command and `pulumi up` runs it again.
    """
    agent = require_agent(config)
    files = {
        "nginx": nginx_conf(config),
        "sysctl": sysctl_conf(),
        "firewall": firewall_rules(config, hub_addresses),
        "firewall_unit": firewall_unit(config),
        "cert": certificates.server_cert_pem,
        "ca": certificates.hub_client_cas_pem,
    }
    return render_template(
        "agent/install.sh.j2",
        release=release_id(files),
        agent_dir=AGENT_DIR,
        conf_path=CONF_PATH,
        sysctl_path=SYSCTL_PATH,
        firewall_path=FIREWALL_PATH,
        firewall_unit=FIREWALL_UNIT,
        firewall_unit_path=FIREWALL_UNIT_PATH,
        listen_port=agent.listen_port,
        apply_firewall=agent.apply_firewall,
        nginx_conf_b64=_b64(files["nginx"]),
        sysctl_b64=_b64(files["sysctl"]),
        firewall_b64=_b64(files["firewall"]),
        firewall_unit_b64=_b64(files["firewall_unit"]),
        server_cert_b64=_b64(files["cert"]),
        hub_client_cas_b64=_b64(files["ca"]),
    )


def uninstall_script() -> str:
    return render_template(
        "agent/uninstall.sh.j2",
        conf_path=CONF_PATH,
        sysctl_path=SYSCTL_PATH,
        firewall_path=FIREWALL_PATH,
        firewall_unit=FIREWALL_UNIT,
        firewall_unit_path=FIREWALL_UNIT_PATH,
        agent_dir=AGENT_DIR,
    )
