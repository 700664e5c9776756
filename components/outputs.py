"""Typed helpers for Outputs shared by the components."""

from __future__ import annotations

from typing import cast

import pulumi


def secret(value: pulumi.Input[str]) -> pulumi.Output[str]:
    """Mark a string Output secret: it stays encrypted in state and masked in every log and export."""
    return cast(pulumi.Output[str], pulumi.Output.secret(value))
