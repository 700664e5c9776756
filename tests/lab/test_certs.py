"""The certificate lab: the POP's rendered certbot steps against Pebble and moto, issuance through renewal.

Needs root (network namespaces for nginx), Debian's pebble and nginx, and the certbot venv
(`python -m labs.cert_lab venv`, created on first use when missing).
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import boto3
import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from labs import iam_eval
from labs.cert_lab import (
    CERTBOT_WRITE_FILES,
    CREDENTIALS_PATH,
    DEPLOY_HOOK_PATH,
    ENV_FILE_PATH,
    ISSUE_SCRIPT_PATH,
    LAB_ENV_OVERRIDES,
    LETS_ENCRYPT_VALIDITY_SECONDS,
    PREFIXED_ENV_KEYS,
    SIGNING_REGION,
    CertLab,
    DnsAnswer,
    RunningScript,
    ScriptRun,
    cert_lab,
    certbot_venv_versions,
    cloud_init_files,
    ensure_certbot_venv,
    load_certificates,
    lock_digest,
    route53_endpoint_seen_by_certbot,
)
from labs.netns import lab_unavailable_reason
from plexcdn import render
from plexcdn.acme_dns_hook import Route53Record, read_record, swap_changes
from plexcdn.config import StackConfig, load_stack_file, parse_config
from tests.conftest import five_pop_values

EXAMPLE_STACK = Path(__file__).resolve().parents[2] / "Pulumi.dev.yaml"
POP = "us"
ROUTE53_NS = "{https://route53.amazonaws.com/doc/2013-04-01/}"


def _missing_tools() -> str | None:
    missing = [tool for tool in ("pebble", "nginx") if shutil.which(tool) is None]
    return f"needs {' and '.join(missing)} (Debian packages pebble, nginx)" if missing else None


pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(lab_unavailable_reason() is not None, reason=f"certificate lab: {lab_unavailable_reason()}"),
    pytest.mark.skipif(_missing_tools() is not None, reason=f"certificate lab: {_missing_tools()}"),
]


@dataclass
class IssuedLab:
    lab: CertLab
    issuance: ScriptRun
    dns_answers: list[DnsAnswer]
    txt_after: dict[str, list[str]]
    issuance_log: str


@pytest.fixture(scope="module")
def config() -> StackConfig:
    return load_stack_file(EXAMPLE_STACK)


@pytest.fixture(scope="module")
def issued(config: StackConfig) -> Iterator[IssuedLab]:
    """A lab whose POP has run its issuance script once, with nginx started on the result."""
    with cert_lab(config, POP, issue_attempts=2, issue_retry_seconds=1) as lab:
        run = lab.issue()
        if run.returncode != 0:
            pytest.fail(f"first issuance failed (exit {run.returncode}):\n{run.output}")
        answers = lab.dns.answers()
        txt_after = lab.moto.txt_records()
        issuance_log = lab.last_certbot_log()
        lab.start_nginx()
        yield IssuedLab(lab, run, answers, txt_after, issuance_log)


def _serial(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def _served_serial(lab: CertLab, name: str, port: int = 443) -> int:
    return lab.served_certificate(name, port).serial_number


def _wait_for_served_serial(lab: CertLab, name: str, serial: int, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    served = _served_serial(lab, name)
    while served != serial and time.monotonic() < deadline:
        time.sleep(0.1)
        served = _served_serial(lab, name)
    return served


def _challenge_changes(lab: CertLab) -> list[tuple[str, str, list[str]]]:
    """(action, record name, values) of every record change certbot sent, in order."""
    changes = []
    for request in lab.certbot_requests():
        if request.method != "POST" or not request.path.endswith(("/rrset", "/rrset/")):
            continue
        # Bodies certbot sent to the lab's own moto.
        for change in ElementTree.fromstring(request.body).iter(f"{ROUTE53_NS}Change"):  # noqa: S314
            record = change.find(f"{ROUTE53_NS}ResourceRecordSet")
            assert record is not None
            values = [value.text or "" for value in record.iter(f"{ROUTE53_NS}Value")]
            changes.append(
                (change.findtext(f"{ROUTE53_NS}Action", ""), record.findtext(f"{ROUTE53_NS}Name", ""), values)
            )
    return changes


def _read_response(connection: ssl.SSLSocket, timeout: float = 15) -> bytes:
    connection.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = connection.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_certbot_venv_has_the_pops_pinned_versions_and_honours_the_route53_endpoint(config: StackConfig) -> None:
    venv = ensure_certbot_venv()
    assert certbot_venv_versions(venv) == (render.CERTBOT_VERSION, render.CERTBOT_VERSION)
    first_boot = cloud_init_files(render.cloud_init(config, POP))[render.FIRST_BOOT_PATH].content
    assert f"--require-hashes --only-binary :all: -r {render.CERTBOT_LOCK_PATH}" in first_boot
    assert venv.name.endswith(lock_digest()), "the lab's certbot comes from the lock the POPs get"
    assert route53_endpoint_seen_by_certbot(venv, "http://127.0.0.1:9") == "http://127.0.0.1:9"


def test_lab_runs_the_rendered_files_and_differs_from_the_pop_only_in_its_env_values(issued: IssuedLab) -> None:
    lab = issued.lab
    rendered = cloud_init_files(lab.cloud_init())
    for pop_path in CERTBOT_WRITE_FILES:
        on_disk = lab.path(pop_path)
        assert on_disk.stat().st_mode & 0o777 == rendered[pop_path].permissions, pop_path
        if pop_path != ENV_FILE_PATH:
            assert on_disk.read_text() == rendered[pop_path].content, f"{pop_path} is not the rendered file"
    differences = lab.env_differences()
    assert set(differences) == set(PREFIXED_ENV_KEYS) | set(LAB_ENV_OVERRIDES)
    for key in PREFIXED_ENV_KEYS:
        pop_value, lab_value = differences[key]
        assert lab_value == str(lab.root) + pop_value
    # The credentials reach a POP on the stdin of a command, as the deploy sends them.
    assert CREDENTIALS_PATH not in rendered
    credentials = lab.path(CREDENTIALS_PATH)
    assert credentials.stat().st_mode & 0o777 == 0o600
    assert credentials.read_text() == lab.credentials and lab.access_key_id in lab.credentials


def test_first_issuance_puts_the_certificate_where_nginx_reads_it(issued: IssuedLab) -> None:
    lab = issued.lab
    assert f"plex-cdn: certificate {lab.cert_name} is in" in issued.issuance.stdout
    assert "attempt" not in issued.issuance.stderr, "the first attempt should have succeeded"
    paths = lab.tls_paths()
    assert paths["ssl_certificate"] == lab.live_dir / "fullchain.pem"
    assert paths["ssl_certificate_key"] == lab.live_dir / "privkey.pem"
    chain = load_certificates(paths["ssl_certificate"])
    leaf = chain[0]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sorted(names) == sorted(lab.certificate_names)
    assert lab.cert_name == lab.config.pop_name(POP)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert abs(lifetime.total_seconds() - LETS_ENCRYPT_VALIDITY_SECONDS) < 3600, "as Let's Encrypt issues"
    root = x509.load_pem_x509_certificate(lab.pebble.root_file.read_bytes())
    assert len(chain) >= 2
    leaf.verify_directly_issued_by(chain[1])
    chain[-1].verify_directly_issued_by(root)
    key = serialization.load_pem_private_key(paths["ssl_certificate_key"].read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == leaf.public_key()
    # The private key is root's alone: certbot keeps it 0600 in a 0700 archive.
    real_key = paths["ssl_certificate_key"].resolve()
    assert real_key.stat().st_mode & 0o077 == 0, oct(real_key.stat().st_mode)
    assert (lab.letsencrypt_dir / "archive").stat().st_mode & 0o777 == 0o700
    assert (lab.letsencrypt_dir / "live").stat().st_mode & 0o777 == 0o700
    renewal_conf = (lab.letsencrypt_dir / "renewal" / f"{lab.cert_name}.conf").read_text()
    # Renewals run the same hooks: certbot keeps them in the renewal config.
    hook = f"{lab.path('/opt/certbot/bin/python3')} {lab.path(render.ACME_DNS_HOOK_PATH)}"
    assert "authenticator = manual" in renewal_conf
    assert f"manual_auth_hook = {hook} auth" in renewal_conf
    assert f"manual_cleanup_hook = {hook} cleanup" in renewal_conf
    assert "pref_challs = dns-01," in renewal_conf
    # certbot 5.8 runs the deploy hook after the first issuance too. nginx is not up yet in the lab
    # then, so that run fails, and certbot only warns: a hook cannot cost a POP its certificate.
    assert f"Running deploy-hook command: {lab.path(DEPLOY_HOOK_PATH)}" in issued.issuance_log
    assert issued.issuance.returncode == 0


def test_challenge_records_are_published_during_issuance_and_removed_after(issued: IssuedLab) -> None:
    lab = issued.lab
    changes = _challenge_changes(lab)
    for name in lab.certificate_names:
        record = f"_acme-challenge.{name}"
        actions = [action for action, changed, _ in changes if changed.rstrip(".") == record]
        # Alone, the POP creates the record and deletes it again; it never overwrites it (UPSERT).
        assert actions == ["CREATE", "DELETE"], f"{record}: {actions}"
        published = next(values for action, changed, values in changes if changed.rstrip(".") == record)
        answered = [answer for answer in issued.dns_answers if answer.name == record and answer.record_type == "TXT"]
        assert answered, f"Pebble never asked the lab DNS for {record}"
        # What Pebble's validator was told is what certbot wrote to Route53.
        assert any(f'"{value}"' in published for answer in answered for value in answer.values), (
            f"{record}: answered {answered}, published {published}"
        )
        assert record not in issued.txt_after, f"{record} was left in the zone"


def test_nginx_serves_the_chain_pebble_issued_for_every_name(issued: IssuedLab) -> None:
    lab = issued.lab
    issued_leaf = lab.live_certificate()
    for name in lab.certificate_names:
        # Verified against Pebble's root alone: the handshake passes only if nginx sends the intermediate.
        with lab.connect(name) as connection:
            der = connection.getpeercert(binary_form=True)
            assert connection.version() in ("TLSv1.2", "TLSv1.3")
        assert der == issued_leaf.public_bytes(serialization.Encoding.DER)
    # The hub's peer port serves the stack's own peer certificate instead: the backbone never needs Let's Encrypt.
    with pytest.raises(ssl.SSLCertVerificationError):
        lab.connect(lab.cert_name, port=render.PEER_PORT)
    peer_certificate = (lab.nginx_dir / render.PEER_SERVER_CERT_FILE).read_bytes()
    assert x509.load_pem_x509_certificate(peer_certificate).issuer == lab.peer_ca.root.subject


def test_forced_renewal_reloads_nginx_with_the_new_certificate_without_dropping_a_connection(
    issued: IssuedLab,
) -> None:
    lab = issued.lab
    name = lab.config.shared_name
    before = lab.live_certificate()
    assert _wait_for_served_serial(lab, name, before.serial_number) == before.serial_number
    master = lab.nginx
    assert master is not None and master.poll() is None
    held = lab.connect(name)
    try:
        # A request under way: its headers are not finished, so the old worker must keep it.
        held.sendall(f"GET /library/sections HTTP/1.1\r\nHost: {name}\r\n".encode())
        renewal = lab.renew(force=True)
        assert renewal.returncode == 0, renewal.output
        after = lab.live_certificate()
        assert after.serial_number != before.serial_number
        served = _wait_for_served_serial(lab, name, after.serial_number)
        assert served == after.serial_number, f"nginx still serves {served:x}, renewed {_serial(after)}"
        held_der = held.getpeercert(binary_form=True)
        assert held_der == before.public_bytes(serialization.Encoding.DER)
        held.sendall(b"Connection: close\r\n\r\n")
        response = _read_response(held)
    finally:
        held.close()
    # The upstream is absent, so the answer is the POP's own 502 page: proof the connection lived.
    assert response.startswith(b"HTTP/1.1 502"), response[:200]
    assert f"plex-cdn POP {POP}".encode() in response
    assert master.poll() is None, "the nginx master must survive a reload"
    log = lab.last_certbot_log()
    assert f"Running deploy-hook command: {lab.path(DEPLOY_HOOK_PATH)}" in log
    assert "reported error code" not in log


def test_renewal_with_a_broken_nginx_config_keeps_serving_the_old_certificate(issued: IssuedLab) -> None:
    lab = issued.lab
    name = lab.cert_name
    served_before = _served_serial(lab, name)
    maps = lab.nginx_dir / "plexcdn-maps.conf"
    original = maps.read_text()
    maps.write_text(original + "\nplexcdn_not_a_directive on;\n")
    try:
        renewal = lab.renew(force=True)
    finally:
        maps.write_text(original)
    renewed = lab.live_certificate()
    assert renewed.serial_number != served_before, "certbot should still have renewed"
    log = lab.last_certbot_log()
    assert "Hook 'deploy-hook' reported error code 1" in log
    report = renewal.output + log
    assert "nginx -t failed, so nginx was not reloaded" in report
    assert "plexcdn_not_a_directive" in report, "the hook should say what nginx -t found"
    for _ in range(5):
        assert _served_serial(lab, name) == served_before
        time.sleep(0.1)
    assert lab.nginx is not None and lab.nginx.poll() is None


def test_policy_allows_every_request_certbot_made_and_denies_wider_changes(issued: IssuedLab) -> None:
    lab = issued.lab
    policy = lab.policy()
    recorded = lab.certbot_requests()
    judged = [iam_eval.route53_request(r.method, r.path, r.body) for r in recorded]
    actions = {request.action for request in judged}
    assert {
        "route53:ListHostedZones",
        "route53:ListResourceRecordSets",
        "route53:ChangeResourceRecordSets",
        "route53:GetChange",
    } <= actions
    refused = [request.describe() for request in judged if not iam_eval.is_allowed(policy, request)]
    assert refused == []

    zone = lab.zone_id
    assert zone is not None
    record = f"_acme-challenge.{lab.config.shared_name}".encode()
    change = next(r for r in recorded if r.method == "POST" and "/rrset" in r.path and record in r.body)
    mutated = {
        "another name": (change.path, change.body.replace(record, b"_acme-challenge.www.example.com")),
        "the viewers' record itself": (change.path, change.body.replace(record, lab.config.shared_name.encode())),
        "another record type": (change.path, change.body.replace(b"<Type>TXT</Type>", b"<Type>A</Type>")),
        "another zone": (change.path.replace(zone, "Z0THERZONE"), change.body),
        "UPSERT instead of CREATE": (
            change.path,
            re.sub(rb"<Action>\w+</Action>", b"<Action>UPSERT</Action>", change.body),
        ),
    }
    for label, (path, body) in mutated.items():
        assert (path, body) != (change.path, change.body), label
        request = iam_eval.route53_request("POST", path, body)
        assert iam_eval.evaluate(policy, request) == "ImplicitDeny", f"{label}: {request.describe()}"
    mixed = iam_eval.route53_change_request(
        zone, [("DELETE", f"_acme-challenge.{lab.config.shared_name}", "TXT"), ("CREATE", lab.config.shared_name, "A")]
    )
    assert not iam_eval.is_allowed(policy, mixed), "one allowed change must not carry another"
    no_keys = iam_eval.Request("route53:ChangeResourceRecordSets", iam_eval.zone_arn(zone))
    assert not iam_eval.is_allowed(policy, no_keys), "the Null guard must refuse a change without condition keys"
    assert not iam_eval.is_allowed(policy, iam_eval.Request("route53:DeleteHostedZone", iam_eval.zone_arn(zone)))


def test_issuance_retries_until_the_zone_appears(config: StackConfig) -> None:
    with cert_lab(config, POP, zone_at_start=False, issue_attempts=4, issue_retry_seconds=2) as lab:
        script = lab.start_issue()
        script.wait_for_line(r"attempt 1 for \S+ failed; retrying in [\d.]+ s", timeout=90)
        lab.create_zone()
        run = script.finish(timeout=120)
        assert run.returncode == 0, run.output
        retries = re.findall(r"attempt \d+ for \S+ failed", run.stderr)
        assert 1 <= len(retries) < 4
        assert re.search(r"no Route53 hosted zone holds _acme-challenge\.", run.output), run.output
        # The hook looked for the zone first: certbot, and with it Let's Encrypt, only saw the attempt that worked.
        assert lab.certbot_runs() == 1
        assert (lab.live_dir / "fullchain.pem").exists()


def test_issuance_gives_up_after_issue_attempts_when_the_zone_never_appears(config: StackConfig) -> None:
    with cert_lab(config, POP, zone_at_start=False, issue_attempts=3, issue_retry_seconds=1) as lab:
        run = lab.issue(timeout=120)
        domains = ",".join(config.certificate_names(POP))
        assert run.returncode == 1, run.output
        assert f"plex-cdn: no certificate for {domains} after 3 attempts; giving up" in run.stderr
        retries = re.findall(r"attempt (\d+) for \S+ failed; retrying in (\d+\.\d+) s", run.stderr)
        assert [attempt for attempt, _ in retries] == ["1", "2"]
        # ISSUE_RETRY_SECONDS times the attempt, plus a random share of up to as much again.
        assert all(int(attempt) <= float(pause) <= 2 * int(attempt) for attempt, pause in retries), retries
        assert lab.certbot_runs() == 0, "certbot never ran: there was no zone to write the challenge to"
        assert not lab.live_dir.exists()
        assert str(lab.path(ISSUE_SCRIPT_PATH)) in run.stderr, "the message says what to run again"


def test_lab_servers_stop_when_the_lab_closes(config: StackConfig) -> None:
    with cert_lab(config, POP) as lab:
        moto, pebble = lab.moto.process, lab.pebble.process
        dns_port = lab.dns.port
    assert moto is not None and moto.poll() is not None
    assert pebble is not None and pebble.poll() is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", dns_port))


# --- POPs validating the shared name at the same time -----------------------------------------------------

CONCURRENT_POPS = ("us", "eu", "asia", "sg")
ROUNDS = 3


@dataclass
class ConcurrentRound:
    runs: dict[str, ScriptRun]
    shared_answers: list[DnsAnswer]
    challenge_records_after: dict[str, list[str]]
    conflicts: int


def _concurrent_config() -> StackConfig:
    values = five_pop_values()
    values["pops"] = [pop for pop in values["pops"] if pop["name"] in CONCURRENT_POPS]
    return parse_config(values, "dev")


def _run_together(lab: CertLab, start: Callable[[str], RunningScript]) -> ConcurrentRound:
    """Every POP's script started back to back (certbot takes seconds to start, so their work overlaps)."""
    asked_before = len(lab.dns.answers())
    running = {pop: start(pop) for pop in CONCURRENT_POPS}
    runs = {pop: script.finish(timeout=300) for pop, script in running.items()}
    shared = f"_acme-challenge.{lab.config.shared_name}"
    answers = [a for a in lab.dns.answers()[asked_before:] if a.name == shared and a.record_type == "TXT"]
    conflicts = sum(lab.last_certbot_log(pop).count("changed while this host wrote it") for pop in CONCURRENT_POPS)
    challenge = {name: v for name, v in lab.moto.txt_records().items() if name.startswith("_acme-challenge.")}
    return ConcurrentRound(runs, answers, challenge, conflicts)


def _assert_round(lab: CertLab, label: str, result: ConcurrentRound, before: dict[str, int]) -> None:
    for pop, run in result.runs.items():
        assert run.returncode == 0, f"{label}, POP {pop}:\n{run.output}\n{lab.last_certbot_log(pop)[-4000:]}"
        leaf = load_certificates(lab.live_dir_of(pop) / "cert.pem")[0]
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(names.get_values_for_type(x509.DNSName)) == sorted(lab.config.certificate_names(pop))
        assert leaf.serial_number != before.get(pop), f"{label}: POP {pop} kept its old certificate"
    assert result.challenge_records_after == {}, f"{label}: challenge values were left behind"
    assert result.shared_answers, f"{label}: Pebble never asked for the shared name's challenge"


def _serials(lab: CertLab) -> dict[str, int]:
    serials = {}
    for pop in CONCURRENT_POPS:
        cert = lab.live_dir_of(pop) / "cert.pem"
        if cert.exists():
            serials[pop] = load_certificates(cert)[0].serial_number
    return serials


def test_pops_issue_and_renew_at_the_same_time_without_taking_each_others_challenge() -> None:
    config = _concurrent_config()
    rounds: list[ConcurrentRound] = []
    with cert_lab(config, CONCURRENT_POPS[0], issue_attempts=2, issue_retry_seconds=1) as lab:
        for pop in CONCURRENT_POPS[1:]:
            lab.add_pop(pop)
        for number in range(1, ROUNDS + 1):
            # A fresh start each round, as on a first boot: no ACME account, no certificate.
            for pop in CONCURRENT_POPS:
                for state in ("accounts", "archive", "live", "renewal"):
                    shutil.rmtree(lab.path(f"/etc/letsencrypt/{state}", pop), ignore_errors=True)
            before = _serials(lab)
            result = _run_together(lab, lab.start_issue)
            _assert_round(lab, f"issuance round {number}", result, before)
            for pop, run in result.runs.items():
                assert "plex-cdn: attempt" not in run.stderr, f"round {number}, POP {pop} needed a second attempt"
            rounds.append(result)
        # Renewal runs the hooks certbot stored in each renewal config.
        before = _serials(lab)
        renewal = _run_together(lab, lambda pop: lab.start_renew(force=True, pop=pop))
        _assert_round(lab, "forced renewal", renewal, before)
        rounds.append(renewal)
        policy = lab.policy()
        judged = [iam_eval.route53_request(r.method, r.path, r.body) for r in lab.certbot_requests()]
        assert [request.describe() for request in judged if not iam_eval.is_allowed(policy, request)] == []
    # Pebble saw other POPs' values beside a POP's own: the POPs did validate the shared name at the same time.
    most = max(len(answer.values) for result in rounds for answer in result.shared_answers)
    assert most >= 2, f"the POPs never overlapped; at most {most} value(s) at a time"
    print(
        "concurrent rounds: "
        + "; ".join(
            f"{max(len(a.values) for a in r.shared_answers)} values at most, {r.conflicts} swaps retried, "
            f"{max(run.seconds for run in r.runs.values()):.1f} s"
            for r in rounds
        )
    )


def test_a_lost_update_is_refused_by_the_labs_route53_and_the_hook_retries_it(config: StackConfig) -> None:
    with cert_lab(config, POP) as lab:
        assert lab.zone_id is not None
        route53 = boto3.client(
            "route53",
            endpoint_url=lab.moto.url,
            region_name=SIGNING_REGION,
            aws_access_key_id=lab.access_key_id,
            aws_secret_access_key=lab.secret_access_key,
        )
        name = f"_acme-challenge.{config.shared_name}"
        first = Route53Record(route53, lab.zone_id, name, log=lambda _: None)
        first.add('"old"')
        # Two writers read {"old"}; each swaps it for the set with its own value added.
        read = read_record(route53, lab.zone_id, name)
        batches = [swap_changes(name, read, [*(read.values if read else ()), value]) for value in ('"a"', '"b"')]
        route53.change_resource_record_sets(HostedZoneId=lab.zone_id, ChangeBatch={"Changes": batches[0]})
        with pytest.raises(ClientError) as lost:
            route53.change_resource_record_sets(HostedZoneId=lab.zone_id, ChangeBatch={"Changes": batches[1]})
        assert lost.value.response["Error"]["Code"] == "InvalidChangeBatch"
        assert "do not match the current values" in lost.value.response["Error"]["Message"]
        assert sorted(lab.moto.txt_records()[name]) == ['"a"', '"old"']

        # The hook, when another host writes between its read and its write, reads again and retries.
        class Interloper:
            def __init__(self) -> None:
                self.pending = ['"c"']

            def list_resource_record_sets(self, **kwargs: Any) -> Any:
                answer = route53.list_resource_record_sets(**kwargs)
                if self.pending:
                    Route53Record(route53, lab.zone_id or "", name, log=lambda _: None).add(self.pending.pop())
                return answer

            def __getattr__(self, attribute: str) -> Any:
                return getattr(route53, attribute)

        logged: list[str] = []
        pauses: list[float] = []
        racing = Route53Record(Interloper(), lab.zone_id, name, sleep=pauses.append, log=logged.append)
        assert racing.add('"b"') is not None
        assert len(pauses) == 1 and "do not match the current values" in logged[0]
        assert sorted(lab.moto.txt_records()[name]) == ['"a"', '"b"', '"c"', '"old"']
