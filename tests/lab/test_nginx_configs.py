"""`nginx -t` on every POP's rendered config, exactly as rendered, with certificates made here.

The hub's upstream may be the Plex server's DNS name, which nginx resolves when it loads the config,
so each check runs in a network namespace whose /etc/hosts answers it with a lab address.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from plexcdn import render, topology
from plexcdn.config import StackConfig
from plexcdn.lab.netns import Lab, lab_unavailable_reason
from tests.conftest import config_from, example_values, five_pop_values, wireguard_values

pytestmark = pytest.mark.skipif(lab_unavailable_reason() is not None, reason=str(lab_unavailable_reason()))

ORIGIN_LAB_ADDRESS = "198.18.250.2"


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _certificate(
    subject: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *, ca: bool, usage: object
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)  # type: ignore[list-item]
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256()), key


def _write_pop_tree(config: StackConfig, pop: str, prefix: Path) -> Path:
    """Render the POP into `prefix/etc/nginx` and give it the files a real POP has beside the config."""
    conf_dir = prefix / "etc" / "nginx"
    ca = _certificate("lab peer CA", None, ca=True, usage=None)
    client_cert, client_key = _certificate(config.pop_name(pop), ca, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_pem = ca[0].public_bytes(serialization.Encoding.PEM).decode()
    peer = render.PeerCertificates(ca_pem, client_cert.public_bytes(serialization.Encoding.PEM).decode())
    files = render.nginx_files(config, pop, prefix=str(prefix), peer=peer)
    conf_dir.mkdir(parents=True)
    for name, text in files.items():
        (conf_dir / name).write_text(text)
    if topology.place(config, pop).role == "edge":
        (conf_dir / render.PEER_CLIENT_KEY_FILE).write_text(_pem(client_key))
    live = prefix / "etc" / "letsencrypt" / "live" / config.pop_name(pop)
    live.mkdir(parents=True)
    leaf, leaf_key = _certificate(config.pop_name(pop), ca, ca=False, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    (live / "fullchain.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (live / "privkey.pem").write_text(_pem(leaf_key))
    bundle = prefix / "etc" / "ssl" / "certs" / "ca-certificates.crt"
    bundle.parent.mkdir(parents=True)
    bundle.write_text(ca_pem)
    for directory in ("run", "var/log/nginx", "var/cache/nginx"):
        (prefix / directory).mkdir(parents=True, exist_ok=True)
    return conf_dir / "nginx.conf"


CASES = [
    (label, pop.name)
    for label, values in (("example", example_values), ("five-pop", five_pop_values), ("wireguard", wireguard_values))
    for pop in config_from(values()).pops
]
STACKS = {"example": example_values, "five-pop": five_pop_values, "wireguard": wireguard_values}


@pytest.fixture(scope="module")
def resolver_lab() -> Iterator[Lab]:
    with Lab("pcn-") as lab:
        lab.add_namespace("check", hosts={"home.example.net": ORIGIN_LAB_ADDRESS})
        yield lab


@pytest.mark.parametrize(("stack", "pop"), CASES)
def test_rendered_nginx_config_passes_nginx_t(resolver_lab: Lab, tmp_path: Path, stack: str, pop: str) -> None:
    config = config_from(STACKS[stack]())
    main = _write_pop_tree(config, pop, tmp_path)
    result = resolver_lab.run("check", ["nginx", "-t", "-c", str(main)], check=False)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_t_catches_a_broken_config(resolver_lab: Lab, tmp_path: Path) -> None:
    config = config_from(example_values())
    main = _write_pop_tree(config, "asia", tmp_path)
    (main.parent / "plexcdn-upstream.conf").write_text("upstream plexcdn_upstream { server; }\n")
    result = resolver_lab.run("check", ["nginx", "-t", "-c", str(main)], check=False)
    assert result.returncode != 0
    assert "plexcdn-upstream.conf" in result.stderr


def test_nginx_t_fails_when_the_origin_name_does_not_resolve(tmp_path: Path) -> None:
    config = config_from(example_values())
    main = _write_pop_tree(config, "us", tmp_path)
    with Lab("pcn-") as lab:
        lab.add_namespace("nodns", hosts={})
        result = lab.run("nodns", ["nginx", "-t", "-c", str(main)], check=False)
    assert result.returncode != 0 and "host not found" in result.stderr


def test_placeholder_peer_files_are_rejected_rather_than_deployed(resolver_lab: Lab, tmp_path: Path) -> None:
    config = config_from(example_values())
    main = _write_pop_tree(config, "us", tmp_path)
    (main.parent / render.PEER_CA_FILE).write_text(render.PLACEHOLDER_PEER_CA)
    result = resolver_lab.run("check", ["nginx", "-t", "-c", str(main)], check=False)
    assert result.returncode != 0
