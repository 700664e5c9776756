"""One TLS listener scanned by sslyze and checked against Mozilla's "intermediate" configuration.

Runs inside sslyze's own virtualenv (`labs.tls_scan` makes it and runs this file there), so it imports
nothing of plex-cdn. Prints one JSON object: the scan commands and their status, what the listener
accepted, and the deviations from each guideline it was checked against (sslyze's bundled 5.7, and 6.0,
Mozilla's current one, which sslyze does not ship yet).

    python sslyze_mozilla.py --address 198.18.0.2 --port 443 --server-name plex.example.com \\
        --ca-file ca.pem [--client-cert cert.pem --client-key key.pem]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sslyze import (
    CertificateInfoExtraArgument,
    ClientAuthenticationCredentials,
    ScanCommandAttemptStatusEnum,
    ScanCommandsExtraArguments,
    Scanner,
    ServerConnectivityStatusEnum,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    ServerScanResultIncomplete,
    TlsConfigurationAsJson,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

# The "intermediate" configuration of https://ssl-config.mozilla.org/guidelines/6.0.json (2026-04-06).
# sslyze's model still wants the caddy and go cipher names that 6.0 dropped: the IANA names stand in.
_CIPHERS_6_0 = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
]
INTERMEDIATE_6_0: dict[str, Any] = {
    "certificate_curves": ["prime256v1", "secp384r1"],
    "certificate_signatures": [
        "sha256WithRSAEncryption",
        "ecdsa-with-SHA256",
        "ecdsa-with-SHA384",
        "ecdsa-with-SHA512",
    ],
    "certificate_types": ["ecdsa", "rsa"],
    "ciphers": {
        "caddy": _CIPHERS_6_0,
        "go": _CIPHERS_6_0,
        "iana": _CIPHERS_6_0,
        "openssl": [
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-RSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            "ECDHE-RSA-CHACHA20-POLY1305",
        ],
    },
    "ciphersuites": ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"],
    "dh_param_size": 2048,
    "ecdh_param_size": 256,
    "hsts_min_age": 63072000,
    "maximum_certificate_lifespan": 366,
    "ocsp_staple": True,
    "recommended_certificate_lifespan": 90,
    "rsa_key_size": 2048,
    "server_preferred_order": False,
    "tls_curves": ["X25519MLKEM768", "X25519", "prime256v1", "secp384r1"],
    "tls_versions": ["TLSv1.2", "TLSv1.3"],
}

_VERSIONS = (
    ("ssl_2_0_cipher_suites", "SSLv2"),
    ("ssl_3_0_cipher_suites", "SSLv3"),
    ("tls_1_0_cipher_suites", "TLSv1"),
    ("tls_1_1_cipher_suites", "TLSv1.1"),
    ("tls_1_2_cipher_suites", "TLSv1.2"),
    ("tls_1_3_cipher_suites", "TLSv1.3"),
)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--server-name", required=True, help="SNI, and the name the certificate is checked for")
    parser.add_argument("--ca-file", required=True, type=Path, help="the CA the listener's certificate comes from")
    parser.add_argument("--client-cert", type=Path)
    parser.add_argument("--client-key", type=Path)
    return parser.parse_args()


def _accepted(scan_result: Any) -> dict[str, Any]:
    versions: dict[str, list[str]] = {}
    curves: list[str] = []
    for field, version in _VERSIONS:
        result = getattr(scan_result, field).result
        if result is not None and result.is_tls_version_supported:
            versions[version] = sorted(suite.cipher_suite.name for suite in result.accepted_cipher_suites)
    supported = scan_result.elliptic_curves.result
    if supported is not None and supported.supported_curves:
        curves = sorted(curve.name for curve in supported.supported_curves)
    leaves = []
    certificate_info = scan_result.certificate_info.result
    if certificate_info is not None:
        for deployment in certificate_info.certificate_deployments:
            leaf = deployment.received_certificate_chain[0]
            leaves.append(
                {
                    "subject": leaf.subject.rfc4514_string(),
                    "lifespan_days": (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days,
                    "verified": deployment.verified_certificate_chain is not None,
                }
            )
    return {"cipher_suites": versions, "curves": curves, "certificates": leaves}


def _deviations(server_scan_result: Any, configuration: Any) -> dict[str, str]:
    try:
        check_server_against_tls_configuration(server_scan_result, configuration)
    except ServerNotCompliantWithTlsConfiguration as failure:
        return dict(failure.issues)
    except ServerScanResultIncomplete as failure:
        return {"scan_incomplete": str(failure)}
    return {}


def main() -> int:
    arguments = _arguments()
    credentials = None
    if arguments.client_cert is not None:
        credentials = ClientAuthenticationCredentials(
            certificate_chain_path=arguments.client_cert, key_path=arguments.client_key
        )
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(
            hostname=arguments.server_name, port=arguments.port, ip_address=arguments.address
        ),
        network_configuration=ServerNetworkConfiguration(
            tls_server_name_indication=arguments.server_name, tls_client_auth_credentials=credentials
        ),
        scan_commands=set(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER),
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=arguments.ca_file)
        ),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    (result,) = list(scanner.get_results())
    report: dict[str, Any] = {
        "target": f"{arguments.address}:{arguments.port} ({arguments.server_name})",
        "connectivity": result.connectivity_status.value,
        "scan_status": result.scan_status.value,
    }
    if result.connectivity_status != ServerConnectivityStatusEnum.COMPLETED:
        report["error"] = "".join(result.connectivity_error_trace.format()) if result.connectivity_error_trace else ""
        print(json.dumps(report))
        return 2
    if result.scan_status != ServerScanStatusEnum.COMPLETED or result.scan_result is None:
        print(json.dumps(report))
        return 2
    commands = {}
    errors = {}
    for command in sorted(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER, key=lambda c: c.value):
        attempt = getattr(result.scan_result, command.value)
        commands[command.value] = attempt.status.value
        if attempt.status != ScanCommandAttemptStatusEnum.COMPLETED:
            trace = attempt.error_trace
            errors[command.value] = "".join(trace.format()) if trace else attempt.status.value
    report["commands"] = commands
    report["command_errors"] = errors
    report["accepted"] = _accepted(result.scan_result)
    bundled = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    report["deviations"] = {
        "5.7": _deviations(result, bundled),
        "6.0": _deviations(result, TlsConfigurationAsJson(**INTERMEDIATE_6_0)),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
