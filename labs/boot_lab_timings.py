"""How long the boot lab takes: image build, boot to login, cloud-init, and the POP's package steps with a
cold and a warm package cache. The numbers in docs/boot-lab.md come from here.

    python -m labs.boot_lab_timings [--cold]

`--cold` builds the image and fills the package cache in empty temporary directories, so both start
from nothing (the shared caches stay untouched); without it the shared caches are used as they are.
Two guests boot at once; the first runs the POP's package steps (apt, then the certbot venv and pip,
as the rendered cloud-init has them) over SSH, then the second runs the same steps again. Needs root
and the network; hold the lab lock (`flock /tmp/plexcdn-lab.lock ...`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import yaml

from labs import guest_image, package_cache
from labs.boot_lab import BootLab, VmRequest
from labs.guests import Guest
from labs.netns import LabError
from plexcdn import render
from plexcdn.config import load_stack_file

EXAMPLE_STACK = Path(__file__).resolve().parents[1] / "Pulumi.dev.yaml"
PLAIN_USER_DATA = b"#cloud-config\n{}\n"


def pop_package_commands(stack_file: Path = EXAMPLE_STACK) -> tuple[str, str]:
    """The rendered POP's package steps as two shell commands: apt (update + packages), then the certbot venv."""
    config = load_stack_file(stack_file)
    rendered = yaml.safe_load(render.cloud_init(config, config.pops[0].name))
    apt = "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q " + " ".join(
        shlex.quote(package) for package in rendered["packages"]
    )
    venv = " && ".join(
        shlex.join([str(part) for part in entry])
        for entry in rendered["runcmd"]
        if any("/opt/certbot" in str(part) for part in entry) and "issue" not in " ".join(map(str, entry))
    )
    return apt, venv


def _timed(lab: BootLab, guest: Guest, command: str) -> float:
    started = time.monotonic()
    result = lab.run(guest, command, timeout=1800)
    if result.returncode != 0:
        raise LabError(f"{command} exited {result.returncode}: {result.stderr[-2000:]}")
    return time.monotonic() - started


def measure(cold: bool) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="plexcdn-timings-") as scratch:
        caches = Path(scratch)
        image_dir = caches / "images" if cold else guest_image.IMAGE_CACHE_DIR
        packages_dir = caches / "packages" if cold else package_cache.PERSISTENT_CACHE_DIR
        started = time.monotonic()
        with BootLab(caches / "state", "pcvm-", package_cache_dir=packages_dir, image_cache_dir=image_dir) as lab:
            rows.append(("lab start (image build included when not cached)", f"{time.monotonic() - started:.0f} s"))
            if lab.image_build_seconds is not None:
                rows.append(("image build (mmdebstrap + mkfs.ext4)", f"{lab.image_build_seconds:.0f} s"))
            first, second = lab.boot([VmRequest("first", PLAIN_USER_DATA), VmRequest("second", PLAIN_USER_DATA)])
            for name, timings in lab.wait_ready(first, second).items():
                rows.append((f"{name}: boot to login prompt (2 guests at once)", f"{timings.login:.0f} s"))
                rows.append((f"{name}: cloud-init done (minimal user_data)", f"{timings.cloud_init_done:.0f} s"))
            apt, venv = pop_package_commands()
            for guest, cache_state in ((first, "cold" if cold else "as found"), (second, "warm")):
                before = package_cache.read_stats(lab.cache_port)
                apt_seconds = _timed(lab, guest, apt)
                rows.append((f"apt: update + the POP's packages ({cache_state})", f"{apt_seconds:.0f} s"))
                venv_seconds = _timed(lab, guest, venv)
                rows.append((f"pip: venv + certbot, certbot-dns-route53 ({cache_state})", f"{venv_seconds:.0f} s"))
                delta = package_cache.stats_delta(before, package_cache.read_stats(lab.cache_port))
                rows.append((f"cache answers ({cache_state})", str(delta)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.boot_lab_timings", description=__doc__.split("\n")[0])
    parser.add_argument("--cold", action="store_true", help="empty image and package caches")
    args = parser.parse_args(argv)
    rows = measure(args.cold)
    print("| step | time |\n|---|---|")
    for step, value in rows:
        print(f"| {step} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
