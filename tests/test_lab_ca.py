"""The lab CA: certbot's layout and modes, and leaves that verify (openssl, a real TLS handshake) only
against their own root."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import stat
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from labs.lab_ca import (
    CERTBOT_FILES,
    CERTBOT_LINEAGE_DIR_MODE,
    CERTBOT_TOP_DIR_MODE,
    PRIVATE_KEY_MODE,
    PUBLIC_FILE_MODE,
    IssuedCertificate,
    LabCA,
)

NAMES = ["plex.example.com", "plex-us.example.com"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[LabCA, LabCA]:
    directory = tmp_path_factory.mktemp("ca")
    return LabCA.create(directory, "Lab Main"), LabCA.create(directory, "Lab Other")


@pytest.fixture(scope="module")
def issued(cas: tuple[LabCA, LabCA], tmp_path_factory: pytest.TempPathFactory) -> tuple[IssuedCertificate, Path]:
    letsencrypt = tmp_path_factory.mktemp("etc") / "letsencrypt"
    return cas[0].issue(NAMES, letsencrypt, "plex-us"), letsencrypt


def test_ca_files_and_modes(cas: tuple[LabCA, LabCA]) -> None:
    main, other = cas
    directory = main.directory
    assert _mode(directory / "lab-main-root.key") == PRIVATE_KEY_MODE == 0o600
    assert _mode(directory / "lab-main-intermediate.key") == 0o600
    assert _mode(directory / "lab-main-root.pem") == PUBLIC_FILE_MODE == 0o644
    assert _mode(main.bundle_path) == 0o644
    bundle = x509.load_pem_x509_certificates(main.bundle_path.read_bytes())
    assert bundle == [main.root]
    assert main.root.subject != other.root.subject
    assert main.intermediate is not None
    assert main.intermediate.issuer == main.root.subject
    constraints = main.intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0


def test_load_gives_back_the_same_ca(cas: tuple[LabCA, LabCA], tmp_path: Path) -> None:
    loaded = LabCA.load(cas[0].directory, "Lab Main")
    assert loaded.root == cas[0].root
    assert loaded.intermediate == cas[0].intermediate
    issued = loaded.issue(["again.example.com"], tmp_path / "le")
    assert _openssl_verify(cas[0].bundle_path, issued.chain, issued.cert).returncode == 0


def test_certbot_layout_and_modes(issued: tuple[IssuedCertificate, Path]) -> None:
    certificate, letsencrypt = issued
    assert _mode(letsencrypt / "live") == CERTBOT_TOP_DIR_MODE == 0o700
    assert _mode(letsencrypt / "archive") == 0o700
    assert _mode(letsencrypt / "live" / "plex-us") == CERTBOT_LINEAGE_DIR_MODE == 0o755
    assert _mode(letsencrypt / "archive" / "plex-us") == 0o755
    assert certificate.live_dir == letsencrypt / "live" / "plex-us"
    for kind in CERTBOT_FILES:
        link = certificate.live_dir / f"{kind}.pem"
        assert link.is_symlink()
        assert os.readlink(link) == f"../../archive/plex-us/{kind}1.pem"
        assert _mode(link) == (0o600 if kind == "privkey" else 0o644)
    assert certificate.fullchain.read_bytes() == certificate.cert.read_bytes() + certificate.chain.read_bytes()
    assert [c.subject for c in x509.load_pem_x509_certificates(certificate.chain.read_bytes())] == [
        certificate.certificate.issuer
    ]


def test_leaf_has_names_and_server_auth(issued: tuple[IssuedCertificate, Path]) -> None:
    leaf = x509.load_pem_x509_certificate(issued[0].cert.read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == NAMES
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == NAMES[0]


def test_reissue_adds_a_version_and_moves_the_links(cas: tuple[LabCA, LabCA], tmp_path: Path) -> None:
    first = cas[0].issue(["renew.example.com"], tmp_path)
    second = cas[0].issue(["renew.example.com"], tmp_path)
    assert (first.version, second.version) == (1, 2)
    assert first.live_dir == second.live_dir == tmp_path / "live" / "renew.example.com"
    assert os.readlink(second.privkey) == "../../archive/renew.example.com/privkey2.pem"
    assert (second.archive_dir / "cert1.pem").exists()
    assert x509.load_pem_x509_certificate(second.cert.read_bytes()) == second.certificate
    assert second.certificate.serial_number != first.certificate.serial_number


def _openssl_verify(
    trust: Path, untrusted: Path | None, leaf: Path, purpose: str = "sslserver"
) -> subprocess.CompletedProcess[str]:
    argv = ["openssl", "verify", "-purpose", purpose, "-CAfile", str(trust)]
    if untrusted is not None:
        argv += ["-untrusted", str(untrusted)]
    return subprocess.run([*argv, str(leaf)], capture_output=True, text=True, timeout=30, check=False)


def test_openssl_verifies_only_against_its_own_root(
    cas: tuple[LabCA, LabCA], issued: tuple[IssuedCertificate, Path], tmp_path: Path
) -> None:
    main, other = cas
    leaf = issued[0]
    good = _openssl_verify(main.bundle_path, leaf.chain, leaf.cert)
    assert good.returncode == 0, good.stdout + good.stderr
    assert ": OK" in good.stdout
    wrong_root = _openssl_verify(other.bundle_path, leaf.chain, leaf.cert)
    assert wrong_root.returncode != 0
    without_chain = _openssl_verify(main.bundle_path, None, leaf.cert)
    assert without_chain.returncode != 0
    foreign = other.issue(NAMES, tmp_path / "le", "plex-us")
    assert _openssl_verify(main.bundle_path, foreign.chain, foreign.cert).returncode != 0
    assert _openssl_verify(other.bundle_path, foreign.chain, foreign.cert).returncode == 0


@dataclass
class Handshake:
    client_error: BaseException | None
    server_error: BaseException | None
    reply: bytes
    server_saw_peer: dict[str, Any] | None


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> Handshake:
    """One TLS connection on loopback: client sends ping, server answers pong."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    outcome: dict[str, object] = {}

    def serve() -> None:
        try:
            connection, _ = listener.accept()
            connection.settimeout(10)
            with server.wrap_socket(connection, server_side=True) as tls:
                outcome["peer"] = tls.getpeercert()
                if tls.recv(5) == b"ping!":
                    tls.sendall(b"pong!")
        except (OSError, ssl.SSLError) as error:
            outcome["server_error"] = error

    thread = threading.Thread(target=serve)
    thread.start()
    reply = b""
    client_error: BaseException | None = None
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            tls.sendall(b"ping!")
            reply = tls.recv(5)
    except (OSError, ssl.SSLError) as error:
        client_error = error
    finally:
        thread.join(timeout=15)
        listener.close()
    server_error = outcome.get("server_error")
    peer = outcome.get("peer")
    return Handshake(
        client_error,
        server_error if isinstance(server_error, BaseException) else None,
        reply,
        peer if isinstance(peer, dict) else None,
    )


def _server_context(cert_chain: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_chain, key)
    return context


def _client_context(trust: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(trust))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def test_tls_handshake_with_the_leaf(cas: tuple[LabCA, LabCA], issued: tuple[IssuedCertificate, Path]) -> None:
    main, other = cas
    leaf = issued[0]
    result = _handshake(_server_context(leaf.fullchain, leaf.privkey), _client_context(main.bundle_path), NAMES[1])
    assert result.client_error is None and result.server_error is None
    assert result.reply == b"pong!"

    untrusting = _handshake(_server_context(leaf.fullchain, leaf.privkey), _client_context(other.bundle_path), NAMES[0])
    assert isinstance(untrusting.client_error, ssl.SSLCertVerificationError)

    wrong_name = _handshake(
        _server_context(leaf.fullchain, leaf.privkey), _client_context(main.bundle_path), "plex-eu.example.com"
    )
    assert isinstance(wrong_name.client_error, ssl.SSLCertVerificationError)

    # cert.pem alone lacks the intermediate: the mistake fullchain.pem exists to prevent.
    no_chain = _handshake(_server_context(leaf.cert, leaf.privkey), _client_context(main.bundle_path), NAMES[0])
    assert isinstance(no_chain.client_error, ssl.SSLCertVerificationError)


def test_leaf_from_the_other_ca_is_refused(cas: tuple[LabCA, LabCA], tmp_path: Path) -> None:
    main, other = cas
    foreign = other.issue(NAMES, tmp_path / "le")
    result = _handshake(
        _server_context(foreign.fullchain, foreign.privkey), _client_context(main.bundle_path), NAMES[0]
    )
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert result.reply == b""


def test_ip_address_names_and_rsa_keys(cas: tuple[LabCA, LabCA], tmp_path: Path) -> None:
    leaf = cas[0].issue(["origin.lab.test", "127.0.0.1"], tmp_path / "le", "origin", key_type="rsa")
    result = _handshake(_server_context(leaf.fullchain, leaf.privkey), _client_context(cas[0].bundle_path), "127.0.0.1")
    assert result.client_error is None and result.reply == b"pong!"


def test_expired_leaf_is_refused(cas: tuple[LabCA, LabCA], tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    leaf = cas[0].issue(
        NAMES, tmp_path / "le", not_before=now - datetime.timedelta(days=10), not_after=now - datetime.timedelta(days=1)
    )
    result = _handshake(_server_context(leaf.fullchain, leaf.privkey), _client_context(cas[0].bundle_path), NAMES[0])
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert "expired" in str(result.client_error)


def test_client_certificates_from_a_direct_peer_ca(cas: tuple[LabCA, LabCA], tmp_path: Path) -> None:
    main, other = cas
    peer_ca = LabCA.create(tmp_path / "peer", "Peer", intermediate=False)
    assert peer_ca.intermediate is None and peer_ca.chain_pem() == b""
    hub = main.issue(["plex-us.example.com"], tmp_path / "le")
    client = peer_ca.issue_client("plex-eu.example.com", tmp_path / "c" / "client.crt", tmp_path / "c" / "client.key")
    assert _mode(client.key_path) == 0o600
    assert _openssl_verify(peer_ca.bundle_path, None, client.cert_path, purpose="sslclient").returncode == 0
    assert _openssl_verify(peer_ca.bundle_path, None, client.cert_path, purpose="sslserver").returncode != 0

    def hub_context() -> ssl.SSLContext:
        context = _server_context(hub.fullchain, hub.privkey)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(peer_ca.bundle_path))
        return context

    edge = _client_context(main.bundle_path)
    edge.load_cert_chain(client.cert_path, client.key_path)
    accepted = _handshake(hub_context(), edge, "plex-us.example.com")
    assert accepted.client_error is None and accepted.reply == b"pong!"
    assert accepted.server_saw_peer is not None
    assert accepted.server_saw_peer["subject"][:1] == ((("commonName", "plex-eu.example.com"),),)

    stranger = other.issue_client("intruder", tmp_path / "x" / "client.crt", tmp_path / "x" / "client.key")
    intruder = _client_context(main.bundle_path)
    intruder.load_cert_chain(stranger.cert_path, stranger.key_path)
    refused = _handshake(hub_context(), intruder, "plex-us.example.com")
    assert refused.reply == b""
    assert refused.server_error is not None
