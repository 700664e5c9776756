"""How the hub reaches the Plex server: over the internet (verified TLS), or through a WireGuard tunnel
whose keys Pulumi generates, so that Plex sees the hub at a private address and trusts X-Forwarded-For."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_random as random

from components.outputs import secret
from plexcdn import render, wireguard
from plexcdn.config import StackConfig


@dataclass(frozen=True)
class OriginLinkArgs:
    config: StackConfig
    hub: str
    hub_ipv4: pulumi.Output[str]
    hub_ipv6: pulumi.Output[str]
    hub_connection: command.remote.ConnectionArgs
    hub_ready: pulumi.Resource


class OriginLink(pulumi.ComponentResource):
    allow_list: pulumi.Output[list[str]]
    custom_access_url: pulumi.Output[str]
    home_wireguard_config: pulumi.Output[str] | None

    def __init__(self, name: str, args: OriginLinkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("plex-cdn:origin_link:OriginLink", name, None, opts)
        config = args.config
        self.custom_access_url = pulumi.Output.from_input(config.plex_custom_access_url)
        self.home_wireguard_config = None
        if config.origin.link == "public":
            self.allow_list = pulumi.Output.all(args.hub_ipv4, args.hub_ipv6).apply(
                lambda ips: [ip for ip in ips if ip]
            )
        else:
            self.allow_list = pulumi.Output.from_input([str(config.origin.hub_tunnel_address)])
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
            hub_conf = secret(keys.apply(lambda k: render.wireguard_hub_conf(config, args.hub, k)))
            self.home_wireguard_config = secret(keys.apply(lambda k: render.wireguard_home_conf(config, args.hub, k)))
            command.remote.Command(
                f"{name}-hub-tunnel",
                connection=args.hub_connection,
                create=render.deploy_wireguard_script(),
                stdin=hub_conf,
                logging=command.remote.Logging.NONE,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[args.hub_ready]),
            )
        self.register_outputs(
            {
                "allow_list": self.allow_list,
                "custom_access_url": self.custom_access_url,
                "home_wireguard_config": self.home_wireguard_config,
            }
        )
