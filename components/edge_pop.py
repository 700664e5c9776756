"""A POP: the VM with its firewall and first boot (nginx, certbot, sysctl), the certbot credentials
delivered over SSH, then its nginx config, delivered and reloaded in place over SSH whenever it changes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pulumi
import pulumi_command as command

from components.outputs import secret
from components.pki import CertificateAuthority, IssuedCertificate, issue
from components.vm import WORLD, FirewallRule, VmPlan, create_vm
from plexcdn import render


@dataclass(frozen=True)
class PopRender:
    """The POP's texts, rendered from the stack's config by the caller. Those that depend on what exists only
    once `pulumi up` made it take those values."""

    # Given the addresses of the POPs it relays to (none at a hub), by POP name, and the certificates' public halves.
    release: Callable[[Mapping[str, str], render.PeerCertificates], render.PopRelease]
    deploy_script: Callable[[render.PopRelease], str]
    install_credentials_script: Callable[[str], str]  # given certbot's access key id
    wait_for_first_boot_script: str


@dataclass(frozen=True)
class EdgePopArgs:
    pop: str  # its name in the stack file
    host_name: str  # its public name: what its certificates are issued for
    peer_name: str  # on every peer-port certificate besides its own name: what an edge with a fallback checks
    role: Literal["hub", "edge"]
    vm: VmPlan
    hub_wireguard_port: int | None  # a hub's tunnel to the Plex server; None without one
    downstream: tuple[str, ...]  # the POPs that connect to its peer port
    upstream_client_cert_file: str  # the certificate it shows upstream; "" where the upstream asks for none
    upstream_client_key_file: str
    secret_files: tuple[str, ...]  # the private keys its deploy reads from stdin
    texts: PopRender
    certbot_access_key_id: pulumi.Output[str]
    certbot_secret_access_key: pulumi.Output[str]
    peer_ca: CertificateAuthority  # signs the peer port's certificate, and is what the upstream POP's must come from
    client_ca: CertificateAuthority | None  # this POP's own, for its client certificate upstream (None: it shows none)
    downstream_client_ca_pems: tuple[pulumi.Output[str], ...]  # the client CAs of the POPs that connect to this one
    origin_ca: CertificateAuthority | None  # with an origin agent: what a hub verifies the agent by
    # The IPv4 of each POP it relays to (its upstream, and its fallback if it has one) by POP name; none for a hub
    upstream_addresses: tuple[tuple[str, pulumi.Output[str]], ...]
    release_dir: Path  # where the nginx release is written for CopyToRemote, relative to the project


def open_ports(args: EdgePopArgs) -> list[FirewallRule]:
    """Besides SSH from the admin's network and admin.deployFrom: web ports open; the peer port only where POPs
    connect."""
    rules = [
        FirewallRule("tcp", 80, list(WORLD), "http"),
        FirewallRule("tcp", 443, list(WORLD), "https"),
    ]
    if args.downstream:
        # Open to all because peers prove themselves with client certificates, not addresses.
        rules.append(FirewallRule("tcp", render.PEER_PORT, list(WORLD), "peer-pops"))
    if args.hub_wireguard_port is not None:
        rules.append(FirewallRule("udp", args.hub_wireguard_port, list(WORLD), "wireguard"))
    return rules


class EdgePop(pulumi.ComponentResource):
    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str]
    vm_id: pulumi.Output[str]
    connection: command.remote.ConnectionArgs
    host_key: pulumi.Output[str]  # public: `status` pins it when it reads the POP over SSH
    ready: pulumi.Resource  # the deploy command: the POP serves its config once it has run

    def __init__(self, name: str, args: EdgePopArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if (args.role == "edge") != bool(args.upstream_addresses):
            raise ValueError(f"POP {args.pop}: upstream addresses are needed exactly when its upstream is a POP")
        super().__init__("plex-cdn:edge_pop:EdgePop", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        texts = args.texts

        vm = create_vm(name, args.vm, open_ports(args), parent=self)
        self.ipv4, self.ipv6, self.vm_id, self.connection = vm.ipv4, vm.ipv6, vm.id, vm.connection
        self.host_key = vm.host_key

        # The one client certificate this POP shows upstream (to its upstream POP, or to the origin agent), and
        # the certificate it shows downstream POPs on the peer port.
        client_cert_file = args.upstream_client_cert_file
        if bool(client_cert_file) != (args.client_ca is not None):
            raise ValueError(f"POP {args.pop}: a client CA is needed exactly when its upstream asks for a certificate")
        if len(args.downstream_client_ca_pems) != len(args.downstream):
            raise ValueError(f"POP {args.pop}: one client CA is needed per downstream POP {list(args.downstream)}")
        if client_cert_file == render.ORIGIN_CLIENT_CERT_FILE and args.origin_ca is None:
            raise ValueError(f"POP {args.pop}: the origin agent needs the stack's origin CA")
        keys: dict[str, pulumi.Output[str]] = {}
        client: IssuedCertificate | None = None
        if args.client_ca is not None:
            role = "peer-client" if client_cert_file == render.PEER_CLIENT_CERT_FILE else "origin-client"
            client = issue(f"{name}-{role}", args.client_ca, args.host_name, parent=self)
            keys[args.upstream_client_key_file] = client.private_key_pem
        server: IssuedCertificate | None = None
        if args.downstream:
            server = issue(
                f"{name}-peer-server",
                args.peer_ca,
                args.host_name,
                server_names=[args.host_name, args.peer_name],
                parent=self,
            )
            keys[render.PEER_SERVER_KEY_FILE] = server.private_key_pem
        if tuple(sorted(keys)) != tuple(sorted(args.secret_files)):
            raise ValueError(f"POP {args.pop}: its keys {sorted(keys)} are not the ones its deploy reads")
        empty = pulumi.Output.from_input("")
        origin_ca_pem = args.origin_ca.cert_pem if args.origin_ca else empty

        relays_to = [pop for pop, _ in args.upstream_addresses]

        def write(values: list[str]) -> tuple[str, str]:
            peer_ca_pem, agent_ca_pem, client_cert_pem, server_cert_pem, *rest = values
            addresses = dict(zip(relays_to, rest[: len(relays_to)], strict=True))
            downstream_cas = rest[len(relays_to) :]
            certificates = render.PeerCertificates(
                ca_pem=peer_ca_pem,
                client_cert_pem=client_cert_pem or render.PLACEHOLDER_PEER_CLIENT_CERT,
                server_cert_pem=server_cert_pem or render.PLACEHOLDER_PEER_SERVER_CERT,
                origin_ca_pem=agent_ca_pem or render.PLACEHOLDER_ORIGIN_CA,
                origin_client_cert_pem=client_cert_pem or render.PLACEHOLDER_ORIGIN_CLIENT_CERT,
                client_cas_pem="".join(downstream_cas) or render.PLACEHOLDER_PEER_CLIENT_CAS,
            )
            release = texts.release(addresses, certificates)
            release_dir = render.write_release(release, args.release_dir)
            return os.path.relpath(release_dir), texts.deploy_script(release)

        release = pulumi.Output.all(
            args.peer_ca.cert_pem,
            origin_ca_pem,
            client.cert_pem if client else empty,
            server.cert_pem if server else empty,
            *(address for _, address in args.upstream_addresses),
            *args.downstream_client_ca_pems,
        ).apply(write)

        # First boot waits for these before it asks for the certificate; a rotated key changes the command.
        credentials = command.remote.Command(
            f"{name}-certbot-credentials",
            connection=self.connection,
            create=args.certbot_access_key_id.apply(texts.install_credentials_script),
            stdin=secret(
                pulumi.Output.all(args.certbot_access_key_id, args.certbot_secret_access_key).apply(
                    lambda pair: render.credentials_file(pair[0], pair[1])
                )
            ),
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=child,
        )
        boot_wait = command.remote.Command(
            f"{name}-boot-wait",
            connection=self.connection,
            create=texts.wait_for_first_boot_script,
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[credentials]),
        )
        copy = command.remote.CopyToRemote(
            f"{name}-nginx-release",
            connection=self.connection,
            source=release.apply(lambda pair: pulumi.FileArchive(pair[0])),
            remote_path=render.NGINX_RELEASES_DIR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[boot_wait]),
        )
        self.ready = command.remote.Command(
            f"{name}-nginx-deploy",
            connection=self.connection,
            create=release.apply(lambda pair: pair[1]),
            stdin=secret(pulumi.Output.all(**keys).apply(json.dumps)) if keys else None,
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[copy]),
        )
        self.register_outputs(
            {
                "ipv4": self.ipv4,
                "ipv6": self.ipv6,
                "vm_id": self.vm_id,
                "host_key": self.host_key,
                "role": args.role,
                "name": args.host_name,
            }
        )
