"""The library swarm's settings and rendered files, checked by the tools that read them: the config parser's
messages, kubo's config schema, shellcheck, systemd-analyze and cloud-init."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from plexcdn.config import ConfigError, StackConfig, load_stack_file, needs_home_ssh_key
from plexcdn.library import keys, kubo, render
from tests.conftest import EXAMPLE_STACK, config_from, example_values, make_vm_identity, write_stack
from tests.library_fixtures import library_values

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "kubo-config.schema.json").read_text())


@pytest.fixture
def config() -> StackConfig:
    return config_from(library_values())


def problems_of(values: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        config_from(values)
    return list(raised.value.problems)


def rendered_scripts(config: StackConfig) -> dict[str, str]:
    assert config.library is not None
    members = render.placeholder_members(config)
    seeders = {seeder.name: f"k51placeholder{seeder.name}" for seeder in config.library.seeders}
    scripts = {}
    for index, peer in enumerate(config.library.peers):
        document = render.kubo_config(config, peer.name, keys.identity(render.placeholder_key(index)), members)
        command = render.install_script(
            config, peer.name, document=document, members=members, seeder_names=seeders, cloud=peer.kind == "cloud"
        )
        scripts[f"{peer.name}-install"] = shlex.split(command)[-1]
        if peer.kind == "host":
            scripts[f"{peer.name}-uninstall"] = shlex.split(render.uninstall_script(config, peer.name))[-1]
    return scripts


# --- settings -------------------------------------------------------------------------------------------------


def test_a_library_parses_with_its_defaults(config: StackConfig) -> None:
    library = config.library
    assert library is not None
    assert [p.name for p in library.seeders] == ["alice"] and [p.name for p in library.viewers] == ["carol", "tokyo"]
    assert library.swarm_port == 4001 and library.bitswap.engine_blockstore_worker_count == 2500
    carol, tokyo = library.peer("carol"), library.peer("tokyo")
    assert carol.plex and not tokyo.plex, "a host viewer warms from its Plex; a cloud cache node has none"
    assert library.peer("alice").swarm_cidrs == ("203.0.113.10/32",), "an address admits itself"
    assert needs_home_ssh_key(config), "host peers are reached with plex-cdn:homeSshKey"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda lib: lib.pop("seeders"), r"^library\.seeders: must be a non-empty list of seeders"),
        (lambda lib: lib["viewers"][0].pop("swarmCidrs"), r"^library\.viewers\[0\]\.swarmCidrs: is needed because "),
        (lambda lib: lib["viewers"][1].update(plex=True), r"^library\.viewers\[1\]\.plex: only peers of kind host"),
        (lambda lib: lib["seeders"][0].update(mediaDir="media"), r"^library\.seeders\[0\]\.mediaDir: must be an abs"),
        (lambda lib: lib["viewers"][0].update(mediaDir="/x"), r"^library\.viewers\[0\]\.mediaDir: only seeders"),
        (lambda lib: lib["viewers"][1].update(region="mars"), r"^library\.viewers\[1\]\.region: 'mars' is not a "),
        (lambda lib: lib["viewers"][0].update(name="alice"), r"^library: two peers are named 'alice'"),
        (lambda lib: lib.update(bitswap={"taskWorkers": 3}), r"^library\.bitswap\.taskWorkers: unknown setting"),
        (lambda lib: lib.update(swarmPort=80), r"^library\.swarmPort: must be a whole number from 1024 to 65535"),
        (lambda lib: lib["viewers"][0].update(swarmCidrs=["nope"]), r"^library\.viewers\[0\]\.swarmCidrs\[0\]: "),
    ],
)
def test_each_mistake_is_named_with_what_would_be_valid(change: Any, expected: str) -> None:
    values = library_values()
    change(values["library"])
    problems = problems_of(values)
    assert any(re.search(expected, problem) for problem in problems), problems


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["swarm", "swarmPort", "bitswap", "seeders", "viewers", "extra"]),
        st.one_of(st.none(), st.integers(-5, 70000), st.text(max_size=8), st.lists(st.integers(), max_size=2)),
    )
)
def test_any_malformed_library_section_is_a_config_error_never_a_crash(section: dict[str, Any]) -> None:
    values = library_values()
    values["library"] = section
    with pytest.raises(ConfigError):
        config_from(values)


# --- keys -------------------------------------------------------------------------------------------------------


def test_swarm_key_file_is_kubos_format() -> None:
    text = keys.swarm_key_file("AB" * 32)
    assert text == "/key/swarm/psk/1.0.0/\n/base16/\n" + "ab" * 32 + "\n"
    with pytest.raises(ValueError, match="32 bytes"):
        keys.swarm_key_file("ab" * 31)


def test_identity_round_trips_through_libp2p_protobuf() -> None:
    pem = render.placeholder_key(0)
    identity = keys.identity(pem)
    assert identity.peer_id.startswith("12D3KooW"), "an Ed25519 key, inlined as an identity multihash"
    assert keys.peer_id(keys.public_key_pem(pem)) == identity.peer_id
    import base64

    raw = base64.b64decode(identity.private_key_b64)
    assert raw[:4] == b"\x08\x01\x12\x40" and len(raw) == 68, "KeyType Ed25519, 64 bytes of seed and public key"
    assert keys.ipns_name(keys.public_key_pem(pem)).startswith("k51qzi5uqu5d")
    assert keys.identity(render.placeholder_key(1)).peer_id != identity.peer_id


# --- kubo's config ----------------------------------------------------------------------------------------------


def test_the_pinned_defaults_and_every_rendered_config_are_valid_kubo_configs(config: StackConfig) -> None:
    defaults = kubo.default_config()
    defaults["Identity"] = {"PeerID": keys.identity(render.placeholder_key(0)).peer_id, "PrivKey": "x"}
    jsonschema.validate(defaults, SCHEMA)
    members = render.placeholder_members(config)
    assert config.library is not None
    for index, peer in enumerate(config.library.peers):
        document = render.kubo_config(config, peer.name, keys.identity(render.placeholder_key(index)), members)
        jsonschema.validate(document, SCHEMA)
        # Nothing that reaches the public network: no "auto" placeholder for a public service is left.
        assert '"auto"' not in json.dumps(document)
        assert document["Swarm"]["Transports"]["Network"]["QUIC"] is False
        assert document["Discovery"]["MDNS"]["Enabled"] is False


def test_the_schema_catches_a_misspelt_bitswap_key(config: StackConfig) -> None:
    members = render.placeholder_members(config)
    document = render.kubo_config(config, "alice", keys.identity(render.placeholder_key(0)), members)
    document["Internal"]["Bitswap"]["EngineBlockStoreWorkerCount"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)


def test_the_command_line_never_carries_the_private_key(config: StackConfig) -> None:
    members = render.placeholder_members(config)
    identity = keys.identity(render.placeholder_key(0))
    document = render.kubo_config(config, "alice", identity, members)
    command = render.install_script(config, "alice", document=document, members=members, seeder_names={}, cloud=False)
    assert identity.private_key_b64 not in command
    # ...and a change of any public setting changes the command, so `pulumi up` runs it again.
    other = json.loads(json.dumps(document))
    other["Bootstrap"] = other["Bootstrap"][:1]
    assert render.digest(other) != render.digest(document)
    assert render.digest(document) in command


# --- the tools that read them -----------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck (Debian package shellcheck)")
def test_every_rendered_script_passes_shellcheck(config: StackConfig, tmp_path: Path) -> None:
    paths = []
    for name, script in rendered_scripts(config).items():
        script_path = tmp_path / f"{name}.sh"
        script_path.write_text(script)
        paths.append(str(script_path))
    result = subprocess.run(["shellcheck", "--shell=bash", *paths], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
    for path in paths:
        assert subprocess.run(["bash", "-n", path], check=False).returncode == 0


def test_the_install_script_checks_the_archive_before_installing_it(config: StackConfig) -> None:
    script = rendered_scripts(config)["alice-install"]
    check = script.index("sha512sum -c")
    assert check < script.index('install -m 0755 "$download/kubo/ipfs"')
    for architecture, digest in kubo.RELEASE.sha512.items():
        assert f"{architecture}) sha512={digest} ;;" in script
    assert f"kubo_v{kubo.RELEASE.version}_linux-$arch.tar.gz" in script


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian package systemd)")
def test_units_pass_systemd_analyze_verify(config: StackConfig, tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    stub = tmp_path / "ipfs"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    files = {
        f"{render.UNIT_IPFS}.service": render.ipfs_unit(config, "carol"),
        f"{render.UNIT_WATCHER}.service": render.watcher_unit(config, "alice"),
        f"{render.UNIT_WARMER}.service": render.warmer_unit(config, "carol"),
        f"{render.UNIT_FS}.service": render.fs_unit(config, "carol"),
    }
    for name, text in files.items():
        # The binary kubo's archive installs is not on this machine: a stub at another path stands in.
        stubbed = text.replace(f"{render.FS_VENV}/bin/python", str(stub))
        (units / name).write_text(stubbed.replace(render.IPFS_BINARY, str(stub)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(units / name) for name in files)],
        capture_output=True,
        text=True,
        check=False,
        env={"SYSTEMD_UNIT_PATH": f"{units}:", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    assert "Environment=LIBP2P_FORCE_PNET=1" in files[f"{render.UNIT_IPFS}.service"]


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="needs cloud-init (Debian package cloud-init)")
def test_cloud_peer_cloud_init_passes_cloud_init_schema(config: StackConfig, tmp_path: Path) -> None:
    path = tmp_path / "cloud-init.yaml"
    path.write_text(render.cloud_init(config, "tokyo", make_vm_identity(config.admin.ssh_public_key)))
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_commented_example_in_the_dev_stack_is_a_valid_section() -> None:
    lines = EXAMPLE_STACK.read_text().splitlines()
    start = lines.index("  # plex-cdn:library:")
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("  #   "):
            break
        block.append(line[len("  # ") :])
    values = example_values()
    values["library"] = yaml.safe_load("\n".join(block))
    config = config_from(values)
    assert config.library is not None
    assert [(p.name, p.role, p.kind) for p in config.library.peers] == [
        ("alice", "seeder", "host"),
        ("carol", "viewer", "host"),
        ("tokyo", "viewer", "cloud"),
    ]
    assert load_stack_file(EXAMPLE_STACK).library is None, "the example stays off until uncommented"


def test_the_rendered_service_configs_are_what_the_services_accept(config: StackConfig) -> None:
    from plexcdn.library import libraryfs, warmer, watcher

    assert config.library is not None
    seeder = config.library.peer("alice")
    watching = watcher.parse_config(render.watcher_config(seeder), "watcher.json")
    assert watching.media_dir == "/srv/media" and watching.nocopy
    viewer = config.library.peer("carol")
    warming = warmer.parse_config(render.warmer_config(viewer, {"alice": "k51example"}), "warmer.json")
    assert warming.max_parallel == 2
    assert warmer.map_to_ipfs("/mnt/plex-cdn-library/alice/Movies/a.mkv", warming.mounts) == (
        "/ipns/k51example/Movies/a.mkv"
    )
    assert warming.fs_status_file == render.FS_STATUS and warming.status_file == render.WARMER_STATUS
    serving = libraryfs.parse_config(
        render.fs_config(viewer, {"alice": "k51example"}, {"alice": "12D3KooWexample"}), "fs.json"
    )
    assert serving.mount_point == viewer.mount_dir
    assert serving.seeders == (libraryfs.SeederSource("alice", "/ipns/k51example", "12D3KooWexample"),)
    # The folder the warmer maps is the one the file system shows alice's library in.
    assert f"{serving.mount_point}/alice" == viewer.library_path("alice") == warming.mounts[0][0]
    assert serving.status_file == warming.fs_status_file


def test_offline_validation_lists_the_peers_and_asks_for_the_ssh_key(tmp_path: Path) -> None:
    path = write_stack(tmp_path / "Pulumi.lib.yaml", library_values())
    result = subprocess.run(
        [sys.executable, "-m", "plexcdn", "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^library alice +seeder admin@203\.0\.113\.10 +/srv/media$", result.stdout, re.MULTILINE)
    assert re.search(r"^library tokyo +viewer linode/ap-northeast +/mnt/plex-cdn-library$", result.stdout, re.M)
    assert "plex-cdn:homeSshKey is not set" in result.stderr and "library peers of kind host" in result.stderr


def test_offline_validation_names_a_bad_library_setting_without_a_traceback(tmp_path: Path) -> None:
    values = library_values()
    values["library"]["viewers"][1]["size"] = "huge"
    path = write_stack(tmp_path / "Pulumi.lib.yaml", values)
    result = subprocess.run(
        [sys.executable, "-m", "plexcdn", "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "error: library.viewers[1].size: 'huge' is not a linode size" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian package systemd)")
def test_the_helpers_and_a_seeders_kubo_are_locked_down(config: StackConfig, tmp_path: Path) -> None:
    """systemd-analyze's exposure score (0 best, 10 worst) of each unit as rendered. A viewer's kubo is not among
    them: it mounts /ipfs and /ipns for Plex, which a private mount namespace would hide (see its unit)."""
    units = {
        f"{render.UNIT_WATCHER}.service": render.watcher_unit(config, "alice"),
        f"{render.UNIT_WARMER}.service": render.warmer_unit(config, "carol"),
        f"{render.UNIT_IPFS}.service": render.ipfs_unit(config, "alice"),
    }
    for name, text in units.items():
        path = tmp_path / name
        path.write_text(text)
        result = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", "--no-pager", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
        assert match is not None, result.stdout + result.stderr
        assert float(match[1]) <= 2.0, f"{name}: exposure {match[1]}\n{result.stdout}"
    warmer = units[f"{render.UNIT_WARMER}.service"]
    assert "IPAddressDeny=any\nIPAddressAllow=localhost\n" in warmer, "the warmer talks to Plex on loopback only"
    assert "RestrictAddressFamilies=AF_UNIX\n" in units[f"{render.UNIT_WATCHER}.service"], "the watcher: kubo only"
