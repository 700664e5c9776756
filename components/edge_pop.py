"""A POP: the VM with its firewall and first boot (nginx, certbot, sysctl), the certbot credentials
delivered over SSH, then its nginx config, delivered and reloaded in place over SSH whenever it changes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_command as command

from components.outputs import secret
from components.pki import CertificateAuthority, IssuedCertificate, issue
from components.vm import WORLD, FirewallRule, VmAccess, VmSpec, create_vm
from plexcdn import render, topology
from plexcdn.config import StackConfig


@dataclass(frozen=True)
class EdgePopArgs:
    config: StackConfig
    pop: str
    access: VmAccess
    certbot_access_key_id: pulumi.Output[str]
    certbot_secret_access_key: pulumi.Output[str]
    peer_ca: CertificateAuthority  # signs the peer port's certificate, and is what the upstream POP's must come from
    client_ca: CertificateAuthority | None  # this POP's own, for its client certificate upstream (None: it shows none)
    downstream_client_ca_pems: tuple[pulumi.Output[str], ...]  # the client CAs of the POPs that connect to this one
    origin_ca: CertificateAuthority | None  # with an origin agent: what a hub verifies the agent by
    upstream_address: pulumi.Output[str] | None  # the upstream POP's IPv4; None for a hub
    build_dir: Path  # where the nginx release is written for CopyToRemote, relative to the project


def firewall_rules(config: StackConfig, pop: str) -> list[FirewallRule]:
    """SSH from the admin's network and admin.deployFrom only; web ports open; the peer port only where POPs connect."""
    place = topology.place(config, pop)
    rules = [
        FirewallRule("tcp", 22, list(config.admin.ssh_sources), "ssh-admin"),
        FirewallRule("tcp", 80, list(WORLD), "http"),
        FirewallRule("tcp", 443, list(WORLD), "https"),
    ]
    if place.downstream:
        # Open to all because peers prove themselves with client certificates, not addresses.
        rules.append(FirewallRule("tcp", render.PEER_PORT, list(WORLD), "peer-pops"))
    if place.role == "hub" and config.origin.link == "wireguard":
        rules.append(FirewallRule("udp", config.origin.wireguard_port, list(WORLD), "wireguard"))
    return rules


class EdgePop(pulumi.ComponentResource):
    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str]
    vm_id: pulumi.Output[str]
    connection: command.remote.ConnectionArgs
    host_key: pulumi.Output[str]  # public: `status` pins it when it reads the POP over SSH
    ready: pulumi.Resource  # the deploy command: the POP serves its config once it has run

    def __init__(self, name: str, args: EdgePopArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        config = args.config
        place = topology.place(config, args.pop)
        if (place.role == "edge") != (args.upstream_address is not None):
            raise ValueError(f"POP {args.pop}: an upstream address is needed exactly when its upstream is a POP")
        super().__init__("plex-cdn:edge_pop:EdgePop", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        vm = create_vm(
            VmSpec(
                name=name,
                label=f"plex-cdn-{config.stack}-{args.pop}",
                provider=place.pop.provider,
                region=place.pop.region,
                size=place.pop.size,
                user_data=lambda identity: render.cloud_init(config, args.pop, identity),
                firewall_rules=firewall_rules(config, args.pop),
                tags=["plex-cdn", f"plex-cdn-{config.stack}", f"plex-cdn-{place.role}"],
            ),
            args.access,
            parent=self,
        )
        self.ipv4, self.ipv6, self.vm_id, self.connection = vm.ipv4, vm.ipv6, vm.id, vm.connection
        self.host_key = vm.host_key

        # The one client certificate this POP shows upstream (to its upstream POP, or to the origin agent), and
        # the certificate it shows downstream POPs on the peer port.
        upstream = render.upstream_of(config, args.pop, render.placeholder_addresses(config))
        if bool(upstream.client_cert_file) != (args.client_ca is not None):
            raise ValueError(f"POP {args.pop}: a client CA is needed exactly when its upstream asks for a certificate")
        if len(args.downstream_client_ca_pems) != len(place.downstream):
            raise ValueError(f"POP {args.pop}: one client CA is needed per downstream POP {list(place.downstream)}")
        if upstream.client_cert_file == render.ORIGIN_CLIENT_CERT_FILE and args.origin_ca is None:
            raise ValueError(f"POP {args.pop}: the origin agent needs the stack's origin CA")
        keys: dict[str, pulumi.Output[str]] = {}
        client: IssuedCertificate | None = None
        if args.client_ca is not None:
            role = "peer-client" if upstream.client_cert_file == render.PEER_CLIENT_CERT_FILE else "origin-client"
            client = issue(f"{name}-{role}", args.client_ca, config.pop_name(args.pop), parent=self)
            keys[upstream.client_key_file] = client.private_key_pem
        server: IssuedCertificate | None = None
        if place.downstream:
            server = issue(
                f"{name}-peer-server",
                args.peer_ca,
                config.pop_name(args.pop),
                server_names=[config.pop_name(args.pop)],
                parent=self,
            )
            keys[render.PEER_SERVER_KEY_FILE] = server.private_key_pem
        if tuple(sorted(keys)) != tuple(sorted(render.secret_files(config, args.pop))):
            raise ValueError(f"POP {args.pop}: its keys {sorted(keys)} are not the ones its deploy reads")
        empty = pulumi.Output.from_input("")
        origin_ca_pem = args.origin_ca.cert_pem if args.origin_ca else empty

        def write(values: list[str]) -> tuple[str, str]:
            address, peer_ca_pem, agent_ca_pem, client_cert_pem, server_cert_pem, *downstream_cas = values
            addresses = {place.pop.upstream: address} if address else None
            certificates = render.PeerCertificates(
                ca_pem=peer_ca_pem,
                client_cert_pem=client_cert_pem or render.PLACEHOLDER_PEER_CLIENT_CERT,
                server_cert_pem=server_cert_pem or render.PLACEHOLDER_PEER_SERVER_CERT,
                origin_ca_pem=agent_ca_pem or render.PLACEHOLDER_ORIGIN_CA,
                origin_client_cert_pem=client_cert_pem or render.PLACEHOLDER_ORIGIN_CLIENT_CERT,
                client_cas_pem="".join(downstream_cas) or render.PLACEHOLDER_PEER_CLIENT_CAS,
            )
            release = render.pop_release(config, args.pop, addresses=addresses, peer=certificates)
            release_dir = render.write_release(release, args.build_dir / args.pop)
            return os.path.relpath(release_dir), render.deploy_nginx_script(config, args.pop, release)

        release = pulumi.Output.all(
            args.upstream_address or empty,
            args.peer_ca.cert_pem,
            origin_ca_pem,
            client.cert_pem if client else empty,
            server.cert_pem if server else empty,
            *args.downstream_client_ca_pems,
        ).apply(write)

        # First boot waits for these before it asks for the certificate; a rotated key changes the command.
        credentials = command.remote.Command(
            f"{name}-certbot-credentials",
            connection=self.connection,
            create=args.certbot_access_key_id.apply(
                lambda key_id: render.install_credentials_script(config, args.pop, key_id)
            ),
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
            create=render.wait_for_first_boot_script(config, args.pop),
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
                "role": place.role,
                "name": config.pop_name(args.pop),
            }
        )
