"""The IAM user certbot on every POP uses for DNS-01, allowed to write only its own challenge records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.outputs import secret
from plexcdn.iam import certbot_policy


@dataclass(frozen=True)
class CertbotUserArgs:
    stack: str
    zone_id: pulumi.Input[str]
    certificate_names: Sequence[str]


class CertbotUser(pulumi.ComponentResource):
    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]
    policy_json: pulumi.Output[str]

    def __init__(self, name: str, args: CertbotUserArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("plex-cdn:certbot_user:CertbotUser", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        user = aws.iam.User(
            f"{name}-user",
            name=f"plex-cdn-{args.stack}-certbot",
            path="/plex-cdn/",
            tags={"plex-cdn:stack": args.stack, "plex-cdn:purpose": "certbot dns-01"},
            # IAM user names are unique: a replacement can only be made once the old user is gone.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.policy_json = pulumi.Output.from_input(args.zone_id).apply(
            lambda zone_id: json.dumps(certbot_policy(zone_id, args.certificate_names), indent=2, sort_keys=True)
        )
        aws.iam.UserPolicy(f"{name}-policy", user=user.name, policy=self.policy_json, opts=child)
        key = aws.iam.AccessKey(
            f"{name}-access-key",
            user=user.name,
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["secret"]),
        )
        self.access_key_id = secret(key.id)
        self.secret_access_key = secret(key.secret)
        self.register_outputs(
            {"user_arn": user.arn, "policy_json": self.policy_json, "access_key_id": self.access_key_id}
        )
