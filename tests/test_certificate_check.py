"""plexcdn-certificate-check, run as the single file copied to every POP, on certificates openssl makes here:
the state `status` reads, and the file whose presence fails the POP's DNS health check."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from plexcdn import certificate_check
from tests.conftest import ROOT

CERTIFICATE_CHECK = ROOT / "plexcdn" / "certificate_check.py"


def self_signed_certificate(directory: Path, days: int) -> Path:
    certificate = directory / f"cert-{days}.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            str(days),
            "-subj",
            "/CN=plex-us.example.com",
            "-keyout",
            str(directory / f"key-{days}.pem"),
            "-out",
            str(certificate),
        ],
        capture_output=True,
        check=True,
    )
    return certificate


def run_check(certificate: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-I",
            str(CERTIFICATE_CHECK),
            "--certificate",
            str(certificate),
            "--state-dir",
            str(state_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_certificate_with_weeks_left_keeps_the_pop_healthy(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    result = run_check(self_signed_certificate(tmp_path, 60), state_dir)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    state = json.loads((state_dir / certificate_check.STATE_FILE).read_text())
    assert state["daysLeft"] in (59, 60)
    assert not (state_dir / certificate_check.EXPIRING_FLAG).exists()


def test_under_two_weeks_the_flag_appears_and_a_renewed_certificate_takes_it_away(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    result = run_check(self_signed_certificate(tmp_path, 10), state_dir)
    assert result.returncode == 0, result.stderr
    assert "renewal is failing" in result.stderr
    assert (state_dir / certificate_check.EXPIRING_FLAG).exists()
    assert json.loads((state_dir / certificate_check.STATE_FILE).read_text())["daysLeft"] in (9, 10)
    renewed = run_check(self_signed_certificate(tmp_path, 90), state_dir)
    assert renewed.returncode == 0, renewed.stderr
    assert not (state_dir / certificate_check.EXPIRING_FLAG).exists()


def test_a_certificate_that_cannot_be_read_fails_the_health_check_and_the_unit(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    missing = tmp_path / "live" / "fullchain.pem"
    result = run_check(missing, state_dir)
    assert result.returncode == 1
    assert (state_dir / certificate_check.EXPIRING_FLAG).exists()
    assert str(missing) in json.loads((state_dir / certificate_check.STATE_FILE).read_text())["error"]


def test_days_left_are_whole_days_and_negative_once_expired() -> None:
    now = time.time()
    assert certificate_check.days_left(now + 14 * 86_400, now) == 14
    assert certificate_check.days_left(now + 14 * 86_400 - 1, now) == 13
    assert certificate_check.days_left(now - 1, now) == -1
