"""A peer of the library swarm: a friend's machine reached over SSH (kind host) or a cloud VM made here
(kind cloud), running kubo in the private swarm, with the seeder's path watcher or the viewer's FUSE
mount, library links and cache warmer.

Every peer's config names every other peer, and a cloud peer's address exists only once its VM does: the
stack hands each peer the others through a deferred output, so a VM waits for nothing, and its firewall
and set-up wait only for the addresses they use.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi_command as command

from components.library_swarm import PeerKeys
from components.outputs import secret
from components.vm import FirewallRule, VmPlan, create_vm
from plexcdn.library import keys, render


@dataclass(frozen=True)
class CloudPeerVm:
    """A cloud peer's VM, reached with the stack's deploy key."""

    vm: VmPlan
    swarm_port: int  # open to the other peers alone


@dataclass(frozen=True)
class HostPeer:
    """A friend's machine, reached over SSH with plex-cdn:homeSshKey."""

    connection: command.remote.ConnectionArgs
    address: str  # where the other peers reach it
    swarm_cidrs: tuple[str, ...]  # the networks its connections come from, for the others' firewalls
    uninstall_script: str  # `pulumi destroy` gives back what the set-up changed


@dataclass(frozen=True)
class LibraryPeerArgs:
    peer: str
    role: Literal["seeder", "viewer"]
    machine: CloudPeerVm | HostPeer
    # kubo's whole config, given the peer's identity and every member of the swarm.
    kubo_config: Callable[[keys.PeerIdentity, Sequence[render.Member]], dict[str, Any]]
    # Given kubo's config (its private key blanked), the members and the seeders' IPNS names.
    install_script: Callable[[Mapping[str, Any], Sequence[render.Member], Mapping[str, str]], str]
    library_paths: dict[str, str] | None  # viewers: seeder -> the folder to add to Plex
    swarm_key_file: pulumi.Output[str]  # secret
    keys: PeerKeys
    members: pulumi.Output[Sequence[render.Member]]  # every peer of the swarm, this one included
    seeder_ipns_names: pulumi.Output[Mapping[str, str]]  # seeder name -> IPNS name


class LibraryPeer(pulumi.ComponentResource):
    member: pulumi.Output[render.Member]
    ready: command.remote.Command

    def __init__(self, name: str, args: LibraryPeerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        machine = args.machine
        cloud = isinstance(machine, CloudPeerVm)
        super().__init__("plex-cdn:library_peer:LibraryPeer", name, None, opts)

        if isinstance(machine, CloudPeerVm):
            swarm_sources = args.members.apply(lambda members: render.swarm_sources(members, args.peer))
            vm = create_vm(
                name, machine.vm, [FirewallRule("tcp", machine.swarm_port, swarm_sources, "ipfs-swarm")], parent=self
            )
            address: pulumi.Output[str] = vm.ipv4
            self.member = pulumi.Output.all(args.keys.peer_id, vm.ipv4, vm.ipv6).apply(
                lambda values: render.Member(
                    args.peer,
                    values[0],
                    values[1],
                    tuple(s for s in (f"{values[1]}/32", f"{values[2]}/128" if values[2] else "") if s),
                )
            )
            connection = vm.connection
        else:
            address = pulumi.Output.from_input(machine.address)
            self.member = args.keys.peer_id.apply(
                lambda peer_id: render.Member(args.peer, peer_id, machine.address, machine.swarm_cidrs)
            )
            connection = machine.connection

        def install(values: list[object]) -> str:
            peer_id, members, seeders = values
            assert isinstance(peer_id, str)
            # The command names the config by its public part only: the private key travels on stdin.
            public_identity = keys.PeerIdentity(peer_id, "(secret)")
            document = args.kubo_config(public_identity, members)  # type: ignore[arg-type]
            return args.install_script(document, members, seeders)  # type: ignore[arg-type]

        def secrets(values: list[object]) -> str:
            swarm_key, private_pem, members = values
            assert isinstance(swarm_key, str) and isinstance(private_pem, str)
            document = args.kubo_config(keys.identity(private_pem), members)  # type: ignore[arg-type]
            return swarm_key + json.dumps(document, indent=1) + "\n"

        create = pulumi.Output.all(args.keys.peer_id, args.members, args.seeder_ipns_names).apply(install)
        stdin = secret(pulumi.Output.all(args.swarm_key_file, args.keys.private_key_pem, args.members).apply(secrets))
        self.ready = command.remote.Command(
            f"{name}-setup",
            connection=connection,
            create=create,
            # A cloud peer goes with its VM.
            delete=machine.uninstall_script if isinstance(machine, HostPeer) else None,
            stdin=stdin,
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.address = address
        self.peer_id = args.keys.peer_id
        self.ipns_name = args.keys.ipns_name if args.role == "seeder" else None
        self.library_paths = args.library_paths
        self.register_outputs(
            {
                "kind": "cloud" if cloud else "host",
                "role": args.role,
                "address": address,
                "peer_id": self.peer_id,
                "ipns_name": self.ipns_name,
                "library_paths": self.library_paths,
            }
        )
