"""A monthly cost estimate from the dated price tables."""

from __future__ import annotations

from dataclasses import dataclass

from plexcdn import regions
from plexcdn.config import StackConfig


@dataclass(frozen=True)
class CostEstimate:
    vms_usd: dict[str, float]
    health_checks_usd: float
    total_usd: float
    prices_as_of: str
    included_transfer_tb: float


def estimate(config: StackConfig) -> CostEstimate:
    """VMs and health checks; DNS queries and transfer beyond each VM's allowance are usage, not included."""
    vms = {pop.name: pop.size_info.monthly_usd for pop in config.pops}
    health = regions.ROUTE53_HEALTH_CHECK_USD * len(config.pops)
    transfer = sum(pop.size_info.transfer_tb for pop in config.pops)
    return CostEstimate(vms, health, round(sum(vms.values()) + health, 2), regions.PRICES_AS_OF, transfer)
