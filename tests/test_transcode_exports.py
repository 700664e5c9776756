"""What the Plex server exports to its transcode slaves, read with a strict exports(5) parser: nothing that holds
the owner's token, read-only wherever a transcode only reads, to the slaves' addresses only.

This host's kernel has no NFS server, so `exportfs` cannot read these files here; plexcdn.transcode.render's
exports_file() renders the same text a Debian 13 guest can load with `exportfs -ra; exportfs -v`.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from plexcdn.transcode import render as tr
from tests.conftest import config_from
from tests.transcode_fixtures import APP_DATA, TRANSCODE_DIR, host_only_values, transcode_values

TOKEN = "owner-plex-online-token-6c1f"
# Every option exports(5) of nfs-utils 2.x documents; anything else is a typo nfs-utils would refuse.
EXPORT_OPTIONS = {
    "secure",
    "insecure",
    "rw",
    "ro",
    "async",
    "sync",
    "no_wdelay",
    "wdelay",
    "nohide",
    "hide",
    "crossmnt",
    "no_subtree_check",
    "subtree_check",
    "insecure_locks",
    "no_auth_nlm",
    "secure_locks",
    "auth_nlm",
    "no_acl",
    "acl",
    "root_squash",
    "no_root_squash",
    "all_squash",
    "no_all_squash",
    "pnfs",
    "no_pnfs",
    "security_label",
}
VALUED_OPTIONS = {"sec", "mountpoint", "mp", "fsid", "refer", "replicas", "anonuid", "anongid", "xprtsec"}
OPPOSITES = [("rw", "ro"), ("sync", "async"), ("root_squash", "no_root_squash"), ("secure", "insecure")]


class ExportsError(ValueError):
    """A line nfs-utils would refuse, or would read differently from what it seems to say."""


@dataclass(frozen=True)
class ExportEntry:
    path: str
    client: str
    options: tuple[str, ...]


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), text)


def _split_path(line: str) -> tuple[str, str]:
    if line.startswith('"'):
        end = line.find('"', 1)
        if end < 0:
            raise ExportsError(f"unterminated quoted path: {line!r}")
        path, rest = line[1:end], line[end + 1 :]
        if rest and not rest[0].isspace():
            raise ExportsError(f"text straight after the quoted path: {line!r}")
        return _unescape(path), rest
    path, _, rest = line.partition(" ")
    if "\t" in path:
        path, _, tail = path.partition("\t")
        rest = tail + " " + rest
    return _unescape(path), rest


def _check_options(options: list[str], where: str) -> None:
    for option in options:
        name, has_value, _ = option.partition("=")
        if (name not in EXPORT_OPTIONS or has_value) and name not in VALUED_OPTIONS:
            raise ExportsError(f"{where}: unknown option {option!r}")
    for first, second in OPPOSITES:
        if first in options and second in options:
            raise ExportsError(f"{where}: both {first} and {second}")


def read_exports(text: str) -> list[ExportEntry]:
    """exports(5), strictly: one export per line (no continuations), an absolute path (double-quoted or with
    \\ooo escapes), then clients each written host(options) with nothing between the host and '('. A bare
    "(options)" would export to the whole world; a host without options gets nfs-utils' defaults; both are refused,
    as are unknown and contradicting options."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            raise ExportsError(f"line {number}: continuation lines are not written by plex-cdn")
        path, rest = _split_path(line)
        if not path.startswith("/") or posixpath.normpath(path) != path:
            raise ExportsError(f"line {number}: {path!r} is not a normalised absolute path")
        clients = rest.split()
        if not clients:
            raise ExportsError(f"line {number}: {path} is exported to no client")
        for client in clients:
            match = re.fullmatch(r"([^()\s]+)\(([^()\s]*)\)", client)
            if match is None:
                raise ExportsError(f"line {number}: client {client!r} is not host(options)")
            options = match[2].split(",")
            _check_options(options, f"line {number} ({match[1]})")
            entries.append(ExportEntry(path, match[1], tuple(options)))
    return entries


def test_the_strict_reader_refuses_what_would_export_more_than_it_says() -> None:
    good = '"/srv/a b" 192.168.1.20(ro,sync,root_squash,sec=sys)\n'
    assert read_exports(good) == [ExportEntry("/srv/a b", "192.168.1.20", ("ro", "sync", "root_squash", "sec=sys"))]
    assert read_exports("/srv/a\\040b 10.0.0.2(rw)\n")[0].path == "/srv/a b"
    for bad in (
        "/srv/a 192.168.1.20 (ro)\n",  # the space gives "(ro)" to everybody
        "/srv/a 192.168.1.20\n",  # nfs-utils' defaults for that host
        "/srv/a (rw)\n",
        "/srv/a 192.168.1.20(ro,rw)\n",
        "/srv/a 192.168.1.20(ro,no_root_squash,root_squash)\n",
        "/srv/a 192.168.1.20(ro,readonly)\n",
        "srv/a 192.168.1.20(ro)\n",
        "/srv/../etc 192.168.1.20(ro)\n",
        '"/srv/a 192.168.1.20(ro)\n',
        "/srv/a\n",
        "/srv/a 192.168.1.20(ro) \\\n",
    ):
        with pytest.raises(ExportsError):
            read_exports(bad)


# --- what the Plex server's app data holds --------------------------------------------------------------------

# Files in Plex's app data that carry a credential: the owner's account token (Preferences.xml's PlexOnlineToken),
# the local admin token, and the library database and plug-in settings, which hold the accounts of the server.
TOKEN_BEARING = (
    "Preferences.xml",
    ".LocalAdminToken",
    "Plug-in Support/Databases/com.plexapp.plugins.library.db",
    "Plug-in Support/Preferences/com.plexapp.system.xml",
    "Logs/Plex Media Server.log",
)
NOT_SECRET = (
    "Codecs/99c90e0-3084-linux-x86_64/libh264_decoder.so",
    "Codecs/99c90e0-3084-linux-x86_64/libhevc_decoder.so",
    "Codecs/.device-id",
    "Cache/fontconfig/cache-7",
    "Metadata/Movies/1/abc.bundle/Contents/_combined/posters/x.jpg",
)


def fake_app_data(root: Path) -> Path:
    """Plex's app data as a running server lays it out, the token where Plex keeps it."""
    app_data = root / APP_DATA.lstrip("/")
    for relative in TOKEN_BEARING:
        path = app_data / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'<Preferences PlexOnlineToken="{TOKEN}" />\n' if relative == "Preferences.xml" else TOKEN)
    for relative in NOT_SECRET:
        path = app_data / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x7fELF codec or cache")
    return app_data


def files_holding_the_token(root: Path, exported: str) -> list[str]:
    """Every file a client of this export can read that holds the token (a directory exports all below it)."""
    top = root / exported.lstrip("/")
    assert top.is_dir(), f"{exported} is not in the fake server's tree"
    return sorted(
        str(path.relative_to(root)) for path in top.rglob("*") if path.is_file() and TOKEN.encode() in path.read_bytes()
    )


@pytest.mark.parametrize("values", [transcode_values, host_only_values], ids=["mixed", "host-only"])
def test_no_exported_path_holds_a_token(values: object, tmp_path: Path) -> None:
    assert callable(values)
    config = config_from(values())
    transcode = config.transcode
    assert transcode is not None
    fake_app_data(tmp_path)
    entries = read_exports(tr.exports_file(config))
    for entry in entries:
        (tmp_path / entry.path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    preferences_dir = posixpath.dirname(posixpath.join(APP_DATA, "Preferences.xml"))
    for entry in entries:
        assert not (entry.path == preferences_dir or preferences_dir.startswith(entry.path.rstrip("/") + "/")), (
            f"{entry.path} exports Preferences.xml's directory"
        )
        for relative in TOKEN_BEARING:
            assert not posixpath.join(APP_DATA, relative).startswith(entry.path.rstrip("/") + "/"), (entry, relative)
        assert files_holding_the_token(tmp_path, entry.path) == [], entry.path


def test_only_the_transcode_directory_is_writable_and_only_slaves_mount_anything() -> None:
    config = config_from(transcode_values())
    transcode = config.transcode
    assert transcode is not None
    entries = read_exports(tr.exports_file(config))
    slaves = {transcode.slave_address(slave.name) for slave in transcode.slaves}
    assert {entry.client for entry in entries} == slaves
    for entry in entries:
        writable = "rw" in entry.options
        assert writable == (entry.path == TRANSCODE_DIR), entry
        assert "ro" in entry.options or writable
        assert "root_squash" in entry.options and "no_root_squash" not in entry.options
        assert not {"crossmnt", "nohide", "insecure"} & set(entry.options), "no submounts, no unprivileged ports"
        assert "sec=sys" in entry.options
    app_data_exports = [entry.path for entry in entries if entry.path.startswith(APP_DATA + "/")]
    assert sorted(set(app_data_exports)) == [f"{APP_DATA}/Codecs"], "of the app data, only what a transcode loads"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck (Debian package shellcheck)")
def test_the_guest_check_loads_exactly_the_rendered_exports(tmp_path: Path) -> None:
    config = config_from(transcode_values())
    script = tr.exports_check_script(config)
    assert tr.exports_file(config) in script and script.rstrip().endswith("exportfs -v")
    path = tmp_path / "check.sh"
    path.write_text(script)
    result = subprocess.run(
        ["shellcheck", "--shell=sh", "--severity=warning", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
