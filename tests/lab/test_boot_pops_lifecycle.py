"""A POP's life after its first boot, on the session's guests (tests/lab/conftest.py): `pulumi up` of a changed
config in place, a release nginx rejects, a forced renewal, a reboot; then the origin link's three modes
against a Plex host guest (labs/plex_host.py), switched in place as a user changing `plex-cdn:origin`
would; then `pulumi destroy`, after which the Plex host must be as it was before the stack existed.

Each `pulumi up` reruns the program with the changed config under the same engine state (same keys,
certificates and VMs: labs.boot_lab.LabStack) and applies the changed steps to the running guests. The
tests run in the order written and build on each other, as the life of one stack does.

Needs root, QEMU and mmdebstrap, and the network for the package cache. Run under the lab lock:
    flock /tmp/plexcdn-lab.lock .venv/bin/python -m pytest tests/lab/test_boot_pops_lifecycle.py -q
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from labs import guest_environment as env
from labs import plex_host, remote_steps
from labs.boot_lab import VmRequest
from labs.guests import Guest, qemu_missing
from labs.netns import lab_unavailable_reason
from labs.plex_standin import MEDIA_PATH, SLOW_PATH, media_bytes, slow_body
from labs.remote_steps import CommandStep, CopyPlan, Deployment, Session, StepError, StepRecord, StepRunner
from plexcdn import agent, render
from plexcdn.config import StackConfig
from tests.conftest import config_from, example_values
from tests.lab.example_stack import ROOT, Pops, wait_until


def _reason() -> str | None:
    return lab_unavailable_reason() or qemu_missing()


pytestmark = [pytest.mark.lab, pytest.mark.skipif(_reason() is not None, reason=f"boot lab: {_reason()}")]

HOME = "home"
HOME_MEDIA_BYTES = 16 * 1024 * 1024
AGENT_PORT = 32443
# A paced stream through the edge, long enough to stay open across a deploy of both POPs.
SLOW_RATE = 32768
SLOW_SECONDS = 120


@dataclass
class Lifecycle:
    pops: Pops
    values: dict[str, Any]  # the stack file's values as last deployed
    home: Guest
    home_private_key: str = field(repr=False)
    home_media_sha256: str
    snapshots: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    destroyed: list[StepRecord] | None = None
    deployment_before_destroy: Deployment | None = None

    @property
    def lab(self) -> Any:
        return self.pops.lab

    def config(self, values: dict[str, Any]) -> StackConfig:
        return config_from(values, self.pops.config.stack)

    def up(self, values: dict[str, Any], runner: StepRunner | None = None) -> StepRunner:
        """`pulumi up` of the stack with `values`; returns the runner, whose records say what ran."""
        runner = runner or self.lab.step_runner()
        self.pops.stack.up(self.config(values), runner)
        self.values = values
        return runner

    def on_home(self, command: str, stdin: str | None = None, timeout: float = 300) -> str:
        result = self.lab.run(self.home, command, stdin=stdin, timeout=timeout)
        assert result.returncode == 0, f"home: {command} exited {result.returncode}: {result.stdout} {result.stderr}"
        return str(result.stdout)

    def snapshot(self) -> dict[str, list[str]]:
        return plex_host.parse_snapshot(self.on_home(plex_host.snapshot_script(), timeout=600))

    def origin_requests(self, listener: str, path: str) -> list[dict[str, Any]]:
        """What reached the Plex host's stand-in `listener` (lan, loopback, tunnel) for `path`."""
        log = f"{plex_host.DATA_DIR}/{listener}-headers.jsonl"
        lines = self.on_home(f"cat {log} 2>/dev/null || true").splitlines()
        return [record for record in map(json.loads, lines) if record.get("path", "").split("?")[0] == path]


def _ssh_key() -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode() + " you@home"


@pytest.fixture(scope="module")
def life(pops: Pops, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    """The stack as first deployed, and the Plex host booting beside it (the POP tests run meanwhile).

    The unreachable-ACME stack's guest has done its part (tests/lab/test_boot_pops.py): it makes room."""
    lab = pops.lab
    if "solo" in lab.guests and lab.guest("solo").running():
        lab.stop_guest("solo")
    assert lab.ca is not None
    origin_name = pops.config.origin.host
    certificate = lab.ca.issue([origin_name], tmp_path_factory.mktemp("home-tls"), "home-plex")
    private_key, public_key = _ssh_key()
    home_address = str(env.guest_address(len(lab.guests)))
    tunnel = config_from(_wireguard_values(example_values()), pops.config.stack).origin.home_tunnel_address
    user_data = plex_host.user_data(
        lan_address=home_address,
        tunnel_address=str(tunnel),
        home_public_key=public_key,
        tls_fullchain=certificate.fullchain.read_bytes(),
        tls_key=certificate.privkey.read_bytes(),
        media_bytes=HOME_MEDIA_BYTES,
    )
    (home,) = lab.boot([VmRequest(HOME, user_data, hostname=plex_host.HOSTNAME)])
    assert home.address == home_address
    media_sha256 = hashlib.sha256(media_bytes(0, 0, HOME_MEDIA_BYTES)).hexdigest()
    yield Lifecycle(pops, example_values(), home, private_key, media_sha256)


@pytest.fixture(scope="module")
def home(life: Lifecycle) -> Lifecycle:
    """The Plex host up, as its user has it before the stack touches it: the baseline snapshot."""
    if "before the stack" not in life.snapshots:
        life.lab.wait_ready(life.home, timeout=1200)
        status = life.home.cloud_init_status(life.lab.lab_private_key(), life.home.host_key())
        assert status.clean, status.raw
        units = [listener.unit for listener in plex_host.listeners(life.home.address, "")]
        assert life.on_home(f"systemctl is-active {' '.join(units)}").split() == ["active"] * len(units)
        life.snapshots["before the stack"] = life.snapshot()
    return life


# --- helpers ---------------------------------------------------------------------------------------------------


def _with(values: dict[str, Any], **nginx: int) -> dict[str, Any]:
    changed = copy.deepcopy(values)
    changed["nginx"].update(nginx)
    return changed


def _wireguard_values(values: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(values)
    origin = changed["origin"]
    changed["origin"] = {"host": origin["host"], "port": origin["port"], "link": "wireguard"}
    return changed


def _agent_values(values: dict[str, Any], home: Guest) -> dict[str, Any]:
    changed = copy.deepcopy(values)
    origin = changed["origin"]
    changed["origin"] = {
        "host": origin["host"],
        "port": origin["port"],
        "link": "public",
        "verifyName": origin["host"],
        "agent": {
            "listenPort": AGENT_PORT,
            "sshHost": home.address,
            "sshHostKey": home.host_key(),
            "applyFirewall": True,
        },
    }
    # Plex's settings through its API are the status lab's (tests/lab/test_status.py, against the stand-in's
    # /:/prefs); this Plex host's stand-in keeps no Preferences.xml to read the owner's token from.
    changed["plex"] = {"applySettings": False}
    return changed


def _deployed_release(runner: StepRunner, pop: str) -> str:
    """The release a deploy step says went live (its last line)."""
    record = next(r for r in reversed(runner.records) if r.name == f"{pop}-nginx-deploy" and r.returncode == 0)
    last = record.stdout.strip().splitlines()[-1]
    assert "now serves release" in last, record.stdout
    return last.rsplit(" ", 1)[-1]


def _boot_id(life: Lifecycle, pop: str) -> str:
    return life.pops.on(pop, "cat /proc/sys/kernel/random/boot_id").strip()


def _served_serial(life: Lifecycle, pop: str) -> int:
    """The serial of the certificate the POP shows a viewer for the shared name."""
    address = life.pops.guest(pop).address
    shell = (
        f"openssl s_client -connect {address}:443 -servername {life.pops.config.shared_name} </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial"
    )
    result = subprocess.run(
        ["ip", "netns", "exec", life.lab.viewer_namespace, "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.startswith("serial="), result.stdout + result.stderr
    return int(result.stdout.strip().removeprefix("serial="), 16)


def _tampering_copy(host: str, tamper: str) -> remote_steps.CopyFunction:
    """CopyToRemote that, on `host`, runs `tamper` in the copied release directory before the deploy does."""

    def copy_then_tamper(session: Session, source: str, remote_path: str) -> CopyPlan:
        assert isinstance(session, remote_steps.SshSession)
        plan = remote_steps.copy_directory(session, source, remote_path)
        if session.connection.host == host:
            release_dir = f"{remote_path}/{Path(source).name}"
            result = session.run(f"cd {release_dir} && {tamper}")
            assert result.returncode == 0, result.stderr
        return plan

    return copy_then_tamper


def _boot_finished(lab: Any, guest: Guest) -> bool:
    state = lab.run(guest, "systemctl is-system-running", timeout=60).stdout.strip()
    return state in ("running", "degraded")


def _view_media(life: Lifecycle) -> dict[str, Any]:
    return life.pops.view("get", MEDIA_PATH, "--sha256")


def _forwarded_for(record: dict[str, Any]) -> list[str]:
    return [part.strip() for part in record["headers"].get("x-forwarded-for", "").split(",")]


def _curl_from(life: Lifecycle, pop: str, options: str, timeout_s: int = 10) -> tuple[int, str]:
    """curl on a POP to the agent's port (by the origin's name, as the hub reaches it): (exit code, HTTP status)."""
    url = f"https://{life.pops.config.origin.host}:{AGENT_PORT}/identity"
    command = f"curl -sS -o /dev/null -w '%{{http_code}}' -m {timeout_s} {options} {url}"
    result = life.lab.run(life.pops.guest(pop), command, timeout=120)
    return result.returncode, result.stdout.strip()


ORIGIN_CA = f"--cacert /etc/nginx/{render.ORIGIN_CA_FILE}"
HUB_CERTIFICATE = f"--cert /etc/nginx/{render.ORIGIN_CLIENT_CERT_FILE} --key /etc/nginx/{render.ORIGIN_CLIENT_KEY_FILE}"
CURL_TIMED_OUT = 28
CURL_REFUSED = 7


# --- a POP's life ------------------------------------------------------------------------------------------------


def test_a_config_change_deploys_in_place_while_a_stream_keeps_going(life: Lifecycle) -> None:
    pops = life.pops
    boot_ids = {pop: _boot_id(life, pop) for pop in ("us", "asia")}
    releases = {pop: pops.release(pop) for pop in ("us", "asia")}
    total = SLOW_RATE * SLOW_SECONDS
    stream = subprocess.Popen(
        pops.viewer_argv("get", f"{SLOW_PATH}?rate={SLOW_RATE}&seconds={SLOW_SECONDS}", "--sha256"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        wait_until(
            lambda: any(h.get("path", "").startswith(SLOW_PATH) for h in pops.headers_seen()),
            60,
            "the stream reaches the origin",
            interval=1,
        )
        changed = _with(life.values, streamBufferMb=life.values["nginx"]["streamBufferMb"] * 2)
        runner = life.up(changed)
        assert stream.poll() is None, "the stream ended before the deploy did: lengthen SLOW_SECONDS"
        out, err = stream.communicate(timeout=SLOW_SECONDS + 120)
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.communicate()
    for pop in ("us", "asia"):
        deployed = _deployed_release(runner, pop)
        assert deployed != releases[pop], pop
        assert pops.release(pop) == deployed, pop
        assert _boot_id(life, pop) == boot_ids[pop], f"{pop} was changed in place, not rebooted"
    unchanged = {r.name for r in runner.records if r.operation == "unchanged"}
    assert {"us-certbot-credentials", "us-boot-wait", "asia-certbot-credentials", "asia-boot-wait"} <= unchanged
    assert stream.returncode == 0, err
    received = json.loads(out)
    assert received["status"] == 200 and received["size"] == total, received
    assert received["sha256"] == hashlib.sha256(slow_body(0, total)).hexdigest(), "the stream lost or repeated bytes"


def test_a_release_nginx_rejects_rolls_back_and_the_pop_keeps_serving(life: Lifecycle) -> None:
    pops = life.pops
    before = pops.release("asia")
    hub_before = pops.release("us")
    config_before = pops.on("asia", "cat /etc/nginx/nginx.conf")
    changed = _with(life.values, artworkCacheMb=life.values["nginx"]["artworkCacheMb"] // 2)
    # The release arrives broken (cut off halfway), as an interrupted copy would leave it.
    cut = "size=$(stat -c %s nginx/nginx.conf); head -c $((size / 2)) nginx/nginx.conf > cut && mv cut nginx/nginx.conf"
    lab = life.lab
    runner = StepRunner(
        lab.lab_namespace,
        lab.steps_log,
        host_key_for=lab.host_key_for,
        copy=_tampering_copy(pops.guest("asia").address, cut),
    )
    with pytest.raises(StepError) as failed:
        life.up(changed, runner)
    assert "asia-nginx-deploy" in str(failed.value)
    assert "nginx -t rejected release" in str(failed.value) and "the previous config stays live" in str(failed.value)
    assert pops.release("asia") == before
    assert pops.on("asia", "cat /etc/nginx/nginx.conf") == config_before
    assert pops.on("asia", "systemctl is-active nginx").strip() == "active"
    assert pops.lab.run(pops.guest("asia"), "ls -d /etc/plex-cdn/nginx-previous.*").returncode != 0, "backup left"
    assert pops.view("get", "/identity")["status"] == 200
    # The copy succeeded, so the stack's state holds the damaged release as copied: the user backs the change
    # out. Both releases are copied again; the hub deploys again only if the change went live there before the
    # edge's deploy failed (the two deploys do not depend on each other, so either may have run first).
    hub_went_live = any(
        r.name == "us-nginx-deploy" and r.operation == "update" and r.returncode == 0 for r in runner.records
    )
    runner = life.up(life.values)
    ran = {r.name: r.operation for r in runner.records if r.operation != "unchanged"}
    expected = {"us-nginx-release": "copy", "asia-nginx-release": "copy"}
    if hub_went_live:
        expected["us-nginx-deploy"] = "update"
    assert ran == expected, ran
    assert pops.release("asia") == before
    assert pops.release("us") == hub_before


def test_a_forced_renewal_reloads_nginx_with_the_new_certificate(life: Lifecycle) -> None:
    pops = life.pops
    name = pops.config.pop_name("asia")
    served_before = _served_serial(life, "asia")
    live = x509.load_pem_x509_certificate(pops.on("asia", f"cat /etc/letsencrypt/live/{name}/cert.pem").encode())
    assert live.serial_number == served_before
    # Due the way an operator makes it due: renew this many days before expiry, i.e. now.
    days = (live.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days + 1
    renewal_conf = f"/etc/letsencrypt/renewal/{name}.conf"
    pops.on("asia", f"sed -i '1i renew_before_expiry = {days} days' {renewal_conf}")
    try:
        pops.on("asia", "systemctl start plexcdn-certbot-renew.service", timeout=900)
    finally:
        pops.on("asia", f"sed -i '/^renew_before_expiry = /d' {renewal_conf}")
    assert pops.on("asia", "systemctl show -P Result plexcdn-certbot-renew.service").strip() == "success"
    renewed = x509.load_pem_x509_certificate(pops.on("asia", f"cat /etc/letsencrypt/live/{name}/cert.pem").encode())
    assert renewed.serial_number != served_before, "certbot did not renew"
    wait_until(lambda: _served_serial(life, "asia") == renewed.serial_number, 60, "nginx serves the new certificate", 2)
    assert pops.view("get", "/identity")["status"] == 200


def test_a_rebooted_pop_comes_back_serving_with_bbr_and_fq_by_itself(life: Lifecycle) -> None:
    pops = life.pops
    guest = pops.guest("us")
    release = pops.release("us")
    before = _boot_id(life, "us")
    guest.reboot(pops.lab.lab_private_key(), guest.host_key())
    assert _boot_id(life, "us") != before
    wait_until(lambda: _boot_finished(pops.lab, guest), 300, "the boot ends")
    assert pops.on("us", "systemctl --failed --no-legend --plain").strip() == ""
    assert pops.on("us", "systemctl is-active nginx plexcdn-certbot-renew.timer").split() == ["active", "active"]
    assert pops.on("us", "sysctl -n net.ipv4.tcp_congestion_control").strip() == "bbr"
    assert "qdisc fq " in pops.on("us", "tc qdisc show dev eth0"), pops.on("us", "tc qdisc show dev eth0")
    assert pops.release("us") == release
    assert pops.on("us", f"cat {render.FIRST_BOOT_STATUS}").strip() == "done", "first boot ran once"
    wait_until(lambda: pops.view("get", "/identity")["status"] == 200, 120, "the chain serves through the hub")


# --- the origin link's modes, on the Plex host ----------------------------------------------------------------


def test_public_mode_reaches_plex_on_the_plex_host_by_its_name(home: Lifecycle) -> None:
    pops, life = home.pops, home
    pops.lab.set_record(pops.config.origin.host, "A", [life.home.address])
    # What the hub's resolver timer does within a minute, now.
    pops.on("us", "resolvectl flush-caches && systemctl start plexcdn-origin-resolve.service")
    wait_until(
        lambda: _view_media(life).get("sha256") == life.home_media_sha256, 60, "media comes from the Plex host", 2
    )
    seen = life.origin_requests("lan", MEDIA_PATH)[-1]
    assert seen["peer"] == pops.guest("us").address and seen["tls"], seen


def test_wireguard_mode_carries_streams_through_the_tunnel_the_program_configured(home: Lifecycle) -> None:
    pops, life = home.pops, home
    runner = life.up(_wireguard_values(life.values))
    assert {r.name: r.operation for r in runner.records}["origin-hub-tunnel"] == "create"
    home_conf = pops.stack.outputs["homeWireguardConfig"]
    interface = render.WIREGUARD_INTERFACE
    # As the config's own header says: /etc/wireguard/plexcdn.conf, mode 0600, then wg-quick.
    life.on_home(f"umask 077 && cat > /etc/wireguard/{interface}.conf", stdin=home_conf)
    life.on_home(f"systemctl enable --now wg-quick@{interface}")
    wait_until(
        lambda: any(
            int(line.split()[-1]) > 0 for line in life.on_home(f"wg show {interface} latest-handshakes").splitlines()
        ),
        60,
        "the tunnel's handshake",
        2,
    )
    hub_tunnel = str(life.config(life.values).origin.hub_tunnel_address)
    assert f"inet {hub_tunnel}/" in pops.on("us", f"ip -4 addr show dev {interface}")
    assert pops.lab.run(pops.guest("us"), "systemctl is-enabled plexcdn-origin-resolve.timer").returncode != 0, (
        "the hub still follows the origin's name"
    )
    wait_until(lambda: _view_media(life).get("sha256") == life.home_media_sha256, 60, "media through the tunnel", 2)
    seen = life.origin_requests("tunnel", MEDIA_PATH)[-1]
    assert seen["peer"] == hub_tunnel, seen
    assert _forwarded_for(seen)[0] == str(env.VIEWER_ADDRESS), seen["headers"]


def test_the_home_tunnel_comes_off_by_hand_as_the_docs_say(home: Lifecycle) -> None:
    life = home
    interface = render.WIREGUARD_INTERFACE
    # docs/origin-agent.md's "Undo by hand", WireGuard mode.
    life.on_home(f"systemctl disable --now wg-quick@{interface} && rm /etc/wireguard/{interface}.conf")
    life.snapshots["before the agent"] = life.snapshot()
    differences = plex_host.compare(life.snapshots["before the stack"], life.snapshots["before the agent"])
    assert not differences, "\n".join(map(str, differences))


def test_the_origin_agent_installs_over_ssh_and_only_the_hub_with_its_certificate_gets_through(
    home: Lifecycle,
) -> None:
    pops, life = home.pops, home
    assert "before the agent" in life.snapshots, "runs after the home tunnel came off"
    pops.stack.home_ssh_key = life.home_private_key
    runner = life.up(_agent_values(life.values, life.home))
    operations = {r.name: (r.operation, r.returncode) for r in runner.records}
    assert operations["origin-agent"] == ("create", 0)
    assert operations["origin-hub-tunnel"] == ("delete", 0), "leaving WireGuard takes the hub's tunnel down"
    interface = render.WIREGUARD_INTERFACE
    assert pops.lab.run(pops.guest("us"), f"ip link show {interface}").returncode != 0
    assert pops.lab.run(pops.guest("us"), f"test -e /etc/wireguard/{interface}.conf").returncode != 0
    wait_until(lambda: _view_media(life).get("sha256") == life.home_media_sha256, 120, "media through the agent", 2)
    seen = life.origin_requests("loopback", MEDIA_PATH)[-1]
    assert seen["peer"] == "127.0.0.1", seen
    assert _forwarded_for(seen)[0] == str(env.VIEWER_ADDRESS), seen["headers"]
    assert _curl_from(life, "us", f"{ORIGIN_CA} {HUB_CERTIFICATE}") == (0, "200")
    assert _curl_from(life, "us", ORIGIN_CA) == (0, "400"), "no client certificate"
    another_ca = f"--cert /etc/nginx/{render.PEER_SERVER_CERT_FILE} --key /etc/nginx/{render.PEER_SERVER_KEY_FILE}"
    assert _curl_from(life, "us", f"{ORIGIN_CA} {another_ca}") == (0, "400"), "a certificate of another CA"
    assert _curl_from(life, "asia", ORIGIN_CA)[0] == CURL_TIMED_OUT, "the firewall drops a POP that is no hub"
    # The agent's port is the only one it opens: no default site of an nginx it installed.
    listening = plex_host.compare(life.snapshots["before the agent"], life.snapshot())
    opened = next((d for d in listening if d.section == "listening"), None)
    assert opened is not None and not opened.gone, listening
    assert {line.split()[-1].rsplit(":", 1)[-1] for line in opened.added} == {str(AGENT_PORT)}, opened


def test_the_agents_firewall_survives_a_reboot_of_the_plex_host(home: Lifecycle) -> None:
    life = home
    life.home.reboot(life.lab.lab_private_key(), life.home.host_key())
    wait_until(lambda: _boot_finished(life.lab, life.home), 300, "the boot ends")
    assert "tcp dport 32443 drop" in life.on_home("nft list table inet plexcdn_agent")
    assert life.on_home(f"systemctl is-active {agent.FIREWALL_UNIT}").strip() == "active"
    assert life.on_home("sysctl -n net.ipv4.tcp_congestion_control").strip() == "bbr"
    assert _curl_from(life, "asia", ORIGIN_CA)[0] == CURL_TIMED_OUT
    assert _curl_from(life, "us", f"{ORIGIN_CA} {HUB_CERTIFICATE}") == (0, "200")
    wait_until(lambda: _view_media(life).get("sha256") == life.home_media_sha256, 120, "media through the agent", 2)


# --- pulumi destroy --------------------------------------------------------------------------------------------


def test_destroy_runs_every_delete_the_graph_holds_dependents_first(home: Lifecycle) -> None:
    pops, life = home.pops, home
    deployment = pops.stack.deployment
    assert deployment is not None
    runner = pops.stack.destroy()
    life.destroyed = runner.records
    with_delete = []
    for name in reversed(deployment.order):
        step = deployment.steps[name]
        if isinstance(step, CommandStep) and step.delete:
            with_delete.append(name)
    assert with_delete, "the graph holds a delete"
    ran = [r for r in runner.records if r.operation == "delete" and r.returncode is not None]
    assert [r.name for r in ran] == with_delete
    assert all(r.returncode == 0 for r in ran), ran
    assert "agent removed" in next(r.stdout for r in ran if r.name == "origin-agent")
    # Nothing listens on the agent's port and no rule drops it: refused at once.
    assert _curl_from(life, "asia", ORIGIN_CA)[0] == CURL_REFUSED


def test_the_agents_uninstall_leaves_no_file_unit_rule_package_or_user_behind(home: Lifecycle) -> None:
    life = home
    assert life.destroyed is not None, "runs after the destroy"
    life.snapshots["after destroy"] = life.snapshot()
    differences = plex_host.compare(life.snapshots["before the agent"], life.snapshots["after destroy"])
    assert not differences, "\n".join(map(str, differences))


def test_the_plex_host_is_as_before_the_stack_existed(home: Lifecycle) -> None:
    life = home
    assert "after destroy" in life.snapshots, "runs after the uninstall's check"
    differences = plex_host.compare(life.snapshots["before the stack"], life.snapshots["after destroy"])
    assert not differences, "\n".join(map(str, differences))
