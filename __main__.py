"""plex-cdn: reads the stack's configuration once, builds the graph, exports what the user needs."""

from __future__ import annotations

from pathlib import Path

import pulumi

from components.stack import build_stack
from plexcdn import plex_settings
from plexcdn.config import (
    HOME_SSH_KEY,
    NAMESPACE,
    PLEX_TOKEN,
    TOP_LEVEL_KEYS,
    UNREADABLE,
    ConfigError,
    StackConfig,
    needs_home_ssh_key,
    parse_config,
)
from plexcdn.cost import estimate
from plexcdn.regions import PRICES_AS_OF


def read_config() -> StackConfig:
    settings = pulumi.Config(NAMESPACE)
    values: dict[str, object] = {}
    for key, kind in TOP_LEVEL_KEYS.items():
        try:
            value = settings.get(key) if kind == "scalar" else settings.get_object(key)
        except pulumi.ConfigTypeError:
            # Malformed JSON, nested past Python's recursion limit, or a number too long to convert: the model
            # names the setting with everything else.
            value = UNREADABLE
        if value is not None:
            values[key] = value
    try:
        config = parse_config(values, pulumi.get_stack())
    except ConfigError as error:
        # RunError ends the program with the message alone, before any resource is registered.
        raise pulumi.RunError(f"{error}\nFix the settings in Pulumi.{pulumi.get_stack()}.yaml") from None
    for warning in config.warnings:
        pulumi.log.warn(warning)
    return config


config = read_config()
# Read only when something at home is managed over SSH; a secret from here on.
home_ssh_key = pulumi.Config(NAMESPACE).require_secret(HOME_SSH_KEY) if needs_home_ssh_key(config) else None
# Plex's own token: a secret, and only for a Plex host the stack does not manage (its own token is used there).
plex_token = pulumi.Config(NAMESPACE).get_secret(PLEX_TOKEN)
for warning in plex_settings.applier_warnings(config, plex_token is not None):
    pulumi.log.warn(warning)
if plex_settings.managed_host(config) is not None:
    plex_token = None
stack = build_stack(config, Path("build") / config.stack, home_ssh_key, plex_token)
pulumi.export("sharedUrl", stack.shared_url)
pulumi.export("plexCustomServerAccessUrl", stack.plex_custom_access_url)
pulumi.export(
    "pops",
    {
        name: {"name": pop.name, "role": pop.role, "ipv4": pop.ipv4, "ipv6": pop.ipv6, "hostKey": pop.host_key}
        for name, pop in stack.pops.items()
    },
)
pulumi.export("originAllowList", stack.origin_allow_list)
if stack.plex is not None:
    # The values Plex needs and who applies them; the applying script's lines where pulumi up does.
    pulumi.export(
        "plexSettings",
        {**stack.plex.settings, **({"report": stack.plex.report} if stack.plex.report is not None else {})},
    )
cost = estimate(config)
pulumi.export(
    "monthlyCostEstimateUsd",
    {
        "total": stack.monthly_cost_usd,
        "pricesAsOf": PRICES_AS_OF,
        **cost.vms_usd,
        # Only with `viewing`: without it the transfer is unknown, not free.
        **({"transferOverageUsd": cost.transfer_overage_usd} if config.viewing is not None else {}),
    },
)
if stack.home_wireguard_config is not None:
    pulumi.export("homeWireguardConfig", stack.home_wireguard_config)
if stack.agent_firewall_rules is not None:
    pulumi.export("originAgentFirewallRules", stack.agent_firewall_rules)
if stack.transcode is not None:
    pulumi.export(
        "transcode",
        {
            "slaves": {
                name: {"kind": slave.kind, "address": slave.address, "publicIpv4": slave.public_ipv4}
                for name, slave in stack.transcode.slaves.items()
            },
            "dispatchPublicKey": stack.transcode.dispatch_public_key,
            "cloudSlavesMonthlyUsd": stack.transcode.monthly_cost_usd,
        },
    )
if stack.library is not None:
    pulumi.export(
        "library",
        {
            "swarm": stack.library.swarm,
            "peers": {
                name: {
                    "role": peer.role,
                    "kind": peer.kind,
                    "address": peer.address,
                    "peerId": peer.peer_id,
                    **({"ipnsName": peer.ipns_name.apply(lambda n: f"/ipns/{n}")} if peer.ipns_name else {}),
                    **({"plexLibraryFolders": peer.library_paths} if peer.library_paths else {}),
                }
                for name, peer in stack.library.peers.items()
            },
            "cloudPeersMonthlyUsd": stack.library.monthly_cost_usd,
        },
    )
