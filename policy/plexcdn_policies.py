"""plex-cdn's guard rails, as plain functions that tests can call on hand-made resources without the engine.

Each `validate_*` function (and each one the `*_validator` factories return) has pulumi-policy's
resource-validation signature `(args, report_violation)`. The checks underneath work on plain dicts:
`plain()` turns what the engine hands over into dicts and lists, with `UNKNOWN` wherever a preview does not
know a value yet. `build_policies()` wraps them into the policies `__main__.py` registers.

What the engine shows a policy, and so what can be checked (pulumi-policy 1.21):
- resource inputs, with property names as the engine spells them (`userData`, `inboundRules`) and secrets
  already unwrapped: a validation can read user_data, but cannot tell whether it is secret;
- resource options (`args.opts.ignore_changes`, in engine spelling: the Python SDK turns `user_data` into
  `userData` before registering);
- the stack name, through `pulumi.get_stack()`;
- secretness only during remediation, where the SDK keeps `Secret` wrappers around secret inputs. The
  secret-inputs policy is therefore a remediation: it marks an unmarked secret-bearing input secret, and the
  CLI reports that it did.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, cast

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    ReportViolation,
    ResourceRemediation,
    ResourceValidation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Secret,
    Severity,
)
from pulumi_policy import proxy as policy_proxy
from pulumi_policy import secret as policy_secret

PriceLookup = Callable[[str, str], float | None]
"""(provider, size slug) -> USD a month, or None when the size is not in the table."""

DROPLET: Final = "digitalocean:index/droplet:Droplet"
LINODE_INSTANCE: Final = "linode:index/instance:Instance"
DIGITALOCEAN_FIREWALL: Final = "digitalocean:index/firewall:Firewall"
LINODE_FIREWALL: Final = "linode:index/firewall:Firewall"
REMOTE_COMMAND: Final = "command:remote:Command"
COPY_TO_REMOTE: Final = "command:remote:CopyToRemote"

# The same URLs as plexcdn.config.ACME_DIRECTORIES, written out so that what the pack enforces is readable
# here and does not move with the program's config model; tests/test_policy.py keeps the two equal.
ACME_DIRECTORIES: Final = {
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
    "production": "https://acme-v02.api.letsencrypt.org/directory",
}
DEFAULT_PRODUCTION_STACKS: Final = ("prod",)
DEFAULT_MAX_MONTHLY_USD_PER_VM: Final = 24.0
SSH_PORT: Final = 22

POLICY_PACK_NAME: Final = "plex-cdn"

_UNKNOWN_SENTINELS: Final = frozenset(
    {
        policy_proxy.UNKNOWN_BOOLEAN_VALUE,
        policy_proxy.UNKNOWN_NUMBER_VALUE,
        policy_proxy.UNKNOWN_STRING_VALUE,
        policy_proxy.UNKNOWN_ARRAY_VALUE,
        policy_proxy.UNKNOWN_ASSET_VALUE,
        policy_proxy.UNKNOWN_ARCHIVE_VALUE,
        policy_proxy.UNKNOWN_OBJECT_VALUE,
    }
)


class Unknown:
    """A value a preview does not know yet: it depends on a resource that does not exist so far."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = Unknown()


def plain(value: Any) -> Any:
    """`value` as dicts, lists and scalars: engine proxies and `Secret` wrappers gone, unknowns as UNKNOWN."""
    if isinstance(value, str):
        return UNKNOWN if value in _UNKNOWN_SENTINELS else value
    if isinstance(value, Secret):
        return plain(value.value)
    if isinstance(value, Mapping):
        return {key: _plain_item(value, key) for key in value}
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_plain_item(value, index) for index in range(len(value))]
    return value


def _plain_item(container: Any, key: Any) -> Any:
    try:
        return plain(container[key])
    except policy_proxy.UnknownValueError:
        return UNKNOWN


def describe(resource_type: str, name: str) -> str:
    """'digitalocean Firewall "us-firewall"': how a message names the resource."""
    package = resource_type.split(":", 1)[0]
    kind = resource_type.rsplit(":", 1)[-1]
    return f'{package} {kind} "{name}"'


def _report_all(args: ResourceValidationArgs, report_violation: ReportViolation, problems: Sequence[str]) -> None:
    for problem in problems:
        report_violation(f"{describe(args.resource_type, args.name)}: {problem}", None)


# --- SSH is not open to the world ---------------------------------------------------------------------------


def ports_include(spec: Any, port: int) -> bool | None:
    """Whether a provider's port list ("22", "8000-9000", "80, 443", "1-65535") includes `port`.

    An absent or empty list means every port (Linode; DigitalOcean's API spells that "0" or "all").
    None when the list is not known yet.
    """
    if spec is UNKNOWN:
        return None
    text = "" if spec is None else str(spec).strip().lower()
    if text in {"", "0", "all"}:
        return True
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            if (int(low) <= port <= int(high)) if dash else int(low) == port:
                return True
        except ValueError:
            continue
    return False


def world_sources(sources: Any) -> list[str]:
    """The sources that stand for every address: any CIDR with a /0 prefix (0.0.0.0/0, ::/0)."""
    if not isinstance(sources, list):
        return []
    world = []
    for source in sources:
        if not isinstance(source, str):
            continue
        try:
            network = ipaddress.ip_network(source.strip(), strict=False)
        except ValueError:
            continue
        if network.prefixlen == 0:
            world.append(source)
    return world


def _ssh_message(setting: str, world: Sequence[str], ports: Any) -> str:
    return (
        f"{setting} admits SSH (tcp port {SSH_PORT}, ports {ports!r}) from {', '.join(world)}; "
        "allow port 22 from your admin network (plex-cdn:admin.cidr) and deploying machines "
        "(plex-cdn:admin.deployFrom) only"
    )


def digitalocean_ssh_exposures(props: Mapping[str, Any]) -> list[str]:
    """Inbound rules of a DigitalOcean firewall that let anyone reach port 22."""
    rules = props.get("inboundRules")
    problems: list[str] = []
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        action = rule.get("action")
        if isinstance(action, str) and action.lower() != "allow":
            continue
        protocol = rule.get("protocol")
        if not isinstance(protocol, str) or protocol.lower() != "tcp":
            continue
        if not ports_include(rule.get("portRange"), SSH_PORT):
            continue
        world = world_sources(rule.get("sourceAddresses"))
        if world:
            problems.append(_ssh_message(f"inbound_rules[{index}].source_addresses", world, rule.get("portRange")))
    return problems


def linode_ssh_exposures(props: Mapping[str, Any]) -> list[str]:
    """Inbound rules (and a default ACCEPT policy) of a Linode firewall that let anyone reach port 22."""
    problems: list[str] = []
    inbound_policy = props.get("inboundPolicy")
    if isinstance(inbound_policy, str) and inbound_policy.upper() == "ACCEPT":
        problems.append(
            "inbound_policy is ACCEPT, so every port no rule drops, SSH included, is open to anyone; "
            "use DROP and accept port 22 from your admin network only"
        )
    rules = props.get("inbounds")
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        action = rule.get("action")
        if not isinstance(action, str) or action.upper() != "ACCEPT":
            continue
        protocol = rule.get("protocol")
        # "6" is TCP's protocol number, which Linode accepts in place of the name.
        if not isinstance(protocol, str) or protocol.upper() not in {"TCP", "ALL", "6"}:
            continue
        if not ports_include(rule.get("ports"), SSH_PORT):
            continue
        for family in ("ipv4s", "ipv6s"):
            world = world_sources(rule.get(family))
            if world:
                problems.append(_ssh_message(f"inbounds[{index}].{family}", world, rule.get("ports")))
    return problems


def validate_ssh_not_open_to_world(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type == DIGITALOCEAN_FIREWALL:
        _report_all(args, report_violation, digitalocean_ssh_exposures(plain(args.props)))
    elif args.resource_type == LINODE_FIREWALL:
        _report_all(args, report_violation, linode_ssh_exposures(plain(args.props)))


# --- POP VMs stay under a monthly cost ceiling --------------------------------------------------------------

# resource type -> (provider as plexcdn.regions names it, engine property, setting as the program writes it)
_VM_SIZES: Final = {DROPLET: ("digitalocean", "size", "size"), LINODE_INSTANCE: ("linode", "type", "type")}


# Transcode slaves and library peers are VMs of their own kinds: no certificates, and sizes chosen for CPU or
# disk, not for relaying.
NON_POP_TAGS: Final = ("plex-cdn-transcode", "plex-cdn-library")


def is_pop_vm(resource_type: str, props: Mapping[str, Any]) -> bool:
    tags = props.get("tags") or []
    return resource_type in _VM_SIZES and not any(tag in tags for tag in NON_POP_TAGS)


def cost_problem(resource_type: str, props: Mapping[str, Any], price_lookup: PriceLookup, ceiling: float) -> str | None:
    if not is_pop_vm(resource_type, props):
        return None
    provider, prop, setting = _VM_SIZES[resource_type]
    size = props.get(prop)
    if not isinstance(size, str):
        return None
    price = price_lookup(provider, size)
    if price is None:
        return (
            f"{setting} {size!r} has no price in plex-cdn's table (plexcdn/regions.py), so the ceiling of "
            f"${ceiling:g}/month cannot be checked; add the size there"
        )
    if price > ceiling:
        return (
            f"{setting} {size!r} costs ${price:g}/month, above the ceiling of ${ceiling:g}/month "
            "(policy config maxMonthlyUsdPerVm)"
        )
    return None


def cost_ceiling_validator(price_lookup: PriceLookup) -> ResourceValidation:
    def validate_vm_cost_ceiling(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        ceiling = float(args.get_config().get("maxMonthlyUsdPerVm", DEFAULT_MAX_MONTHLY_USD_PER_VM))
        problem = cost_problem(args.resource_type, plain(args.props), price_lookup, ceiling)
        _report_all(args, report_violation, [problem] if problem else [])

    return validate_vm_cost_ceiling


def no_price_table(_provider: str, _size: str) -> float | None:
    """The lookup when plexcdn.regions cannot be imported: every size is unpriced, so every VM is reported."""
    return None


def regions_price_lookup() -> PriceLookup:
    """Prices from plexcdn.regions (`monthly_price_usd(provider, size)`, KeyError for an unknown size)."""
    try:
        from plexcdn import regions
    except ImportError:
        return no_price_table

    def lookup(provider: str, size: str) -> float | None:
        try:
            return float(regions.monthly_price_usd(provider, size))
        except KeyError:
            return None

    return lookup


# --- the stack's ACME server --------------------------------------------------------------------------------


_SHA1_HEX: Final = re.compile(r"[0-9a-f]{40}")


def expected_acme_server(stack: str, production_stacks: Sequence[str]) -> str:
    return "production" if stack in production_stacks else "staging"


def user_data_texts(resource_type: str, props: Mapping[str, Any]) -> list[tuple[str, str | Unknown | None]]:
    """(setting, text) for each user_data of a VM; text is UNKNOWN during some previews, None if undecodable."""
    if resource_type == DROPLET:
        value = props.get("userData")
        if value is None:
            return []
        return [("user_data", value if isinstance(value, str | Unknown) else str(value))]
    if resource_type != LINODE_INSTANCE:
        return []
    metadatas = props.get("metadatas")
    if metadatas is UNKNOWN:
        return [("metadatas", UNKNOWN)]
    texts: list[tuple[str, str | Unknown | None]] = []
    for index, metadata in enumerate(metadatas if isinstance(metadatas, list) else []):
        setting = f"metadatas[{index}].user_data"
        encoded = metadata.get("userData") if isinstance(metadata, dict) else metadata
        if encoded is None:
            continue
        if isinstance(encoded, Unknown):
            texts.append((setting, UNKNOWN))
            continue
        try:
            texts.append((setting, base64.b64decode(str(encoded), validate=True).decode()))
        except (binascii.Error, UnicodeDecodeError):
            texts.append((setting, None))
    return texts


def acme_problems(
    resource_type: str, props: Mapping[str, Any], stack: str, production_stacks: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(problems, why some user_data could not be read) for the ACME directory a VM's user_data names."""
    expected = expected_acme_server(stack, production_stacks)
    other = "staging" if expected == "production" else "production"
    problems: list[str] = []
    unreadable: list[str] = []
    if not is_pop_vm(resource_type, props):
        return problems, unreadable
    for setting, text in user_data_texts(resource_type, props):
        if isinstance(text, Unknown):
            unreadable.append(
                f"{setting} is not known during this preview (it is built from resources not created yet)"
            )
        elif _SHA1_HEX.fullmatch(text or ""):
            # DigitalOcean's provider keeps only user_data's SHA-1 in state; should one ever hand that over,
            # the policy must not mistake it for user_data without an ACME directory.
            unreadable.append(f"{setting} arrives as a SHA-1 hash of its text")
        elif text is None:
            problems.append(f"{setting} is not base64 text, so the ACME directory in it cannot be read")
        elif ACME_DIRECTORIES[other] in text:
            problems.append(
                f"{setting} points certbot at Let's Encrypt's {other} server ({ACME_DIRECTORIES[other]}), "
                f"but stack {stack!r} must use {expected} ({ACME_DIRECTORIES[expected]}): set plex-cdn:acme.server"
            )
        elif ACME_DIRECTORIES[expected] not in text:
            problems.append(
                f"{setting} names no ACME directory; stack {stack!r} must use {expected} ({ACME_DIRECTORIES[expected]})"
            )
    return problems, unreadable


def acme_validator(stack_name: Callable[[], str]) -> ResourceValidation:
    """The ACME check; the stack name comes from policy config `stack` if set, else from `stack_name()`."""

    def validate_acme_server_matches_stack(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        config = args.get_config()
        stack = str(config.get("stack") or stack_name())
        production_stacks = [str(s) for s in config.get("productionStacks", DEFAULT_PRODUCTION_STACKS)]
        problems, unreadable = acme_problems(args.resource_type, plain(args.props), stack, production_stacks)
        _report_all(args, report_violation, problems)
        if unreadable and not problems:
            args.not_applicable(
                f"{describe(args.resource_type, args.name)}: {'; '.join(unreadable)}, so its ACME directory "
                "cannot be read now; `pulumi up` checks it again before creating the VM"
            )

    return validate_acme_server_matches_stack


# --- VMs ignore changes to user_data ------------------------------------------------------------------------

# resource type -> (setting as the program writes it, engine property path that must be covered)
_USER_DATA_PATHS: Final = {
    DROPLET: ("user_data", ("userData",)),
    LINODE_INSTANCE: ("metadatas (Linode's user_data)", ("metadatas", "*", "userData")),
}
_PATH_PART = re.compile(r'\[(\d+|\*|"[^"]*")\]|([^.\[\]]+)')


def property_path(path: str) -> tuple[str, ...]:
    """'metadatas[0].userData' -> ('metadatas', '0', 'userData'); also '*', '[*]' and '["key"]'."""
    parts = []
    for match in _PATH_PART.finditer(path):
        index, name = match.groups()
        parts.append(name if name is not None else index.strip('"'))
    return tuple(parts)


def path_covers(ignored: str, target: tuple[str, ...]) -> bool:
    """Whether ignoring `ignored` ignores every change at `target` ('*' in target: any list element)."""
    parts = property_path(ignored)
    if not parts or len(parts) > len(target):
        return False
    for part, wanted in zip(parts, target, strict=False):
        if part == "*":
            continue
        # Linode allows one metadata block, so ignoring element 0 ignores the only user_data there is.
        if wanted == "*" and part.isdigit():
            continue
        if part != wanted:
            return False
    return True


def ignore_changes_problem(resource_type: str, ignore_changes: Sequence[str]) -> str | None:
    if resource_type not in _USER_DATA_PATHS:
        return None
    setting, target = _USER_DATA_PATHS[resource_type]
    if any(path_covers(path, target) for path in ignore_changes):
        return None
    listed = ", ".join(ignore_changes) if ignore_changes else "nothing"
    return (
        f"ignore_changes must include {setting}, but lists {listed}: user_data is read on first boot only, "
        "and a change to it would replace or rebuild the running VM"
    )


def validate_vm_ignores_user_data_changes(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    problem = ignore_changes_problem(args.resource_type, list(args.opts.ignore_changes or []))
    _report_all(args, report_violation, [problem] if problem else [])


# --- secret-bearing inputs are secret -----------------------------------------------------------------------

_CONNECTION_SECRETS: Final = tuple(
    ("connection", *path)
    for path in (
        ("privateKey",),
        ("password",),
        ("privateKeyPassword",),
        ("proxy", "privateKey"),
        ("proxy", "password"),
        ("proxy", "privateKeyPassword"),
    )
)
SECRET_INPUTS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    # user_data carries the certbot user's AWS secret access key.
    DROPLET: (("userData",),),
    LINODE_INSTANCE: (("metadatas", "*", "userData"),),
    # plex-cdn feeds private keys (peer client key, WireGuard config) to deploy scripts on stdin.
    REMOTE_COMMAND: (*_CONNECTION_SECRETS, ("stdin",)),
    COPY_TO_REMOTE: _CONNECTION_SECRETS,
}


def _unproxied(value: Any) -> Any:
    # The remediation proxies unwrap Secret on every read; their "__target" holds the values with the markers.
    if isinstance(value, policy_secret._DictSecretsProxy | policy_secret._ListSecretsProxy):
        return value["__target"]
    return value


def _display(trail: Sequence[str]) -> str:
    text = ""
    for part in trail:
        text += f"[{part}]" if part.isdigit() else f".{part}" if text else part
    return text


def _with_secret(value: Any, path: tuple[str, ...], trail: tuple[str, ...], marked: list[str]) -> Any:
    """`value` with the input at `path` wrapped in Secret, unless it or a value around it already is."""
    value = _unproxied(value)
    if isinstance(value, Secret) or value is None:
        return value
    if not path:
        marked.append(_display(trail))
        return Secret(value)
    head, rest = path[0], path[1:]
    if head == "*":
        if not isinstance(value, list):
            return value
        return [_with_secret(item, rest, (*trail, str(index)), marked) for index, item in enumerate(value)]
    if not isinstance(value, Mapping) or head not in value:
        return value
    updated = dict(value)
    updated[head] = _with_secret(value[head], rest, (*trail, head), marked)
    return updated


def secret_inputs_marked(resource_type: str, raw_props: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(inputs with every secret-bearing one wrapped in Secret, the settings that were not secret before).

    `raw_props` must still carry the secret markers: pulumi-policy's `Secret` wrappers, as the remediation
    path deserialises them.
    """
    props: dict[str, Any] = dict(_unproxied(raw_props))
    marked: list[str] = []
    for path in SECRET_INPUTS.get(resource_type, ()):
        props = _with_secret(props, path, (), marked)
    return props, marked


def props_with_secret_markers(props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The inputs with their secret markers, or None where the SDK has already unwrapped them (validation)."""
    if isinstance(props, policy_secret._DictSecretsProxy):
        return cast(Mapping[str, Any], props["__target"])
    if isinstance(props, dict):
        return props
    return None


def remediate_secret_inputs(args: ResourceValidationArgs) -> Mapping[str, Any] | None:
    """New inputs with unmarked secret-bearing inputs made secret; None when there is nothing to change."""
    raw = props_with_secret_markers(args.props)
    if raw is None:
        return None
    props, marked = secret_inputs_marked(args.resource_type, raw)
    return props if marked else None


# --- the pack -----------------------------------------------------------------------------------------------


def build_policies(price_lookup: PriceLookup, stack_name: Callable[[], str]) -> list[Policy]:
    return [
        ResourceValidationPolicy(
            name="ssh-not-open-to-the-world",
            description="POP firewalls accept SSH (port 22) only from the admin network, never from 0.0.0.0/0 or ::/0.",
            validate=validate_ssh_not_open_to_world,
            enforcement_level=EnforcementLevel.MANDATORY,
            severity=Severity.HIGH,
        ),
        ResourceValidationPolicy(
            name="pop-vm-monthly-cost-ceiling",
            description="No POP VM size costs more a month than maxMonthlyUsdPerVm (plex-cdn's price table).",
            validate=cost_ceiling_validator(price_lookup),
            enforcement_level=EnforcementLevel.MANDATORY,
            severity=Severity.MEDIUM,
            config_schema=PolicyConfigSchema(
                properties={
                    "maxMonthlyUsdPerVm": {
                        "type": "number",
                        "minimum": 0,
                        "default": DEFAULT_MAX_MONTHLY_USD_PER_VM,
                    }
                }
            ),
        ),
        ResourceValidationPolicy(
            name="acme-server-matches-stack",
            description="Production stacks use Let's Encrypt's production ACME server, every other stack staging.",
            validate=acme_validator(stack_name),
            enforcement_level=EnforcementLevel.MANDATORY,
            severity=Severity.HIGH,
            config_schema=PolicyConfigSchema(
                properties={
                    "productionStacks": {
                        "type": "array",
                        "items": {"type": "string"},
                        "default": list(DEFAULT_PRODUCTION_STACKS),
                    },
                    "stack": {"type": "string"},
                }
            ),
        ),
        ResourceValidationPolicy(
            name="vm-ignores-user-data-changes",
            description="Every VM ignores changes to its first-boot user_data, so a config change never replaces it.",
            validate=validate_vm_ignores_user_data_changes,
            enforcement_level=EnforcementLevel.MANDATORY,
            severity=Severity.HIGH,
        ),
        ResourceValidationPolicy(
            name="secret-inputs-are-secret",
            description="VM user_data and SSH credentials of remote commands are Pulumi secrets.",
            remediate=cast(ResourceRemediation, remediate_secret_inputs),
            enforcement_level=EnforcementLevel.REMEDIATE,
            severity=Severity.CRITICAL,
        ),
    ]
