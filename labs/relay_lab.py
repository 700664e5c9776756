"""The relay lab: a stack's rendered POP configs running for real, viewer -> edge -> hub -> origin.

Each POP gets a network namespace running real nginx on its rendered config, unchanged except for the
path prefix; a `client` namespace plays the viewer and an `origin` namespace runs a Plex-like server.
Namespaces are joined along the topology by veth pairs (or whatever `build(link=...)` is given: the WAN
benchmark passes emulated links) with addresses from 198.18.0.0/20, nothing has a default route, and
every name resolves through the namespace's own /etc/hosts.

`python -m labs lab up STACK_FILE` builds it and prints one JSON line; `python -m labs lab down`
removes it. Tests use `relay_lab()` as a context manager.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from labs import plex_standin as lab_origin
from labs import pop_tree
from labs.lab_ca import LabCA
from labs.netns import Lab, LabError, remove_namespaces_with_prefix
from plexcdn import PROJECT_ROOT, agent, render, topology
from plexcdn.config import StackConfig, load_stack_file

PREFIX = "pcr-"
LAB_NETWORK = ipaddress.ip_network("198.18.0.0/20")
STATE_DIR = Path("/run/plexcdn-lab")
ORIGIN_TLS_NAME_FALLBACK = "origin.lab.plex-cdn"
MEDIA_PATH = lab_origin.MEDIA_PATH
SILENCE_TABLE = "plexcdn_lab_silence"
DEFAULT_MEDIA_MB = 200

# Joins two of the lab's namespaces over a subnet and returns (first role's address, second role's address).
LinkMaker = Callable[[Lab, str, str, str], tuple[str, str]]


def veth_link(lab: Lab, a_role: str, b_role: str, subnet: str) -> tuple[str, str]:
    veth = lab.link(a_role, b_role, subnet)
    return str(veth.a_addr), str(veth.b_addr)


@dataclass
class RelayLab:
    """A running relay lab: where everything is, for tests and for a person."""

    config: StackConfig
    lab: Lab
    root: Path
    ca: LabCA  # stands in for Let's Encrypt
    peer_ca: LabCA  # stands in for the stack's peer CA
    client_cas: dict[str, LabCA] = field(default_factory=dict)  # each POP's own client CA, by POP
    addresses: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # (a, b) -> (a addr, b addr)
    viewer_pop: str = ""
    media_file: Path = Path()
    headers_log: Path = Path()
    origin_port: int = 32400
    origin_ca: LabCA | None = None  # with an origin agent: the stack's origin CA
    plex_token: str | None = None  # the one token the Plex stand-in accepts (None: any)

    @property
    def origin_dir(self) -> Path:
        return self.root / "origin"

    @property
    def agent_conf(self) -> Path:
        return self.origin_dir / "etc" / "nginx" / "nginx.conf"

    def pop_dir(self, pop: str) -> Path:
        return self.root / "pops" / pop

    def conf(self, pop: str) -> Path:
        return self.pop_dir(pop) / "etc" / "nginx" / "nginx.conf"

    def logs_dir(self) -> Path:
        return self.root / "pops"

    def nginx(self, pop: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the nginx binary against a POP's config inside its namespace (`-t`, `-s reload`, ...)."""
        return self.lab.run(pop, ["nginx", "-c", str(self.conf(pop)), *args], check=False)

    def start_nginx(self, pop: str) -> None:
        self.lab.start(pop, ["nginx", "-c", str(self.conf(pop)), "-g", "daemon off;"], log=self.root / f"{pop}.out")
        wait_for_port(self, pop, 443)

    def stop_nginx(self, pop: str) -> None:
        self.nginx(pop, "-s", "quit")
        pid_file = self.pop_dir(pop) / "run" / "nginx.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def check_certificate(self, pop: str) -> subprocess.CompletedProcess[str]:
        """The POP's certificate check as its hourly timer runs it (the unit's own arguments, on the lab's files)."""
        units = render.pop_units(self.config, pop, str(self.pop_dir(pop)))
        service = units[render.CERTIFICATE_CHECK_UNITS[0]]
        command = next(line for line in service.splitlines() if line.startswith("ExecStart=")).split()
        program = PROJECT_ROOT / "plexcdn" / "certificate_check.py"
        argv = [sys.executable, "-I", str(program), *command[1:]]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)

    def warm_chain(self, pop: str) -> subprocess.CompletedProcess[str]:
        """What plexcdn-warm-chain runs once nginx starts: the unit's own command, in the POP's namespace."""
        service = render.pop_units(self.config, pop, str(self.pop_dir(pop)))[render.WARM_CHAIN_UNIT]
        command = next(line for line in service.splitlines() if line.startswith("ExecStart=")).split("=", 1)[1]
        return self.lab.run(pop, command.removeprefix("-").split(), check=False)

    def kill_nginx(self, pop: str) -> None:
        """nginx gone at once, master and workers (one process group), as when it crashes: the POP's kernel
        refuses new connections and resets the open ones."""
        pid = int((self.pop_dir(pop) / "run" / "nginx.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.lab.run(pop, ["ss", "-Hltn", "sport = :443"], check=False).stdout.strip():
            if time.monotonic() > deadline:
                raise LabError(f"nginx of POP {pop} still listens after SIGKILL")
            time.sleep(0.05)

    def silence(self, role: str) -> None:
        """Every packet in and out of the namespace dropped without a word, as a VM that died does."""
        rules = (
            f"table inet {SILENCE_TABLE} {{\n"
            "  chain in { type filter hook input priority -400; policy drop; }\n"
            "  chain out { type filter hook output priority -400; policy drop; }\n"
            "}\n"
        )
        self.lab.run(role, ["nft", "-f", "-"], input=rules)

    def unsilence(self, role: str) -> None:
        self.lab.run(role, ["nft", "delete", "table", "inet", SILENCE_TABLE])

    def relay_addresses(self, pop: str, config: StackConfig | None = None) -> dict[str, str]:
        """The lab addresses of the POPs `pop` relays to (its upstream and fallback), by POP name."""
        return {way: self.addresses[(pop, way)][1] for way in topology.place(config or self.config, pop).relays_to}

    def start_upstream_watch(self, pop: str) -> subprocess.Popen[bytes]:
        """plexcdn-upstream-watch as its unit runs it (the unit's own arguments), in the edge's namespace."""
        program = f"{sys.executable} -I {PROJECT_ROOT / 'plexcdn' / 'upstream_watch.py'}"
        units = render.upstream_watch_units(self.config, pop, self.relay_addresses(pop), program=program)
        service = units[render.UPSTREAM_WATCH_UNIT]
        command = next(line for line in service.splitlines() if line.startswith("ExecStart=")).split("=", 1)[1]
        return self.lab.start(pop, command.split(), log=self.root / f"{pop}-upstream-watch.out")

    def render_pop(self, pop: str, config: StackConfig | None = None) -> None:
        """(Re)write a POP's nginx files from `config` (default: the lab's), as the deploy would."""
        config = config or self.config
        addresses = self.relay_addresses(pop, config)
        conf_dir = self.conf(pop).parent
        conf_dir.mkdir(parents=True, exist_ok=True)
        self.client_cas = pop_tree.client_cas(config, self.root / "client-cas", self.client_cas)
        peer = pop_tree.peer_certificates(
            config, pop, self.peer_ca, conf_dir, self.pop_dir(pop), client_authorities=self.client_cas
        )
        origin_client = self.pop_dir(pop) / "origin-client.crt"
        if origin_client.exists():
            peer = dataclasses.replace(peer, origin_client_cert_pem=origin_client.read_text())
        if self.origin_ca is not None:
            peer = dataclasses.replace(peer, origin_ca_pem=self.origin_ca.root_path.read_text())
        for name, text in render.nginx_files(
            config, pop, prefix=str(self.pop_dir(pop)), addresses=addresses or None, peer=peer
        ).items():
            (conf_dir / name).write_text(text)
        pop_tree.resolve_origin(self.lab, pop, config, pop, conf_dir)

    def info(self) -> dict[str, str]:
        return {
            "client_netns": self.lab.ns("client"),
            "url": self.config.shared_url,
            "ca_file": str(self.ca.bundle_path),
            "logs_dir": str(self.logs_dir()),
            "media_path": MEDIA_PATH,
            "media_file": str(self.media_file),
            "headers_log": str(self.headers_log),
        }


def wait_for_port(relay: RelayLab, role: str, port: int, timeout: float = 15) -> None:
    """Wait until something listens on `port` in the namespace (checked with `ss`, no traffic sent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listening = relay.lab.run(role, ["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
        if listening.strip():
            return
        time.sleep(0.1)
    raise LabError(f"nothing listens on port {port} in {relay.lab.ns(role)} after {timeout:.0f} s")


def _origin_tls_name(config: StackConfig) -> str:
    return config.origin.verify_name or (
        config.origin.host if not config.origin.host[0].isdigit() else ORIGIN_TLS_NAME_FALLBACK
    )


def _links(config: StackConfig) -> list[tuple[str, str]]:
    """Every hop of the tree as (downstream, upstream or fallback), plus the viewer's hop to the deepest POP."""
    hops = [(pop.name, way) for pop in config.pops for way in (pop.upstream, pop.fallback) if way is not None]
    deepest = max(topology.places(config), key=lambda p: (p.hops, p.pop.name)).pop.name
    return [("client", deepest), *hops]


def build(
    config: StackConfig,
    root: Path,
    lab: Lab,
    media_mb: int = DEFAULT_MEDIA_MB,
    link: LinkMaker = veth_link,
    *,
    plex_token: str | None = None,
) -> RelayLab:
    """Build the lab in `lab`; `link` joins each hop (a veth pair unless a benchmark emulates a WAN). With
    `plex_token`, the Plex stand-in accepts that token alone where Plex wants the owner's."""
    if config.origin.link != "public":
        raise LabError("the relay lab runs the public origin link; set origin.link: public in the stack it is given")
    root.mkdir(parents=True, exist_ok=True)
    ca = LabCA.create(root / "ca", "plex-cdn relay lab")
    # The stack's CAs sign leaves directly: the peer port and the agent verify one level deep.
    peer_ca = LabCA.create(root / "peer-ca", "plex-cdn relay lab peer", intermediate=False)
    relay = RelayLab(
        config, lab, root, ca, peer_ca, pop_tree.client_cas(config, root / "client-cas"), plex_token=plex_token
    )
    if config.origin.agent is not None:
        relay.origin_ca = LabCA.create(root / "origin-ca", "plex-cdn relay lab origin", intermediate=False)
    relay.origin_port = config.origin.port
    subnets = LAB_NETWORK.subnets(new_prefix=30)
    links = _links(config)
    relay.viewer_pop = links[0][1]
    for role in ("client", "origin", *(pop.name for pop in config.pops)):
        lab.add_namespace(role)
    for downstream, upstream in links:
        relay.addresses[(downstream, upstream)] = link(lab, downstream, upstream, str(next(subnets)))

    # Names: the viewer finds the shared name and the POP names at its POP; hubs find the Plex server.
    viewer_address = relay.addresses[("client", relay.viewer_pop)][1]
    client_hosts = {config.shared_name: viewer_address}
    client_hosts.update({config.pop_name(pop.name): viewer_address for pop in config.pops})
    lab.write_hosts("client", client_hosts)
    for pop in config.pops:
        hosts = {config.pop_name(pop.name): "127.0.0.1"}
        if pop.upstream == "origin":
            hosts[config.origin.host] = relay.addresses[(pop.name, "origin")][1]
        lab.write_hosts(pop.name, hosts)

    _install_certificates(relay)
    _start_origin(relay, media_mb)
    for place in topology.places(config):
        test = relay.nginx(place.pop.name, "-t")
        if test.returncode != 0:
            raise LabError(f"nginx -t rejected POP {place.pop.name}'s rendered config: {test.stderr}")
        relay.start_nginx(place.pop.name)
        if place.fallback is not None:
            relay.start_upstream_watch(place.pop.name)
    return relay


def _install_certificates(relay: RelayLab) -> None:
    """Certificates where the rendered config expects them: Let's Encrypt's layout for each POP's names,
    the lab CA in the POPs' trust bundle, and each POP's client certificate for its upstream hop."""
    config, ca = relay.config, relay.ca
    for place in topology.places(config):
        name = place.pop.name
        base = relay.pop_dir(name)
        for directory in ("run", "var/log/nginx", "var/cache/nginx", "etc/ssl/certs"):
            (base / directory).mkdir(parents=True, exist_ok=True)
        ca.issue(config.certificate_names(name), base / "etc" / "letsencrypt", config.pop_name(name))
        checked = relay.check_certificate(name)
        if checked.returncode != 0:
            raise LabError(f"{name}'s certificate check failed: {checked.stderr.strip()}")
        shutil.copyfile(ca.bundle_path, base / "etc" / "ssl" / "certs" / "ca-certificates.crt")
        _issue_origin_client_certificate(relay, config, name)
        relay.render_pop(name)


def _issue_origin_client_certificate(relay: RelayLab, config: StackConfig, pop: str) -> None:
    """A hub's client certificate for the origin agent, from the hub's own client CA (peer certificates come
    with each render)."""
    upstream = render.upstream_of(config, pop, render.placeholder_addresses(config))
    if upstream.client_key_file != render.ORIGIN_CLIENT_KEY_FILE:
        return
    relay.client_cas = pop_tree.client_cas(config, relay.root / "client-cas", relay.client_cas)
    key_path = relay.conf(pop).parent / upstream.client_key_file
    key_path.parent.mkdir(parents=True, exist_ok=True)
    relay.client_cas[pop].issue_client(config.pop_name(pop), relay.pop_dir(pop) / "origin-client.crt", key_path)


def _start_origin(relay: RelayLab, media_mb: int) -> None:
    """The Plex stand-in with its media file, and the origin agent in front of it when the stack has one."""
    config, ca = relay.config, relay.ca
    origin_dir = relay.origin_dir
    origin_dir.mkdir(exist_ok=True)
    relay.media_file = origin_dir / "media.mkv"
    lab_origin.make_media_file(relay.media_file, media_mb * 1024 * 1024)
    relay.headers_log = origin_dir / "headers.jsonl"
    if config.origin.agent is None:
        # Plex itself faces the hubs, with a certificate a public CA would have issued it.
        origin_cert = ca.issue([_origin_tls_name(config)], origin_dir / "tls", "origin")
        tls = ["--tls-cert", str(origin_cert.fullchain), "--tls-key", str(origin_cert.privkey)]
        listen = [relay.addresses[(pop.name, "origin")][1] for pop in config.pops if pop.upstream == "origin"]
    else:
        # Plex listens on loopback only; the agent's nginx faces the hubs.
        tls, listen = [], ["127.0.0.1"]
    for address in listen:
        _start_plex(relay, address, tls)
    wait_for_port(relay, "origin", relay.origin_port)
    if config.origin.agent is not None:
        _start_agent(relay, config)


def _start_plex(relay: RelayLab, address: str, tls: list[str]) -> None:
    if relay.plex_token is not None:
        token_file = relay.origin_dir / "plex-token"
        token_file.write_text(relay.plex_token + "\n")
        token_file.chmod(0o600)
        tls = [*tls, "--token-file", str(token_file)]
    relay.lab.start(
        "origin",
        [
            *(sys.executable, "-m", "labs.plex_standin"),
            *("--listen", f"{address}:{relay.origin_port}", "--media", str(relay.media_file)),
            *("--headers-log", str(relay.headers_log), *tls),
        ],
        log=relay.origin_dir / f"origin-{address}.out",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def add_agent(relay: RelayLab, agent_config: StackConfig) -> None:
    """Run the origin agent of `agent_config` beside a lab built without one, so that one lab can serve
    both ways (the WAN benchmark compares them): Plex also on loopback, the agent's nginx facing the hubs,
    and each hub's client certificate from the origin CA. `render_pop(pop, agent_config)` then points
    the hubs at the agent."""
    agent.require_agent(agent_config)
    if relay.config.origin.agent is not None:
        raise LabError("this lab already runs the origin agent")
    relay.origin_ca = LabCA.create(relay.root / "origin-ca", "plex-cdn relay lab origin", intermediate=False)
    _start_plex(relay, "127.0.0.1", [])
    for pop in relay.config.pops:
        if pop.upstream == "origin":
            _issue_origin_client_certificate(relay, agent_config, pop.name)
    _start_agent(relay, agent_config)


def _start_agent(relay: RelayLab, config: StackConfig) -> None:
    """The origin agent as `pulumi up` installs it, in the origin namespace: its rendered conf.d file
    inside a minimal main config (Debian's nginx.conf includes conf.d the same way)."""
    settings = agent.require_agent(config)
    assert relay.origin_ca is not None
    prefix = relay.origin_dir
    agent_dir = Path(f"{prefix}{agent.AGENT_DIR}")
    issued = relay.origin_ca.issue([agent.tls_name(config)], prefix / "letsencrypt", "agent")
    agent_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(issued.fullchain, agent_dir / "server.crt")
    shutil.copyfile(issued.privkey, agent_dir / "server.key")
    # The agent accepts the hubs' own client CAs, as the install script writes them.
    hubs = [pop.name for pop in topology.hubs(config)]
    (agent_dir / "hub-client-cas.pem").write_text("".join(relay.client_cas[hub].root_path.read_text() for hub in hubs))
    snippet = Path(f"{prefix}{agent.CONF_PATH}")
    snippet.parent.mkdir(parents=True, exist_ok=True)
    snippet.write_text(agent.nginx_conf(config, prefix=str(prefix)))
    for directory in ("run", "var/log/nginx"):
        (prefix / directory).mkdir(parents=True, exist_ok=True)
    relay.agent_conf.write_text(
        f"pid {prefix}/run/nginx.pid;\nerror_log {prefix}/var/log/nginx/error.log warn;\n"
        f"events {{}}\nhttp {{\n    include /etc/nginx/mime.types;\n    include {snippet};\n}}\n"
    )
    test = relay.lab.run("origin", ["nginx", "-t", "-c", str(relay.agent_conf)], check=False)
    if test.returncode != 0:
        raise LabError(f"nginx -t rejected the rendered origin agent: {test.stderr}")
    relay.lab.start("origin", ["nginx", "-c", str(relay.agent_conf), "-g", "daemon off;"], log=relay.root / "agent.out")
    wait_for_port(relay, "origin", settings.listen_port)


@contextlib.contextmanager
def relay_lab(
    config: StackConfig,
    root: Path,
    media_mb: int = DEFAULT_MEDIA_MB,
    prefix: str = PREFIX,
    link: LinkMaker = veth_link,
    *,
    plex_token: str | None = None,
) -> Iterator[RelayLab]:
    """Build the lab, yield it, and always tear it down completely."""
    with Lab(prefix) as lab:
        yield build(config, root, lab, media_mb, link, plex_token=plex_token)


def lab_up(stack_file: Path, media_mb: int) -> dict[str, str]:
    down()
    config = load_stack_file(stack_file)
    root = STATE_DIR
    lab = Lab(PREFIX)
    try:
        relay = build(config, root, lab, media_mb)
    except BaseException:
        lab.close()
        raise
    info = relay.info()
    (root / "lab.json").write_text(json.dumps({"info": info, "namespaces": lab.namespaces}))
    # The processes outlive this command; `lab down` finds them through their namespaces.
    lab.processes.clear()
    lab.namespaces.clear()
    return info


def down() -> list[str]:
    removed = remove_namespaces_with_prefix(PREFIX)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    return removed
