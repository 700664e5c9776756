"""`python -m plexcdn status` against the relay lab, read the way it reads a deployed stack: over SSH to each
POP (their rendered nginx, their real access logs) and to the Plex host, where the sessions script reads the
server's token from Preferences.xml and asks the Plex stand-in on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs import relay_lab as relay
from labs.netns import lab_unavailable_reason
from labs.status_lab import PROJECT_ROOT, HostKeys, StatusAccess, add_status_access, admin_address
from plexcdn import render
from plexcdn.config import parse_config
from tests.conftest import example_values, write_stack

pytestmark = pytest.mark.skipif(lab_unavailable_reason() is not None, reason=str(lab_unavailable_reason()))

PREFIX = f"pst{os.getpid() % 1000}-"
TOKEN = "status-lab-owner-token-5c1e"
WEB_CLIENT = "lab-web-client-7a1f"
ROLES = ("origin", "us", "asia")  # the admin's links, in admin_address order


@pytest.fixture(scope="module")
def access() -> Iterator[tuple[StatusAccess, Path]]:
    root = Path(tempfile.mkdtemp(prefix="plexcdn-status-"))
    root.chmod(0o755)
    keys = HostKeys(root / "host-keys")
    app_data = root / "plex-app-data"
    values = example_values()
    values["origin"]["agent"] = {
        "listenPort": 32443,
        "sshHost": admin_address(ROLES.index("origin"))[1],
        "sshHostKey": keys.make("origin"),
    }
    values["plex"] = {"appDataDir": str(app_data)}
    stack_file = write_stack(root / "Pulumi.dev.yaml", values)
    try:
        with relay.relay_lab(parse_config(values, "dev"), root / "lab", 8, prefix=PREFIX, plex_token=TOKEN) as lab:
            app_data.mkdir()
            (app_data / "Preferences.xml").write_text(
                f'<?xml version="1.0" encoding="utf-8"?>\n<Preferences AcceptedEULA="1" PlexOnlineToken="{TOKEN}"/>\n'
            )
            yield add_status_access(lab, root / "status", keys, ROLES), stack_file
    finally:
        shutil.rmtree(root, ignore_errors=True)


def play_through_the_cdn(lab: relay.RelayLab) -> None:
    """A viewer's app fetches media from the shared name, which the lab resolves to the edge."""
    argv = [
        *(sys.executable, "-m", "labs.viewer", "get", lab.config.shared_url + relay.MEDIA_PATH),
        *("--ca", str(lab.ca.bundle_path), "--range", "0-65535"),
        *("--header", f"X-Plex-Client-Identifier: {WEB_CLIENT}", "--header", f"X-Plex-Token: {TOKEN}"),
        *("--header", "X-Plex-Product: Plex Web", "--header", "X-Plex-Device-Name: Firefox"),
    ]
    result = lab.lab.run("client", argv, cwd=str(PROJECT_ROOT))
    assert json.loads(result.stdout)["status"] == 206


def add_bypassing_sessions(lab: relay.RelayLab) -> None:
    """A TV at home and a phone that reached the home address directly: neither passes a POP."""
    sessions = [
        {"clientId": "lab-lan-tv", "address": "192.168.1.50", "user": "bob", "transcode": True, "bitrateKbps": 8000},
        {"clientId": "lab-direct-phone", "address": "203.0.113.77", "user": "carol"},
    ]
    result = lab.lab.run(
        "origin",
        ["curl", "-fsS", "-X", "POST", "--data", json.dumps(sessions), "http://127.0.0.1:32400/lab/sessions"],
    )
    assert json.loads(result.stdout)["sessions"] >= 2


def deployed_release(lab: relay.RelayLab, pop: str) -> str:
    text = (lab.conf(pop).parent / render.RELEASE_FILE).read_text()
    return text.split('default "')[1].split('"')[0]


def run_status(access: StatusAccess, stack_file: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return access.status(stack_file, access.outputs(), *arguments)


def test_sessions_are_attributed_to_the_pop_they_came_through_or_shown_bypassing(
    access: tuple[StatusAccess, Path],
) -> None:
    status_access, stack_file = access
    lab = status_access.relay
    play_through_the_cdn(lab)
    add_bypassing_sessions(lab)
    text = run_status(status_access, stack_file)
    assert text.returncode == 0, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "POPs"
    for line, pop in zip(lines[1:3], ("us", "asia"), strict=True):
        assert line.startswith(f"  {pop} ") and "reachable" in line, line
        assert f"release {deployed_release(lab, pop)}" in line, line
    assert lines[3].startswith("Sessions (3, from the Plex host over SSH")
    by_client = {line.split()[0]: line for line in lines[4:7]}
    viewer = lab.addresses[("client", lab.viewer_pop)][0]
    web = next(line for line in lines[4:7] if "Firefox" in line)
    assert "through POP asia (edge)" in web and viewer in web, "Plex shows the viewer's own address"
    assert "BYPASSES the CDN: on your LAN" in by_client["bob"] and "transcode" in by_client["bob"]
    assert "BYPASSES the CDN: direct to your home address" in by_client["carol"]
    assert TOKEN not in text.stdout + text.stderr

    document = json.loads(run_status(status_access, stack_file, "--json").stdout)
    assert [(p["name"], p["reachable"]) for p in document["pops"]] == [("us", True), ("asia", True)]
    assert document["pops"][1]["checks"]["release"]["value"] == deployed_release(lab, "asia")
    routes = {s["clientId"]: (s["route"], s["pop"], s["address"]) for s in document["sessions"]}
    assert routes[WEB_CLIENT] == ("pop", "asia", viewer)
    assert routes["lab-lan-tv"] == ("bypass", None, "192.168.1.50")
    assert routes["lab-direct-phone"] == ("bypass", None, "203.0.113.77")
    for log in lab.logs_dir().rglob("access.log"):
        assert TOKEN not in log.read_text(), "the POPs log the client's identifier, never its token"


def test_a_pop_that_cannot_be_reached_is_reported_and_the_rest_still_shown(
    access: tuple[StatusAccess, Path],
) -> None:
    status_access, stack_file = access
    lab = status_access.relay
    play_through_the_cdn(lab)
    status_access.stop_sshd("asia")
    try:
        text = run_status(status_access, stack_file)
        document = json.loads(run_status(status_access, stack_file, "--json").stdout)
    finally:
        status_access.start_sshd("asia")
    assert text.returncode == 1, "a POP that could not be read makes the exit status 1"
    lines = text.stdout.splitlines()
    assert "reachable" in lines[1] and lines[1].startswith("  us ")
    assert lines[2].startswith("  asia ") and "UNREACHABLE" in lines[2], lines[2]
    web = next(line for line in lines if "Firefox" in line)
    assert "through POP us (hub), relayed from a POP that was not read" in web, web
    assert [(p["name"], p["reachable"]) for p in document["pops"]] == [("us", True), ("asia", False)]
    assert document["pops"][1]["error"]
