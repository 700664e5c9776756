"""The provider adapter: one Debian 13 VM with its firewall on DigitalOcean or Linode.

EdgePop, TranscodeSlave and LibraryPeer make their VMs here, so all get the same image, the same SSH key
handling, an SSH host key generated here and pinned on every connection, and first-boot-only user_data.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_digitalocean as digitalocean
import pulumi_linode as linode
import pulumi_tls as tls

from components.connections import to_new_vm
from components.outputs import secret
from plexcdn import regions
from plexcdn.vm_identity import VmIdentity

WORLD = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class FirewallRule:
    protocol: str  # "tcp" | "udp"
    port: int
    sources: pulumi.Input[Sequence[str]]  # an Output where the sources are other VMs made in the same run
    label: str


@dataclass(frozen=True)
class VmAccess:
    """How `pulumi up` logs in to the VMs it makes: the stack's deploy key (and the admin's key beside it)."""

    admin_ssh_public_key: str
    deploy_public_key: pulumi.Output[str]
    deploy_private_key: pulumi.Output[str]  # secret
    # The deploy key in the DigitalOcean account (keys there are account-wide, one per stack): a Droplet made
    # without one gets a root password that must be changed at first login, which stops every SSH command.
    digitalocean_ssh_key_fingerprint: pulumi.Output[str] | None


@dataclass(frozen=True)
class VmPlan:
    """What the stack decides about a component's VM: where, how big, its names at the provider, who may SSH
    to it, its first boot and how `pulumi up` logs in. The component adds the rest of its firewall."""

    provider: str
    region: str
    size: str
    label: str  # the name the provider shows; unique per account for Linode, so it carries the stack
    tags: tuple[str, ...]
    admin_ssh_sources: tuple[str, ...]  # port 22 is open to these alone
    user_data: Callable[[VmIdentity], str]  # first boot, given the keys the VM is known and reached by
    access: VmAccess


@dataclass(frozen=True)
class Vm:
    resource: pulumi.CustomResource
    id: pulumi.Output[str]
    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str]
    connection: command.remote.ConnectionArgs  # as root with the deploy key, the VM's host key pinned
    host_key: pulumi.Output[str]  # the VM's SSH host public key ("ssh-ed25519 AAAA..."), pinned by every client


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


def create_vm(name: str, plan: VmPlan, open_ports: Sequence[FirewallRule], parent: pulumi.Resource) -> Vm:
    """The VM and its firewall: SSH from `plan.admin_ssh_sources`, then `open_ports`. user_data is read on first
    boot only: changing it would replace the VM."""
    access = plan.access
    rules = [FirewallRule("tcp", 22, list(plan.admin_ssh_sources), "ssh-admin"), *open_ports]
    image = regions.provider_table(plan.provider).image
    host_key = tls.PrivateKey(f"{name}-ssh-host-key", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=parent))
    host_public_key = host_key.public_key_openssh.apply(str.strip)
    identity = pulumi.Output.all(access.deploy_public_key, host_key.private_key_openssh, host_public_key).apply(
        lambda keys: VmIdentity(access.admin_ssh_public_key, keys[0].strip(), keys[1], keys[2])
    )
    # The host key is secret, so the whole user_data is.
    user_data = secret(identity.apply(plan.user_data))
    if plan.provider == "digitalocean":
        resource, ipv4, ipv6 = _digitalocean(name, plan, rules, image, user_data, parent=parent)
    elif plan.provider == "linode":
        resource, ipv4, ipv6 = _linode(name, plan, rules, image, user_data, parent=parent)
    else:
        raise ValueError(f"no VM adapter for provider {plan.provider!r}")
    return Vm(
        resource, resource.id, ipv4, ipv6, to_new_vm(ipv4, access.deploy_private_key, host_public_key), host_public_key
    )


VmParts = tuple[pulumi.CustomResource, pulumi.Output[str], pulumi.Output[str]]


def _digitalocean(
    name: str,
    plan: VmPlan,
    rules: Sequence[FirewallRule],
    image: str,
    user_data: pulumi.Output[str],
    *,
    parent: pulumi.Resource,
) -> VmParts:
    access = plan.access
    if access.digitalocean_ssh_key_fingerprint is None:
        raise ValueError(f"{name}: a Droplet needs the stack's DigitalOcean SSH key")
    child = pulumi.ResourceOptions(parent=parent)
    droplet = digitalocean.Droplet(
        f"{name}-vm",
        name=plan.label,
        image=image,
        region=plan.region,
        size=plan.size,
        ipv6=True,
        monitoring=True,
        ssh_keys=[access.digitalocean_ssh_key_fingerprint],
        user_data=user_data,
        tags=list(plan.tags),
        opts=pulumi.ResourceOptions(parent=parent, ignore_changes=["user_data"]),
    )
    inbound = [
        digitalocean.FirewallInboundRuleArgs(
            protocol=rule.protocol, port_range=str(rule.port), source_addresses=rule.sources
        )
        for rule in rules
    ]
    inbound.append(digitalocean.FirewallInboundRuleArgs(protocol="icmp", source_addresses=list(WORLD)))
    outbound = [
        digitalocean.FirewallOutboundRuleArgs(protocol=protocol, port_range=ports, destination_addresses=list(WORLD))
        for protocol, ports in (("tcp", "1-65535"), ("udp", "1-65535"), ("icmp", None))
    ]
    digitalocean.Firewall(
        f"{name}-firewall",
        name=plan.label,
        droplet_ids=[droplet.id.apply(int)],
        inbound_rules=inbound,
        outbound_rules=outbound,
        opts=child,
    )
    return droplet, droplet.ipv4_address, droplet.ipv6_address


def _linode(
    name: str,
    plan: VmPlan,
    rules: Sequence[FirewallRule],
    image: str,
    user_data: pulumi.Output[str],
    *,
    parent: pulumi.Resource,
) -> VmParts:
    access = plan.access
    encoded = user_data.apply(lambda text: base64.b64encode(text.encode()).decode())
    instance = linode.Instance(
        f"{name}-vm",
        label=plan.label,
        image=image,
        region=plan.region,
        type=plan.size,
        authorized_keys=[access.deploy_public_key.apply(str.strip)],
        metadatas=[linode.InstanceMetadataArgs(user_data=encoded)],
        tags=list(plan.tags),
        # Linode carries user_data inside `metadatas`: that is the property whose change would rebuild it.
        # Labels are unique per account: the old Linode must go before its replacement can take the label.
        opts=pulumi.ResourceOptions(parent=parent, ignore_changes=["metadatas"], delete_before_replace=True),
    )
    inbounds = []
    for rule in rules:
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
        f"{name}-firewall",
        label=plan.label,
        inbound_policy="DROP",
        outbound_policy="ACCEPT",
        inbounds=inbounds,
        linodes=[instance.id.apply(int)],
        opts=pulumi.ResourceOptions(parent=parent, delete_before_replace=True),
    )
    ipv6 = instance.ipv6.apply(lambda value: (value or "").split("/")[0])
    # `ip_address` is the instance's public IPv4; `ipv4s` are the addresses asked for at creation.
    return instance, instance.ip_address, ipv6
