"""The providers' APIs as the preflight needs them: read-only calls through each provider's official Python
client, answered as plain frozen facts.

Nothing here decides what is wrong; `plexcdn.preflight` does, from these facts. Every client takes the base
URL it talks to, so tests point them at servers on 127.0.0.1 (pydo's `endpoint`, linode_api4's `base_url`,
boto3's `endpoint_url`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import boto3
import linode_api4
import pydo
from azure.core.exceptions import AzureError, HttpResponseError
from botocore.exceptions import BotoCoreError, ClientError

DIGITALOCEAN_API: Final = "https://api.digitalocean.com"
LINODE_API: Final = "https://api.linode.com/v4"
# Where each client sends its requests instead, for tests and API proxies.
DIGITALOCEAN_API_ENV: Final = "PLEXCDN_DIGITALOCEAN_API"
LINODE_API_ENV: Final = "PLEXCDN_LINODE_API"
# The variables the Pulumi providers read too.
DIGITALOCEAN_TOKEN_ENVS: Final = ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN")
LINODE_TOKEN_ENV: Final = "LINODE_TOKEN"  # noqa: S105 - the variable's name
# Route53 and IAM are global; their API lives in us-east-1.
AWS_API_REGION: Final = "us-east-1"

PAGE_SIZE: Final = 200
MAX_PAGES: Final = 100
MAX_RECORD_SETS: Final = 100_000

# The read-only AWS calls the preflight makes, and the ones `pulumi preview` adds (the program's lookup of the
# zone by name); `aws_read_policy` allows exactly these.
PREFLIGHT_AWS_ACTIONS: Final = (
    "route53:ListHostedZonesByName",
    "route53:ListResourceRecordSets",
    "iam:GetUser",
    "iam:ListUserTags",
    "iam:GetAccountSummary",
)
PREVIEW_AWS_ACTIONS: Final = ("route53:ListHostedZones", "route53:GetHostedZone", "route53:ListTagsForResource")


def aws_read_policy() -> dict[str, Any]:
    """The IAM policy for read-only credentials: enough for preflight and for a preview, nothing that writes."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "FindTheZone",
                "Effect": "Allow",
                "Action": ["route53:ListHostedZones", "route53:ListHostedZonesByName"],
                "Resource": "*",
            },
            {
                "Sid": "ReadTheZone",
                "Effect": "Allow",
                "Action": ["route53:GetHostedZone", "route53:ListResourceRecordSets", "route53:ListTagsForResource"],
                "Resource": "arn:aws:route53:::hostedzone/*",
            },
            {
                "Sid": "ReadTheCertbotUser",
                "Effect": "Allow",
                "Action": ["iam:GetUser", "iam:ListUserTags"],
                "Resource": "arn:aws:iam::*:user/*plex-cdn-*-certbot",
            },
            {"Sid": "ReadTheUserQuota", "Effect": "Allow", "Action": ["iam:GetAccountSummary"], "Resource": "*"},
        ],
    }


class ProviderError(Exception):
    """A provider refused or failed a call the preflight cannot do without."""

    def __init__(self, credential: str, message: str) -> None:
        self.credential = credential
        self.message = message
        super().__init__(f"{credential}: {message}")


@dataclass(frozen=True)
class Vm:
    """A VM that already exists in the account, as the preflight compares it with the stack's."""

    label: str
    region: str
    addresses: frozenset[str]
    tags: frozenset[str] = frozenset()


# --- DigitalOcean -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoRegion:
    slug: str
    name: str
    available: bool
    features: frozenset[str]
    sizes: frozenset[str]


@dataclass(frozen=True)
class DoSize:
    slug: str
    available: bool
    regions: frozenset[str]
    memory_mb: int
    price_monthly: float


@dataclass(frozen=True)
class DoImage:
    slug: str
    name: str
    distribution: str
    status: str
    regions: frozenset[str]


@dataclass(frozen=True)
class DoAccount:
    droplet_limit: int
    status: str
    status_message: str
    email_verified: bool


@dataclass(frozen=True)
class DigitalOceanFacts:
    account: DoAccount
    regions: Mapping[str, DoRegion]
    sizes: Mapping[str, DoSize]
    images: Mapping[str, DoImage]  # the distribution images, by slug
    droplets: tuple[Vm, ...]  # GPU Droplets are listed apart (type=gpus) and not among them


def _do_error(error: AzureError, what: str) -> ProviderError:
    credential = DIGITALOCEAN_TOKEN_ENVS[0]
    if isinstance(error, HttpResponseError) and error.status_code is not None:
        detail = ""
        if error.response is not None:
            try:
                body = json.loads(error.response.text())
                detail = f": {body.get('message') or body.get('id')}"
            except (ValueError, AttributeError):
                detail = ""
        if error.status_code in (401, 403):
            return ProviderError(
                credential,
                f"DigitalOcean refused the token for {what} ({error.status_code}{detail}); it needs read access "
                "to account, droplet, image, regions and sizes",
            )
        return ProviderError(credential, f"DigitalOcean answered {error.status_code}{detail} for {what}")
    return ProviderError(credential, f"DigitalOcean's API could not be reached for {what} ({error})")


class DigitalOceanApi:
    def __init__(self, token: str, endpoint: str = DIGITALOCEAN_API) -> None:
        # Few retries: a preflight that waits minutes for an unreachable API helps nobody.
        self._client = pydo.Client(token, endpoint=endpoint.rstrip("/"), retry_total=1, timeout=60)

    def _pages(self, what: str, key: str, call: Callable[..., Any], **query: Any) -> Iterator[dict[str, Any]]:
        for page in range(1, MAX_PAGES + 1):
            try:
                body = call(per_page=PAGE_SIZE, page=page, **query)
            except AzureError as error:
                raise _do_error(error, what) from error
            yield from body.get(key) or []
            if not ((body.get("links") or {}).get("pages") or {}).get("next"):
                return

    def facts(self) -> DigitalOceanFacts:
        try:
            account = self._client.account.get()["account"]
        except AzureError as error:
            raise _do_error(error, "the account (GET /v2/account)") from error
        client = self._client
        regions = {
            region["slug"]: DoRegion(
                region["slug"],
                region.get("name", region["slug"]),
                bool(region.get("available")),
                frozenset(region.get("features") or ()),
                frozenset(region.get("sizes") or ()),
            )
            for region in self._pages("regions (GET /v2/regions)", "regions", client.regions.list)
        }
        sizes = {
            size["slug"]: DoSize(
                size["slug"],
                bool(size.get("available", True)),
                frozenset(size.get("regions") or ()),
                int(size.get("memory", 0)),
                float(size.get("price_monthly", 0.0)),
            )
            for size in self._pages("sizes (GET /v2/sizes)", "sizes", client.sizes.list)
        }
        images = {
            image["slug"]: DoImage(
                image["slug"],
                image.get("name", ""),
                image.get("distribution", ""),
                image.get("status", ""),
                frozenset(image.get("regions") or ()),
            )
            for image in self._pages(
                "images (GET /v2/images?type=distribution)", "images", client.images.list, type="distribution"
            )
            if image.get("slug")
        }
        droplets = tuple(
            Vm(
                droplet.get("name", ""),
                (droplet.get("region") or {}).get("slug", ""),
                frozenset(
                    network["ip_address"]
                    for family in ("v4", "v6")
                    for network in (droplet.get("networks") or {}).get(family) or ()
                    if network.get("type") == "public"
                ),
                frozenset(droplet.get("tags") or ()),
            )
            for droplet in self._pages("Droplets (GET /v2/droplets)", "droplets", client.droplets.list)
        )
        return DigitalOceanFacts(
            DoAccount(
                int(account.get("droplet_limit", 0)),
                account.get("status", ""),
                account.get("status_message", ""),
                bool(account.get("email_verified", False)),
            ),
            regions,
            sizes,
            images,
            droplets,
        )


# --- Linode ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinodeRegion:
    id: str
    label: str
    status: str
    capabilities: frozenset[str]


@dataclass(frozen=True)
class LinodeType:
    id: str
    label: str
    successor: str | None


@dataclass(frozen=True)
class LinodeImage:
    id: str
    label: str
    status: str
    deprecated: bool
    eol: str | None
    capabilities: frozenset[str]


@dataclass(frozen=True)
class LinodeFacts:
    regions: Mapping[str, LinodeRegion]
    types: Mapping[str, LinodeType]
    images: Mapping[str, LinodeImage | None]  # None: the API has no such image
    # (region, plan) -> available, for the plans Linode reports on (premium and GPU plans today)
    plan_availability: Mapping[tuple[str, str], bool]
    instances: tuple[Vm, ...]
    # region -> services this account may not use there; None when the token may not read the account
    account_unavailable: Mapping[str, frozenset[str]] | None = None
    gaps: tuple[str, ...] = field(default=())


def _linode_error(error: Exception, what: str) -> ProviderError:
    if isinstance(error, linode_api4.ApiError):
        reasons = "; ".join(getattr(error, "errors", []) or []) or str(error)
        if error.status in (401, 403):
            return ProviderError(
                LINODE_TOKEN_ENV,
                f"Linode refused the token for {what} ({error.status}: {reasons}); it needs linodes:read_only",
            )
        return ProviderError(LINODE_TOKEN_ENV, f"Linode answered {error.status} for {what}: {reasons}")
    return ProviderError(LINODE_TOKEN_ENV, f"Linode's API could not be reached for {what} ({error})")


def _linode_addresses(ipv4: Iterable[object] | None, ipv6: object) -> frozenset[str]:
    """A Linode's public IPv4 addresses and its SLAAC IPv6 address (given with its /128)."""
    addresses = {str(address) for address in ipv4 or ()}
    if ipv6:
        addresses.add(str(ipv6).split("/")[0])
    return frozenset(addresses)


def _bounded(items: Iterable[Any]) -> list[Any]:
    result = []
    for index, item in enumerate(items):
        if index >= PAGE_SIZE * MAX_PAGES:
            break
        result.append(item)
    return result


class LinodeApi:
    def __init__(self, token: str, base_url: str = LINODE_API) -> None:
        self._client = linode_api4.LinodeClient(
            token, base_url=base_url.rstrip("/"), page_size=PAGE_SIZE, retry_max=1, retry_rate_limit_interval=1.0
        )

    def _list(self, what: str, fetch: Callable[[], Iterable[Any]]) -> list[Any]:
        try:
            return _bounded(fetch())
        except (linode_api4.ApiError, linode_api4.UnexpectedResponseError, OSError) as error:
            raise _linode_error(error, what) from error

    def _image(self, image_id: str) -> LinodeImage | None:
        try:
            image = self._client.load(linode_api4.Image, image_id)
        except linode_api4.ApiError as error:
            if error.status == 404:
                return None
            raise _linode_error(error, f"image {image_id} (GET /images/{image_id})") from error
        except OSError as error:
            raise _linode_error(error, f"image {image_id}") from error
        eol = getattr(image, "eol", None)
        return LinodeImage(
            image.id,
            getattr(image, "label", "") or "",
            getattr(image, "status", "") or "",
            bool(getattr(image, "deprecated", False)),
            eol.date().isoformat() if eol is not None else None,
            frozenset(getattr(image, "capabilities", None) or ()),
        )

    def facts(self, image_ids: Iterable[str]) -> LinodeFacts:
        client = self._client
        regions = {
            region.id: LinodeRegion(
                region.id, region.label or region.id, region.status or "", frozenset(region.capabilities or ())
            )
            for region in self._list("regions (GET /regions)", client.regions)
        }
        types = {
            plan.id: LinodeType(plan.id, plan.label or plan.id, getattr(plan, "successor", None))
            for plan in self._list("types (GET /linode/types)", client.linode.types)
        }
        images = {image_id: self._image(image_id) for image_id in sorted(set(image_ids))}
        plans = {
            (entry.region, entry.plan): bool(entry.available)
            for entry in self._list("plan availability (GET /regions/availability)", client.regions.availability)
        }
        instances = tuple(
            Vm(
                instance.label,
                instance.region.id,
                _linode_addresses(instance.ipv4, instance.ipv6),
                frozenset(instance.tags or ()),
            )
            for instance in self._list("Linodes (GET /linode/instances)", client.linode.instances)
        )
        gaps: list[str] = []
        unavailable: dict[str, frozenset[str]] | None = None
        try:
            unavailable = {
                entry.region: frozenset(entry.unavailable or ()) for entry in _bounded(client.account.availabilities())
            }
        except linode_api4.ApiError as error:
            if error.status not in (401, 403):
                raise _linode_error(error, "account availability (GET /account/availability)") from error
            gaps.append(
                "linode: which regions this account may create Linodes in (GET /account/availability needs the "
                "account:read_only scope)"
            )
        return LinodeFacts(regions, types, images, plans, instances, unavailable, tuple(gaps))


# --- AWS: Route53 and IAM -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostedZone:
    id: str
    name: str
    private: bool


@dataclass(frozen=True)
class RecordSet:
    name: str  # lower case, no trailing dot
    type: str
    routing: str  # simple, latency, weighted, failover, geolocation, geoproximity, multivalue or cidr
    set_identifier: str | None
    region: str | None  # latency records: the AWS region
    values: tuple[str, ...]  # the records' values, or the alias target's name


@dataclass(frozen=True)
class IamUser:
    name: str
    path: str
    tags: Mapping[str, str]


@dataclass(frozen=True)
class AwsFacts:
    zones: tuple[HostedZone, ...]  # every hosted zone of the domain's name, public or private
    records: tuple[RecordSet, ...]  # the one public zone's records; empty unless exactly one exists
    certbot_user: IamUser | None
    users: int
    users_quota: int


def normalized_name(name: str) -> str:
    """Route53 names come back in lower case with a trailing dot and `*` escaped as \\052."""
    return name.replace("\\052", "*").rstrip(".").lower()


def _routing(record: Mapping[str, Any]) -> str:
    for key, routing in (
        ("Region", "latency"),
        ("Weight", "weighted"),
        ("Failover", "failover"),
        ("GeoLocation", "geolocation"),
        ("GeoProximityLocation", "geoproximity"),
        ("MultiValueAnswer", "multivalue"),
        ("CidrRoutingConfig", "cidr"),
    ):
        if record.get(key) is not None:
            return routing
    return "simple"


def _aws_error(error: Exception, action: str) -> ProviderError:
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
            return ProviderError(
                "AWS credentials",
                f"may not call {action}; give them the read-only policy in docs/ci.md",
            )
        if code in ("InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidAccessKeyId"):
            return ProviderError("AWS credentials", f"were refused ({code}) for {action}")
        return ProviderError("AWS credentials", f"{action} failed: {code} {error}")
    return ProviderError("AWS credentials", f"{action} could not reach AWS ({error})")


class AwsApi:
    def __init__(self, session: boto3.Session, endpoint_url: str | None = None) -> None:
        self._route53 = session.client("route53", region_name=AWS_API_REGION, endpoint_url=endpoint_url)
        self._iam = session.client("iam", region_name=AWS_API_REGION, endpoint_url=endpoint_url)

    def _call(self, action: str, call: Callable[..., Any], **arguments: Any) -> Any:
        try:
            return call(**arguments)
        except (ClientError, BotoCoreError) as error:
            raise _aws_error(error, action) from error

    def zones(self, domain: str) -> tuple[HostedZone, ...]:
        wanted = domain.rstrip(".").lower()
        found: list[HostedZone] = []
        arguments: dict[str, Any] = {"DNSName": wanted + "."}
        for _ in range(MAX_PAGES):
            page = self._call(
                "route53:ListHostedZonesByName", self._route53.list_hosted_zones_by_name, **arguments, MaxItems="100"
            )
            zones = page.get("HostedZones", [])
            for zone in zones:
                if normalized_name(zone["Name"]) == wanted:
                    found.append(
                        HostedZone(
                            zone["Id"].removeprefix("/hostedzone/"),
                            wanted,
                            bool((zone.get("Config") or {}).get("PrivateZone")),
                        )
                    )
            # Zones come sorted by name: once a page ends past ours, none follow.
            past = any(normalized_name(zone["Name"]) != wanted for zone in zones)
            if not page.get("IsTruncated") or past:
                break
            arguments = {"DNSName": page["NextDNSName"], "HostedZoneId": page["NextHostedZoneId"]}
        return tuple(found)

    def record_sets(self, zone_id: str) -> tuple[RecordSet, ...]:
        records: list[RecordSet] = []
        arguments: dict[str, Any] = {"HostedZoneId": zone_id}
        while len(records) < MAX_RECORD_SETS:
            page = self._call("route53:ListResourceRecordSets", self._route53.list_resource_record_sets, **arguments)
            for record in page.get("ResourceRecordSets", []):
                alias = record.get("AliasTarget")
                values = (
                    (normalized_name(alias["DNSName"]),)
                    if alias
                    else tuple(item["Value"] for item in record.get("ResourceRecords", []))
                )
                records.append(
                    RecordSet(
                        normalized_name(record["Name"]),
                        record["Type"],
                        _routing(record),
                        record.get("SetIdentifier"),
                        record.get("Region"),
                        values,
                    )
                )
            if not page.get("IsTruncated"):
                break
            arguments = {
                "HostedZoneId": zone_id,
                "StartRecordName": page["NextRecordName"],
                "StartRecordType": page["NextRecordType"],
            }
            if page.get("NextRecordIdentifier"):
                arguments["StartRecordIdentifier"] = page["NextRecordIdentifier"]
        return tuple(records)

    def iam_user(self, name: str) -> IamUser | None:
        try:
            user = self._iam.get_user(UserName=name)["User"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "NoSuchEntity":
                return None
            raise _aws_error(error, "iam:GetUser") from error
        except BotoCoreError as error:
            raise _aws_error(error, "iam:GetUser") from error
        tags = self._call("iam:ListUserTags", self._iam.list_user_tags, UserName=name).get("Tags", [])
        return IamUser(user["UserName"], user.get("Path", "/"), {tag["Key"]: tag["Value"] for tag in tags})

    def facts(self, domain: str, certbot_user: str) -> AwsFacts:
        zones = self.zones(domain)
        public = [zone for zone in zones if not zone.private]
        records = self.record_sets(public[0].id) if len(public) == 1 else ()
        summary = self._call("iam:GetAccountSummary", self._iam.get_account_summary)["SummaryMap"]
        return AwsFacts(
            zones,
            records,
            self.iam_user(certbot_user),
            int(summary.get("Users", 0)),
            int(summary.get("UsersQuota", 0)),
        )
