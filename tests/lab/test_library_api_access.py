"""Who on a library peer may talk to kubo's API, and who may read the Plex token, with the rendered files and real
accounts (root only: the test switches users with setpriv).

kubo cannot be installed here, so the fake kubo RPC of tests/test_library_services.py stands in for it, started
the way the rendered unit starts kubo: as its User and Group, with its UMask, serving where the rendered config's
Addresses.API says, in a directory made as systemd makes RuntimeDirectory (mode RuntimeDirectoryMode, owned by
User and Group). The watcher's and warmer's kubo client then connects as an account with the services'
SupplementaryGroups, and as one without.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plexcdn.library import keys, kubo, render
from tests.conftest import config_from
from tests.library_fixtures import library_values
from tests.transcode_fixtures import script_of

ROOT = Path(__file__).resolve().parents[2]
DAEMON_UID = 64983  # stands in for the account kubo runs as
API_GID = 64984  # stands in for the group its units name
OTHER_UID = 65534  # any other local account (nobody)
SERVE = """
import os, sys, threading
sys.path.insert(0, sys.argv[1])
os.umask(int(sys.argv[3], 8))
from tests.test_library_services import FakeKubo
fake = FakeKubo(unix_socket=sys.argv[2]) if sys.argv[2].startswith("/") else FakeKubo()
print(fake.url, flush=True)
threading.Event().wait()
"""
CALL = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("watcher", sys.argv[1])
watcher = importlib.util.module_from_spec(spec)
sys.modules["watcher"] = watcher
spec.loader.exec_module(watcher)
try:
    print(watcher.KuboClient(sys.argv[2], timeout_s=5).call("repo/stat")[0]["RepoSize"])
except watcher.KuboUnavailableError as error:
    sys.exit(f"refused: {error}")
"""

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="switches accounts with setpriv: needs root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (Debian package util-linux)"),
]


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    # Every account the test switches to must reach it: not pytest's own (root-only) temporary directories.
    directory = Path(tempfile.mkdtemp(prefix="plexcdn-api-"))
    directory.chmod(0o755)
    shutil.copy(ROOT / "plexcdn" / "library" / "watcher.py", directory / "watcher.py")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def serve_like_the_unit(work: Path, peer: str) -> tuple[subprocess.Popen[str], str]:
    """The fake kubo where, and as whom, the rendered config and unit put kubo."""
    config = config_from(library_values())
    document = render.kubo_config(
        config, peer, keys.identity(render.placeholder_key(0)), render.placeholder_members(config)
    )
    unit = unit_settings(render.ipfs_unit(config, peer))
    address = document["Addresses"]["API"]
    umask = unit.get("UMask", ["0022"])[0]
    target = ""
    if address.startswith("/unix/"):
        runtime = unit["RuntimeDirectory"][0]
        path = address.removeprefix("/unix")
        assert path.startswith(f"/run/{runtime}/"), "the socket is in the directory systemd makes and removes"
        assert unit["Group"] == [kubo.API_GROUP]
        directory = work / "run" / runtime
        # systemd makes it anew at each start and removes it, socket and all, when kubo stops.
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        os.chown(directory, DAEMON_UID, API_GID)
        directory.chmod(int(unit["RuntimeDirectoryMode"][0], 8))
        target = str(directory / Path(path).name)
    process = subprocess.Popen(
        [
            *("setpriv", f"--reuid={DAEMON_UID}", f"--regid={API_GID}", "--clear-groups"),
            *(sys.executable, "-c", SERVE, str(ROOT), target or "tcp", umask),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    assert url, "the fake kubo did not start"
    if target:
        deadline = time.monotonic() + 5
        while not Path(target).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return process, url


def call_as(work: Path, url: str, *setpriv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", *setpriv, "--", "/usr/bin/python3", "-I", "-c", CALL, str(work / "watcher.py"), url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("peer", ["alice", "carol"], ids=["seeder", "viewer"])
def test_only_the_api_group_reaches_kubo(work: Path, peer: str) -> None:
    process, url = serve_like_the_unit(work, peer)
    try:
        other = call_as(work, url, f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups")
        assert other.returncode != 0, f"a local account outside the group reached kubo: {other.stdout}"
        assert "Permission denied" in other.stderr
        member = call_as(work, url, f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", f"--groups={API_GID}")
        assert (member.returncode, member.stdout.strip()) == (0, "0"), member.stderr
    finally:
        process.kill()
        process.wait()
    config = config_from(library_values())
    helpers = [render.watcher_unit(config, "alice"), render.warmer_unit(config, "carol")]
    for text in helpers:
        assert unit_settings(text)["SupplementaryGroups"] == [kubo.API_GROUP]


def token_script(install: str) -> str:
    """The part of the viewer's install script that writes Plex's token where the warmer gets it."""
    match = re.search(r"python3 - [^\n]*<<'PLEXCDN_EOF'\n(.*?)\nPLEXCDN_EOF\n", script_of(install), re.DOTALL)
    assert match is not None, "the install script writes no Plex token"
    return match[1]


def test_the_plex_token_is_roots_and_reaches_the_warmer_alone(work: Path) -> None:
    config = config_from(library_values())
    install = render.install_script(
        config,
        "carol",
        document=render.kubo_config(
            config, "carol", keys.identity(render.placeholder_key(1)), render.placeholder_members(config)
        ),
        members=render.placeholder_members(config),
        seeder_names={"alice": "k51alice"},
        cloud=False,
    )
    preferences = work / "Preferences.xml"
    preferences.write_text('<Preferences PlexOnlineToken="owner-token-3e1" />\n')
    target = work / "plex-token"
    written = subprocess.run(
        [sys.executable, "-c", token_script(install), str(preferences), str(target), render.IPFS_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    assert written.returncode == 0, written.stderr
    info = target.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, 0, 0o600)
    # kubo's account, with every group it has, cannot read it.
    read = subprocess.run(
        [
            *("setpriv", f"--reuid={DAEMON_UID}", f"--regid={DAEMON_UID}", f"--groups={API_GID}"),
            *("cat", str(target)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert read.returncode != 0 and "Permission denied" in read.stderr and "owner-token" not in read.stdout
    warmer = unit_settings(render.warmer_unit(config, "carol"))
    daemon = unit_settings(render.ipfs_unit(config, "carol"))
    assert warmer["LoadCredential"] == [f"{render.TOKEN_CREDENTIAL}:{render.PLEX_TOKEN_FILE}"]
    assert warmer["User"] == [render.WARMER_USER] != daemon["User"]
    assert "LoadCredential" not in daemon
