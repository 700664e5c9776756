"""A transcode slave: a machine that runs Plex's transcoder for the Plex server at home.

Either a machine of yours on the home network (kind host, reached over SSH with the stack's
`homeSshKey`) or a cloud VM made here like a POP (kind cloud, with a WireGuard tunnel the Plex
server dials out to). Both get Plex of the origin's exact version with its server switched off, the
origin's files mounted at the same paths, and the guard as the only thing the origin's key may run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_random as random

from components.outputs import secret
from components.vm import WORLD, FirewallRule, VmPlan, create_vm
from plexcdn import wireguard
from plexcdn.transcode import render


@dataclass(frozen=True)
class CloudSlaveVm:
    """A cloud slave's VM, reached with the stack's deploy key."""

    vm: VmPlan
    wireguard_port: int  # where the Plex server's tunnel dials in


@dataclass(frozen=True)
class HostSlave:
    """A machine of yours, reached over SSH with plex-cdn:homeSshKey."""

    connection: command.remote.ConnectionArgs
    user: str  # the scripts run as root: through sudo unless this is root
    teardown_script: str  # `pulumi destroy` gives back what the set-up changed


@dataclass(frozen=True)
class TranscodeSlaveArgs:
    slave: str
    address: str  # where the dispatcher reaches it: the LAN address or the tunnel address
    machine: CloudSlaveVm | HostSlave
    setup_script: Callable[[str, str], str]  # given the dispatch key and the origin's tunnel key
    dispatch_public_key: pulumi.Output[str]  # the key the Plex server's dispatcher logs in with
    origin_wireguard_public_key: pulumi.Output[str]
    origin_ready: pulumi.Output[Sequence[pulumi.Resource]]  # the origin's exports and tunnel: mounts need them


@dataclass(frozen=True)
class SlaveEndpoint:
    """What the Plex server's side needs of a slave."""

    name: str
    host_key: pulumi.Output[str]  # the slave's SSH host key, for the dispatcher's known_hosts
    ready: pulumi.Resource  # the set-up command: the slave can take transcodes once it has run
    public_ipv4: pulumi.Output[str] | None  # cloud slaves: where the origin's tunnel dials
    wireguard_public_key: pulumi.Output[str] | None


def open_ports(vm: CloudSlaveVm) -> list[FirewallRule]:
    """Besides SSH from the admin's network: WireGuard from anywhere, since the Plex server's home address changes
    (the tunnel's keys are what admit it). The dispatcher's SSH arrives inside the tunnel, past this firewall."""
    return [FirewallRule("udp", vm.wireguard_port, list(WORLD), "wireguard")]


class TranscodeSlave(pulumi.ComponentResource):
    endpoint: SlaveEndpoint
    address: str  # where the dispatcher reaches it: the LAN address or the tunnel address
    public_ipv4: pulumi.Output[str] | None

    def __init__(self, name: str, args: TranscodeSlaveArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        machine = args.machine
        kind = "cloud" if isinstance(machine, CloudSlaveVm) else "host"
        super().__init__("plex-cdn:transcode:TranscodeSlave", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.address = args.address
        self.public_ipv4 = None
        wireguard_public: pulumi.Output[str] | None = None
        local_dependencies: list[pulumi.Resource] = []

        if isinstance(machine, CloudSlaveVm):
            user = "root"
            vm = create_vm(name, machine.vm, open_ports(machine), parent=self)
            self.public_ipv4 = vm.ipv4
            connection = vm.connection
            private_key = secret(random.RandomBytes(f"{name}-tunnel-key", length=32, opts=child).base64)
            # The public half is no secret: the origin's config names it.
            wireguard_public = pulumi.Output.unsecret(private_key.apply(wireguard.public_key))
            local_dependencies.append(
                command.remote.Command(
                    f"{name}-tunnel-key-install",
                    connection=connection,
                    create=render.as_root(
                        render.secret_file_script(
                            render.WIREGUARD_KEY,
                            "the tunnel's private key",
                            directory_mode="0700",
                            wait_for_first_boot=True,
                        ),
                        user,
                    ),
                    stdin=private_key,
                    logging=command.remote.Logging.NONE,
                    opts=child,
                )
            )
        else:
            user, connection = machine.user, machine.connection

        create = pulumi.Output.all(args.dispatch_public_key, args.origin_wireguard_public_key).apply(
            lambda keys: render.as_root(args.setup_script(keys[0], keys[1]), user)
        )
        # A cloud slave goes with its VM.
        delete = render.as_root(machine.teardown_script, user) if isinstance(machine, HostSlave) else None
        setup = command.remote.Command(
            f"{name}-setup",
            connection=connection,
            create=create,
            delete=delete,
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=args.origin_ready.apply(lambda ready: [*ready, *local_dependencies]),
                delete_before_replace=True,
            ),
        )
        host_key = setup.stdout.apply(lambda out: render.parse_host_key(out, args.slave))
        self.endpoint = SlaveEndpoint(args.slave, host_key, setup, self.public_ipv4, wireguard_public)
        self.register_outputs(
            {
                "kind": kind,
                "address": self.address,
                "public_ipv4": self.public_ipv4,
                "host_key": host_key,
                "wireguard_public_key": wireguard_public,
            }
        )
