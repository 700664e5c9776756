"""The ACME DNS hook's compare-and-swap on Route53, against moto with Route53's change-batch rules.

moto runs in this process here (`mock_aws`); the certificate lab runs the same hook, rendered onto a
POP's files, through certbot against moto's server.
"""

from __future__ import annotations

import ast
import random
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.route53.models import Route53Backend

from labs import moto_route53
from plexcdn import acme_dns_hook, render
from plexcdn.acme_dns_hook import HookError, Route53Record, TxtRecord, read_record, swap_changes
from plexcdn.config import parse_config
from tests.conftest import five_pop_values

DOMAIN = "example.com"
NAME = "_acme-challenge.plex.example.com"


@pytest.fixture
def route53(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An in-process Route53 (moto) that follows Route53's change-batch rules."""
    monkeypatch.setattr(Route53Backend, "change_resource_record_sets", moto_route53.change_resource_record_sets)
    with mock_aws():
        yield boto3.client("route53", region_name="us-east-1")


@pytest.fixture
def zone(route53: Any) -> str:
    zone_id = route53.create_hosted_zone(Name=DOMAIN, CallerReference=f"test-{time.monotonic_ns()}")["HostedZone"]["Id"]
    return str(zone_id).removeprefix("/hostedzone/")


def _record(route53: Any, zone_id: str, **settings: Any) -> Route53Record:
    quiet: dict[str, Any] = {"sleep": lambda _: None, "log": lambda _: None}
    return Route53Record(route53, zone_id, NAME, **(quiet | settings))


def _change(route53: Any, zone_id: str, *changes: tuple[str, list[str]]) -> None:
    route53.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": action,
                    "ResourceRecordSet": {
                        "Name": NAME,
                        "Type": "TXT",
                        "TTL": 10,
                        "ResourceRecords": [{"Value": value} for value in values],
                    },
                }
                for action, values in changes
            ]
        },
    )


def _values(route53: Any, zone_id: str) -> list[str] | None:
    record = read_record(route53, zone_id, NAME)
    return None if record is None else sorted(record.values)


def test_moto_alone_lets_a_stale_delete_through_and_loses_an_update() -> None:
    """Why the lab installs Route53's rules: without them the hook's compare-and-swap could not fail."""
    with mock_aws():
        client = boto3.client("route53", region_name="us-east-1")
        zone_id = client.create_hosted_zone(Name=DOMAIN, CallerReference="plain")["HostedZone"]["Id"]
        _change(client, zone_id, ("CREATE", ['"a"']))
        # Two writers read {"a"}; each swaps it for its own superset.
        _change(client, zone_id, ("DELETE", ['"a"']), ("CREATE", ['"a"', '"b"']))
        _change(client, zone_id, ("DELETE", ['"a"']), ("CREATE", ['"a"', '"c"']))
        assert _values(client, zone_id) == ['"a"', '"c"'], "moto 5.2.5 no longer loses the update: drop the patch"


def test_a_delete_must_match_the_current_record_exactly(route53: Any, zone: str) -> None:
    _change(route53, zone, ("CREATE", ['"a"']))
    _change(route53, zone, ("DELETE", ['"a"']), ("CREATE", ['"a"', '"b"']))
    with pytest.raises(ClientError) as stale:
        _change(route53, zone, ("DELETE", ['"a"']), ("CREATE", ['"a"', '"c"']))
    assert stale.value.response["Error"]["Code"] == "InvalidChangeBatch"
    assert stale.value.response["Error"]["Message"] == (
        f"Tried to delete resource record set [name='{NAME}.', type='TXT'] but the values provided do not match "
        "the current values"
    )
    assert _values(route53, zone) == ['"a"', '"b"'], "a refused batch changes nothing"
    # Values are a set: the order they are given in does not matter.
    _change(route53, zone, ("DELETE", ['"b"', '"a"']))
    assert _values(route53, zone) is None
    with pytest.raises(ClientError, match="but it was not found"):
        _change(route53, zone, ("DELETE", ['"a"']))


def test_a_create_fails_when_the_record_exists_and_a_batch_is_all_or_nothing(route53: Any, zone: str) -> None:
    _change(route53, zone, ("CREATE", ['"a"']))
    with pytest.raises(ClientError, match="but it already exists"):
        _change(route53, zone, ("CREATE", ['"b"']))
    # The DELETE would pass on its own; the CREATE after it fails, so neither happens.
    with pytest.raises(ClientError, match="but it already exists"):
        _change(route53, zone, ("DELETE", ['"a"']), ("CREATE", ['"b"']), ("CREATE", ['"c"']))
    assert _values(route53, zone) == ['"a"']
    # A CREATE of a set the zone held before, once a DELETE in the same batch removed it, is fine.
    _change(route53, zone, ("DELETE", ['"a"']), ("CREATE", ['"a"', '"b"']))
    _change(route53, zone, ("DELETE", ['"a"', '"b"']), ("CREATE", ['"a"']))
    assert _values(route53, zone) == ['"a"']


def test_swap_changes_delete_what_was_read_and_create_what_is_wanted() -> None:
    current = TxtRecord(300, ('"a"',))
    assert [change["Action"] for change in swap_changes(NAME, current, ['"a"', '"b"'])] == ["DELETE", "CREATE"]
    delete, create = swap_changes(NAME, current, ['"a"', '"b"'])
    assert delete["ResourceRecordSet"]["TTL"] == 300, "a DELETE matches the record as it is, TTL included"
    assert create["ResourceRecordSet"]["TTL"] == acme_dns_hook.CHALLENGE_TTL
    assert [change["Action"] for change in swap_changes(NAME, None, ['"a"'])] == ["CREATE"]
    assert [change["Action"] for change in swap_changes(NAME, current, [])] == ["DELETE"]


def test_hosts_add_their_values_beside_each_other_and_remove_only_their_own(route53: Any, zone: str) -> None:
    first, second = _record(route53, zone), _record(route53, zone)
    assert first.add('"a"') is not None
    assert second.add('"b"') is not None
    assert first.add('"a"') is None, "adding a value the record holds changes nothing"
    assert _values(route53, zone) == ['"a"', '"b"']
    assert first.remove('"a"') is not None
    assert _values(route53, zone) == ['"b"']
    assert first.remove('"a"') is None, "removing a value that is gone changes nothing"
    assert second.remove('"b"') is not None
    assert _values(route53, zone) is None, "the last value out removes the record"


class _Interloper:
    """Route53 as another host sees it too: after this host reads the record, the other host writes it."""

    def __init__(self, route53: Any, zone_id: str, writes: int) -> None:
        self.route53 = route53
        self.zone_id = zone_id
        self.writes_left = writes
        self.refusals: list[str] = []
        self.other = _record(route53, zone_id)

    def list_resource_record_sets(self, **kwargs: Any) -> Any:
        answer = self.route53.list_resource_record_sets(**kwargs)
        if self.writes_left > 0:
            self.writes_left -= 1
            self.other.add(f'"other-{self.writes_left}"')
        return answer

    def change_resource_record_sets(self, **kwargs: Any) -> Any:
        try:
            return self.route53.change_resource_record_sets(**kwargs)
        except ClientError as error:
            self.refusals.append(error.response["Error"]["Message"])
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.route53, name)


def test_a_lost_update_is_refused_and_retried_after_a_random_pause(route53: Any, zone: str) -> None:
    for existing in (None, '"old"'):
        if existing is not None:
            _change(route53, zone, ("CREATE", [existing]))
        interloper = _Interloper(route53, zone, writes=2)
        pauses: list[float] = []
        logged: list[str] = []
        record = _record(interloper, zone, sleep=pauses.append, log=logged.append)
        assert record.add('"mine"') is not None
        # The other host's first write lands between this host's read and its write.
        first_refusal = "but it already exists" if existing is None else "do not match the current values"
        assert first_refusal in interloper.refusals[0]
        assert len(interloper.refusals) == 2 and len(pauses) == 2
        base = acme_dns_hook.BACKOFF_BASE_SECONDS
        assert all(0 <= pause <= base * 2**attempt for attempt, pause in enumerate(pauses, 1)), pauses
        assert all("changed while this host wrote it" in line for line in logged)
        values = _values(route53, zone)
        assert values is not None and '"mine"' in values and '"other-1"' in values and '"other-0"' in values
        for value in values:
            _record(route53, zone).remove(value)


def test_retries_are_bounded_and_say_why_they_stopped(route53: Any, zone: str) -> None:
    pauses: list[float] = []
    interloper = _Interloper(route53, zone, writes=acme_dns_hook.MAX_ATTEMPTS)
    record = _record(interloper, zone, sleep=pauses.append)
    with pytest.raises(HookError, match=f"{acme_dns_hook.MAX_ATTEMPTS} attempts to add its value were refused"):
        record.add('"mine"')
    assert len(pauses) == acme_dns_hook.MAX_ATTEMPTS - 1
    assert max(pauses) <= acme_dns_hook.BACKOFF_CAP_SECONDS
    values = _values(route53, zone)
    assert values is not None and '"mine"' not in values


def test_other_refusals_are_not_retried(route53: Any, zone: str) -> None:
    pauses: list[float] = []
    record = Route53Record(route53, zone, "_acme-challenge.plex.example.org", sleep=pauses.append)
    with pytest.raises(ClientError, match="not permitted in zone"):
        record.add('"mine"')
    assert pauses == []


def test_concurrent_hosts_all_keep_their_values(route53: Any, zone: str) -> None:
    hosts = 6
    values = [f'"host-{index}"' for index in range(hosts)]
    errors: list[BaseException] = []
    start = threading.Barrier(hosts)

    def host(value: str, remove: bool) -> None:
        try:
            start.wait(timeout=10)
            # Real pauses, shortened: the hosts must interleave for the swap to be tested.
            record = _record(route53, zone, sleep=lambda seconds: time.sleep(seconds / 50), uniform=random.uniform)
            record.remove(value) if remove else record.add(value)
        except BaseException as error:
            errors.append(error)

    for remove in (False, True):
        threads = [threading.Thread(target=host, args=(value, remove)) for value in values]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert _values(route53, zone) == (None if remove else sorted(values))


class _SlowChange:
    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses
        self.polls = 0

    def get_change(self, Id: str) -> dict[str, Any]:  # noqa: N803 - boto3's parameter name
        self.polls += 1
        return {"ChangeInfo": {"Id": Id, "Status": self.statuses.pop(0) if self.statuses else "PENDING"}}


def test_waiting_for_insync_polls_until_route53_reports_it_and_is_bounded() -> None:
    pauses: list[float] = []
    change = _SlowChange(["PENDING", "PENDING", "INSYNC"])
    Route53Record(change, "Z", NAME, sleep=pauses.append).wait_in_sync("/change/C1")
    assert change.polls == 3 and pauses == [acme_dns_hook.CHANGE_POLL_SECONDS] * 2
    never = _SlowChange([])
    with pytest.raises(HookError, match="still PENDING after 600 s"):
        Route53Record(never, "Z", NAME, sleep=lambda _: None).wait_in_sync("/change/C2")
    assert never.polls == acme_dns_hook.CHANGE_POLLS


def test_the_env_file_fills_in_only_missing_aws_settings(tmp_path: Path) -> None:
    env_file = tmp_path / "certbot.env"
    env_file.write_text(
        "# comment\nAWS_SHARED_CREDENTIALS_FILE=/etc/plex-cdn/aws-credentials\nAWS_CONFIG_FILE='/x y'\n"
        'NGINX_TEST="nginx -t -q"\nAWS_DEFAULT_REGION=us-east-1\n'
    )
    environ = {"AWS_DEFAULT_REGION": "eu-west-1"}
    acme_dns_hook.load_env_file(str(env_file), environ)
    assert environ == {
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_SHARED_CREDENTIALS_FILE": "/etc/plex-cdn/aws-credentials",
        "AWS_CONFIG_FILE": "/x y",
    }
    acme_dns_hook.load_env_file(str(tmp_path / "missing.env"), environ)


def test_auth_and_cleanup_take_certbots_variables_and_report_failures(
    route53: Any, zone: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {
        "PLEXCDN_CERTBOT_ENV": str(tmp_path / "none.env"),
        "CERTBOT_DOMAIN": "Plex.Example.com",
        "CERTBOT_VALIDATION": "token-a",
    }
    assert "holds this host's challenge value" in acme_dns_hook.run("auth", [], environ, route53)
    assert _values(route53, zone) == ['"token-a"']
    assert acme_dns_hook.run("cleanup", [], environ, route53).endswith("no longer holds this host's challenge value")
    assert _values(route53, zone) is None
    checked = acme_dns_hook.run("check", ["plex.example.com,plex-us.example.com"], environ, route53)
    assert "_acme-challenge.plex.example.com, _acme-challenge.plex-us.example.com" in checked
    assert acme_dns_hook.main(["auth"], {"PLEXCDN_CERTBOT_ENV": str(tmp_path / "none.env")}) == 1
    assert "$CERTBOT_DOMAIN is not set" in capsys.readouterr().err
    with pytest.raises(HookError, match=r"no Route53 hosted zone holds _acme-challenge\.plex\.example\.org"):
        acme_dns_hook.run("check", ["plex.example.org"], environ, route53)
    assert acme_dns_hook.main(["--help"]) == 0
    assert "plexcdn-acme-dns-hook auth" in capsys.readouterr().out


def test_the_hook_is_one_file_that_needs_only_the_standard_library_and_boto3() -> None:
    source = Path(acme_dns_hook.__file__).read_text()
    tree = ast.parse(source)
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert "plexcdn" not in imported
    assert imported - set(sys.stdlib_module_names) == {"boto3"}
    assert source.startswith("#!/opt/certbot/bin/python3")
    usage = ast.get_docstring(tree) or ""
    for command in ("plexcdn-acme-dns-hook auth", "plexcdn-acme-dns-hook cleanup", "plexcdn-acme-dns-hook check"):
        assert command in usage


def test_every_pop_gets_the_hook_and_certbot_is_told_to_use_it() -> None:
    config = parse_config(five_pop_values(), "dev")
    for pop in config.pops:
        files = render.certbot_files(config, pop.name)
        assert files[render.ACME_DNS_HOOK_PATH] == Path(acme_dns_hook.__file__).read_text()
        script = files["/usr/local/sbin/plexcdn-issue-certificate"]
        assert '--manual-auth-hook "$CERTBOT_PYTHON $ACME_DNS_HOOK auth"' in script
        assert '--manual-cleanup-hook "$CERTBOT_PYTHON $ACME_DNS_HOOK cleanup"' in script
        assert "--dns-route53" not in script
