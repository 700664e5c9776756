"""Transcode offload under Pulumi's mock engine: the slaves of both kinds and the Plex server's side, what
reaches which machine, in which order, and what stays secret; and the settings' validation."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from labs.mock_engine import SECRET_SIG, SECRET_SIG_KEY, RecordingMonitor, Registration, _fake_value, install_mocks
from plexcdn import wireguard
from plexcdn.config import ConfigError, StackConfig, load_stack_file, parse_config
from plexcdn.transcode import dispatcher
from plexcdn.transcode import render as tr
from plexcdn.transcode.layout import PLEX_HOME
from tests.conftest import EXAMPLE_STACK, config_from, example_values, write_stack
from tests.transcode_fixtures import (
    ORIGIN_HOST,
    fstab_block_of,
    host_only_values,
    parse_exports,
    parse_fstab,
    script_of,
    transcode_values,
    written_files,
)

USER_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nmock-transcode-user-key\n-----END OPENSSH PRIVATE KEY-----\n"
SLAVE = "plex-cdn:transcode:TranscodeSlave"
ORIGIN = "plex-cdn:transcode_origin:TranscodeOrigin"
COMMAND = "command:remote:Command"


def build(config: StackConfig, build_dir: Path) -> tuple[RecordingMonitor, dict[str, Any]]:
    _, monitor = install_mocks(config.stack)
    resolved: dict[str, Any] = {}

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> pulumi.Output[Any]:
        from components.stack import build_stack

        outputs = build_stack(config, build_dir, home_ssh_key=pulumi.Output.secret(USER_KEY))
        assert outputs.transcode is not None
        addresses = {
            name: slave.public_ipv4 for name, slave in outputs.transcode.slaves.items() if slave.public_ipv4 is not None
        }

        def keep(values: list[Any]) -> None:
            resolved.update(dispatch_public_key=values[0], public_ipv4=values[1])

        return pulumi.Output.all(outputs.transcode.dispatch_public_key, pulumi.Output.all(**addresses)).apply(keep)

    program()
    return monitor, resolved


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[StackConfig, RecordingMonitor, dict[str, Any]]:
    config = config_from(transcode_values())
    monitor, resolved = build(config, tmp_path_factory.mktemp("build"))
    return config, monitor, resolved


def plain(value: Any) -> Any:
    """The value without its secret wrapper."""
    if isinstance(value, dict) and value.get(SECRET_SIG_KEY) == SECRET_SIG:
        return value["value"]
    return value


def without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(SECRET_SIG_KEY) == SECRET_SIG:
            return "<secret>"
        return {k: without_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


def transcode_registrations(monitor: RecordingMonitor) -> list[Registration]:
    return [r for r in monitor.registrations if r.name.startswith("transcode-")]


def script(monitor: RecordingMonitor, name: str, field: str = "create") -> str:
    return script_of(plain(monitor.named(name).inputs[field]))


def mock_base64(name: str) -> str:
    return base64.b64encode(_fake_value(name)).decode()


# --- the graph ----------------------------------------------------------------------------------------------


def test_both_kinds_of_slave_and_the_origin_make_the_expected_resources(mixed: Any) -> None:
    _, monitor, _ = mixed
    counts: dict[str, int] = {}
    for registration in transcode_registrations(monitor):
        counts[registration.type] = counts.get(registration.type, 0) + 1
    assert counts == {
        SLAVE: 3,
        ORIGIN: 1,
        "digitalocean:index/droplet:Droplet": 1,
        "digitalocean:index/firewall:Firewall": 1,
        "linode:index/instance:Instance": 1,
        "linode:index/firewall:Firewall": 1,
        "random:index/randomBytes:RandomBytes": 3,  # each cloud slave's tunnel key and the origin's
        "tls:index/privateKey:PrivateKey": 3,  # the dispatch key, each cloud slave's SSH host key
        # per cloud slave its tunnel key and set-up, the host slave's set-up, and on the origin the dispatch
        # key, the tunnel key, the share and the dispatcher
        COMMAND: 2 * 2 + 1 + 4,
    }
    names = {r.name for r in transcode_registrations(monitor) if r.type == COMMAND}
    assert names == {
        "transcode-den-setup",
        "transcode-nyc-tunnel-key-install",
        "transcode-nyc-setup",
        "transcode-tokyo-tunnel-key-install",
        "transcode-tokyo-setup",
        "transcode-origin-dispatch-key-install",
        "transcode-origin-tunnel-key-install",
        "transcode-origin-share",
        "transcode-origin-dispatcher",
    }


def test_every_transcode_resource_is_parented_to_its_component_and_named_after_it(mixed: Any) -> None:
    _, monitor, _ = mixed
    components = {r.urn: r for r in monitor.registrations if not r.custom}
    for registration in transcode_registrations(monitor):
        if not registration.custom:
            assert registration.type in (SLAVE, ORIGIN)
            assert registration.parent_type == "pulumi:pulumi:Stack"
            continue
        parent = components[registration.parent]
        assert parent.type in (SLAVE, ORIGIN), registration.name
        assert registration.name.startswith(f"{parent.name}-"), (registration.name, parent.name)
    slaves = {r.name for r in monitor.of_type(SLAVE)}
    assert slaves == {"transcode-den", "transcode-nyc", "transcode-tokyo"}
    assert monitor.named("transcode-nyc-vm").parent_type == SLAVE
    assert monitor.named("transcode-origin-dispatch-ssh").inputs["algorithm"] == "ED25519"


def test_no_transcode_resources_without_the_section(tmp_path: Path) -> None:
    config = config_from(example_values())
    assert config.transcode is None
    _, monitor = install_mocks(config.stack)

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> None:
        from components.stack import build_stack

        outputs = build_stack(config, tmp_path)
        assert outputs.transcode is None

    program()
    assert monitor.registrations, "the rest of the stack is there"
    assert not [r.name for r in monitor.registrations if "transcode" in r.type or "transcode" in r.name]


def test_the_section_without_its_ssh_key_is_refused(tmp_path: Path) -> None:
    config = config_from(transcode_values())
    install_mocks(config.stack)
    from components.stack import build_stack

    with pytest.raises(ValueError, match="SSH key"):
        build_stack(config, tmp_path)


def test_commands_reach_the_machines_they_are_for(mixed: Any) -> None:
    _, monitor, resolved = mixed
    for registration in transcode_registrations(monitor):
        if registration.type != COMMAND:
            continue
        connection = plain(registration.inputs["connection"])
        if registration.name.startswith("transcode-origin-"):
            assert (connection["host"], connection["port"], connection["user"]) == (ORIGIN_HOST, 2200, "admin")
            assert connection["privateKey"] == USER_KEY
        elif registration.name.startswith("transcode-den-"):
            assert (connection["host"], connection["port"], connection["user"]) == ("192.168.1.20", 2222, "root")
            assert connection["privateKey"] == USER_KEY
        else:
            slave = registration.name.split("-")[1]
            assert connection["host"] == resolved["public_ipv4"][slave]
            assert connection["user"] == "root"
            assert connection["privateKey"] != USER_KEY and "PRIVATE KEY" in connection["privateKey"]
            assert connection["dialErrorLimit"] >= 30, "a fresh VM answers SSH only after a minute or more"
    assert plain(monitor.named("transcode-origin-share").inputs["create"]).startswith("sudo -n /bin/bash -c ")
    assert plain(monitor.named("transcode-den-setup").inputs["create"]).startswith("/bin/bash -c ")


def test_each_step_waits_for_what_it_uses(mixed: Any) -> None:
    _, monitor, _ = mixed
    urn = {r.name: r.urn for r in monitor.registrations}

    def depends(name: str, *on: str) -> None:
        missing = [other for other in on if urn[other] not in monitor.named(name).depends_on]
        assert not missing, f"{name} does not wait for {missing}"

    depends("transcode-origin-share", "transcode-nyc-vm", "transcode-tokyo-vm", "transcode-origin-tunnel-key-install")
    for slave in ("den", "nyc", "tokyo"):
        depends(f"transcode-{slave}-setup", "transcode-origin-share", "transcode-origin-dispatch-ssh")
        depends("transcode-origin-dispatcher", f"transcode-{slave}-setup")
    for slave in ("nyc", "tokyo"):
        depends(f"transcode-{slave}-setup", f"transcode-{slave}-tunnel-key-install", "transcode-origin-tunnel-key")
    depends("transcode-origin-dispatcher", "transcode-origin-dispatch-key-install", "transcode-origin-share")


# --- secrets ---------------------------------------------------------------------------------------------------


def test_secrets_reach_the_engine_as_secrets(mixed: Any) -> None:
    _, monitor, _ = mixed
    for registration in transcode_registrations(monitor):
        if registration.type == COMMAND:
            assert any(p.startswith("connection") for p in registration.secret_inputs), registration.name
            if registration.name.endswith("-key-install"):
                assert "stdin" in registration.secret_inputs, registration.name
                assert registration.inputs["logging"] == "none", registration.name
            else:
                assert "stdin" not in registration.inputs, f"{registration.name} takes no secret"
                assert "create" not in registration.secret_inputs, "set-up scripts stay readable in diffs"
    assert "userData" in monitor.named("transcode-nyc-vm").secret_inputs
    assert monitor.named("transcode-tokyo-vm").secret_inputs == ["metadatas[0].userData"]
    dispatch_stdin = plain(monitor.named("transcode-origin-dispatch-key-install").inputs["stdin"])
    assert dispatch_stdin.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\nmock-transcode-origin-dispatch-ssh")


def test_no_private_key_appears_outside_secret_inputs(mixed: Any) -> None:
    _, monitor, _ = mixed
    tunnel_keys = {
        name: mock_base64(name)
        for name in ("transcode-nyc-tunnel-key", "transcode-tokyo-tunnel-key", "transcode-origin-tunnel-key")
    }
    for name, key in tunnel_keys.items():
        assert plain(monitor.named(f"{name}-install").inputs["stdin"]) == key
    for registration in monitor.registrations:
        text = json.dumps(without_secrets(registration.inputs))
        assert "PRIVATE KEY" not in text, registration.name
        assert "mock-transcode-user-key" not in text, registration.name
        for name, key in tunnel_keys.items():
            if registration.type != "random:index/randomBytes:RandomBytes":
                assert key not in text, f"{name} appears in {registration.name}"


# --- what the machines get --------------------------------------------------------------------------------------


def test_exports_and_mounts_agree_path_for_path_with_the_slaves_addresses(mixed: Any) -> None:
    config, monitor, _ = mixed
    transcode = config.transcode
    exported = parse_exports(written_files(script(monitor, "transcode-origin-share"))[tr.EXPORTS_FILE])
    expected_clients = {"den": "192.168.1.20", "nyc": "10.78.0.2", "tokyo": "10.78.0.3"}
    assert list(exported) == [shared.path for shared in tr.shared_directories(transcode)]
    for path, clients in exported.items():
        assert set(clients) == set(expected_clients.values()), path
    for slave, address in expected_clients.items():
        mounted = parse_fstab(fstab_block_of(script(monitor, f"transcode-{slave}-setup")))
        assert set(mounted) == set(exported), slave
        origin = ORIGIN_HOST if slave == "den" else "10.78.0.1"
        for path, (server, source, options) in mounted.items():
            assert (server, source) == (origin, path)
            assert ("rw" in options) == ("rw" in exported[path][address]) == (path == transcode.transcode_dir)
            assert ("ro" in options) == ("ro" in exported[path][address]) == (path != transcode.transcode_dir)


def test_tunnels_pair_each_cloud_slave_with_the_origin(mixed: Any) -> None:
    _, monitor, resolved = mixed
    origin_conf = written_files(script(monitor, "transcode-origin-share"))[tr.WIREGUARD_CONF]
    origin_public = wireguard.public_key(mock_base64("transcode-origin-tunnel-key"))
    peers = re.findall(
        r"\[Peer\]\n# transcode slave (\S+)\nPublicKey = (\S+)\nEndpoint = (\S+)\nAllowedIPs = (\S+)", origin_conf
    )
    assert peers == [
        (
            slave,
            wireguard.public_key(mock_base64(f"transcode-{slave}-tunnel-key")),
            f"{resolved['public_ipv4'][slave]}:51821",
            address,
        )
        for slave, address in (("nyc", "10.78.0.2/32"), ("tokyo", "10.78.0.3/32"))
    ]
    for slave, address in (("nyc", "10.78.0.2/24"), ("tokyo", "10.78.0.3/24")):
        own = written_files(script(monitor, f"transcode-{slave}-setup"))[tr.WIREGUARD_CONF]
        assert f"Address = {address}" in own and f"PublicKey = {origin_public}" in own
    firewall = {
        rule.get("portRange", "icmp"): rule for rule in monitor.named("transcode-nyc-firewall").inputs["inboundRules"]
    }
    assert set(firewall) == {"22", "51821", "icmp"}
    assert firewall["22"]["sourceAddresses"] == ["203.0.113.7/32"] and firewall["22"]["protocol"] == "tcp"
    assert firewall["51821"]["protocol"] == "udp" and firewall["51821"]["sourceAddresses"] == ["0.0.0.0/0", "::/0"]
    linode = monitor.named("transcode-tokyo-firewall").inputs
    assert linode["inboundPolicy"] == "DROP"
    assert {rule.get("ports", "icmp") for rule in linode["inbounds"]} == {"22", "51821", "icmp"}


def test_the_dispatcher_gets_every_slave_with_its_host_key_and_the_slaves_get_its_key(mixed: Any) -> None:
    _, monitor, resolved = mixed
    files = written_files(script(monitor, "transcode-origin-dispatcher"))
    config = dispatcher.parse_config(json.loads(files[tr.ORIGIN_CONFIG]))
    assert [(s.name, s.host, s.port) for s in config.slaves] == [
        ("den", "192.168.1.20", 2222),
        ("nyc", "10.78.0.2", 22),
        ("tokyo", "10.78.0.3", 22),
    ]
    host_keys = {
        slave: "ssh-ed25519 " + mock_base64(f"host-transcode-{slave}-setup") for slave in ("den", "nyc", "tokyo")
    }
    assert files[tr.KNOWN_HOSTS].splitlines() == [
        f"[192.168.1.20]:2222 {host_keys['den']}",
        f"10.78.0.2 {host_keys['nyc']}",
        f"10.78.0.3 {host_keys['tokyo']}",
    ]
    dispatch_key = resolved["dispatch_public_key"]
    assert dispatch_key.endswith(" plex-cdn-dev-dispatch") and dispatch_key.startswith("ssh-ed25519 ")
    for slave in ("den", "nyc", "tokyo"):
        setup = script(monitor, f"transcode-{slave}-setup")
        assert f"printf '%s\\n' '{dispatch_key}'" in setup
        assert "plexmediaserver=1.41.3.9314-a0bfb8370" in setup


def test_destroy_gives_the_origin_back_and_leaves_a_host_slave_as_it_was(mixed: Any) -> None:
    _, monitor, _ = mixed
    dispatcher_command = monitor.named("transcode-origin-dispatcher")
    teardown = script(monitor, "transcode-origin-dispatcher", "delete")
    assert f"plexcdn_restore_transcoder {tr.PLEX_DIR}" in teardown
    assert teardown.index(f"systemctl disable --now {tr.REINSTALL_UNIT}.path") < teardown.index(
        "plexcdn_restore_transcoder /"
    ), "the path unit stops first, or the restored transcoder would be replaced again"
    share_teardown = script(monitor, "transcode-origin-share", "delete")
    assert f"rm -f {tr.EXPORTS_FILE}" in share_teardown and "exportfs -ra" in share_teardown
    assert "plexcdn_replace_block /etc/fstab" in script(monitor, "transcode-den-setup", "delete")
    for name in ("transcode-nyc-setup", "transcode-tokyo-setup"):
        assert "delete" not in monitor.named(name).inputs, "a cloud slave goes with its VM"
    for registration in (
        dispatcher_command,
        monitor.named("transcode-origin-share"),
        monitor.named("transcode-den-setup"),
    ):
        assert registration.delete_before_replace, "a replacement must not run the old teardown after the new set-up"


def test_cloud_slaves_are_vms_like_pops(mixed: Any) -> None:
    config, monitor, _ = mixed
    droplet = monitor.named("transcode-nyc-vm")
    assert droplet.inputs["size"] == "c-4" and droplet.inputs["region"] == "nyc3"
    assert droplet.inputs["name"] == "plex-cdn-dev-transcode-nyc"
    assert "plex-cdn-transcode" in droplet.inputs["tags"]
    assert droplet.ignore_changes == ["userData"]
    user_data = yaml.safe_load(plain(droplet.inputs["userData"]))
    keys = next(f for f in user_data["write_files"] if f["path"] == "/root/.ssh/authorized_keys")["content"]
    assert config.admin.ssh_public_key in keys and "plex-cdn-dev-deploy" in keys
    linode = monitor.named("transcode-tokyo-vm")
    assert linode.inputs["type"] == "g6-dedicated-4" and linode.inputs["label"] == "plex-cdn-dev-transcode-tokyo"
    assert linode.delete_before_replace


def test_host_slaves_only_need_no_cloud_and_no_tunnel(tmp_path: Path) -> None:
    config = config_from(host_only_values())
    monitor, _ = build(config, tmp_path)
    types = {r.type for r in transcode_registrations(monitor)}
    assert types == {SLAVE, ORIGIN, COMMAND, "tls:index/privateKey:PrivateKey"}
    share = script(monitor, "transcode-origin-share")
    assert tr.WIREGUARD_CONF not in written_files(share)
    exported = parse_exports(written_files(share)[tr.EXPORTS_FILE])
    assert {client for clients in exported.values() for client in clients} == {"192.168.1.20", "192.168.1.21"}
    connection = plain(monitor.named("transcode-den-setup").inputs["connection"])
    assert connection["user"] == "admin"
    assert plain(monitor.named("transcode-den-setup").inputs["create"]).startswith("sudo -n /bin/bash -c ")


# --- settings ---------------------------------------------------------------------------------------------------


def _changed(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    values = transcode_values()
    target: Any = values["transcode"]
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return values


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "setting", "hint"),
    [
        (("plexVersion",), "1.41", "transcode.plexVersion", "dpkg-query"),
        (("plexUid",), 0, "transcode.plexUid", "id plex"),
        (("plexGid",), _DELETE, "transcode.plexGid", "is required"),
        (("transcodeDir",), "srv/transcode", "transcode.transcodeDir", "absolute"),
        (("transcodeDir",), "/srv/media/../transcode", "transcode.transcodeDir", "absolute"),
        (
            ("transcodeDir",),
            f"{PLEX_HOME}/Library/Application Support/Plex Media Server/Cache/Transcode",
            "transcode.transcodeDir",
            "Transcoder temporary directory",
        ),
        (("mediaPaths",), [], "transcode.mediaPaths", "non-empty"),
        (
            ("mediaPaths",),
            ["/srv/media", "/srv/media/tv"],
            "transcode.mediaPaths[1]",
            "overlaps transcode.mediaPaths[0]",
        ),
        (("mediaPaths",), ["/etc/media"], "transcode.mediaPaths[0]", "/etc"),
        (("mediaPaths",), [PLEX_HOME], "transcode.mediaPaths[0]", "home"),
        (("mediaPaths",), ['/srv/"quoted"'], "transcode.mediaPaths[0]", "double quotes"),
        (("mediaPaths",), ["/"], "transcode.mediaPaths[0]", "whole system"),
        (("slaves", 1, "name"), "den", "transcode.slaves[1].name", "unique"),
        (("slaves", 1, "name"), "New York", "transcode.slaves[1].name", "lower-case"),
        (("slaves", 1, "name"), "ny--c", "transcode.slaves[1].name", "single '-'"),
        (("slaves", 0, "kind"), "vm", "transcode.slaves[0].kind", "host, cloud"),
        (("slaves", 1, "provider"), "aws", "transcode.slaves[1].provider", "digitalocean, linode"),
        (("slaves", 1, "region"), "mars1", "transcode.slaves[1].region", "nyc3"),
        (("slaves", 2, "size"), "c-4", "transcode.slaves[2].size", "g6-dedicated-4"),
        (("slaves", 0, "provider"), "linode", "transcode.slaves[0].provider", "only slaves of kind cloud"),
        (("slaves", 1, "host"), "192.168.1.30", "transcode.slaves[1].host", "only slaves of kind host"),
        (("slaves", 0, "host"), "den.local", "transcode.slaves[0].host", "IP address"),
        (("slaves", 0, "host"), "8.8.8.8", "transcode.slaves[0].host", "kind cloud"),
        (("slaves", 0, "host"), ORIGIN_HOST, "transcode.slaves[0].host", "the Plex server itself"),
        (("slaves", 0, "user"), "Admin User", "transcode.slaves[0].user", "user name"),
        (("slaves", 0, "port"), 0, "transcode.slaves[0].port", "whole number"),
        (("slaves",), [], "transcode.slaves", "non-empty"),
        (("tunnelSubnet",), _DELETE, "transcode.tunnelSubnet", "required when a slave is of kind cloud (nyc, tokyo)"),
        (("tunnelSubnet",), "10.77.0.0/16", "transcode.tunnelSubnet", "overlaps origin.tunnelSubnet"),
        (("tunnelSubnet",), "10.78.0.0/30", "transcode.tunnelSubnet", "room for 1 cloud slaves"),
        (("tunnelSubnet",), "8.8.8.0/24", "transcode.tunnelSubnet", "private"),
        (("tunnelSubnet",), "192.168.1.0/24", "transcode.slaves[0].host", "inside transcode.tunnelSubnet"),
        (("wireguardPort",), 80, "transcode.wireguardPort", "1024"),
        (("origin",), _DELETE, "transcode.origin", "is required"),
        (("origin", "host"), "not a host!", "transcode.origin.host", "DNS name or an IP address"),
        (("origin", "user"), "Root!", "transcode.origin.user", "user name"),
        (("colour",), "blue", "transcode.colour", "valid settings here"),
    ],
)
def test_transcode_problems_name_the_setting(path: tuple[str | int, ...], value: Any, setting: str, hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_changed(path, value), "dev")
    problems = caught.value.problems
    assert any(p.startswith(f"{setting}:") and hint in p for p in problems), problems


def test_a_second_host_slave_at_the_same_address_is_refused() -> None:
    values = host_only_values()
    values["transcode"]["slaves"][1]["host"] = "192.168.1.20"
    with pytest.raises(ConfigError) as caught:
        parse_config(values, "dev")
    assert [p for p in caught.value.problems if p.startswith("transcode.slaves[1].host:")] != []


def test_every_transcode_problem_is_reported_in_one_run() -> None:
    values = transcode_values(plexVersion="latest", transcodeDir="tmp", mediaPaths=["/usr/share/media"])
    values["transcode"]["slaves"][2]["region"] = "mars1"
    with pytest.raises(ConfigError) as caught:
        parse_config(values, "dev")
    settings = {p.split(":")[0] for p in caught.value.problems}
    assert {
        "transcode.plexVersion",
        "transcode.transcodeDir",
        "transcode.mediaPaths[0]",
        "transcode.slaves[2].region",
    } <= settings


def test_the_commented_example_in_the_dev_stack_is_a_valid_section() -> None:
    lines = EXAMPLE_STACK.read_text().splitlines()
    start = lines.index("  # plex-cdn:transcode:")
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("  #   "):
            break
        block.append(line[len("  # ") :])
    section = yaml.safe_load("\n".join(block))
    values = example_values()
    values["transcode"] = section
    config = parse_config(values, "dev")
    assert config.transcode is not None
    assert [slave.kind for slave in config.transcode.slaves] == ["host", "cloud"]
    assert load_stack_file(EXAMPLE_STACK).transcode is None, "the example stays off until uncommented"


def test_offline_validation_warns_until_the_ssh_key_is_set(tmp_path: Path) -> None:
    path = write_stack(tmp_path / "Pulumi.dev.yaml", transcode_values())
    config = load_stack_file(path)
    assert any("plex-cdn:homeSshKey is not set" in warning for warning in config.warnings)
    document = yaml.safe_load(path.read_text())
    document["config"]["plex-cdn:homeSshKey"] = {"secure": "v1:AAAAencrypted"}
    path.write_text(yaml.safe_dump(document))
    config = load_stack_file(path)
    assert not any("homeSshKey" in warning for warning in config.warnings)
    assert config.transcode is not None and config.transcode.cloud_monthly_usd == 84.0 + 72.0


def test_the_monthly_estimate_counts_cloud_slaves() -> None:
    from plexcdn.cost import estimate

    config = config_from(transcode_values())
    cost = estimate(config)
    assert config.transcode is not None
    slaves = {f"transcode-{s.name}": s.size_info.monthly_usd for s in config.transcode.cloud_slaves}
    assert slaves and all(cost.vms_usd[name] == usd for name, usd in slaves.items())
    assert cost.total_usd == round(sum(cost.vms_usd.values()) + cost.health_checks_usd, 2)
