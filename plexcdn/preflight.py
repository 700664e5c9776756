"""`python -m plexcdn preflight STACK_FILE`: what only the accounts know, asked before `pulumi up`.

`validate` checks a stack against plex-cdn's own tables; this asks the providers whether the stack can be
made today: the image, regions and sizes exist and take new VMs, the Route53 zone exists and holds nothing
that would block the records `pulumi up` creates, the certbot IAM user's name is free, and the accounts'
limits leave room for the VMs. A failure in the middle of `up` leaves a half-made stack; a failure here
leaves nothing.

With an address for the deploying machine it also checks that machine can reach what `up` logs in to: the
VMs' firewalls admit SSH from `admin.cidr` and `admin.deployFrom` only, and machines at home are reachable
only from inside the home network.

Every check is a read; a provider without credentials is skipped and listed as not checked.
"""

from __future__ import annotations

import ipaddress
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import boto3

from plexcdn import regions
from plexcdn.config import StackConfig
from plexcdn.inventory import CloudVm, certbot_user_name, cloud_vms, home_hosts
from plexcdn.provider_apis import (
    DIGITALOCEAN_API,
    DIGITALOCEAN_API_ENV,
    DIGITALOCEAN_TOKEN_ENVS,
    LINODE_API,
    LINODE_API_ENV,
    LINODE_TOKEN_ENV,
    AwsApi,
    AwsFacts,
    DigitalOceanApi,
    DigitalOceanFacts,
    LinodeApi,
    LinodeFacts,
    LinodeImage,
    ProviderError,
    RecordSet,
)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Answers with the caller's public address as plain text; run by AWS, whose API the stack already uses.
CHECKIP_URL: Final = "https://checkip.amazonaws.com"
DEPLOY_ADDRESS_ENV: Final = "PLEXCDN_DEPLOY_ADDRESS"
# GitHub sets this in every job: github-hosted or self-hosted.
RUNNER_ENVIRONMENT_ENV: Final = "RUNNER_ENVIRONMENT"

STACK_TAG: Final = "plex-cdn:stack"  # the certbot IAM user's tag naming its stack (components/certbot_user.py)
CHALLENGE_PREFIX: Final = "_acme-challenge."
# What each Linode region must offer: the VM, its first-boot user data and its firewall.
LINODE_CAPABILITIES: Final = {
    "Linodes": "Linodes cannot be created there",
    "Metadata": "the Metadata service is what hands a new Linode its first-boot user data (cloud-init)",
    "Cloud Firewall": "every Linode plex-cdn makes sits behind a Cloud Firewall",
}
DIGITALOCEAN_FEATURES: Final = {
    "metadata": "the metadata service is what hands a new Droplet its first-boot user data (cloud-init)",
    "ipv6": "every Droplet plex-cdn makes gets an IPv6 address (the POPs' AAAA records)",
}
LISTED: Final = 8  # alternatives named in one line


@dataclass(frozen=True)
class Finding:
    setting: str
    message: str

    @property
    def line(self) -> str:
        return f"{self.setting}: {self.message}"


@dataclass
class Report:
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, setting: str, message: str) -> None:
        self.problems.append(Finding(setting, message))

    def warn(self, setting: str, message: str) -> None:
        self.warnings.append(Finding(setting, message))


@dataclass(frozen=True)
class DeployOrigin:
    """The machine about to run `pulumi up`: its public address, and whether it is a GitHub-hosted runner."""

    address: IpAddress | None
    hosted_runner: bool


@dataclass(frozen=True)
class Accounts:
    """What each provider told, or None where it was not asked."""

    digitalocean: DigitalOceanFacts | None = None
    linode: LinodeFacts | None = None
    aws: AwsFacts | None = None


def _some(values: Iterable[str]) -> str:
    return _listed(sorted(set(values)))


def _listed(ordered: Sequence[str]) -> str:
    if not ordered:
        return "none"
    more = len(ordered) - LISTED
    return ", ".join(ordered[:LISTED]) + (f" and {more} more" if more > 0 else "")


def _nearest(vm: CloudVm, regions_offered: Iterable[str]) -> str:
    """Other regions, the closest to the one configured first (alphabetical where plex-cdn has no coordinates)."""
    table = regions.provider_table(vm.provider).regions
    candidates = sorted(set(regions_offered) - {vm.region})
    here = table.get(vm.region)
    if here is not None:
        candidates.sort(
            key=lambda slug: (
                regions.distance_km((here.latitude, here.longitude), (table[slug].latitude, table[slug].longitude))
                if slug in table
                else float("inf")
            )
        )
    return _listed(candidates)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _settings(vms: Sequence[CloudVm]) -> str:
    return ", ".join(vm.describe() for vm in vms)


# --- DigitalOcean -------------------------------------------------------------------------------------------


def check_digitalocean(vms: Sequence[CloudVm], facts: DigitalOceanFacts, report: Report) -> None:
    table = regions.provider_table("digitalocean")
    image_slug = table.image
    image = facts.images.get(image_slug)
    if image is None or image.status != "available":
        debian = [slug for slug, found in facts.images.items() if found.distribution == "Debian"]
        report.problem(
            "digitalocean image",
            f"plex-cdn creates Droplets from {image_slug} (plexcdn/regions.py), which DigitalOcean no longer "
            f"offers{'' if image is None else f' ({image.status})'}; its Debian images now: {_some(debian)}. "
            "Update plex-cdn before pulumi up",
        )
        image = None
    for vm in vms:
        region = facts.regions.get(vm.region)
        usable = [
            slug
            for slug, found in facts.regions.items()
            if found.available and set(DIGITALOCEAN_FEATURES) <= found.features and slug in table.regions
        ]
        if region is None:
            report.problem(
                f"{vm.setting}.region",
                f"DigitalOcean has no region {vm.region!r} now; regions that take new Droplets: {_nearest(vm, usable)}",
            )
        elif not region.available:
            report.problem(
                f"{vm.setting}.region",
                f"DigitalOcean's {vm.region} ({region.name}) takes no new Droplets now; nearest that do: "
                f"{_nearest(vm, usable)}",
            )
        else:
            for feature, why in DIGITALOCEAN_FEATURES.items():
                if feature not in region.features:
                    report.problem(
                        f"{vm.setting}.region",
                        f"DigitalOcean's {vm.region} has no {feature}, and {why}; nearest regions with it: "
                        f"{_nearest(vm, usable)}",
                    )
            if image is not None and vm.region not in image.regions:
                report.problem(
                    f"{vm.setting}.region",
                    f"DigitalOcean does not offer {image_slug} in {vm.region}; regions with it: "
                    f"{_nearest(vm, set(image.regions) & set(usable))}",
                )
        size = facts.sizes.get(vm.size)
        offered_here = [
            slug
            for slug in table.sizes
            if slug in facts.sizes and facts.sizes[slug].available and (region is None or slug in region.sizes)
        ]
        if size is None or not size.available:
            report.problem(
                f"{vm.setting}.size",
                f"DigitalOcean offers no size {vm.size!r} now; sizes plex-cdn knows that it offers: "
                f"{_some(offered_here)}",
            )
        elif region is not None and region.available and vm.size not in region.sizes:
            report.problem(
                f"{vm.setting}.size",
                f"{vm.size} cannot be created in {vm.region} now; sizes plex-cdn knows that it offers there: "
                f"{_some(offered_here)}",
            )
    _check_droplet_limit(vms, facts, report)
    report.checked.append(
        f"digitalocean: image {image_slug}; {', '.join(f'{vm.setting} {vm.region}/{vm.size}' for vm in vms)}"
    )


def _check_droplet_limit(vms: Sequence[CloudVm], facts: DigitalOceanFacts, report: Report) -> None:
    account = facts.account
    if account.status == "locked":
        report.problem("digitalocean account", f"is locked: {account.status_message or 'see the control panel'}")
    elif account.status == "warning":
        report.warn("digitalocean account", f"has a warning: {account.status_message or 'see the control panel'}")
    if not account.email_verified:
        report.warn("digitalocean account", "its email address is not verified yet")
    existing = {droplet.label for droplet in facts.droplets}
    new = [vm for vm in vms if vm.label not in existing]
    count = len(facts.droplets)
    if count + len(new) > account.droplet_limit:
        report.problem(
            "digitalocean account",
            f"may have {plural(account.droplet_limit, 'Droplet')} and has {count}; this stack needs {len(new)} more "
            f"({_settings(new)}): delete Droplets you no longer use or ask DigitalOcean to raise the Droplet limit",
        )
    else:
        report.checked.append(
            f"digitalocean account: {count} of {account.droplet_limit} Droplets in use, this stack adds {len(new)}"
        )


# --- Linode -------------------------------------------------------------------------------------------------


def _check_linode_image(image_id: str, image: LinodeImage | None, report: Report) -> None:
    if image is None:
        report.problem(
            "linode image",
            f"plex-cdn creates Linodes from {image_id} (plexcdn/regions.py), which Linode no longer offers; "
            "update plex-cdn before pulumi up",
        )
        return
    if image.status != "available":
        report.problem("linode image", f"{image_id} is {image.status or 'not available'} at Linode now")
    if "cloud-init" not in image.capabilities:
        report.problem(
            "linode image",
            f"{image_id} lacks Linode's cloud-init capability: its Linodes would never receive their user data",
        )
    if image.deprecated:
        eol = f" (end of life {image.eol})" if image.eol else ""
        report.warn("linode image", f"Linode marks {image_id} deprecated{eol}: update plex-cdn soon")


def _check_linode_region(vm: CloudVm, facts: LinodeFacts, usable: Sequence[str], report: Report) -> None:
    region = facts.regions.get(vm.region)
    if region is None:
        report.problem(
            f"{vm.setting}.region",
            f"Linode has no region {vm.region!r} now; regions with Linodes, Metadata and Cloud Firewalls: "
            f"{_nearest(vm, usable)}",
        )
        return
    for capability, why in LINODE_CAPABILITIES.items():
        if capability not in region.capabilities:
            report.problem(
                f"{vm.setting}.region",
                f"Linode's {vm.region} ({region.label}) has no {capability}, and {why}; nearest regions with "
                f"Linodes, Metadata and Cloud Firewalls: {_nearest(vm, usable)}",
            )
    if region.status != "ok":
        report.warn(f"{vm.setting}.region", f"Linode reports {vm.region} as {region.status!r}: creating may fail now")
    if "Linodes" in (facts.account_unavailable or {}).get(vm.region, frozenset()):
        report.problem(
            f"{vm.setting}.region",
            f"this Linode account may not create Linodes in {vm.region} (GET /account/availability); choose "
            f"one of {_nearest(vm, usable)}",
        )


def _check_linode_plan(vm: CloudVm, facts: LinodeFacts, report: Report) -> None:
    plan = facts.types.get(vm.size)
    if plan is None:
        offered = [slug for slug in regions.provider_table("linode").sizes if slug in facts.types]
        report.problem(
            f"{vm.setting}.size",
            f"Linode offers no plan {vm.size!r} now; plans plex-cdn knows that it offers: {_some(offered)}",
        )
        return
    if plan.successor:
        report.warn(f"{vm.setting}.size", f"Linode is retiring {vm.size} in favour of {plan.successor}")
    if facts.plan_availability.get((vm.region, vm.size)) is False:
        report.problem(f"{vm.setting}.size", f"{vm.size} is sold out in {vm.region} now; choose another plan")


def check_linode(vms: Sequence[CloudVm], facts: LinodeFacts, report: Report) -> None:
    table = regions.provider_table("linode")
    _check_linode_image(table.image, facts.images.get(table.image), report)
    usable = [
        region_id
        for region_id, found in facts.regions.items()
        if set(LINODE_CAPABILITIES) <= found.capabilities and region_id in table.regions
    ]
    for vm in vms:
        _check_linode_region(vm, facts, usable, report)
        _check_linode_plan(vm, facts, report)
    report.checked.append(
        f"linode: image {table.image}; {', '.join(f'{vm.setting} {vm.region}/{vm.size}' for vm in vms)}"
    )
    existing = {instance.label for instance in facts.instances}
    new = sum(1 for vm in vms if vm.label not in existing)
    report.not_checked.append(
        f"linode account: room for {new} more (Linode's API exposes no limit on the number of Linodes; "
        f"{plural(len(facts.instances), 'Linode')} on the account now)"
    )
    report.not_checked.extend(facts.gaps)


# --- Route53 and IAM ----------------------------------------------------------------------------------------


def _owned_addresses(config: StackConfig, accounts: Accounts) -> Callable[[str], frozenset[str] | None]:
    """A POP's addresses as the providers list them: empty when its VM does not exist, None when unknown."""
    listed = {}
    if accounts.digitalocean is not None:
        listed["digitalocean"] = {vm.label: vm.addresses for vm in accounts.digitalocean.droplets}
    if accounts.linode is not None:
        listed["linode"] = {vm.label: vm.addresses for vm in accounts.linode.instances}
    labels = {vm.name: vm for vm in cloud_vms(config) if vm.kind == "POP"}

    def owned(pop: str) -> frozenset[str] | None:
        vm = labels[pop]
        if vm.provider not in listed:
            return None
        return listed[vm.provider].get(vm.label, frozenset())

    return owned


def _values(record: RecordSet) -> str:
    return ", ".join(record.values) or "no values"


def _is_ours(record: RecordSet, owned: frozenset[str] | None) -> bool | None:
    if owned is None:
        return None
    return bool(owned) and bool(record.values) and set(record.values) <= owned


def check_dns(config: StackConfig, facts: AwsFacts, accounts: Accounts, report: Report) -> None:
    public = [zone for zone in facts.zones if not zone.private]
    if not public:
        private = " (there is a private zone of that name, which viewers cannot resolve)" if facts.zones else ""
        report.problem(
            "domain",
            f"this AWS account has no public Route53 hosted zone named {config.domain}{private}: create it and "
            "delegate the domain to its name servers, or set domain to a zone you have",
        )
        return
    if len(public) > 1:
        report.problem(
            "domain",
            f"{len(public)} public hosted zones are named {config.domain} ({', '.join(z.id for z in public)}); "
            "pulumi up looks the zone up by name and needs exactly one: delete the ones you do not use",
        )
        return
    owned = _owned_addresses(config, accounts)
    pop_names = {config.pop_name(pop.name): (index, pop.name) for index, pop in enumerate(config.pops)}
    pop_index = {pop.name: index for index, pop in enumerate(config.pops)}
    challenges = {
        CHALLENGE_PREFIX + name: (
            "sharedHostname" if name == config.shared_name else f"pops[{pop_names[name][0]}].name"
        )
        for name in config.all_certificate_names()
    }
    for record in facts.records:
        if record.name == config.shared_name:
            _check_shared_record(config, record, pop_index, owned, report)
        elif record.name in pop_names:
            index, pop = pop_names[record.name]
            _check_own_record(record, f"pops[{index}].name", owned(pop), report)
        elif record.name in challenges and record.type == "CNAME":
            report.problem(
                challenges[record.name],
                f"{record.name} is a CNAME ({_values(record)}): certbot writes its DNS-01 TXT record at that name "
                "and Route53 refuses it beside a CNAME; delete the CNAME",
            )
    report.checked.append(
        f"route53: zone {config.domain} ({public[0].id}), {len(facts.records)} record sets, names "
        f"{config.shared_name} and {', '.join(sorted(pop_names))}"
    )


def _check_shared_record(
    config: StackConfig,
    record: RecordSet,
    pop_index: Mapping[str, int],
    owned: Callable[[str], frozenset[str] | None],
    report: Report,
) -> None:
    name = config.shared_name
    if record.type == "CNAME":
        report.problem(
            "sharedHostname",
            f"{name} is a CNAME ({_values(record)}): no other record may sit beside one, so the latency records "
            "cannot be made; delete it or choose another sharedHostname",
        )
        return
    if record.type not in ("A", "AAAA"):
        return
    if record.routing != "latency":
        report.problem(
            "sharedHostname",
            f"{name} already has a {record.routing} {record.type} record ({_values(record)}), not latency-routed: "
            "Route53 refuses latency records beside it; delete it or choose another sharedHostname",
        )
        return
    pop = record.set_identifier or ""
    if pop not in pop_index:
        report.warn(
            "sharedHostname",
            f"{name} also has a latency {record.type} record {pop!r} ({record.region}: {_values(record)}) that is "
            f"not a POP of this stack: viewers nearest {record.region} are sent there",
        )
        return
    ours = _is_ours(record, owned(pop))
    if ours is None:
        report.notes.append(
            f"{name} has a latency {record.type} record {pop!r} ({_values(record)}); without the provider's "
            "credentials preflight cannot tell whether it is this stack's POP or another stack's"
        )
    elif not ours:
        report.problem(
            f"pops[{pop_index[pop]}].name",
            f"{name} already has a latency {record.type} record with set identifier {pop!r} ({_values(record)}) "
            f"that is not this stack's POP {pop!r}: another stack or a hand-made record uses that identifier; "
            "rename this POP or delete that record",
        )


def _check_own_record(record: RecordSet, setting: str, owned: frozenset[str] | None, report: Report) -> None:
    if record.type == "CNAME":
        report.problem(
            setting,
            f"{record.name} is a CNAME ({_values(record)}): pulumi up creates A and AAAA records there and "
            "Route53 refuses them beside a CNAME; delete it or rename the POP",
        )
        return
    if record.type not in ("A", "AAAA"):
        return
    ours = _is_ours(record, owned) if record.routing == "simple" else False
    if ours is None:
        report.notes.append(
            f"{record.name} has an {record.type} record ({_values(record)}); without the provider's credentials "
            "preflight cannot tell whether it is this stack's POP"
        )
    elif not ours:
        report.problem(
            setting,
            f"{record.name} already has a {record.routing} {record.type} record ({_values(record)}) that this stack "
            f"did not make: pulumi up creates its own {record.type} record there; delete that one or rename the POP",
        )


def check_iam(config: StackConfig, facts: AwsFacts, report: Report) -> None:
    name = certbot_user_name(config)
    user = facts.certbot_user
    if user is not None:
        if user.tags.get(STACK_TAG) != config.stack:
            report.problem(
                "stack",
                f"an IAM user named {name} exists that plex-cdn did not make for stack {config.stack!r} (no "
                f"{STACK_TAG}={config.stack} tag): pulumi up cannot create the certbot user beside it; delete that "
                "user or give the stack another name",
            )
        return
    if facts.users >= facts.users_quota:
        report.problem(
            "aws account",
            f"has {plural(facts.users, 'IAM user')} of the {facts.users_quota} it may have: pulumi up must create "
            f"{name}; delete an unused user or ask AWS to raise the quota",
        )
    else:
        report.checked.append(f"iam: user {name} is free; {facts.users} of {facts.users_quota} IAM users in use")


# --- where `pulumi up` runs from ----------------------------------------------------------------------------


def check_deploy_origin(config: StackConfig, origin: DeployOrigin, report: Report) -> None:
    """Whether the deploying machine can SSH to the VMs (their firewalls) and to the machines at home."""
    admin = config.admin
    admitted = [admin.cidr, *admin.deploy_from]
    if origin.address is None:
        report.not_checked.append(
            "deploy: whether this machine's address is admitted by the VMs' SSH rule (give --address or "
            "--detect-address)"
        )
    elif cloud_vms(config) and not any(origin.address in network for network in admitted):
        allowed = f"admin.cidr ({admin.cidr})" + (
            f" and admin.deployFrom ({', '.join(map(str, admin.deploy_from))})" if admin.deploy_from else ""
        )
        own_network = ipaddress.ip_network(origin.address)
        report.problem(
            "admin.deployFrom",
            f"this machine's address {origin.address} is outside {allowed}: every VM's firewall admits SSH from "
            f"those only, so pulumi up cannot reach the VMs from here; add {own_network} to plex-cdn:admin.deployFrom, "
            "or deploy from inside admin.cidr or from a self-hosted runner there (docs/ci.md)",
        )
    elif cloud_vms(config):
        report.checked.append(f"deploy: {origin.address} is admitted to SSH on every VM")
    for host in home_hosts(config):
        at_home = host.on_home_network
        if origin.hosted_runner and at_home:
            report.problem(
                host.setting,
                f"{host.host} ({host.what}) is an address on your home network, which a GitHub-hosted runner "
                "cannot reach: deploy this stack from a self-hosted runner inside your home network, or from a "
                "machine there (docs/ci.md)",
            )
        elif origin.hosted_runner:
            report.warn(
                host.setting,
                f"{host.host} ({host.what}) must accept SSH on port {host.port} from the GitHub-hosted runner, whose "
                "address changes on every run; a self-hosted runner inside your home network is the dependable "
                "way (docs/ci.md)",
            )
        elif at_home:
            report.notes.append(
                f"{host.setting}: {host.host} ({host.what}) is on a home network: pulumi up reaches it only from "
                "inside that network"
            )


def detect_public_address(url: str = CHECKIP_URL, timeout_s: float = 10.0) -> IpAddress:
    """This machine's public address, as a service on the internet sees it (asked only on request)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - an https URL of ours
        return ipaddress.ip_address(response.read(64).decode().strip())


# --- the run ------------------------------------------------------------------------------------------------


def _not_checked_digitalocean(vms: Sequence[CloudVm]) -> str:
    image = regions.provider_table("digitalocean").image
    return (
        f"digitalocean ({DIGITALOCEAN_TOKEN_ENVS[0]} is not set): image {image}, regions and sizes of "
        f"{', '.join(vm.setting for vm in vms)}, the Droplet limit"
    )


def gather(
    config: StackConfig,
    env: Mapping[str, str],
    report: Report,
    aws_session: Callable[[], boto3.Session] = boto3.Session,
) -> Accounts:
    """Ask each provider the stack uses, with the credentials the environment holds."""
    vms = cloud_vms(config)
    providers = {vm.provider for vm in vms}
    digitalocean: DigitalOceanFacts | None = None
    linode: LinodeFacts | None = None
    aws: AwsFacts | None = None
    if "digitalocean" in providers:
        token = next((env[name] for name in DIGITALOCEAN_TOKEN_ENVS if env.get(name)), None)
        if token is None:
            report.not_checked.append(_not_checked_digitalocean([vm for vm in vms if vm.provider == "digitalocean"]))
        else:
            try:
                digitalocean = DigitalOceanApi(token, env.get(DIGITALOCEAN_API_ENV) or DIGITALOCEAN_API).facts()
            except ProviderError as error:
                report.problem(error.credential, error.message)
    if "linode" in providers:
        token = env.get(LINODE_TOKEN_ENV)
        linode_vms = [vm for vm in vms if vm.provider == "linode"]
        if not token:
            report.not_checked.append(
                f"linode ({LINODE_TOKEN_ENV} is not set): image {regions.provider_table('linode').image}, regions "
                f"and plans of {', '.join(vm.setting for vm in linode_vms)}"
            )
        else:
            try:
                linode = LinodeApi(token, env.get(LINODE_API_ENV) or LINODE_API).facts(
                    [regions.provider_table("linode").image]
                )
            except ProviderError as error:
                report.problem(error.credential, error.message)
    session = aws_session()
    names = ", ".join([config.shared_name, *(config.pop_name(pop.name) for pop in config.pops)])
    if session.get_credentials() is None:
        report.not_checked.append(
            f"aws (no AWS credentials: AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY): the public hosted "
            f"zone {config.domain}, records at {names}, the IAM user {certbot_user_name(config)} and the IAM user quota"
        )
    else:
        try:
            aws = AwsApi(session).facts(config.domain, certbot_user_name(config))
        except ProviderError as error:
            report.problem(error.credential, error.message)
    return Accounts(digitalocean, linode, aws)


def check(config: StackConfig, accounts: Accounts, report: Report, origin: DeployOrigin | None = None) -> Report:
    """Every check the facts allow; the facts a provider did not give are already listed as not checked."""
    vms = cloud_vms(config)
    if accounts.digitalocean is not None:
        check_digitalocean([vm for vm in vms if vm.provider == "digitalocean"], accounts.digitalocean, report)
    if accounts.linode is not None:
        check_linode([vm for vm in vms if vm.provider == "linode"], accounts.linode, report)
    if accounts.aws is not None:
        check_dns(config, accounts.aws, accounts, report)
        check_iam(config, accounts.aws, report)
    if origin is not None:
        check_deploy_origin(config, origin, report)
    else:
        report.not_checked.append(
            "deploy: whether this machine can reach the VMs and the machines at home (give --address or "
            "--detect-address where pulumi up will run)"
        )
    return report


def run(
    config: StackConfig,
    env: Mapping[str, str],
    origin: DeployOrigin | None = None,
    aws_session: Callable[[], boto3.Session] = boto3.Session,
) -> Report:
    report = Report()
    accounts = gather(config, env, report, aws_session)
    return check(config, accounts, report, origin)
