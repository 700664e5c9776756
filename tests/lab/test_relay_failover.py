"""Issue #22, part 1: an edge with a fallback hub keeps serving when its hub dies, both ways a hub dies: its
nginx killed (its kernel refuses and resets) and its VM gone silent (every packet dropped). The viewer's next
range request arrives through the other hub, byte-equal, within 2 s; the hub back, traffic returns to it; the
Plex server down, every POP answers 502 with Retry-After, and comes back by itself. The health checks say
what is really down in each case."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from labs import relay_lab as relay
from labs.netns import lab_unavailable_reason
from plexcdn.config import parse_config
from tests.conftest import example_values
from tests.lab.test_relay import _health, _until_health, access_log, view

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(lab_unavailable_reason() is not None, reason=str(lab_unavailable_reason())),
]

EDGE, HUB, FALLBACK = "asia", "us", "eu"
MEDIA_MB = 8
NEXT_REQUEST_WITHIN_SECONDS = 2.0
# Viewers at once, so that the edge's workers all hold kept-alive connections to the hub when it dies, and
# the next requests meet them: on a silent hub those wait for an answer until the watch aborts them.
VIEWERS = 6
# A request stuck on a dead connection would wait for the stream timeout (an hour): the test stops it sooner.
REQUEST_TIMEOUT_SECONDS = 30
ORIGIN_REFUSES = "plexcdn_lab_origin_down"


@pytest.fixture(scope="module")
def lab() -> Iterator[relay.RelayLab]:
    """The example stack with a second hub, eu, which asia falls back to."""
    values = example_values()
    values["pops"].append(
        {"name": FALLBACK, "provider": "digitalocean", "region": "fra1", "size": "s-1vcpu-1gb", "upstream": "origin"}
    )
    next(pop for pop in values["pops"] if pop["name"] == EDGE)["fallback"] = FALLBACK
    root = Path(tempfile.mkdtemp(prefix="plexcdn-failover-"))
    root.chmod(0o755)
    try:
        with relay.relay_lab(parse_config(values, "dev"), root, MEDIA_MB, prefix=f"pcf{os.getpid() % 1000}-") as built:
            yield built
    finally:
        shutil.rmtree(root, ignore_errors=True)


def served_by(
    lab: relay.RelayLab, requests: Sequence[Callable[[], dict[str, object]]]
) -> tuple[list[dict[str, object]], set[str]]:
    """The answers to `requests`, made at once as separate viewers, and the hubs whose access logs grew."""
    before = {hub: len(access_log(lab, hub)) for hub in (HUB, FALLBACK)}
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda request: request(), requests))
    return answers, {hub for hub in (HUB, FALLBACK) if len(access_log(lab, hub)) > before[hub]}


def range_request(lab: relay.RelayLab) -> Callable[[], dict[str, object]]:
    size = lab.media_file.stat().st_size
    start = random.randrange(0, size - 300_000)
    end = start + random.randrange(100_000, 262_144)

    def request() -> dict[str, object]:
        answer = view(lab, "get", relay.MEDIA_PATH, "--range", f"{start}-{end}", timeout=REQUEST_TIMEOUT_SECONDS)
        with lab.media_file.open("rb") as media:
            media.seek(start)
            answer["matches_origin"] = bytes.fromhex(str(answer["body_hex"])) == media.read(end - start + 1)
        return answer

    return request


def viewers(lab: relay.RelayLab, count: int = VIEWERS) -> list[Callable[[], dict[str, object]]]:
    return [range_request(lab) for _ in range(count)]


def assert_served(answers: Sequence[dict[str, object]]) -> None:
    for answer in answers:
        assert answer["status"] == 206 and answer["matches_origin"], answer.get("status")


def through_the_hub_again(lab: relay.RelayLab) -> set[str]:
    """Ask until requests go through the hub alone (bounded: the watch waits 3 s of answers, nginx 5 s)."""
    hubs: set[str] = set()
    for _ in range(30):
        answers, hubs = served_by(lab, viewers(lab, 1))
        assert_served(answers)
        if hubs == {HUB}:
            break
        time.sleep(0.5)
    return hubs


def assert_next_ranges_go_through_the_fallback(lab: relay.RelayLab) -> None:
    answers, hubs = served_by(lab, viewers(lab))
    assert_served(answers)
    assert hubs == {FALLBACK}
    slowest = max(float(str(answer["seconds"])) for answer in answers)
    assert slowest < NEXT_REQUEST_WITHIN_SECONDS, slowest


def test_the_edge_goes_through_its_hub_while_the_hub_is_up(lab: relay.RelayLab) -> None:
    answers, hubs = served_by(lab, viewers(lab))
    assert_served(answers)
    assert hubs == {HUB}
    assert _until_health(lab, EDGE, 200)[0] == 200


@pytest.mark.parametrize("death", ["nginx killed", "silent"])
def test_a_dead_hub_sends_the_next_range_request_through_the_fallback_and_takes_it_back_once_up(
    lab: relay.RelayLab, death: str
) -> None:
    # Connections from the edge's workers to its hub are open and kept: the next requests would ride them.
    assert served_by(lab, viewers(lab))[1] == {HUB}
    if death == "nginx killed":
        lab.kill_nginx(HUB)
    else:
        lab.silence(HUB)
    try:
        assert_next_ranges_go_through_the_fallback(lab)
        assert _until_health(lab, EDGE, 200)[0] == 200, "the edge has a way to the origin: DNS keeps it"
        assert _health(lab, HUB, "--max-time", "3")[0] == 0, "the dead hub answers no health check"
        assert _until_health(lab, FALLBACK, 200)[0] == 200
    finally:
        if death == "nginx killed":
            lab.start_nginx(HUB)
        else:
            lab.unsilence(HUB)
    assert through_the_hub_again(lab) == {HUB}, "traffic returns to the hub"
    assert _until_health(lab, HUB, 200)[0] == 200


def test_the_plex_server_down_gives_502_with_retry_after_on_every_pop_and_comes_back(lab: relay.RelayLab) -> None:
    """Every hub refuses to reach Plex's port: no POP has a way, so every one says so, and DNS (every check
    failing) keeps answering with all of them."""
    refuse = f"tcp dport {lab.origin_port} reject with tcp reset"
    rule = f"table inet {ORIGIN_REFUSES} {{\n  chain in {{ type filter hook input priority 0; {refuse}; }}\n}}\n"
    lab.lab.run("origin", ["nft", "-f", "-"], input=rule)
    try:
        down = view(lab, "get", relay.MEDIA_PATH, "--range", "0-1023")
        assert down["status"] == 502 and down["headers"].get("Retry-After") == "10"
        for pop in (EDGE, HUB, FALLBACK):
            assert _until_health(lab, pop, 503)[0] == 503, pop
        for hub in (HUB, FALLBACK):
            head = lab.lab.run(hub, _curl_own_viewer_port(lab), check=False).stdout.splitlines()
            assert head[0].split()[1] == "502" and "retry-after: 10" in [line.lower() for line in head], head
    finally:
        lab.lab.run("origin", ["nft", "delete", "table", "inet", ORIGIN_REFUSES])
    for pop in (EDGE, HUB, FALLBACK):
        assert _until_health(lab, pop, 200)[0] == 200, pop
    answers, hubs = served_by(lab, viewers(lab, 1))
    assert_served(answers)
    assert hubs == {HUB}


def _curl_own_viewer_port(lab: relay.RelayLab) -> list[str]:
    """A viewer's request to a hub's own viewer port, from inside its namespace; the headers only."""
    name = lab.config.shared_name
    return [
        *("curl", "-s", "-o", "/dev/null", "-D", "-", "--max-time", "20", "--cacert", str(lab.ca.bundle_path)),
        *("--resolve", f"{name}:443:127.0.0.1", f"https://{name}{relay.MEDIA_PATH}", "-r", "0-1023"),
    ]
