"""Certificate lab: a POP's exact certbot steps against a real ACME server and a Route53 API.

What runs, all on this machine:
- certbot and certbot-dns-route53 at the version the POP installs (`render.CERTBOT_VERSION`), in a
  venv cached under /var/cache/plexcdn-lab (or $PLEXCDN_CERTBOT_VENV). Debian's certbot 2.1 cannot be
  used: its botocore ignores AWS_ENDPOINT_URL_ROUTE_53, so it would only ever talk to the real Route53.
- moto's server on 127.0.0.1 as Route53 and IAM: the hosted zone, the certbot IAM user with the
  stack's policy and its access key. Every request reaches moto's recorder, so the policy can be
  judged on what certbot really sent (`labs.iam_eval`). Route53's change-batch rules, which moto
  leaves out, are installed in it (`labs.moto_route53`): a DELETE must match the record exactly.
- Pebble (Debian's `pebble`) on 127.0.0.1 as the ACME CA, validating DNS-01 for real: its resolver is
  a small DNS server here that answers TXT queries from the records in moto, as Route53's name
  servers would answer them from the zone.
- the POP's files taken from the rendered cloud-init's write_files (issuance script, DNS hook, deploy
  hook, renewal units, AWS credentials file) and written under a prefix directory. Only the env file
  differs from the POP's: its paths carry the prefix, and ACME_SERVER, NGINX_TEST, NGINX_RELOAD,
  ISSUE_ATTEMPTS and ISSUE_RETRY_SECONDS point at the lab (`LAB_ENV_OVERRIDES`). `add_pop` writes
  another POP's files under a prefix of its own, against the same Pebble, moto and IAM user, so POPs
  can validate the shared name at the same time.
- the POP's rendered nginx config, in a network namespace (`pcc-pop<id>`, 198.18.96.1) so it can bind
  80/443/8443, reached from a second namespace (`pcc-viewer<id>`, 198.18.96.2) as a viewer would.

`python -m labs.cert_lab venv` prepares the certbot venv; `python -m labs.cert_lab demo`
runs issuance and a forced renewal and prints what happened.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import ipaddress
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import boto3
import yaml
from cryptography import x509
from dnslib import QTYPE, RCODE, RR, TXT, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from labs import pop_tree
from labs.lab_ca import LabCA
from labs.netns import Lab, LabError, lab_unavailable_reason
from plexcdn import iam, render
from plexcdn.config import StackConfig, load_stack_file

CERTBOT_VENV_VARIABLE: Final = "PLEXCDN_CERTBOT_VENV"
CACHE_DIR: Final = Path("/var/cache/plexcdn-lab")
LETS_ENCRYPT_VALIDITY_SECONDS: Final = 90 * 24 * 3600
NETNS_PREFIX: Final = "pcc-"
LAB_SUBNET: Final = ipaddress.IPv4Network("198.18.96.0/30")
POP_ADDRESS: Final = LAB_SUBNET.network_address + 1
VIEWER_ADDRESS: Final = LAB_SUBNET.network_address + 2
# botocore signs for a region; against the real endpoint it resolves Route53's global one (us-east-1)
# by itself, but an overridden endpoint leaves it none, so the lab names the same one.
SIGNING_REGION: Final = "us-east-1"
LAB_ADMIN_KEY: Final = "lab-admin"
ENV_FILE_PATH: Final = "/etc/plex-cdn/certbot.env"
ISSUE_SCRIPT_PATH: Final = "/usr/local/sbin/plexcdn-issue-certificate"
DEPLOY_HOOK_PATH: Final = "/etc/letsencrypt/renewal-hooks/deploy/plexcdn-reload-nginx"
RENEW_SERVICE_PATH: Final = "/etc/systemd/system/plexcdn-certbot-renew.service"
CREDENTIALS_PATH: Final = render.CREDENTIALS_PATH
# The cloud-init write_files entries the certificate steps use; the rest (sysctl, SSH keys) stay out of the lab.
CERTBOT_WRITE_FILES: Final = (
    ENV_FILE_PATH,
    ISSUE_SCRIPT_PATH,
    render.ACME_DNS_HOOK_PATH,
    DEPLOY_HOOK_PATH,
    RENEW_SERVICE_PATH,
    "/etc/systemd/system/plexcdn-certbot-renew.timer",
)
# The env values the lab sets differently from the POP, besides the prefix on the path values.
LAB_ENV_OVERRIDES: Final = ("ACME_SERVER", "NGINX_TEST", "NGINX_RELOAD", "ISSUE_ATTEMPTS", "ISSUE_RETRY_SECONDS")
PREFIXED_ENV_KEYS: Final = (
    "CERTBOT",
    "CERTBOT_PYTHON",
    "ACME_DNS_HOOK",
    "LETSENCRYPT_DIR",
    "AWS_SHARED_CREDENTIALS_FILE",
)
_CLONE_NEWNET: Final = 0x40000000
HOST_CERTBOT_DIR: Final = "/etc/letsencrypt"
MAX_HOLD_SECONDS: Final = 3600


def _log(message: str) -> None:
    print(f"certlab: {message}", file=sys.stderr, flush=True)


# --- the certbot venv ---------------------------------------------------------------------------------


def lock_digest() -> str:
    """Which lock a venv was installed from: a new lock is a new venv."""
    return hashlib.sha256(render.CERTBOT_LOCK.read_bytes()).hexdigest()[:12]


def certbot_venv_path(version: str = render.CERTBOT_VERSION) -> Path:
    override = os.environ.get(CERTBOT_VENV_VARIABLE)
    return Path(override) if override else CACHE_DIR / f"certbot-{version}-{lock_digest()}"


def _base_python() -> str:
    # Debian 12's python3 is what the POP builds its venv with; fall back to ours elsewhere.
    return "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def certbot_venv_commands(path: Path, lock: Path = render.CERTBOT_LOCK) -> list[list[str]]:
    """The same two steps as the POP's first boot, with the lab's venv path and the same lock: pip takes only the
    wheels whose hashes it names. --isolated: from PyPI as a POP installs, not through this machine's pip settings."""
    return [
        [_base_python(), "-m", "venv", str(path)],
        [
            str(path / "bin" / "pip"),
            *("install", "--isolated", "--disable-pip-version-check", "--no-cache-dir"),
            *("--require-hashes", "--only-binary", ":all:", "-r", str(lock)),
        ],
    ]


def certbot_venv_versions(path: Path) -> tuple[str, str] | None:
    """(certbot, certbot-dns-route53) versions installed in a venv, or None when it is not usable."""
    python = path / "bin" / "python"
    if not (path / "bin" / "certbot").exists() or not python.exists():
        return None
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m; print(m.version('certbot'), m.version('certbot-dns-route53'))",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    parts = probe.stdout.split()
    return (parts[0], parts[1]) if probe.returncode == 0 and len(parts) == 2 else None


def ensure_certbot_venv(path: Path | None = None, version: str = render.CERTBOT_VERSION) -> Path:
    """Return a venv with certbot==version and certbot-dns-route53==version, creating it when missing."""
    path = path or certbot_venv_path(version)
    if certbot_venv_versions(path) == (version, version):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f".{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if certbot_venv_versions(path) == (version, version):
            return path
        shutil.rmtree(path, ignore_errors=True)
        for command in certbot_venv_commands(path):
            _log("running " + " ".join(command))
            result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
            if result.returncode != 0:
                raise LabError(f"creating the certbot venv failed: {' '.join(command)}:\n{result.stderr[-3000:]}")
        found = certbot_venv_versions(path)
        if found != (version, version):
            raise LabError(f"the certbot venv at {path} has {found}, not certbot {version}")
    return path


def route53_endpoint_seen_by_certbot(venv: Path, endpoint: str) -> str:
    """The Route53 endpoint the venv's boto3 uses when only AWS_ENDPOINT_URL_ROUTE_53 is set."""
    env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL_ROUTE_53": endpoint, "AWS_CONFIG_FILE": os.devnull}
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import boto3; print(boto3.client('route53', region_name='us-east-1').meta.endpoint_url)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    return probe.stdout.strip()


# --- reading what the POP gets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenFile:
    """One write_files entry of a cloud-init document."""

    path: str
    content: str
    permissions: int
    owner: str


def cloud_init_files(document: str) -> dict[str, WrittenFile]:
    data = yaml.safe_load(document)
    files: dict[str, WrittenFile] = {}
    for item in data.get("write_files", []):
        files[item["path"]] = WrittenFile(
            item["path"],
            item.get("content", ""),
            int(str(item.get("permissions", "0644")), 8),
            item.get("owner", "root:root"),
        )
    return files


def unit_settings(unit_text: str, section: str) -> dict[str, str]:
    """Settings of one section of a systemd unit (the last value of a repeated key wins)."""
    settings: dict[str, str] = {}
    current = ""
    for raw in unit_text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and "=" in line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def parse_environment_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them: comments skipped, one level of quotes removed."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        quote = value[:1]
        if len(value) >= 2 and quote in ("'", '"') and value[-1] == quote:
            value = value[1:-1]
            if quote == '"':
                value = re.sub(r"\\(.)", r"\1", value)
        values[key.strip()] = value
    return values


def override_environment_file(text: str, overrides: Mapping[str, str]) -> str:
    """The same file with the given keys' values replaced; every key must already be there."""
    missing = set(overrides)
    lines = []
    for line in text.splitlines():
        key = line.partition("=")[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in overrides:
            value = overrides[key]
            lines.append(f'{key}="{value}"' if re.search(r"\s", value) else f"{key}={value}")
            missing.discard(key)
        else:
            lines.append(line)
    if missing:
        raise LabError(f"the rendered env file has no {', '.join(sorted(missing))}: the lab cannot override them")
    return "\n".join(lines) + "\n"


def tls_certificate_paths(nginx_conf: str) -> dict[str, str]:
    """ssl_certificate and ssl_certificate_key of the viewers' server (port 443) in a rendered nginx.conf."""
    viewers = nginx_conf.split("listen 443", 1)[-1].split("server {", 1)[0]
    found = dict(re.findall(r"^\s*(ssl_certificate(?:_key)?)\s+([^;\s]+);", viewers, re.MULTILINE))
    if set(found) != {"ssl_certificate", "ssl_certificate_key"}:
        raise LabError(f"the viewers' server names {sorted(found)}, not both ssl_certificate and ssl_certificate_key")
    return found


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_certificates(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


# --- processes -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabError(f"{what} exited with {process.returncode} while starting:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise LabError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s:\n{_tail(log)}")


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return f"({path} is missing)"


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@dataclass(frozen=True)
class RecordedRequest:
    """One request moto received, as its recorder wrote it down."""

    method: str
    path: str
    query: str
    body: bytes
    access_key_id: str


class MotoRoute53:
    """moto's server as Route53 and IAM, with its recorder on so every request can be read back."""

    def __init__(self, lab_dir: Path) -> None:
        self.lab_dir = lab_dir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.recording = lab_dir / "moto-requests.jsonl"
        self.log = lab_dir / "moto.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "MOTO_ENABLE_RECORDING": "True",
            "MOTO_RECORDER_FILEPATH": str(self.recording),
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "labs.moto_route53", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        _wait_for_port(self.port, self.process, "moto", self.log, timeout=60)

    def stop(self) -> None:
        _stop(self.process)

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=SIGNING_REGION,
            aws_access_key_id=LAB_ADMIN_KEY,
            aws_secret_access_key=LAB_ADMIN_KEY,
        )

    def create_zone(self, domain: str) -> str:
        response = self.client("route53").create_hosted_zone(Name=domain, CallerReference=f"lab-{time.monotonic_ns()}")
        return str(response["HostedZone"]["Id"]).removeprefix("/hostedzone/")

    def create_user_with_key(self, user: str) -> tuple[str, str]:
        """(access key id, secret access key) of a new IAM user."""
        client = self.client("iam")
        client.create_user(UserName=user)
        key = client.create_access_key(UserName=user)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def put_user_policy(self, user: str, policy: Mapping[str, Any]) -> None:
        self.client("iam").put_user_policy(UserName=user, PolicyName="certbot", PolicyDocument=json.dumps(policy))

    def txt_records(self) -> dict[str, list[str]]:
        """Every TXT record in every zone, by lower-case name without the trailing dot."""
        client = self.client("route53")
        records: dict[str, list[str]] = {}
        for zone in client.list_hosted_zones()["HostedZones"]:
            for record in _all_record_sets(client, zone["Id"]):
                if record["Type"] == "TXT":
                    name = record["Name"].lower().rstrip(".")
                    records[name] = [item["Value"] for item in record.get("ResourceRecords", [])]
        return records

    def recorded_requests(self) -> list[RecordedRequest]:
        requests: list[RecordedRequest] = []
        if not self.recording.exists():
            return requests
        for line in self.recording.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            body = entry.get("body") or ""
            raw = base64.b64decode(body) if entry.get("body_encoded") else body.encode()
            url = urllib.parse.urlsplit(entry["url"])
            authorization = entry.get("headers", {}).get("Authorization", "")
            match = re.search(r"Credential=([^/]+)/", authorization)
            requests.append(
                RecordedRequest(
                    entry["method"], urllib.parse.unquote(url.path), url.query, raw, match.group(1) if match else ""
                )
            )
        return requests


def _all_record_sets(client: Any, zone_id: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for page in client.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zone_id):
        records.extend(page["ResourceRecordSets"])
    return records


def _txt_strings(value: str) -> list[str]:
    """A Route53 TXT value ('"a" "b"') as its character strings."""
    found = re.findall(r'"((?:[^"\\]|\\.)*)"', value)
    return [re.sub(r"\\(.)", r"\1", item) for item in found] if found else [value]


@dataclass(frozen=True)
class DnsAnswer:
    name: str
    record_type: str
    values: tuple[str, ...]
    at: float


class _MotoZoneResolver(BaseResolver):  # type: ignore[misc]
    """Answers from the zones in moto, as Route53's authoritative servers answer from a hosted zone."""

    def __init__(self, moto: MotoRoute53) -> None:
        self.moto = moto
        self.route53 = moto.client("route53")
        self.lock = threading.Lock()
        self.answers: list[DnsAnswer] = []

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        record_type = QTYPE[request.q.qtype]
        zones = [
            zone
            for zone in self.route53.list_hosted_zones()["HostedZones"]
            if not zone["Config"]["PrivateZone"]
            and (name == zone["Name"].lower().rstrip(".") or name.endswith("." + zone["Name"].lower().rstrip(".")))
        ]
        values: list[str] = []
        exists = False
        if zones:
            zone = max(zones, key=lambda z: len(z["Name"]))
            for record in _all_record_sets(self.route53, zone["Id"]):
                if record["Name"].lower().rstrip(".") != name:
                    continue
                exists = True
                if record["Type"] == record_type == "TXT":
                    for item in record.get("ResourceRecords", []):
                        strings = _txt_strings(item["Value"])
                        values.extend(strings)
                        reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(strings), ttl=record.get("TTL", 10)))
        if not exists:
            reply.header.rcode = RCODE.NXDOMAIN
        with self.lock:
            self.answers.append(DnsAnswer(name, record_type, tuple(values), time.monotonic()))
        return reply


class ChallengeDns:
    """The DNS server Pebble's validator asks (`pebble -dnsserver`), answering from moto's zones."""

    def __init__(self, moto: MotoRoute53) -> None:
        self.resolver = _MotoZoneResolver(moto)
        quiet = DNSLogger(log="-request,-reply,-truncated,-error", prefix=False)
        self.server = DNSServer(self.resolver, address="127.0.0.1", port=0, logger=quiet)
        self.port = int(self.server.server.server_address[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server.start_thread()

    def stop(self) -> None:
        self.server.server.shutdown()
        self.server.server.server_close()

    def answers(self) -> list[DnsAnswer]:
        with self.resolver.lock:
            return list(self.resolver.answers)


class Pebble:
    """Pebble on 127.0.0.1: the ACME API with a TLS certificate from a lab CA, validation via ChallengeDns."""

    def __init__(self, lab_dir: Path, dns_address: str) -> None:
        self.lab_dir = lab_dir
        self.dns_address = dns_address
        self.port = 0
        self.management_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.api_ca = LabCA.create(lab_dir / "pebble-api-ca", "plex-cdn certificate lab Pebble API")
        self.tls_ca_file = self.api_ca.bundle_path
        self.root_file = lab_dir / "pebble-root.pem"
        self.log = lab_dir / "pebble.log"

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> None:
        api = self.api_ca.issue(["127.0.0.1", "localhost"], self.lab_dir / "pebble-api", "api")
        self.port, self.management_port = free_port(), free_port()
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(api.fullchain),
                "privateKey": str(api.privkey),
                # Ports for HTTP-01 and TLS-ALPN-01 validation, which certbot's DNS plugin never asks for.
                "httpPort": 5002,
                "tlsPort": 5001,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
                # What Let's Encrypt issues (Pebble's own default is five years): renewal timing, the POPs'
                # certificate check and a TLS scan's lifespan check then see what they would in production.
                "certificateValidityPeriod": LETS_ENCRYPT_VALIDITY_SECONDS,
            }
        }
        config_file = self.lab_dir / "pebble-config.json"
        config_file.write_text(json.dumps(config, indent=2))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PEBBLE_VA_NOSLEEP": "1",
            # Every order needs fresh DNS-01 validation, so renewals exercise Route53 too.
            "PEBBLE_AUTHZREUSE": "0",
            # By default Pebble rejects 5% of good nonces; certbot retries once, so a run could still fail by chance.
            "PEBBLE_WFE_NONCEREJECT": "0",
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["pebble", "-config", str(config_file), "-dnsserver", self.dns_address],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        _wait_for_port(self.port, self.process, "pebble", self.log, timeout=20)
        _wait_for_port(self.management_port, self.process, "pebble's management API", self.log, timeout=20)
        self.root_file.write_text(self.management_get("/roots/0"))

    def management_get(self, path: str) -> str:
        context = ssl.create_default_context(cafile=str(self.tls_ca_file))
        url = f"https://127.0.0.1:{self.management_port}{path}"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        _stop(self.process)


# --- running scripts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptRun:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class RunningScript:
    """A script started in the background whose output lines can be waited for."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.argv = tuple(argv)
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(env), text=True, start_new_session=True
        )
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=("stdout", self.process.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=("stderr", self.process.stderr, self.stderr), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, stream_name: str, stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)
            self.lines.put((stream_name, line))

    def wait_for_line(self, pattern: str, timeout: float) -> str:
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            if compiled.search(line):
                return line
        raise LabError(f"no output line matched {pattern!r} within {timeout:.0f} s; output so far:\n{self.text()}")

    def text(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def finish(self, timeout: float) -> ScriptRun:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise LabError(f"{self.argv[0]} did not finish within {timeout:.0f} s:\n{self.text()}") from None
        for reader in self.readers:
            reader.join(timeout=5)
        return ScriptRun(
            self.argv,
            self.process.returncode,
            "".join(self.stdout),
            "".join(self.stderr),
            time.monotonic() - self.started,
        )

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=5)


def without_host_certbot_config(argv: Sequence[str]) -> list[str]:
    """argv run where this machine's /etc/letsencrypt is an empty directory.

    certbot always reads /etc/letsencrypt/cli.ini, whatever --config-dir says. A POP has none (certbot
    comes from the venv), but a lab machine may have Debian's certbot, whose cli.ini turns off log
    rotation; a private mount namespace hides it without touching the machine's files.
    """
    if not Path(HOST_CERTBOT_DIR).exists():
        return list(argv)
    mount = f"mount -t tmpfs -o size=1m,mode=0755 plexcdn-lab {HOST_CERTBOT_DIR}"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mount} && exec "$@"', "sh", *argv]


def _socket_in_namespace(namespace: str) -> socket.socket:
    """A TCP socket that lives in a network namespace, made by a short-lived thread that joined it.

    setns(CLONE_NEWNET) changes only the calling thread, and a socket keeps the namespace it was
    created in, so the rest of the process can use the socket while staying where it is.
    """
    made: dict[str, Any] = {}

    def create() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{namespace}", "rb") as handle:
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns into {namespace}: {os.strerror(error)}")
            made["socket"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as error:
            made["error"] = error

    worker = threading.Thread(target=create)
    worker.start()
    worker.join()
    if "error" in made:
        raise LabError(str(made["error"]))
    return made["socket"]  # type: ignore[no-any-return]


# --- the lab ---------------------------------------------------------------------------------------------


# systemd substitutes $NAME and ${NAME} in an Exec line's words itself, quoted or not; $$ is a literal $.
_SYSTEMD_VARIABLE: Final = re.compile(r"\$(?:\{|[A-Za-z_])")


def systemd_exec_argv(line: str) -> list[str]:
    """An Exec line's arguments as systemd hands them to the program. A `$NAME` left for a shell (not written
    `$$NAME`) would be replaced by systemd with the unit's environment, or with nothing: refused."""
    argv = []
    for word in shlex.split(line):
        if _SYSTEMD_VARIABLE.search(word.replace("$$", "")):
            raise LabError(f"systemd would substitute the variables in {word!r} itself: write $$ for the shell's $")
        argv.append(word.replace("$$", "$"))
    return argv


@dataclass
class CertLab:
    """One POP's certificate life against Pebble and moto, its files under `root` (the render prefix).

    `zone_at_start=False` leaves the hosted zone out until `create_zone()`, as when a new zone's
    delegation is not there yet.
    """

    config: StackConfig
    pop: str
    workdir: Path
    issue_attempts: int = 2
    issue_retry_seconds: int = 1
    zone_at_start: bool = True
    venv: Path | None = None
    moto: MotoRoute53 = field(init=False)
    dns: ChallengeDns = field(init=False)
    pebble: Pebble = field(init=False)
    access_key_id: str = field(init=False)
    secret_access_key: str = field(init=False)
    credentials: str = field(init=False)  # what the deploy writes to the POP from a command's stdin
    zone_id: str | None = field(init=False, default=None)
    network: Lab | None = field(init=False, default=None)
    nginx: subprocess.Popen[bytes] | None = field(init=False, default=None)
    peer_ca: LabCA = field(init=False)
    # Namespace names carry it, so a lab's deploy hook can only ever reach its own nginx.
    lab_id: str = field(init=False, default_factory=lambda: os.urandom(2).hex())
    _started: list[str] = field(init=False, default_factory=list)

    def __enter__(self) -> CertLab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # paths -----------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.workdir / "pop"

    @property
    def lab_dir(self) -> Path:
        return self.workdir / "lab"

    def pop_root(self, pop: str | None = None) -> Path:
        """The prefix a POP's files are under: the lab's POP, or one added with `add_pop`."""
        return self.root if pop is None or pop == self.pop else self.workdir / f"pop-{pop}"

    def path(self, pop_path: str, pop: str | None = None) -> Path:
        """Where a path of the POP is in the lab."""
        return Path(str(self.pop_root(pop)) + pop_path)

    @property
    def cert_name(self) -> str:
        return self.config.certificate_names(self.pop)[0]

    @property
    def certificate_names(self) -> tuple[str, ...]:
        return self.config.certificate_names(self.pop)

    @property
    def iam_user(self) -> str:
        # One user for the whole stack, as components/certbot_user.py makes it.
        return f"plex-cdn-{self.config.stack}-certbot"

    @property
    def pop_role(self) -> str:
        return f"pop{self.lab_id}"

    @property
    def viewer_role(self) -> str:
        return f"viewer{self.lab_id}"

    @property
    def nginx_dir(self) -> Path:
        return self.path("/etc/nginx")

    @property
    def nginx_conf(self) -> Path:
        return self.nginx_dir / "nginx.conf"

    @property
    def letsencrypt_dir(self) -> Path:
        return self.path("/etc/letsencrypt")

    @property
    def live_dir(self) -> Path:
        return self.letsencrypt_dir / "live" / self.cert_name

    def live_dir_of(self, pop: str) -> Path:
        return self.path("/etc/letsencrypt", pop) / "live" / self.config.certificate_names(pop)[0]

    # set-up ----------------------------------------------------------------

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # nginx's workers run as www-data and must reach the logs and caches under the prefix.
        self.workdir.chmod(0o755)
        self.root.mkdir(exist_ok=True)
        self.root.chmod(0o755)
        self.lab_dir.mkdir(exist_ok=True)
        self.venv = ensure_certbot_venv(self.venv)
        self.moto = MotoRoute53(self.lab_dir)
        self._started.append("moto")
        self.moto.start()
        key_id, secret = self.moto.create_user_with_key(self.iam_user)
        self.access_key_id, self.secret_access_key = key_id, secret
        self.credentials = render.credentials_file(key_id, secret)
        if self.zone_at_start:
            self.create_zone()
        self.dns = ChallengeDns(self.moto)
        self._started.append("dns")
        self.dns.start()
        self.pebble = Pebble(self.lab_dir, self.dns.address)
        self._started.append("pebble")
        self.pebble.start()
        # The stack's peer CA signs client certificates directly, as the peer port verifies one level deep.
        self.peer_ca = LabCA.create(self.lab_dir / "peer-ca", "plex-cdn certificate lab peer", intermediate=False)
        self._write_pop_files()

    def create_zone(self) -> str:
        self.zone_id = self.moto.create_zone(self.config.domain)
        self.moto.put_user_policy(self.iam_user, self.policy())
        return self.zone_id

    def policy(self) -> dict[str, Any]:
        """The stack's certbot policy (every POP's names), as components/certbot_user.py attaches it."""
        if self.zone_id is None:
            raise LabError("there is no hosted zone yet, so no policy")
        return iam.certbot_policy(self.zone_id, self.config.all_certificate_names())

    def cloud_init(self, pop: str | None = None) -> str:
        return render.cloud_init(self.config, pop or self.pop)

    def _write(self, pop_path: str, content: str, mode: int, pop: str | None = None) -> Path:
        target = self.path(pop_path, pop)
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(content)
        target.chmod(mode)
        return target

    def _write_certbot_files(self, pop: str | None = None) -> None:
        written_files = cloud_init_files(self.cloud_init(pop))
        for pop_path in CERTBOT_WRITE_FILES:
            written = written_files[pop_path]
            self._write(written.path, written.content, written.permissions, pop)
        self._write(CREDENTIALS_PATH, self.credentials, 0o600, pop)
        rendered_env = written_files[ENV_FILE_PATH]
        self._write(ENV_FILE_PATH, self.lab_env_text(pop), rendered_env.permissions, pop)
        certbot_link = self.path("/opt/certbot", pop)
        certbot_link.parent.mkdir(parents=True, exist_ok=True)
        if not certbot_link.is_symlink():
            certbot_link.symlink_to(self.venv or certbot_venv_path())

    def _write_pop_files(self) -> None:
        self._write_certbot_files()
        self._write_nginx_files()
        (self.lab_dir / "home").mkdir(exist_ok=True)

    def add_pop(self, pop: str) -> Path:
        """Another POP of the stack with its own certbot files, against the same Pebble, moto and IAM user."""
        if pop == self.pop or pop not in {p.name for p in self.config.pops}:
            raise LabError(f"{pop!r} is not another POP of the stack")
        self.pop_root(pop).mkdir(exist_ok=True)
        self._write_certbot_files(pop)
        return self.pop_root(pop)

    def cloud_init_file(self, pop_path: str) -> WrittenFile:
        return cloud_init_files(self.cloud_init())[pop_path]

    def lab_env_overrides(self, pop: str | None = None) -> dict[str, str]:
        namespace = NETNS_PREFIX + self.pop_role
        nginx = {
            "NGINX_TEST": f"ip netns exec {namespace} nginx -t -q -c {self.nginx_conf}",
            "NGINX_RELOAD": f"ip netns exec {namespace} nginx -s reload -c {self.nginx_conf}",
        }
        if pop is not None and pop != self.pop:
            # nginx runs for the lab's own POP only: the others' deploy hook has nothing to test or reload.
            nginx = {"NGINX_TEST": "true", "NGINX_RELOAD": "true"}
        return {
            "ACME_SERVER": self.pebble.directory_url,
            **nginx,
            "ISSUE_ATTEMPTS": str(self.issue_attempts),
            "ISSUE_RETRY_SECONDS": str(self.issue_retry_seconds),
        }

    def lab_env_text(self, pop: str | None = None) -> str:
        """The POP's env file rendered with the lab's prefix, with only LAB_ENV_OVERRIDES changed."""
        prefixed = render.certbot_files(self.config, pop or self.pop, prefix=str(self.pop_root(pop)))[ENV_FILE_PATH]
        return override_environment_file(prefixed, self.lab_env_overrides(pop))

    def env_differences(self) -> dict[str, tuple[str, str]]:
        """Every key whose value differs between the POP's env file and the lab's: (POP value, lab value)."""
        pop = parse_environment_file(self.cloud_init_file(ENV_FILE_PATH).content)
        lab = parse_environment_file(self.path(ENV_FILE_PATH).read_text())
        return {
            key: (pop.get(key, ""), lab.get(key, ""))
            for key in sorted(set(pop) | set(lab))
            if pop.get(key) != lab.get(key)
        }

    def _nginx_addresses(self) -> dict[str, str]:
        # Other POPs are "at" the viewer namespace, where nothing listens: the POP's upstream is absent.
        return {pop.name: str(POP_ADDRESS if pop.name == self.pop else VIEWER_ADDRESS) for pop in self.config.pops}

    def _write_nginx_files(self) -> None:
        conf_dir = self.path("/etc/nginx")
        conf_dir.mkdir(parents=True, exist_ok=True)
        peer = pop_tree.peer_certificates(self.config, self.pop, self.peer_ca, conf_dir, self.lab_dir)
        peer_ca_pem = peer.ca_pem
        files = render.nginx_files(
            self.config, self.pop, prefix=str(self.root), addresses=self._nginx_addresses(), peer=peer
        )
        for name, text in files.items():
            self._write(f"/etc/nginx/{name}", text, 0o644)
        # This lab's POP never reaches the origin: the file its hub holds before the origin's name resolves.
        pop_tree.resolve_origin(None, "", self.config, self.pop, conf_dir)
        bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        self._write(
            "/etc/ssl/certs/ca-certificates.crt",
            bundle.read_text() if bundle.exists() else peer_ca_pem,
            0o644,
        )
        for directory in ("/run", "/var/log/nginx", "/var/cache/nginx"):
            self.path(directory).mkdir(parents=True, exist_ok=True)

    def tls_paths(self) -> dict[str, Path]:
        """The certificate and key paths the lab's rendered nginx config reads."""
        return {key: Path(value) for key, value in tls_certificate_paths(self.nginx_conf.read_text()).items()}

    # running the POP's scripts ---------------------------------------------------------------------------

    def script_environment(self, pop: str | None = None) -> dict[str, str]:
        """The process environment the lab gives the scripts, on top of what they read from the env file."""
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.lab_dir / "home"),
            "LANG": "C.UTF-8",
            "PLEXCDN_CERTBOT_ENV": str(self.path(ENV_FILE_PATH, pop)),
            "AWS_ENDPOINT_URL_ROUTE_53": self.moto.url,
            # Anything else AWS would also land in moto, never at AWS.
            "AWS_ENDPOINT_URL": self.moto.url,
            "AWS_DEFAULT_REGION": SIGNING_REGION,
            "AWS_CONFIG_FILE": str(self.lab_dir / "no-aws-config"),
            # Were the credentials file ever unreadable, boto3 must not go looking for 169.254.169.254.
            "AWS_EC2_METADATA_DISABLED": "true",
            "REQUESTS_CA_BUNDLE": str(self.pebble.tls_ca_file),
        }

    def start_issue(self, pop: str | None = None) -> RunningScript:
        return RunningScript(
            without_host_certbot_config([str(self.path(ISSUE_SCRIPT_PATH, pop))]), self.script_environment(pop)
        )

    def issue(self, timeout: float = 180) -> ScriptRun:
        return self.start_issue().finish(timeout)

    def renewal_command(self, force: bool, pop: str | None = None) -> tuple[list[str], dict[str, str]]:
        """The renewal service's ExecStart and environment, as systemd would run it for the lab."""
        service = unit_settings(self.path(RENEW_SERVICE_PATH, pop).read_text(), "Service")
        argv = systemd_exec_argv(service["ExecStart"])
        if argv[:2] != ["/bin/sh", "-c"] or len(argv) != 3:
            raise LabError(f"the renewal service's ExecStart is not `/bin/sh -c '...'`: {service['ExecStart']}")
        if force:
            argv[2] += " --force-renewal"
        env = self.script_environment(pop)
        env.update(parse_environment_file(self.path(service["EnvironmentFile"], pop).read_text()))
        return argv, env

    def start_renew(self, force: bool = True, pop: str | None = None) -> RunningScript:
        argv, env = self.renewal_command(force, pop)
        return RunningScript(without_host_certbot_config(argv), env)

    def renew(self, force: bool = True, timeout: float = 180) -> ScriptRun:
        return self.start_renew(force).finish(timeout)

    def certbot_requests(self) -> list[RecordedRequest]:
        """The Route53 requests made with the certbot IAM user's key."""
        return [request for request in self.moto.recorded_requests() if request.access_key_id == self.access_key_id]

    def live_certificate(self) -> x509.Certificate:
        return load_certificate(self.live_dir / "cert.pem")

    def certbot_runs(self, pop: str | None = None) -> int:
        """How many certbot processes have run: each rotates letsencrypt.log (the first also leaves an empty .1)."""
        logs = self.path("/etc/letsencrypt/logs", pop)
        return len([log for log in logs.glob("letsencrypt.log*") if log.stat().st_size > 0]) if logs.exists() else 0

    def last_certbot_log(self, pop: str | None = None) -> str:
        return self.path("/etc/letsencrypt/logs/letsencrypt.log", pop).read_text()

    # nginx -----------------------------------------------------------------------------------------------

    def _hosts(self) -> dict[str, str]:
        origin = self.config.origin.host
        try:
            ipaddress.ip_address(origin)
        except ValueError:
            return {origin: str(VIEWER_ADDRESS)}
        return {}

    def start_nginx(self, timeout: float = 20) -> None:
        if (reason := lab_unavailable_reason()) is not None:
            raise LabError(f"nginx runs in a network namespace: {reason}")
        self.network = Lab(NETNS_PREFIX)
        self.network.add_namespace(self.pop_role, hosts=self._hosts())
        self.network.add_namespace(self.viewer_role)
        self.network.link(self.pop_role, self.viewer_role, str(LAB_SUBNET))
        log = self.lab_dir / "nginx.log"
        self.nginx = self.network.start(
            self.pop_role, ["nginx", "-c", str(self.nginx_conf), "-g", "daemon off;"], log=log
        )
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self.nginx.poll() is not None:
                error_log = _tail(self.path("/var/log/nginx/error.log"))
                raise LabError(f"nginx exited with {self.nginx.returncode}:\n{_tail(log)}\n{error_log}")
            try:
                self.served_certificate(self.cert_name)
                return
            except (OSError, LabError) as error:
                last_error = str(error)
            time.sleep(0.1)
        raise LabError(f"nginx did not answer TLS on {POP_ADDRESS}:443 within {timeout:.0f} s: {last_error}")

    def nginx_command(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if self.network is None:
            raise LabError("nginx is not running")
        return self.network.run(self.pop_role, argv, check=False)

    def connect(self, server_name: str, port: int = 443, timeout: float = 5) -> ssl.SSLSocket:
        """A viewer's TLS connection to the POP, verified against Pebble's root: only a served chain passes."""
        if self.network is None:
            raise LabError("nginx is not running")
        context = ssl.create_default_context(cafile=str(self.pebble.root_file))
        raw = _socket_in_namespace(self.network.ns(self.viewer_role))
        raw.settimeout(timeout)
        try:
            raw.connect((str(POP_ADDRESS), port))
            return context.wrap_socket(raw, server_hostname=server_name)
        except BaseException:
            raw.close()
            raise

    def served_certificate(self, server_name: str, port: int = 443) -> x509.Certificate:
        with self.connect(server_name, port) as connection:
            der = connection.getpeercert(binary_form=True)
        if der is None:
            raise LabError("the POP sent no certificate")
        return x509.load_der_x509_certificate(der)

    def stop_nginx(self) -> None:
        if self.network is not None:
            self.network.close()
            self.network = None
            self.nginx = None

    # tear-down -------------------------------------------------------------------------------------------

    def close(self) -> None:
        errors: list[str] = []
        steps = [
            ("nginx", self.stop_nginx),
            ("pebble", lambda: self.pebble.stop() if "pebble" in self._started else None),
            ("dns", lambda: self.dns.stop() if "dns" in self._started else None),
            ("moto", lambda: self.moto.stop() if "moto" in self._started else None),
        ]
        for name, step in steps:
            try:
                step()
            except Exception as error:
                errors.append(f"{name}: {error}")
        self._started.clear()
        if errors:
            raise LabError("tear-down: " + "; ".join(errors))


@contextlib.contextmanager
def cert_lab(config: StackConfig, pop: str, workdir: Path | None = None, **settings: Any) -> Iterator[CertLab]:
    """A started CertLab in `workdir` (a new temporary directory, removed afterwards, when not given)."""
    owned = workdir is None
    directory = Path(tempfile.mkdtemp(prefix="plexcdn-certlab-")) if workdir is None else workdir
    try:
        with CertLab(config, pop, directory, **settings) as lab:
            yield lab
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)


# --- command line ----------------------------------------------------------------------------------------


def _serial(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def _demo(args: argparse.Namespace) -> int:
    from labs import iam_eval

    config = load_stack_file(Path(args.stack_file))
    pop = args.pop or config.pops[0].name
    workdir = Path(args.workdir) if args.workdir else None
    with cert_lab(config, pop, workdir) as lab:
        print(f"lab files under {lab.root} (the POP's / )")
        print(f"Pebble at {lab.pebble.directory_url}; Route53 (moto) at {lab.moto.url}")
        for key, (pop_value, lab_value) in lab.env_differences().items():
            print(f"  env {key}: POP {pop_value!r} -> lab {lab_value!r}")
        issued = lab.issue()
        print(f"issuance: exit {issued.returncode} in {issued.seconds:.1f} s")
        if issued.returncode != 0:
            print(issued.output)
            return 1
        first = lab.live_certificate()
        print(f"  certificate {_serial(first)} for {', '.join(lab.certificate_names)}")
        lab.start_nginx()
        served = _serial(lab.served_certificate(lab.cert_name))
        print(f"nginx in namespace {NETNS_PREFIX}{lab.pop_role} at {POP_ADDRESS} serves {served}")
        renewed = lab.renew(force=True)
        print(f"forced renewal: exit {renewed.returncode} in {renewed.seconds:.1f} s")
        deadline = time.monotonic() + 10
        while (
            time.monotonic() < deadline and lab.served_certificate(lab.cert_name).serial_number == first.serial_number
        ):
            time.sleep(0.1)
        print(f"  nginx now serves {_serial(lab.served_certificate(lab.cert_name))}")
        policy = lab.policy()
        for request in lab.certbot_requests():
            judged = iam_eval.route53_request(request.method, request.path, request.body)
            print(f"  {iam_eval.evaluate(policy, judged):<12} {judged.describe()}")
        answers = [answer for answer in lab.dns.answers() if answer.record_type == "TXT"]
        print(f"DNS answered {len(answers)} TXT queries from moto's zone")
        if args.hold > 0:
            print(
                f"holding for {args.hold} s (Ctrl-C ends it). Try:\n"
                f"  ip netns exec {NETNS_PREFIX}{lab.viewer_role} openssl s_client -connect {POP_ADDRESS}:443 "
                f"-servername {lab.config.shared_name} -CAfile {lab.pebble.root_file}"
            )
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(args.hold)
    return 0


def _hold_seconds(text: str) -> int:
    seconds = int(text)
    if not 0 <= seconds <= MAX_HOLD_SECONDS:
        raise argparse.ArgumentTypeError(f"must be 0 to {MAX_HOLD_SECONDS}")
    return seconds


def _venv(args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else certbot_venv_path()
    ready = ensure_certbot_venv(path)
    print(f"{ready}: certbot {render.CERTBOT_VERSION} with certbot-dns-route53")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.cert_lab", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    venv = commands.add_parser(
        "venv", help=f"create or check the cached certbot venv (${CERTBOT_VENV_VARIABLE} overrides the path)"
    )
    venv.add_argument("--path", help=f"venv directory (default {certbot_venv_path()})")
    venv.set_defaults(handler=_venv)
    demo = commands.add_parser(
        "demo", help="issue and force-renew one POP's certificate, and show what happened (root)"
    )
    demo.add_argument("stack_file", nargs="?", default="Pulumi.dev.yaml")
    demo.add_argument("--pop", help="POP name (default: the first)")
    demo.add_argument("--workdir", help="keep the lab's files here instead of a temporary directory")
    demo.add_argument(
        "--hold",
        default=0,
        type=_hold_seconds,
        metavar="SECONDS",
        help="keep the lab up this long (max 3600)",
    )
    demo.set_defaults(handler=_demo)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
