"""The boot lab's pure parts, without root or guests: the package cache's routing, rewriting, keys and
coalescing, the image recipe and guest environment, pulumi-command's copy and step semantics, the lab
DNS resolver and the plan file."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from dnslib import QTYPE, RCODE, DNSRecord

from labs import (
    boot_lab,
    boot_lab_services,
    guest_environment,
    guest_image,
    guests,
    package_cache,
    plex_host,
    plex_standin,
    remote_steps,
)
from labs.__main__ import build_parser
from labs.lab_ca import LabCA
from labs.netns import LabError
from labs.package_cache import RefusedTargetError, Route
from labs.remote_steps import (
    CommandResult,
    CommandStep,
    Connection,
    CopyStep,
    HostKeyError,
    Redactor,
    StepError,
    StepRunner,
)

# --- package cache -----------------------------------------------------------------------------------------


def test_apt_requests_route_to_the_archive_and_only_there() -> None:
    deb = package_cache.route("http://deb.debian.org/debian/pool/main/n/nginx/nginx_1.26.3-3_amd64.deb")
    assert (deb.kind, deb.lifetime) == ("apt", "persistent")
    by_hash = package_cache.route("http://deb.debian.org/debian/dists/trixie/main/binary-amd64/by-hash/SHA256/ab12")
    assert by_hash.lifetime == "persistent"
    release = package_cache.route("http://DEB.debian.org:80/debian/dists/trixie/InRelease")
    assert (release.lifetime, release.upstream) == ("run", "http://deb.debian.org/debian/dists/trixie/InRelease")
    security = package_cache.route("http://security.debian.org/debian-security/dists/trixie-security/InRelease")
    assert security.kind == "apt"
    for refused in (
        "http://example.com/debian/pool/x.deb",
        "https://deb.debian.org/debian/dists/trixie/InRelease",
        "http://deb.debian.org/debian/../../etc/passwd",
        "/other/path",
        "/pypi/files/not-packages/x.whl",
    ):
        with pytest.raises(RefusedTargetError):
            package_cache.route(refused)


def test_pypi_requests_route_to_pypi_and_files() -> None:
    simple = package_cache.route("/pypi/simple/certbot/")
    assert (simple.kind, simple.upstream, simple.lifetime) == ("pypi-simple", "https://pypi.org/simple/certbot/", "run")
    wheel = package_cache.route("/pypi/files/packages/71/a9/77/certbot-5.8.0-py3-none-any.whl")
    assert wheel.upstream == "https://files.pythonhosted.org/packages/71/a9/77/certbot-5.8.0-py3-none-any.whl"
    assert wheel.lifetime == "persistent"
    metadata = package_cache.route("/pypi/files/packages/71/a9/77/certbot-5.8.0-py3-none-any.whl.metadata")
    assert metadata.kind == "pypi-file"


def test_cache_keys_ignore_spelling_but_not_content() -> None:
    key = package_cache.cache_key
    assert key("http://deb.debian.org/debian/a.deb") == key("HTTP://Deb.Debian.org:80/debian/a.deb#x")
    assert key("http://deb.debian.org/debian/a.deb") != key("http://deb.debian.org/debian/b.deb")
    assert key("https://pypi.org/simple/a/?x=1") != key("https://pypi.org/simple/a/?x=2")
    assert key("https://pypi.org:443/simple/a/") == key("https://pypi.org/simple/a/")


def test_simple_pages_link_through_the_proxy_and_keep_hashes() -> None:
    page = (
        '<a href="https://files.pythonhosted.org/packages/71/a9/certbot-5.8.0-py3-none-any.whl#sha256=c067" '
        'data-requires-python="&gt;=3.9" data-core-metadata="sha256=ab">certbot-5.8.0-py3-none-any.whl</a>\n'
        "<a href='https://files.pythonhosted.org/packages/aa/certbot-5.8.0.tar.gz#sha256=ff'>sdist</a>\n"
        '<a href="https://example.org/elsewhere">other</a>'
    )
    rewritten = package_cache.rewrite_simple_page(page, "http://198.18.64.100:3142")
    assert 'href="http://198.18.64.100:3142/pypi/files/packages/71/a9/certbot-5.8.0-py3-none-any.whl#sha256=c067"' in (
        rewritten
    )
    assert "href='http://198.18.64.100:3142/pypi/files/packages/aa/certbot-5.8.0.tar.gz#sha256=ff'" in rewritten
    assert 'data-core-metadata="sha256=ab"' in rewritten
    assert "files.pythonhosted.org" not in rewritten
    assert 'href="https://example.org/elsewhere"' in rewritten


class _CountingUpstream(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[dict[str, int]] = {}
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        with self.lock:
            self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        time.sleep(0.3)  # long enough for concurrent requests to find the fetch in flight
        body = f"body of {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-test")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def upstream() -> Iterator[str]:
    _CountingUpstream.hits = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_concurrent_fetches_of_one_url_share_one_upstream_request(tmp_path: Path, upstream: str) -> None:
    cache = package_cache.PackageCache(tmp_path / "persistent", tmp_path / "run")
    target = Route("pypi-file", f"{upstream}/packages/a.whl", "persistent")
    outcomes: list[str] = []
    bodies: list[bytes] = []

    def fetch() -> None:
        found, outcome = cache.fetch(target)
        outcomes.append(outcome)
        bodies.append(found.body.read_bytes())

    workers = [threading.Thread(target=fetch) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert _CountingUpstream.hits == {"/packages/a.whl": 1}
    assert sorted(set(outcomes)) == ["miss", "shared"] and outcomes.count("miss") == 1
    assert set(bodies) == {b"body of /packages/a.whl"}
    # A new cache over the same directory (the next run) finds it without asking upstream.
    again = package_cache.PackageCache(tmp_path / "persistent", tmp_path / "run-2")
    assert again.fetch(target)[1] == "hit"
    assert _CountingUpstream.hits == {"/packages/a.whl": 1}


def test_per_run_objects_stay_with_their_run_and_errors_are_not_cached(tmp_path: Path, upstream: str) -> None:
    index = Route("apt", f"{upstream}/dists/trixie/InRelease", "run")
    first = package_cache.PackageCache(tmp_path / "persistent", tmp_path / "run-1")
    assert first.fetch(index)[1] == "miss"
    assert first.fetch(index)[1] == "hit"
    second = package_cache.PackageCache(tmp_path / "persistent", tmp_path / "run-2")
    assert second.fetch(index)[1] == "miss"
    missing = Route("apt", f"{upstream}/missing.deb", "persistent")
    for _ in range(2):
        with pytest.raises(package_cache.UpstreamError) as raised:
            first.fetch(missing)
        assert raised.value.status == 404
    assert _CountingUpstream.hits["/missing.deb"] == 2


def test_trimming_removes_least_recently_used_objects(tmp_path: Path) -> None:
    store = package_cache.ObjectStore(tmp_path)
    for number, key in enumerate(("aa11", "bb22", "cc33")):
        with store.writer(key, f"http://x/{key}", "application/octet-stream") as (temporary, commit):
            temporary.write_bytes(b"x" * 1000)
            commit()
        body = tmp_path / key[:2] / key
        stamp = 1_000_000 + number
        os.utime(body, (stamp, stamp))
    with store.writer("dd44", "http://x/dd44", "text/plain") as (temporary, _):
        temporary.write_bytes(b"never committed")
    assert store.get("dd44") is None
    freed = store.trim(2000)
    assert freed == 1000
    assert store.get("aa11") is None
    assert store.get("bb22") is not None and store.get("cc33") is not None


def test_stats_delta_leaves_out_what_did_not_change() -> None:
    before = {"apt": {"hit": 3, "miss": 2}}
    after = {"apt": {"hit": 7, "miss": 2}, "pypi-file": {"hit": 1}}
    assert package_cache.stats_delta(before, after) == {"apt": {"hit": 4}, "pypi-file": {"hit": 1}}


# --- image and environment ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab_ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA.create(tmp_path_factory.mktemp("ca"), "boot lab unit test")


def test_image_key_follows_every_input(lab_ca: LabCA) -> None:
    recipe = guest_environment.image_recipe(lab_ca)
    assert recipe.key() == guest_environment.image_recipe(lab_ca).key()
    other_ca = LabCA.create(lab_ca.directory / "other", "another")
    assert guest_environment.image_recipe(other_ca).key() != recipe.key()
    fewer = guest_image.ImageRecipe(environment=recipe.environment, packages=recipe.packages[:-1])
    assert fewer.key() != recipe.key()
    with pytest.raises(ValueError, match="absolute"):
        guest_image.EnvironmentFile("etc/relative", b"")


def test_image_follows_the_cloud_image_package_classes(lab_ca: LabCA, tmp_path: Path) -> None:
    recipe = guest_environment.image_recipe(lab_ca)
    command = guest_image._mmdebstrap_command(recipe, tmp_path / "root", tmp_path / "env", "http://127.0.0.1:1")
    includes = next(arg for arg in command if arg.startswith("--include=")).removeprefix("--include=").split(",")
    for package in ("cloud-init", "netplan.io", "systemd-resolved", "openssh-server", "linux-image-cloud-amd64"):
        assert package in includes
    assert "ifupdown-" in includes
    assert command[-3:] == ["trixie", str(tmp_path / "root"), "http://deb.debian.org/debian"]
    assert any('Acquire::http::Proxy "http://127.0.0.1:1"' in arg for arg in command)
    assert any("update-ca-certificates" in arg for arg in command)


def test_environment_points_apt_and_pip_at_the_cache_and_trusts_the_lab_ca(lab_ca: LabCA) -> None:
    files, commands = guest_environment.image_environment(lab_ca)
    by_path = {item.path: item.content.decode() for item in files}
    assert 'Acquire::http::Proxy "http://198.18.64.100:3142/";' in by_path["/etc/apt/apt.conf.d/00plexcdn-lab-proxy"]
    pip = by_path["/etc/pip.conf"]
    assert "index-url = http://198.18.64.100:3142/pypi/simple/" in pip and "trusted-host = 198.18.64.100" in pip
    assert by_path[guest_environment.CA_FILE_IN_GUEST] == lab_ca.root_path.read_text()
    assert "REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt" in by_path["/etc/environment"]
    assert "AWS_CA_BUNDLE=" in by_path["/etc/systemd/system.conf.d/90-plexcdn-lab-ca.conf"]
    assert commands == (("update-ca-certificates",),)


def test_network_config_gives_eth0_the_lab_and_eth1_only_the_cache() -> None:
    config = yaml.safe_load(guest_environment.network_config(3))
    eth0, eth1 = config["ethernets"]["eth0"], config["ethernets"]["eth1"]
    assert eth0["match"]["macaddress"] == guest_environment.lab_mac(3)
    assert eth0["addresses"] == ["198.18.80.13/24"]
    assert eth0["routes"] == [{"to": "default", "via": "198.18.80.1"}]
    assert eth0["nameservers"] == {"addresses": ["198.18.80.1"]}
    assert eth1["dhcp4"] is True
    assert eth1["dhcp4-overrides"]["use-dns"] is False and eth1["dhcp4-overrides"]["use-routes"] is False
    assert yaml.safe_load(guest_environment.meta_data(guest_environment.GuestIdentity("i-1", "us"))) == {
        "instance-id": "i-1",
        "local-hostname": "us",
    }
    with pytest.raises(ValueError):
        guest_environment.guest_address(guest_environment.MAX_GUESTS)


def test_qemu_runs_the_smallest_size_with_a_restricted_uplink(tmp_path: Path) -> None:
    image = guest_image.BaseImage(tmp_path, {})
    guest = guests.Guest(guests.GuestSpec("us", b"#cloud-config\n", 1), image, tmp_path / "us", "pcv-lab", 4242)
    command = guest.qemu_command()
    assert command[command.index("-m") + 1] == "1024" and command[command.index("-smp") + 1] == "1"
    uplink = next(arg for arg in command if arg.startswith("user,"))
    assert "restrict=on" in uplink and "ipv6=off" in uplink
    assert "guestfwd=tcp:198.18.64.100:3142-cmd:" in uplink and uplink.endswith(" 4242")
    assert f"ifname={guest.tap}" in " ".join(command)
    assert "net.ifnames=0" in command[command.index("-append") + 1]


def test_host_keys_are_read_from_cloud_inits_console_block() -> None:
    console = (
        "[  97.1] cloud-init[504]: noise\r\n"
        "-----BEGIN SSH HOST KEY KEYS-----\r\n"
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAA= root@us\r\n"
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK root@us\r\n"
        "-----END SSH HOST KEY KEYS-----\r\n"
    )
    assert guests.console_host_keys(console) == (
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAA=",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK",
    )
    assert guests.console_host_keys("no keys yet") == ()


def test_the_accelerator_verdict_is_kept_for_this_boot_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(guests.ACCEL_VARIABLE, raising=False)
    verdict = tmp_path / "accelerator.json"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    verdict.write_text(json.dumps({"boot_id": boot_id, "accelerator": "kvm"}))
    assert guests.choose_accelerator(tmp_path / "no-kernel", tmp_path, verdict) == "kvm"
    # A verdict from another boot is probed again; without /dev/kvm access (or a kernel) that is TCG.
    verdict.write_text(json.dumps({"boot_id": "another-boot", "accelerator": "kvm"}))
    monkeypatch.setattr(guests, "_kvm_prints", lambda kernel, scratch: False)
    assert guests.choose_accelerator(tmp_path / "no-kernel", tmp_path, verdict) == "tcg"
    assert json.loads(verdict.read_text()) == {"boot_id": boot_id, "accelerator": "tcg"}
    monkeypatch.setenv(guests.ACCEL_VARIABLE, "kvm")
    assert guests.choose_accelerator(tmp_path / "no-kernel", tmp_path, verdict) == "kvm"


def test_each_guests_boot_marks_are_timed_from_its_own_console(tmp_path: Path) -> None:
    image = guest_image.BaseImage(tmp_path, {})
    waited = []
    for index, name in enumerate(("us", "asia")):
        guest = guests.Guest(guests.GuestSpec(name, b"", index), image, tmp_path / name, "pcv-lab", 1)
        guest.directory.mkdir()
        guest.process = subprocess.Popen(["sleep", "30"], start_new_session=True)
        guest.started_at = time.monotonic()
        waited.append(guest)
    us, asia = waited
    try:
        us.console_log.write_bytes(b"\r\nus login: [ 80.1] cloud-init[1]: Cloud-init v. 25.1.4 finished at Sun\r\n")
        asia.console_log.write_bytes(b"[ 3.0] booting\r\n")
        assert set(us.poll_boot()) == {"login", "cloud-init"} and asia.poll_boot() == {}
        with pytest.raises(LabError, match="asia: no login, cloud-init"):
            guests.wait_for_boots(waited, timeout=0.2)
        asia.console_log.write_bytes(b"asia login: \r\nCloud-init v. 25.1.4 finished at Sun\r\n")
        guests.wait_for_boots(waited, timeout=5)
        assert asia.boot_seen["login"] > us.boot_seen["login"]
    finally:
        for guest in waited:
            guest.kill()


def test_the_login_prompt_is_found_even_with_output_on_its_line() -> None:
    assert guests.LOGIN_PROMPT.search(b"ok\r\npop login: [   86.45] cloud-init[509]: Get:1 http://...")
    assert guests.LOGIN_PROMPT.search(b"\r\nplex-us.example.com login: ")
    assert not guests.LOGIN_PROMPT.search(b"\r\nLast login: Sun Dec  6 08:25:16 2026")
    assert not guests.LOGIN_PROMPT.search(b"[  12.3] systemd[1]: Started getty; login: later")


# --- pulumi-command semantics ------------------------------------------------------------------------------


@pytest.fixture
def release(tmp_path: Path) -> Path:
    source = tmp_path / "release-1"
    (source / "conf.d").mkdir(parents=True)
    (source / "nginx.conf").write_text("events {}\n")
    (source / "conf.d" / "a.conf").write_text("# a\n")
    return source


def test_a_directory_lands_inside_an_existing_remote_path(release: Path) -> None:
    plan = remote_steps.plan_directory_copy(str(release), "/etc/plex-cdn/releases", {"/etc/plex-cdn/releases": "dir"})
    assert plan.directories == ("/etc/plex-cdn/releases/release-1", "/etc/plex-cdn/releases/release-1/conf.d")
    assert [remote for _, remote in plan.files] == [
        "/etc/plex-cdn/releases/release-1/nginx.conf",
        "/etc/plex-cdn/releases/release-1/conf.d/a.conf",
    ]


def test_a_missing_remote_path_is_made_with_its_parents(release: Path) -> None:
    plan = remote_steps.plan_directory_copy(str(release), "/srv/a/b", {"/srv": "dir"})
    assert plan.directories[:3] == ("/srv/a", "/srv/a/b", "/srv/a/b/release-1")


def test_a_trailing_slash_copies_the_contents(release: Path) -> None:
    plan = remote_steps.plan_directory_copy(
        str(release) + "/", "/srv/x", {"/srv/x": "dir", "/srv/x/conf.d": "dir", "/srv/x/nginx.conf": "file"}
    )
    assert plan.directories == ()
    assert [remote for _, remote in plan.files] == ["/srv/x/nginx.conf", "/srv/x/conf.d/a.conf"]


def test_copy_refuses_files_where_directories_go(release: Path) -> None:
    with pytest.raises(StepError, match="not a directory"):
        remote_steps.plan_directory_copy(str(release), "/srv/x", {"/srv/x": "file"})
    with pytest.raises(StepError, match="not a directory"):
        remote_steps.plan_directory_copy(str(release), "/srv/x", {"/srv/x": "dir", "/srv/x/release-1": "file"})
    with pytest.raises(StepError, match="is a directory"):
        remote_steps.plan_directory_copy(
            str(release) + "/", "/srv/x", {"/srv/x": "dir", "/srv/x/nginx.conf": "dir", "/srv/x/conf.d": "dir"}
        )


def test_every_path_the_plan_depends_on_is_checked(release: Path) -> None:
    paths = remote_steps.remote_paths_to_check(str(release), "/etc/plex-cdn/releases")
    assert {"/etc/plex-cdn/releases", "/etc/plex-cdn", "/etc", "/etc/plex-cdn/releases/release-1"} <= set(paths)
    assert "/etc/plex-cdn/releases/release-1/conf.d/a.conf" in paths


def _pem(key: Any, form: serialization.PrivateFormat) -> str:
    return str(key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption()).decode())


_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    ("key", "form"),
    [
        (ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.PKCS8),
        (ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH),
        (
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            serialization.PrivateFormat.TraditionalOpenSSL,
        ),
        (ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.TraditionalOpenSSL),
    ],
)
def test_private_keys_in_the_providers_formats_become_openssh_keys(key: Any, form: serialization.PrivateFormat) -> None:
    converted = remote_steps.openssh_private_key(_pem(key, form))
    assert converted.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")


def test_unusable_private_keys_are_refused_without_echoing_them() -> None:
    with pytest.raises(StepError) as raised:
        remote_steps.openssh_private_key("-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----\n")
    assert "not-a-key" not in str(raised.value)


def test_host_keys_pin_one_algorithm_and_refuse_garbage() -> None:
    assert remote_steps.known_hosts_line("198.18.80.10", 22, "ssh-ed25519 AAAAC3 root@us") == (
        "198.18.80.10 ssh-ed25519 AAAAC3\n"
    )
    assert remote_steps.known_hosts_line("198.18.80.10", 2222, "ssh-ed25519 AAAAC3").startswith("[198.18.80.10]:2222 ")
    assert remote_steps.host_key_algorithms("ssh-ed25519 AAAAC3") == "ssh-ed25519"
    assert "rsa-sha2-256" in remote_steps.host_key_algorithms("ssh-rsa AAAAB3")
    with pytest.raises(HostKeyError):
        remote_steps.known_hosts_line("h", 22, "not a key")


def test_no_host_key_is_refused_unless_the_caller_opts_out() -> None:
    key = _pem(ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH)
    with pytest.raises(HostKeyError, match="accept_any_host_key"):
        remote_steps.SshSession(Connection("198.18.80.10", key))
    session = remote_steps.SshSession(Connection("198.18.80.10", key), accept_any_host_key=True)
    try:
        assert "StrictHostKeyChecking=no" in session.options
    finally:
        session.close()


def test_redaction_covers_secrets_and_their_lines() -> None:
    secret_key = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAbcdefghijklmnop\n-----END PRIVATE KEY-----\n"
    redact = Redactor([secret_key, "hunter2-token", ""])
    assert redact("key: MC4CAQAwBQYDK2VwBCIEIAbcdefghijklmnop and hunter2-token") == "key: [secret] and [secret]"


class _FakeSession:
    """Records what the runner would run; answers each command with a scripted result."""

    def __init__(self, log: list[tuple[str, str | bytes | None]], results: dict[str, CommandResult]) -> None:
        self.log = log
        self.results = results
        self.redact = Redactor()

    def __enter__(self) -> _FakeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, command: str, stdin: str | bytes | None = None, timeout: float = 0) -> CommandResult:
        self.log.append((command, stdin))
        return self.results.get(command, CommandResult(0, f"ran {command}\n", "", 0.1))


def _runner(tmp_path: Path, results: dict[str, CommandResult] | None = None) -> tuple[StepRunner, list[Any]]:
    log: list[Any] = []

    def factory(connection: Connection, namespace: str | None, accept_any: bool, redact: Redactor) -> _FakeSession:
        log.append(("dial", connection.host, connection.host_key))
        return _FakeSession(log, results or {})

    def copy(session: Any, source: str, remote_path: str) -> remote_steps.CopyPlan:
        log.append(("copy", Path(source).name, remote_path))
        return remote_steps.CopyPlan((), ())

    runner = StepRunner(
        "pcv-lab",
        tmp_path / "steps.log",
        host_key_for=lambda connection: "ssh-ed25519 AAAAconsole",
        session_factory=factory,
        copy=copy,
    )
    return runner, log


def _connection() -> Connection:
    return Connection("198.18.80.10", "-----BEGIN OPENSSH PRIVATE KEY-----\nsecretkeymaterial\n-----END-----\n")


def test_steps_create_then_update_then_replace_then_destroy_as_the_provider_does(tmp_path: Path, release: Path) -> None:
    runner, log = _runner(tmp_path)
    wait = CommandStep("boot-wait", _connection(), create="cloud-init status --wait")
    copy = CopyStep("release", _connection(), str(release), "/etc/plex-cdn/releases", depends_on=("boot-wait",))
    deploy = CommandStep("deploy", _connection(), create="deploy v1", delete="undeploy", depends_on=("release",))
    first = runner.apply([wait, copy, deploy])
    assert [entry for entry in log if entry[0] != "dial"] == [
        ("cloud-init status --wait", None),
        ("copy", "release-1", "/etc/plex-cdn/releases"),
        ("deploy v1", None),
    ]
    # The lab's console key fills in where the connection names none.
    assert ("dial", "198.18.80.10", "ssh-ed25519 AAAAconsole") in log
    log.clear()
    changed = CommandStep("deploy", _connection(), create="deploy v2", update="redeploy", delete="undeploy")
    second = runner.apply([wait, copy, changed], first)
    assert [entry for entry in log if entry[0] != "dial"] == [("redeploy", None)]
    log.clear()
    retriggered = CommandStep("deploy", _connection(), create="deploy v2", delete="undeploy v2", triggers=("2",))
    third = runner.apply([wait, copy, retriggered], second)
    assert [entry for entry in log if entry[0] != "dial"] == [("deploy v2", None), ("undeploy", None)]
    log.clear()
    runner.destroy(third)
    assert [entry for entry in log if entry[0] != "dial"] == [("undeploy v2", None)]
    assert [record.operation for record in runner.records[-3:]] == ["delete", "unchanged", "delete"]


def test_a_step_dropped_from_the_program_is_deleted(tmp_path: Path) -> None:
    runner, log = _runner(tmp_path)
    keep = CommandStep("keep", _connection(), create="true")
    drop = CommandStep("drop", _connection(), create="make", delete="unmake")
    runner.apply([keep], runner.apply([keep, drop]))
    assert log[-1] == ("unmake", None)


def test_a_failed_step_leaves_the_state_of_the_steps_that_completed(tmp_path: Path) -> None:
    """As a stack's state after a failed `pulumi up`: the next apply runs the failed step again, not those before."""
    runner, log = _runner(tmp_path, {"deploy asia v2": CommandResult(1, "", "nginx -t rejected", 0.1)})
    us_v1 = CommandStep("us", _connection(), create="deploy us v1")
    asia_v1 = CommandStep("asia", _connection(), create="deploy asia v1", depends_on=("us",))
    dropped = CommandStep("old", _connection(), create="make", delete="unmake")
    first = runner.apply([us_v1, asia_v1, dropped])
    us_v2 = CommandStep("us", _connection(), create="deploy us v2")
    asia_v2 = CommandStep("asia", _connection(), create="deploy asia v2", depends_on=("us",))
    with pytest.raises(StepError) as failed:
        runner.apply([us_v2, asia_v2], first)
    partial = failed.value.deployment
    assert partial is not None
    assert partial.steps == {"us": us_v2, "asia": asia_v1, "old": dropped}, "the failed and the unreached stay old"
    log.clear()
    runner.apply([us_v2, CommandStep("asia", _connection(), create="deploy asia v3", depends_on=("us",))], partial)
    assert [entry for entry in log if entry[0] != "dial"] == [("deploy asia v3", None), ("unmake", None)]


def test_steps_out_of_dependency_order_are_refused(tmp_path: Path) -> None:
    runner, _ = _runner(tmp_path)
    late = CommandStep("b", _connection(), create="b", depends_on=("a",))
    with pytest.raises(StepError, match="depends on"):
        runner.apply([late, CommandStep("a", _connection(), create="a")])


def test_secret_stdin_and_keys_never_reach_the_log_or_the_error(tmp_path: Path) -> None:
    secret = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIverysecretclientkey\n-----END PRIVATE KEY-----\n"
    leaky = CommandResult(1, f"echoing {secret}", "MC4CAQAwBQYDK2VwBCIEIverysecretclientkey went wrong", 0.1)
    runner, log = _runner(tmp_path, {"install-key": leaky})
    step = CommandStep("key", _connection(), create="install-key", stdin=secret, secret_inputs=frozenset({"stdin"}))
    with pytest.raises(StepError) as raised:
        runner.apply([step])
    assert log[-1] == ("install-key", secret)  # the guest gets the secret on stdin
    assert "verysecretclientkey" not in str(raised.value)
    assert raised.value.returncode == 1 and "verysecretclientkey" in raised.value.stderr
    written = (tmp_path / "steps.log").read_text()
    assert "verysecretclientkey" not in written and "secretkeymaterial" not in written
    assert "[secret]" in written


def test_a_step_that_logs_nothing_keeps_its_output_out_of_errors(tmp_path: Path) -> None:
    runner, _ = _runner(tmp_path, {"tunnel": CommandResult(3, "PrivateKey = abc\n", "", 0.1)})
    step = CommandStep("tunnel", _connection(), create="tunnel", logging="none")
    with pytest.raises(StepError) as raised:
        runner.apply([step])
    assert "PrivateKey" not in str(raised.value) and "withheld" in str(raised.value)
    assert "PrivateKey" not in (tmp_path / "steps.log").read_text()


# --- lab DNS -----------------------------------------------------------------------------------------------


class _FakeZones:
    def __init__(self, records: dict[str, list[dict[str, Any]]], apex: str) -> None:
        self.by_name = records
        self.apex = apex

    def records(self, name: str) -> tuple[bool, list[dict[str, Any]]]:
        covered = name == self.apex or name.endswith("." + self.apex)
        return covered, self.by_name.get(name, []) if covered else []


def _ask(resolver: boot_lab_services.LabResolver, name: str, record_type: str) -> DNSRecord:
    question = DNSRecord.question(name, record_type)
    return resolver.resolve(question, SimpleNamespace(client_address=("198.18.80.10", 5353)))


def test_lab_dns_answers_from_the_zone_and_the_labs_records_and_nothing_else(tmp_path: Path) -> None:
    zones = _FakeZones(
        {
            "plex.example.com": [
                {"Type": "A", "SetIdentifier": "us", "TTL": 60, "ResourceRecords": [{"Value": "198.18.80.10"}]},
                {"Type": "A", "SetIdentifier": "asia", "TTL": 60, "ResourceRecords": [{"Value": "198.18.80.11"}]},
            ],
            "_acme-challenge.plex.example.com": [
                {"Type": "TXT", "TTL": 10, "ResourceRecords": [{"Value": '"token-1"'}]},
            ],
        },
        "example.com",
    )
    records = tmp_path / "records.json"
    answers = tmp_path / "answers.jsonl"
    boot_lab_services.write_records(records, [boot_lab_services.LabRecord("home.example.net", "A", ("198.18.80.3",))])
    resolver = boot_lab_services.LabResolver(zones, records, answers)  # type: ignore[arg-type]
    shared = _ask(resolver, "plex.example.com", "A")
    assert sorted(str(rr.rdata) for rr in shared.rr) == ["198.18.80.10", "198.18.80.11"]
    txt = _ask(resolver, "_acme-challenge.plex.example.com", "TXT")
    assert [rr.rdata.data for rr in txt.rr] == [[b"token-1"]]
    nodata = _ask(resolver, "plex.example.com", "AAAA")
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr
    assert _ask(resolver, "nope.example.com", "A").header.rcode == RCODE.NXDOMAIN
    assert _ask(resolver, "deb.debian.org", "A").header.rcode == RCODE.NXDOMAIN
    assert str(_ask(resolver, "HOME.example.net.", "A").rr[0].rdata) == "198.18.80.3"
    # A lab record wins over the zone for its name and type, and goes when removed.
    boot_lab_services.write_records(records, [boot_lab_services.LabRecord("plex.example.com", "A", ("198.18.80.4",))])
    assert [str(rr.rdata) for rr in _ask(resolver, "plex.example.com", "A").rr] == ["198.18.80.4"]
    assert _ask(resolver, "home.example.net", "A").header.rcode == RCODE.NXDOMAIN
    logged = [json.loads(line) for line in answers.read_text().splitlines()]
    assert {"name": "deb.debian.org", "rcode": "NXDOMAIN", "client": "198.18.80.10"}.items() <= logged[4].items()
    assert QTYPE.A == 1


def test_the_https_front_maps_lets_encrypts_directory_to_pebbles() -> None:
    assert boot_lab_services._pebble_path("/directory") == "/dir"
    assert boot_lab_services._pebble_path("/sign-me-up") == "/sign-me-up"
    assert "route53.amazonaws.com" in boot_lab_services.FRONT_NAMES
    assert "acme-staging-v02.api.letsencrypt.org" in boot_lab_services.FRONT_NAMES


# --- plan files and the command line -----------------------------------------------------------------------


def test_a_plan_file_gives_vms_and_steps_with_lab_addresses(tmp_path: Path, release: Path) -> None:
    (tmp_path / "us.yaml").write_text("#cloud-config\n")
    (tmp_path / "deploy_key").write_text("KEY")
    (tmp_path / "client.key").write_text("CLIENT KEY")
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(
        json.dumps(
            {
                "vms": [{"name": "us", "user_data_file": "us.yaml"}, {"name": "asia", "user_data_file": "us.yaml"}],
                "steps": [
                    {
                        "kind": "copy",
                        "name": "asia-release",
                        "connection": {"vm": "asia", "private_key_file": "deploy_key"},
                        "source": "release-1",
                        "remote_path": "/etc/plex-cdn/releases",
                    },
                    {
                        "kind": "command",
                        "name": "asia-deploy",
                        "connection": {"vm": "asia", "private_key_file": "deploy_key", "dial_error_limit": 60},
                        "create": "deploy",
                        "stdin_file": "client.key",
                        "secret_inputs": ["stdin"],
                        "depends_on": ["asia-release"],
                    },
                ],
            }
        )
    )
    plan = boot_lab.load_plan(plan_file)
    assert [vm.name for vm in plan.vms] == ["us", "asia"] and plan.vms[0].user_data == b"#cloud-config\n"
    copy, deploy = plan.steps
    assert isinstance(copy, CopyStep) and copy.source == str(release) and copy.connection.host == "198.18.80.11"
    assert isinstance(deploy, CommandStep) and deploy.stdin == "CLIENT KEY" and deploy.connection.dial_error_limit == 60
    assert "CLIENT KEY" in deploy.secrets()
    unknown = {"kind": "script", "name": "x", "connection": {"host": "198.18.80.10", "private_key_file": "deploy_key"}}
    plan_file.write_text(json.dumps({"vms": [], "steps": [unknown]}))
    with pytest.raises(LabError, match="not command or copy"):
        boot_lab.load_plan(plan_file)


def test_the_command_line_knows_the_vms_commands() -> None:
    parser = build_parser()
    up = parser.parse_args(["lab", "vms", "up", "Pulumi.dev.yaml", "--plan", "plan.json"])
    assert (up.stack_file, up.plan) == ("Pulumi.dev.yaml", "plan.json")
    assert parser.parse_args(["lab", "vms", "down"]).handler.__name__ == "_vms_down"
    assert parser.parse_args(["lab", "vms", "logs"]).handler.__name__ == "_vms_logs"


# --- the Plex host guest -----------------------------------------------------------------------------------


def test_the_plex_hosts_user_data_passes_cloud_init_schema_and_runs_a_stand_in_per_origin_mode(
    tmp_path: Path,
) -> None:
    ca = LabCA.create(tmp_path / "ca", "plex host test CA")
    issued = ca.issue(["home.example.net"], tmp_path / "tls", "home")
    user_data = plex_host.user_data(
        lan_address="198.18.80.13",
        tunnel_address="10.77.0.2",
        home_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHomeKey you@home",
        tls_fullchain=issued.fullchain.read_bytes(),
        tls_key=issued.privkey.read_bytes(),
        media_bytes=1024,
    )
    path = tmp_path / "user-data"
    path.write_bytes(user_data)
    checked = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    document = yaml.safe_load(user_data)
    units = {entry["path"].rsplit("/", 1)[-1]: entry["content"] for entry in document["write_files"]}
    assert (
        "--listen 198.18.80.13:32400" in units["plex-standin-lan.service"]
        and "--tls-cert" in units["plex-standin-lan.service"]
    )
    assert "--listen 127.0.0.1:32400" in units["plex-standin-loopback.service"]
    assert (
        "--free-bind" in units["plex-standin-tunnel.service"]
        and "10.77.0.2:32400" in units["plex-standin-tunnel.service"]
    )
    # plex_standin.py runs on its own there: nothing of labs or plexcdn to import.
    standin = Path(plex_standin.__file__ or "").read_text()
    assert "from labs" not in standin and "from plexcdn" not in standin
    assert set(plex_host.PACKAGES) <= set(document["packages"])


def test_snapshots_compare_section_by_section() -> None:
    text = "\n".join(f"## {section}\n{section}-line" for section in plex_host.SECTIONS)
    before = plex_host.parse_snapshot(text)
    after = plex_host.parse_snapshot(text.replace("listening-line", "tcp  0.0.0.0:32443"))
    assert plex_host.compare(before, before) == []
    (difference,) = plex_host.compare(before, after)
    assert (difference.section, difference.gone, difference.added) == (
        "listening",
        ("listening-line",),
        ("tcp 0.0.0.0:32443",),
    )
    with pytest.raises(ValueError, match="no section"):
        plex_host.parse_snapshot("## files\n/etc d 755 root:root\n")


def test_a_stand_in_listens_on_an_address_the_host_does_not_have_yet_only_when_asked() -> None:
    with pytest.raises(OSError):
        plex_standin._listening_socket("198.18.99.77", 0).close()
    plex_standin._listening_socket("198.18.99.77", 0, free_bind=True).close()
