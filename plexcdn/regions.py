"""Provider region and size tables: where each region is, which AWS region Route53 should treat it as,
and what each VM size costs.

Latency-based routing needs an AWS region per record: Route53 answers a viewer with the record whose
AWS region has the lowest measured latency from that viewer, so each provider region maps to the AWS
region closest to it on the network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

PRICES_AS_OF: Final = "2025-06"
PRICES_SOURCE: Final = "the providers' public price pages (DigitalOcean Droplets, Akamai/Linode Compute)"


@dataclass(frozen=True)
class Region:
    slug: str
    city: str
    latitude: float
    longitude: float
    aws_region: str


@dataclass(frozen=True)
class Size:
    slug: str
    vcpus: int
    memory_gb: float
    monthly_usd: float
    transfer_tb: float


@dataclass(frozen=True)
class ProviderTable:
    name: str
    image: str
    regions: dict[str, Region]
    sizes: dict[str, Size]


def _regions(*rows: tuple[str, str, float, float, str]) -> dict[str, Region]:
    return {slug: Region(slug, city, lat, lon, aws) for slug, city, lat, lon, aws in rows}


def _sizes(*rows: tuple[str, int, float, float, float]) -> dict[str, Size]:
    return {slug: Size(slug, cpu, mem, usd, tb) for slug, cpu, mem, usd, tb in rows}


PROVIDERS: Final[dict[str, ProviderTable]] = {
    "digitalocean": ProviderTable(
        name="digitalocean",
        image="debian-13-x64",
        regions=_regions(
            ("nyc1", "New York", 40.71, -74.01, "us-east-1"),
            ("nyc3", "New York", 40.71, -74.01, "us-east-1"),
            ("atl1", "Atlanta", 33.75, -84.39, "us-east-1"),
            ("tor1", "Toronto", 43.65, -79.38, "ca-central-1"),
            ("sfo2", "San Francisco", 37.77, -122.42, "us-west-1"),
            ("sfo3", "San Francisco", 37.77, -122.42, "us-west-1"),
            ("lon1", "London", 51.51, -0.13, "eu-west-2"),
            ("ams3", "Amsterdam", 52.37, 4.90, "eu-central-1"),
            ("fra1", "Frankfurt", 50.11, 8.68, "eu-central-1"),
            ("blr1", "Bangalore", 12.97, 77.59, "ap-south-1"),
            ("sgp1", "Singapore", 1.35, 103.82, "ap-southeast-1"),
            ("syd1", "Sydney", -33.87, 151.21, "ap-southeast-2"),
        ),
        sizes=_sizes(
            ("s-1vcpu-512mb-10gb", 1, 0.5, 4.0, 0.5),
            ("s-1vcpu-1gb", 1, 1.0, 6.0, 1.0),
            ("s-1vcpu-2gb", 1, 2.0, 12.0, 2.0),
            ("s-2vcpu-2gb", 2, 2.0, 18.0, 3.0),
            ("s-2vcpu-4gb", 2, 4.0, 24.0, 4.0),
            ("s-4vcpu-8gb", 4, 8.0, 48.0, 5.0),
            ("c-2", 2, 4.0, 42.0, 4.0),
            ("c-4", 4, 8.0, 84.0, 5.0),
        ),
    ),
    "linode": ProviderTable(
        name="linode",
        image="linode/debian13",
        regions=_regions(
            ("us-east", "Newark", 40.74, -74.17, "us-east-1"),
            ("us-southeast", "Atlanta", 33.75, -84.39, "us-east-1"),
            ("us-iad", "Washington", 38.90, -77.04, "us-east-1"),
            ("us-mia", "Miami", 25.76, -80.19, "us-east-1"),
            ("us-ord", "Chicago", 41.88, -87.63, "us-east-2"),
            ("us-central", "Dallas", 32.78, -96.80, "us-east-2"),
            ("us-west", "Fremont", 37.55, -121.99, "us-west-1"),
            ("us-lax", "Los Angeles", 34.05, -118.24, "us-west-1"),
            ("us-sea", "Seattle", 47.61, -122.33, "us-west-2"),
            ("ca-central", "Toronto", 43.65, -79.38, "ca-central-1"),
            ("br-gru", "São Paulo", -23.55, -46.63, "sa-east-1"),
            ("eu-west", "London", 51.51, -0.13, "eu-west-2"),
            ("gb-lon", "London", 51.51, -0.13, "eu-west-2"),
            ("fr-par", "Paris", 48.86, 2.35, "eu-west-3"),
            ("nl-ams", "Amsterdam", 52.37, 4.90, "eu-central-1"),
            ("eu-central", "Frankfurt", 50.11, 8.68, "eu-central-1"),
            ("de-fra-2", "Frankfurt", 50.11, 8.68, "eu-central-1"),
            ("se-sto", "Stockholm", 59.33, 18.07, "eu-north-1"),
            ("it-mil", "Milan", 45.46, 9.19, "eu-south-1"),
            ("es-mad", "Madrid", 40.42, -3.70, "eu-south-2"),
            ("ap-west", "Mumbai", 19.08, 72.88, "ap-south-1"),
            ("in-maa", "Chennai", 13.08, 80.27, "ap-south-1"),
            ("ap-south", "Singapore", 1.35, 103.82, "ap-southeast-1"),
            ("sg-sin-2", "Singapore", 1.35, 103.82, "ap-southeast-1"),
            ("id-cgk", "Jakarta", -6.21, 106.85, "ap-southeast-3"),
            ("ap-northeast", "Tokyo", 35.68, 139.69, "ap-northeast-1"),
            ("jp-osa", "Osaka", 34.69, 135.50, "ap-northeast-3"),
            ("ap-southeast", "Sydney", -33.87, 151.21, "ap-southeast-2"),
            ("au-mel", "Melbourne", -37.81, 144.96, "ap-southeast-4"),
            # Core regions opened after the rows above (GET /regions, 2026-07; see LINODE_METADATA_REGIONS).
            ("us-iad-2", "Washington", 38.90, -77.04, "us-east-1"),
            ("fr-par-2", "Paris", 48.86, 2.35, "eu-west-3"),
            ("no-osl-1", "Oslo", 59.91, 10.75, "eu-north-1"),
            ("in-bom-2", "Mumbai", 19.08, 72.88, "ap-south-1"),
            ("jp-tyo-3", "Tokyo", 35.68, 139.69, "ap-northeast-1"),
        ),
        sizes=_sizes(
            ("g6-nanode-1", 1, 1.0, 5.0, 1.0),
            ("g6-standard-1", 1, 2.0, 12.0, 2.0),
            ("g6-standard-2", 2, 4.0, 24.0, 4.0),
            ("g6-standard-4", 4, 8.0, 48.0, 5.0),
            ("g6-dedicated-2", 2, 4.0, 36.0, 4.0),
            ("g6-dedicated-4", 4, 8.0, 72.0, 5.0),
        ),
    ),
}


@dataclass(frozen=True)
class TransferTerms:
    """How a provider bills what leaves its VMs: each VM adds its size's allowance (`Size.transfer_tb`, in
    thousands of `unit`) to a pool the whole account shares, and what leaves the pool's VMs beyond it is billed
    per `unit`. Regions in `separate_pools` keep a pool of their own, at their own price."""

    unit: str
    unit_bytes: int
    overage_usd_per_unit: Decimal
    separate_pools: Mapping[str, Decimal]
    source: str
    as_of: str


# Only outbound transfer on the public interface counts, on both; inbound is free. A relayed stream leaves
# the edge (towards the viewer) and every POP it came through (towards the next one down), all over public
# addresses in other regions, so all of it counts.
TRANSFER: Final[dict[str, TransferTerms]] = {
    # "Additional outbound transfer is billed at $0.01 per GiB ... pooled cumulatively across all Droplets at
    # the team level"; plans are sold in GiB (1,000 GiB with the 1 GiB Droplet). A Droplet accrues its allowance
    # by the hour up to 672 hours, so one kept all month adds all of it.
    "digitalocean": TransferTerms(
        unit="GiB",
        unit_bytes=2**30,
        overage_usd_per_unit=Decimal("0.01"),
        separate_pools={},
        source="https://docs.digitalocean.com/products/droplets/details/pricing (Droplet bandwidth)",
        as_of="2025-05",
    ),
    # "Any additional transfer usage that exceeds this monthly allotment starts at $0.005/GB"; Jakarta and São
    # Paulo track their transfer in a pool of their own, billed at $0.015 and $0.007 per GB, and every other
    # core region shares the account's global pool. Plans are sold in TB of 1,000 GB.
    "linode": TransferTerms(
        unit="GB",
        unit_bytes=10**9,
        overage_usd_per_unit=Decimal("0.005"),
        separate_pools={"id-cgk": Decimal("0.015"), "br-gru": Decimal("0.007")},
        source="https://www.linode.com/docs/products/platform/get-started/guides/network-transfer/ (Usage Costs)",
        as_of="2023-10",
    ),
}


def transfer_pool(provider: str, region_slug: str) -> tuple[str, str | None]:
    """The pool a VM's allowance joins and its transfer counts against: (provider, None) for the account-wide
    pool, (provider, region) for a region that keeps its own."""
    return (provider, region_slug if region_slug in TRANSFER[provider].separate_pools else None)


def overage_usd_per_unit(pool: tuple[str, str | None]) -> Decimal:
    terms = TRANSFER[pool[0]]
    return terms.overage_usd_per_unit if pool[1] is None else terms.separate_pools[pool[1]]


# Route53 list prices (USD per month) for what this program creates in the user's existing zone.
ROUTE53_HEALTH_CHECK_USD: Final = 0.75  # HTTP check of a non-AWS endpoint, no optional features
ROUTE53_LATENCY_QUERIES_USD_PER_MILLION: Final = 0.60


def provider_table(provider: str) -> ProviderTable:
    return PROVIDERS[provider]


def region(provider: str, slug: str) -> Region:
    return PROVIDERS[provider].regions[slug]


def size(provider: str, slug: str) -> Size:
    return PROVIDERS[provider].sizes[slug]


def monthly_price_usd(provider: str, size_slug: str) -> float:
    return PROVIDERS[provider].sizes[size_slug].monthly_usd


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (latitude, longitude) points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def fibre_rtt_ms(km: float) -> float:
    """The round trip light needs in fibre (about 200 km per ms each way) over a path 1.5x the great circle."""
    return 2 * km * 1.5 / 200.0


# Linode regions whose capabilities in `GET /regions` include "Metadata": the service a new Linode reads
# its user data (the cloud-init document) from, so a Linode in any other region boots without it.
# Source: responses of Linode's API to GET /v4beta/regions recorded in linode/linodego's integration
# fixtures (test/integration/fixtures/TestRegions_List.yaml, TestRegions_pgLimits.yaml). The recordings of
# 2026-06-29 (commit 7cbc513d) and 2026-07-01 (50cfc3e3) list Metadata for every region below, the 34
# core regions; the distributed (edge) regions in the same responses lack it. The service started in
# the newer core regions: on 2024-03-22 (d349cae3) only br-gru, es-mad, fr-par, id-cgk, in-maa, it-mil,
# jp-osa, nl-ams, se-sto, us-iad, us-lax, us-mia, us-ord and us-sea had it; the legacy data centres
# (ap-northeast, ap-south, ap-southeast, ap-west, ca-central, eu-central, eu-west, us-central, us-east,
# us-southeast, us-west) have it from the recording of 2024-07-19 (7a5aaecc) on. A region missing here
# is one whose Metadata service no source confirmed, and is refused.
LINODE_METADATA_AS_OF: Final = "2026-07-01"
LINODE_METADATA_SOURCE: Final = "Linode's GET /regions as recorded in linode/linodego's integration fixtures"
LINODE_METADATA_REGIONS: Final = frozenset(
    {
        "ap-northeast",
        "ap-south",
        "ap-southeast",
        "ap-west",
        "au-mel",
        "br-gru",
        "ca-central",
        "de-fra-2",
        "es-mad",
        "eu-central",
        "eu-west",
        "fr-par",
        "fr-par-2",
        "gb-lon",
        "id-cgk",
        "in-bom-2",
        "in-maa",
        "it-mil",
        "jp-osa",
        "jp-tyo-3",
        "nl-ams",
        "no-osl-1",
        "se-sto",
        "sg-sin-2",
        "us-central",
        "us-east",
        "us-iad",
        "us-iad-2",
        "us-lax",
        "us-mia",
        "us-ord",
        "us-sea",
        "us-southeast",
        "us-west",
    }
)


def serves_user_data(provider: str, slug: str) -> bool:
    """Whether a VM made in this region gets the user data it is created with (cloud-init's first boot).

    Linode makes it a capability of each region (Metadata); DigitalOcean's API has no such per-region
    capability for the Droplet metadata service that serves user data, so its regions are taken as they are.
    """
    if provider == "linode":
        return slug in LINODE_METADATA_REGIONS
    return True


def nearest_regions(provider: str, slug: str, candidates: Iterable[str], count: int = 3) -> list[tuple[str, float]]:
    """Up to `count` of `candidates` (slugs of the same provider) by distance from `slug`: (slug, km)."""
    table = PROVIDERS[provider].regions
    origin = (table[slug].latitude, table[slug].longitude)
    ranked = sorted(
        (distance_km(origin, (table[other].latitude, table[other].longitude)), other)
        for other in candidates
        if other != slug
    )
    return [(other, km) for km, other in ranked[:count]]


def nearest_described(provider: str, slug: str, candidates: Iterable[str], describe: Callable[[Region], str]) -> str:
    """The nearest of `candidates` for a message: "slug (what describe says, 948 km), ..."."""
    table = PROVIDERS[provider].regions
    found = nearest_regions(provider, slug, candidates)
    return ", ".join(f"{other} ({describe(table[other])}, {km:,.0f} km)" for other, km in found)
