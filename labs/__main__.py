"""`python -m labs ...`: the labs and benchmarks (root: network namespaces and guests).

    python -m labs lab up STACK_FILE        the relay lab: rendered POP configs in namespaces, one JSON line
    python -m labs lab down
    python -m labs lab vms up STACK_FILE [--plan PLAN]   the boot lab: Debian 13 guests boot the stack's
                                            user_data and take its pulumi-command steps; one JSON line last
    python -m labs lab vms logs             every guest's nginx, certbot, cloud-init logs and console
    python -m labs lab vms down
    python -m labs bench [--short]          the WAN benchmark
    python -m labs bench capacity [--short] the capacity benchmark: viewers per POP core

`python -m plexcdn lab ...` and `python -m plexcdn bench ...` are aliases of these.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from labs.capacity_report import DEFAULT_CAP as DEFAULT_VIEWER_CAP
from labs.netns import LabError, lab_unavailable_reason
from plexcdn.config import ConfigError


def _print_problems(error: ConfigError) -> None:
    for problem in error.problems:
        print(f"error: {problem}", file=sys.stderr)


def run_in_lab(what: str, action: Callable[[], int], cleanup: Callable[[], object] = lambda: None) -> int:
    """Run a lab command: refuse clearly where namespaces are unavailable, report errors without a traceback."""
    if (reason := lab_unavailable_reason()) is not None:
        print(f"error: the {what} {reason}", file=sys.stderr)
        return 1
    try:
        return action()
    except ConfigError as error:
        _print_problems(error)
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        cleanup()
    return 1


def _lab_up(args: argparse.Namespace) -> int:
    from labs import relay_lab

    def up() -> int:
        print(json.dumps(relay_lab.lab_up(Path(args.stack_file), args.media_mb)))
        return 0

    return run_in_lab("lab", up, cleanup=relay_lab.down)


def _lab_down(args: argparse.Namespace) -> int:
    from labs import relay_lab

    removed = relay_lab.down()
    print(f"removed {len(removed)} lab namespaces" + (f": {', '.join(removed)}" if removed else ""))
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _vms_up(args: argparse.Namespace) -> int:
    from labs import boot_lab

    def up() -> int:
        make_plan = boot_lab.plan_from_file(Path(args.plan)) if args.plan else boot_lab.stack_plan
        info = boot_lab.vms_up(Path(args.stack_file), make_plan, media_mb=args.media_mb, echo=_say)
        print(json.dumps(info))
        return 0

    return run_in_lab("boot lab", up)


def _vms_logs(args: argparse.Namespace) -> int:
    from labs import boot_lab

    def logs() -> int:
        for guest, copied in boot_lab.vms_logs().items():
            print(f"{guest}: {', '.join(copied) if copied else 'nothing (no console yet)'}")
        return 0

    return run_in_lab("boot lab", logs)


def _vms_down(args: argparse.Namespace) -> int:
    from labs import boot_lab

    removed = boot_lab.vms_down()
    print(f"removed {len(removed)} boot lab namespaces" + (f": {', '.join(removed)}" if removed else ""))
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.benchmark == "capacity":
        return _capacity(args)
    if args.max_viewers is not None or args.level_seconds is not None:
        print("error: --max-viewers and --level-seconds belong to `bench capacity`", file=sys.stderr)
        return 2
    from labs import wan_bench

    def bench() -> int:
        stack = Path(args.stack) if args.stack else wan_bench.DEFAULT_STACK
        results = wan_bench.run(wan_bench.SHORT if args.short else wan_bench.FULL, stack)
        for path in wan_bench.write_results(results, Path(args.out) if args.out else wan_bench.RESULTS_DIR):
            print(path)
        print(wan_bench.markdown_report(results))
        return 0

    return run_in_lab("benchmark", bench)


def _capacity(args: argparse.Namespace) -> int:
    from labs import capacity_bench, capacity_report

    try:
        plan = capacity_bench.plan_for(args.short, args.max_viewers, args.level_seconds)
    except ValueError as error:
        print(f"error: --level-seconds: {error}", file=sys.stderr)
        return 2

    def bench() -> int:
        stack = Path(args.stack) if args.stack else capacity_bench.DEFAULT_STACK
        results = capacity_bench.run(plan, stack)
        for path in capacity_bench.write_results(results, Path(args.out) if args.out else capacity_bench.RESULTS_DIR):
            print(path)
        print(capacity_report.markdown_report(results))
        return 0

    return run_in_lab("capacity benchmark", bench)


def _viewer_cap(text: str) -> int:
    if (value := int(text)) < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _level_seconds(text: str) -> float:
    if (value := float(text)) <= 0:
        raise argparse.ArgumentTypeError("must be above zero")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labs", description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    lab = commands.add_parser("lab", help="run the rendered POP configs for real in network namespaces (root)")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True)
    lab_up = lab_commands.add_parser("up", help="build the relay lab; prints one JSON line describing it")
    lab_up.add_argument("stack_file")
    lab_up.add_argument("--media-mb", type=int, default=200, help="size of the origin's media file")
    lab_up.set_defaults(handler=_lab_up)
    lab_commands.add_parser("down", help="remove the relay lab: namespaces and processes").set_defaults(
        handler=_lab_down
    )
    vms = lab_commands.add_parser(
        "vms", help="the boot lab: Debian 13 guests under QEMU boot the stack's user_data (root)"
    )
    vms_commands = vms.add_subparsers(dest="vms_command", required=True)
    vms_up = vms_commands.add_parser("up", help="start the lab and boot the stack's VMs; prints one JSON line last")
    vms_up.add_argument("stack_file")
    vms_up.add_argument(
        "--plan",
        help="JSON plan: each VM's user_data file and the pulumi-command steps "
        "(default: the rendered cloud-init, no steps)",
    )
    vms_up.add_argument("--media-mb", type=int, default=64, help="size of the Plex stand-in's media file")
    vms_up.set_defaults(handler=_vms_up)
    vms_commands.add_parser("logs", help="copy every guest's logs and console into the lab's logs_dir").set_defaults(
        handler=_vms_logs
    )
    vms_commands.add_parser("down", help="stop the guests and remove the boot lab").set_defaults(handler=_vms_down)
    bench = commands.add_parser(
        "bench",
        help="WAN benchmark: direct vs. naive relay vs. plex-cdn over emulated links; "
        "`bench capacity`: viewers per POP core (root)",
    )
    bench.add_argument(
        "benchmark",
        nargs="?",
        choices=("wan", "capacity"),
        default="wan",
        help="wan (the default): the WAN benchmark; capacity: 30 Mbit/s viewers one POP core carries",
    )
    bench.add_argument(
        "--short", action="store_true", help="fewer and shorter runs (WAN: about 6 minutes; capacity: 8 s levels)"
    )
    bench.add_argument("--stack", help="the stack whose POP configs are measured (default: Pulumi.dev.yaml)")
    bench.add_argument(
        "--out",
        help="where the results go (default: bench/results): latest.{json,md,png}, or capacity.{json,md,png}",
    )
    bench.add_argument(
        "--max-viewers", type=_viewer_cap, help=f"capacity: stop at this many viewers (default {DEFAULT_VIEWER_CAP})"
    )
    bench.add_argument(
        "--level-seconds",
        type=_level_seconds,
        help="capacity: seconds per level (default 20, short 8, about 6 at least)",
    )
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
