"""`python -m plexcdn status` without a network: reading the POPs' access logs and answers, Plex's sessions from
the stand-in's API, attribution, and the text and JSON reports. tests/lab/test_status.py runs it for real."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from labs import plex_standin
from labs.plex_standin import BackgroundOrigin, LabSession, OriginSettings, make_media_file
from plexcdn import status
from plexcdn.config import HOME_LAN_RANGES, parse_config
from tests.conftest import example_values
from tests.test_certificate_check import run_check, self_signed_certificate

NOW = datetime.datetime(2026, 8, 1, 12, 0, tzinfo=datetime.UTC)
TOKEN = "status-owner-token-9d2e"


def log_line(client: str, port: int = 443, minutes_ago: float = 1, path: str = "/library/parts/1/file.mkv") -> str:
    """A line in the POPs' access log format (templates/nginx/nginx.conf.j2)."""
    when = (NOW - datetime.timedelta(minutes=minutes_ago)).isoformat()
    return (
        f'198.18.0.1 [{when}] "GET {path} HTTP/1.1" 206 65536 rt=0.010 token=yes conn=7 req=3 '
        "up=198.18.0.6:8443 ups=206 urt=0.009 cache=- tls=TLSv1.3 reused=. "
        f'ua="Mozilla/5.0 \\x22cid=\\x22fake\\x22" port={port} cid="{client}"'
    )


def options(**changes: Any) -> status.StatusOptions:
    return status.StatusOptions(now=NOW, **changes)


def test_the_access_log_gives_each_line_its_client_port_and_time() -> None:
    text = "\n".join(
        [
            log_line("web-1"),
            log_line("-"),  # no client named: a health check
            log_line("tv%2F2", port=8443),  # a query parameter arrives URL-encoded
            log_line("odd\\x22id"),  # nginx escapes a quote
            "an older line without the fields",
        ]
    )
    lines = status.parse_access_log(text)
    assert [(line.client_id, line.port) for line in lines] == [("web-1", 443), ("tv/2", 8443), ('odd"id', 443)]
    assert lines[0].time == NOW - datetime.timedelta(minutes=1)


def test_only_recent_lines_count() -> None:
    text = "\n".join([log_line("old", minutes_ago=30), log_line("new", minutes_ago=2)])
    recent: Any = status.ACCESS_LOG_CHECK.parse(text, 0, options(window=datetime.timedelta(minutes=15)))
    assert [line.client_id for line in recent] == ["new"]


def test_the_composite_command_keeps_each_checks_output_and_exit_status(tmp_path: Path) -> None:
    """The remote command, run by a real shell here: each check's section comes back with its own status."""
    log = tmp_path / "pops" / "edge" / "var" / "log" / "nginx" / "access.log"
    log.parent.mkdir(parents=True)
    log.write_text(log_line("web-1") + "\n")
    certificate = self_signed_certificate(tmp_path, days=40)
    state_dir = tmp_path / "pops" / "edge" / "var" / "lib" / "plex-cdn"
    checked = run_check(certificate, state_dir)
    assert checked.returncode == 0, checked.stderr
    opts = options(pop_prefix=str(tmp_path / "pops" / "{pop}"))
    command = status._composite(status.POP_CHECKS, opts, "edge")
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False, timeout=30)
    sections = status._sections(result.stdout)
    assert set(sections) == {"release", "certificate", "accessLog"}
    assert sections["release"][1] != 0, "nothing answers on port 80 here"
    assert sections["accessLog"] == (log_line("web-1"), 0)
    state: Any = status.CERTIFICATE_CHECK.parse(
        *sections["certificate"], status.StatusOptions(now=datetime.datetime.now(datetime.UTC))
    )
    assert state.days_left in (39, 40)
    assert status.CERTIFICATE_CHECK.show(state).startswith(f"certificate until {state.not_after:%Y-%m-%d} (")
    with pytest.raises(status.CheckFailedError, match="does not answer"):
        status.RELEASE_CHECK.parse(*sections["release"], opts)


def pop(name: str, role: str, lines: list[str] | None) -> status.PopHealth:
    health = status.PopHealth(name, role, f"192.0.2.{len(name)}", reachable=lines is not None)
    if lines is not None:
        health.values["accessLog"] = status.parse_access_log("\n".join(lines))
        health.values["release"] = "0123456789abcdef"
    else:
        health.error = "ssh: connect to host 192.0.2.4 port 22: Connection timed out"
    return health


def session(client: str, address: str, **changes: Any) -> status.PlexSession:
    values: dict[str, Any] = {
        "user": "alice",
        "client_id": client,
        "product": "Plex Web",
        "device": "Chrome",
        "address": address,
        "local": False,
        "relayed": False,
        "decision": "direct play",
        "bitrate_kbps": 20000,
        "title": "Lab Movie",
    }
    values.update(changes)
    return status.PlexSession(**values)


def test_a_session_is_attributed_to_the_pop_it_entered_not_the_hub_that_relayed_it() -> None:
    pops = [
        pop("us", "hub", [log_line("web-1", port=8443), log_line("hub-viewer")]),
        pop("asia", "edge", [log_line("web-1", minutes_ago=3)]),
    ]
    assert status.attribute(session("web-1", "198.18.0.1"), pops) == status.Route(
        "pop", "asia", "through POP asia (edge)"
    )
    assert status.attribute(session("hub-viewer", "203.0.113.5"), pops).pop == "us"
    only_hub = [pops[0], pop("asia", "edge", [])]
    route = status.attribute(session("web-1", "198.18.0.1"), only_hub)
    assert route.pop == "us" and "relayed" in route.detail


def test_sessions_not_seen_at_any_pop_bypass_and_unread_pops_leave_it_open() -> None:
    pops = [pop("us", "hub", [log_line("web-1")]), pop("asia", "edge", [])]
    lan = status.attribute(session("tv", "192.168.1.50", local=True), pops)
    assert lan.kind == "bypass" and "on your LAN" in lan.detail
    direct = status.attribute(session("phone", "203.0.113.9"), pops)
    assert direct.kind == "bypass" and "direct to your home address" in direct.detail
    relay = status.attribute(session("laptop", "203.0.113.9", relayed=True), pops)
    assert relay.kind == "plex-relay"
    unread = status.attribute(session("phone", "203.0.113.9"), [pops[0], pop("asia", "edge", None)])
    assert unread.kind == "unknown" and "asia could not be" in unread.detail


def test_the_report_lists_pops_first_then_sessions_in_text_and_json() -> None:
    pops = [pop("us", "hub", [log_line("web-1")]), pop("asia", "edge", None)]
    report = status.StatusReport(pops, "the Plex host over SSH (root@192.168.1.10)")
    report.sessions = [
        (s, status.attribute(s, pops))
        for s in (
            session("web-1", "198.18.0.1"),
            session("tv", "192.168.1.50", local=True, decision="transcode", bitrate_kbps=8000),
        )
    ]
    text = status.report_text(report)
    lines = text.splitlines()
    assert lines[0] == "POPs" and lines[1].startswith("  us ") and "release 0123456789abcdef" in lines[1]
    assert "UNREACHABLE: ssh: connect to host" in lines[2]
    assert lines[3].startswith("Sessions (2, from the Plex host over SSH")
    assert "through POP us (hub)" in lines[4] and "20.0 Mbit/s" in lines[4] and "direct play" in lines[4]
    assert "BYPASSES the CDN" in lines[5] and "transcode" in lines[5] and "8.0 Mbit/s" in lines[5]
    assert not report.complete, "an unreachable POP makes the exit status 1"
    document: Any = status.report_json(report)
    assert [p["name"] for p in document["pops"]] == ["us", "asia"]
    assert document["pops"][0]["checks"]["release"] == {"ok": True, "value": "0123456789abcdef"}
    assert document["pops"][1]["reachable"] is False
    routes = [(s["clientId"], s["route"], s["pop"]) for s in document["sessions"]]
    assert routes == [("web-1", "pop", "us"), ("tv", "bypass", None)]
    json.dumps(document)


def test_the_stack_outputs_must_give_each_pops_address_and_host_key() -> None:
    config = parse_config(example_values(), "dev")
    with pytest.raises(status.StatusError, match="no `pops`"):
        status.pop_targets(config, {})
    outputs = {"pops": {"us": {"ipv4": "198.51.100.1", "hostKey": "ssh-ed25519 AAAA"}, "asia": {"ipv4": "x"}}}
    with pytest.raises(status.StatusError, match="no hostKey for POP asia"):
        status.pop_targets(config, outputs)
    outputs["pops"]["asia"]["hostKey"] = "ssh-ed25519 BBBB"
    targets = status.pop_targets(config, outputs)
    assert [(t.name, t.role, t.address) for t in targets] == [("us", "hub", "198.51.100.1"), ("asia", "edge", "x")]


@pytest.fixture
def origin(tmp_path: Path) -> Any:
    media = tmp_path / "media.mkv"
    make_media_file(media, 1024)
    with BackgroundOrigin(OriginSettings(media=media, headers_log=tmp_path / "h.jsonl", token=TOKEN)) as running:
        yield running


def test_sessions_from_plexs_api_with_the_owners_token(origin: Any) -> None:
    request = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-H",
            "X-Plex-Client-Identifier: web-1",
            "-H",
            "X-Forwarded-For: 198.18.0.1",
            f"{origin.url}/library/parts/1/file.mkv",
        ],
        check=True,
        timeout=30,
    )
    assert request.returncode == 0
    origin.sessions.put(
        LabSession(
            client_id="tv-1",
            user="bob",
            address="192.168.1.50",
            product="Plex for LG",
            platform="webOS",
            device="Living room",
            local=True,
            secure=True,
            transcode=True,
            bitrate_kbps=8000,
        )
    )
    sessions = {s.client_id: s for s in status.sessions_with_token(origin.url, TOKEN)}
    assert sessions["web-1"].address == "198.18.0.1", "Plex takes X-Forwarded-For from a private peer"
    assert sessions["web-1"].decision == "direct play" and not sessions["web-1"].local
    assert sessions["tv-1"].decision == "transcode" and sessions["tv-1"].bitrate_kbps == 8000
    assert sessions["tv-1"].user == "bob" and sessions["tv-1"].local
    with pytest.raises(status.StatusError, match="HTTP 401"):
        status.sessions_with_token(origin.url, "a-wrong-token")


def test_the_token_never_crosses_plain_http_to_a_public_address() -> None:
    with pytest.raises(status.StatusError, match="plain HTTP to a private address only"):
        status.sessions_with_token("http://203.0.113.5:32400", TOKEN)


def test_the_plex_stand_in_counts_as_local_the_networks_the_program_does() -> None:
    assert plex_standin.HOME_LAN_RANGES == HOME_LAN_RANGES


def test_a_certificate_under_two_weeks_is_shown_as_a_failing_renewal() -> None:
    now = datetime.datetime(2027, 3, 1, tzinfo=datetime.UTC)
    written = json.dumps({"notAfter": "2027-03-11T12:00:00Z", "daysLeft": 10, "checkedAt": "2027-03-01T00:00:00Z"})
    state: Any = status.CERTIFICATE_CHECK.parse(written, 0, status.StatusOptions(now=now))
    assert state.days_left == 10
    assert "renewal is failing" in status.CERTIFICATE_CHECK.show(state)
    assert status.CERTIFICATE_CHECK.to_json(state) == {"notAfter": "2027-03-11T12:00:00Z", "daysLeft": 10}
    with pytest.raises(status.CheckFailedError, match="cannot be read"):
        status.CERTIFICATE_CHECK.parse(
            json.dumps({"error": "cannot read x", "checkedAt": "x"}), 0, status.StatusOptions(now=now)
        )
    with pytest.raises(status.CheckFailedError, match="no certificate check yet"):
        status.CERTIFICATE_CHECK.parse(
            "cat: certificate.json: No such file or directory", 1, status.StatusOptions(now=now)
        )
