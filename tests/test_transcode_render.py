"""Transcode offload's rendered files, checked by the tools that read them (bash, shellcheck, wg-quick,
systemd-analyze, cloud-init), and the scripts' building blocks run for real on files of their own."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from plexcdn import wireguard
from plexcdn.config import StackConfig
from plexcdn.transcode import dispatcher
from plexcdn.transcode import render as tr
from tests.conftest import config_from, make_vm_identity
from tests.transcode_fixtures import (
    APP_DATA,
    MEDIA,
    ORIGIN_HOST,
    TRANSCODE_DIR,
    host_only_values,
    parse_exports,
    parse_fstab,
    transcode_values,
    written_files,
)

ORIGIN_KEY = "sSgl0/bhMJQEyl0rVJjN4uiDqC3vbdO8ofZmWlaPRGk="  # a private key made for these tests only
SLAVE_KEY = "yLvMoJuyhnc19J8zlgG3fqT1ivhd1NfElKCbhyvdsUQ="


@pytest.fixture(scope="module")
def config() -> StackConfig:
    return config_from(transcode_values())


def all_scripts(config: StackConfig) -> dict[str, str]:
    assert config.transcode is not None
    scripts = {
        "origin-share": tr.origin_share_script(config),
        "origin-share-teardown": tr.origin_share_teardown_script(config),
        "origin-dispatcher": tr.origin_dispatcher_script(config, tr.placeholder_host_keys(config)),
        "origin-dispatcher-teardown": tr.origin_dispatcher_teardown_script(config),
        "secret-file": tr.secret_file_script(
            tr.WIREGUARD_KEY, "a key", directory_mode="0700", wait_for_first_boot=True
        ),
    }
    for slave in config.transcode.slaves:
        scripts[f"slave-{slave.name}"] = tr.slave_setup_script(config, slave.name)
        scripts[f"slave-{slave.name}-teardown"] = tr.slave_teardown_script(config, slave.name)
    return scripts


STACKS = {"mixed": transcode_values, "host-only": host_only_values}


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_every_rendered_script_parses_with_bash(stack: str, tmp_path: Path) -> None:
    for name, script in all_scripts(config_from(STACKS[stack]())).items():
        path = tmp_path / f"{name}.sh"
        path.write_text(script)
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{name}: {result.stderr}"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck (Debian package shellcheck)")
@pytest.mark.parametrize("stack", sorted(STACKS))
def test_every_rendered_script_passes_shellcheck(stack: str, tmp_path: Path) -> None:
    paths = []
    for name, script in all_scripts(config_from(STACKS[stack]())).items():
        path = tmp_path / f"{name}.sh"
        path.write_text(script)
        paths.append(str(path))
    result = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=warning", *paths], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_commands_fit_in_one_argument_of_sshd_and_the_kernel(config: StackConfig) -> None:
    for name, script in all_scripts(config).items():
        for user in ("root", "admin"):
            assert len(tr.as_root(script, user).encode()) < tr.MAX_COMMAND_BYTES, name
    with pytest.raises(ValueError, match="bytes"):
        tr.as_root("x" * tr.MAX_COMMAND_BYTES, "root")


def test_as_root_uses_sudo_only_for_other_accounts_and_runs_the_script_unchanged() -> None:
    script = 'x="it\'s"\nprintf \'%s|\' "$x" \'$HOME\' "$(echo ok)"\n'
    assert tr.as_root(script, "root").startswith("/bin/bash -c ")
    assert tr.as_root(script, "admin").startswith("sudo -n /bin/bash -c ")
    result = subprocess.run(["sh", "-c", tr.as_root(script, "root")], capture_output=True, text=True, check=True)
    assert result.stdout == "it's|$HOME|ok|"


# --- exports and mounts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_exports_and_mounts_agree_path_for_path(stack: str) -> None:
    config = config_from(STACKS[stack]())
    transcode = config.transcode
    assert transcode is not None
    exported = parse_exports(tr.exports_file(config))
    assert list(exported) == [f"{APP_DATA}/Codecs", TRANSCODE_DIR, *MEDIA]
    addresses = {transcode.slave_address(slave.name) for slave in transcode.slaves}
    for path, clients in exported.items():
        assert set(clients) == addresses, f"{path} must go to exactly the slaves"
    for slave in transcode.slaves:
        address = transcode.slave_address(slave.name)
        mounted = parse_fstab(tr.fstab_block(config, slave.name))
        assert set(mounted) == set(exported), slave.name
        for path, (server, source_path, options) in mounted.items():
            assert source_path == path, "each directory is mounted at the path it has on the Plex server"
            assert server == transcode.origin_address_for(slave.name)
            export_options = exported[path][address]
            writable = path == TRANSCODE_DIR
            assert ("rw" in options) == ("rw" in export_options) == writable, path
            assert ("ro" in options) == ("ro" in export_options) == (not writable), path
            assert "root_squash" in export_options and "no_root_squash" not in export_options
            assert ("actimeo=1" in options) == writable
            assert {"nosuid", "nodev"} <= set(options), "nothing on a share is a program to run with privileges"
        if slave.kind == "cloud":
            assert address == str(transcode.tunnel_address(slave.name))
            assert {server for server, _, _ in mounted.values()} == {str(transcode.origin_tunnel_address)}
        else:
            assert address == slave.host
            assert {server for server, _, _ in mounted.values()} == {ORIGIN_HOST}


def test_cloud_slaves_get_consecutive_tunnel_addresses_after_the_origin(config: StackConfig) -> None:
    transcode = config.transcode
    assert transcode is not None
    assert str(transcode.origin_tunnel_address) == "10.78.0.1"
    assert [str(transcode.tunnel_address(s.name)) for s in transcode.cloud_slaves] == ["10.78.0.2", "10.78.0.3"]
    with pytest.raises(KeyError):
        transcode.tunnel_address("den")


# --- WireGuard ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("wg-quick") is None, reason="needs wireguard-tools")
def test_wireguard_configs_parse_with_wg_quick_and_name_each_other(config: StackConfig, tmp_path: Path) -> None:
    transcode = config.transcode
    assert transcode is not None
    origin_public = wireguard.public_key(ORIGIN_KEY)
    slave_public = wireguard.public_key(SLAVE_KEY)
    peers = {
        slave.name: tr.CloudPeer(f"203.0.113.{index + 10}", slave_public)
        for index, slave in enumerate(transcode.cloud_slaves)
    }
    texts = {"origin": tr.origin_wireguard_conf(config, peers)}
    texts.update(
        {slave.name: tr.slave_wireguard_conf(config, slave.name, origin_public) for slave in transcode.cloud_slaves}
    )
    for side, text in texts.items():
        path = tmp_path / side / f"{tr.WIREGUARD_INTERFACE}.conf"
        path.parent.mkdir()
        path.write_text(text)
        path.chmod(0o600)
        stripped = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True, check=False)
        assert stripped.returncode == 0, stripped.stderr
        assert "PrivateKey" not in text, "the private key stays in its own file, which PostUp loads"
        assert f"PostUp = wg set %i private-key {tr.WIREGUARD_KEY}" in text
    origin = texts["origin"]
    assert f"Address = {transcode.origin_tunnel_address}/24" in origin
    for index, slave in enumerate(transcode.cloud_slaves):
        assert f"Endpoint = 203.0.113.{index + 10}:{transcode.wireguard_port}" in origin
        assert f"AllowedIPs = {transcode.tunnel_address(slave.name)}/32" in origin
        own = texts[slave.name]
        assert f"Address = {transcode.tunnel_address(slave.name)}/24" in own
        assert f"ListenPort = {transcode.wireguard_port}" in own
        assert f"PublicKey = {origin_public}" in own and f"AllowedIPs = {transcode.origin_tunnel_address}/32" in own
        assert "Endpoint" not in own, "the slave never dials: the Plex server at home may be behind NAT"
    assert origin.count("PersistentKeepalive = 25") == len(transcode.cloud_slaves)


def test_a_stack_without_cloud_slaves_has_no_tunnel() -> None:
    config = config_from(host_only_values())
    share = tr.origin_share_script(config)
    assert tr.WIREGUARD_CONF not in written_files(share)
    assert f"systemctl disable --now wg-quick@{tr.WIREGUARD_INTERFACE}" in share, "a tunnel left from before goes"
    for slave in ("den", "attic"):
        script = tr.slave_setup_script(config, slave)
        assert f"plexcdn_wireguard_up {tr.WIREGUARD_INTERFACE}" not in script and "wireguard-tools" not in script


# --- other files ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian package systemd)")
def test_the_reinstall_units_pass_systemd_analyze_verify(config: StackConfig, tmp_path: Path) -> None:
    files = written_files(tr.origin_dispatcher_script(config, tr.placeholder_host_keys(config)))
    units = {path: text for path, text in files.items() if path.startswith("/etc/systemd/system/")}
    assert set(units) == {
        f"/etc/systemd/system/{tr.REINSTALL_UNIT}.path",
        f"/etc/systemd/system/{tr.REINSTALL_UNIT}.service",
    }
    paths = []
    for path, text in units.items():
        local = tmp_path / Path(path).name
        local.write_text(text)
        paths.append(str(local))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    path_unit = units[f"/etc/systemd/system/{tr.REINSTALL_UNIT}.path"]
    assert f"PathChanged={tr.TRANSCODER}\n" in path_unit
    service = units[f"/etc/systemd/system/{tr.REINSTALL_UNIT}.service"]
    assert f"ExecStart={tr.PYTHON} -I {tr.DISPATCHER_PATH} --install {tr.PLEX_DIR}\n" in service


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="needs cloud-init (Debian package cloud-init)")
def test_cloud_slave_first_boot_passes_cloud_init_schema(config: StackConfig, tmp_path: Path) -> None:
    path = tmp_path / "slave.yaml"
    identity = make_vm_identity(config.admin.ssh_public_key)
    deploy = identity.deploy_public_key
    path.write_text(tr.slave_cloud_init(config, "nyc", identity))
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = path.read_text()
    assert config.admin.ssh_public_key in text and deploy in text


def test_dispatcher_configs_are_what_the_dispatcher_accepts(config: StackConfig) -> None:
    transcode = config.transcode
    assert transcode is not None
    origin = dispatcher.parse_config(tr.origin_dispatcher_config(transcode))
    assert [(s.name, s.host, s.port, s.user) for s in origin.slaves] == [
        ("den", "192.168.1.20", 2222, "plex"),
        ("nyc", "10.78.0.2", 22, "plex"),
        ("tokyo", "10.78.0.3", 22, "plex"),
    ]
    assert {s.identity_file for s in origin.slaves} == {tr.DISPATCH_KEY}
    assert {s.guard_path for s in origin.slaves} == {tr.DISPATCHER_PATH}
    assert origin.plex_version == "", "the Plex server's version is read from dpkg at every transcode"
    assert origin.real_local_transcoder() != tr.TRANSCODER
    guard = dispatcher.parse_config(tr.guard_config(transcode))
    assert guard.transcoder == tr.TRANSCODER
    assert guard.plex_version == "", "a slave's probe must report what is installed, not what was asked for"


def test_known_hosts_name_each_slave_as_the_dispatcher_dials_it(config: StackConfig) -> None:
    transcode = config.transcode
    assert transcode is not None
    keys = tr.placeholder_host_keys(config)
    lines = tr.known_hosts(transcode, keys).splitlines()
    assert lines == [f"[192.168.1.20]:2222 {keys['den']}", f"10.78.0.2 {keys['nyc']}", f"10.78.0.3 {keys['tokyo']}"]
    with pytest.raises(ValueError, match="not an SSH host key"):
        tr.known_hosts(transcode, {**keys, "nyc": "ssh-ed25519 AAAA\nevil.example ssh-ed25519 AAAA"})
    probe = tr.probe_command(transcode, "den")
    for word in (
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        f'UserKnownHostsFile="{tr.KNOWN_HOSTS}"',
        tr.DISPATCH_KEY,
    ):
        assert word in probe
    assert probe.endswith("'--remote-guard probe'") or "--remote-guard probe" in probe


def test_the_host_key_is_read_from_the_last_line_the_set_up_prints() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfTheSlave"
    assert tr.parse_host_key(f"apt noise\n{tr.HOST_KEY_PREFIX}{key}\n", "den") == key
    with pytest.raises(ValueError, match="den"):
        tr.parse_host_key("set-up done\n", "den")
    with pytest.raises(ValueError, match="den"):
        tr.parse_host_key(f"{tr.HOST_KEY_PREFIX}ssh-ed25519 AAAA extra words\n", "den")


def test_slave_scripts_pin_the_version_and_hand_the_guard_to_the_dispatcher(config: StackConfig) -> None:
    host = tr.slave_setup_script(config, "den", "ssh-ed25519 AAAAdispatch plex-cdn-dev-dispatch")
    cloud = tr.slave_setup_script(config, "nyc", "ssh-ed25519 AAAAdispatch plex-cdn-dev-dispatch")
    for script in (host, cloud):
        assert '"plexmediaserver=1.41.3.9314-a0bfb8370"' in script
        assert "apt-mark hold plexmediaserver" in script
        assert "systemctl disable --now plexmediaserver.service" in script
        assert "useradd --system --uid 999 --gid 998" in script
        assert "--authorized-keys-line" in script and "'ssh-ed25519 AAAAdispatch plex-cdn-dev-dispatch'" in script
        assert config.transcode is not None
        assert written_files(script)[tr.GUARD_CONFIG] == json.dumps(tr.guard_config(config.transcode), indent=1) + "\n"
        assert written_files(script)["/etc/apt/sources.list.d/plexmediaserver.list"] == tr.PLEX_APT_SOURCE + "\n"
    assert "--from 10.78.0.1" in cloud, "over the tunnel the dispatch key is good from the origin's address only"
    assert "--from" not in host
    assert "cloud-init status --wait" in cloud and "cloud-init" not in host


def test_the_origin_checks_itself_against_the_settings(config: StackConfig) -> None:
    script = tr.origin_share_script(config)
    assert '[ "$installed" = "1.41.3.9314-a0bfb8370" ]' in script
    assert '[ "$uid" = "999" ]' in script and '[ "$gid" = "998" ]' in script
    for path in (APP_DATA, f"{APP_DATA}/Codecs", TRANSCODE_DIR, *MEDIA):
        assert f"[ -d {shlex.quote(path)} ]" in script
    assert written_files(script)[tr.EXPORTS_FILE] == tr.exports_file(config)
    assert "exportfs -ra" in script
    teardown = tr.origin_share_teardown_script(config)
    assert f"rm -f {tr.EXPORTS_FILE}" in teardown and "exportfs -ra" in teardown


# --- the scripts' building blocks, run --------------------------------------------------------------------------


def prelude(config: StackConfig) -> str:
    """The shell functions every script starts with."""
    script = tr.origin_dispatcher_teardown_script(config)
    return script[: script.index("systemctl disable")]


def run_bash(script: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script, "bash", *args], input=stdin, capture_output=True, text=True, check=False
    )


def test_fstab_block_replacement_keeps_every_other_line(config: StackConfig, tmp_path: Path) -> None:
    fstab = tmp_path / "fstab"
    original = "UUID=1234 / ext4 defaults 0 1\n# a comment of the owner's\n/dev/sdb1 /srv ext4 defaults 0 2"
    fstab.write_text(original)  # no newline at the end, as hand-edited files sometimes have
    fstab.chmod(0o644)
    block = tmp_path / "block"
    begin, end = tr.fstab_markers(config)
    call = prelude(config) + 'plexcdn_replace_block "$1" "$2" "$3" "$4"\n'
    block.write_text(tr.fstab_block(config, "den"))
    for _ in range(2):
        assert run_bash(call, str(fstab), begin, end, str(block)).returncode == 0
        text = fstab.read_text()
        assert text == original + "\n" + begin + "\n" + block.read_text() + end + "\n"
    block.write_text(tr.fstab_block(config, "nyc"))
    assert run_bash(call, str(fstab), begin, end, str(block)).returncode == 0
    assert fstab.read_text().count(begin) == 1 and "10.78.0.1:" in fstab.read_text()
    assert ORIGIN_HOST not in fstab.read_text()
    block.write_text("")
    assert run_bash(call, str(fstab), begin, end, str(block)).returncode == 0
    assert fstab.read_text() == original + "\n"
    assert stat.S_IMODE(fstab.stat().st_mode) == 0o644


def test_authorized_keys_gain_the_guard_line_and_keep_the_owners_keys(config: StackConfig, tmp_path: Path) -> None:
    keys = tmp_path / "authorized_keys"
    own = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwnersKey me@laptop\n"
    keys.write_text(own)
    public = tmp_path / "dispatch.pub"
    comment = tr.dispatch_key_comment(config.stack)
    public.write_text(f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDispatch {comment}\n")
    line = subprocess.run(
        [
            "python3",
            "-I",
            str(tr.DISPATCHER_SOURCE),
            "--authorized-keys-line",
            str(public),
            "--config",
            tr.GUARD_CONFIG,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert line.startswith("restrict,") and "command=" in line and line.endswith(comment)
    call = prelude(config) + 'plexcdn_authorize_key "$1" "$(id -un):$(id -gn)" 0640 "$2" "$3"\n'
    for _ in range(2):
        result = run_bash(call, str(keys), comment, line)
        assert result.returncode == 0, result.stderr
        assert keys.read_text() == own + line + "\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o640
    assert run_bash(call, str(keys), comment, "").returncode == 0
    assert keys.read_text() == own


def test_teardown_gives_plex_its_own_transcoder_back(config: StackConfig, tmp_path: Path) -> None:
    plex_dir = tmp_path / "plexmediaserver"
    plex_dir.mkdir()
    transcoder = plex_dir / dispatcher.TRANSCODER_NAME
    real_bytes = b"\x7fELF pretend transcoder " + os.urandom(64)
    transcoder.write_bytes(real_bytes)
    transcoder.chmod(0o755)
    call = prelude(config) + 'plexcdn_restore_transcoder "$1"\n'
    assert run_bash(call, str(plex_dir)).returncode == 0
    assert transcoder.read_bytes() == real_bytes, "nothing to restore while the dispatcher is not installed"
    dispatcher.install(plex_dir, source=tr.DISPATCHER_SOURCE)
    assert transcoder.read_bytes() == tr.DISPATCHER_SOURCE.read_bytes()
    result = run_bash(call, str(plex_dir))
    assert result.returncode == 0, result.stderr
    assert transcoder.read_bytes() == real_bytes
    assert not (plex_dir / (dispatcher.TRANSCODER_NAME + dispatcher.REAL_SUFFIX)).exists()
    assert os.access(transcoder, os.X_OK)
    assert run_bash(call, str(plex_dir)).returncode == 0
    assert transcoder.read_bytes() == real_bytes


def test_write_file_reports_changes_and_writes_exact_content(config: StackConfig, tmp_path: Path) -> None:
    target = tmp_path / "conf" / "file.conf"
    target.parent.mkdir()
    content = "line with 'quotes' and $HOME and `ticks`\nPLEXCDN_EOF is fine inside a line\n"
    owner = f"{os.getuid()}"
    snippet = prelude(config) + tr.write_file(str(target), content, "0640", owner, str(os.getgid()))
    snippet += 'echo "$plexcdn_changed"\n'
    assert run_bash(snippet).stdout == "yes\n"
    assert target.read_text() == content
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert run_bash(snippet).stdout == "no\n"
    with pytest.raises(ValueError, match="delimiter"):
        tr.write_file(str(target), "a\nPLEXCDN_EOF\nb\n")
    assert list(target.parent.iterdir()) == [target], "no temporary files are left behind"


@pytest.mark.skipif(os.geteuid() != 0, reason="the dispatcher is installed owned by root")
def test_the_embedded_dispatcher_arrives_intact(config: StackConfig, tmp_path: Path) -> None:
    target = tmp_path / "opt" / "dispatcher.py"
    result = run_bash(prelude(config) + tr.install_dispatcher(str(target)))
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == tr.DISPATCHER_SOURCE.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    damaged = tr.install_dispatcher(str(target)).replace("gzip -dc", "gzip -dc | head -c 1000")
    result = run_bash(prelude(config) + damaged)
    assert result.returncode != 0 and "damaged" in result.stderr


def test_secret_file_script_takes_the_secret_from_stdin_only(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "dispatch_ed25519"
    secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1ib2R5\n-----END OPENSSH PRIVATE KEY-----\n"
    script = tr.secret_file_script(str(path), "the dispatch key", uid=os.getuid(), gid=os.getgid())
    assert "c2VjcmV0" not in script
    result = run_bash(script, stdin=secret)
    assert result.returncode == 0, result.stderr
    assert path.read_text() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "c2VjcmV0" not in result.stdout + result.stderr
    empty = run_bash(script, stdin="")
    assert empty.returncode != 0 and "nothing arrived" in empty.stderr
    assert path.read_text() == secret, "an empty stdin never replaces the key"


# --- what keeps a slave's plex account to transcoding -----------------------------------------------------------


@pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="needs sshd (Debian package openssh-server)")
def test_sshd_reads_the_plex_accounts_keys_from_the_root_owned_file_only(config: StackConfig, tmp_path: Path) -> None:
    drop_in = tmp_path / "plexcdn-transcode.conf"
    drop_in.write_text(tr.sshd_drop_in(config))
    host_key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    main = tmp_path / "sshd_config"
    # Debian's sshd_config: its drop-ins first, then settings of its own that must stay global.
    main.write_text(f"Include {drop_in}\nHostKey {host_key}\nUsePAM yes\nX11Forwarding yes\nPrintMotd no\n")
    assert subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(main)], capture_output=True, check=False).returncode == 0

    def effective(user: str) -> dict[str, str]:
        out = subprocess.run(
            ["/usr/sbin/sshd", "-T", "-f", str(main), "-C", f"user={user},host=origin,addr=192.168.1.10"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    plex = effective(tr.SLAVE_USER)
    assert plex["authorizedkeysfile"] == tr.SLAVE_AUTHORIZED_KEYS
    assert (plex["permittty"], plex["allowtcpforwarding"], plex["x11forwarding"]) == ("no", "remote", "no")
    assert plex["permituserrc"] == "no" and plex["allowagentforwarding"] == "no"
    other = effective("admin")
    assert other["authorizedkeysfile"] == ".ssh/authorized_keys .ssh/authorized_keys2", "nobody else's keys move"
    assert other["x11forwarding"] == "yes" and other["permittty"] == "yes"


def test_the_slave_puts_the_key_where_plex_cannot_write_and_gives_plex_a_home_of_roots(config: StackConfig) -> None:
    script = tr.slave_setup_script(config, "den", "ssh-ed25519 AAAAdispatch plex-cdn-dev-dispatch")
    files = written_files(script)
    assert files[tr.SSHD_DROP_IN] == tr.sshd_drop_in(config)
    assert f"plexcdn_authorize_key {tr.SLAVE_AUTHORIZED_KEYS} root:{tr.SLAVE_USER} 0640" in script
    assert f"install -d -o root -g root -m 0755 {tr.SLAVE_HOME}" in script
    assert f"--home {tr.SLAVE_HOME} {tr.SLAVE_USER}" in script
    assert "sshd -t" in script and "sshd -T -C user=plex" in script
    teardown = tr.slave_teardown_script(config, "den")
    assert f"rm -f {tr.SLAVE_AUTHORIZED_KEYS} {tr.SSHD_DROP_IN}" in teardown


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="nft --check needs root and nftables")
def test_the_slave_filter_and_its_unit_load(config: StackConfig, tmp_path: Path) -> None:
    rules = tmp_path / "filter.nft"
    rules.write_text(tr.slave_filter(config))
    result = subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "meta skuid != 999" in rules.read_text() and "tcp dport 32400" in rules.read_text()
    script = tr.slave_setup_script(config, "den")
    assert written_files(script)[tr.SLAVE_FILTER] == tr.slave_filter(config)
    if shutil.which("systemd-analyze") is not None:
        unit = tmp_path / f"{tr.SLAVE_FILTER_UNIT}.service"
        unit.write_text(tr.slave_filter_unit(config))
        verified = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
        )
        assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr


def make_key(home: Path, name: str) -> tuple[str, str]:
    """An OpenPGP key made in HOME: (its fingerprint, its public key armoured)."""
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    try:
        subprocess.run(
            [*gpg, "--quick-gen-key", f"{name} <{name}@example.com>", "ed25519", "sign", "never"], env=env, check=True
        )
        listing = subprocess.run(
            ["gpg", "--batch", "--with-colons", "--list-keys"], env=env, capture_output=True, text=True, check=True
        ).stdout
        fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        armoured = subprocess.run(
            ["gpg", "--batch", "--armor", "--export", fingerprint], env=env, capture_output=True, text=True, check=True
        ).stdout
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
    return fingerprint, armoured


@pytest.mark.skipif(shutil.which("gpg") is None, reason="needs gpg (Debian package gpg)")
def test_the_apt_key_is_trusted_only_when_it_is_the_published_one(config: StackConfig, tmp_path: Path) -> None:
    plex_fingerprint, plex_key = make_key(tmp_path / "publisher", "publisher")
    other_fingerprint, other_key = make_key(tmp_path / "attacker", "attacker")
    call = prelude(config) + 'plexcdn_fetch_apt_key "file://$1" "$2" "$3"\n'
    keyring = tmp_path / "plexmediaserver.v2.gpg"
    served = tmp_path / "served.key"

    def fetch(text: str) -> subprocess.CompletedProcess[str]:
        served.write_text(text)
        return run_bash(call, str(served), plex_fingerprint, str(keyring))

    for wrong in (other_key, plex_key + other_key, other_key + plex_key, "not a key\n"):
        result = fetch(wrong)
        assert result.returncode != 0 and "not the one its publisher names" in result.stderr, result.stderr
        assert not keyring.exists(), "nothing is trusted"
    result = fetch(plex_key)
    assert result.returncode == 0, result.stderr
    shown = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--show-keys", str(keyring)],
        env={**os.environ, "GNUPGHOME": str(tmp_path / "publisher")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    primaries = [line for line in shown.splitlines() if line.startswith("pub:")]
    assert len(primaries) == 1 and f":{plex_fingerprint}:" in shown and other_fingerprint not in shown
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o644
    script = tr.slave_setup_script(config, "den")
    assert f"plexcdn_fetch_apt_key {tr.PLEX_APT_KEY_URL} {tr.PLEX_APT_KEY_FINGERPRINT} {tr.PLEX_APT_KEYRING}" in script
    assert written_files(script)["/etc/apt/sources.list.d/plexmediaserver.list"] == (
        f"deb [signed-by={tr.PLEX_APT_KEYRING}] https://repo.plex.tv/deb/ public main\n"
    )
