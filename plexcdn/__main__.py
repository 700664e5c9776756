"""`python -m plexcdn validate|render ...`: check and render a stack offline, without Pulumi or credentials.

`lab up|down` and `bench` run the rendered configs for real in network namespaces (root).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from plexcdn import render, topology
from plexcdn.config import ConfigError, StackConfig, load_stack_file
from plexcdn.cost import estimate


def _load(path: str) -> StackConfig | None:
    try:
        config = load_stack_file(Path(path))
    except ConfigError as error:
        _print_problems(error)
        return None
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return config


def _validate(args: argparse.Namespace) -> int:
    config = _load(args.stack_file)
    if config is None:
        return 1
    for place in topology.places(config):
        region = place.pop.region_info
        route = " -> ".join([*place.path_to_origin, "origin"])
        print(
            f"{place.pop.name:<12} {place.role:<4} {config.pop_name(place.pop.name):<32} "
            f"{place.pop.provider}/{place.pop.region} ({region.city}, latency region {region.aws_region})  {route}"
        )
    if config.library is not None:
        for peer in config.library.peers:
            where = f"{peer.provider}/{peer.region}" if peer.kind == "cloud" else f"{peer.user}@{peer.host}"
            what = peer.media_dir if peer.role == "seeder" else peer.mount_dir
            print(f"library {peer.name:<12} {peer.role:<6} {where:<32} {what}")
    cost = estimate(config)
    print(f"estimated monthly cost: ${cost.total_usd:.2f} (prices as of {cost.prices_as_of})")
    print(f"{args.stack_file}: valid")
    return 0


def _render(args: argparse.Namespace) -> int:
    config = _load(args.stack_file)
    if config is None:
        return 1
    addresses = render.placeholder_addresses(config)
    for item in args.address:
        name, _, address = item.partition("=")
        if name not in addresses or not address:
            print(f"error: --address {item!r}: use POP=ADDRESS with POP one of {', '.join(addresses)}", file=sys.stderr)
            return 1
        addresses[name] = address
    written = render.render_stack(config, Path(args.out), prefix=args.prefix, addresses=addresses)
    for path in written:
        print(path)
    return 0


def _print_problems(error: ConfigError) -> None:
    for problem in error.problems:
        print(f"error: {problem}", file=sys.stderr)


def _run_in_lab(what: str, action: Callable[[], int], cleanup: Callable[[], object] = lambda: None) -> int:
    """Run a lab command: refuse clearly where namespaces are unavailable, report errors without a traceback."""
    from plexcdn.lab.netns import LabError, lab_unavailable_reason

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
    from plexcdn.lab import relay

    def up() -> int:
        print(json.dumps(relay.lab_up(Path(args.stack_file), args.media_mb)))
        return 0

    return _run_in_lab("lab", up, cleanup=relay.down)


def _lab_down(args: argparse.Namespace) -> int:
    from plexcdn.lab import relay

    removed = relay.down()
    print(f"removed {len(removed)} lab namespaces" + (f": {', '.join(removed)}" if removed else ""))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from plexcdn.lab import wanbench

    def bench() -> int:
        stack = Path(args.stack) if args.stack else wanbench.DEFAULT_STACK
        results = wanbench.run(wanbench.SHORT if args.short else wanbench.FULL, stack)
        for path in wanbench.write_results(results, Path(args.out) if args.out else wanbench.RESULTS_DIR):
            print(path)
        print(wanbench.markdown_report(results))
        return 0

    return _run_in_lab("benchmark", bench)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plexcdn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a stack file; exit 1 with one line per problem")
    validate.add_argument("stack_file")
    validate.set_defaults(handler=_validate)
    render_cmd = commands.add_parser("render", help="write each POP's nginx config and cloud-init under --out")
    render_cmd.add_argument("stack_file")
    render_cmd.add_argument(
        "--out", required=True, help="directory to write <pop>/nginx.conf, <pop>/cloud-init.yaml, ..."
    )
    render_cmd.add_argument(
        "--prefix", default="", help="prepend this directory to the absolute paths in nginx.conf (labs)"
    )
    render_cmd.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="POP=ADDRESS",
        help="a POP's address for its downstreams' upstream (default: TEST-NET placeholders until pulumi up)",
    )
    render_cmd.set_defaults(handler=_render)
    lab = commands.add_parser("lab", help="run the rendered POP configs for real in network namespaces (root)")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True)
    lab_up = lab_commands.add_parser("up", help="build the relay lab; prints one JSON line describing it")
    lab_up.add_argument("stack_file")
    lab_up.add_argument("--media-mb", type=int, default=200, help="size of the origin's media file")
    lab_up.set_defaults(handler=_lab_up)
    lab_commands.add_parser("down", help="remove the relay lab: namespaces and processes").set_defaults(
        handler=_lab_down
    )
    bench = commands.add_parser(
        "bench", help="WAN benchmark: direct vs. naive relay vs. plex-cdn over emulated links (root)"
    )
    bench.add_argument("--short", action="store_true", help="fewer and shorter runs (about 6 minutes)")
    bench.add_argument("--stack", help="the stack whose POP configs are measured (default: Pulumi.dev.yaml)")
    bench.add_argument("--out", help="where latest.json, latest.md and latest.png go (default: bench/results)")
    bench.set_defaults(handler=_bench)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
