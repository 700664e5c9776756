"""A POP's nginx files as the deploy leaves them, for labs that run nginx on this machine: the rendered
release plus what the deploy adds on the host (the peer certificates' keys, the hub's origin servers file
written by the real plexcdn-origin-resolve)."""

from __future__ import annotations

import sys
from pathlib import Path

from labs import PROJECT_ROOT
from labs.lab_ca import LabCA
from labs.netns import Lab
from plexcdn import origin_resolver, render, topology
from plexcdn.config import StackConfig

RESOLVER_PROGRAM = PROJECT_ROOT / "plexcdn" / "origin_resolver.py"


def peer_certificates(
    config: StackConfig, pop: str, peer_ca: LabCA, conf_dir: Path, work_dir: Path
) -> render.PeerCertificates:
    """The POP's certificates from the lab's peer CA: a client certificate for an upstream POP, and a server
    certificate for the peer port where downstream POPs connect; the keys written beside nginx.conf."""
    place = topology.place(config, pop)
    client_pem = render.PLACEHOLDER_PEER_CLIENT_CERT
    server_pem = render.PLACEHOLDER_PEER_SERVER_CERT
    if place.role == "edge":
        client = peer_ca.issue_client(
            config.pop_name(pop), work_dir / "peer-client.crt", conf_dir / render.PEER_CLIENT_KEY_FILE
        )
        client_pem = client.cert_path.read_text()
    if place.downstream:
        server = peer_ca.issue_server(
            config.pop_name(pop), work_dir / "peer-server.crt", conf_dir / render.PEER_SERVER_KEY_FILE
        )
        server_pem = server.cert_path.read_text()
    return render.PeerCertificates(
        ca_pem=peer_ca.root_path.read_text(), client_cert_pem=client_pem, server_cert_pem=server_pem
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
