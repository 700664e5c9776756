"""The library swarm under Pulumi's mock engine: the swarm's keys and every peer, what reaches which machine,
which firewall admits whom, what stays secret and what the stack exports."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pulumi
import pytest

from labs.mock_engine import SECRET_SIG, SECRET_SIG_KEY, RecordingMonitor, _real_ed25519, install_mocks
from plexcdn.config import StackConfig
from plexcdn.library import keys, render
from tests.conftest import config_from, example_values
from tests.library_fixtures import SEEDER_HOST, VIEWER_HOST, VIEWER_NETWORK, library_values

USER_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nmock-library-user-key\n-----END OPENSSH PRIVATE KEY-----\n"
SWARM = "plex-cdn:library_swarm:LibrarySwarm"
PEER = "plex-cdn:library_peer:LibraryPeer"
COMMAND = "command:remote:Command"
SCHEMA = json.loads((Path(__file__).parent / "schemas" / "kubo-config.schema.json").read_text())


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG_KEY) == SECRET_SIG


def plain(value: Any) -> Any:
    return value["value"] if is_secret(value) else value


def build(config: StackConfig, build_dir: Path) -> tuple[RecordingMonitor, dict[str, Any]]:
    _, monitor = install_mocks(config.stack)
    resolved: dict[str, Any] = {}

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> pulumi.Output[Any]:
        from components.stack import build_stack

        outputs = build_stack(config, build_dir, home_ssh_key=pulumi.Output.secret(USER_KEY))
        assert outputs.library is not None
        peers = outputs.library.peers

        def keep(values: list[Any]) -> None:
            resolved.update(addresses=values[0], peer_ids=values[1], ipns=values[2])

        return pulumi.Output.all(
            pulumi.Output.all(**{name: peer.address for name, peer in peers.items()}),
            pulumi.Output.all(**{name: peer.peer_id for name, peer in peers.items()}),
            pulumi.Output.all(**{name: peer.ipns_name for name, peer in peers.items() if peer.ipns_name}),
        ).apply(keep)

    program()
    resolved["monitor"] = monitor
    return monitor, resolved


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> tuple[StackConfig, RecordingMonitor, dict[str, Any]]:
    config = config_from(library_values())
    monitor, resolved = build(config, tmp_path_factory.mktemp("build"))
    return config, monitor, resolved


def stdin_of(monitor: RecordingMonitor, peer: str) -> tuple[str, dict[str, Any]]:
    """A peer's set-up input: the swarm key file, then kubo's config."""
    text = plain(monitor.named(f"library-{peer}-setup").inputs["stdin"])
    lines = text.split("\n")
    return "\n".join(lines[:3]) + "\n", json.loads("\n".join(lines[3:]))


def script(monitor: RecordingMonitor, peer: str, field: str = "create") -> str:
    command = plain(monitor.named(f"library-{peer}-setup").inputs[field])
    words = shlex.split(command)
    assert words[-3:-1] == ["/bin/bash", "-c"]
    return words[-1]


# --- the graph ----------------------------------------------------------------------------------------------


def test_the_swarm_and_each_peer_make_the_expected_resources(swarm: Any) -> None:
    _, monitor, _ = swarm
    mine = [r for r in monitor.registrations if r.name.startswith("library")]
    counts: dict[str, int] = {}
    for registration in mine:
        counts[registration.type] = counts.get(registration.type, 0) + 1
    assert counts == {
        SWARM: 1,
        PEER: 3,
        "random:index/randomBytes:RandomBytes": 1,  # the swarm key
        "tls:index/privateKey:PrivateKey": 4,  # one identity per peer, the cloud peer's SSH host key
        "linode:index/instance:Instance": 1,  # the cloud cache node
        "linode:index/firewall:Firewall": 1,
        COMMAND: 3,
    }
    components = {r.urn: r for r in monitor.registrations if not r.custom}
    for registration in mine:
        if registration.custom:
            parent = components[registration.parent]
            assert parent.type in (SWARM, PEER)
            assert registration.name.startswith(f"{parent.name}-"), (registration.name, parent.name)
    assert monitor.named("library-tokyo-vm").ignore_changes == ["metadatas"], "user_data is for first boot only"
    assert monitor.named("library-alice-identity").inputs["algorithm"] == "ED25519"


def test_no_library_resources_without_the_section(tmp_path: Path) -> None:
    config = config_from(example_values())
    _, monitor = install_mocks(config.stack)

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> None:
        from components.stack import build_stack

        assert build_stack(config, tmp_path).library is None

    program()
    assert monitor.registrations
    assert not [r.name for r in monitor.registrations if "library" in r.type or r.name.startswith("library")]


# --- what each peer gets --------------------------------------------------------------------------------------


def test_every_peer_gets_the_same_swarm_key_and_its_own_identity(swarm: Any) -> None:
    config, monitor, resolved = swarm
    key_files = set()
    for peer in config.library.peers:
        key_file, document = stdin_of(monitor, peer.name)
        key_files.add(key_file)
        assert re.fullmatch(r"/key/swarm/psk/1\.0\.0/\n/base16/\n[0-9a-f]{64}\n", key_file)
        # The private key in the config is the one whose peer ID everyone else dials.
        assert document["Identity"]["PeerID"] == resolved["peer_ids"][peer.name]
        private = monitor.named(f"library-{peer.name}-identity")
        assert private.type == "tls:index/privateKey:PrivateKey"
    assert len(key_files) == 1, "one swarm"
    assert len(set(resolved["peer_ids"].values())) == 3


def test_each_config_is_valid_kubo_and_names_every_other_peer(swarm: Any) -> None:
    config, monitor, resolved = swarm
    ids, addresses = resolved["peer_ids"], resolved["addresses"]
    assert addresses["alice"] == SEEDER_HOST and addresses["carol"] == VIEWER_HOST
    assert re.fullmatch(r"203\.0\.113\.\d+", addresses["tokyo"]), "the cloud peer's VM address"
    for peer in config.library.peers:
        _, document = stdin_of(monitor, peer.name)
        jsonschema.validate(document, SCHEMA)
        others = {name for name in ids if name != peer.name}
        expected = set()
        for name in others:
            proto = "dns" if addresses[name] == VIEWER_HOST else "ip4"
            expected.add(f"/{proto}/{addresses[name]}/tcp/4001/p2p/{ids[name]}")
        assert set(document["Bootstrap"]) == expected, peer.name
        assert {p["ID"] for p in document["Peering"]["Peers"]} == {ids[name] for name in others}
        assert "auto" not in json.dumps(document["Bootstrap"]) and document["AutoConf"]["Enabled"] is False
        assert (document["Addresses"]["API"], document["Addresses"]["Gateway"]) == (
            "/unix/run/plexcdn-ipfs-api/api.sock",
            "/unix/run/plexcdn-ipfs-api/gateway.sock",
        ), "RPC API and gateway on Unix sockets in a directory only their group may enter"
        assert document["Internal"]["Bitswap"] == {
            "EngineBlockstoreWorkerCount": 2500,
            "EngineTaskWorkerCount": 1024,
            "MaxOutstandingBytesPerPeer": 10 * 1024**3,
            "TaskWorkerCount": 1024,
        }
        assert document["Experimental"]["FilestoreEnabled"] is (peer.role == "seeder")
    assert stdin_of(monitor, "carol")[1]["Datastore"]["StorageMax"] == "200GB"


def test_bitswap_settings_can_be_overridden(tmp_path: Path) -> None:
    values = library_values()
    values["library"]["bitswap"] = {"taskWorkerCount": 64}
    config = config_from(values)
    monitor, _ = build(config, tmp_path)
    bitswap = stdin_of(monitor, "alice")[1]["Internal"]["Bitswap"]
    assert bitswap["TaskWorkerCount"] == 64 and bitswap["EngineBlockstoreWorkerCount"] == 2500


def test_the_cloud_peers_firewall_admits_only_the_friends_to_the_swarm_port(swarm: Any) -> None:
    _, monitor, _ = swarm
    inbounds = plain(monitor.named("library-tokyo-firewall").inputs["inbounds"])
    swarm_rule = next(rule for rule in inbounds if rule["ports"] == "4001")
    assert swarm_rule["protocol"] == "TCP"
    assert sorted(swarm_rule["ipv4s"]) == sorted([f"{SEEDER_HOST}/32", VIEWER_NETWORK])
    ssh = next(rule for rule in inbounds if rule["ports"] == "22")
    assert ssh["ipv4s"] != ["0.0.0.0/0"], "SSH from the admin's network only"
    assert monitor.named("library-tokyo-firewall").inputs["inboundPolicy"] == "DROP"


def test_host_peers_firewall_table_admits_the_others(swarm: Any) -> None:
    _, monitor, resolved = swarm
    alice = script(monitor, "alice")
    tokyo = resolved["addresses"]["tokyo"]
    admitted = re.search(r"tcp dport 4001 ip saddr \{ (.*) \} accept", alice)
    assert admitted is not None
    assert set(admitted.group(1).split(", ")) == {f"{tokyo}/32", VIEWER_NETWORK}
    assert "tcp dport 4001 drop" in alice


def test_commands_reach_the_machines_they_are_for(swarm: Any) -> None:
    _, monitor, resolved = swarm
    alice = plain(monitor.named("library-alice-setup").inputs["connection"])
    assert (alice["host"], alice["user"], alice["privateKey"]) == (SEEDER_HOST, "admin", USER_KEY)
    assert plain(monitor.named("library-alice-setup").inputs["create"]).startswith("sudo -n /bin/bash -c ")
    tokyo = plain(monitor.named("library-tokyo-setup").inputs["connection"])
    assert tokyo["host"] == resolved["addresses"]["tokyo"] and tokyo["user"] == "root"
    assert tokyo["privateKey"] != USER_KEY and "PRIVATE KEY" in tokyo["privateKey"]


def test_seeders_watch_their_folder_and_viewers_mount_and_warm(swarm: Any) -> None:
    _, monitor, resolved = swarm
    alice, carol, tokyo = (script(monitor, name) for name in ("alice", "carol", "tokyo"))
    assert "plexcdn-library-watcher" in alice and "plexcdn-library-warmer" not in alice
    assert '"media_dir": "/srv/media"' in alice
    ipns = resolved["ipns"]["alice"]
    # Plex reads alice's folder through the bounded library file system over kubo's /ipns mount.
    assert f'"alice": {{\n   "source": "/ipns/{ipns}",' in carol
    assert '"mount_point": "/mnt/plex-cdn-library"' in carol and "plexcdn-library-fs" in carol
    assert "ln -sfn" not in carol
    assert "plexcdn-library-warmer" in carol and "daemon --enable-gc --mount" in carol
    assert f'"/mnt/plex-cdn-library/alice": "/ipns/{ipns}"' in carol
    # A cache node has no Plex to ask what is playing.
    assert "plexcdn-library-warmer" not in tokyo and "daemon --enable-gc --mount" in tokyo
    assert "plexcdn-library-fs" in tokyo and "plexcdn-library-fs" not in alice
    assert "cloud-init status --wait" in tokyo and "cloud-init status --wait" not in alice


def test_destroy_undoes_the_set_up_on_friends_machines_only(swarm: Any) -> None:
    _, monitor, _ = swarm
    assert monitor.named("library-tokyo-setup").inputs.get("delete") is None, "the VM goes with it"
    for name in ("alice", "carol"):
        undo = script(monitor, name, "delete")
        assert "nft delete table inet plexcdn_library" in undo
        assert "/srv/media" not in undo, "the media folder is never touched"


# --- secrets and outputs ----------------------------------------------------------------------------------------


def test_secrets_stay_secret(swarm: Any) -> None:
    config, monitor, _ = swarm
    for peer in config.library.peers:
        setup = monitor.named(f"library-{peer.name}-setup")
        assert "stdin" in setup.secret_inputs
        key_file, document = stdin_of(monitor, peer.name)
        private_key = document["Identity"]["PrivKey"]
        swarm_key = key_file.split("\n")[2]
        for field in ("create", "delete"):
            text = json.dumps(setup.inputs.get(field))
            assert swarm_key not in text and private_key not in text
    swarm_registration = monitor.named("library")
    assert swarm_key not in json.dumps(swarm_registration.inputs)


def test_outputs_name_each_seeders_ipns_name_and_each_viewers_library_folder(swarm: Any) -> None:
    config, monitor, resolved = swarm
    for peer in config.library.peers:
        # The mock engine's identity keys are real Ed25519 keys made from the resource's name.
        generated = _real_ed25519(f"library-{peer.name}-identity")
        identity = keys.identity(generated["privateKeyPem"])
        assert resolved["peer_ids"][peer.name] == identity.peer_id
        assert stdin_of(monitor, peer.name)[1]["Identity"]["PrivKey"] == identity.private_key_b64
        if peer.role == "seeder":
            assert resolved["ipns"][peer.name] == keys.ipns_name(generated["publicKeyPem"])
    assert set(resolved["ipns"]) == {"alice"}, "only seeders publish"
    assert config.library.peer("carol").library_path("alice") == "/mnt/plex-cdn-library/alice"
    assert render.IPFS_USER in script(monitor, "carol")


def test_host_peers_without_the_ssh_key_are_refused_before_anything_is_made(tmp_path: Path) -> None:
    config = config_from(library_values())
    _, monitor = install_mocks(config.stack)
    from components.stack import build_stack

    with pytest.raises(ValueError, match="homeSshKey"):
        build_stack(config, tmp_path)
    assert not monitor.registrations
