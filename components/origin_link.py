"""How the hubs reach the Plex server: over the internet (verified TLS), through a WireGuard tunnel whose
keys Pulumi generates, or to the plex-cdn agent on the Plex host itself. With the tunnel or the agent,
Plex sees a private address and so trusts X-Forwarded-For."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_random as random

from components.outputs import secret
from components.pki import IssuedCertificate
from plexcdn import agent, render, wireguard


@dataclass(frozen=True)
class Hub:
    name: str
    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str]
    connection: command.remote.ConnectionArgs
    ready: pulumi.Resource


@dataclass(frozen=True)
class WireguardTunnel:
    """The tunnel from the one hub to the Plex server: Plex sees the hub's tunnel address."""

    hub_tunnel_address: str
    # Each end's config, given the keys Pulumi generates.
    hub_conf: Callable[[render.WireguardKeys], str]
    home_conf: Callable[[render.WireguardKeys], str]


@dataclass(frozen=True)
class AgentInstall:
    """The plex-cdn agent on the Plex host."""

    certificate: IssuedCertificate  # the agent's server certificate
    hub_client_ca_pems: tuple[pulumi.Output[str], ...]  # one per hub: the agent accepts a certificate from those alone
    connection: command.remote.ConnectionArgs  # to the Plex host, with plex-cdn:homeSshKey
    # Given the certificates and the hubs' addresses, which are all the agent's firewall admits.
    install_script: Callable[[agent.AgentCertificates, Sequence[str]], str]
    firewall_rules: Callable[[Sequence[str]], str]


@dataclass(frozen=True)
class OriginLinkArgs:
    hubs: Sequence[Hub]
    custom_access_url: str  # Plex's "Custom server access URLs"
    tunnel: WireguardTunnel | None = None  # None: the hubs reach Plex at its public address
    agent: AgentInstall | None = None


class OriginLink(pulumi.ComponentResource):
    allow_list: pulumi.Output[list[str]]
    custom_access_url: pulumi.Output[str]
    home_wireguard_config: pulumi.Output[str] | None
    agent_firewall_rules: pulumi.Output[str] | None

    def __init__(self, name: str, args: OriginLinkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.tunnel is not None and len(args.hubs) != 1:
            raise ValueError("a WireGuard origin link has exactly one hub")
        if args.tunnel is not None and args.agent is not None:
            raise ValueError("an origin link goes through a WireGuard tunnel or to the origin agent, not both")
        if args.agent is not None and len(args.agent.hub_client_ca_pems) != len(args.hubs):
            raise ValueError("an origin agent needs each hub's client CA")
        super().__init__("plex-cdn:origin_link:OriginLink", name, None, opts)
        self.custom_access_url = pulumi.Output.from_input(args.custom_access_url)
        self.home_wireguard_config = None
        self.agent_firewall_rules = None
        hub_addresses = pulumi.Output.all(*(a for hub in args.hubs for a in (hub.ipv4, hub.ipv6))).apply(
            lambda addresses: sorted(a for a in addresses if a)
        )
        if args.tunnel is not None:
            self.allow_list = pulumi.Output.from_input([args.tunnel.hub_tunnel_address])
            self.home_wireguard_config = self._wireguard(name, args.tunnel, args.hubs[0])
        else:
            self.allow_list = hub_addresses
            if args.agent is not None:
                self.agent_firewall_rules = self._agent(name, args.agent, args.hubs, hub_addresses)
        self.register_outputs(
            {
                "allow_list": self.allow_list,
                "custom_access_url": self.custom_access_url,
                "home_wireguard_config": self.home_wireguard_config,
                "agent_firewall_rules": self.agent_firewall_rules,
            }
        )

    def _wireguard(self, name: str, tunnel: WireguardTunnel, hub: Hub) -> pulumi.Output[str]:
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
        hub_conf = secret(keys.apply(tunnel.hub_conf))
        command.remote.Command(
            f"{name}-hub-tunnel",
            connection=hub.connection,
            create=render.deploy_wireguard_script(),
            delete=render.remove_wireguard_script(),
            stdin=hub_conf,
            logging=command.remote.Logging.NONE,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[hub.ready]),
        )
        return secret(keys.apply(tunnel.home_conf))

    def _agent(
        self, name: str, origin_agent: AgentInstall, hubs: Sequence[Hub], hub_addresses: pulumi.Output[list[str]]
    ) -> pulumi.Output[str]:
        hub_client_cas = pulumi.Output.all(*origin_agent.hub_client_ca_pems).apply("".join)
        install = pulumi.Output.all(origin_agent.certificate.cert_pem, hub_client_cas, hub_addresses).apply(
            lambda values: origin_agent.install_script(agent.AgentCertificates(values[0], values[1]), values[2])
        )
        command.remote.Command(
            f"{name}-agent",
            connection=origin_agent.connection,
            create=install,
            delete=agent.uninstall_script(),
            stdin=origin_agent.certificate.private_key_pem,
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[hub.ready for hub in hubs]),
        )
        return hub_addresses.apply(origin_agent.firewall_rules)
