"""The stack's configuration: parsed once, validated whole, frozen.

The same models serve the Pulumi program (values read from `pulumi.Config`) and the offline CLI (values read
from a `Pulumi.<stack>.yaml` file), so both reject exactly the same mistakes, and both report every problem at
once, each naming the setting and what would be valid.

Each setting is one field: its key (the camelCase alias of the attribute), its kind (plexcdn.setting_kinds:
how it is read and what its message says), its default and its description live there and nowhere else; the
JSON Schema and the reference in docs/stack-config.md are generated from the fields (plexcdn.stack_schema).
Rules between settings are methods marked `@rule`; they run with the fields, and when some fields are wrong,
the rules that need only the right ones still run, so one run reports everything.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo

from plexcdn import bounded_yaml, capacity, regions, topology, transfer
from plexcdn.setting_kinds import (
    ABSOLUTE_PATH_PATTERN,
    DNS_NAME_PATTERN,
    EMAIL_PATTERN,
    LABEL,
    PLEX_VERSION_PATTERN,
    SSH_MIN_PREFIX,
    SSH_PUBLIC_KEY_PATTERN,
    UNSAFE_TEXT,
    Amount,
    AnyNetwork,
    Boolean,
    Choice,
    Doc,
    Fraction,
    ListOf,
    Missing,
    Network,
    PrivateIPv4Subnet,
    Problem,
    Section,
    SshSource,
    Text,
    WholeNumber,
    absolute_dir_problem,
    host,
    is_hostname,
    machine_name,
    matches,
    one_of,
    shared_path_problem,
    shown,
    ssh_host_key,
    unix_user,
)
from plexcdn.settings_model import Settings, path_text, problem_lines, rule
from plexcdn.topology import ORIGIN
from plexcdn.transcode.layout import PLEX_HOME, SYSTEM_DIRS

NAMESPACE: Final = "plex-cdn"

ACME_DIRECTORIES: Final = {
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
    "production": "https://acme-v02.api.letsencrypt.org/directory",
}

# Secret settings: read by __main__ with require_secret, never part of the parsed model. A stack file holds
# them encrypted (`secure:`), so the offline CLI leaves them out instead of calling them unknown.
# The SSH key `pulumi up` logs in to machines at home with (the Plex server, host transcode slaves).
HOME_SSH_KEY: Final = "homeSshKey"
# Plex's own token (the server owner's X-Plex-Token), for stacks that do not manage the Plex host: `pulumi up`
# applies the Plex settings through a hub with it. Where the Plex host is managed, its token never leaves it.
PLEX_TOKEN: Final = "plexToken"  # noqa: S105 - the setting's name, not a token
SECRET_KEYS: Final = (HOME_SSH_KEY, PLEX_TOKEN)

HUB_DISTANCE_WARNING_KM: Final = 1500
# Fewer concurrent streams than this fitting their read-ahead into half a POP's memory is worth a warning.
STREAM_BUFFER_WARNING_STREAMS: Final = 10
DEPLOY_FROM_MAX: Final = 20
DEFAULT_LIBRARY_MOUNT: Final = "/mnt/plex-cdn-library"
# Where Plex's Debian/Ubuntu package keeps its app data (Preferences.xml, the database, the logs).
PLEX_APP_DATA_DIR: Final = "/var/lib/plexmediaserver/Library/Application Support/Plex Media Server"


class ConfigError(ValueError):
    """The stack configuration is invalid; `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid stack configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


def _conditional_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """What depends on another key, for editors: a VM's regions and sizes by provider, the keys of each kind of
    machine and of each role of library peer."""
    fields = model.model_fields

    def key(name: str) -> str:
        return fields[name].alias or name

    conditions: list[dict[str, Any]] = []
    if "provider" in fields:
        conditions.extend(
            {
                "if": {"properties": {key("provider"): {"const": name}}, "required": [key("provider")]},
                "then": {
                    "properties": {
                        key("region"): {
                            "enum": [slug for slug in table.regions if regions.serves_user_data(name, slug)]
                        },
                        key("size"): {"enum": list(table.sizes)},
                    }
                },
            }
            for name, table in sorted(regions.PROVIDERS.items())
        )
    only: Mapping[str, tuple[str, ...]] = getattr(model, "KIND_ONLY", {})
    for kind, names in only.items():
        others = [name for other, other_names in only.items() if other != kind for name in other_names]
        conditions.append(
            {
                "if": {"properties": {key("kind"): {"const": kind}}, "required": [key("kind")]},
                "then": {
                    "required": [key(name) for name in REQUIRED_FOR_KIND[kind]],
                    "properties": {key(name): False for name in others if name not in names},
                },
            }
        )
    refused = model.refused_fields() if issubclass(model, Settings) else ()
    if refused:
        then: dict[str, Any] = {"properties": {key(name): False for name in refused}}
        if getattr(model, "ROLE", None) == "seeder":
            then["required"] = [key("media_dir")]
        conditions.append(then)
    if conditions:
        schema["allOf"] = conditions


# --- the settings --------------------------------------------------------------------------------------------


DOMAIN = Text(
    "a DNS name such as example.com (your Route53 hosted zone)",
    is_hostname,
    normalize=lambda v: v.rstrip(".").lower(),
    pattern=DNS_NAME_PATTERN,
    max_length=253,
    valid="a DNS name",
)
SHARED_LABEL = Text(
    "one DNS label such as 'plex'",
    lambda v: len(v) <= 40 and matches(LABEL)(v),
    pattern=f"^{LABEL}$",
    max_length=40,
    valid="one DNS label, at most 40 characters",
)
EMAIL = Text("an email address such as you@example.com", matches(EMAIL_PATTERN), pattern=EMAIL_PATTERN)


class AcmeConfig(Settings):
    email: Annotated[str, EMAIL, Field(description="the Let's Encrypt account's address")]
    server: Annotated[
        Literal["staging", "production"],
        Choice(("staging", "production")),
        Field(
            description="staging certificates are not trusted by browsers but have generous rate limits: keep dev "
            "stacks on staging. Production allows 5 certificates per set of names a week. The policy pack requires "
            "`production` on the `prod` stack and `staging` elsewhere",
        ),
    ] = "staging"

    @property
    def directory_url(self) -> str:
        return ACME_DIRECTORIES[self.server]


PORT = WholeNumber(1, 65535)
WIREGUARD_PORT = WholeNumber(1024, 65535)
# Constants, not calls, in the annotations: a field named `host` would shadow a function of that name there.
HOST = host()
UNIX_USER = unix_user()
SSH_HOST_KEY = ssh_host_key()


class OriginAgent(Settings):
    """nginx and TCP tuning on the Plex host itself, managed over SSH: the hub's hop ends on the host."""

    listen_port: Annotated[
        int,
        PORT,
        Doc(valid="1 to 65535, not `origin.port`"),
        Field(description="where the agent's nginx takes the hubs' mutual-TLS connections"),
    ] = 32443
    ssh_host: Annotated[
        str,
        HOST,
        Doc(default="`origin.host`"),
        Field(description="where `pulumi up` reaches the Plex host over SSH"),
    ] = ""
    ssh_port: Annotated[int, PORT, Field(description="its SSH port")] = 22
    ssh_user: Annotated[str, UNIX_USER, Field(description="root, or a user with passwordless sudo")] = "root"
    apply_firewall: Annotated[
        bool,
        Boolean(),
        Field(
            description="apply the nftables rule admitting only the hubs to `listenPort` (it is exported as "
            "`originAgentFirewallRules` either way)"
        ),
    ] = False
    # Pinned: `pulumi up` sends secrets to this machine and no other.
    ssh_host_key: Annotated[
        str,
        SSH_HOST_KEY,
        Field(description="the Plex host's SSH host key, pinned: `pulumi up` sends secrets to that machine only"),
    ]


class Location(Settings):
    latitude: Annotated[float, Fraction(-90, 90), Field(description="degrees north")]
    longitude: Annotated[float, Fraction(-180, 180), Field(description="degrees east")]

    @property
    def point(self) -> tuple[float, float]:
        return (self.latitude, self.longitude)


class OriginConfig(Settings):
    host: Annotated[
        str,
        HOST,
        Field(
            description="where the hub reaches Plex (with `link: public` an address must be reachable from the "
            "internet)"
        ),
    ]
    port: Annotated[int, PORT, Field(description="Plex's port")] = 32400
    link: Annotated[
        Literal["public", "wireguard"],
        Choice(("public", "wireguard")),
        Field(
            description="`public`: the hub connects to `host:port` over the internet, verifying the certificate for "
            "`verifyName`. `wireguard`: the hub runs a WireGuard endpoint and your Plex host dials in with the "
            "`homeWireguardConfig` output (a secret); Plex sees viewers' real addresses. `wireguard` allows exactly "
            "one hub"
        ),
    ] = "public"
    verify_name: Annotated[
        str | None,
        Text(
            "the DNS name on the Plex server's certificate",
            is_hostname,
            pattern=DNS_NAME_PATTERN,
            max_length=253,
            valid="a DNS name",
        ),
        Field(
            description="the name on the Plex server's certificate (Settings > Network > Custom certificate, or the "
            "`*.plex.direct` name Plex shows). Without it the hub's hop is encrypted but not verified, and `validate` "
            "warns (unless the origin agent is set)"
        ),
    ] = None
    tunnel_subnet: Annotated[
        ipaddress.IPv4Network,
        PrivateIPv4Subnet("10.77.0.0/24"),
        Field(description="`wireguard` mode: the hub takes the first address, the Plex host the second"),
    ] = ipaddress.IPv4Network("10.77.0.0/24")
    wireguard_port: Annotated[int, WIREGUARD_PORT, Field(description="`wireguard` mode: the hub's WireGuard port")] = (
        51820
    )
    location: Annotated[
        Location | None,
        Field(
            description="where the Plex server is; `validate` warns when a hub is more than 1,500 km from it, with "
            "the round trip that costs and the provider's closest region"
        ),
    ] = None
    agent: Annotated[
        OriginAgent | None,
        Field(description="the [origin agent](origin-agent.md); needs `link: public`"),
    ] = None

    @property
    def hub_tunnel_address(self) -> ipaddress.IPv4Address:
        return self.tunnel_subnet.network_address + 1

    @property
    def home_tunnel_address(self) -> ipaddress.IPv4Address:
        return self.tunnel_subnet.network_address + 2

    @rule
    def _agent_needs_the_public_link(self) -> Iterator[Problem]:
        if self.agent is not None and self.link != "public":
            yield Problem(
                self.loc("agent"),
                "needs origin.link public: the agent is where the hub's TLS hop ends, on the Plex host itself; "
                "with wireguard the tunnel already gives Plex a private hop",
            )

    @rule
    def _agent_listens_beside_plex(self) -> Iterator[Problem]:
        if self.agent is not None and self.agent.listen_port == self.port:
            yield Problem(
                self.loc("agent", "listen_port"),
                f"must differ from origin.port ({self.port}), where Plex itself listens",
            )

    def _completed(self, info: ValidationInfo) -> Self:
        if self.agent is None or self.agent.ssh_host:
            return self
        return self.model_copy(update={"agent": self.agent.model_copy(update={"ssh_host": self.host})})


class AdminConfig(Settings):
    ssh_public_key: Annotated[
        str,
        Text(
            "an OpenSSH public key line (ssh-ed25519 AAAA... comment)",
            matches(SSH_PUBLIC_KEY_PATTERN),
            pattern=SSH_PUBLIC_KEY_PATTERN,
            valid="an OpenSSH public key line (`ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256/384/521`, "
            "`sk-ssh-ed25519@openssh.com`), its comment printable ASCII",
        ),
        Field(description="installed on every POP for you; `pulumi up` uses a deploy key of its own"),
    ]
    cidr: Annotated[
        Network,
        SshSource(
            "203.0.113.7/32",
            f"give your own address, e.g. 203.0.113.7/32 (at most a /{SSH_MIN_PREFIX[4]} or an IPv6 "
            f"/{SSH_MIN_PREFIX[6]})",
        ),
        Field(description="where you SSH from: port 22 is open to this network only"),
    ]
    # The machines that run `pulumi up` when they sit outside `cidr` (a CI runner with a fixed address).
    deploy_from: Annotated[
        tuple[
            Annotated[
                Network,
                SshSource(
                    "198.51.100.4/32",
                    f"list the deploying machines' own addresses (e.g. 198.51.100.4/32, at most a "
                    f"/{SSH_MIN_PREFIX[4]} or an IPv6 /{SSH_MIN_PREFIX[6]}), or deploy from a self-hosted runner "
                    "inside admin.cidr (docs/ci.md)",
                ),
            ],
            ...,
        ],
        ListOf(
            f"a list of at most {DEPLOY_FROM_MAX} networks in CIDR form, the public addresses of the machines that "
            "run `pulumi up` outside admin.cidr, e.g. [198.51.100.4/32]",
            min_items=0,
            max_items=DEPLOY_FROM_MAX,
            optional=True,
        ),
        Doc(valid=f"up to {DEPLOY_FROM_MAX} networks as for `cidr`"),
        Field(
            description="machines that run `pulumi up` from outside `cidr` (a CI runner with a fixed address, "
            "[ci.md](ci.md)): their port 22 is open too"
        ),
    ] = ()

    @property
    def ssh_sources(self) -> tuple[str, ...]:
        """The networks every VM's firewall admits on port 22: the admin's, then each deployFrom network."""
        return tuple(dict.fromkeys([str(self.cidr), *(str(network) for network in self.deploy_from)]))


class NginxSettings(Settings):
    viewer_http2: Annotated[bool, Boolean(), Field(description="HTTP/2 on the viewers' port 443")] = False
    stream_timeout_s: Annotated[
        int,
        WholeNumber(5, 86400),
        Field(alias="streamTimeoutSeconds", description="how long a stream or websocket may stay silent"),
    ] = 3600
    artwork_cache_mb: Annotated[
        int, WholeNumber(0, 100_000), Field(description="the artwork cache on each POP's disk; 0: no cache")
    ] = 512
    upstream_keepalive: Annotated[
        int,
        WholeNumber(1, 1024),
        Field(description="idle keepalive connections to the upstream, per nginx worker"),
    ] = 32
    max_body_mb: Annotated[
        int, WholeNumber(1, 10_000), Field(description="the largest request body (`client_max_body_size`)")
    ] = 100
    # Read-ahead per media response on each POP, in memory: it lets one leg keep sending while the next
    # pauses, where TCP flow control would otherwise stall the whole chain (and BBR's estimate with it).
    stream_buffer_mb: Annotated[
        int,
        WholeNumber(0, 256),
        Field(
            description="memory per media response on each POP for reading ahead of the next leg (in 8 KB "
            "buffers); 0: no read-ahead. `validate` warns when fewer than 10 streams' read-ahead would fill half a "
            "POP's memory"
        ),
    ] = 4


PROVIDER = Choice(sorted(regions.PROVIDERS))
REGION = Text(
    "a region slug such as nyc3",
    valid="a region of that provider, [below](#regions-and-sizes)",
    schema={"type": "string", "minLength": 1},
)
SIZE = Text(
    "a size slug such as s-1vcpu-1gb",
    valid="a size of that provider, [below](#regions-and-sizes)",
    schema={"type": "string", "minLength": 1},
)


def _no_user_data_message(provider: str, slug: str) -> str:
    region = regions.region(provider, slug)
    serving = [other for other in regions.provider_table(provider).regions if regions.serves_user_data(provider, other)]
    return (
        f"{provider} region {slug!r} ({region.city}) is not confirmed to serve Metadata, the service a new Linode "
        "reads its user data from, so this VM would boot without the cloud-init document that sets it up "
        f"({regions.LINODE_METADATA_SOURCE}, as of {regions.LINODE_METADATA_AS_OF}); use a region that serves it, "
        f"nearest: {regions.nearest_described(provider, slug, serving, lambda r: r.city)}"
    )


def vm_problems(model: Settings) -> Iterator[Problem]:
    """A cloud VM's region and size, each checked against its provider's table."""
    provider, region_slug, size_slug = model.provider, model.region, model.size  # type: ignore[attr-defined]
    table = regions.PROVIDERS[provider]
    if not region_slug:
        pass  # asked for where the kind's keys are
    elif region_slug not in table.regions:
        yield Problem(
            model.loc("region"), f"{shown(region_slug)} is not a {provider} region; use {one_of(sorted(table.regions))}"
        )
    elif not regions.serves_user_data(provider, region_slug):
        yield Problem(model.loc("region"), _no_user_data_message(provider, region_slug))
    if size_slug and size_slug not in table.sizes:
        yield Problem(
            model.loc("size"),
            f"{shown(size_slug)} is not a {provider} size this program knows; use {one_of(list(table.sizes))}",
        )


POP_NAME = Text(
    "1-12 lower-case letters or digits starting with a letter (it becomes part of a DNS name), and not 'origin'",
    lambda v: v != ORIGIN and matches(r"[a-z][a-z0-9]{0,11}")(v),
    max_length=12,
    valid="1 to 12 lower-case letters or digits starting with a letter, not `origin`; unique",
    schema={"type": "string", "pattern": "^[a-z][a-z0-9]{0,11}$", "not": {"const": ORIGIN}},
)


class PopConfig(Settings):
    model_config = ConfigDict(json_schema_extra=_conditional_schema)

    name: Annotated[str, POP_NAME, Field(description="part of the POP's DNS name and its resources' names")]
    provider: Annotated[str, PROVIDER, Field(description="where the VM runs")]
    region: Annotated[
        str, REGION, Field(description="where the VM runs, and the AWS region its latency record is measured as")
    ]
    size: Annotated[
        str,
        SIZE,
        Field(
            description="the VM's size; its price goes into the monthly estimate, and the policy pack's cost ceiling "
            "(24 USD a month by default) applies"
        ),
    ]
    upstream: Annotated[
        str,
        Text(
            "'origin' or another POP's name",
            valid="`origin`, or another POP's name (no cycles, not itself)",
            schema={"type": "string", "pattern": "^[a-z][a-z0-9]{0,11}$"},
        ),
        Field(
            description="`origin` makes a hub (near your Plex server); a POP's name makes an edge that relays to "
            "that POP over the cloud backbone"
        ),
    ]

    fallback: Annotated[
        str | None,
        Text(
            "another POP's name",
            valid="another POP's name: not this POP or its upstream, reaching the origin without passing through "
            "either; only on an edge",
            schema={"type": "string", "pattern": "^[a-z][a-z0-9]{0,11}$"},
        ),
        Field(
            description="an edge's second way to the origin: the POP it relays to while its upstream does not answer "
            "(for example a second hub). The edge checks its upstream twice a second and moves to the fallback within "
            "about a second of it going silent; a viewer's next range request goes through the fallback"
        ),
    ] = None

    @property
    def region_info(self) -> regions.Region:
        return regions.region(self.provider, self.region)

    @property
    def size_info(self) -> regions.Size:
        return regions.size(self.provider, self.size)

    @rule
    def _region_and_size(self) -> Iterator[Problem]:
        yield from vm_problems(self)


# host: a machine at home (or a friend's) reached over SSH; cloud: a VM made like a POP.
MachineKind = Literal["host", "cloud"]
MACHINE_KINDS: Final = typing.get_args(MachineKind)


def _host_slave_address_problem(value: str) -> str | None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return (
            "must be the machine's IP address on your home network (NFS exports name each slave by address; "
            "give it a fixed one, e.g. a DHCP reservation)"
        )
    if not address.is_private or address.is_loopback or address.is_link_local or address.is_unspecified:
        return (
            f"{value} is not an address on a home network: host slaves get Plex's files over unencrypted NFS; "
            "use kind cloud for a machine elsewhere (it gets a WireGuard tunnel)"
        )
    return None


REQUIRED_FOR_KIND: Final = {"host": ("host", "host_key"), "cloud": ("provider", "region", "size")}
_REQUIRED_FOR_KIND_WHY: Final = {
    "host": "where `pulumi up` reaches the machine over SSH",
    "host_key": "the machine's SSH host key as `ssh-keyscan -t ed25519 HOST` prints it (ssh-ed25519 AAAA...)",
    "provider": one_of(sorted(regions.PROVIDERS)),
    "region": "a region of the provider",
    "size": "a size of the provider",
}


def _kind_keys(model: Settings, kind: MachineKind, what: str) -> Iterator[Problem]:
    """Keys of the other kind are refused; the own kind's required keys are asked for."""
    only: Mapping[str, tuple[str, ...]] = getattr(model, "KIND_ONLY")  # noqa: B009 - a ClassVar of machine models
    other = "cloud" if kind == "host" else "host"
    for name in only[other]:
        if model.given(name):
            yield Problem(
                model.loc(name), f"only {what} of kind {other} have a {model.loc(name)[-1]}; this one is kind {kind}"
            )
    for name in REQUIRED_FOR_KIND[kind]:
        if not model.given(name):
            yield Problem(model.loc(name), f"is required for kind {kind}: {_REQUIRED_FOR_KIND_WHY[name]}")


class TranscodeOriginAccess(Settings):
    """How `pulumi up` reaches the Plex server over SSH (and where host slaves mount its files from)."""

    host: Annotated[str, HOST, Field(description="the Plex server as `pulumi up` and host slaves reach it")]
    port: Annotated[int, PORT, Field(description="its SSH port")] = 22
    user: Annotated[str, UNIX_USER, Field(description="root, or a user with passwordless sudo")] = "root"
    # Pinned: `pulumi up` sends secrets to this machine and no other.
    host_key: Annotated[str, SSH_HOST_KEY, Field(description="the Plex server's SSH host key, pinned")]


CLOUD_ONLY: Final = ("provider", "region", "size")


class TranscodeSlaveConfig(Settings):
    model_config = ConfigDict(json_schema_extra=_conditional_schema)
    KIND_ONLY: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "host": ("host", "port", "user", "host_key"),
        "cloud": CLOUD_ONLY,
    }

    name: Annotated[
        str,
        machine_name(16, "the VM and the slave in the dispatcher's log"),
        Doc(
            valid="1 to 16 lower-case letters, digits or single `-`, starting with a letter and ending in a letter "
            "or digit; unique"
        ),
        Field(description="names the VM and the slave in the dispatcher's log"),
    ]
    kind: Annotated[
        MachineKind,
        Choice(MACHINE_KINDS),
        Field(
            description="`host`: a machine at home that gets Plex's files over NFS, unencrypted. `cloud`: a VM made "
            "like a POP, reached through a WireGuard tunnel"
        ),
    ]
    host: Annotated[
        str,
        Text(
            "the machine's IP address on your home network",
            explain=_host_slave_address_problem,
            valid="a private IP address on your home network, not the Plex server's, one slave per machine",
        ),
        Doc(default="required (host)"),
        Field(description="NFS exports name each slave by address: give it a fixed one (a DHCP reservation)"),
    ] = ""
    port: Annotated[int, PORT, Doc(default="`22` (host)"), Field(description="its SSH port")] = 22
    user: Annotated[
        str, UNIX_USER, Doc(default="`root` (host)"), Field(description="root, or a user with passwordless sudo")
    ] = "root"
    host_key: Annotated[
        str, SSH_HOST_KEY, Doc(default="required (host)"), Field(description="its SSH host key, pinned")
    ] = ""
    provider: Annotated[str, PROVIDER, Doc(default="required (cloud)"), Field(description="where the VM runs")] = ""
    region: Annotated[str, REGION, Doc(default="required (cloud)"), Field(description="where the VM runs")] = ""
    size: Annotated[
        str,
        SIZE,
        Doc(default="required (cloud)"),
        Field(description="the VM's size; its cost shows in the `transcode` output and the monthly estimate"),
    ] = ""

    @property
    def size_info(self) -> regions.Size:
        return regions.size(self.provider, self.size)

    @rule
    def _keys_of_its_kind(self) -> Iterator[Problem]:
        yield from _kind_keys(self, self.kind, "slaves")

    @rule
    def _region_and_size(self) -> Iterator[Problem]:
        if self.kind == "cloud" and self.provider:
            yield from vm_problems(self)


SHARED_PATH = Text(
    "an absolute directory path such as /srv/media",
    explain=lambda v: shared_path_problem(v, SYSTEM_DIRS, PLEX_HOME),
    pattern=ABSOLUTE_PATH_PATTERN,
    max_length=4096,
    valid="a shared path (below)",
)
_PLEX_ID_RANGE: Final = (1, 2**31 - 1)


def _plex_id(what: str) -> WholeNumber:
    return WholeNumber(
        *_PLEX_ID_RANGE, what=f"the plex account's {what} on the Plex server (`id plex`), a whole number"
    )


class TranscodeConfig(Settings):
    origin: Annotated[
        TranscodeOriginAccess,
        Missing("is required: host, port, user and hostKey `pulumi up` logs in to the Plex server with over SSH"),
        Field(description="how `pulumi up` reaches the Plex server over SSH"),
    ]
    plex_version: Annotated[
        str,
        Text(
            "the plexmediaserver version exactly as the Plex server's package manager shows it "
            "(`dpkg-query -W -f='${Version}' plexmediaserver`), e.g. 1.41.3.9314-a0bfb8370",
            matches(PLEX_VERSION_PATTERN),
            pattern=PLEX_VERSION_PATTERN,
            valid="the package version as dpkg prints it, e.g. `1.41.3.9314-a0bfb8370`",
        ),
        Field(
            description="what `dpkg-query -W -f='${Version}' plexmediaserver` prints on the Plex server; installed "
            "on every slave"
        ),
    ]
    plex_uid: Annotated[
        int,
        _plex_id("user id"),
        Missing("is required: the plex account's user id on the Plex server (`id plex`)"),
        Field(description="the plex account's user id on the Plex server (`id plex`)"),
    ]
    plex_gid: Annotated[
        int,
        _plex_id("group id"),
        Missing("is required: the plex account's group id on the Plex server (`id plex`)"),
        Field(description="the plex account's group id on the Plex server (`id plex`)"),
    ]
    app_data_dir: Annotated[
        str,
        SHARED_PATH,
        Field(
            description="Plex's app data; of it only `Codecs` is shared (read-only), never the files holding the token"
        ),
    ] = PLEX_APP_DATA_DIR
    transcode_dir: Annotated[
        str,
        SHARED_PATH,
        Doc(valid="a shared path, not inside `appDataDir`"),
        Field(description="shared read-write; set Plex's Settings > Transcoder > Transcoder temporary directory to it"),
    ]
    media_paths: Annotated[
        tuple[Annotated[str, SHARED_PATH], ...],
        ListOf("a non-empty list of the directories your Plex libraries use"),
        Doc(valid="a non-empty list of shared paths"),
        Field(description="your libraries' directories, shared read-only"),
    ]
    tunnel_subnet: Annotated[
        ipaddress.IPv4Network | None,
        PrivateIPv4Subnet("10.78.0.0/24"),
        Doc(
            default="none; required with a cloud slave",
            valid="a private IPv4 network with room for the Plex server and every cloud slave, not overlapping "
            "`origin.tunnelSubnet` nor holding a host slave's or `transcode.origin.host`'s address",
        ),
        Field(
            description="the cloud slaves' WireGuard tunnels (the Plex server dials out and takes the first address)"
        ),
    ] = None
    wireguard_port: Annotated[int, WIREGUARD_PORT, Field(description="the cloud slaves' WireGuard port")] = 51820
    slaves: Annotated[
        tuple[TranscodeSlaveConfig, ...],
        ListOf("a non-empty list of slaves (name and kind host or cloud, with their settings)"),
        Doc(valid="a non-empty list, below"),
        Field(description="the machines transcodes run on"),
    ]

    @property
    def cloud_slaves(self) -> tuple[TranscodeSlaveConfig, ...]:
        return tuple(slave for slave in self.slaves if slave.kind == "cloud")

    @property
    def host_slaves(self) -> tuple[TranscodeSlaveConfig, ...]:
        return tuple(slave for slave in self.slaves if slave.kind == "host")

    def slave(self, name: str) -> TranscodeSlaveConfig:
        for slave in self.slaves:
            if slave.name == name:
                return slave
        raise KeyError(name)

    @property
    def origin_tunnel_address(self) -> ipaddress.IPv4Address:
        if self.tunnel_subnet is None:
            raise ValueError("no transcode tunnel subnet: there are no cloud slaves")
        return self.tunnel_subnet.network_address + 1

    def tunnel_address(self, name: str) -> ipaddress.IPv4Address:
        """A cloud slave's address in the tunnel: the origin has the first, the slaves follow in config order."""
        names = [slave.name for slave in self.cloud_slaves]
        if self.tunnel_subnet is None or name not in names:
            raise KeyError(f"{name} is not a cloud slave")
        return self.tunnel_subnet.network_address + 2 + names.index(name)

    def slave_address(self, name: str) -> str:
        """Where the origin reaches a slave, and the address its exports admit: the LAN address or the tunnel's."""
        slave = self.slave(name)
        return slave.host if slave.kind == "host" else str(self.tunnel_address(name))

    def slave_ssh_port(self, name: str) -> int:
        slave = self.slave(name)
        return slave.port if slave.kind == "host" else 22

    def origin_address_for(self, name: str) -> str:
        """The origin as a slave reaches it for NFS: its SSH host for host slaves, its tunnel address for cloud ones."""
        return self.origin.host if self.slave(name).kind == "host" else str(self.origin_tunnel_address)

    @property
    def shared_paths(self) -> tuple[tuple[str, str, bool], ...]:
        """(setting, path, writable) for each directory the origin shares, in mount order."""
        return (
            ("transcode.appDataDir", self.app_data_dir, False),
            ("transcode.transcodeDir", self.transcode_dir, True),
            *((f"transcode.mediaPaths[{i}]", path, False) for i, path in enumerate(self.media_paths)),
        )

    @property
    def cloud_monthly_usd(self) -> float:
        return round(sum(slave.size_info.monthly_usd for slave in self.cloud_slaves), 2)

    @rule
    def _shared_paths_apart(self) -> Iterator[Problem]:
        shared = [
            (self.loc("app_data_dir"), self.app_data_dir),
            (self.loc("transcode_dir"), self.transcode_dir),
            *((self.loc("media_paths", index), path) for index, path in enumerate(self.media_paths)),
        ]
        for later, (place, path) in enumerate(shared):
            for other_place, other in shared[:later]:
                if not (_inside(path, other) or _inside(other, path)):
                    continue
                hint = ""
                if place == self.loc("transcode_dir") and _inside(path, other):
                    hint = (
                        "; Plex's default transcode directory is inside its app data: set Settings > Transcoder > "
                        "Transcoder temporary directory to a directory of its own and name it here"
                    )
                yield Problem(
                    place,
                    f"{path} overlaps {path_text(('transcode', *other_place))} ({other}): each shared directory is "
                    f"mounted on its own, so none may hold another{hint}",
                )
                break

    @rule
    def _one_slave_per_machine(self) -> Iterator[Problem]:
        seen: dict[str, int] = {}
        hosts: dict[str, int] = {}
        for index, slave in enumerate(self.slaves):
            if slave.name in seen:
                yield Problem(
                    self.loc("slaves", index, "name"),
                    f"{slave.name!r} is used by slaves[{seen[slave.name]}]; names must be unique",
                )
            seen.setdefault(slave.name, index)
            if slave.kind != "host" or not slave.host:
                continue
            if slave.host == self.origin.host:
                yield Problem(
                    self.loc("slaves", index, "host"), f"{slave.host} is transcode.origin.host, the Plex server itself"
                )
            elif slave.host in hosts:
                yield Problem(
                    self.loc("slaves", index, "host"),
                    f"{slave.host} is also slaves[{hosts[slave.host]}]; one slave per machine",
                )
            hosts.setdefault(slave.host, index)

    @rule
    def _tunnel_subnet_fits(self) -> Iterator[Problem]:
        subnet, cloud = self.tunnel_subnet, self.cloud_slaves
        if not cloud:
            return
        if subnet is None:
            yield Problem(
                self.loc("tunnel_subnet"),
                f"is required when a slave is of kind cloud ({', '.join(s.name for s in cloud)}): a private network "
                "for the WireGuard tunnels from the Plex server, e.g. 10.78.0.0/24",
            )
            return
        if subnet.num_addresses - 2 < len(cloud) + 1:
            yield Problem(
                self.loc("tunnel_subnet"),
                f"{subnet} has room for {subnet.num_addresses - 3} cloud slaves besides the Plex server, "
                f"but {len(cloud)} are configured; use a larger network such as /24",
            )
        inside = [
            (self.loc("slaves", index, "host"), slave.host)
            for index, slave in enumerate(self.slaves)
            if slave.kind == "host" and slave.host
        ]
        inside.append((self.loc("origin", "host"), self.origin.host))
        for place, address_text in inside:
            try:
                address = ipaddress.ip_address(address_text)
            except ValueError:
                continue
            if address in subnet:
                yield Problem(
                    place,
                    f"{address_text} lies inside transcode.tunnelSubnet ({subnet}); pick a tunnel network your LAN "
                    "does not use",
                )


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


class BitswapSettings(Settings):
    """kubo's Internal.Bitswap tuning: the defaults let one peer keep a 4K stream's blocks in flight."""

    engine_blockstore_worker_count: Annotated[
        int, WholeNumber(1, 100_000), Field(description="kubo's `Internal.Bitswap.EngineBlockstoreWorkerCount`")
    ] = 2500
    engine_task_worker_count: Annotated[
        int, WholeNumber(1, 100_000), Field(description="kubo's `Internal.Bitswap.EngineTaskWorkerCount`")
    ] = 1024
    max_outstanding_bytes_per_peer: Annotated[
        int,
        WholeNumber(1, 2**40),
        Doc(default="`10737418240` (10 GB)"),
        Field(description="kubo's `Internal.Bitswap.MaxOutstandingBytesPerPeer`"),
    ] = 10 * 1024**3
    task_worker_count: Annotated[
        int, WholeNumber(1, 100_000), Field(description="kubo's `Internal.Bitswap.TaskWorkerCount`")
    ] = 1024


ROLE_ONLY: Final = {"seeder": ("media_dir",), "viewer": ("mount_dir", "plex")}


def _other_role(role: str) -> Literal["seeder", "viewer"]:
    return "viewer" if role == "seeder" else "seeder"


ABSOLUTE_DIR = Text(
    "an absolute directory path such as /srv/media, without quotes or backslashes",
    explain=absolute_dir_problem,
    pattern=ABSOLUTE_PATH_PATTERN,
    max_length=4096,
    valid="an absolute directory path, without quotes or backslashes",
)


class LibraryPeerConfig(Settings):
    """A seeder or a viewer of the library swarm; which one is the list it is in."""

    model_config = ConfigDict(json_schema_extra=_conditional_schema)

    ROLE: ClassVar[Literal["seeder", "viewer"]]
    KIND_ONLY: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "host": ("host", "port", "user", "host_key", "swarm_cidrs", "plex"),
        "cloud": CLOUD_ONLY,
    }

    name: Annotated[
        str,
        machine_name(16, "the peer's VM, services and outputs"),
        Doc(
            valid="1 to 16 lower-case letters, digits or single `-`, starting with a letter and ending in a letter "
            "or digit; unique across seeders and viewers"
        ),
        Field(description="names the peer's VM, services and outputs"),
    ]
    kind: Annotated[
        MachineKind,
        Choice(MACHINE_KINDS),
        Field(description="`host`: a friend's machine over SSH. `cloud`: a VM made like a POP"),
    ]
    host: Annotated[
        str, HOST, Doc(default="required (host)"), Field(description="where SSH and the other peers reach it")
    ] = ""
    port: Annotated[int, PORT, Doc(default="`22` (host)"), Field(description="its SSH port")] = 22
    user: Annotated[
        str, UNIX_USER, Doc(default="`root` (host)"), Field(description="root, or a user with passwordless sudo")
    ] = "root"
    host_key: Annotated[
        str, SSH_HOST_KEY, Doc(default="required (host)"), Field(description="its SSH host key, pinned")
    ] = ""
    swarm_cidrs: Annotated[
        tuple[Annotated[str, AnyNetwork()], ...],
        ListOf("a list of networks such as [203.0.113.0/24]", min_items=0, optional=True),
        Doc(default="the host's address (host)", valid="a list of networks, e.g. `[198.51.100.0/24]`"),
        Field(
            description="the networks this peer connects from, for the others' firewalls; required when `host` is a "
            "name (a firewall admits addresses, not names)"
        ),
    ] = ()
    provider: Annotated[str, PROVIDER, Doc(default="required (cloud)"), Field(description="where the VM runs")] = ""
    region: Annotated[str, REGION, Doc(default="required (cloud)"), Field(description="where the VM runs")] = ""
    size: Annotated[
        str,
        SIZE,
        Doc(default="required (cloud)"),
        Field(description="the VM's size; its cost shows in the `library` output and the monthly estimate"),
    ] = ""
    media_dir: Annotated[
        str,
        ABSOLUTE_DIR,
        Doc(default="required (seeders)"),
        Field(description="the folder shared; never removed by `pulumi destroy`"),
    ] = ""
    mount_dir: Annotated[
        str,
        ABSOLUTE_DIR,
        Doc(default=f"`{DEFAULT_LIBRARY_MOUNT}` (viewers)"),
        Field(description="where each seeder's library appears, one folder each: the folders to add to Plex"),
    ] = ""
    plex: Annotated[
        bool,
        Boolean(),
        Doc(default="`true` (viewers of kind host)"),
        Field(description="this machine runs Plex: warm the cache from what it is playing"),
    ] = False
    cache_gb: Annotated[
        int,
        WholeNumber(1, 100_000),
        Field(description="kubo's `Datastore.StorageMax` on this peer, and the cache warmer's bound"),
    ] = 50

    @property
    def role(self) -> Literal["seeder", "viewer"]:
        return self.ROLE

    @property
    def size_info(self) -> regions.Size:
        return regions.size(self.provider, self.size)

    def library_path(self, seeder: str) -> str:
        """Where a seeder's library appears on this viewer: the folder to add to Plex."""
        return posixpath.join(self.mount_dir, seeder)

    @classmethod
    def refused_fields(cls) -> tuple[str, ...]:
        role = getattr(cls, "ROLE", None)
        if role is None:
            return ()
        return tuple(name for name in ROLE_ONLY[_other_role(role)] if name not in ROLE_ONLY[role])

    @rule
    def _keys_of_its_role(self) -> Iterator[Problem]:
        others = f"{_other_role(self.ROLE)}s"
        for name in ROLE_ONLY[_other_role(self.ROLE)]:
            if name not in ROLE_ONLY[self.ROLE] and self.given(name):
                yield Problem(self.loc(name), f"only {others} have a {self.loc(name)[-1]}")
        if self.ROLE == "seeder" and not self.given("media_dir"):
            yield Problem(self.loc("media_dir"), "is required: the folder this seeder shares, e.g. /srv/media")

    @rule
    def _keys_of_its_kind(self) -> Iterator[Problem]:
        yield from _kind_keys(self, self.kind, "peers")

    @rule
    def _region_and_size(self) -> Iterator[Problem]:
        if self.kind == "cloud" and self.provider:
            yield from vm_problems(self)

    @rule
    def _a_named_host_gives_its_networks(self) -> Iterator[Problem]:
        if self.kind == "host" and self.host and not self.swarm_cidrs and not _is_address(self.host):
            yield Problem(
                self.loc("swarm_cidrs"),
                f"is needed because {self.host} is a name: firewalls admit addresses, not names; list the address or "
                "network this peer connects from, e.g. [203.0.113.7/32]",
            )

    def _completed(self, info: ValidationInfo) -> Self:
        update: dict[str, Any] = {}
        if self.kind == "host" and not self.swarm_cidrs and _is_address(self.host):
            update["swarm_cidrs"] = (str(ipaddress.ip_network(self.host)),)
        if self.ROLE == "viewer" and self.kind == "host" and not self.given("plex"):
            update["plex"] = True
        return self.model_copy(update=update) if update else self


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class LibrarySeederConfig(LibraryPeerConfig):
    ROLE: ClassVar[Literal["seeder", "viewer"]] = "seeder"


class LibraryViewerConfig(LibraryPeerConfig):
    ROLE: ClassVar[Literal["seeder", "viewer"]] = "viewer"

    mount_dir: Annotated[
        str,
        ABSOLUTE_DIR,
        Doc(default=f"`{DEFAULT_LIBRARY_MOUNT}` (viewers)"),
        Field(description="where each seeder's library appears, one folder each: the folders to add to Plex"),
    ] = DEFAULT_LIBRARY_MOUNT


class LibraryConfig(Settings):
    swarm: Annotated[
        str,
        Text(
            "a short name such as 'friends'",
            lambda v: len(v) <= 24 and matches(r"[a-z](-?[a-z0-9])*")(v),
            pattern=r"^[a-z](-?[a-z0-9])*$",
            max_length=24,
            valid="up to 24 lower-case letters, digits or single `-`, starting with a letter and ending in a letter "
            "or digit",
        ),
        Field(description="the swarm's name, e.g. `friends`"),
    ]
    swarm_port: Annotated[int, WIREGUARD_PORT, Field(description="kubo's swarm port on every peer (TCP)")] = 4001
    bitswap: Annotated[
        BitswapSettings,
        Section(),
        Doc(default="kubo tuning below", valid="a mapping"),
        Field(default_factory=BitswapSettings, description="kubo's `Internal.Bitswap`"),
    ]
    seeders: Annotated[
        tuple[LibrarySeederConfig, ...],
        ListOf("a non-empty list of seeders (name and kind host or cloud, with their settings)"),
        Doc(valid="a non-empty list of peers"),
        Field(description="friends sharing a media folder"),
    ]
    viewers: Annotated[
        tuple[LibraryViewerConfig, ...],
        ListOf("a non-empty list of viewers (name and kind host or cloud, with their settings)"),
        Doc(valid="a non-empty list of peers"),
        Field(description="friends (or cache VMs) who see each seeder's library as a folder"),
    ]

    @property
    def peers(self) -> tuple[LibraryPeerConfig, ...]:
        return (*self.seeders, *self.viewers)

    def peer(self, name: str) -> LibraryPeerConfig:
        for peer in self.peers:
            if peer.name == name:
                return peer
        raise KeyError(name)

    @property
    def cloud_monthly_usd(self) -> float:
        return round(sum(peer.size_info.monthly_usd for peer in self.peers if peer.kind == "cloud"), 2)

    @rule
    def _names_unique(self) -> Iterator[Problem]:
        seen: dict[str, str] = {}
        for peer in self.peers:
            if peer.name in seen:
                yield Problem(
                    (),
                    f"two peers are named {peer.name!r} ({seen[peer.name]} and {peer.role}): names name VMs and "
                    "services",
                )
            seen.setdefault(peer.name, peer.role)


# Networks whose addresses can be a home LAN: private IPv4 (RFC 1918), carrier-grade NAT and IPv6 unique local
# addresses. Loopback and link-local are not LANs: with the origin agent, loopback is where the CDN's traffic
# reaches Plex from.
HOME_LAN_RANGES: Final = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


class PlexServerSettings(Settings):
    """The Plex server's own settings the CDN needs (docs/plex-settings.md)."""

    apply_settings: Annotated[
        bool,
        Boolean(),
        Field(
            description="where `pulumi up` manages the Plex host over SSH (origin agent or transcode offload), it "
            "sets the Plex settings the CDN needs through Plex's local API with the server's own token, reads them "
            "back, and fails naming any Plex refused. `false`: Plex is left alone; `python -m plexcdn plex-settings` "
            "prints the values to set"
        ),
    ] = True
    remote_access: Annotated[
        bool,
        Boolean(),
        Field(
            description="Plex's Remote Access (`PublishServerOnPlexOnlineKey`). `false`: Plex stops publishing your "
            "home address to plex.tv, so apps find the server at the CDN's URL; `true` keeps a direct path to your "
            "home that `status` shows as bypassing the CDN"
        ),
    ] = False
    relay: Annotated[
        bool,
        Boolean(),
        Field(
            description="Plex's Relay (`RelayEnabled`). `false`: apps that cannot reach the CDN fail instead of "
            "falling back to Plex's relay, capped at 1-2 Mbit/s"
        ),
    ] = False
    lan_networks: Annotated[
        tuple[Annotated[str, AnyNetwork()], ...],
        ListOf("a list of your home's private networks such as [192.168.1.0/24]", min_items=0, optional=True),
        Doc(
            default="none: left to Plex",
            valid="a list of private networks (`10/8`, `172.16/12`, `192.168/16`, `100.64/10`, `fc00::/7`), none "
            "holding a tunnel's address",
        ),
        Field(
            description="Plex's LAN Networks (`LanNetworksBandwidth`): the networks whose viewers Plex treats as "
            "local for bandwidth limits; everyone else, every viewer of the CDN included, is remote. Empty: Plex's "
            "own default (the server's subnet) stays"
        ),
    ] = ()
    app_data_dir: Annotated[
        str,
        ABSOLUTE_DIR,
        Doc(default=f"`transcode.appDataDir`, else `{PLEX_APP_DATA_DIR}`"),
        Field(description="Plex's app data on the Plex host, where its Preferences.xml (and the server's token) is"),
    ] = ""

    @rule
    def _lan_networks_are_home_networks(self) -> Iterator[Problem]:
        for index, text in enumerate(self.lan_networks):
            network = ipaddress.ip_network(text)
            if not any(network.version == lan.version and network.subnet_of(lan) for lan in HOME_LAN_RANGES):  # type: ignore[arg-type]
                yield Problem(
                    self.loc("lan_networks", index),
                    f"{text} is not a private network: a LAN network counts its viewers as local, so a public network "
                    "(a POP's, anyone's) would lift the remote limits for strangers; list your home's private "
                    "networks, e.g. 192.168.1.0/24",
                )


# Every viewer together, a month: 100,000 hours is about 140 streams without pause, day and night.
VIEWING_HOURS_MAX: Final = 100_000
VIEWERS_MAX: Final = 100_000


class ViewingConfig(Settings):
    """What viewers are expected to watch through the POPs, for the transfer part of the monthly estimate."""

    hours_per_month: Annotated[
        int,
        Missing(
            "is required: the hours of video all viewers together watch through the POPs in a month, a whole "
            f"number from 0 to {VIEWING_HOURS_MAX}"
        ),
        WholeNumber(0, VIEWING_HOURS_MAX, "a whole number of hours"),
        Field(
            description="hours of video all viewers together watch through the POPs in a month; spread evenly over "
            "the POPs, it becomes the transfer leaving each of them (`validate` prints it against each provider's "
            "pooled allowance and warns when it goes over)"
        ),
    ]
    bitrate_mbps: Annotated[
        float,
        Amount(0.1, 500, "a bitrate in Mbit/s"),
        Doc(default=f"`{transfer.FOUR_K_MBPS}` (4K)"),
        Field(description="the streams' average bitrate in Mbit/s: about 30 for 4K, 8 to 20 for 1080p"),
    ] = float(transfer.FOUR_K_MBPS)
    expected_concurrent_viewers: Annotated[
        int | None,
        WholeNumber(1, VIEWERS_MAX, "a whole number of viewers"),
        Field(
            description="the most viewers you expect watching at once; `validate` warns when a POP could not carry "
            "that many streams at `bitrateMbps` if they all came through it (every stream passes a hub), by the "
            "capacity benchmark's per-core figure and the providers' network caps (docs/benchmark.md)"
        ),
    ] = None


class StackConfig(Settings):
    domain: Annotated[
        str,
        DOMAIN,
        Field(description="your Route53 hosted zone; records are created in it, never the zone itself"),
    ]
    shared_label: Annotated[
        str,
        SHARED_LABEL,
        Field(
            alias="sharedHostname",
            description="viewers use `https://<label>.<domain>`; each POP also gets `<label>-<pop>.<domain>`",
        ),
    ] = "plex"
    acme: Annotated[
        AcmeConfig,
        Missing("is required (email and server)"),
        Field(description="the ACME account and server the POPs' certificates come from"),
    ]
    origin: Annotated[
        OriginConfig,
        Missing("is required (host, port and link of your Plex server)"),
        Field(description="your Plex server as the hub POP reaches it"),
    ]
    admin: Annotated[
        AdminConfig,
        Missing("is required (sshPublicKey and cidr)"),
        Field(description="your SSH key and the networks SSH to the VMs is open to"),
    ]
    nginx: Annotated[
        NginxSettings,
        Section(),
        Field(default_factory=NginxSettings, description="optional tuning of every POP's nginx"),
    ]
    pops: Annotated[
        tuple[PopConfig, ...],
        ListOf("a non-empty list of POPs (name, provider, region, size, upstream)"),
        Field(description="the POPs: hubs (upstream origin) near the Plex server, edges near viewers"),
    ]
    viewing: Annotated[
        ViewingConfig | None,
        Field(
            description="optional: the viewing expected each month, which the monthly estimate turns into transfer "
            "out of the POPs"
        ),
    ] = None
    transcode: Annotated[
        TranscodeConfig | None, Field(description="optional: transcode offload (docs/transcode-offload.md)")
    ] = None
    library: Annotated[
        LibraryConfig | None, Field(description="optional: library sharing with friends (docs/library-sharing.md)")
    ] = None
    plex: Annotated[
        PlexServerSettings,
        Section(),
        Field(
            default_factory=PlexServerSettings,
            description="the Plex server's own settings the CDN needs (docs/plex-settings.md)",
        ),
    ]

    _stack: str = PrivateAttr(default="")
    _warnings: tuple[str, ...] = PrivateAttr(default=())

    @property
    def stack(self) -> str:
        return self._stack

    @property
    def warnings(self) -> tuple[str, ...]:
        """What is worth telling but stops nothing."""
        return self._warnings

    def with_warning(self, warning: str) -> StackConfig:
        copy = self.model_copy()
        copy._warnings = (*self._warnings, warning)
        return copy

    @property
    def shared_name(self) -> str:
        return f"{self.shared_label}.{self.domain}"

    @property
    def shared_url(self) -> str:
        return f"https://{self.shared_name}"

    @property
    def plex_custom_access_url(self) -> str:
        # Plex's "Custom server access URLs" setting needs the port spelt out.
        return f"https://{self.shared_name}:443"

    def pop_name(self, pop: str) -> str:
        return f"{self.shared_label}-{pop}.{self.domain}"

    def pop(self, name: str) -> PopConfig:
        for pop in self.pops:
            if pop.name == name:
                return pop
        raise KeyError(name)

    @property
    def peer_name(self) -> str:
        """The name every POP's peer-port certificate carries besides its own: what an edge with a fallback
        verifies, since either of two POPs may answer it. Only the stack's peer CA issues for it; it is never
        published in DNS."""
        return f"peers.{self.shared_name}"

    def certificate_names(self, pop: str) -> tuple[str, str]:
        """The names on a POP's certificate: the shared name and its own, the own name first (it names the lineage)."""
        return (self.pop_name(pop), self.shared_name)

    def all_certificate_names(self) -> tuple[str, ...]:
        return tuple(sorted({name for pop in self.pops for name in self.certificate_names(pop.name)}))

    @rule
    def _pop_tree(self) -> Iterator[Problem]:
        yield from topology.tree_problems(self.pops)

    @rule
    def _one_latency_record_per_aws_region(self) -> Iterator[Problem]:
        yield from topology.latency_region_problems(self.pops)

    @rule
    def _hubs_reach_the_origin(self) -> Iterator[Problem]:
        yield from topology.origin_link_problems(self.origin, self.pops)

    @rule
    def _transcode_tunnel_apart(self) -> Iterator[Problem]:
        subnet = self.transcode.tunnel_subnet if self.transcode is not None and self.transcode.cloud_slaves else None
        if subnet is not None and subnet.overlaps(self.origin.tunnel_subnet):
            yield Problem(
                self.loc("transcode", "tunnel_subnet"),
                f"{subnet} overlaps origin.tunnelSubnet ({self.origin.tunnel_subnet}); the Plex server may carry both "
                "tunnels, so pick another private network",
            )

    @rule
    def _lan_networks_leave_the_tunnels_out(self) -> Iterator[Problem]:
        # A tunnel's far end is where the CDN's traffic reaches Plex from: counted as LAN, every viewer would be.
        tunnels = []
        if self.origin.link == "wireguard":
            tunnels.append(("origin.tunnelSubnet", self.origin.tunnel_subnet))
        if self.transcode is not None and self.transcode.tunnel_subnet is not None:
            tunnels.append(("transcode.tunnelSubnet", self.transcode.tunnel_subnet))
        for index, text in enumerate(self.plex.lan_networks):
            network = ipaddress.ip_network(text)
            for setting, subnet in tunnels:
                if network.version == 4 and network.overlaps(subnet):
                    yield Problem(
                        self.loc("plex", "lan_networks", index),
                        f"{text} overlaps {setting} ({subnet}): the hub's requests arrive from there, so every viewer "
                        "of the CDN would count as local; list your home LAN only",
                    )

    @property
    def plex_app_data_dir(self) -> str:
        if self.plex.app_data_dir:
            return self.plex.app_data_dir
        return self.transcode.app_data_dir if self.transcode is not None else PLEX_APP_DATA_DIR

    def _completed(self, info: ValidationInfo) -> Self:
        context = info.context if isinstance(info.context, Mapping) else {}
        self._stack = str(context.get("stack", ""))
        self._warnings = (
            *_hub_distance_warnings(self),
            *_stream_buffer_warnings(self),
            *_verify_name_warnings(self),
            *_transfer_warnings(self),
            *_capacity_warnings(self),
        )
        return self


def _capacity_warnings(config: StackConfig) -> Iterator[str]:
    """Viewers at once beyond what a POP carries: any one POP may take them all (they all live near it), and
    every stream passes a hub."""
    viewing = config.viewing
    if viewing is None or viewing.expected_concurrent_viewers is None:
        return
    wanted = viewing.expected_concurrent_viewers
    for pop in config.pops:
        carried = capacity.pop_capacity(pop.provider, pop.size, viewing.bitrate_mbps, config.nginx.stream_buffer_mb)
        streams, bound = carried.streams, carried.bound_by
        if streams is None or streams >= wanted:
            continue
        why = {
            "cpu": f"its {pop.size_info.vcpus} vCPU",
            "network": f"its network cap of {capacity.NETWORK_OUT_MBIT.get((pop.provider, pop.size), 0):,.0f} Mbit/s "
            "out",
            "memory": f"its {pop.size_info.memory_gb * 1024:,.0f} MB with nginx.streamBufferMb "
            f"{config.nginx.stream_buffer_mb}",
        }[bound or "cpu"]
        yield (
            f"viewing.expectedConcurrentViewers: {wanted} viewers at once at {viewing.bitrate_mbps:g} Mbit/s are more "
            f"than POP {pop.name!r} ({pop.provider} {pop.size}) carries if they all come through it: about {streams} "
            f"streams, bound by {why} (docs/benchmark.md#viewers-per-pop-size, measured {capacity.MEASURED_ON}); "
            "choose a larger size, or add POPs near the viewers"
        )


def _transfer_warnings(config: StackConfig) -> Iterator[str]:
    """Viewing that sends more out of a provider's VMs than their pooled allowance is billed per GB beyond it."""
    if config.viewing is None:
        return
    moved = transfer.for_stack(config)
    viewing = config.viewing
    for pool in moved.over:
        names = ", ".join(f"{vm.name} {vm.size.slug}" for vm in pool.vms)
        yield (
            f"viewing.hoursPerMonth: {viewing.hours_per_month:,} hours a month at {viewing.bitrate_mbps:g} Mbit/s, "
            f"spread evenly over the POPs, send about {pool.amount(pool.expected_bytes or 0)} out of the "
            f"{pool.name} VMs, over their pooled allowance of {pool.amount(pool.allowance_bytes)} ({names}): about "
            f"${pool.overage_usd:,.2f} a month for {pool.amount(pool.overage_bytes)} at "
            f"${pool.overage_usd_per_unit}/{pool.terms.unit}. The allowance covers {pool.four_k_hours:,} hours of 4K "
            f"({transfer.FOUR_K_MBPS} Mbit/s) a month; a larger size adds more to the pool"
        )


def _stream_buffer_warnings(config: StackConfig) -> Iterator[str]:
    """nginx holds up to `streamBufferMb` per media response in memory; a small POP may run out."""
    nginx = config.nginx
    if nginx.stream_buffer_mb == 0:
        return
    sizes = {(pop.provider, pop.size): pop.size_info for pop in config.pops}
    for (provider, slug), size in sorted(sizes.items()):
        memory_mb = size.memory_gb * 1024
        streams = int(memory_mb / 2 // nginx.stream_buffer_mb)
        if streams < STREAM_BUFFER_WARNING_STREAMS:
            yield (
                f"nginx.streamBufferMb: {nginx.stream_buffer_mb} MB per stream fills half of a {provider} {slug} "
                f"POP's {memory_mb:.0f} MB with {streams} streams; lower it (the default is "
                f"{NginxSettings().stream_buffer_mb}) or choose a larger size"
            )


def _hub_distance_warnings(config: StackConfig) -> Iterator[str]:
    """A hub far from the Plex server puts the long, lossy part of the path back on the home ISP's leg."""
    if config.origin.location is None:
        return
    home = config.origin.location.point
    for pop in topology.hubs_of(config.pops):
        region = pop.region_info
        km = regions.distance_km(home, (region.latitude, region.longitude))
        if km <= HUB_DISTANCE_WARNING_KM:
            continue
        closest = min(
            (regions.distance_km(home, (r.latitude, r.longitude)), r.slug)
            for r in regions.provider_table(pop.provider).regions.values()
        )
        yield (
            f"pops: hub {pop.name!r} ({pop.provider}/{pop.region}, {region.city}) is {km:,.0f} km from the Plex "
            f"server: its hop to Plex crosses home ISPs for about {regions.fibre_rtt_ms(km):.0f} ms of round trip, "
            f"which is where loss costs the most; {pop.provider}'s closest region is {closest[1]} "
            f"({closest[0]:,.0f} km)"
        )


def _verify_name_warnings(config: StackConfig) -> Iterator[str]:
    origin = config.origin
    if origin.link == "public" and origin.verify_name is None and origin.agent is None:
        yield (
            "origin.verifyName is not set: the hub's hop to the Plex server is encrypted but not verified; "
            "set it to the name on the server's certificate (Settings > Network shows the *.plex.direct name), "
            "or use link wireguard"
        )


def _top_level_keys() -> dict[str, Literal["scalar", "object"]]:
    """How __main__ reads each top-level key from pulumi.Config: strings with get(), the rest with get_object()."""
    return {
        field.alias or name: "scalar" if field.annotation is str else "object"
        for name, field in StackConfig.model_fields.items()
    }


TOP_LEVEL_KEYS: Final = _top_level_keys()


class _Unreadable:
    """A setting whose value could not be read at all (Pulumi's JSON): every kind refuses it, by its name."""

    def __repr__(self) -> str:
        return "a value that is not readable JSON"


UNREADABLE: Final = _Unreadable()


def parse_config(values: Mapping[str, object], stack: str) -> StackConfig:
    """Build the typed configuration from the `plex-cdn:` settings (namespace stripped); raise ConfigError."""
    if not isinstance(values, Mapping):
        raise ConfigError([f"{NAMESPACE}: the settings must be a mapping, got {shown(values)}"])
    try:
        return StackConfig.model_validate(values, context={"stack": stack})
    except ValidationError as error:
        raise ConfigError(problem_lines(StackConfig, error, NAMESPACE)) from None


# --- stack files -------------------------------------------------------------------------------------------------


def stack_name_from_path(path: Path) -> str:
    match = re.fullmatch(r"Pulumi\.(.+)\.ya?ml", path.name)
    return match.group(1) if match else path.stem


def _one_line(text: str) -> str:
    return UNSAFE_TEXT.sub("?", " ".join(text.split()))


def _stack_file_settings(path: Path) -> dict[str, object]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError([f"{path}: cannot read the stack file ({error.strerror})"]) from error
    try:
        document = bounded_yaml.load(bounded_yaml.decode(data))
    except bounded_yaml.StackFileError as error:
        where = f"{path}, line {error.line}" if error.line is not None else str(path)
        line = f"{error.setting}: {error.message} ({where})" if error.setting else f"{where}: {error.message}"
        raise ConfigError([_one_line(line)]) from None
    except yaml.YAMLError as error:
        raise ConfigError([_one_line(f"{path}: not valid YAML ({error})")]) from None
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise ConfigError([f"{path}: a stack file needs a top-level 'config:' mapping"])
    prefix = f"{NAMESPACE}:"
    return {
        key[len(prefix) :]: value for key, value in config.items() if isinstance(key, str) and key.startswith(prefix)
    }


def _is_encrypted(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {"secure"} and isinstance(value["secure"], str)


def read_stack_file(path: Path) -> dict[str, object]:
    """The `plex-cdn:` settings of a stack file, namespace stripped; other namespaces (provider tokens) and the
    encrypted secrets are left out."""
    return {key: value for key, value in _stack_file_settings(path).items() if key not in SECRET_KEYS}


def secrets_in_stack_file(path: Path) -> frozenset[str]:
    """The secret settings a stack file holds (encrypted), by key: the offline commands never read their values."""
    return frozenset(key for key in _stack_file_settings(path) if key in SECRET_KEYS)


def needs_home_ssh_key(config: StackConfig) -> bool:
    """The origin agent, transcode offload and library peers of kind host change machines over SSH."""
    host_peers = config.library is not None and any(peer.kind == "host" for peer in config.library.peers)
    return config.origin.agent is not None or config.transcode is not None or host_peers


def load_stack_file(path: Path) -> StackConfig:
    settings = _stack_file_settings(path)
    clear = [
        f"{key}: is written in clear text in the stack file; store it encrypted: "
        f"`pulumi config set --secret {NAMESPACE}:{key} < FILE` (and remove the clear line)"
        for key in SECRET_KEYS
        if key in settings and not _is_encrypted(settings[key])
    ]
    try:
        config = parse_config(
            {key: value for key, value in settings.items() if key not in SECRET_KEYS}, stack_name_from_path(path)
        )
    except ConfigError as error:
        raise ConfigError([*clear, *error.problems]) from None
    if clear:
        raise ConfigError(clear)
    if needs_home_ssh_key(config) and HOME_SSH_KEY not in settings:
        config = config.with_warning(
            f"{NAMESPACE}:{HOME_SSH_KEY} is not set: `pulumi up` needs the SSH key it logs in with to the machines "
            "it does not create (the Plex server, host transcode slaves, library peers of kind host); set it with "
            f"`pulumi config set --secret {NAMESPACE}:{HOME_SSH_KEY} < ~/.ssh/id_ed25519`"
        )
    return config
