"""The stack's configuration: parsed once, validated whole, frozen.

The same parser serves the Pulumi program (values read from `pulumi.Config`) and the offline CLI
(values read from a `Pulumi.<stack>.yaml` file), so both reject exactly the same mistakes, and both
report every problem at once, each naming the setting and what would be valid.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import posixpath
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from plexcdn import regions

NAMESPACE: Final = "plex-cdn"
ORIGIN: Final = "origin"

ACME_DIRECTORIES: Final = {
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
    "production": "https://acme-v02.api.letsencrypt.org/directory",
}

# How __main__ reads each top-level key from pulumi.Config: scalars with get(), the rest with get_object().
TOP_LEVEL_KEYS: Final[dict[str, Literal["scalar", "object"]]] = {
    "domain": "scalar",
    "sharedHostname": "scalar",
    "acme": "object",
    "origin": "object",
    "admin": "object",
    "nginx": "object",
    "pops": "object",
    "transcode": "object",
    "library": "object",
}

# Secret settings: read by __main__ with require_secret, never part of the parsed model. A stack file holds
# them encrypted (`secure:`), so the offline CLI leaves them out instead of calling them unknown.
# The SSH key `pulumi up` logs in to machines at home with (the Plex server, host transcode slaves).
HOME_SSH_KEY: Final = "homeSshKey"
SECRET_KEYS: Final = (HOME_SSH_KEY,)

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_POP_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
# Also a Linode label part: no "--", and it must end in a letter or digit.
_SLAVE_NAME = re.compile(r"^[a-z](-?[a-z0-9])*$")
_UNIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# The plexmediaserver package version as dpkg prints it, e.g. 1.41.3.9314-a0bfb8370.
_PLEX_VERSION = re.compile(r"^\d+\.\d+\.\d+\.\d+-[0-9a-f]{7,40}$")
# Characters fstab, exports and shell quoting cannot all carry: control characters, quotes, backslashes.
# Control characters and line or paragraph separators: no rendered file may carry them inside a value.
_UNSAFE_TEXT = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")
_PATH_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\]')
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@([A-Za-z0-9-]+\.)+[A-Za-z]{2,}$")
_SSH_KEY_TYPES: Final = r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com)"
# A comment is printable ASCII: a line break or separator in it would end the line in authorized_keys or YAML.
_SSH_KEY = re.compile(rf"^{_SSH_KEY_TYPES} [A-Za-z0-9+/]+={{0,3}}( [\x21-\x7e][\x20-\x7e]*)?$")
_SSH_HOST_KEY = re.compile(rf"^{_SSH_KEY_TYPES} [A-Za-z0-9+/]+={{0,3}}$")


class ConfigError(ValueError):
    """The stack configuration is invalid; `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid stack configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


@dataclass(frozen=True)
class AcmeConfig:
    email: str
    server: str  # "staging", "production", or the https:// directory URL of an ACME server of one's own
    # For an ACME server and Route53 endpoint of one's own (a lab): the CA that signs their HTTPS
    # certificates, trusted by certbot beside the system's CAs.
    ca_certificate: str | None = None
    route53_endpoint: str | None = None

    @property
    def directory_url(self) -> str:
        return ACME_DIRECTORIES.get(self.server, self.server)


@dataclass(frozen=True)
class OriginAgent:
    """nginx and TCP tuning on the Plex host itself, managed over SSH: the hub's hop ends on the host."""

    listen_port: int
    ssh_host: str
    ssh_port: int
    ssh_user: str
    apply_firewall: bool
    ssh_host_key: str = ""  # pinned: `pulumi up` sends secrets to this machine and no other


@dataclass(frozen=True)
class OriginConfig:
    host: str
    port: int
    link: Literal["public", "wireguard"]
    verify_name: str | None
    tunnel_subnet: ipaddress.IPv4Network
    wireguard_port: int
    location: tuple[float, float] | None = None  # (latitude, longitude) of the Plex server, for advice
    agent: OriginAgent | None = None

    @property
    def hub_tunnel_address(self) -> ipaddress.IPv4Address:
        return self.tunnel_subnet.network_address + 1

    @property
    def home_tunnel_address(self) -> ipaddress.IPv4Address:
        return self.tunnel_subnet.network_address + 2


@dataclass(frozen=True)
class AdminConfig:
    ssh_public_key: str
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    # The machines that run `pulumi up` when they sit outside `cidr` (a CI runner with a fixed address).
    deploy_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def ssh_sources(self) -> tuple[str, ...]:
        """The networks every VM's firewall admits on port 22: the admin's, then each deployFrom network."""
        return tuple(dict.fromkeys([str(self.cidr), *(str(network) for network in self.deploy_from)]))


@dataclass(frozen=True)
class NginxSettings:
    viewer_http2: bool = False
    stream_timeout_s: int = 3600
    artwork_cache_mb: int = 512
    upstream_keepalive: int = 32
    max_body_mb: int = 100
    # Read-ahead per media response on each POP, in memory: it lets one leg keep sending while the next
    # pauses, where TCP flow control would otherwise stall the whole chain (and BBR's estimate with it).
    stream_buffer_mb: int = 4


@dataclass(frozen=True)
class PopConfig:
    name: str
    provider: str
    region: str
    size: str
    upstream: str

    @property
    def region_info(self) -> regions.Region:
        return regions.region(self.provider, self.region)

    @property
    def size_info(self) -> regions.Size:
        return regions.size(self.provider, self.size)


TRANSCODE_KINDS: Final = ("host", "cloud")
# Directories a slave needs for itself: sharing the origin's copy over them would break the slave.
SYSTEM_DIRS: Final = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/opt/plexcdn",
    "/var/lib/plexcdn-transcode",
)
# The plex account's home on a slave: its .ssh/authorized_keys is where the origin's key may run the guard.
PLEX_HOME: Final = "/var/lib/plexmediaserver"


@dataclass(frozen=True)
class TranscodeOriginAccess:
    """How `pulumi up` reaches the Plex server over SSH (and where host slaves mount its files from)."""

    host: str
    port: int
    user: str
    host_key: str = ""  # pinned: `pulumi up` sends secrets to this machine and no other


@dataclass(frozen=True)
class TranscodeSlaveConfig:
    name: str
    kind: Literal["host", "cloud"]
    host: str = ""  # kind host: its address on the home network
    port: int = 22
    user: str = "root"
    host_key: str = ""  # kind host: its SSH host key, pinned
    provider: str = ""  # kind cloud
    region: str = ""
    size: str = ""

    @property
    def size_info(self) -> regions.Size:
        return regions.size(self.provider, self.size)


@dataclass(frozen=True)
class TranscodeConfig:
    origin: TranscodeOriginAccess
    plex_version: str
    plex_uid: int
    plex_gid: int
    app_data_dir: str
    transcode_dir: str
    media_paths: tuple[str, ...]
    tunnel_subnet: ipaddress.IPv4Network | None
    wireguard_port: int
    slaves: tuple[TranscodeSlaveConfig, ...]

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


LIBRARY_ROLES: Final = ("seeder", "viewer")
MACHINE_KINDS: Final = ("host", "cloud")
DEFAULT_LIBRARY_MOUNT: Final = "/mnt/plex-cdn-library"


@dataclass(frozen=True)
class BitswapSettings:
    """kubo's Internal.Bitswap tuning: the defaults let one peer keep a 4K stream's blocks in flight."""

    engine_blockstore_worker_count: int = 2500
    engine_task_worker_count: int = 1024
    max_outstanding_bytes_per_peer: int = 10 * 1024**3
    task_worker_count: int = 1024


@dataclass(frozen=True)
class LibraryPeerConfig:
    name: str
    role: Literal["seeder", "viewer"]
    kind: Literal["host", "cloud"]
    host: str = ""  # kind host: where SSH and the other peers reach it
    port: int = 22
    user: str = "root"
    host_key: str = ""  # kind host: its SSH host key, pinned
    swarm_cidrs: tuple[str, ...] = ()  # kind host: the networks it connects from, for the others' firewalls
    provider: str = ""  # kind cloud
    region: str = ""
    size: str = ""
    media_dir: str = ""  # seeders: the folder shared
    mount_dir: str = DEFAULT_LIBRARY_MOUNT  # viewers: where each seeder's library appears, one folder each
    plex: bool = False  # viewers: warm the cache from what this host's Plex is playing
    cache_gb: int = 50

    @property
    def size_info(self) -> regions.Size:
        return regions.size(self.provider, self.size)

    def library_path(self, seeder: str) -> str:
        """Where a seeder's library appears on this viewer: the folder to add to Plex."""
        return posixpath.join(self.mount_dir, seeder)


@dataclass(frozen=True)
class LibraryConfig:
    swarm: str
    swarm_port: int
    bitswap: BitswapSettings
    peers: tuple[LibraryPeerConfig, ...]

    @property
    def seeders(self) -> tuple[LibraryPeerConfig, ...]:
        return tuple(peer for peer in self.peers if peer.role == "seeder")

    @property
    def viewers(self) -> tuple[LibraryPeerConfig, ...]:
        return tuple(peer for peer in self.peers if peer.role == "viewer")

    def peer(self, name: str) -> LibraryPeerConfig:
        for peer in self.peers:
            if peer.name == name:
                return peer
        raise KeyError(name)

    @property
    def cloud_monthly_usd(self) -> float:
        return round(sum(peer.size_info.monthly_usd for peer in self.peers if peer.kind == "cloud"), 2)


@dataclass(frozen=True)
class StackConfig:
    stack: str
    domain: str
    shared_label: str
    acme: AcmeConfig
    origin: OriginConfig
    admin: AdminConfig
    nginx: NginxSettings
    pops: tuple[PopConfig, ...]
    warnings: tuple[str, ...] = field(default=())
    transcode: TranscodeConfig | None = None
    library: LibraryConfig | None = None

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

    def certificate_names(self, pop: str) -> tuple[str, str]:
        """The names on a POP's certificate: the shared name and its own, the own name first (it names the lineage)."""
        return (self.pop_name(pop), self.shared_name)

    def all_certificate_names(self) -> tuple[str, ...]:
        return tuple(sorted({name for pop in self.pops for name in self.certificate_names(pop.name)}))


class _Problems:
    """Collects every problem with its setting path so the user sees them all in one run."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")


def _is_hostname(value: str) -> bool:
    labels = value.rstrip(".").split(".")
    return len(value) <= 253 and len(labels) >= 2 and all(_LABEL.match(label) for label in labels)


def _one_of(values: Sequence[str]) -> str:
    return "one of " + ", ".join(values)


class _Reader:
    """Typed access to one mapping of settings, recording problems instead of raising."""

    def __init__(self, problems: _Problems, path: str, raw: object, allowed: Sequence[str]) -> None:
        self.problems = problems
        self.path = path
        self.ok = isinstance(raw, Mapping)
        self.raw: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        if raw is not None and not self.ok:
            problems.add(path, f"must be a mapping of settings ({_one_of(allowed)}), got {type(raw).__name__}")
        for key in self.raw:
            if key not in allowed:
                problems.add(f"{self._sub(str(key))}", f"unknown setting; valid settings here: {', '.join(allowed)}")

    def _sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def string(self, key: str, default: str | None = None, check: Callable[[str], str | None] | None = None) -> str:
        value = self.raw.get(key, default)
        if value is None:
            self.problems.add(self._sub(key), "is required")
            return ""
        if not isinstance(value, str) or not value.strip():
            self.problems.add(self._sub(key), f"must be a non-empty string, got {value!r}")
            return ""
        value = value.strip()
        if check is not None and (message := check(value)) is not None:
            self.problems.add(self._sub(key), message)
        return value

    def optional_string(self, key: str) -> str | None:
        return self.string(key) if key in self.raw and self.raw[key] is not None else None

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.raw.get(key, default)
        if isinstance(value, str) and re.fullmatch(r"[0-9]{1,15}", value.strip(" ")):
            value = int(value.strip(" "))
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.problems.add(self._sub(key), f"must be a whole number from {low} to {high}, got {value!r}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            self.problems.add(self._sub(key), f"must be true or false, got {value!r}")
            return default
        return value

    def choice(self, key: str, options: Sequence[str], default: str | None = None) -> str:
        value = self.string(key, default)
        if value and value not in options:
            self.problems.add(self._sub(key), f"{value!r} is not valid; use {_one_of(options)}")
        return value


def _check_domain(value: str) -> str | None:
    return None if _is_hostname(value) else "must be a DNS name such as example.com (your Route53 hosted zone)"


def _check_email(value: str) -> str | None:
    return None if _EMAIL.match(value) else "must be an email address such as you@example.com"


def _check_host(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return None if _is_hostname(value) else "must be a DNS name or an IP address"
    return None


def _check_acme_server(value: str) -> str | None:
    if value in ACME_DIRECTORIES:
        return None
    return (
        None
        if _is_https_url(value)
        else (
            f"{value!r} is not valid; use {_one_of(tuple(ACME_DIRECTORIES))}, or the https:// directory URL of an "
            "ACME server of your own"
        )
    )


def _is_https_url(value: str) -> bool:
    parts = urllib.parse.urlsplit(value)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        host_ok = True
    except ValueError:
        host_ok = _is_hostname(host) or host == "localhost"
    return parts.scheme == "https" and host_ok and not parts.username and not _UNSAFE_TEXT.search(value)


def _check_pem_certificates(value: str) -> str | None:
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----", value)
    leftover = re.sub(r"-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----", "", value)
    if not blocks or leftover.strip():
        return "must be one or more PEM certificates (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----)"
    return None


def _parse_acme(problems: _Problems, raw: object) -> AcmeConfig:
    reader = _Reader(problems, "acme", raw, ("email", "server", "caCertificate", "route53Endpoint"))
    if raw is None:
        problems.add("acme", "is required (email and server)")
    server = reader.string("server", "staging", check=_check_acme_server)
    ca_certificate = reader.optional_string("caCertificate")
    if ca_certificate is not None:
        if (message := _check_pem_certificates(ca_certificate + "\n")) is not None:
            problems.add("acme.caCertificate", message)
        ca_certificate += "\n"
    route53_endpoint = reader.optional_string("route53Endpoint")
    if route53_endpoint is not None and not _is_https_url(route53_endpoint):
        problems.add("acme.route53Endpoint", "must be an https:// URL of a Route53 API endpoint of your own (a lab)")
    if server in ACME_DIRECTORIES and (ca_certificate is not None or route53_endpoint is not None):
        given = "acme.caCertificate" if ca_certificate is not None else "acme.route53Endpoint"
        problems.add(given, f"is only for an ACME server of your own; with acme.server {server} leave it out")
    return AcmeConfig(reader.string("email", check=_check_email), server, ca_certificate, route53_endpoint)


def _parse_origin(problems: _Problems, raw: object) -> OriginConfig:
    reader = _Reader(
        problems,
        "origin",
        raw,
        ("host", "port", "link", "verifyName", "tunnelSubnet", "wireguardPort", "location", "agent"),
    )
    if raw is None:
        problems.add("origin", "is required (host, port and link of your Plex server)")
    link = reader.choice("link", ("public", "wireguard"), "public")
    host = reader.string("host", check=_check_host)
    port = reader.integer("port", 32400, 1, 65535)
    verify_name = reader.optional_string("verifyName")
    if verify_name is not None and not _is_hostname(verify_name):
        problems.add("origin.verifyName", "must be the DNS name on the Plex server's certificate")
    subnet_text = reader.string("tunnelSubnet", "10.77.0.0/24")
    try:
        tunnel_subnet = ipaddress.IPv4Network(subnet_text)
        if not tunnel_subnet.is_private or tunnel_subnet.num_addresses < 4:
            problems.add(
                "origin.tunnelSubnet", "must be a private IPv4 network of at least 4 addresses, e.g. 10.77.0.0/24"
            )
    except ValueError:
        problems.add("origin.tunnelSubnet", f"{subnet_text!r} is not an IPv4 network such as 10.77.0.0/24")
        tunnel_subnet = ipaddress.IPv4Network("10.77.0.0/24")
    wireguard_port = reader.integer("wireguardPort", 51820, 1024, 65535)
    location = _parse_location(problems, reader.raw.get("location"))
    agent = _parse_agent(problems, reader.raw.get("agent"), host, port, link)
    return OriginConfig(host, port, link, verify_name, tunnel_subnet, wireguard_port, location, agent)  # type: ignore[arg-type]


def _parse_agent(problems: _Problems, raw: object, host: str, port: int, link: str) -> OriginAgent | None:
    if raw is None:
        return None
    reader = _Reader(
        problems, "origin.agent", raw, ("listenPort", "sshHost", "sshPort", "sshUser", "sshHostKey", "applyFirewall")
    )
    if link != "public":
        problems.add(
            "origin.agent",
            "needs origin.link public: the agent is where the hub's TLS hop ends, on the Plex host itself; "
            "with wireguard the tunnel already gives Plex a private hop",
        )
    listen_port = reader.integer("listenPort", 32443, 1, 65535)
    if listen_port == port:
        problems.add("origin.agent.listenPort", f"must differ from origin.port ({port}), where Plex itself listens")
    return OriginAgent(
        listen_port=listen_port,
        ssh_host=reader.string("sshHost", host, check=_check_host),
        ssh_port=reader.integer("sshPort", 22, 1, 65535),
        ssh_user=reader.string("sshUser", "root", check=_check_unix_user),
        apply_firewall=reader.boolean("applyFirewall", False),
        ssh_host_key=reader.string("sshHostKey", check=_check_host_key),
    )


def _parse_location(problems: _Problems, raw: object) -> tuple[float, float] | None:
    if raw is None:
        return None
    reader = _Reader(problems, "origin.location", raw, ("latitude", "longitude"))
    values = []
    for key, limit in (("latitude", 90), ("longitude", 180)):
        value = reader.raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not -limit <= value <= limit:
            problems.add(f"origin.location.{key}", f"must be a number from -{limit} to {limit}, got {value!r}")
            return None
        values.append(float(value))
    return values[0], values[1]


HUB_DISTANCE_WARNING_KM: Final = 1500
# Fewer concurrent streams than this fitting their read-ahead into half a POP's memory is worth a warning.
STREAM_BUFFER_WARNING_STREAMS: Final = 10


def _stream_buffer_warnings(nginx: NginxSettings, pops: Sequence[PopConfig]) -> list[str]:
    """nginx holds up to `streamBufferMb` per media response in memory; a small POP may run out."""
    if nginx.stream_buffer_mb == 0:
        return []
    warnings = []
    sizes = {(pop.provider, pop.size): pop.size_info for pop in pops}
    for (provider, slug), size in sorted(sizes.items()):
        memory_mb = size.memory_gb * 1024
        streams = int(memory_mb / 2 // nginx.stream_buffer_mb)
        if streams < STREAM_BUFFER_WARNING_STREAMS:
            warnings.append(
                f"nginx.streamBufferMb: {nginx.stream_buffer_mb} MB per stream fills half of a {provider} {slug} "
                f"POP's {memory_mb:.0f} MB with {streams} streams; lower it (the default is "
                f"{NginxSettings().stream_buffer_mb}) or choose a larger size"
            )
    return warnings


def _hub_distance_warnings(origin: OriginConfig, pops: Sequence[PopConfig]) -> list[str]:
    """A hub far from the Plex server puts the long, lossy part of the path back on the home ISP's leg."""
    if origin.location is None:
        return []
    warnings = []
    for pop in pops:
        if pop.upstream != ORIGIN:
            continue
        region = regions.region(pop.provider, pop.region)
        km = regions.distance_km(origin.location, (region.latitude, region.longitude))
        if km > HUB_DISTANCE_WARNING_KM:
            closest = min(
                (
                    (regions.distance_km(origin.location, (r.latitude, r.longitude)), r.slug)
                    for r in regions.provider_table(pop.provider).regions.values()
                ),
            )
            warnings.append(
                f"pops: hub {pop.name!r} ({pop.provider}/{pop.region}, {region.city}) is {km:,.0f} km from the Plex "
                f"server: its hop to Plex crosses home ISPs for about {regions.fibre_rtt_ms(km):.0f} ms of round trip, "
                f"which is where loss costs the most; {pop.provider}'s closest region is {closest[1]} "
                f"({closest[0]:,.0f} km)"
            )
    return warnings


# Networks a cloud firewall never sees as a source: the deploying machine reaches a VM from its public address.
LOCAL_NETWORKS: Final = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
)
DEPLOY_FROM_MAX: Final = 20
# The broadest deployFrom network: one provider's allocation, not a share of the internet.
DEPLOY_FROM_MIN_PREFIX: Final = {4: 8, 6: 32}


def is_local_network(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return any(network.version == local.version and network.subnet_of(local) for local in LOCAL_NETWORKS)  # type: ignore[arg-type]


def _share(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return "the whole internet" if network.prefixlen == 0 else "a large share of the internet"


def _parse_deploy_from(problems: _Problems, raw: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    path = "admin.deployFrom"
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > DEPLOY_FROM_MAX:
        problems.add(
            path,
            f"must be a list of at most {DEPLOY_FROM_MAX} networks in CIDR form, the public addresses of the machines "
            f"that run `pulumi up` outside admin.cidr, e.g. [198.51.100.4/32]; got {raw!r}",
        )
        return ()
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for index, value in enumerate(raw):
        setting = f"{path}[{index}]"
        try:
            network = ipaddress.ip_network(str(value).strip())
        except ValueError:
            problems.add(
                setting, f"{value!r} is not a network in CIDR form such as 198.51.100.4/32 (host bits must be zero)"
            )
            continue
        if network.prefixlen < DEPLOY_FROM_MIN_PREFIX[network.version]:
            problems.add(
                setting,
                f"{network} would open SSH on every VM to {_share(network)}; "
                "list the deploying machines' own addresses (e.g. 198.51.100.4/32, at most a "
                f"/{DEPLOY_FROM_MIN_PREFIX[4]} or an IPv6 /{DEPLOY_FROM_MIN_PREFIX[6]}), or deploy from a self-hosted "
                "runner inside admin.cidr (docs/ci.md)",
            )
            continue
        if is_local_network(network):
            problems.add(
                setting,
                f"{network} is a private network: a cloud firewall sees the public address a deploying machine's "
                "router gives it; list that public address instead",
            )
            continue
        networks.append(network)
    return tuple(networks)


def _parse_admin(problems: _Problems, raw: object) -> AdminConfig:
    reader = _Reader(problems, "admin", raw, ("sshPublicKey", "cidr", "deployFrom"))
    if raw is None:
        problems.add("admin", "is required (sshPublicKey and cidr)")
    key = reader.string(
        "sshPublicKey",
        check=lambda v: (
            None if _SSH_KEY.match(v) else "must be an OpenSSH public key line (ssh-ed25519 AAAA... comment)"
        ),
    )
    cidr_text = reader.string("cidr")
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network("127.0.0.1/32")
    if cidr_text:
        try:
            cidr = ipaddress.ip_network(cidr_text)
            if cidr.prefixlen == 0:
                problems.add(
                    "admin.cidr",
                    "must not be the whole internet: SSH would be open to the world; "
                    "use your address, e.g. 203.0.113.7/32",
                )
        except ValueError:
            problems.add(
                "admin.cidr",
                f"{cidr_text!r} is not a network in CIDR form such as 203.0.113.7/32 (host bits must be zero)",
            )
    return AdminConfig(key, cidr, _parse_deploy_from(problems, reader.raw.get("deployFrom")))


def _parse_nginx(problems: _Problems, raw: object) -> NginxSettings:
    reader = _Reader(
        problems,
        "nginx",
        raw,
        ("viewerHttp2", "streamTimeoutSeconds", "artworkCacheMb", "upstreamKeepalive", "maxBodyMb", "streamBufferMb"),
    )
    defaults = NginxSettings()
    return NginxSettings(
        viewer_http2=reader.boolean("viewerHttp2", defaults.viewer_http2),
        stream_timeout_s=reader.integer("streamTimeoutSeconds", defaults.stream_timeout_s, 5, 86400),
        artwork_cache_mb=reader.integer("artworkCacheMb", defaults.artwork_cache_mb, 0, 100_000),
        upstream_keepalive=reader.integer("upstreamKeepalive", defaults.upstream_keepalive, 1, 1024),
        max_body_mb=reader.integer("maxBodyMb", defaults.max_body_mb, 1, 10_000),
        stream_buffer_mb=reader.integer("streamBufferMb", defaults.stream_buffer_mb, 0, 256),
    )


def _nearby(provider: str, slug: str, candidates: Sequence[str], describe: Callable[[regions.Region], str]) -> str:
    found = regions.nearest_regions(provider, slug, candidates)
    table = regions.provider_table(provider).regions
    return ", ".join(f"{other} ({describe(table[other])}, {km:,.0f} km)" for other, km in found)


def _no_user_data_message(provider: str, slug: str) -> str:
    region = regions.region(provider, slug)
    serving = [other for other in regions.provider_table(provider).regions if regions.serves_user_data(provider, other)]
    return (
        f"{provider} region {slug!r} ({region.city}) is not confirmed to serve Metadata, the service a new Linode "
        "reads its user data from, so this VM would boot without the cloud-init document that sets it up "
        f"({regions.LINODE_METADATA_SOURCE}, as of {regions.LINODE_METADATA_AS_OF}); use a region that serves it, "
        f"nearest: {_nearby(provider, slug, serving, lambda r: r.city)}"
    )


def _read_vm(reader: _Reader, problems: _Problems, path: str) -> tuple[str, str, str]:
    """A cloud VM's provider, region and size, each checked against the provider's table."""
    provider = reader.choice("provider", sorted(regions.PROVIDERS))
    region_slug = reader.string("region")
    size_slug = reader.string("size")
    table = regions.PROVIDERS.get(provider)
    if table is not None:
        if region_slug and region_slug not in table.regions:
            problems.add(
                f"{path}.region", f"{region_slug!r} is not a {provider} region; use {_one_of(sorted(table.regions))}"
            )
        elif region_slug and not regions.serves_user_data(provider, region_slug):
            problems.add(f"{path}.region", _no_user_data_message(provider, region_slug))
        if size_slug and size_slug not in table.sizes:
            problems.add(
                f"{path}.size",
                f"{size_slug!r} is not a {provider} size this program knows; use {_one_of(list(table.sizes))}",
            )
    return provider, region_slug, size_slug


def _parse_pop(problems: _Problems, index: int, raw: object) -> PopConfig:
    path = f"pops[{index}]"
    reader = _Reader(problems, path, raw, ("name", "provider", "region", "size", "upstream"))
    if not reader.ok:
        return PopConfig("", "", "", "", "")
    name = reader.string(
        "name",
        check=lambda v: (
            None
            if _POP_NAME.match(v) and v != ORIGIN
            else "must be 1-12 lower-case letters or digits starting with a letter "
            "(it becomes part of a DNS name), and not 'origin'"
        ),
    )
    provider, region_slug, size_slug = _read_vm(reader, problems, path)
    upstream = reader.string("upstream")
    return PopConfig(name, provider, region_slug, size_slug, upstream)


def _check_topology(  # noqa: PLR0912 - one pass over the tree, one branch per rule a user can break
    problems: _Problems, pops: Sequence[PopConfig], origin: OriginConfig
) -> None:
    names = [pop.name for pop in pops]
    seen: set[str] = set()
    for index, pop in enumerate(pops):
        if pop.name and pop.name in seen:
            problems.add(f"pops[{index}].name", f"{pop.name!r} is used by another POP; POP names must be unique")
        seen.add(pop.name)
    for index, pop in enumerate(pops):
        if pop.upstream and pop.upstream != ORIGIN and pop.upstream not in names:
            problems.add(f"pops[{index}].upstream", f"{pop.upstream!r} is not a POP; use 'origin' or {_one_of(names)}")
        elif pop.upstream == pop.name:
            problems.add(f"pops[{index}].upstream", "a POP cannot be its own upstream")
    upstream_of = {pop.name: pop.upstream for pop in pops}
    index_of = {pop.name: index for index, pop in enumerate(pops)}
    reported: set[frozenset[str]] = set()
    for pop in pops:
        chain: list[str] = []
        current = pop.name
        while current in upstream_of and current not in chain:
            chain.append(current)
            current = upstream_of[current]
        cycle = chain[chain.index(current) :] if current in chain else []
        if len(cycle) > 1 and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            problems.add(
                f"pops[{index_of[cycle[0]]}].upstream",
                f"upstream cycle {' -> '.join([*cycle, cycle[0]])}; every chain must end at 'origin'",
            )
    hubs = [pop for pop in pops if pop.upstream == ORIGIN]
    if pops and not hubs:
        problems.add("pops", "no POP has upstream 'origin': at least one hub POP must reach the Plex server")
    if origin.link == "wireguard" and len(hubs) > 1:
        problems.add(
            "pops",
            f"origin.link is wireguard, which gives one tunnel to one hub, but {', '.join(p.name for p in hubs)} "
            "all have upstream 'origin'; point all but one at that hub POP",
        )
    if origin.link == "public" and hubs and origin.host:
        try:
            address = ipaddress.ip_address(origin.host)
        except ValueError:
            address = None
        if address is not None and not address.is_global:
            problems.add(
                "origin.host",
                f"{origin.host} is not reachable from the internet, so hub POP {hubs[0].name!r} cannot reach it with "
                "origin.link public; give the public name or address, or use origin.link wireguard",
            )


def _check_latency_regions(problems: _Problems, pops: Sequence[PopConfig]) -> None:
    """Each POP answers for the shared name with a latency record in its region's AWS region, and Route53
    takes one per AWS region: "You can only create one latency resource record set for each Amazon EC2
    Region" (the Route53 API model, ResourceRecordSet.Region, as in botocore's
    data/route53/2013-04-01/service-2.json and the API reference). A second POP there would be refused."""
    known = [p for p in pops if p.provider in regions.PROVIDERS and p.region in regions.PROVIDERS[p.provider].regions]
    taken = {p.region_info.aws_region for p in known}
    holder: dict[str, int] = {}
    for index, pop in enumerate(pops):
        table = regions.PROVIDERS.get(pop.provider)
        if table is None or pop.region not in table.regions:
            continue  # reported where the region is read
        aws_region = table.regions[pop.region].aws_region
        if aws_region not in holder:
            holder[aws_region] = index
            continue
        first = pops[holder[aws_region]]
        free = [
            slug
            for slug, region in table.regions.items()
            if region.aws_region not in taken and regions.serves_user_data(pop.provider, slug)
        ]
        problems.add(
            f"pops[{index}].region",
            f"{pop.provider} {pop.region} ({table.regions[pop.region].city}) answers for the shared name in AWS "
            f"region {aws_region}, as pops[{holder[aws_region]}].region does (POP {first.name!r}, {first.provider} "
            f"{first.region}); Route53 allows one latency record per AWS region for a name, so it would refuse the "
            f"one of POP {pop.name!r}. Use a {pop.provider} region that maps to an AWS region no other POP uses, "
            f"nearest: {_nearby(pop.provider, pop.region, free, lambda r: f'{r.city}, {r.aws_region}')}; or leave "
            "out one of the two: Route53 measures latency to AWS regions, so it could not tell them apart anyway",
        )


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _check_shared_path(value: str) -> str | None:
    if not value.startswith("/") or value.startswith("//") or posixpath.normpath(value) != value:
        return "must be an absolute path without '.', '..', '//' or a trailing '/', e.g. /srv/media"
    if value == "/":
        return "must not be / (the whole system)"
    if _PATH_UNSAFE.search(value):
        return "must not hold control characters, double quotes or backslashes (fstab and exports cannot carry them)"
    for system in SYSTEM_DIRS:
        if _inside(value, system) or _inside(system, value):
            return f"overlaps {system}, which each slave needs for itself; share a directory of your own data"
    if _inside(PLEX_HOME, value):
        return (
            f"holds {PLEX_HOME}, the plex account's home on the slaves (its .ssh is where the origin's key is "
            "authorised); share a directory below it, such as the app data dir"
        )
    return None


def _check_host_key(value: str) -> str | None:
    if _SSH_HOST_KEY.match(value):
        return None
    return (
        "must be the machine's SSH host key as `ssh-keyscan -t ed25519 HOST` prints it after the host name "
        "(ssh-ed25519 AAAA...): `pulumi up` then sends its secrets to that machine and no other"
    )


def _check_unix_user(value: str) -> str | None:
    return None if _UNIX_USER.match(value) else "must be a user name such as root or admin"


def _parse_transcode_origin(problems: _Problems, raw: object) -> TranscodeOriginAccess:
    path = "transcode.origin"
    reader = _Reader(problems, path, raw, ("host", "port", "user", "hostKey"))
    if raw is None:
        problems.add(
            path, "is required: host, port, user and hostKey `pulumi up` logs in to the Plex server with over SSH"
        )
    return TranscodeOriginAccess(
        host=reader.string("host", check=_check_host),
        port=reader.integer("port", 22, 1, 65535),
        user=reader.string("user", "root", check=_check_unix_user),
        host_key=reader.string("hostKey", check=_check_host_key),
    )


_HOST_ONLY: Final = ("host", "port", "user", "hostKey")
_CLOUD_ONLY: Final = ("provider", "region", "size")


def _check_host_slave_address(value: str) -> str | None:
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


def _parse_transcode_slave(problems: _Problems, index: int, raw: object) -> TranscodeSlaveConfig | None:
    path = f"transcode.slaves[{index}]"
    reader = _Reader(problems, path, raw, ("name", "kind", *_HOST_ONLY, *_CLOUD_ONLY))
    if not reader.ok:
        return None
    name = reader.string(
        "name",
        check=lambda v: (
            None
            if _SLAVE_NAME.match(v) and len(v) <= 16
            else "must be 1-16 lower-case letters, digits or single '-', starting with a letter and ending in a "
            "letter or digit (it names the VM and the slave in the dispatcher's log)"
        ),
    )
    kind = reader.choice("kind", TRANSCODE_KINDS)
    if kind not in TRANSCODE_KINDS:
        return None
    unused = _CLOUD_ONLY if kind == "host" else _HOST_ONLY
    for key in unused:
        if key in reader.raw:
            other = "cloud" if kind == "host" else "host"
            problems.add(f"{path}.{key}", f"only slaves of kind {other} have a {key}; this one is kind {kind}")
    if kind == "host":
        return TranscodeSlaveConfig(
            name,
            "host",
            host=reader.string("host", check=_check_host_slave_address),
            port=reader.integer("port", 22, 1, 65535),
            user=reader.string("user", "root", check=_check_unix_user),
            host_key=reader.string("hostKey", check=_check_host_key),
        )
    provider, region_slug, size_slug = _read_vm(reader, problems, path)
    return TranscodeSlaveConfig(name, "cloud", provider=provider, region=region_slug, size=size_slug)


def _parse_plex_id(problems: _Problems, reader: _Reader, key: str, what: str) -> int:
    value = reader.raw.get(key)
    if value is None:
        problems.add(f"transcode.{key}", f"is required: the plex account's {what} on the Plex server (`id plex`)")
        return 0
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,10}", value.strip(" ")):
        value = int(value.strip(" "))
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31 - 1:
        problems.add(
            f"transcode.{key}",
            f"must be the plex account's {what} on the Plex server (`id plex`), a whole number from 1, got {value!r}",
        )
        return 0
    return value


def _parse_tunnel_subnet(problems: _Problems, reader: _Reader) -> ipaddress.IPv4Network | None:
    text = reader.optional_string("tunnelSubnet")
    if text is None:
        return None
    try:
        subnet = ipaddress.IPv4Network(text)
    except ValueError:
        problems.add("transcode.tunnelSubnet", f"{text!r} is not an IPv4 network such as 10.78.0.0/24")
        return None
    if not subnet.is_private or subnet.num_addresses < 4:
        problems.add(
            "transcode.tunnelSubnet", "must be a private IPv4 network of at least 4 addresses, e.g. 10.78.0.0/24"
        )
        return None
    return subnet


def _check_transcode_paths(problems: _Problems, transcode: TranscodeConfig) -> None:
    # Paths already reported as invalid would only repeat themselves here.
    shared = [item for item in transcode.shared_paths if item[1] and _check_shared_path(item[1]) is None]
    for later in range(len(shared)):
        setting, path, _ = shared[later]
        for earlier in range(later):
            other_setting, other, _ = shared[earlier]
            if _inside(path, other) or _inside(other, path):
                hint = ""
                if setting == "transcode.transcodeDir" and _inside(path, other):
                    hint = (
                        "; Plex's default transcode directory is inside its app data: set Settings > Transcoder > "
                        "Transcoder temporary directory to a directory of its own and name it here"
                    )
                problems.add(
                    setting,
                    f"{path} overlaps {other_setting} ({other}): each shared directory is mounted on its own, so "
                    f"none may hold another{hint}",
                )
                break


def _check_slave_names_and_hosts(problems: _Problems, transcode: TranscodeConfig) -> None:
    seen: dict[str, int] = {}
    hosts: dict[str, int] = {}
    for index, slave in enumerate(transcode.slaves):
        path = f"transcode.slaves[{index}]"
        if slave.name in seen:
            problems.add(f"{path}.name", f"{slave.name!r} is used by slaves[{seen[slave.name]}]; names must be unique")
        seen.setdefault(slave.name, index)
        if slave.kind != "host" or not slave.host:
            continue
        if slave.host == transcode.origin.host:
            problems.add(f"{path}.host", f"{slave.host} is transcode.origin.host, the Plex server itself")
        elif slave.host in hosts:
            problems.add(f"{path}.host", f"{slave.host} is also slaves[{hosts[slave.host]}]; one slave per machine")
        hosts.setdefault(slave.host, index)


def _check_tunnel_subnet(
    problems: _Problems, transcode: TranscodeConfig, origin: OriginConfig, subnet_given: bool
) -> None:
    subnet = transcode.tunnel_subnet
    cloud = transcode.cloud_slaves
    if not cloud:
        return
    if subnet is None:
        if not subnet_given:  # a given but invalid subnet is reported where it is parsed
            problems.add(
                "transcode.tunnelSubnet",
                f"is required when a slave is of kind cloud ({', '.join(s.name for s in cloud)}): a private network "
                "for the WireGuard tunnels from the Plex server, e.g. 10.78.0.0/24",
            )
        return
    if subnet.num_addresses - 2 < len(cloud) + 1:
        problems.add(
            "transcode.tunnelSubnet",
            f"{subnet} has room for {subnet.num_addresses - 3} cloud slaves besides the Plex server, "
            f"but {len(cloud)} are configured; use a larger network such as /24",
        )
    if subnet.overlaps(origin.tunnel_subnet):
        problems.add(
            "transcode.tunnelSubnet",
            f"{subnet} overlaps origin.tunnelSubnet ({origin.tunnel_subnet}); the Plex server may carry both tunnels, "
            "so pick another private network",
        )
    inside = [
        (f"transcode.slaves[{index}].host", slave.host)
        for index, slave in enumerate(transcode.slaves)
        if slave.kind == "host" and slave.host
    ]
    inside.append(("transcode.origin.host", transcode.origin.host))
    for setting, host in inside:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            continue
        if address in subnet:
            problems.add(
                setting,
                f"{host} lies inside transcode.tunnelSubnet ({subnet}); pick a tunnel network your LAN does not use",
            )


def _parse_transcode(problems: _Problems, raw: object, origin: OriginConfig) -> TranscodeConfig | None:
    if raw is None:
        return None
    reader = _Reader(
        problems,
        "transcode",
        raw,
        (
            "origin",
            "plexVersion",
            "plexUid",
            "plexGid",
            "appDataDir",
            "transcodeDir",
            "mediaPaths",
            "tunnelSubnet",
            "wireguardPort",
            "slaves",
        ),
    )
    if not reader.ok:
        return None
    version = reader.string(
        "plexVersion",
        check=lambda v: (
            None
            if _PLEX_VERSION.match(v)
            else "must be the plexmediaserver version exactly as the Plex server's package manager shows it "
            "(`dpkg-query -W -f='${Version}' plexmediaserver`), e.g. 1.41.3.9314-a0bfb8370"
        ),
    )
    uid = _parse_plex_id(problems, reader, "plexUid", "user id")
    gid = _parse_plex_id(problems, reader, "plexGid", "group id")
    app_data = reader.string(
        "appDataDir", "/var/lib/plexmediaserver/Library/Application Support/Plex Media Server", _check_shared_path
    )
    transcode_dir = reader.string("transcodeDir", check=_check_shared_path)
    raw_media = reader.raw.get("mediaPaths")
    media: list[str] = []
    if not isinstance(raw_media, list) or not raw_media:
        problems.add("transcode.mediaPaths", "must be a non-empty list of the directories your Plex libraries use")
    else:
        for index, value in enumerate(raw_media):
            setting = f"transcode.mediaPaths[{index}]"
            if not isinstance(value, str) or not value.strip():
                problems.add(setting, f"must be a directory path, got {value!r}")
                continue
            if (message := _check_shared_path(value.strip())) is not None:
                problems.add(setting, message)
            media.append(value.strip())
    raw_slaves = reader.raw.get("slaves")
    slaves: list[TranscodeSlaveConfig] = []
    if not isinstance(raw_slaves, list) or not raw_slaves:
        problems.add(
            "transcode.slaves", "must be a non-empty list of slaves (name and kind host or cloud, with their settings)"
        )
    else:
        for index, raw_slave in enumerate(raw_slaves):
            slave = _parse_transcode_slave(problems, index, raw_slave)
            if slave is not None:
                slaves.append(slave)
    transcode = TranscodeConfig(
        origin=_parse_transcode_origin(problems, reader.raw.get("origin")),
        plex_version=version,
        plex_uid=uid,
        plex_gid=gid,
        app_data_dir=app_data,
        transcode_dir=transcode_dir,
        media_paths=tuple(media),
        tunnel_subnet=_parse_tunnel_subnet(problems, reader),
        wireguard_port=reader.integer("wireguardPort", 51820, 1024, 65535),
        slaves=tuple(slaves),
    )
    _check_transcode_paths(problems, transcode)
    _check_slave_names_and_hosts(problems, transcode)
    _check_tunnel_subnet(problems, transcode, origin, reader.raw.get("tunnelSubnet") is not None)
    return transcode


_LIBRARY_HOST_ONLY: Final = ("host", "port", "user", "hostKey", "swarmCidrs", "plex")
_LIBRARY_ROLE_ONLY: Final = {"seeder": ("mediaDir",), "viewer": ("mountDir", "plex")}


def _check_absolute_dir(value: str) -> str | None:
    if not value.startswith("/") or _PATH_UNSAFE.search(value) or value.rstrip("/") == "":
        return "must be an absolute directory path such as /srv/media, without quotes or backslashes"
    return None


def _parse_swarm_cidrs(problems: _Problems, path: str, raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.add(path, f"must be a list of networks such as [203.0.113.0/24], got {raw!r}")
        return ()
    networks: list[str] = []
    for index, value in enumerate(raw):
        try:
            networks.append(str(ipaddress.ip_network(str(value), strict=False)))
        except ValueError:
            problems.add(f"{path}[{index}]", f"{value!r} is not a network such as 203.0.113.0/24 or 2001:db8::/48")
    return tuple(networks)


def _parse_library_peer(
    problems: _Problems, role: Literal["seeder", "viewer"], index: int, raw: object
) -> LibraryPeerConfig | None:
    path = f"library.{role}s[{index}]"
    role_keys = _LIBRARY_ROLE_ONLY[role]
    other_keys = tuple(k for k in _LIBRARY_ROLE_ONLY["viewer" if role == "seeder" else "seeder"] if k not in role_keys)
    reader = _Reader(
        problems, path, raw, ("name", "kind", *_LIBRARY_HOST_ONLY, *_CLOUD_ONLY, *role_keys, *other_keys, "cacheGb")
    )
    if not reader.ok:
        return None
    for key in other_keys:
        if key in reader.raw:
            problems.add(f"{path}.{key}", f"only {'viewers' if role == 'seeder' else 'seeders'} have a {key}")
    name = reader.string(
        "name",
        check=lambda v: (
            None
            if _SLAVE_NAME.match(v) and len(v) <= 16
            else "must be 1-16 lower-case letters, digits or single '-', starting with a letter and ending in a "
            "letter or digit (it names the peer's VM, services and outputs)"
        ),
    )
    kind = reader.choice("kind", MACHINE_KINDS)
    if kind not in MACHINE_KINDS:
        return None
    for key in _CLOUD_ONLY if kind == "host" else _LIBRARY_HOST_ONLY:
        if key in reader.raw:
            other = "cloud" if kind == "host" else "host"
            problems.add(f"{path}.{key}", f"only peers of kind {other} have a {key}; this one is kind {kind}")
    media_dir = reader.string("mediaDir", check=_check_absolute_dir) if role == "seeder" else ""
    mount_dir = reader.string("mountDir", DEFAULT_LIBRARY_MOUNT, _check_absolute_dir) if role == "viewer" else ""
    cache_gb = reader.integer("cacheGb", 50, 1, 100_000)
    common = {"media_dir": media_dir, "mount_dir": mount_dir, "cache_gb": cache_gb}
    if kind == "cloud":
        provider, region_slug, size_slug = _read_vm(reader, problems, path)
        return LibraryPeerConfig(
            name,
            role,
            "cloud",
            provider=provider,
            region=region_slug,
            size=size_slug,
            **common,  # type: ignore[arg-type]
        )
    host = reader.string("host", check=_check_host)
    cidrs = _parse_swarm_cidrs(problems, f"{path}.swarmCidrs", reader.raw.get("swarmCidrs"))
    if host and _check_host(host) is None and not cidrs:
        try:
            cidrs = (str(ipaddress.ip_network(host)),)
        except ValueError:
            problems.add(
                f"{path}.swarmCidrs",
                f"is needed because {host} is a name: firewalls admit addresses, not names; list the address or "
                "network this peer connects from, e.g. [203.0.113.7/32]",
            )
    return LibraryPeerConfig(
        name,
        role,
        "host",
        host=host,
        port=reader.integer("port", 22, 1, 65535),
        user=reader.string("user", "root", check=_check_unix_user),
        host_key=reader.string("hostKey", check=_check_host_key),
        swarm_cidrs=cidrs,
        plex=reader.boolean("plex", True) if role == "viewer" else False,
        **common,  # type: ignore[arg-type]
    )


def _parse_bitswap(problems: _Problems, raw: object) -> BitswapSettings:
    keys = {
        "engineBlockstoreWorkerCount": "engine_blockstore_worker_count",
        "engineTaskWorkerCount": "engine_task_worker_count",
        "maxOutstandingBytesPerPeer": "max_outstanding_bytes_per_peer",
        "taskWorkerCount": "task_worker_count",
    }
    reader = _Reader(problems, "library.bitswap", raw, tuple(keys))
    defaults = BitswapSettings()
    return BitswapSettings(
        **{
            field_name: reader.integer(key, getattr(defaults, field_name), 1, 2**40 if "Bytes" in key else 100_000)
            for key, field_name in keys.items()
        }
    )


def _parse_library(problems: _Problems, raw: object) -> LibraryConfig | None:
    if raw is None:
        return None
    reader = _Reader(problems, "library", raw, ("swarm", "swarmPort", "bitswap", "seeders", "viewers"))
    if not reader.ok:
        return None
    swarm = reader.string(
        "swarm",
        check=lambda v: None if _SLAVE_NAME.match(v) and len(v) <= 24 else "must be a short name such as 'friends'",
    )
    swarm_port = reader.integer("swarmPort", 4001, 1024, 65535)
    bitswap = _parse_bitswap(problems, reader.raw.get("bitswap"))
    peers: list[LibraryPeerConfig] = []
    for role in LIBRARY_ROLES:
        raw_list = reader.raw.get(f"{role}s")
        if not isinstance(raw_list, list) or not raw_list:
            problems.add(
                f"library.{role}s",
                f"must be a non-empty list of {role}s (name and kind host or cloud, with their settings)",
            )
            continue
        for index, raw_peer in enumerate(raw_list):
            peer = _parse_library_peer(problems, role, index, raw_peer)
            if peer is not None:
                peers.append(peer)
    seen: dict[str, str] = {}
    for peer in peers:
        if peer.name and peer.name in seen:
            problems.add(
                "library",
                f"two peers are named {peer.name!r} ({seen[peer.name]} and {peer.role}): names name VMs and services",
            )
        seen.setdefault(peer.name, peer.role)
    return LibraryConfig(swarm, swarm_port, bitswap, tuple(peers))


def parse_config(values: Mapping[str, object], stack: str) -> StackConfig:
    """Build the typed configuration from the `plex-cdn:` settings (namespace stripped); raise ConfigError."""
    problems = _Problems()
    top = _Reader(problems, "", values, tuple(TOP_LEVEL_KEYS))
    domain = top.string("domain", check=_check_domain).rstrip(".").lower()
    shared_label = top.string(
        "sharedHostname",
        "plex",
        check=lambda v: None if _LABEL.match(v) and len(v) <= 40 else "must be one DNS label such as 'plex'",
    )
    acme = _parse_acme(problems, values.get("acme"))
    origin = _parse_origin(problems, values.get("origin"))
    admin = _parse_admin(problems, values.get("admin"))
    nginx = _parse_nginx(problems, values.get("nginx"))
    raw_pops = values.get("pops")
    pops: list[PopConfig] = []
    if not isinstance(raw_pops, list) or not raw_pops:
        problems.add("pops", "must be a non-empty list of POPs (name, provider, region, size, upstream)")
    else:
        pops = [_parse_pop(problems, index, raw) for index, raw in enumerate(raw_pops)]
        _check_topology(problems, pops, origin)
        _check_latency_regions(problems, pops)
    transcode = _parse_transcode(problems, values.get("transcode"), origin)
    library = _parse_library(problems, values.get("library"))
    if problems.items:
        raise ConfigError(problems.items)
    warnings = _hub_distance_warnings(origin, pops) + _stream_buffer_warnings(nginx, pops)
    if origin.link == "public" and origin.verify_name is None and origin.agent is None:
        warnings.append(
            "origin.verifyName is not set: the hub's hop to the Plex server is encrypted but not verified; "
            "set it to the name on the server's certificate (Settings > Network shows the *.plex.direct name), "
            "or use link wireguard"
        )
    return StackConfig(
        stack, domain, shared_label, acme, origin, admin, nginx, tuple(pops), tuple(warnings), transcode, library
    )


def stack_name_from_path(path: Path) -> str:
    match = re.fullmatch(r"Pulumi\.(.+)\.ya?ml", path.name)
    return match.group(1) if match else path.stem


def _stack_file_settings(path: Path) -> dict[str, object]:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError([f"{path}: cannot read the stack file ({error.strerror})"]) from error
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: not valid YAML ({error})"]) from error
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise ConfigError([f"{path}: a stack file needs a top-level 'config:' mapping"])
    prefix = f"{NAMESPACE}:"
    return {
        key[len(prefix) :]: value for key, value in config.items() if isinstance(key, str) and key.startswith(prefix)
    }


def read_stack_file(path: Path) -> dict[str, object]:
    """The `plex-cdn:` settings of a stack file, namespace stripped; other namespaces (provider tokens) and the
    encrypted secrets are left out."""
    return {key: value for key, value in _stack_file_settings(path).items() if key not in SECRET_KEYS}


def needs_home_ssh_key(config: StackConfig) -> bool:
    """The origin agent, transcode offload and library peers of kind host change machines over SSH."""
    host_peers = config.library is not None and any(peer.kind == "host" for peer in config.library.peers)
    return config.origin.agent is not None or config.transcode is not None or host_peers


def load_stack_file(path: Path) -> StackConfig:
    settings = _stack_file_settings(path)
    config = parse_config(
        {key: value for key, value in settings.items() if key not in SECRET_KEYS}, stack_name_from_path(path)
    )
    if needs_home_ssh_key(config) and HOME_SSH_KEY not in settings:
        warning = (
            f"{NAMESPACE}:{HOME_SSH_KEY} is not set: `pulumi up` needs the SSH key it logs in with to the machines "
            "it does not create (the Plex server, host transcode slaves, library peers of kind host); set it with "
            f"`pulumi config set --secret {NAMESPACE}:{HOME_SSH_KEY} < ~/.ssh/id_ed25519`"
        )
        config = dataclasses.replace(config, warnings=(*config.warnings, warning))
    return config
