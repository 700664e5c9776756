"""A monthly cost estimate from the dated price tables."""

from __future__ import annotations

from dataclasses import dataclass

from plexcdn import regions, transfer
from plexcdn.config import StackConfig


@dataclass(frozen=True)
class CostEstimate:
    vms_usd: dict[str, float]
    health_checks_usd: float
    transfer_overage_usd: float
    total_usd: float
    prices_as_of: str
    included_transfer_tb: float
    transfer_out: transfer.TransferEstimate


def estimate(config: StackConfig) -> CostEstimate:
    """VMs (POPs, cloud transcode slaves and cloud library peers), health checks, and with `viewing` the transfer
    beyond the pooled allowances that viewing alone would cause; DNS queries are usage, not included."""
    machines = transfer.stack_vms(config)
    vms_usd = {vm.name: vm.size.monthly_usd for vm in machines}
    health = regions.ROUTE53_HEALTH_CHECK_USD * len(config.pops)
    moved = transfer.for_stack(config)
    overage = float(moved.overage_usd)
    included = sum(vm.size.transfer_tb for vm in machines)
    total = round(sum(vms_usd.values()) + health + overage, 2)
    return CostEstimate(vms_usd, health, overage, total, regions.PRICES_AS_OF, included, moved)
