"""Stack files written to break the reader, each run through `python -m plexcdn validate` as a user would:
exit 1, lines naming the setting (or the file), no traceback, and it finishes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plexcdn import bounded_yaml
from tests.conftest import ROOT, example_values

# A hang guard for the subprocess, not a measurement: the runs take well under a second.
HANG_GUARD_SECONDS = 60


def settings_yaml(values: dict[str, object]) -> str:
    return yaml.safe_dump({"config": {f"plex-cdn:{key}": value for key, value in values.items()}}, sort_keys=False)


def example_with(**replaced: str) -> str:
    """The example stack's YAML with some top-level settings replaced by raw YAML text."""
    values = example_values()
    for key in replaced:
        values.pop(key, None)
    lines = [settings_yaml(values).rstrip("\n")]
    lines.extend(f"  plex-cdn:{key}: {text}" for key, text in replaced.items())
    return "\n".join(lines) + "\n"


def billion_laughs() -> str:
    """Nine levels of nine aliases each: 9**9 strings once expanded, as the domain."""
    anchors = ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 9):
        name, previous = chr(ord("a") + level), chr(ord("a") + level - 1)
        anchors.append(f"&{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "[" + ", ".join(anchors) + "]"


def deep_nesting() -> str:
    return "[" * 50_000 + "]" * 50_000


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plexcdn", "validate", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=HANG_GUARD_SECONDS,
    )


CASES: dict[str, tuple[bytes, str]] = {
    "a port of one superscript digit": (
        example_with(origin='{host: home.example.net, port: "²"}').encode(),
        "origin.port: ",
    ),
    "a 5,000-digit port": (
        example_with(origin="{host: home.example.net, port: " + "9" * 5000 + "}").encode(),
        "origin.port: must be a whole number from 1 to 65535, got a number of 5,000 digits",
    ),
    "a 5,000-digit domain": (example_with(domain="7" * 5000).encode(), "domain: must be a DNS name"),
    "50,000 levels of nesting": (example_with(domain=deep_nesting()).encode(), "domain[0]"),
    "2,000 mappings each the key of the next": (
        example_with(domain="{" * 2000 + "}" * 2000).encode(),
        "domain: nested",
    ),
    "a 6,000-character upstream": (
        example_with(
            pops="[{name: us, provider: digitalocean, region: nyc3, size: s-1vcpu-1gb, upstream: "
            + "origin" * 1000
            + "}]"
        ).encode(),
        "pops[0].upstream: 'originorigin",
    ),
    "a 4,000-character region": (
        example_with(
            pops="[{name: us, provider: digitalocean, region: "
            + "nyc3" * 1000
            + ", size: s-1vcpu-1gb, upstream: origin}]"
        ).encode(),
        "pops[0].region: 'nyc3nyc3",
    ),
    "an empty key": (example_with(acme="{email: you@example.com, '': x}").encode(), "acme['']: unknown setting"),
    "a billion laughs as the domain": (example_with(domain=billion_laughs()).encode(), "domain"),
    "an alias that holds itself": (example_with(nginx="&loop {viewerHttp2: *loop}").encode(), "nginx.viewerHttp2: "),
    "a key written twice": (
        example_with(domain="a.example.com").encode() + b"  plex-cdn:domain: b.example.com\n",
        "written twice",
    ),
    "Latin-1 bytes": (
        example_with(domain="example.com").encode().replace(b"example.com", b"ex\xe9mple.com", 1),
        "not UTF-8",
    ),
    "UTF-16": (example_with(domain="example.com").encode("utf-16"), "is UTF-16 text"),
    "admin.cidr ::/1": (
        example_with(admin="{sshPublicKey: 'ssh-ed25519 AAAA', cidr: '::/1'}").encode(),
        "admin.cidr: ::/1 is too broad for SSH",
    ),
    "a line separator in a POP name": (
        example_with(
            pops='[{name: "us\\u2028x", provider: digitalocean, region: nyc3, size: s-1vcpu-1gb, upstream: origin}]'
        ).encode(),
        "pops[0].name: holds LINE SEPARATOR (U+2028)",
    ),
    "a NUL in the email": (
        example_with(acme='{email: "you\\0@example.com", server: staging}').encode(),
        "acme.email: holds NULL (U+0000)",
    ),
    "a next line in the domain": (example_with(domain='"example.com\\N"').encode(), "domain: holds NEXT LINE (U+0085)"),
    "a line break in the admin key's comment": (
        example_with(
            admin='{sshPublicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF2 you\\ncommand=\\"sh\\" x", '
            "cidr: 203.0.113.7/32}"
        ).encode(),
        "admin.sshPublicKey: holds LINE FEED (U+000A)",
    ),
    "a carriage return in a shared path": (
        example_with(transcode='{mediaPaths: ["/srv/media\\r"], origin: {host: 192.168.1.10, hostKey: x}}').encode(),
        "transcode.mediaPaths[0]: holds CARRIAGE RETURN (U+000D)",
    ),
    "a file larger than a stack file ever is": (
        example_with(domain="example.com").encode() + b"# " + b"x" * bounded_yaml.MAX_BYTES + b"\n",
        "a stack file is at most",
    ),
    "the homeSshKey in clear text": (
        example_with(homeSshKey="'-----BEGIN OPENSSH PRIVATE KEY-----'").encode(),
        "homeSshKey: is written in clear text",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_stack_file_is_refused_by_name_without_a_traceback(case: str, tmp_path: Path) -> None:
    content, expected = CASES[case]
    path = tmp_path / "Pulumi.hostile.yaml"
    path.write_bytes(content)
    result = validate(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    assert any(expected in line for line in lines), result.stderr
    assert all(len(line) < 2000 for line in lines), "a message quotes a value whole"


def test_the_hostile_files_fail_only_for_their_hostile_part(tmp_path: Path) -> None:
    """The example the cases are built on is valid, so each refusal above is the hostile part's."""
    path = tmp_path / "Pulumi.plain.yaml"
    path.write_text(example_with(domain="example.com"))
    result = validate(path)
    assert result.returncode == 0, result.stderr
