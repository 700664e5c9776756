"""Wires the components of one stack into a single graph: keys, the certbot user, every POP with its
DNS, and the origin link, in an order where each POP's upstream exists before it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws

from components.certbot_user import CertbotUser, CertbotUserArgs
from components.edge_pop import EdgePop, EdgePopArgs
from components.latency_dns import LatencyDns, LatencyDnsArgs
from components.origin_link import OriginLink, OriginLinkArgs
from components.stack_keys import StackKeys, StackKeysArgs
from plexcdn import topology
from plexcdn.config import StackConfig
from plexcdn.cost import estimate


@dataclass(frozen=True)
class PopOutputs:
    name: str
    role: str
    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str]


@dataclass(frozen=True)
class StackOutputs:
    shared_url: str
    plex_custom_access_url: str
    pops: dict[str, PopOutputs]
    origin_allow_list: pulumi.Output[list[str]]
    monthly_cost_usd: float
    home_wireguard_config: pulumi.Output[str] | None
    certbot_policy_json: pulumi.Output[str]


def build_stack(config: StackConfig, build_dir: Path) -> StackOutputs:
    zone_id = aws.route53.get_zone_output(name=config.domain, private_zone=False).zone_id
    keys = StackKeys("keys", StackKeysArgs(stack=config.stack))
    certbot = CertbotUser(
        "certbot",
        CertbotUserArgs(stack=config.stack, zone_id=zone_id, certificate_names=config.all_certificate_names()),
    )
    pops: dict[str, EdgePop] = {}
    outputs: dict[str, PopOutputs] = {}
    for place in topology.places(config):
        name = place.pop.name
        upstream = pops[place.pop.upstream] if place.role == "edge" else None
        pop = EdgePop(
            name,
            EdgePopArgs(
                config=config,
                pop=name,
                certbot_access_key_id=certbot.access_key_id,
                certbot_secret_access_key=certbot.secret_access_key,
                deploy_public_key=keys.deploy_public_key,
                deploy_private_key=keys.deploy_private_key,
                peer_ca_cert_pem=keys.peer_ca_cert_pem,
                peer_ca_private_key_pem=keys.peer_ca_private_key_pem,
                upstream_address=upstream.ipv4 if upstream is not None else None,
                build_dir=build_dir,
            ),
        )
        pops[name] = pop
        LatencyDns(
            f"{name}-dns",
            LatencyDnsArgs(
                zone_id=zone_id,
                shared_name=config.shared_name,
                pop_name=config.pop_name(name),
                set_identifier=name,
                aws_region=place.pop.region_info.aws_region,
                ipv4=pop.ipv4,
                ipv6=pop.ipv6,
            ),
        )
        outputs[name] = PopOutputs(config.pop_name(name), place.role, pop.ipv4, pop.ipv6)

    allow_lists: list[pulumi.Output[list[str]]] = []
    home_config: pulumi.Output[str] | None = None
    for hub in topology.hubs(config):
        link = OriginLink(
            f"{hub.name}-origin",
            OriginLinkArgs(
                config=config,
                hub=hub.name,
                hub_ipv4=pops[hub.name].ipv4,
                hub_ipv6=pops[hub.name].ipv6,
                hub_connection=pops[hub.name].connection,
                hub_ready=pops[hub.name].ready,
            ),
        )
        allow_lists.append(link.allow_list)
        home_config = link.home_wireguard_config or home_config
    return StackOutputs(
        shared_url=config.shared_url,
        plex_custom_access_url=config.plex_custom_access_url,
        pops=outputs,
        origin_allow_list=pulumi.Output.all(*allow_lists).apply(
            lambda lists: sorted({ip for ips in lists for ip in ips})
        ),
        monthly_cost_usd=estimate(config).total_usd,
        home_wireguard_config=home_config,
        certbot_policy_json=certbot.policy_json,
    )
