"""The IAM evaluator's rules, the certbot policy judged by it, and the policy linted by parliament."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from parliament import analyze_policy_string

from labs import iam_eval
from labs.iam_eval import PolicyError, Request, evaluate, is_allowed, route53_change_request, route53_request
from plexcdn import iam

ZONE = "Z0LABZONE"
NAMES = ("plex-us.example.com", "plex-asia.example.com", "plex.example.com")


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _change_body(changes: list[tuple[str, str, str]]) -> bytes:
    items = "".join(
        f"<Change><Action>{action}</Action><ResourceRecordSet><Name>{name}</Name><Type>{kind}</Type>"
        f'<TTL>10</TTL><ResourceRecords><ResourceRecord><Value>"v"</Value></ResourceRecord></ResourceRecords>'
        f"</ResourceRecordSet></Change>"
        for action, name, kind in changes
    )
    return (
        '<ChangeResourceRecordSetsRequest xmlns="https://route53.amazonaws.com/doc/2013-04-01/">'
        f"<ChangeBatch><Changes>{items}</Changes></ChangeBatch></ChangeResourceRecordSetsRequest>"
    ).encode()


def test_explicit_deny_beats_allow_and_no_match_is_an_implicit_deny() -> None:
    request = Request("s3:GetObject", "arn:aws:s3:::bucket/key")
    allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    deny = {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bucket/*"}
    assert evaluate(_policy(allow), request) == "Allow"
    assert evaluate(_policy(allow, deny), request) == "ExplicitDeny"
    assert evaluate(_policy({"Effect": "Allow", "Action": "s3:PutObject", "Resource": "*"}), request) == "ImplicitDeny"


def test_actions_match_case_insensitively_and_resources_case_sensitively() -> None:
    statement = {"Effect": "Allow", "Action": "Route53:get*", "Resource": "arn:aws:route53:::change/C?"}
    assert is_allowed(_policy(statement), Request("route53:GetChange", "arn:aws:route53:::change/C1"))
    assert not is_allowed(_policy(statement), Request("route53:GetChange", "arn:aws:route53:::change/C12"))
    assert not is_allowed(_policy(statement), Request("route53:GetChange", "arn:aws:route53:::CHANGE/C1"))
    assert not is_allowed(_policy(statement), Request("route53:GetChange", "*")), "an ARN pattern is not '*'"


def test_not_action_and_not_resource_invert_the_match() -> None:
    statement = {"Effect": "Allow", "NotAction": "iam:*", "NotResource": "arn:aws:s3:::secret/*"}
    assert is_allowed(_policy(statement), Request("s3:GetObject", "arn:aws:s3:::public/a"))
    assert not is_allowed(_policy(statement), Request("iam:CreateUser", "arn:aws:s3:::public/a"))
    assert not is_allowed(_policy(statement), Request("s3:GetObject", "arn:aws:s3:::secret/a"))


def test_for_all_values_holds_for_a_missing_key_so_only_null_refuses_it() -> None:
    condition = {"ForAllValues:StringEquals": {"k": ["a", "b"]}}
    statement = {"Effect": "Allow", "Action": "x:Y", "Resource": "*", "Condition": condition}
    assert is_allowed(_policy(statement), Request("x:Y", "*", {"k": ("a", "b")}))
    assert not is_allowed(_policy(statement), Request("x:Y", "*", {"k": ("a", "c")}))
    assert is_allowed(_policy(statement), Request("x:Y", "*")), "ForAllValues over nothing is true"
    guarded = {**statement, "Condition": {**condition, "Null": {"k": "false"}}}
    assert not is_allowed(_policy(guarded), Request("x:Y", "*"))
    assert is_allowed(_policy(guarded), Request("x:Y", "*", {"K": ("b",)})), "condition keys are case-insensitive"


def test_for_any_value_string_like_and_negated_operators() -> None:
    def allowed(condition: dict[str, Any], context: dict[str, tuple[str, ...]]) -> bool:
        statement = {"Effect": "Allow", "Action": "x:Y", "Resource": "*", "Condition": condition}
        return is_allowed(_policy(statement), Request("x:Y", "*", context))

    assert allowed({"ForAnyValue:StringEquals": {"k": "a"}}, {"k": ("z", "a")})
    assert not allowed({"ForAnyValue:StringEquals": {"k": "a"}}, {})
    assert allowed({"StringLike": {"k": "_acme-*"}}, {"k": ("_acme-challenge.x",)})
    assert not allowed({"StringLike": {"k": "_acme-*"}}, {"k": ("www.x",)})
    assert allowed({"StringNotEquals": {"k": "a"}}, {"k": ("b",)})
    assert allowed({"StringNotEquals": {"k": "a"}}, {}), "a negated operator holds for a missing key"
    assert allowed({"Null": {"k": "true"}}, {})
    assert not allowed({"Null": {"k": "true"}}, {"k": ("a",)})


@pytest.mark.parametrize(
    "condition",
    [{"NumericEquals": {"k": "1"}}, {"StringEqualsIfExists": {"k": "a"}}, {"ForSomeValues:StringEquals": {"k": "a"}}],
)
def test_operators_it_does_not_know_raise_instead_of_guessing(condition: dict[str, Any]) -> None:
    statement = {"Effect": "Allow", "Action": "x:Y", "Resource": "*", "Condition": condition}
    with pytest.raises(PolicyError):
        evaluate(_policy(statement), Request("x:Y", "*", {"k": ("a",)}))


def test_route53_calls_map_to_their_iam_action_and_resource() -> None:
    assert route53_request("GET", "/2013-04-01/hostedzone") == Request("route53:ListHostedZones", "*")
    assert route53_request("GET", f"/2013-04-01/hostedzone/{ZONE}/rrset") == Request(
        "route53:ListResourceRecordSets", f"arn:aws:route53:::hostedzone/{ZONE}"
    )
    assert route53_request("GET", "/2013-04-01/change/C123") == Request(
        "route53:GetChange", "arn:aws:route53:::change/C123"
    )
    change = route53_request(
        "POST",
        f"/2013-04-01/hostedzone/{ZONE}/rrset/",
        _change_body([("UPSERT", "_acme-challenge.Plex.example.com.", "TXT"), ("DELETE", "x.example.com", "A")]),
    )
    assert change.action == "route53:ChangeResourceRecordSets"
    assert change.resource == f"arn:aws:route53:::hostedzone/{ZONE}"
    assert change.context == {
        iam_eval.ACTIONS_KEY: ("UPSERT", "DELETE"),
        iam_eval.RECORD_NAMES_KEY: ("_acme-challenge.plex.example.com", "x.example.com"),
        iam_eval.RECORD_TYPES_KEY: ("TXT", "A"),
    }
    with pytest.raises(PolicyError):
        route53_request("GET", "/2013-04-01/healthcheck")


def test_certbot_policy_allows_the_calls_the_dns_hook_makes_for_every_name() -> None:
    policy = iam.certbot_policy(ZONE, NAMES)
    assert is_allowed(policy, route53_request("GET", "/2013-04-01/hostedzone"))
    assert is_allowed(policy, route53_request("GET", f"/2013-04-01/hostedzone/{ZONE}/rrset"))
    assert is_allowed(policy, route53_request("GET", "/2013-04-01/change/C2682N5HXP0BZ4"))
    for name in NAMES:
        record = f"_acme-challenge.{name}"
        # The first value in (CREATE), one more or one fewer (DELETE as read + CREATE), the last out (DELETE).
        for changes in ([("CREATE", record, "TXT")], [("DELETE", record, "TXT"), ("CREATE", record, "TXT")]):
            body = _change_body(changes)
            assert is_allowed(policy, route53_request("POST", f"/2013-04-01/hostedzone/{ZONE}/rrset/", body))
        body = _change_body([("DELETE", record, "TXT")])
        assert is_allowed(policy, route53_request("POST", f"/2013-04-01/hostedzone/{ZONE}/rrset/", body))


def test_certbot_policy_allows_nothing_beyond_the_swap_of_challenge_records() -> None:
    policy = iam.certbot_policy(ZONE, NAMES)
    record = "_acme-challenge.plex.example.com"
    refused = {
        "UPSERT, which overwrites other POPs' values": [("UPSERT", record, "TXT")],
        "a swap that also creates another name": [("DELETE", record, "TXT"), ("CREATE", "plex.example.com", "TXT")],
        "a swap that also deletes another type": [("DELETE", record, "A"), ("CREATE", record, "TXT")],
        "a challenge record of a name not on any certificate": [("CREATE", "_acme-challenge.www.example.com", "TXT")],
    }
    for label, changes in refused.items():
        assert not is_allowed(policy, route53_change_request(ZONE, changes)), label
    assert not is_allowed(policy, route53_change_request("Z0OTHERZONE", [("CREATE", record, "TXT")]))
    assert not is_allowed(policy, route53_request("GET", "/2013-04-01/hostedzone/Z0OTHERZONE/rrset"))
    for call in (("DELETE", f"/2013-04-01/hostedzone/{ZONE}"), ("POST", "/2013-04-01/hostedzone")):
        assert not is_allowed(policy, route53_request(*call))


@given(
    name=st.from_regex(r"[a-z0-9_-]{1,20}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True),
    record_type=st.sampled_from(["TXT", "A", "AAAA", "CNAME", "NS", "CAA"]),
    action=st.sampled_from(["CREATE", "UPSERT", "DELETE"]),
    zone=st.sampled_from([ZONE, "Z0OTHERZONE"]),
)
@example(name="_acme-challenge.plex.example.com", record_type="TXT", action="CREATE", zone=ZONE)
@example(name="_acme-challenge.plex.example.com", record_type="TXT", action="UPSERT", zone=ZONE)
@example(name="_acme-challenge.plex.example.com", record_type="TXT", action="CREATE", zone="Z0OTHERZONE")
@example(name="_acme-challenge.plex-us.example.com", record_type="CAA", action="DELETE", zone=ZONE)
@example(name="_acme-challenge.plex-eu.example.com", record_type="TXT", action="CREATE", zone=ZONE)
def test_certbot_policy_allows_a_change_only_for_a_challenge_txt_record_in_the_zone(
    name: str, record_type: str, action: str, zone: str
) -> None:
    policy = iam.certbot_policy(ZONE, NAMES)
    request = route53_change_request(zone, [(action, name, record_type)])
    expected = (
        zone == ZONE
        and record_type == "TXT"
        and action in ("CREATE", "DELETE")
        and name in {f"_acme-challenge.{n}" for n in NAMES}
    )
    assert is_allowed(policy, request) == expected


def test_certbot_policy_passes_parliament_without_findings() -> None:
    findings = analyze_policy_string(json.dumps(iam.certbot_policy(ZONE, NAMES))).findings
    assert [(finding.issue, finding.detail) for finding in findings] == []


def test_parliament_would_flag_a_policy_that_let_certbot_write_anything() -> None:
    loose = _policy(
        {"Effect": "Allow", "Action": ["route53:ChangeResourceRecordSets", "route53:GetChange"], "Resource": "*"}
    )
    assert analyze_policy_string(json.dumps(loose)).findings
