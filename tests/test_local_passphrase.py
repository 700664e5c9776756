"""The local backend's passphrase (scripts/local-passphrase.sh, sourced by scripts/setup.sh): one per machine, in a
file only its owner reads, outside the repository; never a fixed string."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "scripts" / "local-passphrase.sh"


def passphrase(home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Source the functions as setup.sh does and print what Pulumi would be told."""
    script = f'. {FUNCTIONS}\nplexcdn_local_passphrase "{ROOT}"\necho "file=${{PULUMI_CONFIG_PASSPHRASE_FILE:-}}"\n'
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(home), **env}
    return subprocess.run(["bash", "-euc", script], env=clean, capture_output=True, text=True, check=False)


def test_each_machine_gets_a_passphrase_of_its_own_kept_from_other_accounts(tmp_path: Path) -> None:
    first = passphrase(tmp_path / "alice")
    assert first.returncode == 0, first.stderr
    made = tmp_path / "alice" / ".config" / "plex-cdn" / "pulumi-passphrase"
    assert f"file={made}" in first.stdout
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    assert stat.S_IMODE(made.parent.stat().st_mode) == 0o700
    secret = made.read_text().strip()
    assert len(secret) >= 40
    again = passphrase(tmp_path / "alice")
    assert again.returncode == 0 and made.read_text().strip() == secret, "kept, not replaced"
    assert passphrase(tmp_path / "bob").returncode == 0
    assert (tmp_path / "bob" / ".config" / "plex-cdn" / "pulumi-passphrase").read_text().strip() != secret


def test_a_passphrase_of_the_users_own_is_kept(tmp_path: Path) -> None:
    given = passphrase(tmp_path, PULUMI_CONFIG_PASSPHRASE="correct horse battery staple")
    assert given.returncode == 0 and given.stdout.strip() == "file="
    assert not (tmp_path / ".config").exists()
    own = tmp_path / "secrets" / "stack.pass"
    own.parent.mkdir()
    own.write_text("mine\n")
    own.chmod(0o600)
    chosen = passphrase(tmp_path, PULUMI_CONFIG_PASSPHRASE_FILE=str(own))
    assert chosen.returncode == 0 and f"file={own}" in chosen.stdout


def test_a_readable_or_in_repository_passphrase_file_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared.pass"
    shared.write_text("x\n")
    shared.chmod(0o644)
    refused = passphrase(tmp_path, PULUMI_CONFIG_PASSPHRASE_FILE=str(shared))
    assert refused.returncode != 0 and "must not read it" in refused.stderr
    inside = passphrase(tmp_path, PULUMI_CONFIG_PASSPHRASE_FILE=str(ROOT / ".pulumi-local" / "pass"))
    assert inside.returncode != 0 and "inside the repository" in inside.stderr
    assert not (ROOT / ".pulumi-local" / "pass").exists()


def test_setup_has_no_fixed_passphrase() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "PULUMI_CONFIG_PASSPHRASE=" not in setup and "plex-cdn-local" not in setup
    assert 'plexcdn_local_passphrase "$PWD"' in setup


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck (Debian package shellcheck)")
def test_the_scripts_pass_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", "--severity=warning", "-x", "scripts/setup.sh", "scripts/local-passphrase.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stdout
