#!/usr/bin/env python3
"""plexcdn-certificate-check: how long a POP's certificate has left, for the DNS health check and `status`.

    plexcdn-certificate-check --certificate FILE --state-dir DIR [--warn-days 14]

certbot renews a certificate 30 days before it expires and says so only in syslog when that fails, so a
renewal that keeps failing is noticed when browsers and apps refuse the POP. This program reads FILE's
expiry, writes DIR/certificate.json (`notAfter`, `daysLeft`, `checkedAt`; what `python -m plexcdn status`
shows), and keeps DIR/certificate-expiring while fewer than WARN days are left or FILE cannot be read.
nginx answers the Route53 health check with 503 while that file exists, so DNS moves viewers to a POP
whose certificate is good. A systemd timer runs it every hour. Standard library only: copied to every POP.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

STATE_FILE = "certificate.json"
EXPIRING_FLAG = "certificate-expiring"
DEFAULT_WARN_DAYS = 14
SECONDS_A_DAY = 86_400


class CertificateError(Exception):
    pass


def not_after(certificate: str) -> float:
    """FILE's expiry as a Unix time, from `openssl x509 -enddate` (the form ssl.cert_time_to_seconds reads)."""
    try:
        result = subprocess.run(
            ["openssl", "x509", "-noout", "-enddate", "-in", certificate],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CertificateError(f"cannot run openssl: {error}") from None
    line = result.stdout.strip()
    if result.returncode != 0 or not line.startswith("notAfter="):
        raise CertificateError(f"cannot read {certificate}: {result.stderr.strip() or line or 'no output'}")
    try:
        return float(ssl.cert_time_to_seconds(line.removeprefix("notAfter=")))
    except ValueError:
        raise CertificateError(f"{certificate}: openssl gave an expiry this program cannot read: {line}") from None


def days_left(expiry: float, now: float) -> int:
    """Whole days left; negative once expired."""
    return int((expiry - now) // SECONDS_A_DAY)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_atomically(path: str, text: str) -> None:
    with open(path + ".new", "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(path + ".new", path)


def check(certificate: str, state_dir: str, warn_days: int, now: float) -> tuple[dict[str, object], bool]:
    """(the state written, whether the POP must answer its health check unhealthy)."""
    try:
        expiry = not_after(certificate)
    except CertificateError as error:
        state: dict[str, object] = {"error": str(error), "checkedAt": _iso(now)}
        expiring = True
    else:
        left = days_left(expiry, now)
        state = {"notAfter": _iso(expiry), "daysLeft": left, "checkedAt": _iso(now)}
        expiring = left < warn_days
    os.makedirs(state_dir, exist_ok=True)
    _write_atomically(os.path.join(state_dir, STATE_FILE), json.dumps(state) + "\n")
    flag = os.path.join(state_dir, EXPIRING_FLAG)
    if expiring:
        _write_atomically(flag, f"{state.get('daysLeft', 'unreadable')}\n")
    elif os.path.exists(flag):
        os.remove(flag)
    return state, expiring


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plexcdn-certificate-check", description=__doc__.splitlines()[0])
    parser.add_argument("--certificate", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--warn-days", type=int, default=DEFAULT_WARN_DAYS)
    args = parser.parse_args(argv)
    state, expiring = check(args.certificate, args.state_dir, args.warn_days, time.time())
    if "error" in state:
        print(f"plexcdn-certificate-check: {state['error']}; the health check answers 503", file=sys.stderr)
        return 1
    if expiring:
        print(
            f"plexcdn-certificate-check: {args.certificate} expires {state['notAfter']} ({state['daysLeft']} days): "
            "renewal is failing (journalctl -u plexcdn-certbot-renew); the health check answers 503",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
