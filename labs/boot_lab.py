"""The boot lab: Debian 13 guests that boot the program's user_data and take its pulumi-command steps.

One `BootLab` is, all on this machine:
- the package cache (`labs.package_cache`) on loopback, which guests reach through QEMU's user-mode
  network and nothing else there;
- a network namespace `pcv-lab` holding the lab bridge (`LAB_SUBNET`), where the guests' eth0 are;
  it has no route anywhere;
- lab services on the bridge (`labs.boot_lab_services`): DNS answering from moto's Route53 zones and
  the lab's records, and HTTPS for Route53/IAM (moto) and Let's Encrypt's ACME names (Pebble);
- moto and Pebble on loopback (Pebble validates DNS-01 against the lab DNS), as in the certificate lab;
- the Plex stand-in on the bridge (`start_origin`), its name in the lab DNS;
- a viewer namespace `pcv-viewer` on the bridge, resolving through the lab DNS;
- guests (`labs.guests`), at most two at a time, each at `guest_address(i)`.

The lab's CA (which signs the HTTPS front and the origin, and which the image trusts) and the lab's
SSH key (which the image authorizes for the lab's own access, apart from the program's keys) are made
once and kept under /var/cache/plexcdn-lab/boot-lab/, so the image stays cached between runs.

`python -m labs lab vms up|logs|down` drives it from the command line; tests use `boot_lab()`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from labs import boot_lab_services as services
from labs import guest_environment as env
from labs import guest_image, guests, package_cache
from labs import plex_standin as origin_standin
from labs.cert_lab import MotoRoute53, Pebble, free_port
from labs.guest_image import BaseImage, EnvironmentFile
from labs.lab_ca import LabCA
from labs.netns import NETNS_ETC, Lab, LabError, lab_unavailable_reason, remove_namespaces_with_prefix
from labs.remote_steps import (
    DIAL_ERROR_LIMIT_DEFAULT,
    PER_DIAL_TIMEOUT_DEFAULT,
    CommandResult,
    CommandStep,
    Connection,
    CopyStep,
    Deployment,
    SshSession,
    Step,
    StepError,
    StepRunner,
)
from plexcdn.config import StackConfig, load_stack_file

if TYPE_CHECKING:
    from labs.stack_engine import MadeResource

PREFIX: Final = "pcv-"
LAB_ROLE: Final = "lab"
VIEWER_ROLE: Final = "viewer"
STATE_DIR: Final = Path("/run/plexcdn-lab-vms")
PERSISTENT_DIR: Final = Path("/var/cache/plexcdn-lab/boot-lab")
LAB_CA_NAME: Final = "plex-cdn boot lab"
LAB_KEY_AUTHORIZED_FILE: Final = "/etc/ssh/plexcdn-lab-authorized-keys"
# Three 1-vCPU guests on the lab machine's two cores: a stack's two POPs and one more (a second stack's VM).
MAX_RUNNING_GUESTS: Final = 3
DEFAULT_MEDIA_MB: Final = 64
PROJECT_ROOT: Final = Path(__file__).resolve().parents[1]
SERVICE_START_SECONDS: Final = 60


def _locked(path: Path) -> contextlib.AbstractContextManager[Any]:
    path.parent.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def hold() -> Iterator[None]:
        with path.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    return hold()


def boot_lab_ca(directory: Path = PERSISTENT_DIR / "ca") -> LabCA:
    """The lab's CA, made on first use and kept (the image trusts it, so it is part of the image's key)."""
    with _locked(directory.parent / ".ca.lock"):
        try:
            return LabCA.load(directory, LAB_CA_NAME)
        except FileNotFoundError:
            return LabCA.create(directory, LAB_CA_NAME)


@dataclass(frozen=True)
class LabKey:
    private_key: str = field(repr=False)
    public_key: str


def lab_ssh_key(directory: Path = PERSISTENT_DIR / "ssh") -> LabKey:
    """The lab's own SSH key (ed25519, OpenSSH format), made on first use and kept."""
    private_path, public_path = directory / "id_ed25519", directory / "id_ed25519.pub"
    with _locked(directory.parent / ".ssh.lock"):
        if not private_path.exists() or not public_path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o700)
            key = ed25519.Ed25519PrivateKey.generate()
            private = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
            public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(private)
            public_path.write_bytes(public + b" plexcdn-boot-lab\n")
        return LabKey(private_path.read_text(), public_path.read_text().strip())


def lab_access_environment(key: LabKey) -> tuple[EnvironmentFile, ...]:
    """The lab's key, authorized beside (never in) root's authorized_keys, which the program writes."""
    return (
        EnvironmentFile(LAB_KEY_AUTHORIZED_FILE, (key.public_key + "\n").encode()),
        EnvironmentFile(
            "/etc/ssh/sshd_config.d/99-plexcdn-lab.conf",
            b"# plex-cdn boot lab: the lab's own key, apart from the keys the program installs.\n"
            + f"AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys2 {LAB_KEY_AUTHORIZED_FILE}\n".encode(),
        ),
    )


def image_recipe(ca: LabCA, key: LabKey) -> guest_image.ImageRecipe:
    files, commands = env.image_environment(ca)
    return guest_image.ImageRecipe(environment=(*files, *lab_access_environment(key)), environment_commands=commands)


@dataclass(frozen=True)
class VmRequest:
    """One VM of a stack: its name and the exact user_data the program gives it."""

    name: str
    user_data: bytes = field(repr=False)
    hostname: str | None = None


@dataclass(frozen=True)
class Timings:
    """Seconds from a guest's start: console login prompt, cloud-init finished."""

    login: float | None = None
    cloud_init_done: float | None = None


def _wait_for_file(path: Path, process: subprocess.Popen[bytes], what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if process.poll() is not None:
            raise LabError(f"{what} exited with {process.returncode}:\n{_tail(log)}")
        time.sleep(0.05)
    raise LabError(f"{what} was not ready within {timeout:.0f} s:\n{_tail(log)}")


def _tail(path: Path, limit: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-limit:]
    return f"({path} is missing)"


def _stop_process(process: subprocess.Popen[bytes], grace: float = 5) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _python_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
    }


class BootLab:
    """The lab's services and guests. Use as a context manager (or `start()` / `close()`): leaving it
    stops every guest and process it started and removes its namespaces and taps."""

    def __init__(
        self,
        state_dir: Path = STATE_DIR,
        prefix: str = PREFIX,
        package_cache_dir: Path = package_cache.PERSISTENT_CACHE_DIR,
        image_cache_dir: Path = guest_image.IMAGE_CACHE_DIR,
    ) -> None:
        if len(prefix) > 6:
            raise LabError(f"the boot lab's prefix {prefix!r} is longer than 6 characters (interface names)")
        self.package_cache_dir = package_cache_dir
        self.image_cache_dir = image_cache_dir
        self.state_dir = state_dir
        self.prefix = prefix
        self.network = Lab(prefix)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.guests: dict[str, guests.Guest] = {}
        self.timings: dict[str, Timings] = {}
        self.cache_port = 0
        self.dns_port = 0
        self.accelerator = "tcg"
        self.image: BaseImage | None = None
        self.ca: LabCA | None = None
        self.key: LabKey | None = None
        self.moto: MotoRoute53 | None = None
        self.pebble: Pebble | None = None
        self.origin: dict[str, str] = {}
        self.url = ""
        self.zone_id: str | None = None
        self.image_build_seconds: float | None = None

    # paths ---------------------------------------------------------------------------------------------

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def services_dir(self) -> Path:
        return self.state_dir / "services"

    @property
    def records_file(self) -> Path:
        return self.services_dir / "dns-records.json"

    @property
    def dns_answers_log(self) -> Path:
        return self.services_dir / "dns-answers.jsonl"

    @property
    def front_log(self) -> Path:
        return self.services_dir / "front-requests.jsonl"

    @property
    def steps_log(self) -> Path:
        return self.logs_dir / "steps.log"

    @property
    def lab_namespace(self) -> str:
        return self.network.ns(LAB_ROLE)

    @property
    def viewer_namespace(self) -> str:
        return self.network.ns(VIEWER_ROLE)

    # start and stop ------------------------------------------------------------------------------------

    def __enter__(self) -> BootLab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if (reason := lab_unavailable_reason()) is not None:
            raise LabError(f"the boot lab {reason}")
        if (reason := guests.qemu_missing()) is not None:
            raise LabError(f"the boot lab {reason}")
        clean_up(self.state_dir, self.prefix)
        for directory in (self.state_dir, self.logs_dir, self.services_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        self._start_package_cache()
        self.ca = boot_lab_ca()
        self.key = lab_ssh_key()
        started = time.monotonic()
        recipe = image_recipe(self.ca, self.key)
        cached = BaseImage.load(self.image_cache_dir / recipe.key()) is not None
        self.image = guest_image.ensure_image(
            recipe, self.image_cache_dir, apt_proxy=f"http://127.0.0.1:{self.cache_port}"
        )
        self.image_build_seconds = None if cached else time.monotonic() - started
        self.accelerator = guests.choose_accelerator(self.image.kernel, self.state_dir / "probe")
        self._start_network()
        self._start_aws_and_acme()
        self._start_services()
        self._save_state()

    def _start_package_cache(self) -> None:
        self.cache_port = free_port()
        log = self.logs_dir / "package-cache.log"
        run_dir = self.state_dir / "package-cache-run"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "labs.package_cache", "--port", str(self.cache_port)),
                    *("--cache-dir", str(self.package_cache_dir), "--run-dir", str(run_dir)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_python_env(),
            )
        self.processes["package-cache"] = process
        if not package_cache.wait_until_serving(self.cache_port, timeout=SERVICE_START_SECONDS):
            raise LabError(f"the package cache did not listen on 127.0.0.1:{self.cache_port}:\n{_tail(log)}")

    def _start_network(self) -> None:
        lab_ns = self.network.add_namespace(LAB_ROLE)
        viewer_ns = self.network.add_namespace(VIEWER_ROLE)
        prefixlen = env.LAB_SUBNET.prefixlen
        _ip("-n", lab_ns, "link", "add", "br0", "type", "bridge")
        for address in (env.LAB_GATEWAY, env.SERVICES_ADDRESS, env.ORIGIN_ADDRESS):
            _ip("-n", lab_ns, "addr", "add", f"{address}/{prefixlen}", "dev", "br0")
        _ip("-n", lab_ns, "link", "set", "br0", "up")
        # The viewer: a veth from its namespace to the bridge.
        _ip("link", "add", f"{self.prefix}vw0", "type", "veth", "peer", "name", f"{self.prefix}vw1")
        _ip("link", "set", f"{self.prefix}vw0", "netns", lab_ns, "name", "viewer0")
        _ip("link", "set", f"{self.prefix}vw1", "netns", viewer_ns, "name", "eth0")
        _ip("-n", lab_ns, "link", "set", "viewer0", "master", "br0", "up")
        _ip("-n", viewer_ns, "addr", "add", f"{env.VIEWER_ADDRESS}/{prefixlen}", "dev", "eth0")
        _ip("-n", viewer_ns, "link", "set", "eth0", "up")
        for role in (LAB_ROLE, VIEWER_ROLE):
            directory = NETNS_ETC / self.network.ns(role)
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "resolv.conf").write_text(f"nameserver {env.LAB_GATEWAY}\n")

    def _start_aws_and_acme(self) -> None:
        self.dns_port = free_port()
        self.moto = MotoRoute53(self.services_dir)
        self.moto.start()
        assert self.moto.process is not None
        self.processes["moto"] = self.moto.process
        self.pebble = Pebble(self.services_dir, f"127.0.0.1:{self.dns_port}")
        self.pebble.start()
        assert self.pebble.process is not None
        self.processes["pebble"] = self.pebble.process

    def _start_services(self) -> None:
        assert self.ca is not None and self.moto is not None and self.pebble is not None
        front = self.ca.issue(list(services.FRONT_NAMES), self.services_dir / "front", "front")
        services.write_records(self.records_file, [])
        ready = self.services_dir / "ready.json"
        log = self.logs_dir / "services.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "labs.boot_lab_services", "--namespace", self.lab_namespace),
                    *("--dns-address", str(env.LAB_GATEWAY), "--host-dns-port", str(self.dns_port)),
                    *("--records-file", str(self.records_file), "--answers-log", str(self.dns_answers_log)),
                    *("--moto-port", str(self.moto.port), "--pebble-port", str(self.pebble.port)),
                    *("--pebble-ca", str(self.pebble.tls_ca_file), "--front-address", str(env.SERVICES_ADDRESS)),
                    *("--front-cert", str(front.fullchain), "--front-key", str(front.privkey)),
                    *("--front-log", str(self.front_log), "--ready-file", str(ready)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_python_env(),
            )
        self.processes["services"] = process
        _wait_for_file(ready, process, "the lab services", log, SERVICE_START_SECONDS)
        for name in services.FRONT_NAMES:
            self.set_record(name, "A", [str(env.SERVICES_ADDRESS)])

    # DNS -----------------------------------------------------------------------------------------------

    def records(self) -> list[services.LabRecord]:
        return services.read_records(self.records_file)

    def set_record(self, name: str, record_type: str, values: Sequence[str], ttl: int = 60) -> None:
        """Add or replace a lab DNS record; it wins over moto's zone for its name and type."""
        name = name.lower().rstrip(".")
        kept = [r for r in self.records() if not (r.name == name and r.type == record_type.upper())]
        services.write_records(
            self.records_file, [*kept, services.LabRecord(name, record_type.upper(), tuple(values), ttl)]
        )

    def apply_records(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Route53 record sets as the program asked for them (aws.route53.Record inputs), into moto's zone."""
        assert self.moto is not None and self.zone_id is not None
        changes = []
        for record in records:
            record_set: dict[str, Any] = {
                "Name": record["name"],
                "Type": record["type"],
                "TTL": int(record["ttl"]),
                "ResourceRecords": [{"Value": value} for value in record["records"]],
            }
            if "setIdentifier" in record:
                record_set["SetIdentifier"] = record["setIdentifier"]
                record_set["Region"] = record["latencyRoutingPolicies"][0]["region"]
            changes.append({"Action": "UPSERT", "ResourceRecordSet": record_set})
        if changes:
            self.moto.client("route53").change_resource_record_sets(
                HostedZoneId=self.zone_id, ChangeBatch={"Changes": changes}
            )

    def remove_record(self, name: str, record_type: str | None = None) -> None:
        name = name.lower().rstrip(".")
        kept = [r for r in self.records() if not (r.name == name and record_type in (None, r.type))]
        services.write_records(self.records_file, kept)

    def dns_answers(self) -> list[dict[str, Any]]:
        with contextlib.suppress(OSError):
            return [json.loads(line) for line in self.dns_answers_log.read_text().splitlines() if line.strip()]
        return []

    # the origin ----------------------------------------------------------------------------------------

    def start_origin(self, names: Sequence[str], port: int = 32400, media_mb: int = DEFAULT_MEDIA_MB) -> dict[str, str]:
        """The Plex stand-in at ORIGIN_ADDRESS:port with TLS for `names`, which the lab DNS points there."""
        assert self.ca is not None
        directory = self.state_dir / "origin"
        directory.mkdir(parents=True, exist_ok=True)
        media = directory / "media.mkv"
        origin_standin.make_media_file(media, media_mb * 1024 * 1024)
        certificate = self.ca.issue(list(names), directory / "tls", "origin")
        headers_log = directory / "headers.jsonl"
        ready = directory / "ready.json"
        log = self.logs_dir / "origin.log"
        argv = [
            *(sys.executable, "-m", "labs.plex_standin", "--listen", f"{env.ORIGIN_ADDRESS}:{port}"),
            *("--media", str(media), "--headers-log", str(headers_log), "--ready-file", str(ready)),
            *("--tls-cert", str(certificate.fullchain), "--tls-key", str(certificate.privkey), "--quiet"),
        ]
        with log.open("ab") as out:
            process = subprocess.Popen(
                self.network.command(LAB_ROLE, argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_python_env(),
            )
        self.processes["origin"] = process
        _wait_for_file(ready, process, "the Plex stand-in", log, SERVICE_START_SECONDS)
        for name in names:
            self.set_record(name, "A", [str(env.ORIGIN_ADDRESS)])
        self.origin = {"media_file": str(media), "headers_log": str(headers_log), "address": str(env.ORIGIN_ADDRESS)}
        self._save_state()
        return self.origin

    # guests --------------------------------------------------------------------------------------------

    def addresses(self, names: Sequence[str], first_index: int = 0) -> dict[str, str]:
        """The address each VM will have (VM i of `names` at guest_address(first_index + i)): the program's
        "public IPs"."""
        return {name: str(env.guest_address(first_index + index)) for index, name in enumerate(names)}

    def boot(self, vms: Sequence[VmRequest], first_index: int | None = None) -> list[guests.Guest]:
        """Start guests for `vms` (at most MAX_RUNNING_GUESTS running in all); returns at once."""
        assert self.image is not None
        running = [guest for guest in self.guests.values() if guest.running()]
        if len(running) + len(vms) > MAX_RUNNING_GUESTS:
            raise LabError(
                f"the boot lab runs at most {MAX_RUNNING_GUESTS} guests at once "
                f"({len(running)} running, {len(vms)} asked for)"
            )
        start = len(self.guests) if first_index is None else first_index
        started = []
        for offset, vm in enumerate(vms):
            if vm.name in self.guests:
                raise LabError(f"there is already a guest named {vm.name}")
            spec = guests.GuestSpec(vm.name, vm.user_data, start + offset, hostname=vm.hostname)
            guest = guests.Guest(
                spec,
                self.image,
                self.state_dir / "guests" / vm.name,
                self.lab_namespace,
                self.cache_port,
                self.accelerator,
                tap_prefix=self.prefix,
            )
            self.guests[vm.name] = guest
            guest.start()
            started.append(guest)
        self._save_state()
        return started

    def guest(self, name: str) -> guests.Guest:
        return self.guests[name]

    def guest_at(self, address: str) -> guests.Guest | None:
        return next((guest for guest in self.guests.values() if guest.address == address), None)

    def wait_ready(self, *waited: guests.Guest, timeout: float = 1200) -> dict[str, Timings]:
        """Wait until each guest's console showed the login prompt and cloud-init's end; record and
        return each one's times (seconds from its start)."""
        guests.wait_for_boots(waited, timeout)
        for guest in waited:
            self.timings[guest.name] = Timings(
                login=round(guest.boot_seen["login"], 1), cloud_init_done=round(guest.boot_seen["cloud-init"], 1)
            )
        self._save_state()
        return {guest.name: self.timings[guest.name] for guest in waited}

    def lab_private_key(self) -> str:
        assert self.key is not None
        return self.key.private_key

    def run(
        self, guest: guests.Guest, command: str, stdin: str | bytes | None = None, timeout: float = 600
    ) -> CommandResult:
        """A command on a guest with the lab's own key, the host key pinned from the console."""
        return guest.run(command, self.lab_private_key(), guest.host_key(), stdin=stdin, timeout=timeout)

    def host_key_for(self, connection: Connection) -> str | None:
        """A guest's host key read from its console, for steps whose connection names none."""
        guest = self.guest_at(connection.host)
        if guest is None:
            return None
        return guest.host_key(connection.host_key.split()[0] if connection.host_key else "ssh-ed25519")

    def step_runner(self, echo: Callable[[str], None] | None = None) -> StepRunner:
        return StepRunner(self.lab_namespace, self.steps_log, host_key_for=self.host_key_for, echo=echo)

    def run_steps(self, steps: Sequence[Step], previous: Deployment | None = None) -> Deployment:
        return self.step_runner().apply(steps, previous)

    def stop_guest(self, name: str) -> None:
        self.guests[name].stop()
        self._save_state()

    # logs ----------------------------------------------------------------------------------------------

    def collect_logs(self, destination: Path | None = None) -> Path:
        """Every guest's nginx, certbot and cloud-init logs and its console, into `destination/<guest>/`."""
        destination = destination or self.logs_dir
        for guest in self.guests.values():
            collect_guest_logs(
                guest.address,
                guest.namespace,
                guest.console_log,
                running=guest.running(),
                private_key=self.lab_private_key(),
                destination=destination / guest.name,
            )
        return destination

    # state ---------------------------------------------------------------------------------------------

    def info(self) -> dict[str, str]:
        assert self.pebble is not None
        return {
            "client_netns": self.viewer_namespace,
            "url": self.url,
            "ca_file": str(self.pebble.root_file),
            "logs_dir": str(self.logs_dir),
            "media_path": origin_standin.MEDIA_PATH,
            "media_file": self.origin.get("media_file", ""),
            "headers_log": self.origin.get("headers_log", ""),
        }

    def _save_state(self) -> None:
        state = {
            "prefix": self.prefix,
            "namespaces": list(self.network.namespaces),
            "processes": {name: process.pid for name, process in self.processes.items()},
            "guests": {
                name: {"index": guest.spec.index, "address": guest.address, "directory": str(guest.directory)}
                for name, guest in self.guests.items()
            },
            "timings": {name: vars(timing) for name, timing in self.timings.items()},
            "cache_port": self.cache_port,
            "info": self.info() if self.pebble is not None else {},
        }
        temporary = self.state_dir / ".state.json.tmp"
        temporary.write_text(json.dumps(state, indent=1))
        temporary.replace(self.state_dir / "state.json")

    def detach(self) -> dict[str, str]:
        """Leave everything running for `lab vms down` to remove (the command line's `vms up`)."""
        self._save_state()
        info = self.info()
        self.processes.clear()
        self.guests.clear()
        self.network.processes.clear()
        self.network.namespaces.clear()
        return info

    def close(self) -> None:
        for guest in list(self.guests.values()):
            with contextlib.suppress(Exception):
                guest.stop(timeout=20)
            guest.kill()
        for process in reversed(list(self.processes.values())):
            _stop_process(process)
        self.processes.clear()
        self.network.close()
        clean_up(self.state_dir, self.prefix)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {result.stderr.strip()}")


# What `lab vms logs` copies from each guest (relative to /).
GUEST_LOG_PATHS: Final = (
    "var/log/nginx",
    "etc/letsencrypt/logs",
    "var/log/letsencrypt",
    "var/log/cloud-init.log",
    "var/log/cloud-init-output.log",
)


def collect_guest_logs(
    address: str, namespace: str, console_log: Path, *, running: bool, private_key: str, destination: Path
) -> list[str]:
    """A guest's serial console, and (while it runs) its nginx, certbot and cloud-init logs over SSH as one
    tar stream, into `destination`; returns what arrived. Nothing is written on the guest."""
    destination.mkdir(parents=True, exist_ok=True)
    copied: list[str] = []
    if not console_log.exists():
        return copied
    shutil.copyfile(console_log, destination / "console.log")
    copied.append("console.log")
    host_keys = guests.console_host_keys(console_log.read_text(errors="replace"))
    if not running or not host_keys:
        return copied
    command = f"cd / && tar -czf - --ignore-failed-read {' '.join(GUEST_LOG_PATHS)} 2>/dev/null; true"
    connection = Connection(address, private_key, host_key=host_keys[-1], dial_error_limit=2)
    with contextlib.suppress(LabError), SshSession(connection, namespace) as session:
        returncode, archive, _ = session.run_bytes(command, timeout=120)
        if returncode == 0 and archive:
            unpack = subprocess.run(
                ["tar", "-xzf", "-", "-C", str(destination), "--no-same-owner", "--no-same-permissions"],
                input=archive,
                capture_output=True,
                timeout=60,
                check=False,
            )
            if unpack.returncode == 0:
                copied.extend(path for path in GUEST_LOG_PATHS if (destination / path).exists())
    return copied


def collect_logs_from_state(state_dir: Path = STATE_DIR, destination: Path | None = None) -> dict[str, list[str]]:
    """`lab vms logs`: every guest's logs of a lab started by another process, from its state file."""
    state = json.loads((state_dir / "state.json").read_text())
    destination = destination or Path(state["info"]["logs_dir"])
    private_key = lab_ssh_key().private_key
    namespace = state["namespaces"][0] if state["namespaces"] else f"{state['prefix']}{LAB_ROLE}"
    copied = {}
    for name, guest in state["guests"].items():
        directory = Path(guest["directory"])
        copied[name] = collect_guest_logs(
            guest["address"],
            namespace,
            directory / "console.log",
            running=guests.qemu_running(directory),
            private_key=private_key,
            destination=destination / name,
        )
    return copied


def clean_up(state_dir: Path = STATE_DIR, prefix: str = PREFIX) -> list[str]:
    """Remove whatever a boot lab left: its guests, processes, namespaces (and their taps), its state."""
    guests.kill_recorded_guests(state_dir)
    state_file = state_dir / "state.json"
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(state_file.read_text())
        for pid in state.get("processes", {}).values():
            _kill_recorded(int(pid))
    removed = remove_namespaces_with_prefix(prefix)
    shutil.rmtree(state_dir, ignore_errors=True)
    return removed


def _kill_recorded(pid: int) -> None:
    """Kill a process group a lab recorded, if that pid still runs one of the lab's own commands."""
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    markers = (b"labs.package_cache", b"labs.boot_lab_services", b"moto.server", b"pebble", b"labs.plex_standin")
    if any(marker in command_line for marker in markers):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def boot_lab(state_dir: Path = STATE_DIR, prefix: str = PREFIX, **settings: Any) -> Iterator[BootLab]:
    with BootLab(state_dir, prefix, **settings) as lab:
        yield lab


# --- the command line: python -m labs lab vms up|logs|down -------------------------------------------------


@dataclass(frozen=True)
class LabPlan:
    """What to boot and what to run: each VM's user_data and the ordered pulumi-command steps."""

    vms: tuple[VmRequest, ...]
    steps: tuple[Step, ...] = ()
    records: tuple[dict[str, Any], ...] = ()  # Route53 record sets, made once the steps they wait for ran
    # The stack's outputs the user acts on, by their export names (homeWireguardConfig, ...), secrets plain.
    outputs: Mapping[str, Any] = field(default_factory=dict, repr=False)


# Makes the plan once the lab's services run (moto holds the zone and can issue real IAM keys by then).
PlanMaker = Callable[[BootLab, StackConfig], LabPlan]


def _connection_from(entry: Mapping[str, Any], base: Path, addresses: Mapping[str, str]) -> Connection:
    if "vm" in entry:
        if entry["vm"] not in addresses:
            raise LabError(f"plan: connection names VM {entry['vm']!r}, not one of {', '.join(addresses)}")
        host = addresses[entry["vm"]]
    else:
        host = str(entry["host"])
    key_file = base / str(entry["private_key_file"])
    return Connection(
        host,
        key_file.read_text(),
        user=str(entry.get("user", "root")),
        port=int(entry.get("port", 22)),
        host_key=entry.get("host_key"),
        dial_error_limit=int(entry.get("dial_error_limit", DIAL_ERROR_LIMIT_DEFAULT)),
        per_dial_timeout=int(entry.get("per_dial_timeout", PER_DIAL_TIMEOUT_DEFAULT)),
    )


def load_plan(path: Path) -> LabPlan:
    """A plan file (JSON, see docs/boot-lab.md); paths in it are relative to the file."""
    base = path.parent
    data = json.loads(path.read_text())
    vms = tuple(
        VmRequest(str(vm["name"]), (base / str(vm["user_data_file"])).read_bytes(), vm.get("hostname"))
        for vm in data.get("vms", [])
    )
    addresses = {vm.name: str(env.guest_address(index)) for index, vm in enumerate(vms)}
    steps: list[Step] = []
    for entry in data.get("steps", []):
        connection = _connection_from(entry["connection"], base, addresses)
        name = str(entry["name"])
        depends_on = tuple(entry.get("depends_on", ()))
        if entry["kind"] == "copy":
            source = str(base / entry["source"]) + ("/" if str(entry["source"]).endswith("/") else "")
            steps.append(CopyStep(name, connection, source, str(entry["remote_path"]), depends_on=depends_on))
        elif entry["kind"] == "command":
            stdin_file = entry.get("stdin_file")
            steps.append(
                CommandStep(
                    name,
                    connection,
                    create=entry.get("create"),
                    update=entry.get("update"),
                    delete=entry.get("delete"),
                    stdin=(base / stdin_file).read_text() if stdin_file else None,
                    logging=entry.get("logging", "stdoutAndStderr"),
                    secret_inputs=frozenset(entry.get("secret_inputs", ())),
                    depends_on=depends_on,
                )
            )
        else:
            raise LabError(f"plan: step {entry.get('name')!r} has kind {entry['kind']!r}, not command or copy")
    return LabPlan(vms, tuple(steps))


def plan_from_file(path: Path) -> PlanMaker:
    plan = load_plan(path)
    return lambda lab, config: plan


def stack_plan(
    lab: BootLab,
    config: StackConfig,
    *,
    build_dir: Path | None = None,
    first_index: int | None = None,
    state: dict[str, MadeResource] | None = None,
    home_ssh_key: str | None = None,
) -> LabPlan:
    """The stack's whole graph, as `pulumi up` would make it: the program run under labs.stack_engine with
    moto's IAM and Route53 (the lab's), each VM at its lab address, then each VM's exact user_data and the
    pulumi-command steps in the order an engine could run them. The build directory (the releases the
    copy steps send) is under the lab's state. `state` is what an earlier run of the same stack made (kept
    where inputs did not change, and updated in place); `home_ssh_key` is `plex-cdn:homeSshKey`."""
    import pulumi

    from components.stack import build_stack
    from labs import stack_engine

    assert lab.moto is not None
    vm_names = [f"{pop.name}-vm" for pop in config.pops]
    # By default after the guests the lab already has, so that a second stack's VMs get addresses of their own.
    first = len(lab.guests) if first_index is None else first_index
    addresses = lab.addresses([name.removesuffix("-vm") for name in vm_names], first_index=first)
    engine = stack_engine.StackEngine(
        lab.moto.client("iam"),
        lab.moto.client("route53"),
        lambda resource: stack_engine.VmAddress(addresses[resource.removesuffix("-vm")]),
        state,
    )
    build_dir = build_dir or lab.state_dir / "build" / config.stack

    outputs: dict[str, Any] = {}

    def program() -> None:
        key = pulumi.Output.secret(home_ssh_key) if home_ssh_key is not None else None
        stack = build_stack(config, build_dir, key)
        exported = {
            "originAllowList": stack.origin_allow_list,
            "homeWireguardConfig": stack.home_wireguard_config,
            "originAgentFirewallRules": stack.agent_firewall_rules,
        }
        for export, value in exported.items():
            if value is not None:
                value.apply(functools.partial(outputs.__setitem__, export))

    monitor = stack_engine.run_program(engine, config.stack, program)
    planned = stack_engine.plan(monitor, Path.cwd())
    vms = tuple(VmRequest(vm.resource.removesuffix("-vm"), vm.user_data, hostname=vm.label) for vm in planned.vms)
    ordered = sorted(vms, key=lambda vm: list(addresses).index(vm.name))
    return LabPlan(tuple(ordered), planned.steps, planned.records, outputs)


@dataclass
class LabStack:
    """One stack across `pulumi up`s: the engine's state (its keys, certificates, VMs) and the steps as last
    applied, so that running the program again with a changed config changes the running guests in place,
    as `pulumi up` of the same stack would, and `destroy()` runs what `pulumi destroy` would on them."""

    lab: BootLab
    config: StackConfig
    first_index: int = 0
    home_ssh_key: str | None = field(default=None, repr=False)
    build_dir: Path | None = None
    state: dict[str, MadeResource] = field(default_factory=dict, repr=False)
    deployment: Deployment | None = None
    outputs: Mapping[str, Any] = field(default_factory=dict, repr=False)  # of the last successful `up`

    def plan(self, config: StackConfig | None = None) -> LabPlan:
        return stack_plan(
            self.lab,
            config or self.config,
            build_dir=self.build_dir,
            first_index=self.first_index,
            state=self.state,
            home_ssh_key=self.home_ssh_key,
        )

    def up(self, config: StackConfig, runner: StepRunner | None = None) -> Deployment:
        """`pulumi up` with `config`: the changed steps run against the running guests. On a failing step the
        stack keeps its previous config, and the steps that completed, as a stack's state does (the next `up`
        runs the failed step and those after it)."""
        plan = self.plan(config)
        try:
            deployment = (runner or self.lab.step_runner()).apply(plan.steps, self.deployment)
        except StepError as error:
            if error.deployment is not None:
                self.deployment = error.deployment
            raise
        self.lab.apply_records(plan.records)
        self.config, self.deployment, self.outputs = config, deployment, plan.outputs
        return deployment

    def destroy(self, runner: StepRunner | None = None) -> StepRunner:
        """`pulumi destroy`'s commands: every delete, dependents first. Returns the runner (its `records`)."""
        runner = runner or self.lab.step_runner()
        if self.deployment is not None:
            runner.destroy(self.deployment)
        self.deployment = None
        return runner


def _origin_names(config: StackConfig) -> list[str]:
    names = [config.origin.host, config.origin.verify_name or ""]
    found = []
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if name and name not in found:
                found.append(name)
    return found


def vms_up(
    stack_file: Path,
    make_plan: PlanMaker = stack_plan,
    state_dir: Path = STATE_DIR,
    media_mb: int = DEFAULT_MEDIA_MB,
    echo: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """`lab vms up`: the lab, the stack's zone and origin, its VMs booted from their user_data and its
    steps run; everything stays up for `lab vms down`. Returns the lab's description (`info()`)."""
    config = load_stack_file(stack_file)
    say = echo or (lambda line: None)
    lab = BootLab(state_dir)
    try:
        lab.start()
        say(f"lab services up; guests use {lab.accelerator}; logs in {lab.logs_dir}")
        assert lab.moto is not None
        if lab.zone_id is None:
            lab.zone_id = lab.moto.create_zone(config.domain)
        lab.url = config.shared_url
        names = _origin_names(config)
        if names:
            lab.start_origin(names, config.origin.port, media_mb)
        plan = make_plan(lab, config)
        if len(plan.vms) > MAX_RUNNING_GUESTS:
            raise LabError(f"the plan has {len(plan.vms)} VMs; the boot lab runs at most {MAX_RUNNING_GUESTS}")
        deploy(lab, plan, say)
        return lab.detach()
    except BaseException:
        lab.close()
        raise


def deploy(lab: BootLab, plan: LabPlan, say: Callable[[str], None] = lambda line: None) -> Deployment:
    """Boot the plan's VMs and run its steps at once, as the engine would (the steps' SSH dials wait for
    each VM; first boot itself waits for the credentials a step delivers), then make its records."""
    outcome = deploy_all(lab, [plan], say)[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def deploy_all(
    lab: BootLab, plans: Sequence[LabPlan], say: Callable[[str], None] = lambda line: None
) -> list[Deployment | StepError]:
    """Several stacks' `pulumi up` at once: every VM booted, then each plan's steps in a thread of its own;
    a plan whose step fails gets its StepError, the others go on. Records follow each plan's steps."""
    for plan in plans:
        for guest in lab.boot(plan.vms):
            say(f"guest {guest.name} at {guest.address}: booting (console {guest.console_log})")
    outcomes: list[Deployment | StepError] = []

    def apply(plan: LabPlan) -> Deployment:
        deployment = lab.step_runner(echo=say).apply(plan.steps)
        lab.apply_records(plan.records)
        say(f"ran {len(plan.steps)} steps (log: {lab.steps_log})")
        return deployment

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(plans) or 1) as pool:
        futures = [pool.submit(apply, plan) for plan in plans]
        for future in futures:
            try:
                outcomes.append(future.result())
            except StepError as error:
                outcomes.append(error)
    for name, timings in lab.wait_ready(*lab.guests.values()).items():
        say(f"guest {name}: login after {timings.login} s, cloud-init done after {timings.cloud_init_done} s")
    return outcomes


def vms_logs(state_dir: Path = STATE_DIR) -> dict[str, list[str]]:
    if not (state_dir / "state.json").exists():
        raise LabError(f"no boot lab is up (no {state_dir / 'state.json'}): run `lab vms up` first")
    return collect_logs_from_state(state_dir)


def vms_down(state_dir: Path = STATE_DIR) -> list[str]:
    return clean_up(state_dir, PREFIX)
