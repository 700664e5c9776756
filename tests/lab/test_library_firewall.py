"""The library's nft table, loaded for real in a namespace of its own: it admits the friends to the swarm port
and nobody else, and leaves every other port alone."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs.netns import Lab, lab_unavailable_reason
from plexcdn.library import render
from tests.conftest import config_from
from tests.library_fixtures import library_values

pytestmark = pytest.mark.skipif(lab_unavailable_reason() is not None, reason=str(lab_unavailable_reason()))

PREFIX = f"pcf{os.getpid() % 1000}-"
PORT = 4001
OTHER_PORT = 5001


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, dict[str, str]]]:
    with Lab(PREFIX) as built:
        for role in ("peer", "friend", "stranger"):
            built.add_namespace(role)
        friend = built.link("friend", "peer", "198.18.50.0/30")
        stranger = built.link("stranger", "peer", "198.18.50.4/30")
        addresses = {
            "friend": str(friend.a_addr),
            "stranger": str(stranger.a_addr),
            "peer_from_friend": str(friend.b_addr),
            "peer_from_stranger": str(stranger.b_addr),
        }
        config = config_from(library_values())
        assert config.library is not None
        rules = render.firewall_rules(config.library, [f"{addresses['friend']}/32", "2001:db8::/32"])
        path = Path(tmp_path_factory.mktemp("nft")) / "firewall.nft"
        path.write_text(rules)
        # Loaded twice, as every `pulumi up` reloads it: the table replaces itself instead of piling up.
        for _ in range(2):
            loaded = built.run("peer", ["nft", "-f", str(path)], check=False)
            assert loaded.returncode == 0, loaded.stderr
        yield built, addresses


def _connects(lab: Lab, role: str, address: str, port: int) -> bool:
    script = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(1.5)\n"
        f"sys.exit(0 if s.connect_ex(({address!r}, {port})) == 0 else 1)\n"
    )
    return lab.run(role, ["python3", "-c", script], check=False).returncode == 0


def test_only_friends_reach_the_swarm_port(lab: tuple[Lab, dict[str, str]]) -> None:
    built, addresses = lab
    for port in (PORT, OTHER_PORT):
        # Both of the namespace's links, and nothing else: the namespace has no other interface.
        built.start("peer", ["python3", "-m", "http.server", "--bind", "0.0.0.0", str(port)], log=None)  # noqa: S104
    for _ in range(50):  # the servers take a moment to listen
        listening = built.run("peer", ["ss", "-Hltn"], check=False).stdout
        if f":{PORT} " in listening and f":{OTHER_PORT} " in listening:
            break
        time.sleep(0.1)
    assert _connects(built, "friend", addresses["peer_from_friend"], PORT), "a friend reaches the swarm port"
    assert not _connects(built, "stranger", addresses["peer_from_stranger"], PORT), "a stranger does not"
    assert _connects(built, "stranger", addresses["peer_from_stranger"], OTHER_PORT), "other ports are left alone"
    tables = built.run("peer", ["nft", "list", "tables"]).stdout
    assert tables.count(f"table inet {render.FIREWALL_TABLE}") == 1
