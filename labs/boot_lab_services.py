"""The boot lab's network services, as guests see them on the lab bridge:

- DNS on `--dns-address`:53 (UDP and TCP): A, AAAA, TXT and CNAME answered from moto's Route53 zones,
  as Route53's name servers answer from a hosted zone, and from the lab's own records
  (`--records-file`, re-read when it changes; they win over the zone for their name and type).
  Every other name is NXDOMAIN: the guests' resolver knows nothing beyond the lab.
- HTTPS on `--front-address`:443 for the names a POP calls by name: route53.amazonaws.com and
  iam.amazonaws.com (to moto) and Let's Encrypt's ACME directories (to Pebble, whose directory is
  /dir where Let's Encrypt's is /directory), with a certificate from the lab CA.

This process runs in the lab machine's own namespace: its listening sockets are made inside the lab
namespace (a socket keeps the namespace it was made in), while moto and Pebble run on this machine's
loopback. So the guests reach exactly these two ports and nothing else of the machine, and nothing
in the lab namespace routes anywhere. A second DNS socket on 127.0.0.1 serves Pebble's validation.

Answers and forwarded requests are logged as JSON lines (`--answers-log`, `--front-log`); bodies
never are (they carry keys and tokens).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import boto3
from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

AWS_HOSTS: Final = ("route53.amazonaws.com", "iam.amazonaws.com")
ACME_HOSTS: Final = ("acme-staging-v02.api.letsencrypt.org", "acme-v02.api.letsencrypt.org")
FRONT_NAMES: Final = (*AWS_HOSTS, *ACME_HOSTS)
LETS_ENCRYPT_DIRECTORY: Final = "/directory"
PEBBLE_DIRECTORY: Final = "/dir"
SIGNING_REGION: Final = "us-east-1"
ADMIN_KEY: Final = "lab-admin"
UPSTREAM_TIMEOUT_S: Final = 60
RECORD_TYPES: Final = ("A", "AAAA", "TXT", "CNAME")
_CLONE_NEWNET: Final = 0x40000000


def socket_in_namespace(namespace: str, kind: socket.SocketKind) -> socket.socket:
    """An IPv4 socket that lives in network namespace `namespace`, made by a thread that joined it
    (setns changes only the calling thread; the socket keeps its namespace)."""
    made: dict[str, Any] = {}

    def create() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{namespace}", "rb") as handle:
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns into {namespace}: {os.strerror(error)}")
            made["socket"] = socket.socket(socket.AF_INET, kind)
        except OSError as error:
            made["error"] = error

    worker = threading.Thread(target=create)
    worker.start()
    worker.join()
    if "error" in made:
        raise made["error"]
    created: socket.socket = made["socket"]
    return created


# --- DNS ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabRecord:
    name: str
    type: str
    values: tuple[str, ...]
    ttl: int = 60


def read_records(path: Path) -> list[LabRecord]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [
        LabRecord(str(item["name"]).lower().rstrip("."), str(item["type"]).upper(), tuple(item["values"]), item["ttl"])
        for item in data.get("records", [])
    ]


def write_records(path: Path, records: list[LabRecord]) -> None:
    """Replace the lab's records atomically (the DNS server notices within its next query)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(
        json.dumps(
            {"records": [{"name": r.name, "type": r.type, "values": list(r.values), "ttl": r.ttl} for r in records]},
            indent=1,
        )
    )
    temporary.replace(path)


def txt_strings(value: str) -> list[str]:
    """A Route53 TXT value ('"a" "b"') as its character strings."""
    found = re.findall(r'"((?:[^"\\]|\\.)*)"', value)
    return [re.sub(r"\\(.)", r"\1", item) for item in found] if found else [value]


def _rdata(record_type: str, value: str) -> Any:
    if record_type == "A":
        return A(value)
    if record_type == "AAAA":
        return AAAA(value)
    if record_type == "CNAME":
        return CNAME(value)
    return TXT(txt_strings(value))


class ZoneSource:
    """moto's public hosted zones, read per query (they change while certbot validates)."""

    def __init__(self, moto_url: str) -> None:
        self.client = boto3.client(
            "route53",
            endpoint_url=moto_url,
            region_name=SIGNING_REGION,
            aws_access_key_id=ADMIN_KEY,
            aws_secret_access_key=ADMIN_KEY,
        )

    def records(self, name: str) -> tuple[bool, list[dict[str, Any]]]:
        """(whether a zone holds the name, its record sets); (False, []) when no zone covers it."""
        zones = [
            zone
            for zone in self.client.list_hosted_zones()["HostedZones"]
            if not zone.get("Config", {}).get("PrivateZone")
            and (name == zone["Name"].lower().rstrip(".") or name.endswith("." + zone["Name"].lower().rstrip(".")))
        ]
        if not zones:
            return False, []
        zone = max(zones, key=lambda z: len(z["Name"]))
        found: list[dict[str, Any]] = []
        paginator = self.client.get_paginator("list_resource_record_sets")
        for page in paginator.paginate(HostedZoneId=zone["Id"]):
            found.extend(record for record in page["ResourceRecordSets"] if record["Name"].lower().rstrip(".") == name)
        return True, found


class LabResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, zones: ZoneSource | None, records_file: Path, answers_log: Path | None) -> None:
        self.zones = zones
        self.records_file = records_file
        self.answers_log = answers_log
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        record_type = QTYPE.get(request.q.qtype, str(request.q.qtype))
        answers, exists, source = self._answers(name, record_type)
        for answer_type, value, ttl in answers:
            reply.add_answer(
                RR(request.q.qname, getattr(QTYPE, answer_type), rdata=_rdata(answer_type, value), ttl=ttl)
            )
        if not exists:
            reply.header.rcode = RCODE.NXDOMAIN
        self._log(
            {
                "at": time.time(),
                "client": handler.client_address[0],
                "name": name,
                "type": record_type,
                "rcode": "NOERROR" if exists else "NXDOMAIN",
                "values": [value for _, value, _ in answers],
                "source": source,
            }
        )
        return reply

    def _answers(self, name: str, record_type: str) -> tuple[list[tuple[str, str, int]], bool, str]:
        lab = [record for record in read_records(self.records_file) if record.name == name]
        if lab:
            chosen = [r for r in lab if r.type == record_type] or [r for r in lab if r.type == "CNAME"]
            return [(r.type, value, r.ttl) for r in chosen for value in r.values], True, "lab"
        if self.zones is None:
            return [], False, "none"
        covered, record_sets = self.zones.records(name)
        if not covered or not record_sets:
            return [], False, "zone" if covered else "none"
        chosen_sets = [r for r in record_sets if r["Type"] == record_type] or [
            r for r in record_sets if r["Type"] == "CNAME"
        ]
        answers = []
        for record in chosen_sets:
            # Latency or weighted sets of one name all answer here: the lab has no geography.
            for item in record.get("ResourceRecords", []):
                answers.append((record["Type"], item["Value"], int(record.get("TTL", 60))))
        return answers, True, "zone"

    def _log(self, entry: dict[str, Any]) -> None:
        if self.answers_log is None:
            return
        with self.lock, self.answers_log.open("a") as out:
            out.write(json.dumps(entry) + "\n")


def _dns_servers(resolver: LabResolver, sockets: list[tuple[socket.socket, bool]]) -> list[DNSServer]:
    quiet = DNSLogger(log="-request,-reply,-truncated,-error", prefix=False)
    servers = []
    for bound, tcp in sockets:
        server = DNSServer(resolver, address="127.0.0.1", port=0, tcp=tcp, logger=quiet)
        # Swap in the socket made in the lab namespace, bound by the caller.
        server.server.socket.close()
        server.server.socket = bound
        if tcp:
            bound.listen(16)
        servers.append(server)
    return servers


# --- the HTTPS front ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    scheme: str
    host: str
    port: int
    rewrite: Callable[[str], str]
    tls: ssl.SSLContext | None = None


def _pebble_path(path: str) -> str:
    if path == LETS_ENCRYPT_DIRECTORY or path.startswith(LETS_ENCRYPT_DIRECTORY + "?"):
        return PEBBLE_DIRECTORY + path[len(LETS_ENCRYPT_DIRECTORY) :]
    return path


def front_upstreams(moto_port: int, pebble_port: int, pebble_ca: Path) -> dict[str, Upstream]:
    pebble_tls = ssl.create_default_context(cafile=str(pebble_ca))
    pebble_tls.check_hostname = False  # Pebble's API certificate names 127.0.0.1, verified by the CA alone
    routes = {host: Upstream("http", "127.0.0.1", moto_port, lambda path: path) for host in AWS_HOSTS}
    routes.update({host: Upstream("https", "127.0.0.1", pebble_port, _pebble_path, pebble_tls) for host in ACME_HOSTS})
    return routes


HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
)


def _front_handler(upstreams: dict[str, Upstream], log_path: Path | None) -> type[BaseHTTPRequestHandler]:
    log_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 120

        def log_message(self, format: str, *args: object) -> None:
            return

        def _forward(self) -> None:
            host = (self.headers.get("Host") or "").split(":")[0].lower()
            upstream = upstreams.get(host)
            if upstream is None:
                self._reply(421, b"the lab serves no such name here\n")
                self._log(host, 421)
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["X-Forwarded-Proto"] = "https"
            connection: http.client.HTTPConnection
            if upstream.scheme == "https":
                connection = http.client.HTTPSConnection(
                    upstream.host, upstream.port, context=upstream.tls, timeout=UPSTREAM_TIMEOUT_S
                )
            else:
                connection = http.client.HTTPConnection(upstream.host, upstream.port, timeout=UPSTREAM_TIMEOUT_S)
            try:
                connection.request(self.command, upstream.rewrite(self.path), body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except OSError as error:
                self._reply(502, f"upstream for {host}: {error}\n".encode())
                self._log(host, 502)
                return
            finally:
                connection.close()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            self._log(host, response.status)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward  # noqa: N815 - the base class's naming

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _log(self, host: str, status: int) -> None:
            if log_path is None:
                return
            entry = {"at": time.time(), "client": self.client_address[0], "host": host}
            entry.update({"method": self.command, "path": self.path.split("?")[0], "status": status})
            with log_lock, log_path.open("a") as out:
                out.write(json.dumps(entry) + "\n")

    return Handler


class _BoundHTTPServer(ThreadingHTTPServer):
    """An HTTPS server on a socket bound elsewhere; the TLS handshake happens in each request's thread,
    so one slow client cannot hold up the others."""

    daemon_threads = True

    def __init__(self, bound: socket.socket, handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), handler, bind_and_activate=False)
        self.socket.close()
        bound.listen(32)
        self.socket = bound
        self.server_address = bound.getsockname()
        self.tls = tls

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(30)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        super().finish_request(wrapped, client_address)


# --- the process -------------------------------------------------------------------------------------------


def _bind(namespace: str, kind: socket.SocketKind, address: str, port: int) -> socket.socket:
    bound = socket_in_namespace(namespace, kind)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    bound.bind((address, port))
    return bound


@contextlib.contextmanager
def running_services(args: argparse.Namespace) -> Iterator[list[str]]:
    zones = ZoneSource(f"http://127.0.0.1:{args.moto_port}") if args.moto_port else None
    resolver = LabResolver(zones, args.records_file, args.answers_log)
    dns_sockets = [
        (_bind(args.namespace, socket.SOCK_DGRAM, args.dns_address, 53), False),
        (_bind(args.namespace, socket.SOCK_STREAM, args.dns_address, 53), True),
    ]
    host_dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host_dns.bind(("127.0.0.1", args.host_dns_port))
    dns_sockets.append((host_dns, False))
    servers = _dns_servers(resolver, dns_sockets)
    for server in servers:
        server.start_thread()
    described = [f"dns {args.dns_address}:53 (lab) and 127.0.0.1:{args.host_dns_port}"]
    front: _BoundHTTPServer | None = None
    if args.front_address:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(args.front_cert), str(args.front_key))
        upstreams = front_upstreams(args.moto_port, args.pebble_port, args.pebble_ca)
        front = _BoundHTTPServer(
            _bind(args.namespace, socket.SOCK_STREAM, args.front_address, 443),
            _front_handler(upstreams, args.front_log),
            tls,
        )
        threading.Thread(target=front.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        described.append(f"https {args.front_address}:443 for {', '.join(FRONT_NAMES)}")
    try:
        yield described
    finally:
        if front is not None:
            front.shutdown()
            front.server_close()
        for server in servers:
            server.server.shutdown()
            server.server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.boot_lab_services", description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--dns-address", required=True)
    parser.add_argument("--host-dns-port", type=int, required=True, help="DNS on 127.0.0.1 here, for Pebble")
    parser.add_argument("--records-file", type=Path, required=True)
    parser.add_argument("--answers-log", type=Path)
    parser.add_argument("--moto-port", type=int, default=0, help="moto on 127.0.0.1 (0: no zones)")
    parser.add_argument("--front-address", help="address for the HTTPS front (needs the three options below)")
    parser.add_argument("--front-cert", type=Path)
    parser.add_argument("--front-key", type=Path)
    parser.add_argument("--front-log", type=Path)
    parser.add_argument("--pebble-port", type=int, default=0)
    parser.add_argument("--pebble-ca", type=Path, help="the CA of Pebble's API certificate")
    parser.add_argument("--ready-file", type=Path, help="written once every socket listens")
    args = parser.parse_args(argv)
    if args.front_address and not (args.front_cert and args.front_key and args.pebble_ca and args.moto_port):
        parser.error("--front-address needs --front-cert, --front-key, --pebble-ca, --moto-port and --pebble-port")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with running_services(args) as described:
        print("boot lab services: " + "; ".join(described), file=sys.stderr, flush=True)
        if args.ready_file is not None:
            args.ready_file.write_text(json.dumps({"pid": os.getpid(), "services": described}))
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
