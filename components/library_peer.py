"""A peer of the library swarm: a friend's machine reached over SSH (kind host) or a cloud VM made here
(kind cloud), running kubo in the private swarm, with the seeder's path watcher or the viewer's FUSE
mount, library links and cache warmer.

Every peer's config names every other peer, and a cloud peer's address exists only once its VM does: the
stack hands each peer the others through a deferred output, so a VM waits for nothing, and its firewall
and set-up wait only for the addresses they use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components.connections import to_existing_host
from components.library_swarm import PeerKeys
from components.outputs import secret
from components.vm import FirewallRule, VmAccess, VmSpec, create_vm
from plexcdn.config import StackConfig
from plexcdn.library import keys, render


@dataclass(frozen=True)
class LibraryPeerArgs:
    config: StackConfig
    peer: str
    swarm_key_file: pulumi.Output[str]  # secret
    keys: PeerKeys
    members: pulumi.Output[Sequence[render.Member]]  # every peer of the swarm, this one included
    seeder_ipns_names: pulumi.Output[Mapping[str, str]]  # seeder name -> IPNS name
    ssh_private_key: pulumi.Output[str] | None  # plex-cdn:homeSshKey: how `pulumi up` logs in to a host peer
    access: VmAccess  # the stack's deploy key: how it logs in to a cloud peer


class LibraryPeer(pulumi.ComponentResource):
    member: pulumi.Output[render.Member]
    ready: command.remote.Command

    def __init__(self, name: str, args: LibraryPeerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        config = args.config
        if config.library is None:
            raise ValueError("a LibraryPeer needs the stack's plex-cdn:library settings")
        library = config.library
        peer = library.peer(args.peer)
        if peer.kind == "host" and args.ssh_private_key is None:
            raise ValueError(f"library peer {peer.name} is kind host: it needs plex-cdn:homeSshKey")
        super().__init__("plex-cdn:library_peer:LibraryPeer", name, None, opts)

        if peer.kind == "cloud":
            user = "root"
            swarm_sources = args.members.apply(lambda members: render.swarm_sources(members, peer.name))
            vm = create_vm(
                VmSpec(
                    name=name,
                    label=f"plex-cdn-{config.stack}-library-{peer.name}",
                    provider=peer.provider,
                    region=peer.region,
                    size=peer.size,
                    user_data=lambda identity: render.cloud_init(config, peer.name, identity),
                    firewall_rules=[
                        FirewallRule("tcp", 22, list(config.admin.ssh_sources), "ssh-admin"),
                        FirewallRule("tcp", library.swarm_port, swarm_sources, "ipfs-swarm"),
                    ],
                    tags=["plex-cdn", f"plex-cdn-{config.stack}", "plex-cdn-library"],
                ),
                args.access,
                parent=self,
            )
            address: pulumi.Output[str] = vm.ipv4
            self.member = pulumi.Output.all(args.keys.peer_id, vm.ipv4, vm.ipv6).apply(
                lambda values: render.Member(
                    peer.name,
                    values[0],
                    values[1],
                    tuple(s for s in (f"{values[1]}/32", f"{values[2]}/128" if values[2] else "") if s),
                )
            )
            connection = vm.connection
        else:
            user = peer.user
            address = pulumi.Output.from_input(peer.host)
            self.member = args.keys.peer_id.apply(
                lambda peer_id: render.Member(peer.name, peer_id, peer.host, peer.swarm_cidrs)
            )
            assert args.ssh_private_key is not None
            connection = to_existing_host(peer.host, peer.port, user, args.ssh_private_key, peer.host_key)

        cloud = peer.kind == "cloud"

        def install(values: list[object]) -> str:
            peer_id, members, seeders = values
            assert isinstance(peer_id, str)
            # The command names the config by its public part only: the private key travels on stdin.
            public_identity = keys.PeerIdentity(peer_id, "(secret)")
            document = render.kubo_config(config, peer.name, public_identity, members)  # type: ignore[arg-type]
            return render.install_script(
                config,
                peer.name,
                document=document,
                members=members,  # type: ignore[arg-type]
                seeder_names=seeders,  # type: ignore[arg-type]
                cloud=cloud,
            )

        def secrets(values: list[object]) -> str:
            swarm_key, private_pem, members = values
            assert isinstance(swarm_key, str) and isinstance(private_pem, str)
            document = render.kubo_config(config, peer.name, keys.identity(private_pem), members)  # type: ignore[arg-type]
            return swarm_key + json.dumps(document, indent=1) + "\n"

        create = pulumi.Output.all(args.keys.peer_id, args.members, args.seeder_ipns_names).apply(install)
        stdin = secret(pulumi.Output.all(args.swarm_key_file, args.keys.private_key_pem, args.members).apply(secrets))
        self.ready = command.remote.Command(
            f"{name}-setup",
            connection=connection,
            create=create,
            # A cloud peer goes with its VM; a friend's machine gets back what the set-up changed.
            delete=None if cloud else render.uninstall_script(config, peer.name),
            stdin=stdin,
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.address = address
        self.peer_id = args.keys.peer_id
        self.ipns_name = args.keys.ipns_name if peer.role == "seeder" else None
        self.library_paths = (
            {seeder.name: peer.library_path(seeder.name) for seeder in library.seeders}
            if peer.role == "viewer"
            else None
        )
        self.register_outputs(
            {
                "kind": peer.kind,
                "role": peer.role,
                "address": address,
                "peer_id": self.peer_id,
                "ipns_name": self.ipns_name,
                "library_paths": self.library_paths,
            }
        )
