"""Certificate authorities the stack keeps for itself, and the certificates they sign.

The peer CA signs each POP's server certificate for its peer port; the origin CA (with an origin agent)
signs the agent's server certificate. Every POP that shows a client certificate upstream (each edge to its
upstream POP, each hub to the origin agent) has a client CA of its own that signs that one certificate,
and whoever it connects to trusts exactly the client CAs of the POPs allowed to connect: a POP's
credentials are retired by dropping its CA, without touching anyone else's. Private keys are Pulumi
secrets from the moment they exist.

Every certificate names its key (subject key identifier) and every leaf its issuer's (authority key
identifier, which the tls provider copies from the CA's): RFC 5280 verifiers such as the one Python's
`cryptography` and sslyze use refuse a leaf without it, where nginx's OpenSSL does not ask.

Leaves live a year at most (Mozilla's guidelines allow 366 days) and are reissued by the first `pulumi up`
in their last 90 days: pulumi-tls plans a replacement once a certificate is within `early_renewal_hours`
of its end (`ready_for_renewal`), and the new certificate changes the release that carries it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from components.outputs import secret

CA_VALIDITY_HOURS = 10 * 365 * 24
CA_EARLY_RENEWAL_HOURS = 365 * 24
LEAF_VALIDITY_HOURS = 365 * 24
LEAF_EARLY_RENEWAL_HOURS = 90 * 24


@dataclass(frozen=True)
class CertificateAuthority:
    cert_pem: pulumi.Output[str]
    private_key_pem: pulumi.Output[str]


@dataclass(frozen=True)
class IssuedCertificate:
    cert_pem: pulumi.Output[str]
    private_key_pem: pulumi.Output[str]


def create_ca(name: str, common_name: str, parent: pulumi.Resource) -> CertificateAuthority:
    child = pulumi.ResourceOptions(parent=parent)
    key = tls.PrivateKey(f"{name}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
    cert = tls.SelfSignedCert(
        name,
        private_key_pem=key.private_key_pem,
        is_ca_certificate=True,
        # Leaves only: nginx checks these chains one level deep.
        max_path_length=0,
        validity_period_hours=CA_VALIDITY_HOURS,
        early_renewal_hours=CA_EARLY_RENEWAL_HOURS,
        allowed_uses=["cert_signing", "crl_signing"],
        set_subject_key_id=True,
        set_authority_key_id=True,
        subject=tls.SelfSignedCertSubjectArgs(common_name=common_name, organization="plex-cdn"),
        opts=child,
    )
    return CertificateAuthority(cert.cert_pem, secret(key.private_key_pem))


def issue(
    name: str,
    authority: CertificateAuthority,
    common_name: str,
    *,
    server_names: Sequence[str] = (),
    parent: pulumi.Resource,
) -> IssuedCertificate:
    """A leaf from `authority`: a server certificate for `server_names`, or a client certificate without them."""
    child = pulumi.ResourceOptions(parent=parent)
    key = tls.PrivateKey(f"{name}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
    request = tls.CertRequest(
        f"{name}-csr",
        private_key_pem=key.private_key_pem,
        dns_names=list(server_names) or None,
        subject=tls.CertRequestSubjectArgs(common_name=common_name, organization="plex-cdn"),
        opts=child,
    )
    usage = "server_auth" if server_names else "client_auth"
    cert = tls.LocallySignedCert(
        f"{name}-cert",
        cert_request_pem=request.cert_request_pem,
        ca_cert_pem=authority.cert_pem,
        ca_private_key_pem=authority.private_key_pem,
        validity_period_hours=LEAF_VALIDITY_HOURS,
        early_renewal_hours=LEAF_EARLY_RENEWAL_HOURS,
        allowed_uses=["digital_signature", "key_encipherment", usage],
        set_subject_key_id=True,
        opts=child,
    )
    return IssuedCertificate(cert.cert_pem, secret(key.private_key_pem))
