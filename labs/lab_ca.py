"""A certificate authority for the labs, writing certificates where and how certbot writes them.

A `LabCA` is a root (and by default an intermediate that signs the leaves, as Let's Encrypt does, so
`chain.pem` is not empty and a server that forgets the chain fails verification). A second
`LabCA.create(...)` gives an unrelated CA for negative tests; `intermediate=False` gives a CA that signs
directly, like the stack's peer CA that nginx checks with `ssl_verify_depth 1`.

Files of a CA named N in its directory (N made file-safe):
    N-root.pem          root certificate                                   0644
    N-root.key          root key                                           0600
    N-intermediate.pem  intermediate certificate (if any)                  0644
    N-intermediate.key  intermediate key (if any)                          0600
    N-bundle.pem        the root alone: what a client trusts (`bundle_path`) 0644

`issue(names, letsencrypt_dir, cert_name)` writes certbot's layout and modes (certbot 2.x, storage.py):
    <dir>/live/, <dir>/archive/                        0700
    <dir>/live/<cert-name>/, <dir>/archive/<cert-name>/ 0755
    <dir>/archive/<cert-name>/{cert,chain,fullchain}N.pem 0644, privkeyN.pem 0600
    <dir>/live/<cert-name>/{cert,chain,fullchain,privkey}.pem: relative symlinks to the newest N
Issuing again for the same cert-name adds version N+1 and moves the symlinks, as a renewal does.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PRIVATE_KEY_MODE: Final = 0o600
PUBLIC_FILE_MODE: Final = 0o644
CERTBOT_TOP_DIR_MODE: Final = 0o700  # live/ and archive/
CERTBOT_LINEAGE_DIR_MODE: Final = 0o755  # live/<name>/ and archive/<name>/
CERTBOT_FILES: Final = ("cert", "chain", "fullchain", "privkey")

CA_VALID_DAYS: Final = 3650
LEAF_VALID_DAYS: Final = 90
# Certificates start an hour early so a namespace whose clock reads slightly behind still accepts them.
BACKDATE: Final = datetime.timedelta(hours=1)

KeyType = Literal["ecdsa", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def new_key(key_type: KeyType = "ecdsa") -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write with the final mode from the first byte on (a key is never briefly world-readable)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.fchmod(fd, mode)  # the umask may have taken bits away
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    temporary.replace(path)


def _mkdir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"CA name {name!r} has no letters or digits")
    return slug


def _subject(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _ca_certificate(
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: PrivateKey,
    *,
    path_length: int | None,
    valid_days: int,
) -> x509.Certificate:
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf in certbot's layout. The four paths are the live/ symlinks nginx is pointed at."""

    names: tuple[str, ...]
    version: int
    live_dir: Path
    archive_dir: Path
    certificate: x509.Certificate

    @property
    def cert(self) -> Path:
        return self.live_dir / "cert.pem"

    @property
    def chain(self) -> Path:
        return self.live_dir / "chain.pem"

    @property
    def fullchain(self) -> Path:
        return self.live_dir / "fullchain.pem"

    @property
    def privkey(self) -> Path:
        return self.live_dir / "privkey.pem"


@dataclass(frozen=True)
class ClientCertificate:
    """A client certificate and key as two files, like the POPs' peer client certificate."""

    certificate: x509.Certificate
    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class LabCA:
    name: str
    directory: Path
    root: x509.Certificate
    root_key: PrivateKey
    intermediate: x509.Certificate | None
    intermediate_key: PrivateKey | None

    @classmethod
    def create(
        cls,
        directory: Path,
        name: str,
        *,
        intermediate: bool = True,
        key_type: KeyType = "ecdsa",
        valid_days: int = CA_VALID_DAYS,
    ) -> LabCA:
        """Make a new root (and intermediate) named `name` and write its files into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        root_key = new_key(key_type)
        root = _ca_certificate(
            _subject(f"{name} Root", "plex-cdn lab"), root_key, None, root_key, path_length=None, valid_days=valid_days
        )
        issuing_cert: x509.Certificate | None = None
        issuing_key: PrivateKey | None = None
        if intermediate:
            issuing_key = new_key(key_type)
            issuing_cert = _ca_certificate(
                _subject(f"{name} Intermediate", "plex-cdn lab"),
                issuing_key,
                root,
                root_key,
                path_length=0,
                valid_days=valid_days,
            )
        ca = cls(name, directory, root, root_key, issuing_cert, issuing_key)
        ca._write_files()
        return ca

    @classmethod
    def load(cls, directory: Path, name: str) -> LabCA:
        """A CA that `create` wrote earlier."""
        slug = _slug(name)
        root = x509.load_pem_x509_certificate((directory / f"{slug}-root.pem").read_bytes())
        root_key = serialization.load_pem_private_key((directory / f"{slug}-root.key").read_bytes(), None)
        intermediate_path = directory / f"{slug}-intermediate.pem"
        intermediate = None
        intermediate_key = None
        if intermediate_path.exists():
            intermediate = x509.load_pem_x509_certificate(intermediate_path.read_bytes())
            intermediate_key = serialization.load_pem_private_key(
                (directory / f"{slug}-intermediate.key").read_bytes(), None
            )
        if not isinstance(root_key, PrivateKey) or not isinstance(intermediate_key, PrivateKey | None):
            raise ValueError(f"CA {name} in {directory} has a key type the lab does not make")
        return cls(name, directory, root, root_key, intermediate, intermediate_key)

    def _path(self, suffix: str) -> Path:
        return self.directory / f"{_slug(self.name)}-{suffix}"

    @property
    def root_path(self) -> Path:
        return self._path("root.pem")

    @property
    def intermediate_path(self) -> Path | None:
        return self._path("intermediate.pem") if self.intermediate is not None else None

    @property
    def bundle_path(self) -> Path:
        """The file a client trusts (e.g. nginx's proxy_ssl_trusted_certificate, Python's cafile)."""
        return self._path("bundle.pem")

    @property
    def issuer(self) -> x509.Certificate:
        return self.intermediate if self.intermediate is not None else self.root

    @property
    def issuer_key(self) -> PrivateKey:
        return self.intermediate_key if self.intermediate_key is not None else self.root_key

    def chain_pem(self) -> bytes:
        """What certbot puts in chain.pem: the certificates between a leaf and the root, root excluded."""
        return cert_pem(self.intermediate) if self.intermediate is not None else b""

    def _write_files(self) -> None:
        _write(self.root_path, cert_pem(self.root), PUBLIC_FILE_MODE)
        _write(self._path("root.key"), key_pem(self.root_key), PRIVATE_KEY_MODE)
        if self.intermediate is not None and self.intermediate_key is not None:
            _write(self._path("intermediate.pem"), cert_pem(self.intermediate), PUBLIC_FILE_MODE)
            _write(self._path("intermediate.key"), key_pem(self.intermediate_key), PRIVATE_KEY_MODE)
        _write(self.bundle_path, cert_pem(self.root), PUBLIC_FILE_MODE)

    def write_bundle(self, path: Path, *others: LabCA) -> Path:
        """A trust file holding this root and the roots of `others` (e.g. a system bundle stand-in)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, b"".join(cert_pem(ca.root) for ca in (self, *others)), PUBLIC_FILE_MODE)
        return path

    def leaf(
        self,
        names: Sequence[str],
        key: PrivateKey,
        *,
        server_auth: bool = True,
        client_auth: bool = False,
        common_name: str | None = None,
        organization: str | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> x509.Certificate:
        """A leaf certificate signed by this CA's issuer; `names` are DNS names or IP addresses."""
        if not names and common_name is None:
            raise ValueError("a leaf needs at least one name")
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server_auth else []
        if client_auth:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if not usages:
            raise ValueError("a leaf needs serverAuth, clientAuth or both")
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(common_name or names[0], organization))
            .issuer_name(self.issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - BACKDATE)
            .not_valid_after(not_after or now + datetime.timedelta(days=LEAF_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.issuer_key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        return builder.sign(self.issuer_key, hashes.SHA256())

    def issue(
        self,
        names: Sequence[str],
        letsencrypt_dir: Path,
        cert_name: str | None = None,
        *,
        key_type: KeyType = "ecdsa",
        client_auth: bool = False,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> IssuedCertificate:
        """A serverAuth leaf for `names`, written as certbot writes lineage `cert_name` (default: the
        first name) under `letsencrypt_dir` (the directory certbot calls /etc/letsencrypt)."""
        lineage = cert_name or names[0]
        key = new_key(key_type)
        certificate = self.leaf(names, key, client_auth=client_auth, not_before=not_before, not_after=not_after)
        live_top, archive_top = letsencrypt_dir / "live", letsencrypt_dir / "archive"
        for top in (live_top, archive_top):
            _mkdir(top, CERTBOT_TOP_DIR_MODE)
        live_dir, archive_dir = live_top / lineage, archive_top / lineage
        for lineage_dir in (live_dir, archive_dir):
            _mkdir(lineage_dir, CERTBOT_LINEAGE_DIR_MODE)
        version = 1 + max(
            (int(m.group(1)) for p in archive_dir.iterdir() if (m := re.fullmatch(r"cert(\d+)\.pem", p.name))),
            default=0,
        )
        contents = {
            "cert": cert_pem(certificate),
            "chain": self.chain_pem(),
            "fullchain": cert_pem(certificate) + self.chain_pem(),
            "privkey": key_pem(key),
        }
        for kind in CERTBOT_FILES:
            mode = PRIVATE_KEY_MODE if kind == "privkey" else PUBLIC_FILE_MODE
            _write(archive_dir / f"{kind}{version}.pem", contents[kind], mode)
        for kind in CERTBOT_FILES:
            # Replaced by rename, so a reader never sees a missing link, as with certbot's renewals.
            link = live_dir / f"{kind}.pem"
            temporary = live_dir / f".{kind}.pem.new"
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(Path("..") / ".." / "archive" / lineage / f"{kind}{version}.pem")
            temporary.replace(link)
        return IssuedCertificate(tuple(names), version, live_dir, archive_dir, certificate)

    def issue_client(
        self, common_name: str, cert_path: Path, key_path: Path, *, organization: str = "plex-cdn"
    ) -> ClientCertificate:
        """A clientAuth certificate (no SAN), like a POP's peer client certificate; key written 0600."""
        key = new_key("ecdsa")
        certificate = self.leaf(
            [], key, server_auth=False, client_auth=True, common_name=common_name, organization=organization
        )
        for path in (cert_path, key_path):
            path.parent.mkdir(parents=True, exist_ok=True)
        _write(cert_path, cert_pem(certificate) + self.chain_pem(), PUBLIC_FILE_MODE)
        _write(key_path, key_pem(key), PRIVATE_KEY_MODE)
        return ClientCertificate(certificate, cert_path, key_path)

    def issue_server(
        self, name: str, cert_path: Path, key_path: Path, *, also: Sequence[str] = ()
    ) -> ClientCertificate:
        """A serverAuth certificate for `name` (and the names in `also`) as two files, like a POP's peer port
        certificate; key 0600."""
        key = new_key("ecdsa")
        certificate = self.leaf([name, *also], key, organization="plex-cdn")
        for path in (cert_path, key_path):
            path.parent.mkdir(parents=True, exist_ok=True)
        _write(cert_path, cert_pem(certificate) + self.chain_pem(), PUBLIC_FILE_MODE)
        _write(key_path, key_pem(key), PRIVATE_KEY_MODE)
        return ClientCertificate(certificate, cert_path, key_path)
