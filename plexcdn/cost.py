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
    """VMs (POPs, cloud transcode slaves and cloud library peers) and health checks; DNS queries and transfer
    beyond each VM's allowance are usage, not included."""
    sizes = {pop.name: pop.size_info for pop in config.pops}
    if config.transcode is not None:
        sizes.update({f"transcode-{slave.name}": slave.size_info for slave in config.transcode.cloud_slaves})
    if config.library is not None:
        sizes.update({f"library-{p.name}": p.size_info for p in config.library.peers if p.kind == "cloud"})
    vms = {name: size.monthly_usd for name, size in sizes.items()}
    health = regions.ROUTE53_HEALTH_CHECK_USD * len(config.pops)
    transfer = sum(size.transfer_tb for size in sizes.values())
    return CostEstimate(vms, health, round(sum(vms.values()) + health, 2), regions.PRICES_AS_OF, transfer)
