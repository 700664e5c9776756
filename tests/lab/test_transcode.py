"""The transcode-offload lab: the dispatcher on an origin namespace, sshd and the guard on slave namespaces.

Real ssh (ControlMaster, host-key checking, a forced command), real ffmpeg writing HLS segments into
the shared transcode directory. The shared storage is one filesystem seen by every namespace at the
same paths: this kernel has no NFS (see labs.transcode_lab.nfs_unavailable_reason).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from labs.netns import lab_unavailable_reason
from labs.transcode_lab import (
    CLIP_NAME,
    CLIP_SECONDS,
    PLEX_PORT,
    PLEX_VERSION,
    TranscodeLab,
    first_segment_listed,
    lab_environment,
    lab_tools_missing,
    wait_until,
)
from plexcdn.transcode.dispatcher import HostState, redact

TOKEN = "lab-plex-token-5f2b9c41"
PLAYLIST = "stream index.m3u8"

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(lab_unavailable_reason() is not None, reason=f"transcode lab: {lab_unavailable_reason()}"),
    pytest.mark.skipif(lab_tools_missing() is not None, reason=f"transcode lab: {lab_tools_missing()}"),
]


@pytest.fixture(scope="module")
def built() -> Iterator[TranscodeLab]:
    with TranscodeLab(slave_count=2, bad_host_seconds=3) as lab:
        yield lab


@pytest.fixture
def lab(built: TranscodeLab) -> TranscodeLab:
    built.reset()
    return built


def runs_on(lab: TranscodeLab, slave: str) -> int:
    """How many transcodes the slave's guard started."""
    log = lab.slave(slave).guard_log
    return log.read_text(encoding="utf-8").count(" INFO running pid ") if log.exists() else 0


def command_lines_holding(lab: TranscodeLab, secret: str) -> list[str]:
    found = []
    for role in ("origin", *(slave.role for slave in lab.slaves)):
        for pid in lab.namespace_pids(role):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if secret.encode() in cmdline:
                found.append(f"{role} pid {pid}: {cmdline[:120]!r}")
    return found


def ssh_clients_on_origin(lab: TranscodeLab) -> list[str]:
    """ssh processes on the origin other than the persistent ControlMasters."""
    clients = []
    for pid in lab.namespace_pids("origin"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[0].endswith(b"ssh") and b"ControlMaster=yes" not in cmdline:
            clients.append(b" ".join(cmdline).decode("utf-8", "replace"))
    return clients


def hosts_marked_bad(lab: TranscodeLab) -> list[str]:
    return list(HostState(lab.state_dir).bad_hosts())


def ffprobe(path: Path) -> dict[str, Any]:
    result = subprocess.run(
        [
            *("ffprobe", "-v", "error", "-of", "json", str(path)),
            *("-show_entries", "format=duration:stream=codec_name,codec_type,width,height"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


# --------------------------------------------------------------------------------------------------


def test_remote_transcode_writes_segments_that_play(lab: TranscodeLab) -> None:
    out = lab.output_dir("plays")
    run = lab.dispatch(lab.hls_args(out), cwd=out, env=lab_environment(TOKEN))
    assert run.exit_code == 0, run.stderr
    assert runs_on(lab, "slave1") + runs_on(lab, "slave2") == 1
    log = lab.origin_log_text()
    assert "chose slave" in log and "transcoding locally" not in log

    segments = sorted(out.glob("media-*.ts"))
    assert len(segments) >= CLIP_SECONDS - 1
    probe = ffprobe(out / PLAYLIST)
    assert abs(float(probe["format"]["duration"]) - CLIP_SECONDS) < 0.5
    streams = {(s["codec_type"], s["codec_name"]) for s in probe["streams"]}
    assert streams == {("video", "h264"), ("audio", "aac")}
    decoded = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(out / PLAYLIST), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert decoded.returncode == 0 and decoded.stderr == ""

    for path in (lab.origin_log, *(s.guard_log for s in lab.slaves), *(s.sshd_log for s in lab.slaves)):
        if path.exists():
            assert TOKEN not in path.read_text(encoding="utf-8", errors="replace"), path


def test_exit_status_and_output_come_back_from_the_slave(lab: TranscodeLab) -> None:
    lab.write_origin_config(["slave1"])
    out = lab.output_dir("exit")
    failing = ["-nostdin", "-hide_banner", "-i", str(lab.media / "no such clip.mkv"), "-f", "null", "-"]
    direct = lab.dispatch(failing, cwd=out, program=lab.real_transcoder)
    remote = lab.dispatch(failing, cwd=out)
    assert direct.exit_code != 0
    assert remote.exit_code == direct.exit_code
    assert "no such clip.mkv" in remote.stderr
    assert f"exited {direct.exit_code}" in lab.slave("slave1").guard_log.read_text(encoding="utf-8")

    version_here = lab.dispatch(["-version"], cwd=out, program=lab.real_transcoder)
    version_there = lab.dispatch(["-version"], cwd=out)
    assert version_there.exit_code == 0
    assert version_there.stdout == version_here.stdout != ""
    assert runs_on(lab, "slave1") == 2

    # A transcoder that dies on the slave: the dispatcher reports the signal the shell way.
    process = lab.spawn(lab.hls_args(out, realtime_seconds=30), cwd=out)
    assert wait_until(lambda: bool(lab.transcoder_pids("slave1")), 15)
    for pid in lab.transcoder_pids("slave1"):
        os.kill(pid, signal.SIGKILL)
    assert process.wait(timeout=15) == 128 + signal.SIGKILL


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL", "SIGKILL to its process group"])
def test_killing_the_dispatcher_ends_the_transcoder_on_the_slave(lab: TranscodeLab, how: str) -> None:
    lab.write_origin_config(["slave1"])
    out = lab.output_dir("killed")
    process = lab.spawn(lab.hls_args(out, realtime_seconds=30), cwd=out, env=lab_environment(TOKEN))
    try:
        assert wait_until(lambda: first_segment_listed(out / PLAYLIST), 15), "no segment within 15s"
        remote = lab.transcoder_pids("slave1")
        assert len(remote) == 1, "the transcode runs on the slave"
        assert lab.transcoder_pids("origin") == []
        environ = Path(f"/proc/{remote[0]}/environ").read_bytes().split(b"\0")
        assert f"X_PLEX_TOKEN={TOKEN}".encode() in environ, "the token reaches the transcoder"
        assert os.readlink(f"/proc/{remote[0]}/cwd") == str(out)
        assert command_lines_holding(lab, TOKEN) == []

        if how == "SIGTERM":
            process.send_signal(signal.SIGTERM)
        elif how == "SIGKILL":
            process.kill()
        else:
            os.killpg(process.pid, signal.SIGKILL)
        assert wait_until(lambda: lab.transcoder_pids("slave1") == [], 5), "ffmpeg outlived the dispatcher"
        assert process.wait(timeout=10) != 0
        assert wait_until(lambda: ssh_clients_on_origin(lab) == [], 5), ssh_clients_on_origin(lab)
        assert "the origin's session ended" in lab.slave("slave1").guard_log.read_text(encoding="utf-8")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_slave_down_means_a_local_transcode_said_in_the_log(lab: TranscodeLab) -> None:
    lab.write_origin_config(["slave1"])
    out = lab.output_dir("down")
    assert lab.dispatch(lab.hls_args(out), cwd=out).exit_code == 0
    assert runs_on(lab, "slave1") == 1

    lab.stop_sshd("slave1")
    out = lab.output_dir("down")
    run = lab.dispatch(lab.hls_args(out), cwd=out, env=lab_environment(TOKEN))
    assert run.exit_code == 0, run.stderr
    assert first_segment_listed(out / PLAYLIST)
    assert runs_on(lab, "slave1") == 1
    log = lab.origin_log_text()
    assert "slave slave1 unreachable" in log
    assert f"transcoding locally (no good slave) with {lab.real_transcoder}" in log
    assert TOKEN not in log

    lab.dispatch(lab.hls_args(lab.output_dir("down")), cwd=out)
    assert "skipping slave slave1: marked bad" in lab.origin_log_text()

    lab.start_sshd("slave1")
    # The mark lasts bad_host_seconds (3s in the lab); then the slave is tried, and used, again.
    assert wait_until(lambda: "slave1" not in hosts_marked_bad(lab), 10, step=0.2)
    out = lab.output_dir("down")
    assert lab.dispatch(lab.hls_args(out), cwd=out).exit_code == 0
    assert runs_on(lab, "slave1") == 2


def test_the_slave_with_less_load_per_core_is_chosen(lab: TranscodeLab) -> None:
    out = lab.output_dir("choice")
    short = [*lab.hls_args(out)[:-1], "-t", "1", PLAYLIST]
    # slave1 carries more load, but over more cores.
    lab.set_load("slave1", 4.0, 8)
    lab.set_load("slave2", 1.0, 1)
    assert lab.dispatch(short, cwd=out).exit_code == 0
    assert (runs_on(lab, "slave1"), runs_on(lab, "slave2")) == (1, 0)
    assert "chose slave slave1: load per core 0.50 (4.00 on 8 cores); others: slave2 1.00" in lab.origin_log_text()

    lab.set_load("slave1", 3.0, 2)
    lab.set_load("slave2", 0.2, 1)
    assert lab.dispatch(short, cwd=out).exit_code == 0
    assert (runs_on(lab, "slave1"), runs_on(lab, "slave2")) == (1, 1)
    assert "chose slave slave2: load per core 0.20" in lab.origin_log_text()


def test_a_slave_on_another_plex_version_is_refused(lab: TranscodeLab) -> None:
    lab.set_load("slave1", 1.5, 1)
    lab.set_load("slave2", 0.0, 8)
    lab.set_version("slave2", "1.40.0.7998-c29d4c0c8")
    out = lab.output_dir("version")
    assert lab.dispatch([*lab.hls_args(out)[:-1], "-t", "1", PLAYLIST], cwd=out).exit_code == 0
    assert (runs_on(lab, "slave1"), runs_on(lab, "slave2")) == (1, 0)
    assert (
        f"refusing slave slave2: Plex version 1.40.0.7998-c29d4c0c8 differs from the origin's {PLEX_VERSION}"
        in lab.origin_log_text()
    )
    assert "slave2" in hosts_marked_bad(lab)


def test_a_working_directory_the_slave_cannot_see_means_local(lab: TranscodeLab) -> None:
    """Shared storage missing on the slave: the guard refuses, and the origin transcodes itself."""
    lab.write_origin_config(["slave1"])
    # Inside the shared transcode directory, where Plex's session directories are, but not shared with the slave.
    private = lab.transcode_dir / "unshared"
    private.mkdir(exist_ok=True)
    out = lab.output_dir("private")
    # A tmpfs only this dispatcher's mount namespace sees, like a transcode directory the slave lacks.
    script = 'mount -t tmpfs pct-private "$1" && mkdir "$1/only-here" && cd "$1/only-here" && shift && exec "$@"'
    argv = lab.lab.command(
        "origin", ["/bin/sh", "-c", script, "sh", str(private), str(lab.transcoder), *lab.hls_args(out)]
    )
    run = subprocess.run(argv, env=lab_environment(), capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert sorted(out.glob("media-*.ts")), "the local transcode wrote its segments"
    log = lab.origin_log_text()
    assert f"refused: working directory {private}/only-here does not exist here" in log
    assert "transcoding locally (slave slave1 refused" in log
    assert runs_on(lab, "slave1") == 0
    assert "slave1" in hosts_marked_bad(lab)


def test_the_transcoder_on_a_slave_reaches_plex_at_its_own_loopback(lab: TranscodeLab) -> None:
    """Plex's transcoder talks to http://127.0.0.1:32400; on a slave that must still be the origin's Plex."""
    lab.write_origin_config(["slave1"])
    out = lab.output_dir("callback")
    url = f"http://127.0.0.1:{PLEX_PORT}/{quote(CLIP_NAME)}?X-Plex-Token={TOKEN}"
    run = lab.dispatch(lab.hls_args(out, source_url=url), cwd=out, env=lab_environment(TOKEN))
    assert run.exit_code == 0, redact(run.stderr)
    assert runs_on(lab, "slave1") == 1
    assert f"GET /{quote(CLIP_NAME)}" in lab.plex_log.read_text(encoding="utf-8")
    assert len(sorted(out.glob("media-*.ts"))) >= CLIP_SECONDS - 1
    assert TOKEN not in lab.origin_log_text()
    assert TOKEN not in lab.slave("slave1").guard_log.read_text(encoding="utf-8")
    assert "X-Plex-Token=<redacted>" in lab.origin_log_text()


RECORDED_ARGS = Path(__file__).parent.parent / "fixtures" / "transcoder-args"


def _moved(argument: str, prefixes: dict[str, str]) -> str:
    for old, new in prefixes.items():
        if argument.startswith(old):
            return new + argument[len(old) :]
    return argument


@pytest.mark.parametrize("fixture", sorted(path.name for path in RECORDED_ARGS.glob("*.json")))
def test_recorded_plex_arguments_go_where_they_can_run(lab: TranscodeLab, fixture: str) -> None:
    """Plex's own argument lists, as recorded: those that need EasyAudioEncoder stay on the origin, the rest go out.

    ffmpeg stands in for Plex's transcoder and refuses Plex's own options, so each run fails the same way
    wherever it runs: the exit status and message must match a direct run, and the logs must say where it ran.
    """
    case = json.loads((RECORDED_ARGS / fixture).read_text(encoding="utf-8"))
    # The recorded server's shared directories, here the lab's, as a stack's transcode settings name them.
    shared = {"/media/": f"{lab.media}/", "/transcode/": f"{lab.transcode_dir}/"}
    argv = [_moved(argument, shared) for argument in case["argv"]]
    out = lab.output_dir("recorded")
    env = lab_environment(TOKEN)
    env["EAE_ROOT"] = "/tmp/pms-0c5e-lab/EasyAudioEncoder"
    direct = lab.dispatch(argv, cwd=out, env=env, program=lab.real_transcoder)
    dispatched = lab.dispatch(argv, cwd=out, env=env)
    assert dispatched.exit_code == direct.exit_code != 0
    assert dispatched.stderr == direct.stderr
    log = lab.origin_log_text()
    remote_runs = runs_on(lab, "slave1") + runs_on(lab, "slave2")
    if case["easy_audio_encoder"]:
        assert remote_runs == 0
        assert f"transcoding locally (it needs Plex's EasyAudioEncoder ({', '.join(case['easy_audio_encoder'])})" in log
        assert "chose slave" not in log
    elif "stays_local" in case:
        assert remote_runs == 0
        assert "a slave would refuse this transcode: option -hwaccel" in log, log
    else:
        assert remote_runs == 1
        assert "chose slave" in log and "transcoding locally" not in log
    assert TOKEN not in log
