"""The Plex server's own settings the CDN needs, applied through Plex's API by a script run over SSH: on the Plex
host where the stack manages it (the token Plex keeps never leaves it), else on a hub with plex-cdn:plexToken on
the script's stdin. The script reads every setting back and fails naming the ones Plex did not take; `pulumi
destroy` puts Plex's earlier values back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components.outputs import secret
from plexcdn import plex_settings
from plexcdn.transcode.render import as_root


@dataclass(frozen=True)
class PlexSettingsArgs:
    # The Plex host (with plex-cdn:homeSshKey) or a hub, and the user the scripts log in as there.
    connection: command.remote.ConnectionArgs
    user: str
    # Given (POP, address) for every POP: none of them may skip Plex's sign-in.
    apply_script: Callable[[Sequence[tuple[str, str]]], str]
    restore_script: str
    pop_addresses: pulumi.Output[list[tuple[str, str]]]
    # Plex's settings point apps at the CDN only once it serves: every POP's deploy (and the agent).
    serving: Sequence[pulumi.Resource]
    # Through a hub: the server's token (plex-cdn:plexToken), on the scripts' stdin. None on the Plex host, whose
    # scripts read the token Plex keeps there.
    plex_token: pulumi.Output[str] | None = None


class PlexSettings(pulumi.ComponentResource):
    applied_by: plex_settings.Applier
    report: pulumi.Output[str]  # the script's lines, one per setting

    def __init__(self, name: str, args: PlexSettingsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("plex-cdn:plex_settings:PlexSettings", name, None, opts)
        self.applied_by = "plex-host" if args.plex_token is None else "hub"
        stdin = args.plex_token.apply(lambda token: token.strip() + "\n") if args.plex_token is not None else None
        apply = command.remote.Command(
            f"{name}-apply",
            connection=args.connection,
            create=args.pop_addresses.apply(lambda pairs: as_root(args.apply_script(pairs), args.user)),
            delete=as_root(args.restore_script, args.user),
            stdin=secret(stdin) if stdin is not None else None,
            # The scripts print setting names and values, never the token.
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.serving)),
        )
        self.report = apply.stdout
        self.register_outputs({"applied_by": self.applied_by, "report": self.report})
