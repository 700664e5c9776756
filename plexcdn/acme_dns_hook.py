#!/opt/certbot/bin/python3 -I
"""certbot's DNS-01 hooks for Route53 on a host that shares challenge records with other hosts.

One file, standard library and boto3 (certbot's venv has it through certbot-dns-route53): it is copied
onto each POP and certbot runs it as

  plexcdn-acme-dns-hook auth       --manual-auth-hook: adds $CERTBOT_VALIDATION to the TXT record
                                   _acme-challenge.$CERTBOT_DOMAIN, waits until Route53 serves it
  plexcdn-acme-dns-hook cleanup    --manual-cleanup-hook: removes that value again
  plexcdn-acme-dns-hook check NAME[,NAME...]
                                   finds the hosted zone of each name's challenge record and reads it:
                                   exit 0 when certbot could run, 1 (with the reason) when not

Every POP's certificate carries the shared name, and all POPs boot (and may renew) at once. certbot's
Route53 plugin UPSERTs the record with its own process's values only, so one POP's write removes
another's value while Let's Encrypt is still looking for it. Here each host adds its value to whatever
the record holds and removes only its own. Route53 applies a change batch atomically, and a DELETE in it
must match the record set exactly, so DELETE(set as read) + CREATE(set with the change) is a
compare-and-swap; when there is no record yet, CREATE alone fails if someone else created it meanwhile.
A refused swap means another host wrote first: read again and retry, after a random pause that grows
with each attempt so hosts that collided do not collide again in step. The number of attempts is bounded.

Credentials come from boto3's usual places. Keys missing from the environment that start with AWS_
(above all AWS_SHARED_CREDENTIALS_FILE) are taken from $PLEXCDN_CERTBOT_ENV (default
/etc/plex-cdn/certbot.env), the file the issuing script and the renewal service read, so a `certbot
renew` run by hand finds the same credentials as the service.

Exit status: 0 when the record holds (auth) or no longer holds (cleanup) this host's value, 1 otherwise.
certbot does not stop when an auth hook fails; it asks the CA to validate anyway, which fails.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

CHALLENGE_PREFIX: Final = "_acme-challenge."
# certbot's Route53 plugin uses the same: resolvers forget a stale answer quickly.
CHALLENGE_TTL: Final = 10
MAX_ATTEMPTS: Final = 10
BACKOFF_BASE_SECONDS: Final = 0.5
BACKOFF_CAP_SECONDS: Final = 20.0
# As the plugin polls: GetChange every 5 s, for up to 10 minutes.
CHANGE_POLL_SECONDS: Final = 5.0
CHANGE_POLLS: Final = 120
DEFAULT_ENV_FILE: Final = "/etc/plex-cdn/certbot.env"
ENV_FILE_VARIABLE: Final = "PLEXCDN_CERTBOT_ENV"
# Route53's InvalidChangeBatch messages for a batch written against a record set that has since changed.
LOST_RACE_MESSAGES: Final = ("but it already exists", "but it was not found", "do not match the current values")
# Route53 answers these while it is busy; boto3 retries them a few times, this adds patience.
BUSY_CODES: Final = ("PriorRequestNotComplete", "Throttling")


class HookError(Exception):
    """What went wrong, in words for the certbot log."""


@dataclass(frozen=True)
class TxtRecord:
    ttl: int
    values: tuple[str, ...]  # as Route53 holds them: each a quoted character-string


def challenge_name(domain: str) -> str:
    return CHALLENGE_PREFIX + domain.lower().rstrip(".")


def quoted(validation: str) -> str:
    return f'"{validation}"'


def _same_name(a: str, b: str) -> bool:
    return a.lower().rstrip(".") == b.lower().rstrip(".")


def load_env_file(path: str, environ: MutableMapping[str, str]) -> None:
    """Set the AWS_ settings of an EnvironmentFile= style file that `environ` lacks."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return
    for raw in lines:
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key.startswith("AWS_"):
            environ.setdefault(key, value)


def _error_code(error: Exception) -> tuple[str, str]:
    response = getattr(error, "response", None)
    if not isinstance(response, Mapping):
        return "", str(error)
    details = response.get("Error", {})
    return str(details.get("Code", "")), str(details.get("Message", ""))


def _is_lost_race(error: Exception) -> bool:
    code, message = _error_code(error)
    if code in BUSY_CODES:
        return True
    return code == "InvalidChangeBatch" and any(text in message for text in LOST_RACE_MESSAGES)


def find_zone(route53: Any, name: str) -> str:
    """The public hosted zone whose name is the longest suffix of `name` (as certbot's plugin chooses)."""
    labels = name.lower().rstrip(".").split(".")
    found: list[tuple[int, str]] = []
    for page in route53.get_paginator("list_hosted_zones").paginate():
        for zone in page["HostedZones"]:
            if zone.get("Config", {}).get("PrivateZone"):
                continue
            zone_labels = zone["Name"].lower().rstrip(".").split(".")
            if labels[-len(zone_labels) :] == zone_labels:
                found.append((len(zone_labels), str(zone["Id"])))
    if not found:
        raise HookError(f"no Route53 hosted zone holds {name} (ListHostedZones lists no zone it belongs to)")
    return max(found)[1].removeprefix("/hostedzone/")


def read_record(route53: Any, zone_id: str, name: str) -> TxtRecord | None:
    response = route53.list_resource_record_sets(
        HostedZoneId=zone_id, StartRecordName=name, StartRecordType="TXT", MaxItems="1"
    )
    for record in response["ResourceRecordSets"]:
        if _same_name(record["Name"], name) and record["Type"] == "TXT" and "SetIdentifier" not in record:
            return TxtRecord(int(record["TTL"]), tuple(item["Value"] for item in record.get("ResourceRecords", [])))
    return None


def swap_changes(name: str, current: TxtRecord | None, values: Sequence[str]) -> list[dict[str, Any]]:
    """The batch that turns `current` into a record holding `values` (none: no record), or fails if it changed."""
    changes: list[dict[str, Any]] = []
    if current is not None:
        changes.append({"Action": "DELETE", "ResourceRecordSet": _record_set(name, current.ttl, current.values)})
    if values:
        changes.append({"Action": "CREATE", "ResourceRecordSet": _record_set(name, CHALLENGE_TTL, values)})
    return changes


def _record_set(name: str, ttl: int, values: Sequence[str]) -> dict[str, Any]:
    return {"Name": name, "Type": "TXT", "TTL": ttl, "ResourceRecords": [{"Value": value} for value in values]}


@dataclass
class Route53Record:
    """One TXT record that several hosts add values to and remove values from."""

    route53: Any
    zone_id: str
    name: str
    sleep: Callable[[float], None] = time.sleep
    uniform: Callable[[float, float], float] = random.SystemRandom().uniform
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)

    def add(self, value: str) -> str | None:
        """Add `value`; the change id to wait for, or None when the record already held it."""
        return self._update(lambda values: values if value in values else (*values, value), "add")

    def remove(self, value: str) -> str | None:
        return self._update(lambda values: tuple(item for item in values if item != value), "remove")

    def _update(self, edit: Callable[[tuple[str, ...]], tuple[str, ...]], verb: str) -> str | None:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            current = read_record(self.route53, self.zone_id, self.name)
            values = current.values if current is not None else ()
            wanted = edit(values)
            if wanted == values:
                return None
            try:
                response = self.route53.change_resource_record_sets(
                    HostedZoneId=self.zone_id,
                    ChangeBatch={
                        "Comment": f"plex-cdn ACME challenge: {verb} one value",
                        "Changes": swap_changes(self.name, current, wanted),
                    },
                )
            except Exception as error:
                if not _is_lost_race(error):
                    raise
                code, message = _error_code(error)
                if attempt == MAX_ATTEMPTS:
                    raise HookError(
                        f"{self.name} kept changing under this host: {MAX_ATTEMPTS} attempts to {verb} its value "
                        f"were refused, the last with {code}: {message}"
                    ) from error
                delay = self.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))
                self.log(
                    f"plex-cdn: {self.name} changed while this host wrote it ({code}: {message}); reading it again "
                    f"in {delay:.2f} s (attempt {attempt} of {MAX_ATTEMPTS})"
                )
                self.sleep(delay)
                continue
            return str(response["ChangeInfo"]["Id"])
        raise AssertionError("unreachable: the last attempt returns or raises")

    def wait_in_sync(self, change_id: str) -> None:
        """Until Route53 reports the change on all its name servers (GetChange INSYNC), as the plugin waits."""
        status = ""
        for poll in range(CHANGE_POLLS):
            status = str(self.route53.get_change(Id=change_id)["ChangeInfo"]["Status"])
            if status == "INSYNC":
                return
            if poll + 1 < CHANGE_POLLS:
                self.sleep(CHANGE_POLL_SECONDS)
        raise HookError(
            f"Route53 change {change_id} for {self.name} is still {status} after "
            f"{CHANGE_POLLS * CHANGE_POLL_SECONDS:.0f} s"
        )


def route53_client() -> Any:
    import boto3

    return boto3.client("route53")


def _require(environ: Mapping[str, str], key: str) -> str:
    value = environ.get(key, "")
    if not value:
        raise HookError(f"${key} is not set: certbot sets it for --manual-auth-hook and --manual-cleanup-hook")
    return value


def run(command: str, arguments: Sequence[str], environ: MutableMapping[str, str], route53: Any = None) -> str:
    """Carry out one command; the line to print on success."""
    load_env_file(environ.get(ENV_FILE_VARIABLE, DEFAULT_ENV_FILE), environ)
    if route53 is None:
        route53 = route53_client()
    if command == "check":
        if len(arguments) != 1:
            raise HookError("check takes the certificate's names, comma-separated")
        names = [challenge_name(domain) for domain in arguments[0].split(",") if domain.strip()]
        for name in names:
            zone_id = find_zone(route53, name)
            read_record(route53, zone_id, name)
        return f"plex-cdn: Route53 holds and lets this host read {', '.join(names)}"
    if command not in ("auth", "cleanup") or arguments:
        raise HookError(f"unknown command {' '.join([command, *arguments])!r}; use auth, cleanup or check NAMES")
    name = challenge_name(_require(environ, "CERTBOT_DOMAIN"))
    value = quoted(_require(environ, "CERTBOT_VALIDATION"))
    record = Route53Record(route53, find_zone(route53, name), name)
    if command == "auth":
        change = record.add(value)
        if change is not None:
            record.wait_in_sync(change)
        return f"plex-cdn: {name} holds this host's challenge value and Route53 serves it"
    change = record.remove(value)
    return f"plex-cdn: {name} no longer holds this host's challenge value" + (
        "" if change is not None else " (it was not there)"
    )


def main(argv: Sequence[str] | None = None, environ: MutableMapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    try:
        # boto3 reads os.environ, so the settings taken from the env file go there.
        print(run(args[0], args[1:], os.environ if environ is None else environ), flush=True)
    except HookError as error:
        print(f"plex-cdn: {error}", file=sys.stderr, flush=True)
        return 1
    except Exception as error:  # boto3's errors: credentials, access denied, network
        code, message = _error_code(error)
        described = f"{code}: {message}" if code else f"{type(error).__name__}: {error}"
        print(f"plex-cdn: Route53 refused or could not be reached ({described})", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
