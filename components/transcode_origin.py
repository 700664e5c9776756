"""The Plex server's side of transcode offload: the dispatch key, the NFS exports (and, for cloud slaves,
the WireGuard interface that dials out to them), and the dispatcher in place of Plex's transcoder.

`pulumi destroy` (or removing plex-cdn:transcode) gives Plex its own transcoder back and removes the
exports and the tunnel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_random as random
import pulumi_tls as tls

from components.outputs import secret
from components.transcode import SlaveEndpoint
from plexcdn import wireguard
from plexcdn.transcode import render


@dataclass(frozen=True)
class TranscodeOriginArgs:
    connection: command.remote.ConnectionArgs  # to the Plex server, with plex-cdn:homeSshKey
    user: str  # the scripts run as root: through sudo unless this is root
    slaves: Sequence[SlaveEndpoint]  # every slave, in the stack file's order
    cloud_slaves: tuple[str, ...]  # those the Plex server's tunnel dials out to
    dispatch_key_comment: str  # what the slaves find the dispatch key by in authorized_keys
    plex_uid: int  # the dispatch key is Plex's to read
    plex_gid: int
    share_script: Callable[[Mapping[str, render.CloudPeer]], str]  # given the cloud slaves' tunnel peers
    share_teardown_script: str
    dispatcher_script: Callable[[Mapping[str, str]], str]  # given each slave's SSH host key
    dispatcher_teardown_script: str
    exports: str  # the exports file the share script writes


class TranscodeOrigin(pulumi.ComponentResource):
    dispatch_public_key: pulumi.Output[str]
    wireguard_public_key: pulumi.Output[str]  # empty without cloud slaves
    ready_for_mounts: pulumi.Output[Sequence[pulumi.Resource]]  # the exports and the tunnel are up
    dispatcher: command.remote.Command

    def __init__(self, name: str, args: TranscodeOriginArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        endpoints = {endpoint.name: endpoint for endpoint in args.slaves}
        missing = [slave for slave in args.cloud_slaves if slave not in endpoints]
        if missing:
            raise ValueError(f"TranscodeOrigin: no endpoint for slaves {', '.join(missing)}")
        super().__init__("plex-cdn:transcode_origin:TranscodeOrigin", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        user, connection = args.user, args.connection

        dispatch_key = tls.PrivateKey(f"{name}-dispatch-ssh", algorithm="ED25519", opts=child)
        comment = args.dispatch_key_comment
        self.dispatch_public_key = dispatch_key.public_key_openssh.apply(lambda key: f"{key.strip()} {comment}")
        dispatch_key_file = command.remote.Command(
            f"{name}-dispatch-key-install",
            connection=connection,
            create=render.as_root(
                render.secret_file_script(
                    render.DISPATCH_KEY, "the dispatch key", uid=args.plex_uid, gid=args.plex_gid
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
        if args.cloud_slaves:
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
            peers = pulumi.Output.all(*(_peer(slave, endpoints[slave]) for slave in args.cloud_slaves)).apply(dict)

        share = command.remote.Command(
            f"{name}-share",
            connection=connection,
            create=peers.apply(lambda known: render.as_root(args.share_script(known), user)),
            delete=render.as_root(args.share_teardown_script, user),
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=share_dependencies, delete_before_replace=True),
        )
        self.ready_for_mounts = pulumi.Output.from_input([share])

        host_keys = pulumi.Output.all(*(_host_key(endpoint) for endpoint in args.slaves)).apply(dict)
        self.dispatcher = command.remote.Command(
            f"{name}-dispatcher",
            connection=connection,
            create=host_keys.apply(lambda keys: render.as_root(args.dispatcher_script(keys), user)),
            delete=render.as_root(args.dispatcher_teardown_script, user),
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
                "exports": args.exports,
                "slaves": [endpoint.name for endpoint in args.slaves],
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
