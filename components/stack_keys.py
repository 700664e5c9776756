"""Keys the stack makes for itself: the SSH deploy key pulumi-command connects with (and its copy in the
DigitalOcean account, when the stack has Droplets), the peer CA that signs the POPs' peer port certificates,
a client CA for each POP that shows a client certificate upstream, and, with an origin agent, the origin CA
and the agent's certificate."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_digitalocean as digitalocean
import pulumi_tls as tls

from components.outputs import secret
from components.pki import CertificateAuthority, IssuedCertificate, create_ca, issue


@dataclass(frozen=True)
class StackKeysArgs:
    stack: str
    client_ca_pops: tuple[str, ...] = ()  # POPs that show a client certificate upstream: one CA each
    origin_agent_name: str | None = None  # the name the agent's certificate carries, when there is an agent
    digitalocean: bool = False  # the stack makes Droplets: DigitalOcean needs the deploy key in the account


class StackKeys(pulumi.ComponentResource):
    deploy_public_key: pulumi.Output[str]
    deploy_private_key: pulumi.Output[str]
    digitalocean_ssh_key_fingerprint: pulumi.Output[str] | None
    peer_ca: CertificateAuthority
    client_cas: dict[str, CertificateAuthority]
    origin_ca: CertificateAuthority | None
    agent_certificate: IssuedCertificate | None

    def __init__(self, name: str, args: StackKeysArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("plex-cdn:stack_keys:StackKeys", name, None, opts)
        deploy_key = tls.PrivateKey(f"{name}-deploy-ssh", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=self))
        self.deploy_public_key = deploy_key.public_key_openssh.apply(
            lambda key: f"{key.strip()} plex-cdn-{args.stack}-deploy"
        )
        self.deploy_private_key = secret(deploy_key.private_key_openssh)
        self.digitalocean_ssh_key_fingerprint = None
        if args.digitalocean:
            # Account-wide, and a key already in the account cannot be added twice: one per stack, named after it.
            account_key = digitalocean.SshKey(
                f"{name}-digitalocean-ssh",
                name=f"plex-cdn-{args.stack}-deploy",
                public_key=self.deploy_public_key,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.digitalocean_ssh_key_fingerprint = account_key.fingerprint
        self.peer_ca = create_ca(f"{name}-peer-ca", f"plex-cdn {args.stack} peer CA", self)
        self.client_cas = {
            pop: create_ca(f"{name}-{pop}-client-ca", f"plex-cdn {args.stack} {pop} client CA", self)
            for pop in args.client_ca_pops
        }
        self.origin_ca = None
        self.agent_certificate = None
        if args.origin_agent_name is not None:
            self.origin_ca = create_ca(f"{name}-origin-ca", f"plex-cdn {args.stack} origin CA", self)
            self.agent_certificate = issue(
                f"{name}-agent",
                self.origin_ca,
                args.origin_agent_name,
                server_names=[args.origin_agent_name],
                parent=self,
            )
        self.register_outputs(
            {
                "deploy_public_key": self.deploy_public_key,
                "digitalocean_ssh_key_fingerprint": self.digitalocean_ssh_key_fingerprint,
                "peer_ca_cert_pem": self.peer_ca.cert_pem,
                "client_ca_cert_pems": {pop: ca.cert_pem for pop, ca in self.client_cas.items()},
                "origin_ca_cert_pem": self.origin_ca.cert_pem if self.origin_ca else None,
            }
        )
