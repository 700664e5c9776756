"""moto's server with Route53's change-batch rules, which moto leaves out.

Route53 validates a ChangeResourceRecordSets batch change by change against the zone as the earlier
changes leave it, and applies all of it or none ("Change batches are considered transactional
changes", API reference, ChangeResourceRecordSets). A CREATE of a name and type that exists is refused
("Tried to create resource record set [name='x.', type='TXT'] but it already exists"), and so is a
DELETE that does not match the current record set exactly ("... but it was not found", "... but the
values provided do not match the current values"), each as InvalidChangeBatch.

moto 5.2.5 (moto/route53/models.py, Route53Backend.change_resource_record_sets) checks a DELETE against
its journal of every change the zone ever had, not against the zone: a DELETE of values the record held
before passes, and then removes every record set of that name and type whatever they hold. A CREATE
adds a second record set beside an existing one unless the very same change is in the journal, and then
refuses it even when a DELETE earlier in the batch removed the record. So two writers that read the same
record set would both succeed, the second silently dropping the first's value: the lost update the ACME
hook's compare-and-swap exists to detect would pass unseen. `install()` replaces the method with
Route53's rules, under one lock so concurrent requests (the server is threaded) see batches whole.

`python -m labs.moto_route53 [moto.server arguments]` runs moto's server with them installed.
"""

from __future__ import annotations

import copy
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

from moto.moto_api._internal.recorder.models import Recorder
from moto.route53.exceptions import DnsNameInvalidForZone, InvalidActionValue, Route53ClientError
from moto.route53.models import FakeZone, RecordSet, Route53Backend

_LOCK: Final = threading.Lock()
EXISTS: Final = "but it already exists"
MISSING: Final = "but it was not found"
MISMATCH: Final = "but the values provided do not match the current values"
# The routing fields that, with TTL and values, make a record set what it is.
_ROUTING_FIELDS: Final = (
    ("Weight", "weight"),
    ("Region", "region"),
    ("Failover", "failover"),
    ("HealthCheckId", "health_check_id"),
    ("GeoLocation", "geo_location"),
    ("MultiValueAnswer", "multi_value_answer"),
    ("AliasTarget", "alias_target"),
)

RecordKey = tuple[str, str, str]


class InvalidChangeBatchError(Route53ClientError):
    def __init__(self, message: str) -> None:
        super().__init__("InvalidChangeBatch", message)


def _normalized(name: str) -> str:
    return name.lower().rstrip(".")


def _key(name: str, record_type: str, set_identifier: object) -> RecordKey:
    return _normalized(name), record_type, str(set_identifier or "")


def _described(record_set: Mapping[str, Any]) -> str:
    return f"[name='{_normalized(record_set['Name'])}.', type='{record_set['Type']}']"


def _values(record_set: Mapping[str, Any]) -> list[str]:
    return [str(item["Value"]) for item in record_set.get("ResourceRecords") or []]


def _ttl(value: object) -> int | None:
    return None if value is None else int(str(value))


def _matches(existing: RecordSet, requested: Mapping[str, Any]) -> bool:
    """A DELETE's record set is the current one: same TTL, same values (in any order), same routing."""
    if _ttl(requested.get("TTL")) != _ttl(existing.ttl):
        return False
    if sorted(_values(requested)) != sorted(str(value) for value in existing.records or []):
        return False
    return all(requested.get(field) == getattr(existing, attribute) for field, attribute in _ROUTING_FIELDS)


def _stored(record_set: Mapping[str, Any]) -> RecordSet:
    """A record set as moto keeps it: trailing dot on the name, values as plain strings."""
    stored = copy.deepcopy(dict(record_set))
    stored["Name"] = _normalized(stored["Name"]) + "."
    if "ResourceRecords" in stored:
        stored["ResourceRecords"] = _values(record_set)
    return RecordSet(stored)  # type: ignore[abstract]  # moto builds its own the same way (FakeZone.add_rrset)


def apply_changes(zone: FakeZone, changes: Sequence[Mapping[str, Any]]) -> None:
    """Validate `changes` one by one against the zone as the earlier ones leave it, then apply them all."""
    working: dict[RecordKey, RecordSet] = {_key(r.name, str(r.type), r.set_identifier): r for r in zone.rrsets}
    zone_name = _normalized(zone.name)
    for change in changes:
        action = change.get("Action")
        record_set = change["ResourceRecordSet"]
        name = _normalized(record_set["Name"])
        if action not in ("CREATE", "DELETE", "UPSERT"):
            raise InvalidActionValue(str(action))
        if name != zone_name and not name.endswith("." + zone_name):
            raise DnsNameInvalidForZone(name=record_set["Name"], zone_name=zone.name)
        key = _key(name, record_set["Type"], record_set.get("SetIdentifier"))
        existing = working.get(key)
        if action == "CREATE" and existing is not None:
            raise InvalidChangeBatchError(
                f"Tried to create resource record set {_described(record_set)} but it already exists"
            )
        if action == "DELETE":
            if existing is None:
                raise InvalidChangeBatchError(
                    f"Tried to delete resource record set {_described(record_set)} but it was not found"
                )
            if not _matches(existing, record_set):
                raise InvalidChangeBatchError(
                    f"Tried to delete resource record set {_described(record_set)} {MISMATCH}"
                )
            del working[key]
        else:
            working[key] = _stored(record_set)
    zone.rrsets = list(working.values())
    for change in changes:
        zone.rr_changes.append(copy.deepcopy(dict(change)))


def change_resource_record_sets(self: Route53Backend, zoneid: str, change_list: list[dict[str, Any]]) -> None:
    """Route53Backend.change_resource_record_sets with Route53's rules."""
    zone = self.get_hosted_zone(zoneid)
    with _LOCK:
        apply_changes(zone, change_list)


def _locked_record_request(original: Any) -> Any:
    lock = threading.Lock()

    def record(self: Recorder, *args: Any, **kwargs: Any) -> None:
        # One request is appended in more than one write; concurrent requests must not interleave them.
        with lock:
            original(self, *args, **kwargs)

    return record


def install() -> None:
    """Route53's rules in place of moto's, in this process (the server, or a test's in-process moto)."""
    Route53Backend.change_resource_record_sets = change_resource_record_sets  # type: ignore[method-assign]
    Recorder._record_request = _locked_record_request(Recorder._record_request)  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> None:
    from moto.server import main as moto_server

    install()
    moto_server(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
