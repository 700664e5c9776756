"""sslyze against a TLS listener: what it accepts, and how far that is from Mozilla's "intermediate" configuration.

sslyze pins cryptography below the version plex-cdn pins, so it lives in a virtualenv of its own, made from
requirements-sslyze.txt under /var/cache/plexcdn-lab (or $PLEXCDN_SSLYZE_VENV), and `labs/sslyze_mozilla.py`
runs there. `scan()` takes the listener's address, port, name and CA, and a client certificate where the
listener demands one; `wrap` puts the scanner where it can reach the listener (a lab namespace), and the
default runs it here (a guest on a lab bridge).

    python -m labs.tls_scan venv                 # make the virtualenv
    python -m labs.tls_scan scan --address A --port P --server-name N --ca-file CA [--client-cert C --client-key K]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from labs import PROJECT_ROOT
from labs.netns import LabError

SSLYZE_VERSION: Final = "6.3.1"
REQUIREMENTS: Final = PROJECT_ROOT / "requirements-sslyze.txt"
VENV_VARIABLE: Final = "PLEXCDN_SSLYZE_VENV"
CACHE_DIR: Final = Path("/var/cache/plexcdn-lab")
SCANNER: Final = PROJECT_ROOT / "labs" / "sslyze_mozilla.py"
SCAN_TIMEOUT_SECONDS: Final = 600
# The guidelines every scan is checked against: the one sslyze ships and Mozilla's current one.
GUIDELINES: Final = ("5.7", "6.0")


def sslyze_venv_path() -> Path:
    override = os.environ.get(VENV_VARIABLE)
    return Path(override) if override else CACHE_DIR / f"sslyze-{SSLYZE_VERSION}"


def installed_version(path: Path) -> str | None:
    python = path / "bin" / "python"
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('sslyze'))"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_sslyze_venv(path: Path | None = None) -> Path:
    """A virtualenv with exactly requirements-sslyze.txt, made when missing (one maker at a time)."""
    path = path or sslyze_venv_path()
    if installed_version(path) == SSLYZE_VERSION:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f".{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_version(path) == SSLYZE_VERSION:
            return path
        shutil.rmtree(path, ignore_errors=True)
        for command in (
            [sys.executable, "-m", "venv", str(path)],
            [str(path / "bin" / "pip"), "install", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        ):
            result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
            if result.returncode != 0:
                raise LabError(f"making the sslyze virtualenv failed: {' '.join(command)}:\n{result.stderr[-3000:]}")
        found = installed_version(path)
        if found != SSLYZE_VERSION:
            raise LabError(f"the sslyze virtualenv at {path} has sslyze {found}, not {SSLYZE_VERSION}")
    return path


@dataclass(frozen=True)
class TlsTarget:
    """A TLS listener: where it is, the name it answers for, the CA its certificate comes from, and the client
    certificate it demands (if it does)."""

    address: str
    port: int
    server_name: str
    ca_file: Path
    client_cert: Path | None = None
    client_key: Path | None = None


@dataclass(frozen=True)
class TlsScanReport:
    target: str
    commands: dict[str, str]  # every scan command Mozilla's checker needs, and how it ended
    command_errors: dict[str, str]
    accepted: dict[str, Any]  # cipher suites by protocol, curves, certificates
    deviations: dict[str, dict[str, str]] = field(default_factory=dict)  # by guideline

    @property
    def not_completed(self) -> list[str]:
        return sorted(name for name, status in self.commands.items() if status != "COMPLETED")

    def summary(self) -> str:
        suites = self.accepted["cipher_suites"]
        return (
            f"{self.target}: protocols {sorted(suites)}, "
            f"{sum(len(names) for names in suites.values())} cipher suites, curves {self.accepted['curves']}, "
            f"{len(self.commands)} checks ({len(self.not_completed)} not completed), deviations "
            + ", ".join(f"{guideline}: {len(issues)}" for guideline, issues in sorted(self.deviations.items()))
        )


def scan_command(target: TlsTarget, python: Path) -> list[str]:
    argv = [
        str(python),
        str(SCANNER),
        *("--address", target.address, "--port", str(target.port)),
        *("--server-name", target.server_name, "--ca-file", str(target.ca_file)),
    ]
    if target.client_cert is not None and target.client_key is not None:
        argv += ["--client-cert", str(target.client_cert), "--client-key", str(target.client_key)]
    return argv


def scan(target: TlsTarget, wrap: Callable[[list[str]], Sequence[str]] = list) -> TlsScanReport:
    """Scan `target` with sslyze (run as `wrap(argv)`) and check it against every guideline in GUIDELINES."""
    python = ensure_sslyze_venv() / "bin" / "python"
    result = subprocess.run(
        list(wrap(scan_command(target, python))),
        capture_output=True,
        text=True,
        check=False,
        timeout=SCAN_TIMEOUT_SECONDS,
    )
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise LabError(f"sslyze gave no report for {target}: {result.stderr[-3000:]}") from None
    if result.returncode != 0:
        raise LabError(f"sslyze could not scan {report.get('target')}: {report.get('error', report)}")
    return TlsScanReport(
        target=report["target"],
        commands=report["commands"],
        command_errors=report["command_errors"],
        accepted=report["accepted"],
        deviations=report["deviations"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.tls_scan", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("venv", help="make sslyze's virtualenv")
    one = commands.add_parser("scan", help="scan one listener from this machine")
    one.add_argument("--address", required=True)
    one.add_argument("--port", required=True, type=int)
    one.add_argument("--server-name", required=True)
    one.add_argument("--ca-file", required=True, type=Path)
    one.add_argument("--client-cert", type=Path)
    one.add_argument("--client-key", type=Path)
    arguments = parser.parse_args(argv)
    if arguments.command == "venv":
        print(ensure_sslyze_venv())
        return 0
    report = scan(
        TlsTarget(
            arguments.address,
            arguments.port,
            arguments.server_name,
            arguments.ca_file,
            arguments.client_cert,
            arguments.client_key,
        )
    )
    print(report.summary())
    for guideline, issues in sorted(report.deviations.items()):
        for name, text in sorted(issues.items()):
            print(f"  {guideline} {name}: {text}")
    return 0 if not report.not_completed and not any(report.deviations.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
