"""The Plex server's own settings the CDN needs, applied through Plex's API by a script run over SSH: on the Plex
host where the stack manages it (the token Plex keeps never leaves it), else on a hub with plex-cdn:plexToken on
the script's stdin. The script reads every setting back and fails naming the ones Plex did not take; `pulumi
destroy` puts Plex's earlier values back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components.connections import to_existing_host
from components.outputs import secret
from plexcdn import plex_settings
from plexcdn.config import StackConfig
from plexcdn.transcode.render import as_root


@dataclass(frozen=True)
class PlexSettingsArgs:
    config: StackConfig
    # (POP, address) for every POP: none of them may skip Plex's sign-in.
    pop_addresses: pulumi.Output[list[tuple[str, str]]]
    # Plex's settings point apps at the CDN only once it serves: every POP's deploy (and the agent).
    serving: Sequence[pulumi.Resource]
    # On the Plex host: the SSH key that reaches it (plex-cdn:homeSshKey).
    plex_host_ssh_key: pulumi.Output[str] | None = None
    # Through a hub: its connection and the server's token (plex-cdn:plexToken).
    hub_connection: command.remote.ConnectionArgs | None = None
    plex_token: pulumi.Output[str] | None = None


class PlexSettings(pulumi.ComponentResource):
    applied_by: plex_settings.Applier
    report: pulumi.Output[str]  # the script's lines, one per setting

    def __init__(self, name: str, args: PlexSettingsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        config = args.config
        host = plex_settings.managed_host(config)
        on_host = host is not None and args.plex_host_ssh_key is not None
        hub = plex_settings.hub_endpoint(config)
        if not on_host and (hub is None or args.hub_connection is None or args.plex_token is None):
            raise ValueError(
                "PlexSettings needs the managed Plex host and its SSH key, or a hub reaching Plex over a verified "
                "hop and the server's token"
            )
        super().__init__("plex-cdn:plex_settings:PlexSettings", name, None, opts)
        self.applied_by = "plex-host" if on_host else "hub"
        sources = args.pop_addresses.apply(lambda pairs: plex_settings.cdn_sources(config, pairs))
        if on_host:
            assert host is not None and args.plex_host_ssh_key is not None
            endpoint = plex_settings.local_endpoint(config)
            connection = to_existing_host(host.host, host.port, host.user, args.plex_host_ssh_key, host.host_key)
            stdin: pulumi.Output[str] | None = None
            user = host.user
        else:
            assert hub is not None and args.hub_connection is not None and args.plex_token is not None
            endpoint, connection, user = hub, args.hub_connection, "root"
            stdin = args.plex_token.apply(lambda token: token.strip() + "\n")
        from_stdin = stdin is not None
        apply = command.remote.Command(
            f"{name}-apply",
            connection=connection,
            create=sources.apply(
                lambda known: as_root(plex_settings.apply_script(config, endpoint, known, from_stdin), user)
            ),
            delete=as_root(plex_settings.restore_script(config, endpoint, from_stdin), user),
            stdin=secret(stdin) if stdin is not None else None,
            # The scripts print setting names and values, never the token.
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.serving)),
        )
        self.report = apply.stdout
        self.register_outputs({"applied_by": self.applied_by, "report": self.report})
