"""Stacks with transcode offload, and readers for what the rendered scripts write."""

from __future__ import annotations

import re
import shlex
from typing import Any

from tests.conftest import HOME_HOST_KEY, example_values

PLEX_VERSION = "1.41.3.9314-a0bfb8370"
ORIGIN_HOST = "192.168.1.10"
APP_DATA = "/var/lib/plexmediaserver/Library/Application Support/Plex Media Server"
TRANSCODE_DIR = "/srv/plex transcode"
MEDIA = ["/srv/media", "/mnt/Movies & TV $HOME"]


def transcode_values(**changes: Any) -> dict[str, Any]:
    """The example stack with a host slave at home and two cloud slaves, one per provider; awkward paths on
    purpose (spaces, '&', '$')."""
    values = example_values()
    values["transcode"] = {
        "origin": {"host": ORIGIN_HOST, "port": 2200, "user": "admin", "hostKey": HOME_HOST_KEY},
        "plexVersion": PLEX_VERSION,
        "plexUid": 999,
        "plexGid": 998,
        "appDataDir": APP_DATA,
        "transcodeDir": TRANSCODE_DIR,
        "mediaPaths": list(MEDIA),
        "tunnelSubnet": "10.78.0.0/24",
        "wireguardPort": 51821,
        "slaves": [
            {
                "name": "den",
                "kind": "host",
                "host": "192.168.1.20",
                "port": 2222,
                "user": "root",
                "hostKey": HOME_HOST_KEY,
            },
            {"name": "nyc", "kind": "cloud", "provider": "digitalocean", "region": "nyc3", "size": "c-4"},
            {
                "name": "tokyo",
                "kind": "cloud",
                "provider": "linode",
                "region": "ap-northeast",
                "size": "g6-dedicated-4",
            },
        ],
    }
    values["transcode"].update(changes)
    return values


def host_only_values() -> dict[str, Any]:
    values = transcode_values()
    values["transcode"]["slaves"] = [
        {"name": "den", "kind": "host", "host": "192.168.1.20", "user": "admin", "hostKey": HOME_HOST_KEY},
        {"name": "attic", "kind": "host", "host": "192.168.1.21", "hostKey": HOME_HOST_KEY},
    ]
    del values["transcode"]["tunnelSubnet"]
    return values


def script_of(command_line: str) -> str:
    """The script inside `[sudo -n] /bin/bash -c SCRIPT`."""
    words = shlex.split(command_line)
    if words[:2] == ["sudo", "-n"]:
        words = words[2:]
    assert words[:2] == ["/bin/bash", "-c"] and len(words) == 3, words[:3]
    return words[2]


_WRITTEN = re.compile(
    r"cat > \"\$plexcdn_tmp\" <<'PLEXCDN_EOF'\n(?P<content>.*?)PLEXCDN_EOF\n"
    r".*?mv -f \"\$plexcdn_tmp\" (?P<path>[^\n]+)\n",
    re.DOTALL,
)


def written_files(script: str) -> dict[str, str]:
    """Every file a rendered script writes with write_file, by path."""
    return {shlex.split(match["path"])[0]: match["content"] for match in _WRITTEN.finditer(script)}


def fstab_block_of(script: str) -> str:
    match = re.search(r"cat > \"\$block\" <<'PLEXCDN_EOF'\n(.*?)PLEXCDN_EOF\n", script, re.DOTALL)
    assert match is not None, "the slave script writes no fstab block"
    return match[1]


def parse_exports(text: str) -> dict[str, dict[str, tuple[str, ...]]]:
    """exports(5) lines -> {path: {client address: options}}."""
    result: dict[str, dict[str, tuple[str, ...]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        path, *clients = shlex.split(line)
        entries: dict[str, tuple[str, ...]] = {}
        for client in clients:
            match = re.fullmatch(r"([^()]+)\(([^()]*)\)", client)
            assert match is not None, client
            entries[match[1]] = tuple(match[2].split(","))
        result[path] = entries
    return result


def _fstab_unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def parse_fstab(text: str) -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """fstab lines -> {mount point: (server, exported path, options)}."""
    result: dict[str, tuple[str, str, tuple[str, ...]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        source, target, kind, options, *_ = line.split()
        assert kind == "nfs", line
        server, _, path = _fstab_unescape(source).rpartition(":")
        result[_fstab_unescape(target)] = (server.strip("[]"), path, tuple(options.split(",")))
    return result
