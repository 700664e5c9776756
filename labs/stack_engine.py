"""The program's whole graph under Pulumi's mock engine, with what the clouds would make made for real.

The boot lab must hand its guests exactly what `pulumi up` would hand the providers and pulumi-command:
the user_data bytes, the files and scripts, the keys. So this engine does what the providers would do for
every resource whose value the program uses: the tls provider's keys and certificates are really
generated and signed, random bytes are random, the certbot IAM user, its policy and its access key are
made in moto's IAM, the hosted zone is looked up in moto's Route53. What only a cloud has (a VM's
address) comes from the lab: `addresses` names each VM's lab address.

Everything else is recorded as the engine receives it (labs.mock_engine.RecordingMonitor) and replayed
later, in dependency order, against the guests: see `plan()`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pulumi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from labs.mock_engine import RecordingMonitor, Registration
from labs.remote_steps import (
    DIAL_ERROR_LIMIT_DEFAULT,
    PER_DIAL_TIMEOUT_DEFAULT,
    CommandStep,
    Connection,
    CopyStep,
    Step,
)

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_CURVES: dict[str, ec.EllipticCurve] = {
    "P224": ec.SECP224R1(),
    "P256": ec.SECP256R1(),
    "P384": ec.SECP384R1(),
    "P521": ec.SECP521R1(),
}
_KEY_USAGES = {
    "digital_signature": "digital_signature",
    "content_commitment": "content_commitment",
    "key_encipherment": "key_encipherment",
    "data_encipherment": "data_encipherment",
    "key_agreement": "key_agreement",
    "cert_signing": "key_cert_sign",
    "crl_signing": "crl_sign",
    "encipher_only": "encipher_only",
    "decipher_only": "decipher_only",
}
_EXTENDED_USAGES = {"server_auth": ExtendedKeyUsageOID.SERVER_AUTH, "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH}
_SUBJECT_FIELDS = {
    "commonName": NameOID.COMMON_NAME,
    "organization": NameOID.ORGANIZATION_NAME,
    "organizationalUnit": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "country": NameOID.COUNTRY_NAME,
}


def _generate_key(inputs: Mapping[str, Any]) -> PrivateKey:
    algorithm = inputs.get("algorithm", "RSA")
    if algorithm == "ED25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ECDSA":
        return ec.generate_private_key(_CURVES[inputs.get("ecdsaCurve", "P224")])
    return rsa.generate_private_key(public_exponent=65537, key_size=int(inputs.get("rsaBits", 2048)))


def private_key_outputs(key: PrivateKey) -> dict[str, str]:
    """The tls provider's PrivateKey outputs: PEM as it writes them (PKCS#1 for RSA, SEC 1 for ECDSA,
    PKCS#8 for Ed25519), OpenSSH forms, the public halves."""
    pem_format = (
        serialization.PrivateFormat.PKCS8
        if isinstance(key, ed25519.Ed25519PrivateKey)
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    public = key.public_key()
    openssh_public = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return {
        "privateKeyPem": key.private_bytes(
            serialization.Encoding.PEM, pem_format, serialization.NoEncryption()
        ).decode(),
        "privateKeyPemPkcs8": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "privateKeyOpenssh": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ).decode(),
        "publicKeyOpenssh": openssh_public.decode() + "\n",
        "publicKeyPem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
        "publicKeyFingerprintSha256": "SHA256:"
        + base64.b64encode(hashlib.sha256(base64.b64decode(openssh_public.split()[1])).digest()).decode().rstrip("="),
    }


def _load_key(pem: str) -> PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    return key


def _subject(inputs: Mapping[str, Any]) -> x509.Name:
    subject = inputs.get("subject") or {}
    if isinstance(subject, list):  # older SDKs send a one-element list
        subject = subject[0] if subject else {}
    return x509.Name(
        [x509.NameAttribute(oid, str(subject[field])) for field, oid in _SUBJECT_FIELDS.items() if subject.get(field)]
    )


def _signature_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _certificate(
    inputs: Mapping[str, Any],
    subject: x509.Name,
    *,
    public_key: Any,
    issuer: x509.Name,
    issuer_key: PrivateKey,
    dns_names: list[str],
    issuer_certificate: x509.Certificate | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    hours = int(inputs.get("validityPeriodHours", 24))
    uses = list(inputs.get("allowedUses") or [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=hours))
    )
    if inputs.get("isCaCertificate"):
        path_length = inputs.get("maxPathLength")
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None if path_length is None else int(path_length)), critical=True
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    flags = dict.fromkeys(_KEY_USAGES.values(), False)
    for use in uses:
        if use in _KEY_USAGES:
            flags[_KEY_USAGES[use]] = True
    if any(flags.values()):
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    extended = [_EXTENDED_USAGES[use] for use in uses if use in _EXTENDED_USAGES]
    if extended:
        builder = builder.add_extension(x509.ExtendedKeyUsage(extended), critical=False)
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]), critical=False
        )
    # As Go's x509.CreateCertificate, which the tls provider calls: a CA always gets a subject key
    # identifier, a leaf only when asked; a leaf's authority key identifier is its issuer's subject key
    # identifier, a self-signed certificate's only when asked.
    if inputs.get("setSubjectKeyId") or inputs.get("isCaCertificate"):
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if issuer_certificate is not None:
        try:
            issuer_key_id = issuer_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            issuer_key_id = None
        if issuer_key_id is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_key_id), critical=False
            )
    elif inputs.get("setAuthorityKeyId"):
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
    return builder.sign(issuer_key, _signature_hash(issuer_key))  # type: ignore[arg-type]


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class VmAddress:
    ipv4: str
    ipv6: str = ""


# Inputs a provider ignores when it decides whether a resource changed (the program's ignore_changes).
IGNORED_INPUTS: Final = {
    "digitalocean:index/droplet:Droplet": ("userData",),
    "linode:index/instance:Instance": ("metadatas",),
}


@dataclass(frozen=True)
class MadeResource:
    inputs: dict[str, Any]
    identifier: str
    outputs: dict[str, Any]


class StackEngine(pulumi.runtime.Mocks):
    """Pulumi mocks that make what the program's values depend on for real (see the module's docstring).

    `iam` and `route53` are boto3 clients (moto's, in the lab); `addresses(resource_name)` gives a VM its
    lab address when the program makes it. `state` is what an earlier run made: as with a stack's state,
    a resource whose inputs did not change keeps what it had (its key, its certificate, its VM), so a second
    run of a changed program is a `pulumi up` of the same stack."""

    def __init__(
        self,
        iam: Any,
        route53: Any,
        addresses: Callable[[str], VmAddress],
        state: dict[str, MadeResource] | None = None,
    ) -> None:
        self.iam = iam
        self.route53 = route53
        self.addresses = addresses
        self.state: dict[str, MadeResource] = state if state is not None else {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        handlers: dict[str, Callable[[str, dict[str, Any]], tuple[str, dict[str, Any]]]] = {
            "tls:index/privateKey:PrivateKey": self.private_key,
            "tls:index/selfSignedCert:SelfSignedCert": self.self_signed_cert,
            "tls:index/certRequest:CertRequest": self.cert_request,
            "tls:index/locallySignedCert:LocallySignedCert": self.locally_signed_cert,
            "random:index/randomBytes:RandomBytes": self.random_bytes,
            "aws:iam/user:User": self.iam_user,
            "aws:iam/userPolicy:UserPolicy": self.iam_user_policy,
            "aws:iam/accessKey:AccessKey": self.iam_access_key,
            "digitalocean:index/droplet:Droplet": self.droplet,
            "linode:index/instance:Instance": self.linode,
            "digitalocean:index/sshKey:SshKey": self.digitalocean_ssh_key,
        }
        outputs = dict(args.inputs)
        # The provider sees secrets' values; only the engine's record keeps them marked.
        inputs: dict[str, Any] = secret_value(dict(args.inputs))
        handler = handlers.get(args.typ)
        if handler is None:
            # Recorded and replayed later (commands, records, firewalls), or of no consequence in the lab.
            return f"{args.name}-id", outputs
        key = f"{args.typ}::{args.name}"
        compared = {k: v for k, v in inputs.items() if k not in IGNORED_INPUTS.get(args.typ, ())}
        earlier = self.state.get(key)
        if earlier is not None and earlier.inputs == compared:
            return earlier.identifier, {**outputs, **earlier.outputs}
        identifier, made = handler(args.name, inputs)
        self.state[key] = MadeResource(compared, identifier, made)
        outputs.update(made)
        return identifier, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        if args.token == "aws:route53/getZone:getZone":  # noqa: S105 - an invoke token, not a password
            name = str(args.args["name"]).rstrip(".") + "."
            zones = self.route53.list_hosted_zones_by_name(DNSName=name)["HostedZones"]
            zone = next(zone for zone in zones if zone["Name"] == name)
            zone_id = zone["Id"].split("/")[-1]
            return {"zoneId": zone_id, "id": zone_id, "name": name.rstrip(".")}, []
        return {}, []

    # tls ------------------------------------------------------------------------------------------------

    def private_key(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return f"{name}-id", private_key_outputs(_generate_key(inputs))

    def self_signed_cert(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        key = _load_key(inputs["privateKeyPem"])
        subject = _subject(inputs)
        certificate = _certificate(
            inputs,
            subject,
            public_key=key.public_key(),
            issuer=subject,
            issuer_key=key,
            dns_names=list(inputs.get("dnsNames") or []),
        )
        return f"{name}-id", {"certPem": _pem(certificate)}

    def cert_request(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        key = _load_key(inputs["privateKeyPem"])
        builder = x509.CertificateSigningRequestBuilder().subject_name(_subject(inputs))
        names = list(inputs.get("dnsNames") or [])
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
        request = builder.sign(key, _signature_hash(key))  # type: ignore[arg-type]
        return f"{name}-id", {"certRequestPem": request.public_bytes(serialization.Encoding.PEM).decode()}

    def locally_signed_cert(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        request = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
        authority = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
        authority_key = _load_key(inputs["caPrivateKeyPem"])
        try:
            names = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.DNSName
            )
        except x509.ExtensionNotFound:
            names = []
        certificate = _certificate(
            inputs,
            request.subject,
            public_key=request.public_key(),
            issuer=authority.subject,
            issuer_key=authority_key,
            dns_names=list(names),
            issuer_certificate=authority,
        )
        return f"{name}-id", {"certPem": _pem(certificate), "readyForRenewal": False}

    # random ---------------------------------------------------------------------------------------------

    def random_bytes(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        data = os.urandom(int(inputs["length"]))
        return f"{name}-id", {"base64": base64.b64encode(data).decode(), "hex": data.hex()}

    # aws: IAM in moto; Route53 records and health checks are replayed after the deploys they wait for -----

    def iam_user(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        created = self.iam.create_user(UserName=inputs["name"], Path=inputs.get("path", "/"))["User"]
        return inputs["name"], {"arn": created["Arn"], "uniqueId": created["UserId"]}

    def iam_user_policy(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        # Without a name the provider makes one up; the resource's own name does as well here.
        policy_name = inputs.get("name") or name
        self.iam.put_user_policy(UserName=inputs["user"], PolicyName=policy_name, PolicyDocument=inputs["policy"])
        return f"{inputs['user']}:{policy_name}", {"name": policy_name}

    def iam_access_key(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        key = self.iam.create_access_key(UserName=inputs["user"])["AccessKey"]
        return key["AccessKeyId"], {"secret": key["SecretAccessKey"], "status": key["Status"]}

    # the providers' VMs ---------------------------------------------------------------------------------

    def droplet(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        address = self.addresses(name)
        return str(abs(hash(name)) % 10**8), {"ipv4Address": address.ipv4, "ipv6Address": address.ipv6}

    def linode(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        address = self.addresses(name)
        return str(abs(hash(name)) % 10**8), {
            "ipAddress": address.ipv4,
            "ipv4s": [address.ipv4],
            "ipv6": f"{address.ipv6}/128" if address.ipv6 else "",
        }

    def digitalocean_ssh_key(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        blob = base64.b64decode(str(inputs["publicKey"]).split()[1])
        fingerprint = ":".join(f"{b:02x}" for b in hashlib.md5(blob, usedforsecurity=False).digest())
        return fingerprint, {"fingerprint": fingerprint}


def run_program(engine: StackEngine, stack: str, program: Callable[[], object]) -> RecordingMonitor:
    """Run `program` (which builds the graph) to completion under `engine`; return what the engine saw."""
    import asyncio

    asyncio.set_event_loop(asyncio.new_event_loop())
    monitor = RecordingMonitor(engine)
    pulumi.runtime.set_mocks(engine, project="plex-cdn", stack=stack, preview=False, monitor=monitor)

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def whole_graph() -> None:
        program()

    whole_graph()
    return monitor


def secret_value(value: Any) -> Any:
    """A recorded input's plain value (secrets unwrapped: the lab hands them to the guests as the engine would)."""
    if isinstance(value, dict):
        if value.get("4dabf18193072939515e22adb298388d") == "1b47061264138c4ac30d75fd1eb44270":
            return secret_value(value.get("value"))
        return {key: secret_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [secret_value(item) for item in value]
    return value


def registrations_by_urn(monitor: RecordingMonitor) -> dict[str, Registration]:
    return {registration.urn: registration for registration in monitor.registrations}


# --- from what the engine saw to what the lab runs -----------------------------------------------------------

VM_TYPES: Final = ("digitalocean:index/droplet:Droplet", "linode:index/instance:Instance")
COMMAND_TYPE: Final = "command:remote:Command"
COPY_TYPE: Final = "command:remote:CopyToRemote"
RECORD_TYPE: Final = "aws:route53/record:Record"


@dataclass(frozen=True)
class PlannedVm:
    resource: str  # the VM's resource name, e.g. "us-vm"
    label: str  # the name the provider shows, which becomes its hostname
    user_data: bytes = field(repr=False)


@dataclass(frozen=True)
class StackPlan:
    """What `pulumi up` of the recorded graph would do to machines: VMs with their first boot, the
    pulumi-command steps in an order the engine could run them, and the Route53 record sets."""

    vms: tuple[PlannedVm, ...]
    steps: tuple[Step, ...]
    records: tuple[dict[str, Any], ...]


def vm_user_data(registration: Registration) -> bytes:
    inputs = secret_value(registration.inputs)
    if registration.type == "linode:index/instance:Instance":
        return base64.b64decode(inputs["metadatas"][0]["userData"])
    return str(inputs["userData"]).encode()


def _connection(value: Mapping[str, Any]) -> Connection:
    return Connection(
        host=str(value["host"]),
        private_key=str(value["privateKey"]),
        user=str(value.get("user", "root")),
        port=int(value.get("port", 22)),
        host_key=value.get("hostKey"),
        dial_error_limit=int(value.get("dialErrorLimit", DIAL_ERROR_LIMIT_DEFAULT)),
        per_dial_timeout=int(value.get("perDialTimeout", PER_DIAL_TIMEOUT_DEFAULT)),
    )


def _step(registration: Registration, depends_on: tuple[str, ...], cwd: Path) -> Step:
    inputs = secret_value(registration.inputs)
    connection = _connection(inputs["connection"])
    if registration.type == COPY_TYPE:
        # A FileArchive of a directory: its path as the program gave it, relative to where the program ran.
        source = str((cwd / inputs["source"]["path"]).resolve())
        return CopyStep(registration.name, connection, source, str(inputs["remotePath"]), depends_on=depends_on)
    return CommandStep(
        registration.name,
        connection,
        create=inputs.get("create"),
        update=inputs.get("update"),
        delete=inputs.get("delete"),
        stdin=inputs.get("stdin"),
        logging=inputs.get("logging", "stdoutAndStderr"),
        triggers=tuple(json.dumps(trigger, sort_keys=True) for trigger in inputs.get("triggers") or ()),
        secret_inputs=frozenset(path.split(".")[0].split("[")[0] for path in registration.secret_inputs),
        depends_on=depends_on,
    )


def _ancestors_among(registration: Registration, wanted: set[str], by_urn: Mapping[str, Registration]) -> set[str]:
    """The `wanted` resources `registration` waits for, directly or through resources outside `wanted`."""
    found: set[str] = set()
    stack = list(registration.depends_on)
    seen: set[str] = set()
    while stack:
        urn = stack.pop()
        if urn in seen:
            continue
        seen.add(urn)
        if urn in wanted:
            found.add(urn)
        elif urn in by_urn:
            stack.extend(by_urn[urn].depends_on)
    return found


def plan(monitor: RecordingMonitor, cwd: Path) -> StackPlan:
    """The VMs, steps and records of a recorded graph. Steps come in waves, as an engine that runs whatever
    is ready would start them: every step whose dependencies are done before any step that waits for one
    (so each VM's credentials arrive while the others still boot)."""
    by_urn = registrations_by_urn(monitor)
    vms = tuple(
        PlannedVm(r.name, str(secret_value(r.inputs).get("name") or secret_value(r.inputs)["label"]), vm_user_data(r))
        for r in monitor.registrations
        if r.type in VM_TYPES
    )
    step_registrations = [r for r in monitor.registrations if r.type in (COMMAND_TYPE, COPY_TYPE)]
    step_urns = {r.urn for r in step_registrations}
    waits = {r.urn: _ancestors_among(r, step_urns, by_urn) for r in step_registrations}
    ordered: list[Step] = []
    done: set[str] = set()
    remaining = list(step_registrations)
    while remaining:
        wave = [r for r in remaining if waits[r.urn] <= done]
        if not wave:
            raise ValueError("the recorded steps wait for each other in a cycle")
        for registration in wave:
            depends_on = tuple(sorted(by_urn[urn].name for urn in waits[registration.urn]))
            ordered.append(_step(registration, depends_on, cwd))
        done |= {r.urn for r in wave}
        remaining = [r for r in remaining if r.urn not in done]
    records = tuple(secret_value(r.inputs) for r in monitor.registrations if r.type == RECORD_TYPE)
    return StackPlan(vms, tuple(ordered), records)
