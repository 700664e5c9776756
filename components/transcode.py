"""A transcode slave: a machine that runs Plex's transcoder for the Plex server at home.

Either a machine of yours on the home network (kind host, reached over SSH with the stack's
`homeSshKey`) or a cloud VM made here like a POP (kind cloud, with a WireGuard tunnel the Plex
server dials out to). Both get Plex of the origin's exact version with its server switched off, the
origin's files mounted at the same paths, and the guard as the only thing the origin's key may run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_random as random

from components.connections import to_existing_host
from components.outputs import secret
from components.vm import WORLD, FirewallRule, VmAccess, VmSpec, create_vm
from plexcdn import wireguard
from plexcdn.config import StackConfig
from plexcdn.transcode import render


@dataclass(frozen=True)
class TranscodeSlaveArgs:
    config: StackConfig
    slave: str
    ssh_private_key: pulumi.Output[str]  # plex-cdn:homeSshKey: how `pulumi up` logs in to a host slave
    access: VmAccess  # the stack's deploy key: how it logs in to a cloud slave
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


def firewall_rules(config: StackConfig) -> list[FirewallRule]:
    """SSH from the admin's network only; WireGuard from anywhere, since the Plex server's home address changes
    (the tunnel's keys are what admit it). The dispatcher's SSH arrives inside the tunnel, past this firewall."""
    assert config.transcode is not None
    return [
        FirewallRule("tcp", 22, list(config.admin.ssh_sources), "ssh-admin"),
        FirewallRule("udp", config.transcode.wireguard_port, list(WORLD), "wireguard"),
    ]


class TranscodeSlave(pulumi.ComponentResource):
    endpoint: SlaveEndpoint
    address: str  # where the dispatcher reaches it: the LAN address or the tunnel address
    public_ipv4: pulumi.Output[str] | None

    def __init__(self, name: str, args: TranscodeSlaveArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        config = args.config
        if config.transcode is None:
            raise ValueError("a TranscodeSlave needs the stack's plex-cdn:transcode settings")
        transcode = config.transcode
        slave = transcode.slave(args.slave)
        super().__init__("plex-cdn:transcode:TranscodeSlave", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.address = transcode.slave_address(slave.name)
        self.public_ipv4 = None
        wireguard_public: pulumi.Output[str] | None = None
        local_dependencies: list[pulumi.Resource] = []

        if slave.kind == "cloud":
            user = "root"
            vm = create_vm(
                VmSpec(
                    name=name,
                    label=f"plex-cdn-{config.stack}-transcode-{slave.name}",
                    provider=slave.provider,
                    region=slave.region,
                    size=slave.size,
                    user_data=lambda identity: render.slave_cloud_init(config, slave.name, identity),
                    firewall_rules=firewall_rules(config),
                    tags=["plex-cdn", f"plex-cdn-{config.stack}", "plex-cdn-transcode"],
                ),
                args.access,
                parent=self,
            )
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
            user = slave.user
            connection = to_existing_host(slave.host, slave.port, user, args.ssh_private_key, slave.host_key)

        create = pulumi.Output.all(args.dispatch_public_key, args.origin_wireguard_public_key).apply(
            lambda keys: render.as_root(render.slave_setup_script(config, slave.name, keys[0], keys[1]), user)
        )
        # A cloud slave goes with its VM; a machine of yours gets back what the set-up changed.
        delete = (
            render.as_root(render.slave_teardown_script(config, slave.name), user) if slave.kind == "host" else None
        )
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
        host_key = setup.stdout.apply(lambda out: render.parse_host_key(out, slave.name))
        self.endpoint = SlaveEndpoint(slave.name, host_key, setup, self.public_ipv4, wireguard_public)
        self.register_outputs(
            {
                "kind": slave.kind,
                "address": self.address,
                "public_ipv4": self.public_ipv4,
                "host_key": host_key,
                "wireguard_public_key": wireguard_public,
            }
        )
