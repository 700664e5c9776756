"""Wires the components of one stack into a single graph: keys, the certbot user, every POP with its
DNS, the origin link in an order where each POP's upstream exists before it, and transcode offload.

The stack's config is read here alone: each component gets the values and rendered texts its args name."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pulumi
import pulumi_aws as aws

from components.certbot_user import CertbotUser, CertbotUserArgs
from components.connections import to_existing_host
from components.edge_pop import EdgePop, EdgePopArgs, PopRender
from components.latency_dns import LatencyDns, LatencyDnsArgs
from components.library_peer import CloudPeerVm, HostPeer, LibraryPeer, LibraryPeerArgs
from components.library_swarm import LibrarySwarm, LibrarySwarmArgs
from components.origin_link import AgentInstall, Hub, OriginLink, OriginLinkArgs, WireguardTunnel
from components.plex_settings import PlexSettings, PlexSettingsArgs
from components.stack_keys import StackKeys, StackKeysArgs
from components.transcode import CloudSlaveVm, HostSlave, TranscodeSlave, TranscodeSlaveArgs
from components.transcode_origin import TranscodeOrigin, TranscodeOriginArgs
from components.vm import VmAccess, VmPlan
from plexcdn import agent, plex_settings, render, topology
from plexcdn.config import (
    HOME_SSH_KEY,
    NAMESPACE,
    LibraryPeerConfig,
    StackConfig,
    TranscodeSlaveConfig,
    needs_home_ssh_key,
)
from plexcdn.cost import estimate
from plexcdn.library import render as library_render
from plexcdn.library.render import Member
from plexcdn.transcode import render as transcode_render
from plexcdn.vm_identity import VmIdentity


@dataclass(frozen=True)
class PopOutputs:
    name: str
    role: str
    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str]
    host_key: pulumi.Output[str]  # public; `python -m plexcdn status` pins it


@dataclass(frozen=True)
class PlexSettingsOutputs:
    applied_by: plex_settings.Applier
    settings: dict[str, object]  # the `plexSettings` output: who applies which value
    report: pulumi.Output[str] | None  # the applying script's lines, when pulumi up applies them


@dataclass(frozen=True)
class TranscodeSlaveOutputs:
    kind: str
    address: str  # where the Plex server's dispatcher reaches it
    public_ipv4: pulumi.Output[str] | None  # cloud slaves


@dataclass(frozen=True)
class TranscodeOutputs:
    slaves: dict[str, TranscodeSlaveOutputs]
    dispatch_public_key: pulumi.Output[str]
    monthly_cost_usd: float  # the cloud slaves' VMs


@dataclass(frozen=True)
class LibraryPeerOutputs:
    role: str
    kind: str
    address: pulumi.Output[str]
    peer_id: pulumi.Output[str]
    ipns_name: pulumi.Output[str] | None  # seeders
    library_paths: dict[str, str] | None  # viewers: seeder -> the folder to add to Plex


@dataclass(frozen=True)
class LibraryOutputs:
    swarm: str
    peers: dict[str, LibraryPeerOutputs]
    monthly_cost_usd: float  # the cloud peers' VMs


@dataclass(frozen=True)
class StackOutputs:
    shared_url: str
    plex_custom_access_url: str
    pops: dict[str, PopOutputs]
    origin_allow_list: pulumi.Output[list[str]]
    monthly_cost_usd: float
    home_wireguard_config: pulumi.Output[str] | None
    certbot_policy_json: pulumi.Output[str]
    agent_firewall_rules: pulumi.Output[str] | None
    transcode: TranscodeOutputs | None = None
    library: LibraryOutputs | None = None
    plex: PlexSettingsOutputs | None = None


def vm_providers(config: StackConfig) -> set[str]:
    """The providers the stack makes VMs on: POPs, cloud transcode slaves, cloud library peers."""
    providers = {pop.provider for pop in config.pops}
    if config.transcode is not None:
        providers |= {slave.provider for slave in config.transcode.cloud_slaves}
    if config.library is not None:
        providers |= {peer.provider for peer in config.library.peers if peer.kind == "cloud"}
    return providers


def build_stack(
    config: StackConfig,
    build_dir: Path,
    home_ssh_key: pulumi.Output[str] | None = None,
    plex_token: pulumi.Output[str] | None = None,
) -> StackOutputs:
    """The whole graph. `home_ssh_key` (a secret, plex-cdn:homeSshKey) logs in to the Plex server for the
    origin agent and transcode offload, and to the host transcode slaves. `plex_token` (a secret,
    plex-cdn:plexToken) lets a hub apply Plex's settings where the Plex host is not managed."""
    if needs_home_ssh_key(config) and home_ssh_key is None:
        raise ValueError(
            f"{NAMESPACE}:{HOME_SSH_KEY} is needed: the SSH key for the machines the stack manages but does not create"
        )
    zone_id = aws.route53.get_zone_output(name=config.domain, private_zone=False).zone_id
    keys = StackKeys(
        "keys",
        StackKeysArgs(
            stack=config.stack,
            client_ca_pops=render.client_certificate_pops(config),
            origin_agent_name=agent.tls_name(config) if config.origin.agent else None,
            digitalocean="digitalocean" in vm_providers(config),
        ),
    )
    access = VmAccess(
        admin_ssh_public_key=config.admin.ssh_public_key,
        deploy_public_key=keys.deploy_public_key,
        deploy_private_key=keys.deploy_private_key,
        digitalocean_ssh_key_fingerprint=keys.digitalocean_ssh_key_fingerprint,
    )
    certbot = CertbotUser(
        "certbot",
        CertbotUserArgs(stack=config.stack, zone_id=zone_id, certificate_names=config.all_certificate_names()),
    )
    pops: dict[str, EdgePop] = {}
    outputs: dict[str, PopOutputs] = {}
    for place in topology.places(config):
        name = place.pop.name
        pop = EdgePop(
            name,
            _edge_pop_args(
                config,
                place,
                keys=keys,
                certbot=certbot,
                access=access,
                upstream_addresses=tuple((way, pops[way].ipv4) for way in place.relays_to),
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
                # Viewers are sent to a POP only once it serves its config.
                serving=pop.ready,
            ),
        )
        outputs[name] = PopOutputs(config.pop_name(name), place.role, pop.ipv4, pop.ipv6, pop.host_key)

    hubs = topology.hubs(config)
    link = OriginLink(
        "origin",
        OriginLinkArgs(
            hubs=[
                Hub(hub.name, pops[hub.name].ipv4, pops[hub.name].ipv6, pops[hub.name].connection, pops[hub.name].ready)
                for hub in hubs
            ],
            custom_access_url=config.plex_custom_access_url,
            tunnel=_wireguard_tunnel(config, hubs[0].name) if config.origin.link == "wireguard" else None,
            agent=_agent_install(config, keys, home_ssh_key) if config.origin.agent is not None else None,
        ),
    )
    transcode = (
        _build_transcode(config, access, home_ssh_key)
        if config.transcode is not None and home_ssh_key is not None
        else None
    )
    library = _build_library(config, access, home_ssh_key) if config.library is not None else None
    plex = _build_plex_settings(config, pops, link, home_ssh_key, plex_token)
    return StackOutputs(
        shared_url=config.shared_url,
        plex_custom_access_url=config.plex_custom_access_url,
        pops=outputs,
        origin_allow_list=link.allow_list,
        monthly_cost_usd=estimate(config).total_usd,
        home_wireguard_config=link.home_wireguard_config,
        agent_firewall_rules=link.agent_firewall_rules,
        certbot_policy_json=certbot.policy_json,
        transcode=transcode,
        library=library,
        plex=plex,
    )


def _wireguard_tunnel(config: StackConfig, hub: str) -> WireguardTunnel:
    return WireguardTunnel(
        hub_tunnel_address=str(config.origin.hub_tunnel_address),
        hub_conf=partial(render.wireguard_hub_conf, config, hub),
        home_conf=partial(render.wireguard_home_conf, config, hub),
    )


def _agent_install(config: StackConfig, keys: StackKeys, home_ssh_key: pulumi.Output[str] | None) -> AgentInstall:
    settings = agent.require_agent(config)
    if keys.agent_certificate is None or home_ssh_key is None:
        raise ValueError("an origin agent needs its certificate and the SSH key of the Plex host")
    return AgentInstall(
        certificate=keys.agent_certificate,
        hub_client_ca_pems=tuple(keys.client_cas[hub.name].cert_pem for hub in topology.hubs(config)),
        connection=to_existing_host(
            settings.ssh_host, settings.ssh_port, settings.ssh_user, home_ssh_key, settings.ssh_host_key
        ),
        install_script=partial(agent.install_script, config),
        firewall_rules=partial(agent.firewall_rules, config),
    )


class VmPlace(Protocol):
    """Where a VM of the stack runs and how big it is: a POP's, a cloud slave's or a cloud library peer's settings."""

    @property
    def provider(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def size(self) -> str: ...


def _vm_plan(
    config: StackConfig,
    machine: VmPlace,
    *,
    name: str,
    role_tag: str,
    user_data: Callable[[VmIdentity], str],
    access: VmAccess,
) -> VmPlan:
    """A VM of the stack's: its label carries the stack (Linode labels are unique per account), its tags the
    project, the stack and its role."""
    return VmPlan(
        provider=machine.provider,
        region=machine.region,
        size=machine.size,
        label=f"plex-cdn-{config.stack}-{name}",
        tags=("plex-cdn", f"plex-cdn-{config.stack}", role_tag),
        admin_ssh_sources=tuple(config.admin.ssh_sources),
        user_data=user_data,
        access=access,
    )


def _pop_render(config: StackConfig, pop: str) -> PopRender:
    """The POP's texts from the stack's config; the addresses of the POPs it relays to name them in the nginx config."""

    def release(addresses: Mapping[str, str], certificates: render.PeerCertificates) -> render.PopRelease:
        return render.pop_release(config, pop, addresses=dict(addresses) or None, peer=certificates)

    return PopRender(
        release=release,
        deploy_script=partial(render.deploy_nginx_script, config, pop),
        install_credentials_script=partial(render.install_credentials_script, config, pop),
        wait_for_first_boot_script=render.wait_for_first_boot_script(config, pop),
    )


def _edge_pop_args(
    config: StackConfig,
    place: topology.PopPlace,
    *,
    keys: StackKeys,
    certbot: CertbotUser,
    access: VmAccess,
    upstream_addresses: tuple[tuple[str, pulumi.Output[str]], ...],
    build_dir: Path,
) -> EdgePopArgs:
    pop = place.pop
    upstream = render.upstream_of(config, pop.name, render.placeholder_addresses(config))
    return EdgePopArgs(
        pop=pop.name,
        host_name=config.pop_name(pop.name),
        peer_name=config.peer_name,
        role=place.role,
        vm=_vm_plan(
            config,
            pop,
            name=pop.name,
            role_tag=f"plex-cdn-{place.role}",
            user_data=partial(render.cloud_init, config, pop.name),
            access=access,
        ),
        hub_wireguard_port=config.origin.wireguard_port
        if place.role == "hub" and config.origin.link == "wireguard"
        else None,
        downstream=place.downstream,
        upstream_client_cert_file=upstream.client_cert_file,
        upstream_client_key_file=upstream.client_key_file,
        secret_files=render.secret_files(config, pop.name),
        texts=_pop_render(config, pop.name),
        certbot_access_key_id=certbot.access_key_id,
        certbot_secret_access_key=certbot.secret_access_key,
        peer_ca=keys.peer_ca,
        client_ca=keys.client_cas.get(pop.name),
        downstream_client_ca_pems=tuple(keys.client_cas[name].cert_pem for name in place.downstream),
        origin_ca=keys.origin_ca,
        upstream_addresses=upstream_addresses,
        release_dir=build_dir / pop.name,
    )


def _build_plex_settings(
    config: StackConfig,
    pops: dict[str, EdgePop],
    link: OriginLink,
    home_ssh_key: pulumi.Output[str] | None,
    plex_token: pulumi.Output[str] | None,
) -> PlexSettingsOutputs:
    """Plex's own settings, applied once every POP serves: on the managed Plex host, or through the first hub
    with plex-cdn:plexToken; otherwise only described in the `plexSettings` output."""
    applied_by = plex_settings.applier(config, plex_token is not None)
    if applied_by == "plex-host" and home_ssh_key is None:
        applied_by = "none"
    settings = plex_settings.settings_output(config, applied_by)
    if applied_by == "none":
        return PlexSettingsOutputs(applied_by, settings, None)
    addresses = pulumi.Output.all(
        *(pulumi.Output.all(name, address) for name, pop in pops.items() for address in (pop.ipv4, pop.ipv6))
    ).apply(lambda pairs: [(str(pair[0]), str(pair[1])) for pair in pairs])
    hub = pops[topology.hubs(config)[0].name]
    host = plex_settings.managed_host(config)
    if applied_by == "plex-host" and host is not None and home_ssh_key is not None:
        endpoint = plex_settings.local_endpoint(config)
        connection = to_existing_host(host.host, host.port, host.user, home_ssh_key, host.host_key)
        user, token = host.user, None
    else:
        hub_endpoint = plex_settings.hub_endpoint(config)
        if hub_endpoint is None or plex_token is None:
            raise ValueError(
                "Plex's settings need the managed Plex host and its SSH key, or a hub reaching Plex over a "
                "verified hop and the server's token"
            )
        endpoint, connection, user, token = hub_endpoint, hub.connection, "root", plex_token
    from_stdin = token is not None
    component = PlexSettings(
        "plex-settings",
        PlexSettingsArgs(
            connection=connection,
            user=user,
            apply_script=lambda pairs: plex_settings.apply_script(
                config, endpoint, plex_settings.cdn_sources(config, pairs), from_stdin
            ),
            restore_script=plex_settings.restore_script(config, endpoint, from_stdin),
            pop_addresses=addresses,
            serving=[pop.ready for pop in pops.values()],
            plex_token=token,
        ),
        opts=pulumi.ResourceOptions(depends_on=[link]),
    )
    return PlexSettingsOutputs(applied_by, settings, component.report)


def _build_transcode(config: StackConfig, access: VmAccess, ssh_key: pulumi.Output[str]) -> TranscodeOutputs:
    """Slaves first, then the Plex server's side. Each needs something of the other: a slave's mounts need the
    origin's exports and tunnel, which need the cloud slaves' addresses and keys; the origin's dispatcher needs
    every slave set up. Deferred outputs carry the origin's half to the slaves, so every resource still waits
    only for what it uses."""
    assert config.transcode is not None
    dispatch_public_key: pulumi.Output[str]
    resolve_dispatch_key: Callable[[pulumi.Output[str]], None]
    dispatch_public_key, resolve_dispatch_key = pulumi.deferred_output()
    origin_wireguard_key: pulumi.Output[str]
    resolve_wireguard_key: Callable[[pulumi.Output[str]], None]
    origin_wireguard_key, resolve_wireguard_key = pulumi.deferred_output()
    origin_ready: pulumi.Output[Sequence[pulumi.Resource]]
    resolve_origin_ready: Callable[[pulumi.Output[Sequence[pulumi.Resource]]], None]
    origin_ready, resolve_origin_ready = pulumi.deferred_output()
    slaves = [
        TranscodeSlave(
            f"transcode-{slave.name}",
            TranscodeSlaveArgs(
                slave=slave.name,
                address=config.transcode.slave_address(slave.name),
                machine=_slave_machine(config, slave, access, ssh_key),
                setup_script=partial(transcode_render.slave_setup_script, config, slave.name),
                dispatch_public_key=dispatch_public_key,
                origin_wireguard_public_key=origin_wireguard_key,
                origin_ready=origin_ready,
            ),
        )
        for slave in config.transcode.slaves
    ]
    origin_host = config.transcode.origin
    origin = TranscodeOrigin(
        "transcode-origin",
        TranscodeOriginArgs(
            connection=to_existing_host(
                origin_host.host, origin_host.port, origin_host.user, ssh_key, origin_host.host_key
            ),
            user=origin_host.user,
            slaves=[slave.endpoint for slave in slaves],
            cloud_slaves=tuple(slave.name for slave in config.transcode.cloud_slaves),
            dispatch_key_comment=transcode_render.dispatch_key_comment(config.stack),
            plex_uid=config.transcode.plex_uid,
            plex_gid=config.transcode.plex_gid,
            share_script=partial(transcode_render.origin_share_script, config),
            share_teardown_script=transcode_render.origin_share_teardown_script(config),
            dispatcher_script=partial(transcode_render.origin_dispatcher_script, config),
            dispatcher_teardown_script=transcode_render.origin_dispatcher_teardown_script(config),
            exports=transcode_render.exports_file(config),
        ),
    )
    resolve_dispatch_key(origin.dispatch_public_key)
    resolve_wireguard_key(origin.wireguard_public_key)
    resolve_origin_ready(origin.ready_for_mounts)
    return TranscodeOutputs(
        slaves={
            slave.endpoint.name: TranscodeSlaveOutputs(
                config.transcode.slave(slave.endpoint.name).kind, slave.address, slave.public_ipv4
            )
            for slave in slaves
        },
        dispatch_public_key=origin.dispatch_public_key,
        monthly_cost_usd=config.transcode.cloud_monthly_usd,
    )


def _slave_machine(
    config: StackConfig, slave: TranscodeSlaveConfig, access: VmAccess, ssh_key: pulumi.Output[str]
) -> CloudSlaveVm | HostSlave:
    assert config.transcode is not None
    if slave.kind == "cloud":
        return CloudSlaveVm(
            vm=_vm_plan(
                config,
                slave,
                name=f"transcode-{slave.name}",
                role_tag="plex-cdn-transcode",
                user_data=partial(transcode_render.slave_cloud_init, config, slave.name),
                access=access,
            ),
            wireguard_port=config.transcode.wireguard_port,
        )
    return HostSlave(
        connection=to_existing_host(slave.host, slave.port, slave.user, ssh_key, slave.host_key),
        user=slave.user,
        teardown_script=transcode_render.slave_teardown_script(config, slave.name),
    )


def _build_library(config: StackConfig, access: VmAccess, ssh_key: pulumi.Output[str] | None) -> LibraryOutputs:
    """The swarm's keys, then every peer. Each peer's config names all the others, whose addresses a cloud
    peer has only once its VM exists: a deferred output carries the list to every peer."""
    assert config.library is not None
    library = config.library
    swarm = LibrarySwarm(
        "library",
        LibrarySwarmArgs(
            peers=tuple(peer.name for peer in library.peers), seeders=tuple(seeder.name for seeder in library.seeders)
        ),
    )
    members: pulumi.Output[Sequence[Member]]
    resolve_members: Callable[[pulumi.Output[Sequence[Member]]], None]
    members, resolve_members = pulumi.deferred_output()
    seeder_names = pulumi.Output.all(**{seeder.name: swarm.peers[seeder.name].ipns_name for seeder in library.seeders})
    peers = {
        peer.name: LibraryPeer(
            f"library-{peer.name}",
            LibraryPeerArgs(
                peer=peer.name,
                role=peer.role,
                machine=_library_machine(config, peer, access, ssh_key),
                kubo_config=partial(library_render.kubo_config, config, peer.name),
                install_script=_library_install_script(config, peer.name, peer.kind == "cloud"),
                library_paths={seeder.name: peer.library_path(seeder.name) for seeder in library.seeders}
                if peer.role == "viewer"
                else None,
                swarm_key_file=swarm.swarm_key_file,
                keys=swarm.peers[peer.name],
                members=members,
                seeder_ipns_names=seeder_names,
            ),
        )
        for peer in library.peers
    }
    resolve_members(pulumi.Output.all(*(peer.member for peer in peers.values())))
    return LibraryOutputs(
        swarm=library.swarm,
        peers={
            name: LibraryPeerOutputs(
                library.peer(name).role,
                library.peer(name).kind,
                peer.address,
                peer.peer_id,
                peer.ipns_name,
                peer.library_paths,
            )
            for name, peer in peers.items()
        },
        monthly_cost_usd=library.cloud_monthly_usd,
    )


def _library_machine(
    config: StackConfig, peer: LibraryPeerConfig, access: VmAccess, ssh_key: pulumi.Output[str] | None
) -> CloudPeerVm | HostPeer:
    assert config.library is not None
    if peer.kind == "cloud":
        return CloudPeerVm(
            vm=_vm_plan(
                config,
                peer,
                name=f"library-{peer.name}",
                role_tag="plex-cdn-library",
                user_data=partial(library_render.cloud_init, config, peer.name),
                access=access,
            ),
            swarm_port=config.library.swarm_port,
        )
    if ssh_key is None:
        raise ValueError(f"library peer {peer.name} is kind host: it needs plex-cdn:homeSshKey")
    return HostPeer(
        connection=to_existing_host(peer.host, peer.port, peer.user, ssh_key, peer.host_key),
        address=peer.host,
        swarm_cidrs=peer.swarm_cidrs,
        uninstall_script=library_render.uninstall_script(config, peer.name),
    )


def _library_install_script(
    config: StackConfig, peer: str, cloud: bool
) -> Callable[[Mapping[str, Any], Sequence[Member], Mapping[str, str]], str]:
    return lambda document, members, seeders: library_render.install_script(
        config, peer, document=document, members=members, seeder_names=seeders, cloud=cloud
    )
