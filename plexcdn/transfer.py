"""What viewing sends out of the stack's VMs, against each provider's pooled transfer allowance.

Every relayed byte leaves each POP on its way: the POP the viewer reached sends it to the viewer, and each POP
it came through on the way from the origin sends it to the next one down. A viewer on a hub costs the hub's
transfer alone; a viewer on an edge that relays through a hub costs both. The stack file does not say where
viewers are, so the hours are spread evenly over the POPs viewers land on (every POP answers for the shared
name). Bytes are counted exactly (fractions, whole bytes), so that the overage is rounded once, up to the cent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Final

from plexcdn import regions, topology
from plexcdn.topology import PopPlace

if TYPE_CHECKING:
    from plexcdn.config import StackConfig

# A 4K stream as Plex sends it without transcoding, about; the measure of what an allowance is worth.
FOUR_K_MBPS: Final = Decimal(30)
SECONDS_PER_HOUR: Final = 3600


def stream_bytes(hours: int | Fraction, mbps: Decimal | float) -> Fraction:
    """What `hours` of one stream at `mbps` megabits a second weigh: 30 Mbit/s for an hour is 13.5 GB."""
    return Fraction(hours) * Fraction(Decimal(str(mbps))) * 1_000_000 / 8 * SECONDS_PER_HOUR


@dataclass(frozen=True)
class Vm:
    """A VM of the stack, as far as its transfer is concerned."""

    name: str
    provider: str
    region: str
    size: regions.Size


@dataclass(frozen=True)
class Pool:
    """One transfer pool the stack's VMs join: its allowance, the VMs that fill it, and what viewing sends."""

    provider: str
    region: str | None  # a region with a pool of its own; None: the account-wide pool
    vms: tuple[Vm, ...]
    allowance_bytes: int
    # The share of one viewing hour that leaves this pool's VMs (an hour that crosses two of them counts twice).
    load: Fraction
    expected_bytes: int | None  # None: no viewing in the stack file

    @property
    def terms(self) -> regions.TransferTerms:
        return regions.TRANSFER[self.provider]

    @property
    def name(self) -> str:
        if self.region is None:
            return self.provider
        return f"{self.provider} {self.region} ({regions.region(self.provider, self.region).city}, a pool of its own)"

    @property
    def overage_usd_per_unit(self) -> Decimal:
        return regions.overage_usd_per_unit((self.provider, self.region))

    @property
    def overage_bytes(self) -> int:
        return max(0, (self.expected_bytes or 0) - self.allowance_bytes)

    @property
    def left_bytes(self) -> int:
        return max(0, self.allowance_bytes - (self.expected_bytes or 0))

    @property
    def overage_usd(self) -> Decimal:
        """The overage's price, up to the next cent: an estimate should not promise less than the bill."""
        units = Fraction(self.overage_bytes, self.terms.unit_bytes)
        cents = math.ceil(units * Fraction(self.overage_usd_per_unit) * 100)
        return Decimal(cents) / 100

    @property
    def four_k_hours(self) -> int | None:
        """Whole hours of 4K viewing a month, spread like the rest, before this pool runs out; None when viewing
        never leaves its VMs (transcode slaves or library peers alone)."""
        if self.load == 0:
            return None
        return math.floor(Fraction(self.allowance_bytes) / (self.load * stream_bytes(1, FOUR_K_MBPS)))

    def amount(self, size: int) -> str:
        """Bytes in the unit the provider sells them in: "1,257.2 GiB"."""
        return f"{size / self.terms.unit_bytes:,.1f} {self.terms.unit}"


@dataclass(frozen=True)
class TransferEstimate:
    hours_per_month: int | None
    mbps: Decimal
    landing: tuple[str, ...]  # the POPs viewers land on, each taking an even share of the hours
    per_pop_bytes: dict[str, int]
    pools: tuple[Pool, ...]

    @property
    def overage_usd(self) -> Decimal:
        return sum((pool.overage_usd for pool in self.pools), Decimal(0))

    @property
    def first_to_run_out(self) -> Pool | None:
        """The pool that 4K viewing, spread as the estimate spreads it, fills first."""
        filled = [pool for pool in self.pools if pool.four_k_hours is not None]
        return min(filled, key=lambda pool: pool.four_k_hours or 0) if filled else None

    @property
    def four_k_hours(self) -> int | None:
        """Hours of 4K a month the stack's allowances cover: until the first pool runs out."""
        first = self.first_to_run_out
        return first.four_k_hours if first is not None else None

    @property
    def over(self) -> tuple[Pool, ...]:
        return tuple(pool for pool in self.pools if pool.overage_bytes > 0)


def loads(places: Sequence[PopPlace]) -> dict[str, Fraction]:
    """Per POP, the share of one viewing hour it sends out, with viewers spread evenly over every POP."""
    share = Fraction(1, len(places)) if places else Fraction(0)
    found = {place.pop.name: Fraction(0) for place in places}
    for place in places:
        for name in place.path_to_origin:
            found[name] += share
    return found


def estimate(
    places: Sequence[PopPlace], vms: Iterable[Vm], hours_per_month: int | None, mbps: Decimal | float
) -> TransferEstimate:
    """`places`: every POP's place in the tree; `vms`: every VM of the stack, the POPs among them, since every
    VM adds its allowance to its pool whether or not viewing leaves it."""
    per_hour = loads(places)
    hour_bytes = stream_bytes(1, mbps)
    per_pop = (
        {name: round(load * hour_bytes * hours_per_month) for name, load in per_hour.items()}
        if hours_per_month is not None
        else {}
    )
    members: dict[tuple[str, str | None], list[Vm]] = {}
    for vm in vms:
        members.setdefault(regions.transfer_pool(vm.provider, vm.region), []).append(vm)
    pools = []
    for (provider, region), pool_vms in sorted(members.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        unit_bytes = regions.TRANSFER[provider].unit_bytes
        allowance = sum(round(Fraction(Decimal(str(vm.size.transfer_tb))) * 1000 * unit_bytes) for vm in pool_vms)
        names = {vm.name for vm in pool_vms}
        pools.append(
            Pool(
                provider=provider,
                region=region,
                vms=tuple(pool_vms),
                allowance_bytes=allowance,
                load=sum((load for name, load in per_hour.items() if name in names), Fraction(0)),
                expected_bytes=sum(b for name, b in per_pop.items() if name in names) if per_pop else None,
            )
        )
    return TransferEstimate(
        hours_per_month=hours_per_month,
        mbps=Decimal(str(mbps)),
        landing=tuple(sorted(per_hour)),
        per_pop_bytes=per_pop,
        pools=tuple(pools),
    )


def stack_vms(config: StackConfig) -> tuple[Vm, ...]:
    """Every VM the stack pays for: POPs (by their names), cloud transcode slaves and cloud library peers."""
    found = [Vm(pop.name, pop.provider, pop.region, pop.size_info) for pop in config.pops]
    if config.transcode is not None:
        slaves = config.transcode.cloud_slaves
        found.extend(Vm(f"transcode-{s.name}", s.provider, s.region, s.size_info) for s in slaves)
    if config.library is not None:
        peers = [p for p in config.library.peers if p.kind == "cloud"]
        found.extend(Vm(f"library-{p.name}", p.provider, p.region, p.size_info) for p in peers)
    return tuple(found)


def for_stack(config: StackConfig) -> TransferEstimate:
    """What `viewing` sends out of the POPs, pool by pool; without `viewing`, the allowances alone."""
    viewing = config.viewing
    return estimate(
        topology.places(config),
        stack_vms(config),
        viewing.hours_per_month if viewing is not None else None,
        viewing.bitrate_mbps if viewing is not None else FOUR_K_MBPS,
    )


def report_lines(moved: TransferEstimate) -> list[str]:
    """What `validate` prints under the estimate: the spread, then a line per pool."""
    four_k = f"{FOUR_K_MBPS} Mbit/s"
    count = len(moved.landing)
    pops = f"{count} POP{'s' if count != 1 else ''} viewers land on ({', '.join(moved.landing)})"
    if moved.hours_per_month is None:
        head = (
            "transfer: no viewing set (viewing.hoursPerMonth); the allowances, with viewers spread evenly over the "
            f"{pops}"
        )
    else:
        head = (
            f"transfer: viewing of {moved.hours_per_month:,} hours a month at {float(moved.mbps):g} Mbit/s, spread "
            f"evenly over the {pops}: the stack file does not say where viewers are"
        )
    lines = [head]
    for pool in moved.pools:
        price = f"${pool.overage_usd_per_unit}/{pool.terms.unit} beyond it, as of {pool.terms.as_of}"
        parts = [f"allowance {pool.amount(pool.allowance_bytes)} ({', '.join(vm.name for vm in pool.vms)}; {price})"]
        if pool.expected_bytes is not None:
            parts.append(f"expected {pool.amount(pool.expected_bytes)}")
            if pool.overage_bytes:
                parts.append(f"over by {pool.amount(pool.overage_bytes)}: ${pool.overage_usd:,.2f} a month")
            else:
                parts.append(f"{pool.amount(pool.left_bytes)} left")
        hours = pool.four_k_hours
        parts.append(
            f"covers {hours:,} hours of 4K ({four_k}) a month" if hours is not None else "no viewing leaves these VMs"
        )
        lines.append(f"  {pool.name}: {', '.join(parts)}")
    first = moved.first_to_run_out
    if first is not None:
        lines.append(
            f"  the stack's allowances cover {first.four_k_hours:,} hours of 4K ({four_k}) a month, spread as above: "
            f"{first.name}'s runs out first"
        )
    return lines
