"""How pulumi-command reaches a machine over SSH: a VM the stack made, or a machine it did not make."""

from __future__ import annotations

import pulumi
import pulumi_command as command

NEW_VM_DIAL_ATTEMPTS = 60  # a fresh VM needs a minute or more before its SSH answers
EXISTING_HOST_DIAL_ATTEMPTS = 3  # a machine at home is up or it is not: fail soon with ssh's reason
DIAL_TIMEOUT_S = 15


def to_new_vm(
    host: pulumi.Input[str], deploy_private_key: pulumi.Input[str], host_key: pulumi.Input[str]
) -> command.remote.ConnectionArgs:
    """As root with the stack's deploy key, patient while the VM boots; only the host key the stack generated
    for the VM is accepted, so no secret goes to whoever else answers at its address."""
    return command.remote.ConnectionArgs(
        host=host,
        user="root",
        private_key=deploy_private_key,
        host_key=host_key,
        dial_error_limit=NEW_VM_DIAL_ATTEMPTS,
        per_dial_timeout=DIAL_TIMEOUT_S,
    )


def to_existing_host(
    host: str, port: int, user: str, private_key: pulumi.Input[str], host_key: str
) -> command.remote.ConnectionArgs:
    """With the user's own key (plex-cdn:homeSshKey) to a machine that is expected to be up, whose host key
    the stack file gives (`ssh-keyscan`)."""
    return command.remote.ConnectionArgs(
        host=host,
        port=port,
        user=user,
        private_key=private_key,
        host_key=host_key,
        dial_error_limit=EXISTING_HOST_DIAL_ATTEMPTS,
        per_dial_timeout=DIAL_TIMEOUT_S,
    )
