"""The provider adapter: one Debian 12 VM with its firewall on DigitalOcean or Linode.

EdgePop and TranscodeSlave both make their VMs here, so both get the same image, the same SSH key
handling and the same first-boot-only user_data.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_digitalocean as digitalocean
import pulumi_linode as linode

from plexcdn import regions

WORLD = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class FirewallRule:
    protocol: str  # "tcp" | "udp"
    port: int
    sources: pulumi.Input[Sequence[str]]  # an Output where the sources are other VMs made in the same run
    label: str


@dataclass(frozen=True)
class VmSpec:
    name: str  # the Pulumi resource name prefix
    label: str  # the name the provider shows; unique per account for Linode, so it carries the stack
    provider: str
    region: str
    size: str
    user_data: pulumi.Input[str]  # installs the SSH keys: DigitalOcean's account-wide key list rejects a key twice
    deploy_public_key: pulumi.Input[str]
    firewall_rules: Sequence[FirewallRule]
    tags: Sequence[str]


@dataclass(frozen=True)
class Vm:
    resource: pulumi.CustomResource
    id: pulumi.Output[str]
    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str]


def _by_family(sources: Sequence[str]) -> tuple[list[str] | None, list[str] | None]:
    return [s for s in sources if ":" not in s] or None, [s for s in sources if ":" in s] or None


def _split(
    sources: pulumi.Input[Sequence[str]],
) -> tuple[pulumi.Input[list[str] | None], pulumi.Input[list[str] | None]]:
    """IPv4 and IPv6 sources apart, as Linode wants them; None (left out) where there are none."""
    if not isinstance(sources, pulumi.Output):
        return _by_family(sources)  # type: ignore[arg-type]
    split = sources.apply(_by_family)
    return split.apply(lambda pair: pair[0]), split.apply(lambda pair: pair[1])


def create_vm(spec: VmSpec, parent: pulumi.Resource) -> Vm:
    """The VM and its firewall. user_data is read on first boot only: changing it would replace the VM."""
    image = regions.provider_table(spec.provider).image
    if spec.provider == "digitalocean":
        return _digitalocean(spec, image, parent)
    if spec.provider == "linode":
        return _linode(spec, image, parent)
    raise ValueError(f"no VM adapter for provider {spec.provider!r}")


def _digitalocean(spec: VmSpec, image: str, parent: pulumi.Resource) -> Vm:
    child = pulumi.ResourceOptions(parent=parent)
    droplet = digitalocean.Droplet(
        f"{spec.name}-vm",
        name=spec.label,
        image=image,
        region=spec.region,
        size=spec.size,
        ipv6=True,
        monitoring=True,
        user_data=spec.user_data,
        tags=list(spec.tags),
        opts=pulumi.ResourceOptions(parent=parent, ignore_changes=["user_data"]),
    )
    inbound = [
        digitalocean.FirewallInboundRuleArgs(
            protocol=rule.protocol, port_range=str(rule.port), source_addresses=rule.sources
        )
        for rule in spec.firewall_rules
    ]
    inbound.append(digitalocean.FirewallInboundRuleArgs(protocol="icmp", source_addresses=list(WORLD)))
    outbound = [
        digitalocean.FirewallOutboundRuleArgs(protocol=protocol, port_range=ports, destination_addresses=list(WORLD))
        for protocol, ports in (("tcp", "1-65535"), ("udp", "1-65535"), ("icmp", None))
    ]
    digitalocean.Firewall(
        f"{spec.name}-firewall",
        name=spec.label,
        droplet_ids=[droplet.id.apply(int)],
        inbound_rules=inbound,
        outbound_rules=outbound,
        opts=child,
    )
    return Vm(droplet, droplet.id, droplet.ipv4_address, droplet.ipv6_address)


def _linode(spec: VmSpec, image: str, parent: pulumi.Resource) -> Vm:
    user_data = pulumi.Output.from_input(spec.user_data).apply(lambda text: base64.b64encode(text.encode()).decode())
    instance = linode.Instance(
        f"{spec.name}-vm",
        label=spec.label,
        image=image,
        region=spec.region,
        type=spec.size,
        authorized_keys=[pulumi.Output.from_input(spec.deploy_public_key).apply(str.strip)],
        metadatas=[linode.InstanceMetadataArgs(user_data=user_data)],
        tags=list(spec.tags),
        # Linode carries user_data inside `metadatas`: that is the property whose change would rebuild it.
        # Labels are unique per account: the old Linode must go before its replacement can take the label.
        opts=pulumi.ResourceOptions(parent=parent, ignore_changes=["metadatas"], delete_before_replace=True),
    )
    inbounds = []
    for rule in spec.firewall_rules:
        ipv4s, ipv6s = _split(rule.sources)
        inbounds.append(
            linode.FirewallInboundArgs(
                label=rule.label,
                action="ACCEPT",
                protocol=rule.protocol.upper(),
                ports=str(rule.port),
                ipv4s=ipv4s,
                ipv6s=ipv6s,
            )
        )
    inbounds.append(
        linode.FirewallInboundArgs(label="icmp", action="ACCEPT", protocol="ICMP", ipv4s=["0.0.0.0/0"], ipv6s=["::/0"])
    )
    linode.Firewall(
        f"{spec.name}-firewall",
        label=spec.label,
        inbound_policy="DROP",
        outbound_policy="ACCEPT",
        inbounds=inbounds,
        linodes=[instance.id.apply(int)],
        opts=pulumi.ResourceOptions(parent=parent, delete_before_replace=True),
    )
    ipv6 = instance.ipv6.apply(lambda value: (value or "").split("/")[0])
    ipv4 = instance.ipv4s.apply(lambda addresses: addresses[0])
    return Vm(instance, instance.id, ipv4, ipv6)
