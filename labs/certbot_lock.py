"""Writes plexcdn/certbot-requirements.lock: certbot and certbot-dns-route53 at render.CERTBOT_VERSION and every
package they need, each pinned and with the SHA-256 of every wheel a POP (CPython 3.13 on Debian 13, x86_64 or
aarch64) or this project's certificate lab (CPython 3.11 on Debian 12, x86_64) installs. A POP runs
`pip install --require-hashes --only-binary :all: -r` on it: a wheel whose hash is not in the file is refused,
nothing is built from source, and a dependency missing from the file is an error.

    python -m labs.certbot_lock            # resolve against PyPI and write the lock
    python -m labs.certbot_lock --check    # resolve again and say whether the committed lock still matches

It asks PyPI itself (`pip download --isolated`, so no local mirror, find-links or constraints of this machine
take part), once per target, and refuses to write a lock when the targets resolve to different versions.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from plexcdn import render

INDEX_URL = "https://pypi.org/simple"
ROOTS = ("certbot", "certbot-dns-route53")


@dataclass(frozen=True)
class Target:
    """A Python and platform the lock must install on."""

    python: str  # "3.13"
    machine: str  # x86_64, aarch64
    glibc_minor: int  # the newest manylinux_2_N a system of that glibc takes
    who: str

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def platforms(self) -> list[str]:
        tags = [f"manylinux_2_{minor}_{self.machine}" for minor in range(17, self.glibc_minor + 1)]
        tags.append(f"manylinux2014_{self.machine}")
        if self.machine == "x86_64":
            tags += [f"manylinux_2_{minor}_x86_64" for minor in (5, 12)] + ["manylinux1_x86_64", "manylinux2010_x86_64"]
        return tags


TARGETS = (
    Target("3.13", "x86_64", 41, "POPs: Debian 13 (glibc 2.41, Python 3.13) on x86_64"),
    Target("3.13", "aarch64", 41, "POPs: Debian 13 (glibc 2.41, Python 3.13) on aarch64"),
    Target("3.11", "x86_64", 36, "the certificate lab: Debian 12 (glibc 2.36, Python 3.11) on x86_64"),
)
_WHEEL = re.compile(r"^(?P<name>[A-Za-z0-9_.]+?)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def download(target: Target, version: str, destination: Path) -> dict[str, tuple[str, list[Path]]]:
    """{package: (version, wheels)} as pip resolves the roots for TARGET, from PyPI alone."""
    command = [
        sys.executable,
        *("-m", "pip", "download", "--isolated", "--quiet", "--disable-pip-version-check", "--no-cache-dir"),
        *("--index-url", INDEX_URL, "--only-binary=:all:", "--dest", str(destination)),
        *("--python-version", target.python, "--implementation", "cp"),
        *("--abi", target.abi, "--abi", "abi3", "--abi", "none"),
        *(word for platform in target.platforms() for word in ("--platform", platform)),
        *(f"{root}=={version}" for root in ROOTS),
    ]
    subprocess.run(command, check=True, timeout=900)
    found: dict[str, tuple[str, list[Path]]] = {}
    for wheel in sorted(destination.glob("*.whl")):
        match = _WHEEL.match(wheel.name)
        if match is None:
            raise SystemExit(f"cannot read the wheel name {wheel.name}")
        name, release = canonical(match["name"]), match["version"]
        if name in found and found[name][0] != release:
            raise SystemExit(f"{target.who}: two versions of {name}")
        found.setdefault(name, (release, []))[1].append(wheel)
    return found


def render_lock(version: str, resolved: Mapping[Target, Mapping[str, tuple[str, Sequence[Path]]]]) -> str:
    names = sorted({name for packages in resolved.values() for name in packages})
    for name in names:
        versions = {target.who: packages.get(name, ("(none)", []))[0] for target, packages in resolved.items()}
        if len(set(versions.values())) != 1:
            raise SystemExit(f"{name} resolves differently per target: {versions}; the lock would not be one set")
    lines = [
        f"# certbot {version} and certbot-dns-route53 {version} with every package they need, for",
        *(f"#   {target.who}" for target in resolved),
        "# Written by `python -m labs.certbot_lock` from PyPI; installed with",
        "# pip install --require-hashes --only-binary :all: -r <this file>",
    ]
    for name in names:
        release = next(iter(resolved.values()))[name][0]
        wheels = [path for packages in resolved.values() for path in packages[name][1]]
        digests = sorted({hashlib.sha256(path.read_bytes()).hexdigest() for path in wheels})
        lines.append(f"{name}=={release} \\")
        hashes = [f"    --hash=sha256:{digest}" for digest in digests]
        lines.extend(" \\\n".join(hashes).split("\n"))
    return "\n".join(lines) + "\n"


def resolve(version: str) -> str:
    with tempfile.TemporaryDirectory(prefix="certbot-lock-") as directory:
        resolved = {}
        for index, target in enumerate(TARGETS):
            resolved[target] = download(target, version, Path(directory) / str(index))
        return render_lock(version, resolved)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write or check certbot's hash-pinned requirements for the POPs.")
    parser.add_argument("--check", action="store_true", help="compare with the committed lock instead of writing")
    args = parser.parse_args(argv)
    text = resolve(render.CERTBOT_VERSION)
    if args.check:
        same = render.CERTBOT_LOCK.read_text() == text
        print(f"{render.CERTBOT_LOCK}: {'matches PyPI' if same else 'differs from what PyPI resolves today'}")
        return 0 if same else 1
    render.CERTBOT_LOCK.write_text(text)
    print(f"wrote {render.CERTBOT_LOCK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
