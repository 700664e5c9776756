"""How many concurrent streams a POP of a given size carries: the capacity benchmark's measured figures
(`python -m labs bench capacity`, bench/results/capacity.json, docs/benchmark.md#viewers-per-pop-size) and
the providers' published network caps, combined per size. validate warns when the viewers a stack expects
at once (`viewing.expectedConcurrentViewers`) exceed what a POP on their path carries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from plexcdn import regions

# Measured by `python -m labs bench capacity` (full run, 2026-12-06; bench/results/capacity.json): one POP
# core running the rendered nginx, TLS in and out, 30 Mbit/s viewers with nginx.streamBufferMb 4.
MEASURED_ON: Final = "2026-12-06"
MEASURED_CPU_S_PER_GB: Final = 2.055
MEASURED_STREAM_MEMORY_MB: Final = 5.35
MEASURED_STREAM_BUFFER_MB: Final = 4
CPU_CEILING: Final = 0.95  # a core this busy has no headroom left for a burst or a handshake storm
# What a POP needs besides nginx's streams: the OS, sshd, certbot's timer and the kernel's own buffers.
POP_BASE_MEMORY_MB: Final = 300.0
GB: Final = 1e9

# Outbound network cap of each plan the program offers, Mbit/s. These are the providers' published
# figures at the time of writing, taken as assumptions (docs/benchmark.md#viewers-per-pop-size cites them):
# DigitalOcean states 2 Gbps for every Droplet without Premium CPUs (none of the sizes below has them);
# Linode publishes a per-plan "Network Out" (the `network_out` field of its plan catalog).
NETWORK_OUT_MBIT: Final[Mapping[tuple[str, str], float]] = {
    **{("digitalocean", slug): 2000.0 for slug in regions.PROVIDERS["digitalocean"].sizes},
    ("linode", "g6-nanode-1"): 1000.0,
    ("linode", "g6-standard-1"): 2000.0,
    ("linode", "g6-standard-2"): 4000.0,
    ("linode", "g6-standard-4"): 5000.0,
    ("linode", "g6-dedicated-2"): 4000.0,
    ("linode", "g6-dedicated-4"): 5000.0,
}

Limit = Literal["cpu", "network", "memory"]


def stream_bytes_per_s(bitrate_mbit: float) -> float:
    return bitrate_mbit * 1e6 / 8


def viewers_per_core(cpu_s_per_gb: float, bitrate_mbit: float) -> int:
    """Streams one core carries at `CPU_CEILING` when each GB relayed costs `cpu_s_per_gb` of CPU."""
    return math.floor(CPU_CEILING / (cpu_s_per_gb * stream_bytes_per_s(bitrate_mbit) / GB))


def stream_memory_mb(stream_buffer_mb: int) -> float:
    """nginx's memory and its sockets' per stream: the measured figure, with the read-ahead it was measured
    with replaced by `nginx.streamBufferMb`."""
    return MEASURED_STREAM_MEMORY_MB - MEASURED_STREAM_BUFFER_MB + stream_buffer_mb


@dataclass(frozen=True)
class SizeCapacity:
    provider: str
    size: str
    limits: dict[Limit, int | None]  # each bound on its own; None where the figure is unknown

    @property
    def bound_by(self) -> Limit | None:
        known = {name: value for name, value in self.limits.items() if value is not None}
        if not known:
            return None
        return min(known, key=known.__getitem__)

    @property
    def streams(self) -> int | None:
        bound = self.bound_by
        return None if bound is None else self.limits[bound]


def size_capacity(
    provider: str,
    size_slug: str,
    *,
    bitrate_mbit: float,
    per_core: int | None,
    stream_memory: float | None,
) -> SizeCapacity:
    """A size's streams: CPU (vCPUs x the per-core figure: one worker per vCPU), network (the plan's outbound
    cap over the bitrate: a POP sends each stream out once; what it pulls from upstream is inbound) and memory
    (RAM less the base over memory per stream), each on its own."""
    size = regions.size(provider, size_slug)
    cap = NETWORK_OUT_MBIT.get((provider, size_slug))
    limits: dict[Limit, int | None] = {
        "cpu": None if per_core is None else size.vcpus * per_core,
        "network": None if cap is None else math.floor(cap / bitrate_mbit),
        "memory": None
        if not stream_memory
        else math.floor((size.memory_gb * 1024 - POP_BASE_MEMORY_MB) / stream_memory),
    }
    return SizeCapacity(provider, size_slug, limits)


def pop_capacity(provider: str, size_slug: str, bitrate_mbit: float, stream_buffer_mb: int) -> SizeCapacity:
    """What the measured figures say a POP of this size carries at this bitrate and read-ahead."""
    return size_capacity(
        provider,
        size_slug,
        bitrate_mbit=bitrate_mbit,
        per_core=viewers_per_core(MEASURED_CPU_S_PER_GB, bitrate_mbit),
        stream_memory=stream_memory_mb(stream_buffer_mb),
    )
