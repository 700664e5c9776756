"""`python -m plexcdn validate|render ...`: check and render a stack offline, without Pulumi or credentials.
`preflight` asks the providers' APIs, with the credentials in the environment, whether `pulumi up` can make
the stack today. `schema` prints the stack file's JSON Schema (or rewrites the settings reference's tables).
`plex-settings` prints the Plex settings the CDN needs and who applies them; `status` shows each POP's health
and Plex's current sessions with the POP each came through.

`lab ...` and `bench ...` are aliases of `python -m labs ...`: the labs run the rendered configs for real
in network namespaces and guests (root).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from plexcdn import plex_settings, render, topology, transfer
from plexcdn.config import PLEX_TOKEN, ConfigError, StackConfig, load_stack_file, secrets_in_stack_file
from plexcdn.cost import estimate


def _load(path: str) -> StackConfig | None:
    try:
        config = load_stack_file(Path(path))
    except ConfigError as error:
        _print_problems(error)
        return None
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for warning in plex_settings.applier_warnings(config, _plex_token_given(path)):
        print(f"warning: {warning}", file=sys.stderr)
    return config


def _plex_token_given(path: str) -> bool:
    return PLEX_TOKEN in secrets_in_stack_file(Path(path))


def _plex_applier(config: StackConfig, path: str) -> plex_settings.Applier:
    return plex_settings.applier(config, _plex_token_given(path))


def _validate(args: argparse.Namespace) -> int:
    config = _load(args.stack_file)
    if config is None:
        return 1
    for place in topology.places(config):
        region = place.pop.region_info
        route = " -> ".join([*place.path_to_origin, "origin"])
        if place.fallback is not None:
            route += f" (or {' -> '.join([*topology.place(config, place.fallback).path_to_origin, 'origin'])})"
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
    overage = ""
    if cost.transfer_overage_usd:
        overage = f"; ${cost.transfer_overage_usd:,.2f} of it transfer beyond the allowances"
    print(f"estimated monthly cost: ${cost.total_usd:.2f} (prices as of {cost.prices_as_of}{overage})")
    for line in transfer.report_lines(cost.transfer_out):
        print(line)
    applier = _plex_applier(config, args.stack_file)
    print(
        f"plex settings: {plex_settings.how_applied(applier, config)} "
        f"(python -m plexcdn plex-settings {args.stack_file})"
    )
    print(f"{args.stack_file}: valid")
    return 0


def _plex_settings(args: argparse.Namespace) -> int:
    config = _load(args.stack_file)
    if config is None:
        return 1
    applier = _plex_applier(config, args.stack_file)
    if args.json:
        sys.stdout.write(plex_settings.settings_json(config, applier))
    else:
        sys.stdout.write(plex_settings.settings_text(config, applier))
    return 0


def _status(args: argparse.Namespace) -> int:
    config = _load(args.stack_file)
    if config is None:
        return 1
    import datetime
    import json

    from plexcdn import status

    try:
        targets = status.pop_targets(config, status.read_outputs(args.outputs))
    except status.StatusError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    options = status.StatusOptions(
        window=datetime.timedelta(minutes=args.window_minutes), log_lines=args.log_lines, pop_prefix=args.pop_prefix
    )
    ssh = status.Ssh(identities=[Path(p) for p in args.identity], options=[f"-o{o}" for o in args.ssh_option])
    report = status.gather(
        config, targets, ssh, options, plex_url=args.plex_url, token=os.environ.get(status.TOKEN_ENV) or None
    )
    if args.json:
        print(json.dumps(status.report_json(report), indent=2))
    else:
        sys.stdout.write(status.report_text(report))
    return 0 if report.complete else 1


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


def _preflight(args: argparse.Namespace) -> int:
    config = _load(args.stack_file)
    if config is None:
        return 1
    # Imported here: validate and render need none of the providers' clients.
    from plexcdn import preflight

    origin: preflight.DeployOrigin | None = None
    hosted = os.environ.get(preflight.RUNNER_ENVIRONMENT_ENV) == "github-hosted"
    address_text = args.address or os.environ.get(preflight.DEPLOY_ADDRESS_ENV)
    try:
        if args.detect_address:
            origin = preflight.DeployOrigin(preflight.detect_public_address(), hosted)
        elif address_text:
            origin = preflight.DeployOrigin(ipaddress.ip_address(address_text.strip()), hosted)
    except ValueError:
        print(
            f"error: --address {address_text!r}: use this machine's public IP address, e.g. 198.51.100.4",
            file=sys.stderr,
        )
        return 1
    except OSError as error:
        print(f"error: --detect-address: {preflight.CHECKIP_URL} did not answer ({error})", file=sys.stderr)
        return 1
    report = preflight.run(config, os.environ, origin)
    for finding in report.problems:
        print(f"error: {finding.line}", file=sys.stderr)
    for finding in report.warnings:
        print(f"warning: {finding.line}", file=sys.stderr)
    for line in report.checked:
        print(f"checked: {line}")
    for line in report.notes:
        print(f"note: {line}")
    for line in report.not_checked:
        print(f"not checked: {line}")
    unchecked = f"; {preflight.plural(len(report.not_checked), 'check')} not made" if report.not_checked else ""
    if report.problems:
        print(f"{args.stack_file}: {preflight.plural(len(report.problems), 'problem')} before pulumi up{unchecked}")
        return 1
    print(f"{args.stack_file}: no problems found{unchecked}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from plexcdn import stack_schema

    if args.reference is None:
        sys.stdout.write(stack_schema.schema_text())
        return 0
    path = Path(args.reference)
    text = path.read_text()
    updated = stack_schema.update_reference(text)
    if updated != text:
        path.write_text(updated)
    print(f"{path}: {len(stack_schema.reference_tables_in(updated))} tables from the models")
    return 0


def _print_problems(error: ConfigError) -> None:
    for problem in error.problems:
        print(f"error: {problem}", file=sys.stderr)


def _labs_alias(argv: Sequence[str]) -> int:
    """`lab ...` and `bench ...` belong to the labs package, which the product never imports: hand over."""
    from plexcdn import PROJECT_ROOT

    command = [sys.executable, "-m", "labs", *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(command, env=env, check=False).returncode


LAB_COMMANDS = ("lab", "bench")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in LAB_COMMANDS:
        return _labs_alias(arguments)
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
    preflight_cmd = commands.add_parser(
        "preflight",
        help="ask the providers' APIs whether pulumi up can make the stack today; exit 1 with one line per problem",
        description="Reads DIGITALOCEAN_TOKEN, LINODE_TOKEN and AWS credentials (boto3's usual chain) from the "
        "environment; a provider without credentials is skipped and listed as not checked.",
    )
    preflight_cmd.add_argument("stack_file")
    where = preflight_cmd.add_mutually_exclusive_group()
    where.add_argument(
        "--address",
        help="the public IP address of the machine that will run pulumi up (default: $PLEXCDN_DEPLOY_ADDRESS): "
        "checks that the VMs' SSH rule admits it",
    )
    where.add_argument(
        "--detect-address",
        action="store_true",
        help="learn this machine's public address from https://checkip.amazonaws.com and check it likewise",
    )
    preflight_cmd.set_defaults(handler=_preflight)
    schema_cmd = commands.add_parser(
        "schema",
        help="print the JSON Schema of a stack file, generated from the settings models",
        description="Without options: the JSON Schema of Pulumi.<stack>.yaml on stdout (docs/stack-file.schema.json "
        "is this output). With --reference FILE: rewrite the settings tables in FILE (docs/stack-config.md).",
    )
    schema_cmd.add_argument("--reference", metavar="FILE", help="rewrite the generated tables of this Markdown file")
    schema_cmd.set_defaults(handler=_schema)
    plex_cmd = commands.add_parser(
        "plex-settings",
        help="print the Plex settings the CDN needs, their values, why, and whether pulumi up applies them",
    )
    plex_cmd.add_argument("stack_file")
    plex_cmd.add_argument("--json", action="store_true", help="as JSON")
    plex_cmd.set_defaults(handler=_plex_settings)
    status_cmd = commands.add_parser(
        "status",
        help="each POP's health, then Plex's current sessions and the POP each came through (or that it bypassed "
        "the CDN); exit 1 when a POP or Plex could not be read",
        description="POPs are read over SSH as root with your own key (admin.sshPublicKey; ssh's usual identities, "
        "or --identity), their addresses and pinned host keys from the stack's outputs: "
        "`pulumi stack output --json | python -m plexcdn status Pulumi.dev.yaml --outputs -`. Plex's sessions come "
        "from the Plex host over SSH where the stack manages it (origin agent, transcode offload), else from Plex's "
        "API at --plex-url with the server's token in $PLEXCDN_PLEX_TOKEN.",
    )
    status_cmd.add_argument("stack_file")
    status_cmd.add_argument(
        "--outputs", required=True, metavar="FILE", help="`pulumi stack output --json` of the stack; - for stdin"
    )
    status_cmd.add_argument(
        "--identity", action="append", default=[], metavar="FILE", help="an SSH private key to log in with"
    )
    status_cmd.add_argument(
        "--ssh-option", action="append", default=[], metavar="OPTION", help="passed to ssh as -o OPTION"
    )
    status_cmd.add_argument(
        "--plex-url", help="Plex's API where the stack does not manage the Plex host (default: the CDN's URL)"
    )
    status_cmd.add_argument(
        "--window-minutes", type=int, default=15, help="how far back the POPs' logs count (default 15)"
    )
    status_cmd.add_argument(
        "--log-lines", type=int, default=20000, help="the most log lines read from each POP (default 20000)"
    )
    status_cmd.add_argument("--pop-prefix", default="", help=argparse.SUPPRESS)  # the labs' POP directories
    status_cmd.add_argument("--json", action="store_true", help="POPs and sessions as JSON")
    status_cmd.set_defaults(handler=_status)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
