"""The Plex server's side of transcode offload: the dispatch key, the NFS exports (and, for cloud slaves,
the WireGuard interface that dials out to them), and the dispatcher in place of Plex's transcoder.

`pulumi destroy` (or removing plex-cdn:transcode) gives Plex its own transcoder back and removes the
exports and the tunnel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_random as random
import pulumi_tls as tls

from components.connections import to_existing_host
from components.outputs import secret
from components.transcode import SlaveEndpoint
from plexcdn import wireguard
from plexcdn.config import StackConfig
from plexcdn.transcode import render


@dataclass(frozen=True)
class TranscodeOriginArgs:
    config: StackConfig
    ssh_private_key: pulumi.Output[str]  # plex-cdn:homeSshKey
    slaves: Sequence[SlaveEndpoint]


class TranscodeOrigin(pulumi.ComponentResource):
    dispatch_public_key: pulumi.Output[str]
    wireguard_public_key: pulumi.Output[str]  # empty without cloud slaves
    ready_for_mounts: pulumi.Output[Sequence[pulumi.Resource]]  # the exports and the tunnel are up
    dispatcher: command.remote.Command

    def __init__(self, name: str, args: TranscodeOriginArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        config = args.config
        if config.transcode is None:
            raise ValueError("a TranscodeOrigin needs the stack's plex-cdn:transcode settings")
        transcode = config.transcode
        endpoints = {endpoint.name: endpoint for endpoint in args.slaves}
        missing = [slave.name for slave in transcode.slaves if slave.name not in endpoints]
        if missing:
            raise ValueError(f"TranscodeOrigin: no endpoint for slaves {', '.join(missing)}")
        super().__init__("plex-cdn:transcode_origin:TranscodeOrigin", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        user = transcode.origin.user
        connection = to_existing_host(
            transcode.origin.host, transcode.origin.port, user, args.ssh_private_key, transcode.origin.host_key
        )

        dispatch_key = tls.PrivateKey(f"{name}-dispatch-ssh", algorithm="ED25519", opts=child)
        comment = render.dispatch_key_comment(config.stack)
        self.dispatch_public_key = dispatch_key.public_key_openssh.apply(lambda key: f"{key.strip()} {comment}")
        dispatch_key_file = command.remote.Command(
            f"{name}-dispatch-key-install",
            connection=connection,
            create=render.as_root(
                render.secret_file_script(
                    render.DISPATCH_KEY, "the dispatch key", uid=transcode.plex_uid, gid=transcode.plex_gid
                ),
                user,
            ),
            delete=render.as_root(render.remove_file_script(render.DISPATCH_KEY), user),
            stdin=secret(dispatch_key.private_key_openssh),
            logging=command.remote.Logging.NONE,
            opts=child,
        )

        share_dependencies: list[pulumi.Resource] = []
        peers: pulumi.Output[dict[str, render.CloudPeer]] = pulumi.Output.from_input({})
        self.wireguard_public_key = pulumi.Output.from_input("")
        if transcode.cloud_slaves:
            private_key = secret(random.RandomBytes(f"{name}-tunnel-key", length=32, opts=child).base64)
            self.wireguard_public_key = pulumi.Output.unsecret(private_key.apply(wireguard.public_key))
            share_dependencies.append(
                command.remote.Command(
                    f"{name}-tunnel-key-install",
                    connection=connection,
                    create=render.as_root(
                        render.secret_file_script(
                            render.WIREGUARD_KEY, "the tunnel's private key", directory_mode="0700"
                        ),
                        user,
                    ),
                    delete=render.as_root(render.remove_file_script(render.WIREGUARD_KEY), user),
                    stdin=private_key,
                    logging=command.remote.Logging.NONE,
                    opts=child,
                )
            )
            peers = pulumi.Output.all(
                *(_peer(slave.name, endpoints[slave.name]) for slave in transcode.cloud_slaves)
            ).apply(dict)

        share = command.remote.Command(
            f"{name}-share",
            connection=connection,
            create=peers.apply(lambda known: render.as_root(render.origin_share_script(config, known), user)),
            delete=render.as_root(render.origin_share_teardown_script(config), user),
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=share_dependencies, delete_before_replace=True),
        )
        self.ready_for_mounts = pulumi.Output.from_input([share])

        host_keys = pulumi.Output.all(*(_host_key(endpoints[slave.name]) for slave in transcode.slaves)).apply(dict)
        self.dispatcher = command.remote.Command(
            f"{name}-dispatcher",
            connection=connection,
            create=host_keys.apply(lambda keys: render.as_root(render.origin_dispatcher_script(config, keys), user)),
            delete=render.as_root(render.origin_dispatcher_teardown_script(config), user),
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[dispatch_key_file, share, *(endpoint.ready for endpoint in args.slaves)],
                delete_before_replace=True,
            ),
        )
        self.register_outputs(
            {
                "dispatch_public_key": self.dispatch_public_key,
                "wireguard_public_key": self.wireguard_public_key,
                "exports": render.exports_file(config),
                "slaves": [slave.name for slave in transcode.slaves],
            }
        )


def _peer(name: str, endpoint: SlaveEndpoint) -> pulumi.Output[tuple[str, render.CloudPeer]]:
    if endpoint.public_ipv4 is None or endpoint.wireguard_public_key is None:
        raise ValueError(f"cloud slave {name} has no address or tunnel key")
    return pulumi.Output.all(endpoint.public_ipv4, endpoint.wireguard_public_key).apply(
        lambda values: (name, render.CloudPeer(values[0], values[1]))
    )


def _host_key(endpoint: SlaveEndpoint) -> pulumi.Output[tuple[str, str]]:
    return endpoint.host_key.apply(lambda key: (endpoint.name, key))
