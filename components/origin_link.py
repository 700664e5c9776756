"""How the hubs reach the Plex server: over the internet (verified TLS), through a WireGuard tunnel whose
keys Pulumi generates, or to the plex-cdn agent on the Plex host itself. With the tunnel or the agent,
Plex sees a private address and so trusts X-Forwarded-For."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_random as random

from components.connections import to_existing_host
from components.outputs import secret
from components.pki import IssuedCertificate
from plexcdn import agent, render, wireguard
from plexcdn.config import StackConfig


@dataclass(frozen=True)
class Hub:
    name: str
    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str]
    connection: command.remote.ConnectionArgs
    ready: pulumi.Resource


@dataclass(frozen=True)
class OriginLinkArgs:
    config: StackConfig
    hubs: Sequence[Hub]
    # With an origin agent: the agent's server certificate, the client CAs of the hubs (the agent accepts a
    # certificate from those alone), and the SSH key that reaches the Plex host.
    agent_certificate: IssuedCertificate | None = None
    hub_client_ca_pems: tuple[pulumi.Output[str], ...] = ()
    origin_ssh_key: pulumi.Output[str] | None = None


class OriginLink(pulumi.ComponentResource):
    allow_list: pulumi.Output[list[str]]
    custom_access_url: pulumi.Output[str]
    home_wireguard_config: pulumi.Output[str] | None
    agent_firewall_rules: pulumi.Output[str] | None

    def __init__(self, name: str, args: OriginLinkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        config = args.config
        if config.origin.link == "wireguard" and len(args.hubs) != 1:
            raise ValueError("a WireGuard origin link has exactly one hub")
        if config.origin.agent is not None and (
            None in (args.agent_certificate, args.origin_ssh_key) or len(args.hub_client_ca_pems) != len(args.hubs)
        ):
            raise ValueError(
                "an origin agent needs its certificate, each hub's client CA and the SSH key of the Plex host"
            )
        super().__init__("plex-cdn:origin_link:OriginLink", name, None, opts)
        self.custom_access_url = pulumi.Output.from_input(config.plex_custom_access_url)
        self.home_wireguard_config = None
        self.agent_firewall_rules = None
        hub_addresses = pulumi.Output.all(*(a for hub in args.hubs for a in (hub.ipv4, hub.ipv6))).apply(
            lambda addresses: sorted(a for a in addresses if a)
        )
        if config.origin.link == "wireguard":
            self.allow_list = pulumi.Output.from_input([str(config.origin.hub_tunnel_address)])
            self.home_wireguard_config = self._wireguard(name, config, args.hubs[0])
        else:
            self.allow_list = hub_addresses
            if config.origin.agent is not None:
                self.agent_firewall_rules = self._agent(name, config, args, hub_addresses)
        self.register_outputs(
            {
                "allow_list": self.allow_list,
                "custom_access_url": self.custom_access_url,
                "home_wireguard_config": self.home_wireguard_config,
                "agent_firewall_rules": self.agent_firewall_rules,
            }
        )

    def _wireguard(self, name: str, config: StackConfig, hub: Hub) -> pulumi.Output[str]:
        child = pulumi.ResourceOptions(parent=self)
        hub_private = secret(random.RandomBytes(f"{name}-hub-key", length=32, opts=child).base64)
        home_private = secret(random.RandomBytes(f"{name}-home-key", length=32, opts=child).base64)
        keys = pulumi.Output.all(hub_private, home_private).apply(
            lambda pair: render.WireguardKeys(
                hub_private_key=pair[0],
                hub_public_key=wireguard.public_key(pair[0]),
                home_private_key=pair[1],
                home_public_key=wireguard.public_key(pair[1]),
            )
        )
        hub_conf = secret(keys.apply(lambda k: render.wireguard_hub_conf(config, hub.name, k)))
        command.remote.Command(
            f"{name}-hub-tunnel",
            connection=hub.connection,
            create=render.deploy_wireguard_script(),
            delete=render.remove_wireguard_script(),
            stdin=hub_conf,
            logging=command.remote.Logging.NONE,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[hub.ready]),
        )
        return secret(keys.apply(lambda k: render.wireguard_home_conf(config, hub.name, k)))

    def _agent(
        self, name: str, config: StackConfig, args: OriginLinkArgs, hub_addresses: pulumi.Output[list[str]]
    ) -> pulumi.Output[str]:
        settings = agent.require_agent(config)
        assert args.agent_certificate is not None and args.origin_ssh_key is not None
        hub_client_cas = pulumi.Output.all(*args.hub_client_ca_pems).apply("".join)
        install = pulumi.Output.all(args.agent_certificate.cert_pem, hub_client_cas, hub_addresses).apply(
            lambda values: agent.install_script(config, agent.AgentCertificates(values[0], values[1]), values[2])
        )
        command.remote.Command(
            f"{name}-agent",
            connection=to_existing_host(
                settings.ssh_host, settings.ssh_port, settings.ssh_user, args.origin_ssh_key, settings.ssh_host_key
            ),
            create=install,
            delete=agent.uninstall_script(),
            stdin=args.agent_certificate.private_key_pem,
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[hub.ready for hub in args.hubs]),
        )
        return hub_addresses.apply(lambda addresses: agent.firewall_rules(config, addresses))
