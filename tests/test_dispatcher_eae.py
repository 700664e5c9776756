"""Transcodes that need Plex's EasyAudioEncoder stay on the Plex server: recorded argument lists, and the dispatch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plexcdn.transcode import dispatcher
from plexcdn.transcode.dispatcher import easy_audio_encoder_reason, easy_audio_encoder_use

DISPATCHER = Path(dispatcher.__file__)
FIXTURES = Path(__file__).with_name("fixtures") / "transcoder-args"
TOKEN = "xPlexTok3n-eae-4b1d"


def recorded() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, json.loads(path.read_text(encoding="utf-8"))) for path in sorted(FIXTURES.glob("*.json"))]


def test_the_recordings_cover_both_shapes_and_say_where_they_come_from() -> None:
    cases = recorded()
    assert sum(1 for _, case in cases if case["easy_audio_encoder"]) >= 2
    assert sum(1 for _, case in cases if not case["easy_audio_encoder"]) >= 2
    for name, case in cases:
        assert case["source"].startswith("https://github.com/"), name
        assert case["recorded"], name
        assert all(isinstance(word, str) for word in case["argv"]), name


@pytest.mark.parametrize(("name", "case"), recorded(), ids=[name for name, _ in recorded()])
def test_recorded_arguments_are_read_as_plex_wrote_them(name: str, case: dict[str, Any]) -> None:
    assert easy_audio_encoder_use(case["argv"]) == case["easy_audio_encoder"]
    reason = easy_audio_encoder_reason(case["argv"], case.get("environment", {}))
    assert (reason is not None) == bool(case["easy_audio_encoder"])
    if reason is not None:
        assert "EasyAudioEncoder" in reason
        for use in case["easy_audio_encoder"]:
            assert use in reason
        root = case.get("environment", {}).get("EAE_ROOT")
        assert root is None or root in reason


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # Every EAE codec of Plex's FFmpeg (libavcodec/eae.c), as decoder before -i and as encoder after it.
        (["-codec:1", "truehd_eae", "-i", "a.mkv"], ["-codec:1 truehd_eae"]),
        (["-codec:1", "mlp_eae", "-i", "a.mkv"], ["-codec:1 mlp_eae"]),
        (["-codec:1", "ac3_eae", "-i", "a.mkv"], ["-codec:1 ac3_eae"]),
        (["-i", "a.mkv", "-map", "0:1", "-codec:1", "eac3_eae", "-b:1", "640k"], ["-codec:1 eac3_eae"]),
        (["-i", "a.mkv", "-c:a:0", "ac3_eae"], ["-c:a:0 ac3_eae"]),
        (["-acodec", "eac3_eae", "-i", "a.mkv"], ["-acodec eac3_eae"]),
        (["-eae_root", "/tmp/x", "-i", "a.mkv"], ["-eae_root"]),
        # Plex's own decoders for the same formats, and paths that merely hold the words, need no EAE.
        (["-codec:1", "eac3", "-codec:2", "truehd", "-i", "a.mkv"], []),
        (["-i", "/media/eae_prefix/-eae_prefix:1 film.mkv", "-codec:1", "aac"], []),
        (["-i", "/media/truehd_eae.mkv", "-metadata", "title=ac3_eae"], []),
        (["-codec:1"], []),
    ],
)
def test_only_codec_options_and_eae_options_count(argv: list[str], expected: list[str]) -> None:
    assert easy_audio_encoder_use(argv) == expected


def test_a_transcode_that_needs_eae_runs_locally_without_asking_any_slave(tmp_path: Path) -> None:
    """The slave here would answer nothing (a closed port): the dispatcher must not even try it."""
    record = tmp_path / "record.json"
    transcoder = tmp_path / "Plex Transcoder.real"
    transcoder.write_text(
        f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\nsys.exit(6)\n"
    )
    transcoder.chmod(0o755)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    (tmp_path / "known_hosts").write_text("")
    config = {
        "slaves": [{"name": "den", "host": "127.0.0.1", "port": closed_port}],
        "local_transcoder": str(transcoder),
        "plex_version": "1.41.3.9314-a0bfb8370",
        "known_hosts": str(tmp_path / "known_hosts"),
        "state_dir": str(tmp_path / "state"),
        "log_path": str(tmp_path / "origin.log"),
        "connect_timeout": 1,
    }
    (tmp_path / "origin.json").write_text(json.dumps(config))
    case = json.loads((FIXTURES / "eac3-eae-h264-copy-dash.json").read_text(encoding="utf-8"))
    argv = [*case["argv"], "-progressurl", f"http://127.0.0.1:32400/p?X-Plex-Token={TOKEN}"]
    environ = {
        "PATH": os.environ["PATH"],
        "X_PLEX_TOKEN": TOKEN,
        "EAE_ROOT": case["environment"]["EAE_ROOT"],
        dispatcher.CONFIG_ENV: str(tmp_path / "origin.json"),
    }
    result = subprocess.run(
        [sys.executable, str(DISPATCHER), *argv],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 6, result.stderr
    assert json.loads(record.read_text()) == argv
    log = (tmp_path / "origin.log").read_text()
    assert (
        "transcoding locally (it needs Plex's EasyAudioEncoder (-codec:2 eac3_eae, -eae_prefix:2), which runs only "
        f"beside Plex Media Server on this machine and answers through its watch folder in {environ['EAE_ROOT']}, "
        f"not on a slave) with {transcoder}"
    ) in log
    assert "den" not in log, "no slave is probed or marked for a transcode that cannot leave"
    assert TOKEN not in log
    snapshot = dispatcher.HostState(tmp_path / "state").snapshot()
    assert snapshot["counts"] == {"local": 1}
    assert "EasyAudioEncoder" in snapshot["last_local"]["reason"]
    assert snapshot["hosts"] == {}
