"""Keys the stack makes for itself: the SSH deploy key pulumi-command connects with, and the peer CA
that signs each POP's client certificate for POP-to-POP mutual TLS."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from components.outputs import secret

PEER_CA_VALIDITY_HOURS = 10 * 365 * 24


@dataclass(frozen=True)
class StackKeysArgs:
    stack: str


class StackKeys(pulumi.ComponentResource):
    deploy_public_key: pulumi.Output[str]
    deploy_private_key: pulumi.Output[str]
    peer_ca_cert_pem: pulumi.Output[str]
    peer_ca_private_key_pem: pulumi.Output[str]

    def __init__(self, name: str, args: StackKeysArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("plex-cdn:stack_keys:StackKeys", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        deploy_key = tls.PrivateKey(f"{name}-deploy-ssh", algorithm="ED25519", opts=child)
        self.deploy_public_key = deploy_key.public_key_openssh.apply(
            lambda key: f"{key.strip()} plex-cdn-{args.stack}-deploy"
        )
        self.deploy_private_key = secret(deploy_key.private_key_openssh)
        ca_key = tls.PrivateKey(f"{name}-peer-ca-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        ca_cert = tls.SelfSignedCert(
            f"{name}-peer-ca",
            private_key_pem=ca_key.private_key_pem,
            is_ca_certificate=True,
            max_path_length=0,
            validity_period_hours=PEER_CA_VALIDITY_HOURS,
            allowed_uses=["cert_signing", "crl_signing"],
            subject=tls.SelfSignedCertSubjectArgs(
                common_name=f"plex-cdn {args.stack} peer CA", organization="plex-cdn"
            ),
            opts=child,
        )
        self.peer_ca_cert_pem = ca_cert.cert_pem
        self.peer_ca_private_key_pem = secret(ca_key.private_key_pem)
        self.register_outputs({"deploy_public_key": self.deploy_public_key, "peer_ca_cert_pem": self.peer_ca_cert_pem})
