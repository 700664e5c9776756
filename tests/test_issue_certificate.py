"""The rendered issuing script's retries, with stand-ins for certbot and the DNS hook.

The certificate lab runs the same script with the real certbot against Pebble and moto; here only the
loop around them is under test: its pauses differ between POPs, and certbot runs only once the hook
finds the zone.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from plexcdn import render
from plexcdn.config import StackConfig

ISSUE_SCRIPT = "/usr/local/sbin/plexcdn-issue-certificate"


def _stand_ins(tmp_path: Path, zone_found: bool) -> Path:
    """An env file whose certbot always fails and whose hook's check passes only when `zone_found`."""
    calls = tmp_path / "calls"
    certbot = tmp_path / "certbot"
    certbot.write_text(f'#!/bin/sh\necho certbot >> "{calls}"\nexit 1\n')
    certbot.chmod(0o755)
    hook = tmp_path / "hook"
    verdict = "exit 0" if zone_found else 'echo "plex-cdn: no Route53 hosted zone holds $2" >&2; exit 1'
    hook.write_text(f'echo "hook $1" >> "{calls}"\n{verdict}\n')
    env = tmp_path / "certbot.env"
    env.write_text(
        f"CERTBOT={certbot}\nCERTBOT_PYTHON=/bin/sh\nACME_DNS_HOOK={hook}\nLETSENCRYPT_DIR={tmp_path}/le\n"
        "ACME_SERVER=https://acme.invalid/dir\nACME_EMAIL=a@example.com\nCERT_NAME=plex-us.example.com\n"
        "CERT_DOMAINS=plex-us.example.com,plex.example.com\nISSUE_ATTEMPTS=2\nISSUE_RETRY_SECONDS=1\n"
    )
    return env


def _script(tmp_path: Path, config: StackConfig) -> Path:
    script = tmp_path / "plexcdn-issue-certificate"
    script.write_text(render.certbot_files(config, "us")[ISSUE_SCRIPT])
    script.chmod(0o755)
    return script


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck (Debian package shellcheck)")
def test_the_certbot_scripts_pass_shellcheck(tmp_path: Path, example_config: StackConfig) -> None:
    files = render.certbot_files(example_config, "us")
    paths = []
    for pop_path in (ISSUE_SCRIPT, "/etc/letsencrypt/renewal-hooks/deploy/plexcdn-reload-nginx"):
        path = tmp_path / Path(pop_path).name
        path.write_text(files[pop_path])
        paths.append(str(path))
    # SC1090: the env file's path is a variable, so shellcheck cannot follow it.
    result = subprocess.run(["shellcheck", "-e", "SC1090", *paths], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_pops_retry_after_different_pauses(tmp_path: Path, example_config: StackConfig) -> None:
    script = _script(tmp_path, example_config)
    runs = []
    for pop in range(4):
        directory = tmp_path / f"pop{pop}"
        directory.mkdir()
        env = _stand_ins(directory, zone_found=True)
        runs.append(
            subprocess.Popen(
                [str(script)],
                env={"PATH": "/usr/bin:/bin", "PLEXCDN_CERTBOT_ENV": str(env)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    pauses = []
    for run in runs:
        _, stderr = run.communicate(timeout=30)
        assert run.returncode == 1
        assert "after 2 attempts; giving up" in stderr
        found = re.findall(r"attempt 1 for \S+ failed; retrying in (\d+\.\d{3}) s", stderr)
        assert len(found) == 1, stderr
        pauses.append(float(found[0]))
    # The first pause is ISSUE_RETRY_SECONDS plus a random share of it of up to as much again.
    assert all(1.0 <= pause <= 2.0 for pause in pauses), pauses
    assert len(set(pauses)) > 1, f"four POPs paused alike: {pauses}"
    for pop in range(4):
        assert (tmp_path / f"pop{pop}" / "calls").read_text().split("\n")[:-1] == [
            "hook check",
            "certbot",
            "hook check",
            "certbot",
        ]


def test_certbot_runs_only_once_the_hook_finds_the_zone(tmp_path: Path, example_config: StackConfig) -> None:
    script = _script(tmp_path, example_config)
    env = _stand_ins(tmp_path, zone_found=False)
    result = subprocess.run(
        [str(script)],
        env={"PATH": "/usr/bin:/bin", "PLEXCDN_CERTBOT_ENV": str(env)},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 1
    assert "no Route53 hosted zone holds plex-us.example.com,plex.example.com" in result.stderr
    assert (tmp_path / "calls").read_text().split() == ["hook", "check", "hook", "check"], "certbot must not run"
