"""The certbot IAM user's policy, built as plain data so it is tested and evaluated as exactly what AWS gets.

certbot's DNS hook (plexcdn/acme_dns_hook.py) lists hosted zones to find the zone, reads the challenge
record (ListResourceRecordSets, which has no condition keys and so reads the whole zone), changes it
with ChangeResourceRecordSets and polls GetChange. Several POPs share the shared name's record, so each
change is a compare-and-swap: DELETE of the record as read and CREATE of the new one, or CREATE alone
when there is none; UPSERT, which overwrites whatever another POP wrote, is not allowed. The write is
narrowed by Route53's condition keys to TXT records named `_acme-challenge.<certificate name>` in the
one zone; the `Null` guard refuses a request that would carry none of those keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CHALLENGE_PREFIX = "_acme-challenge."
RECORD_NAMES_KEY = "route53:ChangeResourceRecordSetsNormalizedRecordNames"
RECORD_TYPES_KEY = "route53:ChangeResourceRecordSetsRecordTypes"
ACTIONS_KEY = "route53:ChangeResourceRecordSetsActions"


def challenge_record_names(certificate_names: Sequence[str]) -> list[str]:
    """Route53 compares normalized names: lower case, no trailing dot."""
    return sorted({CHALLENGE_PREFIX + name.lower().rstrip(".") for name in certificate_names})


def certbot_policy(zone_id: str, certificate_names: Sequence[str]) -> dict[str, Any]:
    zone_arn = f"arn:aws:route53:::hostedzone/{zone_id.removeprefix('/hostedzone/')}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "FindZone",
                "Effect": "Allow",
                "Action": ["route53:ListHostedZones"],
                "Resource": "*",
            },
            {
                "Sid": "ReadTheZone",
                "Effect": "Allow",
                "Action": ["route53:ListResourceRecordSets"],
                "Resource": zone_arn,
            },
            {
                "Sid": "WriteOnlyAcmeChallengeTxtRecords",
                "Effect": "Allow",
                "Action": ["route53:ChangeResourceRecordSets"],
                "Resource": zone_arn,
                "Condition": {
                    "ForAllValues:StringEquals": {
                        RECORD_NAMES_KEY: challenge_record_names(certificate_names),
                        RECORD_TYPES_KEY: ["TXT"],
                        ACTIONS_KEY: ["CREATE", "DELETE"],
                    },
                    "Null": {RECORD_NAMES_KEY: "false", RECORD_TYPES_KEY: "false", ACTIONS_KEY: "false"},
                },
            },
            {
                # GetChange takes a change ARN; "*" here would be wider than the action needs.
                "Sid": "WaitForChanges",
                "Effect": "Allow",
                "Action": ["route53:GetChange"],
                "Resource": "arn:aws:route53:::change/*",
            },
        ],
    }
