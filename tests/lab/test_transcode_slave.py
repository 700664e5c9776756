"""A transcode slave as an attacker holding the dispatch key (the Plex server's plex account) would try it, under
sshd: the guard runs as an unprivileged account set up the way slave-setup sets up plex (the rendered sshd
settings, a home and a key file root owns) and the slave's rendered nftables filter guards the forwarded Plex port.

- a run header that preloads a library is refused, and the library never runs; a transcode Plex would ask for
  still runs;
- the account cannot change which keys sshd takes for it: the key file is root's, its home is root's, and a key
  in ~/.ssh is not read;
- the Plex server's port forwarded onto the slave's loopback answers that account only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs.netns import lab_unavailable_reason
from labs.transcode_lab import (
    PLEX_PORT,
    SlaveAccount,
    TranscodeLab,
    first_segment_listed,
    lab_environment,
    lab_tools_missing,
)
from plexcdn.transcode import dispatcher
from plexcdn.transcode import render as tr
from tests.conftest import config_from
from tests.transcode_fixtures import transcode_values

TOKEN = "lab-plex-token-93d1c0aa"
ACCOUNT = SlaveAccount()
NOBODY = 65534
PRELOAD_SOURCE = """
#include <stdio.h>
__attribute__((constructor)) static void pwned(void) {
    FILE *marker = fopen(MARKER, "w");
    if (marker) { fputs("preloaded library ran\\n", marker); fclose(marker); }
}
"""

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(lab_unavailable_reason() is not None, reason=f"transcode lab: {lab_unavailable_reason()}"),
    pytest.mark.skipif(lab_tools_missing() is not None, reason=f"transcode lab: {lab_tools_missing()}"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (Debian package nftables)"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (Debian package util-linux)"),
]


@pytest.fixture(scope="module")
def lab() -> Iterator[TranscodeLab]:
    with TranscodeLab(slave_count=1, bad_host_seconds=3, account=ACCOUNT) as built:
        yield built


def ssh_to_guard(lab: TranscodeLab, args: list[str], header: bytes) -> subprocess.CompletedProcess[bytes]:
    """What the holder of the dispatch key can send: any header, any arguments, straight to the guard."""
    config = dispatcher.parse_config(lab.origin_config(["slave1"]))
    slave = config.slaves[0]
    transport = dispatcher.SshTransport(config, dispatcher.DecisionLog(""))
    argv = [
        *transport.base_argv(slave),
        "-o",
        "ControlMaster=no",
        slave.host,
        dispatcher.remote_command(slave, "run", args),
    ]
    return subprocess.run(lab.lab.command("origin", argv), input=header, capture_output=True, timeout=60, check=False)


def test_a_preloaded_library_is_refused_and_a_plex_transcode_still_runs(lab: TranscodeLab, tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the library the attack preloads")
    out = lab.output_dir("preload")
    marker = out / "pwned"
    library = out / "evil.so"  # on the shared storage, where the Plex server's plex account can put it
    source = tmp_path / "evil.c"
    source.write_text(PRELOAD_SOURCE)
    built = subprocess.run(
        ["gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(library), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    env = {**lab_environment(TOKEN), "LD_PRELOAD": str(library)}
    attack = ssh_to_guard(lab, ["-version"], dispatcher.run_header(env, str(out)))
    assert attack.returncode == dispatcher.GUARD_REFUSED_EXIT, attack.stderr
    assert dispatcher.REFUSED_PREFIX + b"environment variable LD_PRELOAD" in attack.stderr
    assert not marker.exists(), "the preloaded library ran on the slave"
    guard_log = lab.slave("slave1").guard_log.read_text(encoding="utf-8")
    assert "WARNING refused: environment variable LD_PRELOAD is not one Plex's transcoder is given" in guard_log
    assert TOKEN not in guard_log

    run = lab.dispatch(lab.hls_args(out), cwd=out, env=lab_environment(TOKEN))
    assert run.exit_code == 0, run.stderr
    assert first_segment_listed(out / "stream index.m3u8")
    assert " INFO running pid " in lab.slave("slave1").guard_log.read_text(encoding="utf-8")
    assert "chose slave slave1" in lab.origin_log_text()
    assert not marker.exists()


def test_the_account_cannot_change_the_keys_sshd_takes_for_it(lab: TranscodeLab, tmp_path: Path) -> None:
    slave = lab.slave("slave1")
    account_key = tmp_path / "account_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(account_key)], check=True)
    append = f"echo {account_key.with_suffix('.pub').read_text().strip()!r} >> {slave.account_keys}"
    attempt = lab.run_as("slave1", ACCOUNT.uid, ACCOUNT.gid, ["/bin/sh", "-c", append])
    assert attempt.returncode != 0 and "Permission denied" in attempt.stderr
    attempt = lab.run_as("slave1", ACCOUNT.uid, ACCOUNT.gid, ["mkdir", str(slave.home / ".ssh")])
    assert attempt.returncode != 0 and "Permission denied" in attempt.stderr
    # Even a key in the home's .ssh, where the account once had its keys, is not what sshd reads for it.
    (slave.home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    (slave.home / ".ssh" / "authorized_keys").write_text(account_key.with_suffix(".pub").read_text())
    os.chown(slave.home / ".ssh", ACCOUNT.uid, ACCOUNT.gid)
    os.chown(slave.home / ".ssh" / "authorized_keys", ACCOUNT.uid, ACCOUNT.gid)
    try:
        login = subprocess.run(
            lab.lab.command(
                "origin",
                [
                    *("ssh", "-F", "/dev/null", "-i", str(account_key), "-o", "IdentitiesOnly=yes"),
                    *("-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={lab.known_hosts}"),
                    *("-o", "StrictHostKeyChecking=yes", "-l", ACCOUNT.name, slave.address, "id"),
                ],
            ),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        shutil.rmtree(slave.home / ".ssh")
    assert login.returncode == 255 and "Permission denied (publickey)" in login.stderr, login.stdout + login.stderr
    assert "uid=" not in login.stdout


def test_the_forwarded_plex_port_answers_the_transcoding_account_only(lab: TranscodeLab) -> None:
    stack = config_from(transcode_values(plexUid=ACCOUNT.uid, plexGid=ACCOUNT.gid))
    out = lab.output_dir("forward")
    # A transcode leaves the master connection, and its forward of the Plex port, up for the next one.
    assert lab.dispatch(lab.hls_args(out), cwd=out, env=lab_environment(TOKEN)).exit_code == 0
    fetch = [
        "/usr/bin/python3",
        "-c",
        "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5); print('answered')",
        f"http://127.0.0.1:{PLEX_PORT}/",
    ]
    before = lab.run_as("slave1", NOBODY, NOBODY, fetch)
    assert before.stdout.strip() == "answered", "without the filter, any account reaches the Plex server"
    lab.load_filter("slave1", tr.slave_filter(stack))
    try:
        assert lab.run_as("slave1", ACCOUNT.uid, ACCOUNT.gid, fetch).stdout.strip() == "answered"
        refused = lab.run_as("slave1", NOBODY, NOBODY, fetch)
        assert refused.returncode != 0 and "answered" not in refused.stdout
        assert "Connection refused" in refused.stderr or "Connection reset" in refused.stderr, refused.stderr
        root = lab.lab.run("slave1", fetch, check=False, timeout=60)
        assert "answered" not in root.stdout, "only the transcoding account, not even root's processes"
        listing = lab.lab.run("slave1", ["nft", "list", "table", "inet", tr.SLAVE_FILTER_TABLE]).stdout
        assert re.search(r"counter packets [1-9][0-9]* bytes [0-9]+ reject", listing), listing
    finally:
        lab.lab.run("slave1", ["nft", "delete", "table", "inet", tr.SLAVE_FILTER_TABLE], check=False)
