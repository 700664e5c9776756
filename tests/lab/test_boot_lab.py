"""The boot lab itself: a real Debian 13 guest under QEMU on the lab bridge, booted from a NoCloud seed.

One guest, "plain", boots once for the module from a minimal cloud-config that authorizes a deploy key
for root; the image, network, DNS, executor, host-key and reboot tests use it. The POPs themselves, with
the program's own user_data, apt and pip through the package cache and certificates from the lab's ACME
server, are tests/lab/test_boot_pops.py.

Needs root, QEMU, mmdebstrap (the first run builds the image, about a minute and a half) and the
network (the package cache fetches from Debian's and PyPI's registries). Run under the lab lock:
    flock /tmp/plexcdn-lab.lock .venv/bin/python -m pytest tests/lab/test_boot_lab.py -q
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from labs import guest_environment as env
from labs import package_cache
from labs.boot_lab import BootLab, VmRequest, clean_up
from labs.guests import Guest, qemu_missing
from labs.netns import existing_namespaces, lab_unavailable_reason
from labs.remote_steps import CommandStep, Connection, CopyStep, HostKeyError, SshSession, StepError, StepRunner

EXAMPLE_STACK = Path(__file__).resolve().parents[2] / "Pulumi.dev.yaml"
PREFIX = "pcvt-"
ZONE = "example.com"
POP_NAME = "plex-us.example.com"
ORIGIN_NAME = "home.example.net"
CERTBOT = "/opt/certbot/bin/certbot"


def _reason() -> str | None:
    return lab_unavailable_reason() or qemu_missing()


pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(_reason() is not None, reason=f"boot lab: {_reason()}"),
]


def _deploy_key() -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, public


def plain_user_data(deploy_public_key: str) -> bytes:
    document = {
        "disable_root": False,
        "write_files": [
            {
                "path": "/root/.ssh/authorized_keys",
                "owner": "root:root",
                "permissions": "0600",
                "append": True,
                "content": deploy_public_key + "\n",
            }
        ],
    }
    return ("#cloud-config\n" + yaml.safe_dump(document, sort_keys=False)).encode()


class Module:
    """What the module's tests share."""

    def __init__(self, lab: BootLab, plain: Guest, deploy_private_key: str) -> None:
        self.lab = lab
        self.plain = plain
        self.deploy_private_key = deploy_private_key

    def connection(self, guest: Guest, **fields: object) -> Connection:
        return Connection(guest.address, self.deploy_private_key, host_key=guest.host_key(), **fields)  # type: ignore[arg-type]

    def on(self, guest: Guest, command: str, stdin: str | None = None, timeout: float = 600) -> str:
        result = self.lab.run(guest, command, stdin=stdin, timeout=timeout)
        assert result.returncode == 0, f"{command} exited {result.returncode}: {result.stdout} {result.stderr}"
        return str(result.stdout)


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Module]:
    state_dir = tmp_path_factory.mktemp("boot-lab") / "state"
    deploy_private, deploy_public = _deploy_key()
    with BootLab(state_dir, PREFIX) as lab:
        assert lab.moto is not None
        lab.zone_id = lab.moto.create_zone(ZONE)
        lab.start_origin([ORIGIN_NAME])
        (plain,) = lab.boot([VmRequest("plain", plain_user_data(deploy_public))])
        lab.wait_ready(plain, timeout=600)
        yield Module(lab, plain, deploy_private)
    assert not [ns for ns in existing_namespaces() if ns.startswith(PREFIX)], "the lab left namespaces behind"
    assert not state_dir.exists()


def test_the_image_is_debians_cloud_image_recipe(module: Module) -> None:
    image = module.lab.image
    assert image is not None
    packages = image.manifest["packages"]
    assert isinstance(packages, dict)
    for package in ("cloud-init", "netplan.io", "systemd-resolved", "openssh-server", "linux-image-cloud-amd64"):
        assert package in packages
    assert "ifupdown" not in packages and "isc-dhcp-client" not in packages
    assert packages["cloud-init"].startswith("25.1")


def test_a_guest_boots_its_user_data_and_cloud_init_finishes_clean(module: Module) -> None:
    plain = module.plain
    status = plain.cloud_init_status(module.lab.lab_private_key(), plain.host_key())
    assert status.clean, status.raw
    assert module.on(plain, "hostname").strip() == "plain"
    # The user_data's write_files ran: the deploy key logs in as root.
    with SshSession(module.connection(plain), module.lab.lab_namespace) as session:
        assert session.run("id -un").stdout.strip() == "root"
    cpus, memory_kib = module.on(plain, "nproc; awk '/MemTotal/ {print $2}' /proc/meminfo").split()
    assert cpus == "1" and 900_000 < int(memory_kib) <= 1024 * 1024  # the smallest POP size


def test_the_lab_nic_carries_the_public_address_route_and_resolver(module: Module) -> None:
    plain = module.plain
    addresses = module.on(plain, "ip -4 -o addr show dev eth0")
    assert f"{plain.address}/24" in addresses
    assert module.on(plain, "ip route show default").split()[:5] == [
        "default",
        "via",
        str(env.LAB_GATEWAY),
        "dev",
        "eth0",
    ]
    assert module.on(plain, "resolvectl dns eth1").split(":", 1)[1].strip() == ""
    assert module.on(plain, "resolvectl dns eth0").split(":", 1)[1].split() == [str(env.LAB_GATEWAY)]
    viewer = subprocess.run(
        ["ip", "netns", "exec", module.lab.viewer_namespace, "ping", "-c", "1", "-W", "5", plain.address],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert viewer.returncode == 0, viewer.stdout + viewer.stderr


def test_a_guest_resolves_lab_names_and_nothing_else(module: Module) -> None:
    lab, plain = module.lab, module.plain
    assert lab.moto is not None and lab.zone_id is not None
    lab.moto.client("route53").change_resource_record_sets(
        HostedZoneId=lab.zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": POP_NAME,
                        "Type": "A",
                        "TTL": 1,
                        "ResourceRecords": [{"Value": plain.address}],
                    },
                }
            ]
        },
    )
    assert module.on(plain, f"getent ahostsv4 {POP_NAME} | head -1").split()[0] == plain.address
    assert module.on(plain, f"getent ahostsv4 {ORIGIN_NAME} | head -1").split()[0] == str(env.ORIGIN_ADDRESS)
    lab.set_record("added-at-runtime.example.net", "A", ["198.18.80.77"])
    assert module.on(plain, "getent ahostsv4 added-at-runtime.example.net | head -1").split()[0] == "198.18.80.77"
    lab.remove_record("added-at-runtime.example.net")
    module.on(plain, "resolvectl flush-caches")
    for name in ("added-at-runtime.example.net", "deb.debian.org", "pypi.org"):
        assert lab.run(plain, f"getent ahostsv4 {name}").returncode == 2, name
    refused = [a for a in lab.dns_answers() if a["name"] == "deb.debian.org" and a["client"] == plain.address]
    assert refused and {a["rcode"] for a in refused} == {"NXDOMAIN"}


def test_nothing_beyond_the_lab_answers_a_guest(module: Module) -> None:
    plain = module.plain
    # 151.101.2.132 is one of deb.debian.org's addresses: by address, with no name to resolve.
    for url in ("http://151.101.2.132/", "http://1.1.1.1/", "http://198.18.64.2:22/"):
        result = module.lab.run(plain, f"curl -sS -m 5 -o /dev/null {url}")
        assert result.returncode != 0, url
    stats = json.loads(module.on(plain, f"curl -sS -m 10 {env.CACHE_URL}{package_cache.STATS_PATH}"))
    assert "counts" in stats


def test_the_lab_https_front_serves_route53_and_lets_encrypts_names(module: Module) -> None:
    plain = module.plain
    directory = json.loads(module.on(plain, "curl -sS -m 20 https://acme-staging-v02.api.letsencrypt.org/directory"))
    assert directory["newAccount"].startswith("https://acme-staging-v02.api.letsencrypt.org/")
    identity = module.on(plain, f"curl -sS -m 20 -o /dev/null -w '%{{http_code}}' https://{ORIGIN_NAME}:32400/identity")
    assert identity == "200"
    # The origin's certificate is the lab CA's, which the guest trusts; a name it was not issued for fails.
    module.lab.set_record("other-name.example.net", "A", [str(env.ORIGIN_ADDRESS)])
    wrong_name = module.lab.run(plain, "curl -sS -m 20 -o /dev/null https://other-name.example.net:32400/identity")
    assert wrong_name.returncode == 60


def test_a_command_step_gets_its_stdin_and_fails_on_a_non_zero_exit(module: Module, tmp_path: Path) -> None:
    plain = module.plain
    secret = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIlabstdinsecretvalue0\n-----END PRIVATE KEY-----\n"
    runner = StepRunner(module.lab.lab_namespace, tmp_path / "steps.log")
    write = CommandStep(
        "write-key",
        module.connection(plain),
        create="umask 077; cat > /root/step-stdin.pem && sha256sum /root/step-stdin.pem && echo $0",
        stdin=secret,
        secret_inputs=frozenset({"stdin"}),
    )
    runner.apply([write])
    assert module.on(plain, "cat /root/step-stdin.pem") == secret
    record = runner.records[-1]
    assert record.returncode == 0 and "/root/step-stdin.pem" in record.stdout
    assert record.stdout.split()[-1] in ("bash", "-bash")  # the login shell ran the string with -c
    failing = CommandStep("fails", module.connection(plain), create="echo partial; echo oops >&2; exit 3")
    with pytest.raises(StepError) as raised:
        runner.apply([failing])
    assert raised.value.returncode == 3 and raised.value.stdout == "partial\n" and raised.value.stderr == "oops\n"
    assert "stdinsecretvalue0" not in (tmp_path / "steps.log").read_text()


def test_a_changed_command_runs_its_update_and_destroy_runs_delete(module: Module, tmp_path: Path) -> None:
    plain = module.plain
    runner = StepRunner(module.lab.lab_namespace, tmp_path / "steps.log")
    step = CommandStep("marker", module.connection(plain), create="echo v1 > /root/marker", delete="rm /root/marker")
    deployed = runner.apply([step])
    changed = CommandStep(
        "marker", module.connection(plain), create="echo v2 > /root/marker", update="echo updated > /root/marker"
    )
    deployed = runner.apply([changed], deployed)
    assert module.on(plain, "cat /root/marker") == "updated\n"
    runner.destroy(deployed)
    # The state records the new inputs, which have no delete: nothing removed it.
    assert module.on(plain, "cat /root/marker") == "updated\n"
    runner.destroy(runner.apply([step]))
    assert module.lab.run(plain, "test -e /root/marker").returncode == 1


def test_copy_to_remote_puts_the_directory_itself_inside_remote_path(module: Module, tmp_path: Path) -> None:
    plain = module.plain
    release = tmp_path / "release-1"
    (release / "conf.d").mkdir(parents=True)
    (release / "nginx.conf").write_text("events {}\n")
    (release / "conf.d" / "run.sh").write_text("#!/bin/sh\n")
    (release / "conf.d" / "run.sh").chmod(0o755)
    module.on(plain, "mkdir -p /etc/plex-cdn/releases && touch /srv/a-file")
    runner = StepRunner(module.lab.lab_namespace, tmp_path / "steps.log")
    steps = [
        CopyStep("into-existing", module.connection(plain), str(release), "/etc/plex-cdn/releases"),
        CopyStep("into-missing", module.connection(plain), str(release), "/srv/new/deeper"),
        CopyStep("contents", module.connection(plain), str(release) + "/", "/srv/contents"),
    ]
    runner.apply(steps)
    listing = module.on(
        plain,
        "cd / && stat -c '%n %a %F' etc/plex-cdn/releases/release-1/nginx.conf "
        "etc/plex-cdn/releases/release-1/conf.d/run.sh srv/new/deeper/release-1/conf.d/run.sh "
        "srv/contents/nginx.conf srv/contents/conf.d",
    ).splitlines()
    assert listing == [
        "etc/plex-cdn/releases/release-1/nginx.conf 644 regular file",
        # No mode travels: the server's 0666 minus its umask, as with the provider's SFTP client.
        "etc/plex-cdn/releases/release-1/conf.d/run.sh 644 regular file",
        "srv/new/deeper/release-1/conf.d/run.sh 644 regular file",
        "srv/contents/nginx.conf 644 regular file",
        "srv/contents/conf.d 755 directory",
    ]
    with pytest.raises(StepError, match="not a directory"):
        runner.apply([CopyStep("onto-a-file", module.connection(plain), str(release), "/srv/a-file")])


def test_host_key_pinning_refuses_a_wrong_or_missing_key(module: Module) -> None:
    plain = module.plain
    _, wrong = _deploy_key()  # any other ed25519 key
    assert wrong.split()[:2] != plain.host_key().split()[:2]
    with (
        pytest.raises(HostKeyError, match="pinned host key"),
        SshSession(
            Connection(plain.address, module.deploy_private_key, host_key=wrong, dial_error_limit=3),
            module.lab.lab_namespace,
        ),
    ):
        pass
    with pytest.raises(HostKeyError, match="no host key"):
        SshSession(Connection(plain.address, module.deploy_private_key), module.lab.lab_namespace)
    with SshSession(
        Connection(plain.address, module.deploy_private_key), module.lab.lab_namespace, accept_any_host_key=True
    ) as session:
        assert session.run("true").returncode == 0


def test_a_rebooted_guest_comes_back_with_its_network(module: Module) -> None:
    plain = module.plain
    seconds = plain.reboot(module.lab.lab_private_key(), plain.host_key())
    assert seconds > 0
    assert f"{plain.address}/24" in module.on(plain, "ip -4 -o addr show dev eth0")
    assert module.on(plain, f"getent ahostsv4 {ORIGIN_NAME} | head -1").split()[0] == str(env.ORIGIN_ADDRESS)


def test_logs_of_every_guest_are_collected(module: Module) -> None:
    destination = module.lab.collect_logs()
    for path in ("console.log", "var/log/cloud-init.log", "var/log/cloud-init-output.log"):
        assert (destination / "plain" / path).is_file(), path
    console = (destination / "plain" / "console.log").read_text(errors="replace")
    assert re.search(r"Cloud-init v\. \S+ finished", console)


def test_stopping_a_guest_ends_its_qemu_and_its_tap(module: Module) -> None:
    plain = module.plain
    assert plain.process is not None
    plain.stop()
    assert plain.process.poll() is not None
    links = subprocess.run(
        ["ip", "-n", module.lab.lab_namespace, "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert plain.tap not in links


def test_clean_up_removes_a_lab_a_crashed_process_left(tmp_path: Path) -> None:
    state_dir = tmp_path / "left-behind"
    (state_dir / "guests" / "x").mkdir(parents=True)
    (state_dir / "guests" / "x" / "qemu.pid").write_text("1")  # pid 1 is no QEMU of this lab: left alone
    subprocess.run(["ip", "netns", "add", "pcvz-lab"], check=True)
    removed = clean_up(state_dir, "pcvz-")
    assert removed == ["pcvz-lab"] and not state_dir.exists()
