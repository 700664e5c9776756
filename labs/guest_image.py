"""The boot lab's Debian 13 base image: as close as a public recipe allows to the providers' cloud image.

Debian's cloud images are built by debian-cloud-images (FAI classes CLOUD, GENERIC, SYSTEM_BOOT):
cloud-init, openssh-server, netplan.io rendering to systemd-networkd, systemd-resolved, the cloud
kernel, sudo, unattended-upgrades, cloud-guest-utils, timesyncd, and a short list from priority
"important". `CLOUD_PACKAGES` follows those lists. The image then gets the same clean-up as theirs
(no SSH host keys, an empty machine-id and hostname, no apt lists), so every guest generates its own
keys and identity on first boot and `package_update` really fetches the indexes.

Differences from a provider's image, all forced by booting it under QEMU here: no boot loader or
partition table (QEMU boots the image's kernel and initrd directly; the filesystem is the whole
disk, so growpart has nothing to grow), and the lab's environment files (`ImageRecipe.environment`:
proxy, trust store, datasource; see docs/boot-lab.md), which belong to the lab, not to the program.

Images are cached under /var/cache/plexcdn-lab/images/<key>, the key a hash of everything that goes
into the recipe. Builders of the same key wait for each other (a lock file), and a build becomes
visible by one rename, so a reader never sees half an image.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from labs.netns import LabError

IMAGE_CACHE_DIR: Final = Path("/var/cache/plexcdn-lab/images")
SUITE: Final = "trixie"
MIRROR: Final = "http://deb.debian.org/debian"
# Changing how an image is built (not what goes in) bumps this, so old images are not reused.
BUILD_STEPS_VERSION: Final = 1
DISK_SIZE: Final = "4G"
BUILD_TIMEOUT_S: Final = 1200

# debian-cloud-images' SYSTEM_BOOT, CLOUD and GENERIC classes for a generic amd64 cloud image, plus the
# cloud kernel and the EXTRAS the POP relies on (curl, ca-certificates) and python3, which cloud-init
# pulls in anyway.
CLOUD_PACKAGES: Final = (
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "dbus",
    "libpam-systemd",
    "systemd-resolved",
    "libnss-myhostname",
    "systemd-timesyncd",
    "polkitd",
    "netplan.io",
    "cloud-init",
    "cloud-guest-utils",
    "openssh-server",
    "sudo",
    "unattended-upgrades",
    "apparmor",
    "zstd",
    "apt-utils",
    "iptables",
    "iproute2",
    "iputils-ping",
    "less",
    "nano",
    "netbase",
    "vim-tiny",
    "whiptail",
    "e2fsprogs",
    "ca-certificates",
    "curl",
    "python3",
    "xz-utils",
)
# ifupdown comes with the apt variant's dependency resolution on some mirrors; the cloud images use
# networkd only, and with ifupdown a trixie guest waits minutes in "Raise network interfaces".
EXCLUDED_PACKAGES: Final = ("ifupdown", "isc-dhcp-client")

APT_SOURCES: Final = """\
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.debian.org/debian-security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
FSTAB: Final = "/dev/vda / ext4 rw,discard,errors=remount-ro 0 1\n"
# debian-cloud-images' LAST/10-cleanup: what each instance must make for itself.
CLEANUP_GLOBS: Final = (
    "etc/ssh/ssh_host_*",
    "var/lib/dbus/machine-id",
    "var/lib/apt/lists/*",
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/log/apt/*",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/bootstrap.log",
    "etc/apt/sources.list",
)
EMPTIED_FILES: Final = ("etc/hostname", "etc/machine-id")


@dataclass(frozen=True)
class EnvironmentFile:
    """A file the lab puts into the image: part of the lab's environment, not of what a POP is given."""

    path: str
    content: bytes
    mode: int = 0o644

    def __post_init__(self) -> None:
        if not self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError(f"environment file path must be absolute and plain: {self.path}")


@dataclass(frozen=True)
class ImageRecipe:
    suite: str = SUITE
    mirror: str = MIRROR
    packages: tuple[str, ...] = CLOUD_PACKAGES
    excluded: tuple[str, ...] = EXCLUDED_PACKAGES
    environment: tuple[EnvironmentFile, ...] = ()
    # Commands run in the image's root after the environment files are in place (e.g. update-ca-certificates).
    environment_commands: tuple[tuple[str, ...], ...] = ()
    disk_size: str = DISK_SIZE

    def describe(self) -> dict[str, object]:
        return {
            "build_steps_version": BUILD_STEPS_VERSION,
            "suite": self.suite,
            "mirror": self.mirror,
            "packages": sorted(self.packages),
            "excluded": sorted(self.excluded),
            "environment": {
                item.path: {"sha256": hashlib.sha256(item.content).hexdigest(), "mode": oct(item.mode)}
                for item in sorted(self.environment, key=lambda e: e.path)
            },
            "environment_commands": [list(command) for command in self.environment_commands],
            "apt_sources": APT_SOURCES,
            "fstab": FSTAB,
            "disk_size": self.disk_size,
        }

    def key(self) -> str:
        canonical = json.dumps(self.describe(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class BaseImage:
    """A built image: a raw ext4 disk with the root filesystem, and the kernel and initrd to boot it."""

    directory: Path
    manifest: dict[str, object] = field(compare=False)

    @property
    def disk(self) -> Path:
        return self.directory / "disk.raw"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def key(self) -> str:
        return self.directory.name

    def overlay(self, path: Path) -> Path:
        """A copy-on-write qcow2 disk on top of the image, for one guest."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.disk), "-F", "raw", str(path)], timeout=60)
        return path

    @classmethod
    def load(cls, directory: Path) -> BaseImage | None:
        try:
            manifest = json.loads((directory / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        image = cls(directory, manifest)
        if not all(path.exists() for path in (image.disk, image.kernel, image.initrd)):
            return None
        return image


def _run(argv: Sequence[str], timeout: float, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if log is not None:
        with log.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        raise LabError(f"{argv[0]} exited {result.returncode}: {(result.stderr or result.stdout)[-3000:]}")
    return result


def build_tools_missing() -> list[str]:
    return [tool for tool in ("mmdebstrap", "mkfs.ext4", "qemu-img") if shutil.which(tool) is None]


def ensure_image(recipe: ImageRecipe, cache_dir: Path = IMAGE_CACHE_DIR, apt_proxy: str | None = None) -> BaseImage:
    """The image for `recipe`, built now if the cache has none. `apt_proxy` (an http:// URL on this
    machine) only speeds the build up; it is not part of the image."""
    target = cache_dir / recipe.key()
    found = BaseImage.load(target)
    if found is not None:
        return found
    missing = build_tools_missing()
    if missing:
        raise LabError(f"building the guest image needs {', '.join(missing)} (mmdebstrap, e2fsprogs, qemu-utils)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(cache_dir)
    with (cache_dir / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = BaseImage.load(target)
        if found is not None:
            return found
        return _build(recipe, target, apt_proxy)


def _build(recipe: ImageRecipe, target: Path, apt_proxy: str | None) -> BaseImage:
    started = time.monotonic()
    work = target.with_name(f".build-{target.name}-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "build.log"
    try:
        staging = work / "environment"
        for item in recipe.environment:
            destination = staging / item.path.lstrip("/")
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(item.content)
            destination.chmod(item.mode)
        root = work / "root"
        _run(_mmdebstrap_command(recipe, root, staging, apt_proxy), timeout=BUILD_TIMEOUT_S, log=log)
        _clean_up(root)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise LabError(f"the image has kernels {kernels} and initrds {initrds}, expected one of each")
        shutil.copyfile(kernels[0], work / "vmlinuz")
        shutil.copyfile(initrds[0], work / "initrd.img")
        packages = _installed_packages(root)
        _run(
            ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(work / "disk.raw"), recipe.disk_size],
            timeout=300,
            log=log,
        )
        shutil.rmtree(root)
        shutil.rmtree(staging, ignore_errors=True)
        manifest = {
            "recipe": recipe.describe(),
            "kernel": kernels[0].name,
            "packages": packages,
            "build_seconds": round(time.monotonic() - started, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    image = BaseImage.load(target)
    if image is None:
        raise LabError(f"the image at {target} is incomplete right after its build")
    return image


def _mmdebstrap_command(recipe: ImageRecipe, root: Path, staging: Path, apt_proxy: str | None) -> list[str]:
    includes = ",".join([*recipe.packages, *(f"{package}-" for package in recipe.excluded)])
    command = [
        "mmdebstrap",
        "--quiet",
        "--mode=root",
        "--variant=apt",
        "--format=directory",
        f"--include={includes}",
        # Recommends stay out, as the cloud images install with install-norec.
        "--aptopt=APT::Install-Recommends false",
    ]
    if apt_proxy:
        command.append(f'--aptopt=Acquire::http::Proxy "{apt_proxy}"')
    command += [
        f'--customize-hook=cp -a {staging}/. "$1"/',
        f"--customize-hook=printf '%s' '{APT_SOURCES}' > \"$1\"/etc/apt/sources.list.d/debian.sources",
        f"--customize-hook=printf '%s' '{FSTAB}' > \"$1\"/etc/fstab",
        # What debian-cloud-images' SYSTEM_BOOT/20-enable-systemd-resolved does.
        '--customize-hook=ln -sf /run/systemd/resolve/stub-resolv.conf "$1"/etc/resolv.conf',
        '--customize-hook=chroot "$1" systemctl enable systemd-networkd.service systemd-resolved.service',
    ]
    command += [f'--customize-hook=chroot "$1" {" ".join(argv)}' for argv in recipe.environment_commands]
    command += [recipe.suite, str(root), recipe.mirror]
    return command


def _clean_up(root: Path) -> None:
    for pattern in CLEANUP_GLOBS:
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    for name in EMPTIED_FILES:
        (root / name).write_text("")
    # A proxy given for the build only must not stay in the image.
    for path in (root / "etc" / "apt" / "apt.conf.d").glob("99mmdebstrap"):
        path.unlink()


def _installed_packages(root: Path) -> dict[str, str]:
    result = _run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package} ${Version}\n"], timeout=60)
    packages = {}
    for line in result.stdout.splitlines():
        name, _, version = line.partition(" ")
        packages[name] = version
    return packages


def remove_stale_builds(cache_dir: Path = IMAGE_CACHE_DIR) -> None:
    """Leftovers of builds that were killed (their process is gone)."""
    for work in cache_dir.glob(".build-*"):
        pid = work.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(work)
