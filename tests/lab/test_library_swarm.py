"""The swarm key and kubo configs plex-cdn renders form a private swarm, and only a private one.

The peers are a stack's library peers, on one switched segment: `seed` (a seeder) serves a file; `same`
holds the swarm key, `other` a different one, `nokey` none; each runs the kubo config the program renders
for it (`plexcdn.library.render.kubo_config`, every other peer in its Bootstrap list) and asks for the file
by CID over bitswap. `wrongid`, no peer of the stack, has the swarm key but a Bootstrap entry naming
another peer ID at the seed's address.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from labs.netns import existing_namespaces
from labs.swarm_lab import (
    FetchOutcome,
    PeerFiles,
    PeerProcess,
    SwarmLab,
    check_identity,
    swarm_lab_unavailable_reason,
)
from plexcdn.config import StackConfig
from plexcdn.library import render
from plexcdn.library.keys import PeerIdentity, identity, private_key_pem, swarm_key_file
from tests.conftest import HOME_HOST_KEY, config_from, example_values

UNAVAILABLE = swarm_lab_unavailable_reason()
pytestmark = [pytest.mark.lab, pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))]

PREFIX = f"pcs{os.getpid() % 1000}-"
MEDIA_BYTES = 4 * 1024 * 1024 + 12_345
# The seed outlives every test in the module; the lab's tear-down stops it sooner.
SEED_TIMEOUT = 120.0
FETCH_TIMEOUT = 30.0
# Long enough for several dial attempts (each bounded at 3 s by peer.mjs) to be refused.
DENIED_TIMEOUT = 7.0
# A peer-ID mismatch is refused as soon as the handshake completes.
WRONG_ID_TIMEOUT = 4.0
LEAVES = ("same", "other", "nokey", "wrongid")
STACK_PEERS = ("seed", "same", "other", "nokey")


@dataclass
class Swarm:
    lab: SwarmLab
    config: StackConfig
    identities: dict[str, PeerIdentity]
    addresses: dict[str, str]
    files: dict[str, PeerFiles]
    seed: PeerProcess
    cid: str
    media: Path


def lab_stack(addresses: dict[str, str]) -> StackConfig:
    """The example stack with the lab's peers as its library: friends' machines at their lab addresses."""
    values = example_values()
    values["library"] = {
        "swarm": "lab",
        "seeders": [
            {
                "name": "seed",
                "kind": "host",
                "host": addresses["seed"],
                "hostKey": HOME_HOST_KEY,
                "mediaDir": "/srv/media",
            }
        ],
        "viewers": [
            {"name": name, "kind": "host", "host": addresses[name], "hostKey": HOME_HOST_KEY, "plex": False}
            for name in STACK_PEERS[1:]
        ],
    }
    return config_from(values, "lab")


def rendered_config(swarm_config: StackConfig, role: str, identities: dict[str, PeerIdentity]) -> dict[str, Any]:
    assert swarm_config.library is not None
    members = [
        render.Member(peer.name, identities[peer.name].peer_id, peer.host, peer.swarm_cidrs)
        for peer in swarm_config.library.peers
    ]
    return render.kubo_config(swarm_config, role, identities[role], members)


@pytest.fixture(scope="module")
def swarm() -> Iterator[Swarm]:
    key = swarm_key_file(secrets.token_hex(32))
    other_key = swarm_key_file(secrets.token_hex(32))
    swarm_keys = {"seed": key, "same": key, "other": other_key, "nokey": None, "wrongid": key}
    identities = {role: identity(private_key_pem()) for role in swarm_keys}
    with SwarmLab(PREFIX) as lab:
        addresses = {role: str(address) for role, address in lab.segment(list(swarm_keys)).items()}
        stack = lab_stack(addresses)
        files = {}
        for role in STACK_PEERS:
            files[role] = lab.write_peer(role, rendered_config(stack, role, identities), swarm_keys[role])
        # An outsider with the key, whose Bootstrap names the wrong peer at the seed's address.
        impostor = rendered_config(stack, "same", identities)
        impostor["Identity"] = {
            "PeerID": identities["wrongid"].peer_id,
            "PrivKey": identities["wrongid"].private_key_b64,
        }
        seed_id, named = identities["seed"].peer_id, identities["same"].peer_id
        impostor["Bootstrap"] = [entry.replace(seed_id, named) for entry in impostor["Bootstrap"] if seed_id in entry]
        files["wrongid"] = lab.write_peer("wrongid", impostor, swarm_keys["wrongid"])
        media = lab.workdir / "media.bin"
        media.write_bytes(os.urandom(MEDIA_BYTES))
        seed, cid = lab.serve(files["seed"], media, SEED_TIMEOUT)
        yield Swarm(lab, stack, identities, addresses, files, seed, cid, media)
    assert not [ns for ns in existing_namespaces() if ns.startswith(PREFIX)], "tear-down left namespaces"


def fetch(swarm: Swarm, role: str, timeout: float) -> tuple[FetchOutcome, Path]:
    out = swarm.lab.workdir / f"{role}.out"
    return swarm.lab.fetch(swarm.files[role], swarm.cid, out, timeout), out


def test_a_peer_with_the_same_swarm_key_fetches_the_file_byte_identical(swarm: Swarm) -> None:
    outcome, out = fetch(swarm, "same", FETCH_TIMEOUT)
    assert outcome.returncode == 0, outcome.events
    assert outcome.fetched is not None
    expected = hashlib.sha256(swarm.media.read_bytes()).hexdigest()
    assert outcome.fetched["bytes"] == MEDIA_BYTES
    assert outcome.fetched["sha256"] == expected
    assert out.read_bytes() == swarm.media.read_bytes()
    assert swarm.identities["seed"].peer_id in outcome.connected
    assert swarm.identities["same"].peer_id in swarm.seed.connected_peers()
    listening = swarm.seed.first("listening")
    assert listening is not None and listening["privateNetwork"] is True


def assert_shut_out(swarm: Swarm, role: str, outcome: FetchOutcome, out: Path) -> None:
    assert outcome.returncode != 0, outcome.events
    assert outcome.fetched is None
    assert not out.exists()
    assert outcome.failed is not None and "no connection to a bootstrap peer" in outcome.failed["reason"]
    assert outcome.connected == frozenset()
    assert swarm.identities[role].peer_id not in swarm.seed.connected_peers()
    # Refused in the handshake, not by the network: the seed was reachable the whole time. (The other
    # leaves in the Bootstrap list are not running, so dials to them are refused by their hosts.)
    seed_address = f"/ip4/{swarm.addresses['seed']}/tcp/"
    dial_failures = [e["reason"] for e in outcome.events if e["event"] == "dial-failed" and seed_address in e["addr"]]
    assert dial_failures, outcome.events
    assert not [r for r in dial_failures if "ECONNREFUSED" in r or "UNREACH" in r], dial_failures


def test_a_peer_with_a_different_swarm_key_cannot_connect_or_fetch(swarm: Swarm) -> None:
    outcome, out = fetch(swarm, "other", DENIED_TIMEOUT)
    assert_shut_out(swarm, "other", outcome, out)


def test_a_peer_without_a_swarm_key_cannot_connect_or_fetch(swarm: Swarm) -> None:
    outcome, out = fetch(swarm, "nokey", DENIED_TIMEOUT)
    assert_shut_out(swarm, "nokey", outcome, out)
    listening = next(e for e in outcome.events if e["event"] == "listening")
    assert listening["privateNetwork"] is False


def test_a_bootstrap_entry_naming_another_peer_id_is_refused(swarm: Swarm) -> None:
    outcome, out = fetch(swarm, "wrongid", WRONG_ID_TIMEOUT)
    assert outcome.returncode != 0, outcome.events
    assert outcome.fetched is None
    assert not out.exists()
    assert outcome.connected == frozenset()
    assert outcome.failed is not None
    # The swarm key matched, so the handshake completed and revealed who really listens there.
    assert f"the peer at this address is {swarm.identities['seed'].peer_id}" in outcome.failed["reason"]


def test_js_libp2p_derives_the_peer_ids_plexcdn_computes(swarm: Swarm) -> None:
    # peer.mjs refuses to start when Identity.PeerID is not the ID of Identity.PrivKey, so a listening seed
    # already says js-libp2p agrees; the fetch above also dialled /p2p/<our ID>, which Noise verifies.
    listening = swarm.seed.first("listening")
    assert listening is not None
    assert listening["peerId"] == swarm.identities["seed"].peer_id
    for role, files in swarm.files.items():
        check = check_identity(files.config_path)
        assert (check.returncode, check.peer_id) == (0, swarm.identities[role].peer_id), check.reason

    mismatched = swarm.lab.workdir / "mismatched.json"
    config = rendered_config(swarm.config, "same", swarm.identities)
    config["Identity"]["PeerID"] = swarm.identities["other"].peer_id
    mismatched.write_text(json.dumps(config))
    check = check_identity(mismatched)
    assert check.returncode != 0
    assert check.peer_id is None
    assert check.reason is not None
    assert swarm.identities["other"].peer_id in check.reason
    assert swarm.identities["same"].peer_id in check.reason
