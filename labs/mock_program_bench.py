"""Times the whole Pulumi program under the mock engine for 2, 10 and 50 POPs and prints a table.

Run: .venv/bin/python -m labs.mock_program_bench [--repeat N]
This is a benchmark, not a test: it prints numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi

from labs import PROJECT_ROOT
from labs.mock_engine import install_mocks
from plexcdn import regions
from plexcdn.config import StackConfig, parse_config, read_stack_file


def stack_with(pop_count: int) -> StackConfig:
    """One hub per five POPs, each edge relaying to a hub, regions cycling through both providers."""
    values: dict[str, Any] = read_stack_file(PROJECT_ROOT / "Pulumi.dev.yaml")
    rows = [(p, r) for p in sorted(regions.PROVIDERS) for r in sorted(regions.PROVIDERS[p].regions)]
    hubs = max(1, pop_count // 5)
    pops = []
    for index in range(pop_count):
        provider, region = rows[index % len(rows)]
        pops.append(
            {
                "name": f"p{index}",
                "provider": provider,
                "region": region,
                "size": next(iter(regions.PROVIDERS[provider].sizes)),
                "upstream": "origin" if index < hubs else f"p{index % hubs}",
            }
        )
    values["pops"] = pops
    return parse_config(values, "bench")


def run_once(config: StackConfig) -> tuple[float, int, int]:
    _, monitor = install_mocks(config.stack)
    with tempfile.TemporaryDirectory(prefix="plexcdn-bench-") as build_dir:

        @pulumi.runtime.test  # type: ignore[untyped-decorator]
        def program() -> None:
            from components.stack import build_stack

            build_stack(config, Path(build_dir))

        tracemalloc.start()
        started = time.perf_counter()
        program()
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return elapsed, peak, len(monitor.registrations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"plex-cdn mock program benchmark: {platform.node()}, Python {platform.python_version()}, {time.ctime()}")
    run_once(stack_with(2))  # imports the provider SDKs once, outside the timings
    print(f"{'POPs':>5} {'resources':>10} {'median s':>9} {'min s':>7} {'max s':>7} {'peak MiB':>9}")
    for count in (2, 10, 50):
        config = stack_with(count)
        runs = [run_once(config) for _ in range(args.repeat)]
        times = [r[0] for r in runs]
        print(
            f"{count:>5} {runs[0][2]:>10} {statistics.median(times):>9.2f} {min(times):>7.2f} {max(times):>7.2f} "
            f"{max(r[1] for r in runs) / 2**20:>9.1f}"
        )


if __name__ == "__main__":
    main()
