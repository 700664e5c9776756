"""Enough of AWS's IAM policy evaluation to check the certbot policy against the requests certbot makes.

Covers identity policies: Effect Allow/Deny (an explicit Deny wins, no matching Allow is an implicit
deny), Action/NotAction and Resource/NotResource with `*` and `?` wildcards, and the condition operators
StringEquals, StringNotEquals, StringLike, their `ForAllValues:` and `ForAnyValue:` forms, and Null.
A policy that uses anything else raises PolicyError: an evaluator that guessed would let a test pass
that AWS would fail.

`route53_request` turns a Route53 REST call (as recorded from the wire) into the action, resource ARN
and condition keys AWS evaluates for it, so the policy can be judged on what certbot really sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from xml.etree import ElementTree

Decision = Literal["Allow", "ImplicitDeny", "ExplicitDeny"]

ROUTE53_API_PREFIX: Final = "/2013-04-01/"
_ROUTE53_XML_NS: Final = "{https://route53.amazonaws.com/doc/2013-04-01/}"
RECORD_NAMES_KEY: Final = "route53:ChangeResourceRecordSetsNormalizedRecordNames"
RECORD_TYPES_KEY: Final = "route53:ChangeResourceRecordSetsRecordTypes"
ACTIONS_KEY: Final = "route53:ChangeResourceRecordSetsActions"


class PolicyError(ValueError):
    """The policy (or request) uses something this evaluator does not implement."""


@dataclass(frozen=True)
class Request:
    """One API call as IAM sees it: action, the resource it acts on ("*" when the action has none) and
    the condition keys the service supplies, each with its values (multi-valued keys have several)."""

    action: str
    resource: str
    context: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def describe(self) -> str:
        keys = ", ".join(f"{key}={list(values)}" for key, values in sorted(self.context.items()))
        return f"{self.action} on {self.resource}" + (f" with {keys}" if keys else "")


def _as_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, Sequence):
        return [_scalar(item) for item in value]
    return [_scalar(value)]


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    raise PolicyError(f"condition value {value!r} is neither a string, a number nor a boolean")


def _wildcard(pattern: str, case_sensitive: bool) -> re.Pattern[str]:
    body = "".join(".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern)
    return re.compile(f"^{body}$", 0 if case_sensitive else re.IGNORECASE | re.DOTALL)


def _matches_any(patterns: Iterable[str], value: str, case_sensitive: bool) -> bool:
    return any(_wildcard(pattern, case_sensitive).match(value) for pattern in patterns)


def _element_matches(statement: Mapping[str, Any], name: str, value: str, case_sensitive: bool) -> bool:
    positive, negative = statement.get(name), statement.get(f"Not{name}")
    if (positive is None) == (negative is None):
        raise PolicyError(f"a statement needs exactly one of {name} and Not{name}: {statement!r}")
    if positive is not None:
        return _matches_any(_as_list(positive), value, case_sensitive)
    return not _matches_any(_as_list(negative), value, case_sensitive)


def _string_test(operator: str) -> tuple[bool, Any]:
    """(negated, test(policy_value, request_value)) for a string operator."""
    if operator == "StringEquals":
        return False, lambda expected, actual: expected == actual
    if operator == "StringNotEquals":
        return True, lambda expected, actual: expected == actual
    if operator == "StringLike":
        return False, lambda expected, actual: _wildcard(expected, True).match(actual) is not None
    if operator == "StringNotLike":
        return True, lambda expected, actual: _wildcard(expected, True).match(actual) is not None
    raise PolicyError(f"condition operator {operator!r} is not implemented by this evaluator")


def _lookup(context: Mapping[str, tuple[str, ...]], key: str) -> tuple[str, ...] | None:
    # Condition key names are case-insensitive in IAM.
    for name, values in context.items():
        if name.lower() == key.lower():
            return values
    return None


def _condition_holds(operator: str, key: str, expected: list[str], actual: tuple[str, ...] | None) -> bool:
    if operator == "Null":
        if len(expected) != 1 or expected[0] not in ("true", "false"):
            raise PolicyError(f"Null takes 'true' or 'false' for {key}, got {expected!r}")
        absent = actual is None or len(actual) == 0
        return absent == (expected[0] == "true")
    qualifier, _, base = operator.rpartition(":")
    if base.endswith("IfExists"):
        raise PolicyError(f"condition operator {operator!r} (IfExists) is not implemented by this evaluator")
    negated, test = _string_test(base)

    def value_matches(value: str) -> bool:
        hit = any(test(item, value) for item in expected)
        return not hit if negated else hit

    if qualifier == "ForAllValues":
        # True for a missing or empty key: that is what the policy's Null guard is for.
        return actual is None or all(value_matches(value) for value in actual)
    if qualifier == "ForAnyValue":
        return actual is not None and any(value_matches(value) for value in actual)
    if qualifier:
        raise PolicyError(f"condition qualifier {qualifier!r} is not implemented by this evaluator")
    if actual is None or len(actual) == 0:
        return negated
    return any(value_matches(value) for value in actual)


def _conditions_hold(statement: Mapping[str, Any], request: Request) -> bool:
    conditions = statement.get("Condition", {})
    if not isinstance(conditions, Mapping):
        raise PolicyError(f"Condition must be a mapping: {conditions!r}")
    for operator, block in conditions.items():
        if not isinstance(block, Mapping):
            raise PolicyError(f"condition {operator} must map keys to values: {block!r}")
        for key, values in block.items():
            if not _condition_holds(str(operator), str(key), _as_list(values), _lookup(request.context, str(key))):
                return False
    return True


def statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = policy.get("Statement")
    if isinstance(raw, Mapping):
        return [raw]
    if isinstance(raw, list) and all(isinstance(item, Mapping) for item in raw):
        return list(raw)
    raise PolicyError("a policy needs a Statement (a mapping or a list of them)")


def statement_applies(statement: Mapping[str, Any], request: Request) -> bool:
    return (
        _element_matches(statement, "Action", request.action, case_sensitive=False)
        and _element_matches(statement, "Resource", request.resource, case_sensitive=True)
        and _conditions_hold(statement, request)
    )


def evaluate(policy: Mapping[str, Any], request: Request) -> Decision:
    allowed = False
    for statement in statements(policy):
        effect = statement.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise PolicyError(f"Effect must be Allow or Deny, got {effect!r}")
        if statement_applies(statement, request):
            if effect == "Deny":
                return "ExplicitDeny"
            allowed = True
    return "Allow" if allowed else "ImplicitDeny"


def is_allowed(policy: Mapping[str, Any], request: Request) -> bool:
    return evaluate(policy, request) == "Allow"


def zone_arn(zone_id: str) -> str:
    return f"arn:aws:route53:::hostedzone/{zone_id.removeprefix('/hostedzone/')}"


def normalized_record_name(name: str) -> str:
    """Route53's normalization for the record-name condition key: lower case, no trailing dot."""
    return name.lower().rstrip(".")


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def route53_change_request(zone_id: str, changes: Sequence[tuple[str, str, str]]) -> Request:
    """ChangeResourceRecordSets for (action, record name, record type) changes in one batch."""
    return Request(
        "route53:ChangeResourceRecordSets",
        zone_arn(zone_id),
        {
            ACTIONS_KEY: _unique(action for action, _, _ in changes),
            RECORD_NAMES_KEY: _unique(normalized_record_name(name) for _, name, _ in changes),
            RECORD_TYPES_KEY: _unique(record_type for _, _, record_type in changes),
        },
    )


def _changes_in(body: bytes) -> list[tuple[str, str, str]]:
    # The body is one of the lab's own recorded requests, not input from outside.
    root = ElementTree.fromstring(body)  # noqa: S314
    changes = []
    for change in root.iter(f"{_ROUTE53_XML_NS}Change"):
        action = change.findtext(f"{_ROUTE53_XML_NS}Action", "")
        record = change.find(f"{_ROUTE53_XML_NS}ResourceRecordSet")
        if record is None:
            raise PolicyError("a Change without a ResourceRecordSet")
        changes.append(
            (action, record.findtext(f"{_ROUTE53_XML_NS}Name", ""), record.findtext(f"{_ROUTE53_XML_NS}Type", ""))
        )
    if not changes:
        raise PolicyError("a ChangeResourceRecordSets request without changes")
    return changes


_ROUTES: Final[list[tuple[str, re.Pattern[str], str]]] = [
    ("GET", re.compile(r"hostedzone"), "ListHostedZones"),
    ("POST", re.compile(r"hostedzone"), "CreateHostedZone"),
    ("GET", re.compile(r"hostedzonesbyname"), "ListHostedZonesByName"),
    ("GET", re.compile(r"hostedzone/(?P<zone>[^/]+)"), "GetHostedZone"),
    ("DELETE", re.compile(r"hostedzone/(?P<zone>[^/]+)"), "DeleteHostedZone"),
    ("GET", re.compile(r"hostedzone/(?P<zone>[^/]+)/rrset/?"), "ListResourceRecordSets"),
    ("POST", re.compile(r"hostedzone/(?P<zone>[^/]+)/rrset/?"), "ChangeResourceRecordSets"),
    ("GET", re.compile(r"change/(?P<change>[^/]+)"), "GetChange"),
]


def route53_request(method: str, path: str, body: bytes = b"") -> Request:
    """The IAM request for one Route53 REST call; unknown calls raise PolicyError rather than pass unjudged."""
    if not path.startswith(ROUTE53_API_PREFIX):
        raise PolicyError(f"{method} {path} is not a Route53 API call")
    rest = path[len(ROUTE53_API_PREFIX) :]
    for route_method, pattern, action in _ROUTES:
        match = pattern.fullmatch(rest)
        if route_method != method.upper() or match is None:
            continue
        groups = match.groupdict()
        if action == "ChangeResourceRecordSets":
            return route53_change_request(groups["zone"], _changes_in(body))
        if "zone" in groups:
            return Request(f"route53:{action}", zone_arn(groups["zone"]))
        if "change" in groups:
            return Request(f"route53:{action}", f"arn:aws:route53:::change/{groups['change']}")
        return Request(f"route53:{action}", "*")
    raise PolicyError(f"{method} {path} is a Route53 call this evaluator does not know")
