"""certbot on a POP comes from a hash-pinned lock: what first boot installs, and pip holding it to the hashes.

The install test needs PyPI (this machine reaches it); it installs the lock exactly as the rendered cloud-init
writes it into a fresh venv, the way first boot does, and shows pip refusing a file whose hash the lock does not
name.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plexcdn import render
from plexcdn.config import StackConfig

REQUIREMENT = re.compile(r"^([a-z0-9-]+)==([A-Za-z0-9.+!-]+) \\$")
HASH = re.compile(r"^    --hash=sha256:[0-9a-f]{64}( \\)?$")


def lock_entries(text: str) -> dict[str, tuple[str, list[str]]]:
    """{package: (version, sha256 digests)}; fails on any line pip could read as something else."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = ""
    continued = False
    for line in text.splitlines():
        if line.startswith("#") and not continued:
            continue
        requirement = REQUIREMENT.match(line)
        if requirement and not continued:
            current = requirement[1]
            assert current not in entries, f"{current} twice"
            entries[current] = (requirement[2], [])
            continued = True
            continue
        assert HASH.match(line) and current, f"not a requirement or a hash: {line!r}"
        entries[current][1].append(line.split("sha256:")[1].split()[0])
        continued = line.endswith("\\")
    assert not continued, "the last line continues into nothing"
    return entries


def rendered_lock(config: StackConfig) -> str:
    document = yaml.safe_load(render.cloud_init(config, config.pops[0].name))
    return str(next(item["content"] for item in document["write_files"] if item["path"] == render.CERTBOT_LOCK_PATH))


def test_every_package_is_pinned_with_hashes_and_first_boot_installs_only_those(example_config: StackConfig) -> None:
    text = rendered_lock(example_config)
    assert text == render.CERTBOT_LOCK.read_text()
    entries = lock_entries(text)
    assert entries["certbot"][0] == entries["certbot-dns-route53"][0] == render.CERTBOT_VERSION
    for name in ("acme", "josepy", "cryptography", "cffi", "boto3", "botocore", "requests", "urllib3"):
        assert name in entries, f"{name}: a dependency of certbot missing from the lock"
    assert all(digests for _, digests in entries.values())
    document = yaml.safe_load(render.cloud_init(example_config, example_config.pops[0].name))
    files = {item["path"]: item for item in document["write_files"]}
    first_boot = files[render.FIRST_BOOT_PATH]["content"]
    install = [line for line in first_boot.splitlines() if "pip install" in line or "--require-hashes" in line]
    assert "--require-hashes --only-binary :all: -r " + render.CERTBOT_LOCK_PATH in " ".join(install)
    assert "certbot==" not in first_boot, "nothing is installed by name alone"
    assert files[render.CERTBOT_LOCK_PATH]["permissions"] == "0644"


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not pypi_reachable(), reason="installs from PyPI, which this machine cannot reach")
def test_the_rendered_lock_installs_with_require_hashes_and_a_changed_hash_is_refused(
    example_config: StackConfig, tmp_path: Path
) -> None:
    lock = tmp_path / "certbot-requirements.lock"
    lock.write_text(rendered_lock(example_config))
    venv = tmp_path / "certbot"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "pip"), "install", "--isolated", "--disable-pip-version-check"]
    pip += ["--require-hashes", "--only-binary", ":all:"]
    installed = subprocess.run([*pip, "-r", str(lock)], capture_output=True, text=True, timeout=900, check=False)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    version = subprocess.run(
        [str(venv / "bin" / "certbot"), "--version"], capture_output=True, text=True, timeout=120, check=True
    )
    assert version.stdout.strip() == f"certbot {render.CERTBOT_VERSION}"
    frozen = subprocess.run(
        [str(venv / "bin" / "pip"), "freeze", "--all", "--isolated"], capture_output=True, text=True, check=True
    )
    pinned = {name: entry[0] for name, entry in lock_entries(lock.read_text()).items()}
    for line in frozen.stdout.splitlines():
        name, _, release = line.partition("==")
        name = re.sub(r"[-_.]+", "-", name).lower()
        if name not in ("pip", "setuptools", "wheel"):
            assert pinned.get(name) == release, f"{line}: installed but not what the lock pins"

    # One hash changed: pip refuses the wheel it downloads for it, and installs nothing.
    entries = lock_entries(lock.read_text())
    certbot_hash = entries["certbot"][1][0]
    tampered = tmp_path / "tampered.lock"
    tampered.write_text(lock.read_text().replace(certbot_hash, "0" * 64))
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(fresh)], check=True, timeout=120)
    refused = subprocess.run(
        [str(fresh / "bin" / "pip"), *pip[1:], "-r", str(tampered)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr, refused.stderr[-2000:]
    assert not (fresh / "bin" / "certbot").exists()
