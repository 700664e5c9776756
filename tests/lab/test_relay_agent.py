"""The relay lab with the origin agent on the Plex host: the hub's hop ends at the agent's nginx, which
demands the hub's client certificate and hands requests to Plex on loopback."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs import relay_lab as relay
from labs import tls_scan
from labs.lab_ca import LabCA
from labs.netns import lab_unavailable_reason
from plexcdn import agent, render
from plexcdn.config import parse_config
from tests.conftest import HOME_HOST_KEY, example_values
from tests.lab.test_relay import assert_mozilla_intermediate, headers_seen, in_namespace, view

pytestmark = pytest.mark.skipif(lab_unavailable_reason() is not None, reason=str(lab_unavailable_reason()))

PREFIX = f"pca{os.getpid() % 1000}-"
AGENT_PORT = 32443
TOKEN = "agent-lab-token-7f3a9c"


@pytest.fixture(scope="module")
def lab() -> Iterator[relay.RelayLab]:
    values = example_values()
    values["origin"]["agent"] = {"listenPort": AGENT_PORT, "sshHostKey": HOME_HOST_KEY}
    root = Path(tempfile.mkdtemp(prefix="plexcdn-agent-"))
    root.chmod(0o755)
    try:
        with relay.relay_lab(parse_config(values, "dev"), root, media_mb=8, prefix=PREFIX) as built:
            yield built
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_plex_sees_loopback_and_the_viewer_first_in_x_forwarded_for(lab: relay.RelayLab) -> None:
    assert view(lab, "get", "/identity", "--header", "X-Forwarded-For: 10.1.2.3")["status"] == 200
    seen = [h for h in headers_seen(lab) if h["path"] == "/identity"][-1]
    assert seen["peer"] == "127.0.0.1", "Plex trusts X-Forwarded-For only from a private address"
    client_address = lab.addresses[("client", lab.viewer_pop)][0]
    assert seen["headers"]["x-forwarded-for"].split(", ")[0] == client_address
    assert seen["headers"]["host"] == lab.config.shared_name


def test_ranges_cross_the_agent_byte_exact(lab: relay.RelayLab) -> None:
    result = view(lab, "get", relay.MEDIA_PATH, "--range", "1000000-1065535")
    assert result["status"] == 206
    with lab.media_file.open("rb") as media:
        media.seek(1_000_000)
        assert bytes.fromhex(result["body_hex"]) == media.read(65_536)


def _curl_agent_from_hub(lab: relay.RelayLab, *options: str) -> str:
    hub_side = lab.addresses[("us", "origin")][1]
    host = lab.config.origin.verify_name or lab.config.origin.host
    result = lab.lab.run(
        "us",
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            str(lab.origin_ca.root_path),  # type: ignore[union-attr]
            "--resolve",
            f"{host}:{AGENT_PORT}:{hub_side}",
            *options,
            f"https://{host}:{AGENT_PORT}/identity",
        ],
        check=False,
    )
    return result.stdout


def test_the_agent_refuses_a_client_without_the_hubs_certificate(lab: relay.RelayLab, tmp_path: Path) -> None:
    assert _curl_agent_from_hub(lab) == "400", "no client certificate"
    stranger = LabCA.create(tmp_path / "stranger", "unrelated", intermediate=False)
    client = stranger.issue_client("plex-us.example.com", tmp_path / "c.crt", tmp_path / "c.key")
    assert _curl_agent_from_hub(lab, "--cert", str(client.cert_path), "--key", str(client.key_path)) == "400"
    # The origin CA signs the agent's own certificate; a client certificate from it is still not a hub's.
    assert lab.origin_ca is not None
    origin = lab.origin_ca.issue_client("plex-us.example.com", tmp_path / "o.crt", tmp_path / "o.key")
    assert _curl_agent_from_hub(lab, "--cert", str(origin.cert_path), "--key", str(origin.key_path)) == "400"
    hub_conf = lab.conf("us").parent
    mine = [
        "--cert",
        str(lab.pop_dir("us") / "origin-client.crt"),
        "--key",
        str(hub_conf / "plexcdn-origin-client.key"),
    ]
    assert _curl_agent_from_hub(lab, *mine) == "200", "the hub's own certificate gets through"


def test_plex_is_not_reachable_around_the_agent(lab: relay.RelayLab) -> None:
    hub_side = lab.addresses[("us", "origin")][1]
    code = f"import socket;s=socket.socket();s.settimeout(2);print(s.connect_ex(('{hub_side}',{lab.origin_port})))"
    result = lab.lab.run("us", ["python3", "-c", code], check=False)
    assert result.stdout.strip() != "0"


def test_no_token_in_the_agents_logs(lab: relay.RelayLab) -> None:
    view(lab, "get", f"/library/sections?X-Plex-Token={TOKEN}")
    logs = list((lab.origin_dir / "var" / "log" / "nginx").glob("*.log"))
    assert logs
    assert all(TOKEN not in log.read_text() for log in logs)
    assert any(TOKEN in json.dumps(h) for h in headers_seen(lab))


def test_the_agent_port_is_mozilla_intermediate(lab: relay.RelayLab) -> None:
    """Issue #20, finding 6, with sslyze: the agent's port, scanned from the hub with the hub's certificate."""
    assert lab.origin_ca is not None
    target = tls_scan.TlsTarget(
        lab.addresses[("us", "origin")][1],
        AGENT_PORT,
        agent.tls_name(lab.config),
        lab.origin_ca.root_path,
        client_cert=lab.pop_dir("us") / "origin-client.crt",
        client_key=lab.conf("us").parent / render.ORIGIN_CLIENT_KEY_FILE,
    )
    assert_mozilla_intermediate(tls_scan.scan(target, wrap=in_namespace(lab, "us")))
