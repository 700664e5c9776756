"""A POP's nginx files as the deploy leaves them, for labs that run nginx on this machine: the rendered
release plus what the deploy adds on the host (the peer certificates' keys, the hub's origin servers file
written by the real plexcdn-origin-resolve)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from labs import PROJECT_ROOT
from labs.lab_ca import LabCA
from labs.netns import Lab
from plexcdn import origin_resolver, render, topology
from plexcdn.config import StackConfig

RESOLVER_PROGRAM = PROJECT_ROOT / "plexcdn" / "origin_resolver.py"


def client_cas(config: StackConfig, directory: Path, existing: Mapping[str, LabCA] | None = None) -> dict[str, LabCA]:
    """A client CA for each POP that shows a client certificate upstream, as the stack keeps one per POP
    (those in `existing` are kept)."""
    authorities = dict(existing or {})
    for pop in render.client_certificate_pops(config):
        if pop not in authorities:
            authorities[pop] = LabCA.create(directory / pop, f"lab {pop} client", intermediate=False)
    return authorities


def peer_certificates(
    config: StackConfig,
    pop: str,
    peer_ca: LabCA,
    conf_dir: Path,
    work_dir: Path,
    *,
    client_authorities: Mapping[str, LabCA] | None = None,
) -> render.PeerCertificates:
    """The POP's certificates: a client certificate for an upstream POP from the POP's own client CA in
    `client_authorities` (without them, from `peer_ca`), and for the peer port, where downstream POPs
    connect, a server certificate from `peer_ca` and the downstream POPs' client CAs; keys beside nginx.conf."""
    place = topology.place(config, pop)
    client_pem = render.PLACEHOLDER_PEER_CLIENT_CERT
    server_pem = render.PLACEHOLDER_PEER_SERVER_CERT
    client_cas_pem = render.PLACEHOLDER_PEER_CLIENT_CAS
    issuers = client_authorities or {}
    if place.role == "edge":
        client = issuers.get(pop, peer_ca).issue_client(
            config.pop_name(pop), work_dir / "peer-client.crt", conf_dir / render.PEER_CLIENT_KEY_FILE
        )
        client_pem = client.cert_path.read_text()
    if place.downstream:
        server = peer_ca.issue_server(
            config.pop_name(pop),
            work_dir / "peer-server.crt",
            conf_dir / render.PEER_SERVER_KEY_FILE,
            also=[config.peer_name],
        )
        server_pem = server.cert_path.read_text()
        roots = {issuers.get(downstream, peer_ca).root_path for downstream in place.downstream}
        client_cas_pem = "".join(path.read_text() for path in sorted(roots))
    return render.PeerCertificates(
        ca_pem=peer_ca.root_path.read_text(),
        client_cert_pem=client_pem,
        server_cert_pem=server_pem,
        client_cas_pem=client_cas_pem,
    )


def resolve_origin(lab: Lab | None, role: str, config: StackConfig, pop: str, conf_dir: Path) -> None:
    """Write the hub's origin servers file as the deploy does: the real plexcdn-origin-resolve, inside the
    POP's namespace (whose /etc/hosts answers the origin's name), or, without a namespace, as the file the
    hub holds before the name first resolves."""
    resolved = render.origin_resolved_port(config, pop)
    if resolved is None:
        return
    host, port = resolved
    servers_file = conf_dir / render.ORIGIN_SERVERS_FILE
    if lab is None:
        servers_file.write_text(origin_resolver.servers_conf(host, port, []))
        return
    argv = [sys.executable, str(RESOLVER_PROGRAM), "--host", host, "--port", str(port)]
    lab.run(role, [*argv, "--servers-file", str(servers_file)])
