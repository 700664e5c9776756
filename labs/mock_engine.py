"""Pulumi's mock engine with a monitor that records every registration as the engine would receive it:
type, name, parent, options and which inputs arrive marked secret."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import pulumi
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf import json_format  # type: ignore[import-untyped]
from pulumi.runtime.mocks import MockMonitor

from plexcdn.transcode.render import HOST_KEY_PREFIX

SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"  # noqa: S105 - Pulumi's secret marker, not a secret
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # noqa: S105 - the same marker's value


def _secret_paths(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        if value.get(SECRET_SIG_KEY) == SECRET_SIG:
            return [path or "."]
        return [p for k, v in value.items() for p in _secret_paths(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _secret_paths(v, f"{path}[{i}]")]
    return []


@dataclass
class Registration:
    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    secret_inputs: list[str]
    ignore_changes: list[str]
    depends_on: list[str]
    delete_before_replace: bool

    @property
    def parent_type(self) -> str:
        return self.parent.split("::")[2].split("$")[-1] if self.parent else ""


def _fake_value(name: str, length: int = 32) -> bytes:
    return hashlib.sha256(name.encode()).digest()[:length]


def _real_ed25519(name: str) -> dict[str, str]:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(_fake_value(name))
    return {
        "privateKeyPem": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "publicKeyPem": key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    }


class ProgramMocks(pulumi.runtime.Mocks):
    """Plausible outputs for the resources plex-cdn makes; every address comes from documentation ranges."""

    def __init__(self) -> None:
        self.counter = 0
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.counter += 1
        n = self.counter
        outputs = dict(args.inputs)
        typ = args.typ
        if typ == "digitalocean:index/droplet:Droplet":
            outputs.update(ipv4Address=f"198.51.100.{n}", ipv6Address=f"2001:db8::{n:x}")
            return str(1000 + n), outputs
        if typ == "linode:index/instance:Instance":
            outputs.update(ipAddress=f"203.0.113.{n}", ipv4s=[f"203.0.113.{n}"], ipv6=f"2001:db8:1::{n:x}/128")
            return str(2000 + n), outputs
        if typ == "tls:index/privateKey:PrivateKey" and args.name.endswith("-identity"):
            # A library peer's identity: real Ed25519, since its peer ID and IPNS name are computed from it.
            outputs.update(_real_ed25519(args.name))
            return f"{args.name}-id", outputs
        if typ == "tls:index/privateKey:PrivateKey":
            body = f"mock-{args.name}"
            outputs.update(
                privateKeyPem=f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n",
                privateKeyOpenssh=f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----\n",
                publicKeyOpenssh="ssh-ed25519 " + base64.b64encode(_fake_value(args.name)).decode() + "\n",
            )
        if typ in ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"):
            outputs["certPem"] = f"-----BEGIN CERTIFICATE-----\nmock-{args.name}\n-----END CERTIFICATE-----\n"
        if typ == "tls:index/certRequest:CertRequest":
            outputs["certRequestPem"] = (
                f"-----BEGIN CERTIFICATE REQUEST-----\nmock-{args.name}\n-----END CERTIFICATE REQUEST-----\n"
            )
        if typ == "random:index/randomBytes:RandomBytes":
            outputs["base64"] = base64.b64encode(_fake_value(args.name)).decode()
            outputs["hex"] = _fake_value(args.name).hex()
        if typ == "aws:iam/accessKey:AccessKey":
            outputs["secret"] = "mock-secret-" + _fake_value(args.name, 8).hex()
            return "AKIAMOCK" + _fake_value(args.name, 6).hex().upper(), outputs
        if typ == "digitalocean:index/sshKey:SshKey":
            outputs["fingerprint"] = ":".join(f"{b:02x}" for b in _fake_value(args.name, 16))
        if typ == "aws:iam/user:User":
            outputs["arn"] = f"arn:aws:iam::123456789012:user/plex-cdn/{args.inputs.get('name')}"
        if typ == "command:remote:Command" and HOST_KEY_PREFIX in str(args.inputs.get("create", "")):
            # A transcode slave's set-up ends with its SSH host key, which the Plex server's known_hosts gets.
            host_key = "ssh-ed25519 " + base64.b64encode(_fake_value(f"host-{args.name}")).decode()
            outputs.update(stdout=f"set-up done\n{HOST_KEY_PREFIX}{host_key}", stderr="")
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        self.calls.append((args.token, dict(args.args)))
        if args.token == "aws:route53/getZone:getZone":  # noqa: S105 - an invoke token, not a password
            return {"zoneId": "Z0MOCKZONE", "name": args.args.get("name"), "id": "Z0MOCKZONE"}, []
        return {}, []


class RecordingMonitor(MockMonitor):
    registrations: list[Registration]

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registrations = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - the gRPC method name
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type == "pulumi:pulumi:Stack":
            return response
        raw = json_format.MessageToDict(request.object)
        self.registrations.append(
            Registration(
                type=request.type,
                name=request.name,
                urn=response.urn,
                parent=request.parent,
                custom=request.custom,
                inputs=raw,
                secret_inputs=_secret_paths(raw),
                ignore_changes=list(request.ignoreChanges),
                depends_on=list(request.dependencies),
                delete_before_replace=request.deleteBeforeReplace,
            )
        )
        return response

    def of_type(self, typ: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == typ]

    def named(self, name: str) -> Registration:
        matches = [r for r in self.registrations if r.name == name]
        assert len(matches) == 1, f"expected one resource named {name}, found {len(matches)}"
        return matches[0]


def install_mocks(stack: str = "dev") -> tuple[ProgramMocks, RecordingMonitor]:
    # Pulumi's runtime uses the thread's current loop; a test that ran asyncio.run() before leaves none.
    asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = ProgramMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="plex-cdn", stack=stack, preview=False, monitor=monitor)
    return mocks, monitor
