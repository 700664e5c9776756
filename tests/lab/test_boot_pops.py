"""The example stack's POPs as real Debian 13 guests: the program's own user_data, then its own deploy steps.

The guests are the session's (`pops` in tests/lab/conftest.py, shared with
tests/lab/test_boot_pops_lifecycle.py): the example stack's hub and edge, and the hub of a one-POP stack
whose ACME server cannot be reached. The Plex origin's name does not resolve when the hubs deploy; it is
added to the lab DNS afterwards.

Needs root, QEMU and mmdebstrap, and the network for the package cache. Run under the lab lock:
    flock /tmp/plexcdn-lab.lock .venv/bin/python -m pytest tests/lab/test_boot_pops.py -q
"""

from __future__ import annotations

import errno
import hashlib
import random
from pathlib import Path

import pytest
from cryptography import x509

from labs import guest_environment as env
from labs import package_cache, tls_scan
from labs.guests import qemu_missing
from labs.netns import lab_unavailable_reason
from labs.plex_standin import MEDIA_PATH, WEBSOCKET_PATH
from plexcdn import PROJECT_ROOT, render, upstream_watch
from tests.lab.example_stack import Pops, wait_until
from tests.lab.test_relay import assert_mozilla_intermediate


def _reason() -> str | None:
    return lab_unavailable_reason() or qemu_missing()


pytestmark = [pytest.mark.lab, pytest.mark.skipif(_reason() is not None, reason=f"boot lab: {_reason()}")]


def test_every_pop_ends_first_boot_clean_with_nginx_bbr_fq_a_certificate_and_renewal(pops: Pops) -> None:
    assert pops.lab.pebble is not None
    pebble_root = x509.load_pem_x509_certificate(pops.lab.pebble.root_file.read_bytes())
    for pop in ("us", "asia"):
        guest = pops.guest(pop)
        status = guest.cloud_init_status(pops.lab.lab_private_key(), guest.host_key())
        assert status.clean, status.raw
        assert pops.on(pop, "systemctl --failed --no-legend --plain").strip() == "", pop
        assert pops.on(pop, "systemctl is-active nginx").strip() == "active"
        assert pops.on(pop, "sysctl -n net.ipv4.tcp_congestion_control").strip() == "bbr"
        assert "qdisc fq " in pops.on(pop, "tc qdisc show dev eth0"), "fq on the NIC from the first boot"
        assert pops.on(pop, "systemctl is-enabled plexcdn-certbot-renew.timer").strip() == "enabled"
        name = pops.config.pop_name(pop)
        chain = pops.on(pop, f"cat /etc/letsencrypt/live/{name}/fullchain.pem")
        leaf = x509.load_pem_x509_certificate(chain.encode())
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(pops.config.certificate_names(pop))
        blocks = ["-----BEGIN" + block for block in chain.split("-----BEGIN")[1:]]
        issued = [x509.load_pem_x509_certificate(block.encode()) for block in blocks]
        assert issued[-1].issuer == pebble_root.subject, "the chain ends at the lab ACME server's root"
        assert pops.on(pop, "nginx -v 2>&1").startswith("nginx version: nginx/1.26"), "Debian 13's nginx"


def test_the_pops_tls_on_debian_13s_openssl_is_mozilla_intermediate(pops: Pops, tmp_path: Path) -> None:
    """Issue #20, finding 6, with the POPs' own OpenSSL: sslyze from the viewers' network on the edge's viewer
    port, with the certificate the lab's ACME server issued it (90 days, as Let's Encrypt's), and on the hub's
    peer port with the edge's client certificate, as the edge connects: the stack's peer CA, as the tls
    provider makes it, must pass RFC 5280 path validation, not only nginx's."""
    assert pops.lab.pebble is not None
    edge, hub = "asia", "us"
    peer_files = {
        "cert": render.PEER_CLIENT_CERT_FILE,
        "key": render.PEER_CLIENT_KEY_FILE,
        "ca": render.PEER_CA_FILE,
    }
    copied = {}
    for what, name in peer_files.items():
        copied[what] = tmp_path / name
        copied[what].write_text(pops.on(edge, f"cat /etc/nginx/{name}"))
        copied[what].chmod(0o600)
    targets = [
        tls_scan.TlsTarget(pops.guest(edge).address, 443, pops.config.shared_name, pops.lab.pebble.root_file),
        tls_scan.TlsTarget(
            pops.guest(hub).address,
            render.PEER_PORT,
            pops.config.pop_name(hub),
            copied["ca"],
            client_cert=copied["cert"],
            client_key=copied["key"],
        ),
    ]
    for target in targets:
        report = tls_scan.scan(target, wrap=lambda argv: ["ip", "netns", "exec", pops.lab.viewer_namespace, *argv])
        assert_mozilla_intermediate(report)


HOLD_AS_NGINX = """
import socket, sys
held = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
held.settimeout(None)
open(sys.argv[3], "w").write("open")
try:
    held.recv(1)
    outcome = "closed"
except OSError as error:
    outcome = str(error.errno)
open(sys.argv[3], "w").write(outcome)
"""
CONNECT_AS_NGINX = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print("connected")
except OSError as error:
    print(error.errno)
"""


def test_the_upstream_watch_runs_on_debian_13_and_its_kernel_does_what_it_asks(pops: Pops) -> None:
    """plexcdn-upstream-watch as an edge with a fallback runs it, on the edge guest against its hub: Debian 13's
    python3 runs it, its kernel takes the routing rule that shuts nginx's user out of a silent upstream
    (ENETUNREACH at once, while root still reaches it) and aborts an open connection with `ss -K`
    (ECONNABORTED), and a new run removes the rule it left."""
    hub = pops.guest("us").address
    program = "/tmp/plexcdn-upstream-watch"
    pops.on(
        "asia",
        f"install -m 0755 /dev/stdin {program}",
        stdin=(PROJECT_ROOT / "plexcdn" / "upstream_watch.py").read_text(),
    )
    pops.on("asia", "install -m 0644 /dev/stdin /tmp/hold.py", stdin=HOLD_AS_NGINX)
    pops.on("asia", "install -m 0644 /dev/stdin /tmp/connect.py", stdin=CONNECT_AS_NGINX)
    as_nginx = f"runuser -u {render.NGINX_USER} -- python3"
    uid = pops.on("asia", f"id -u {render.NGINX_USER}").strip()
    rule = f"to {hub} uidrange {uid}-{uid} unreachable"

    # An open connection of nginx's user to the hub's peer port, as a kept-alive one: the watch aborts it.
    pops.on(
        "asia", f"rm -f /tmp/held; nohup {as_nginx} /tmp/hold.py {hub} {render.PEER_PORT} /tmp/held >/dev/null 2>&1 &"
    )
    wait_until(
        lambda: pops.on("asia", "cat /tmp/held 2>/dev/null || true").strip() == "open", 30, "the held connection"
    )
    abort = " ".join(upstream_watch.block_commands(hub, render.PEER_PORT, int(uid))[1])
    pops.on("asia", abort)
    wait_until(lambda: pops.on("asia", "cat /tmp/held").strip() == str(errno.ECONNABORTED), 15, "ss -K's abort")

    try:
        # Probes of a closed port miss: after two, nginx's user has no route to the hub; root still has one.
        said = pops.on("asia", f"{program} --upstream {hub} --port 9 --nginx-user {render.NGINX_USER} --rounds 3")
        assert "does not answer" in said, said
        assert rule in pops.on("asia", "ip rule show"), "the watch's rule"
        assert pops.on("asia", f"{as_nginx} /tmp/connect.py {hub} {render.PEER_PORT}").strip() == str(errno.ENETUNREACH)
        assert pops.on("asia", f"python3 /tmp/connect.py {hub} {render.PEER_PORT}").strip() == "connected"

        # A new run (systemd's restart, a deploy) starts clean, and the hub's peer port answers it.
        said = pops.on(
            "asia", f"{program} --upstream {hub} --port {render.PEER_PORT} --nginx-user {render.NGINX_USER} --rounds 2"
        )
        assert "does not answer" not in said, said
        assert rule not in pops.on("asia", "ip rule show")
        assert pops.on("asia", f"{as_nginx} /tmp/connect.py {hub} {render.PEER_PORT}").strip() == "connected"
    finally:
        # The edge's own nginx must reach its hub again for the tests after this one, whatever happened here.
        pops.on("asia", " ".join(upstream_watch.unblock_commands(hub, int(uid))[0]) + " 2>/dev/null || true")


def test_only_root_reaches_the_metadata_address_from_the_first_boot_on(pops: Pops) -> None:
    for pop in ("us", "asia"):
        refused = pops.lab.run(pops.guest(pop), "ip route get 169.254.169.254 uid 1000")
        answer = (refused.stdout + refused.stderr).lower()
        assert refused.returncode != 0 and ("prohibit" in answer or "permission denied" in answer), answer
        assert pops.lab.run(pops.guest(pop), "ip route get 169.254.169.254 uid 0").returncode == 0
        assert "uidrange 1-4294967294" in pops.on(pop, "ip -6 rule show")


def test_the_pops_present_the_host_keys_the_program_pinned(pops: Pops) -> None:
    for step in pops.plan.steps:
        guest = pops.lab.guest_at(step.connection.host)
        assert guest is not None and step.connection.host_key is not None, step.name
        assert guest.host_key().split()[:2] == step.connection.host_key.split()[:2], step.name


def test_the_second_pops_packages_come_from_the_cache(pops: Pops) -> None:
    counts = package_cache.read_stats(pops.lab.cache_port)
    for kind in ("apt", "pypi-file"):
        assert counts[kind].get("hit", 0) > 0, counts


def test_a_hub_whose_origin_did_not_resolve_deployed_and_follows_it_once_it_does(pops: Pops) -> None:
    assert pops.served_before_origin_resolved["status"] == 502
    servers = pops.on("us", f"cat /etc/nginx/{render.ORIGIN_SERVERS_FILE}")
    wait_until(
        lambda: str(env.ORIGIN_ADDRESS) in pops.on("us", f"cat /etc/nginx/{render.ORIGIN_SERVERS_FILE}"),
        timeout=150,
        what="the hub's resolver writes the origin's address",
    )
    assert "server unix:" in servers or str(env.ORIGIN_ADDRESS) in servers
    wait_until(lambda: pops.view("get", "/identity")["status"] == 200, 60, "the chain serves")


def test_a_viewer_reads_media_through_the_edge_and_the_hub_byte_for_byte(pops: Pops) -> None:
    wait_until(lambda: pops.view("get", "/identity")["status"] == 200, 150, "the chain serves")
    media = Path(pops.origin["media_file"])
    whole = pops.view("get", MEDIA_PATH, "--sha256")
    assert whole["status"] == 200 and whole["sha256"] == hashlib.sha256(media.read_bytes()).hexdigest()
    size = media.stat().st_size
    start = random.randrange(0, size - 70_000)
    end = start + random.randrange(1, 65_536)
    part = pops.view("get", MEDIA_PATH, "--range", f"{start}-{end}", "--sha256")
    with media.open("rb") as file:
        file.seek(start)
        expected = file.read(end - start + 1)
    assert part["status"] == 206 and part["sha256"] == hashlib.sha256(expected).hexdigest()


def test_a_websocket_passes_both_hops(pops: Pops) -> None:
    result = pops.view("websocket", WEBSOCKET_PATH, "--idle", "2")
    assert len(result["received"]) == 3 and "before idle" in result["received"][1], result
    assert "after idle" in result["received"][2], result


def test_the_origin_sees_the_viewer_first_in_x_forwarded_for(pops: Pops) -> None:
    pops.view("get", "/identity", "--header", "X-Forwarded-For: 192.168.1.5")
    seen = [h for h in pops.headers_seen() if h.get("path") == "/identity"][-1]
    forwarded = [part.strip() for part in seen["headers"]["x-forwarded-for"].split(",")]
    assert forwarded[0] == str(env.VIEWER_ADDRESS), forwarded
    assert "192.168.1.5" not in forwarded


def test_a_first_boot_that_cannot_reach_the_acme_server_fails_and_the_deploy_names_it(pops: Pops) -> None:
    failed = pops.failed
    assert "boot-wait" in str(failed), failed
    assert "first boot of fail-solo.example.com failed at: obtain the certificate" in failed.stderr, failed.stderr
    assert f"after {render.ISSUE_ATTEMPTS} attempts" in pops.on("solo", "cat /var/log/cloud-init-output.log")
    guest = pops.guest("solo")
    status = guest.cloud_init_status(pops.lab.lab_private_key(), guest.host_key())
    assert status.status == "error", status.raw
    # Nothing after the failed step ran: no deploy, no records for a POP that cannot serve.
    assert pops.lab.run(guest, f"test -e /etc/nginx/{render.RELEASE_FILE}").returncode == 1
