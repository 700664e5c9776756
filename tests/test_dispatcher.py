"""The transcode dispatcher without root: choosing slaves, bad hosts, version refusal, redaction, quoting, the guard."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import stat
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexcdn.transcode import dispatcher
from plexcdn.transcode.dispatcher import (
    Config,
    DecisionLog,
    HostState,
    Probe,
    ProbeError,
    Slave,
    authorized_keys_line,
    parse_config,
    parse_guard_invocation,
    redact,
    remote_command,
    secrets_in,
    select_slave,
)

DISPATCHER = Path(dispatcher.__file__)
ORIGIN_VERSION = "1.41.3.9314-a0bfb8370"
TOKEN = "xPlexTok3n-9f8e7d6c"
TRICKY_ARGS = [
    "plain",
    "with space",
    "it's",
    'double "quoted"',
    "back\\slash",
    "$HOME and $(id) and `id`",
    "semi;colon|pipe&amp>redirect<",
    "glob*?[x]",
    "ünïcödé ✓ 字幕",
    "new\nline",
    "tab\there",
    "",
    "-starts-with-dash",
    "--",
    "%s %n %%",
    os.fsdecode(b"raw-\xff-bytes"),
]


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def probe_of(load1: float, cpus: int, version: str = ORIGIN_VERSION, uid: int = 998, gid: int = 998) -> Probe:
    return Probe(load1, cpus, version, uid, gid, "/usr/lib/plexmediaserver/Plex Transcoder", True)


def slaves(*names: str) -> tuple[Slave, ...]:
    return tuple(Slave(name=name, host=f"{name}.lan") for name in names)


class Prober:
    """Answers probes from a table; a missing entry is an unreachable slave. Counts who was asked."""

    def __init__(self, answers: dict[str, Probe]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, slave: Slave) -> Probe:
        self.asked.append(slave.name)
        if slave.name not in self.answers:
            raise ProbeError(f"ssh: connect to host {slave.host} port 22: Connection refused")
        return self.answers[slave.name]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(tmp_path: Path, clock: FakeClock) -> HostState:
    return HostState(tmp_path / "state", clock=clock)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "decisions.log"


def choose(
    config: Config,
    state: HostState,
    log_path: Path,
    prober: Callable[[Slave], Probe],
    *,
    origin_version: str = ORIGIN_VERSION,
    origin_ids: tuple[int, int] | None = (998, 998),
) -> Slave | None:
    return select_slave(
        config,
        state=state,
        log=DecisionLog(str(log_path)),
        probe=prober,
        origin_version=origin_version,
        origin_ids=origin_ids,
    )


# --------------------------------------------------------------------------------------------------
# Configuration


def test_config_round_trips_and_rejects_typos() -> None:
    config = Config(slaves=slaves("a", "b"), plex_version="1.2", bad_host_seconds=5)
    assert parse_config(dispatcher.config_as_json(config)) == config
    with pytest.raises(dispatcher.ConfigError, match="unknown key"):
        parse_config({"slave": []})
    with pytest.raises(dispatcher.ConfigError, match="port must be int, not a boolean"):
        parse_config({"slaves": [{"name": "a", "host": "h", "port": True}]})
    with pytest.raises(dispatcher.ConfigError, match="repeated: a"):
        parse_config({"slaves": [{"name": "a", "host": "h"}, {"name": "a", "host": "i"}]})
    with pytest.raises(dispatcher.ConfigError, match="may not start with '-'"):
        parse_config({"slaves": [{"name": "a", "host": "-oProxyCommand=sh"}]})
    with pytest.raises(dispatcher.ConfigError, match="host is required"):
        parse_config({"slaves": [{"name": "a"}]})


# --------------------------------------------------------------------------------------------------
# Choosing a slave


def test_lowest_load_per_core_wins_not_lowest_load(state: HostState, log_path: Path) -> None:
    config = Config(slaves=slaves("small", "big", "medium"))
    prober = Prober(
        {
            "small": probe_of(1.0, 1),  # 1.00 per core
            "big": probe_of(4.0, 8),  # 0.50 per core, the highest raw load
            "medium": probe_of(1.8, 2),  # 0.90 per core
        }
    )
    chosen = choose(config, state, log_path, prober)
    assert chosen is not None and chosen.name == "big"
    assert sorted(prober.asked) == ["big", "medium", "small"]
    assert "chose slave big: load per core 0.50 (4.00 on 8 cores); others: medium 0.90, small 1.00" in (
        log_path.read_text()
    )


def test_equal_load_is_broken_by_name_and_zero_cores_counts_as_one(state: HostState, log_path: Path) -> None:
    config = Config(slaves=slaves("b", "a", "c"), probe_cache_seconds=0)
    prober = Prober({"b": probe_of(0.5, 1), "a": probe_of(0.5, 1), "c": probe_of(0.4, 0)})
    chosen = choose(config, state, log_path, prober)
    assert chosen is not None and chosen.name == "c"
    prober.answers["c"] = probe_of(0.6, 0)
    chosen = choose(config, state, log_path, prober)
    assert chosen is not None and chosen.name == "a"


def test_unreachable_slave_is_marked_bad_skipped_then_retried_after_expiry(
    state: HostState, clock: FakeClock, log_path: Path
) -> None:
    config = Config(slaves=slaves("down", "up"), bad_host_seconds=30, probe_cache_seconds=0)
    prober = Prober({"up": probe_of(3.0, 1)})
    chosen = choose(config, state, log_path, prober)
    assert chosen is not None and chosen.name == "up"
    bad = state.bad_hosts()
    assert list(bad) == ["down"]
    assert bad["down"].until == clock.now + 30
    assert "Connection refused" in bad["down"].reason
    assert "slave down unreachable" in log_path.read_text()

    prober.asked.clear()
    clock.now += 29
    choose(config, state, log_path, prober)
    assert prober.asked == ["up"], "a host marked bad must not be probed again before its time is up"
    assert "skipping slave down: marked bad for 1s more" in log_path.read_text()

    prober.asked.clear()
    clock.now += 2
    prober.answers["down"] = probe_of(0.1, 1)
    chosen = choose(config, state, log_path, prober)
    assert sorted(prober.asked) == ["down", "up"]
    assert chosen is not None and chosen.name == "down"


def test_a_recent_probe_is_reused_until_it_is_too_old_or_the_slave_fails(
    state: HostState, clock: FakeClock, log_path: Path
) -> None:
    config = Config(slaves=slaves("a", "b"), probe_cache_seconds=10)
    prober = Prober({"a": probe_of(1.0, 1), "b": probe_of(0.5, 1)})
    chosen = choose(config, state, log_path, prober)
    assert chosen is not None and chosen.name == "b"
    assert sorted(prober.asked) == ["a", "b"]

    prober.asked.clear()
    prober.answers["b"] = probe_of(3.0, 1)
    clock.now += 9
    chosen = choose(config, state, log_path, prober)
    assert prober.asked == [], "both answers are 9s old, within the 10s cache"
    assert chosen is not None and chosen.name == "b"
    assert "slave b: using its probe from 9.0s ago" in log_path.read_text()

    clock.now += 2
    chosen = choose(config, state, log_path, prober)
    assert sorted(prober.asked) == ["a", "b"]
    assert chosen is not None and chosen.name == "a"

    prober.asked.clear()
    state.mark_bad("a", "did not start", 1)
    clock.now += 1.5
    choose(config, state, log_path, prober)
    assert prober.asked == ["a"], "a slave marked bad loses its cached probe"
    assert choose(replace(config, probe_cache_seconds=0), state, log_path, prober) is not None
    assert sorted(prober.asked) == ["a", "a", "b"]


def test_no_good_slave_gives_none(state: HostState, log_path: Path) -> None:
    assert choose(Config(), state, log_path, Prober({})) is None
    config = Config(slaves=slaves("a", "b"))
    assert choose(config, state, log_path, Prober({})) is None
    assert set(state.bad_hosts()) == {"a", "b"}
    prober = Prober({"a": probe_of(0, 1)})
    assert choose(config, state, log_path, prober) is None
    assert prober.asked == [], "every slave is marked bad, so none is probed"


def test_state_survives_many_dispatchers_marking_at_once(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    script = (
        "import sys; from plexcdn.transcode.dispatcher import HostState\n"
        "state = HostState(sys.argv[1])\n"
        "for n in range(20):\n"
        "    state.mark_bad(f'{sys.argv[2]}-{n}', 'test', 3600)\n"
        "    state.count('remote')\n"
    )
    root = Path(__file__).resolve().parent.parent
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(directory), f"w{index}"], cwd=root) for index in range(6)
    ]
    assert [worker.wait(timeout=60) for worker in workers] == [0] * 6
    state = HostState(directory)
    assert len(state.bad_hosts()) == 120
    assert state.snapshot()["counts"]["remote"] == 120
    state.clear("w0-0")
    assert len(state.bad_hosts()) == 119


# --------------------------------------------------------------------------------------------------
# Refusals


def test_slave_with_another_plex_version_is_refused_even_when_idle(
    state: HostState, log_path: Path, clock: FakeClock
) -> None:
    config = Config(slaves=slaves("old", "current"), bad_host_seconds=60)
    prober = Prober({"old": probe_of(0.0, 16, version="1.40.0.7998-c29d4c0c8"), "current": probe_of(2.0, 2)})
    chosen = choose(config, state, log_path, prober)
    assert chosen is not None and chosen.name == "current"
    assert (
        f"refusing slave old: Plex version 1.40.0.7998-c29d4c0c8 differs from the origin's {ORIGIN_VERSION}"
        in log_path.read_text()
    )
    assert state.bad_hosts()["old"].reason.startswith("refused: Plex version")
    assert state.bad_hosts()["old"].until == clock.now + 60


def test_unknown_origin_version_uses_no_slave(state: HostState, log_path: Path) -> None:
    prober = Prober({"a": probe_of(0.0, 1)})
    assert choose(Config(slaves=slaves("a")), state, log_path, prober, origin_version="") is None
    assert prober.asked == []
    assert "the origin's Plex version is unknown" in log_path.read_text()


def test_other_uid_or_missing_transcoder_is_refused(state: HostState, log_path: Path) -> None:
    config = Config(slaves=slaves("wrong-uid", "no-binary"))
    missing = Probe(0.0, 1, ORIGIN_VERSION, 998, 998, "/usr/lib/plexmediaserver/Plex Transcoder", False)
    prober = Prober({"wrong-uid": probe_of(0.0, 1, uid=1000), "no-binary": missing})
    assert choose(config, state, log_path, prober) is None
    text = log_path.read_text()
    assert "refusing slave wrong-uid: it runs the transcoder as uid/gid 1000/998, the origin as 998/998" in text
    assert "refusing slave no-binary: its transcoder /usr/lib/plexmediaserver/Plex Transcoder is missing" in text

    state.clear("wrong-uid")
    relaxed = Config(slaves=slaves("wrong-uid"), require_same_ids=False)
    chosen = choose(relaxed, state, log_path, prober)
    assert chosen is not None and chosen.name == "wrong-uid"


def test_version_is_configured_or_detected(tmp_path: Path) -> None:
    version_file = tmp_path / "version"
    version_file.write_text("1.41.0.1-abc\n")
    assert dispatcher.detect_plex_version(Config(plex_version="9.9")) == "9.9"
    assert dispatcher.detect_plex_version(Config(version_command=("cat", str(version_file)))) == "1.41.0.1-abc"
    assert dispatcher.detect_plex_version(Config(version_command=("cat", str(tmp_path / "none")))) == ""
    assert dispatcher.detect_plex_version(Config(version_command=(str(tmp_path / "no-such-program"),))) == ""


def test_probe_answer_reads_the_configured_load(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("3.25 2.00 1.00 2/345 6789\n")
    transcoder = tmp_path / "transcoder"
    transcoder.write_text("#!/bin/sh\n")
    transcoder.chmod(0o755)
    config = Config(loadavg_path=str(loadavg), cpu_count=4, plex_version="1.2.3", transcoder=str(transcoder))
    probe = Probe.from_json("banner\n" + json.dumps(dispatcher.probe_answer(config)))
    assert probe == Probe(3.25, 4, "1.2.3", os.getuid(), os.getgid(), str(transcoder), True)
    assert probe.load_per_core == pytest.approx(0.8125)
    real = Probe.from_json(json.dumps(dispatcher.probe_answer(Config(plex_version="1"))))
    assert real.cpus == len(os.sched_getaffinity(0))
    with pytest.raises(ProbeError, match="not a probe"):
        Probe.from_json("Welcome to the slave\n")


# --------------------------------------------------------------------------------------------------
# Secrets


@pytest.mark.parametrize(
    "text",
    [
        f"http://127.0.0.1:32400/video/:/transcode/session/x/progress?X-Plex-Token={TOKEN}&a=b",
        f"-headers 'X-Plex-Token: {TOKEN}'",
        f"X_PLEX_TOKEN={TOKEN}",
        f'{{"X_PLEX_TOKEN": "{TOKEN}", "PATH": "/usr/bin"}}',
        f"x-plex-token%3D{TOKEN}",
        f"X-Plex-Token {TOKEN}",
    ],
)
def test_token_forms_are_redacted(text: str) -> None:
    redacted = redact(text)
    assert TOKEN not in redacted
    assert dispatcher.REDACTED in redacted


def test_known_secret_values_are_redacted_anywhere() -> None:
    environ = {"X_PLEX_TOKEN": TOKEN, "PLEX_ONLINE_TOKEN": "other-secret-value", "PATH": "/usr/bin"}
    secrets = secrets_in(environ, ["-url", "https://h/?X-Plex-Token=arg-token-42"])
    assert set(secrets) == {TOKEN, "other-secret-value", "arg-token-42"}
    assert redact(f"--weird={TOKEN}/other-secret-value", secrets) == "--weird=<redacted>/<redacted>"
    assert redact("/usr/bin stays", secrets) == "/usr/bin stays"


@settings(max_examples=60, deadline=None)
@given(token=st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=4, max_size=40))
def test_log_never_holds_the_token(tmp_path_factory: pytest.TempPathFactory, token: str) -> None:
    path = tmp_path_factory.mktemp("log") / "decisions.log"
    args = ["-progressurl", f"http://127.0.0.1:32400/progress?X-Plex-Token={token}", "-i", "/media/film.mkv"]
    log = DecisionLog(str(path), secrets_in({"X_PLEX_TOKEN": token}, args))
    log.info(f"transcode requested: {dispatcher.describe_command('Plex Transcoder', args)}")
    log.warning(f"environment was {json.dumps({'X_PLEX_TOKEN': token})}")
    log.error(f"multi\nline {token}")
    text = path.read_text()
    assert token not in text
    assert len(text.splitlines()) == 3


# --------------------------------------------------------------------------------------------------
# Quoting, and the guard run for real (without ssh: sshd hands the command line to the user's shell)


@pytest.fixture
def recording_transcoder(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A transcoder that writes down its argv, working directory and environment, then exits."""
    record = tmp_path / "record.json"
    transcoder = tmp_path / "bin" / "Plex Transcoder.real"
    transcoder.parent.mkdir()
    transcoder.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(record)!r}, 'w') as out:\n"
        "    json.dump({'argv': [os.fsencode(a).hex() for a in sys.argv[1:]], 'cwd': os.getcwd(),\n"
        "               'env': dict(os.environ)}, out)\n"
        "codes = [a.split('=', 1)[1] for a in sys.argv if a.startswith('plexcdn_exit=')]\n"
        "sys.exit(int(codes[-1] if codes else os.environ.get('EXIT_WITH', '0')))\n"
    )
    transcoder.chmod(0o755)
    yield transcoder, record


APP_DATA = "/srv/plex app data/Plex Media Server"
MEDIA_DIR = "/media"


def guard_config(tmp_path: Path, transcoder: Path) -> Path:
    """A guard that takes transcodes working in TMP_PATH (the shared transcode directory) on media in /media."""
    path = tmp_path / "guard config.json"
    values = {
        "transcoder": str(transcoder),
        "log_path": str(tmp_path / "guard.log"),
        "kill_grace_seconds": 1,
        "app_data_dir": APP_DATA,
        "read_dirs": [MEDIA_DIR],
        "write_dirs": [str(tmp_path)],
    }
    path.write_text(json.dumps(values))
    return path


def guard_argv(config: Path) -> list[str]:
    return [sys.executable, str(DISPATCHER), "--remote-guard", "--config", str(config), "run", "--"]


def run_guard(argv: list[str], header: bytes, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the guard as the dispatcher does: the header on stdin, and stdin kept open until the guard is done."""
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdin is not None
    process.stdin.write(header)
    process.stdin.flush()
    try:
        process.wait(timeout=30)
    finally:
        process.kill()
    stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def test_remote_command_quotes_every_argument() -> None:
    slave = Slave(name="s", host="h", python="/usr/bin/python3", guard_path="/opt/plex cdn/dispatcher's.py")
    words = shlex.split(remote_command(slave, "run", TRICKY_ARGS))
    prefix = ["/usr/bin/python3", "-I", "/opt/plex cdn/dispatcher's.py", "--remote-guard", "run", "--"]
    assert words == [*prefix, *TRICKY_ARGS]
    assert shlex.split(remote_command(slave, "probe"))[-2:] == ["--remote-guard", "probe"]


@pytest.mark.parametrize("forced", [False, True], ids=["plain-command", "forced-command"])
def test_arguments_environment_and_cwd_survive_the_guard(
    tmp_path: Path, recording_transcoder: tuple[Path, Path], forced: bool
) -> None:
    transcoder, record = recording_transcoder
    config = guard_config(tmp_path, transcoder)
    workdir = tmp_path / "transcode dir ✓"
    workdir.mkdir()
    slave = Slave(name="s", host="h", python=sys.executable, guard_path=str(DISPATCHER))
    # Every tricky word as the value of an option the guard takes as it is.
    args = [word for tricky in TRICKY_ARGS for word in ("-metadata", f"comment={tricky}")]
    args += ["-i", f"{MEDIA_DIR}/it's a $film.mkv", "-metadata", "plexcdn_exit=7", "out put.m3u8"]
    command = remote_command(slave, "run", args)
    environ = {
        "X_PLEX_TOKEN": TOKEN,
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "FFMPEG_EXTERNAL_LIBS": f"{APP_DATA}/Codecs/99c90e0-3084-linux-x86_64/",
    }
    shell_env = {"PATH": "/usr/bin:/bin"}
    if forced:
        # What sshd does with `command=`: run the forced command, and show the client's in SSH_ORIGINAL_COMMAND.
        line = authorized_keys_line(
            "ssh-ed25519 AAAAC3Nza test", guard_path=str(DISPATCHER), python=sys.executable, guard_config=str(config)
        )
        command = sshd_forced_command(line)
        shell_env["SSH_ORIGINAL_COMMAND"] = remote_command(slave, "run", args)
    else:
        shell_env[dispatcher.CONFIG_ENV] = str(config)
    policy = dispatcher.RequestPolicy.of(dispatcher.load_config(config))
    header = dispatcher.run_header(dispatcher.forwarded_environment(environ, policy), str(workdir))
    result = run_guard(["/bin/sh", "-c", command], header, shell_env)
    assert result.stderr.startswith(dispatcher.STARTED_MARKER), result.stderr
    assert result.returncode == 7
    recorded = json.loads(record.read_text())
    assert [os.fsdecode(bytes.fromhex(word)) for word in recorded["argv"]] == args
    assert recorded["cwd"] == str(workdir)
    assert recorded["env"] == environ
    guard_log = (tmp_path / "guard.log").read_text()
    assert "exited 7" in guard_log
    assert TOKEN not in guard_log


def test_forwarded_environment_leaves_out_what_a_slave_would_not_take(tmp_path: Path) -> None:
    environ = {
        "X_PLEX_TOKEN": TOKEN,
        "SSH_AUTH_SOCK": "/tmp/agent",
        dispatcher.CONFIG_ENV: "/etc/x.json",
        "A": "b",
        "LD_PRELOAD": "/tmp/x.so",
        "PATH": "/home/plex/bin:/usr/bin",
        "LC_ALL": "C.UTF-8",
        "XDG_CACHE_HOME": "/somewhere/else",
    }
    policy = dispatcher.RequestPolicy(APP_DATA, "/usr/lib/plexmediaserver", (MEDIA_DIR,), (str(tmp_path),), 32400)
    # What Plex set for the transcoder goes as it is, so that a wrong value is refused rather than quietly dropped.
    assert dispatcher.forwarded_environment(environ, policy) == {
        "X_PLEX_TOKEN": TOKEN,
        "LC_ALL": "C.UTF-8",
        "XDG_CACHE_HOME": "/somewhere/else",
    }
    header = dispatcher.run_header({"K": os.fsdecode(b"\xfe\xff")}, "/t")
    cwd, env = dispatcher.read_header(open_bytes(tmp_path, header))
    assert (cwd, os.fsencode(env["K"])) == ("/t", b"\xfe\xff")


def open_bytes(tmp_path: Path, data: bytes) -> IO[bytes]:
    path = tmp_path / "stream"
    path.write_bytes(data)
    return path.open("rb")


def test_guard_refuses_a_missing_working_directory(tmp_path: Path, recording_transcoder: tuple[Path, Path]) -> None:
    transcoder, record = recording_transcoder
    slave = Slave(name="s", host="h", python=sys.executable, guard_path=str(DISPATCHER))
    result = run_guard(
        ["/bin/sh", "-c", remote_command(slave, "run", ["-i", "x"])],
        dispatcher.run_header({}, str(tmp_path / "not mounted here")),
        {dispatcher.CONFIG_ENV: str(guard_config(tmp_path, transcoder))},
    )
    assert result.returncode == dispatcher.GUARD_REFUSED_EXIT
    assert result.stderr.startswith(dispatcher.REFUSED_PREFIX + b"working directory")
    assert not record.exists()


def test_guard_only_accepts_its_own_requests() -> None:
    forced = ["--config", "/etc/plexcdn/guard.json"]
    request = parse_guard_invocation(forced, "python3 -I x.py --remote-guard run -- -i 'a b'")
    assert request == dispatcher.GuardRequest(Path("/etc/plexcdn/guard.json"), "run", ("-i", "a b"))
    # The client cannot choose the configuration, nor run anything but the guard.
    with pytest.raises(dispatcher.UsageError):
        parse_guard_invocation(forced, "python3 x.py --remote-guard --config /tmp/evil.json run -- -i a")
    with pytest.raises(dispatcher.UsageError, match="only run the transcode guard"):
        parse_guard_invocation(forced, "cat /etc/shadow")
    with pytest.raises(dispatcher.UsageError):
        parse_guard_invocation(forced, "x --remote-guard run -i a")
    with pytest.raises(dispatcher.UsageError):
        parse_guard_invocation(forced, "x --remote-guard 'unterminated")
    assert parse_guard_invocation(["probe"], None).op == "probe"


def test_guard_ends_the_transcoder_group_when_its_input_closes(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    transcoder = tmp_path / "slow-transcoder"
    # A child in the background stands for the helper processes a transcoder may start.
    transcoder.write_text(f"#!/bin/sh\nsleep 60 &\necho $$ $! > '{pids}'\nwait\n")
    transcoder.chmod(0o755)
    guard = subprocess.Popen(
        guard_argv(guard_config(tmp_path, transcoder)),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert guard.stdin is not None
        guard.stdin.write(dispatcher.run_header({"PATH": "/usr/bin:/bin"}, str(tmp_path)))
        guard.stdin.flush()
        assert wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, 10)
        shell, sleeper = (int(pid) for pid in pids.read_text().split())
        assert alive(shell) and alive(sleeper)
        guard.stdin.close()
        assert guard.wait(timeout=10) == 128 + signal.SIGTERM
        assert wait_for(lambda: not alive(shell) and not alive(sleeper), 5)
        assert "the origin's session ended" in (tmp_path / "guard.log").read_text()
    finally:
        guard.kill()
        guard.wait()


def test_guard_reports_a_transcoder_killed_by_a_signal(tmp_path: Path) -> None:
    transcoder = tmp_path / "crashing-transcoder"
    transcoder.write_text("#!/bin/sh\nkill -KILL $$\n")
    transcoder.chmod(0o755)
    result = run_guard(guard_argv(guard_config(tmp_path, transcoder)), dispatcher.run_header({}, str(tmp_path)))
    assert result.returncode == 128 + signal.SIGKILL


def test_stderr_relay_takes_out_the_guard_lines(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    sink = tmp_path / "sink"
    with sink.open("wb") as out, os.fdopen(read_fd, "rb") as source:
        relay = dispatcher.StderrRelay(source, out.fileno())
        relay.start()
        os.write(write_fd, b"Warning: something from ssh\n" + dispatcher.STARTED_MARKER[:10])
        time.sleep(0.05)
        os.write(write_fd, dispatcher.STARTED_MARKER[10:] + b"frame=  1 \xff\x00binary\nlast")
        os.close(write_fd)
        relay.join(timeout=5)
    assert relay.started
    assert relay.messages == ["Warning: something from ssh"]
    assert sink.read_bytes() == b"Warning: something from ssh\nframe=  1 \xff\x00binary\nlast"


# --------------------------------------------------------------------------------------------------
# Dispatching with no reachable slave: the local transcoder runs, and the log says why


def test_unreachable_slave_falls_back_to_the_local_transcoder(
    tmp_path: Path, recording_transcoder: tuple[Path, Path]
) -> None:
    transcoder, record = recording_transcoder
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        closed_port = probe_socket.getsockname()[1]
    (tmp_path / "known_hosts").write_text("")
    config = {
        "slaves": [{"name": "gone", "host": "127.0.0.1", "port": closed_port, "user": "plex"}],
        "local_transcoder": str(transcoder),
        "plex_version": ORIGIN_VERSION,
        "known_hosts": str(tmp_path / "known_hosts"),
        "state_dir": str(tmp_path / "st"),
        "log_path": str(tmp_path / "origin.log"),
        "bad_host_seconds": 120,
        "connect_timeout": 1,
        "read_dirs": [MEDIA_DIR],
        "write_dirs": [str(tmp_path)],
    }
    (tmp_path / "origin.json").write_text(json.dumps(config))
    args = ["-i", "/media/a film.mkv", "-progressurl", f"http://127.0.0.1:32400/p?X-Plex-Token={TOKEN}"]
    environ = {"PATH": os.environ["PATH"], "X_PLEX_TOKEN": TOKEN, "EXIT_WITH": "3"}
    environ[dispatcher.CONFIG_ENV] = str(tmp_path / "origin.json")
    first = subprocess.run(
        [sys.executable, str(DISPATCHER), *args],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert first.returncode == 3, first.stderr
    assert [os.fsdecode(bytes.fromhex(word)) for word in json.loads(record.read_text())["argv"]] == args
    log = (tmp_path / "origin.log").read_text()
    assert "slave gone unreachable" in log
    assert f"transcoding locally (no good slave) with {transcoder}" in log
    assert TOKEN not in log

    record.unlink()
    second = subprocess.run(
        [sys.executable, str(DISPATCHER), *args], env=environ, cwd=tmp_path, timeout=60, check=False
    )
    assert second.returncode == 3 and record.exists()
    assert "skipping slave gone: marked bad" in (tmp_path / "origin.log").read_text()
    status = subprocess.run(
        [sys.executable, str(DISPATCHER), "--status"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    snapshot = json.loads(status.stdout)
    assert snapshot["counts"]["local"] == 2
    assert "gone" in snapshot["hosts"]


def test_a_dispatcher_failure_still_transcodes_locally(tmp_path: Path, recording_transcoder: tuple[Path, Path]) -> None:
    transcoder, record = recording_transcoder
    not_a_directory = tmp_path / "state-is-a-file"
    not_a_directory.write_text("")
    config = {
        "slaves": [{"name": "s", "host": "127.0.0.1"}],
        "local_transcoder": str(transcoder),
        "plex_version": ORIGIN_VERSION,
        "state_dir": str(not_a_directory),
        "log_path": str(tmp_path / "origin.log"),
        "write_dirs": [str(tmp_path)],
    }
    (tmp_path / "origin.json").write_text(json.dumps(config))
    environ = {"PATH": os.environ["PATH"], "EXIT_WITH": "4", dispatcher.CONFIG_ENV: str(tmp_path / "origin.json")}
    result = subprocess.run(
        [sys.executable, str(DISPATCHER), "-i", "x"],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 4, result.stderr
    assert record.exists()
    assert "transcoding locally (dispatcher error: FileExistsError" in (tmp_path / "origin.log").read_text()


def test_broken_config_still_transcodes_locally(tmp_path: Path) -> None:
    plex = tmp_path / "plex"
    plex.mkdir()
    shutil.copy(DISPATCHER, plex / "Plex Transcoder")
    real = plex / "Plex Transcoder.real"
    real.write_text("#!/bin/sh\nexit 5\n")
    real.chmod(0o755)
    (plex / dispatcher.CONFIG_NAME).write_text("{not json")
    result = subprocess.run(
        [sys.executable, str(plex / "Plex Transcoder"), "-i", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 5
    assert "not JSON" in result.stderr and "transcoding locally" in result.stderr


# --------------------------------------------------------------------------------------------------
# authorized_keys


def sshd_forced_command(line: str) -> str:
    """Read `command="..."` back the way sshd does: a backslash escapes a double quote, nothing else."""
    start = line.index('command="') + len('command="')
    out: list[str] = []
    index = start
    while line[index] != '"':
        if line[index] == "\\" and line[index + 1] == '"':
            index += 1
        out.append(line[index])
        index += 1
    return "".join(out)


def test_authorized_keys_line_forces_the_guard() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0bS0V0 plexcdn-dispatch@origin"
    line = authorized_keys_line(
        key,
        guard_path='/opt/plex "cdn"/dispatcher.py',
        python="/usr/bin/python3",
        guard_config="/etc/plexcdn/guard's.json",
    )
    assert line.startswith(
        'restrict,port-forwarding,permitlisten="127.0.0.1:32400",permitopen="127.0.0.1:32400",command="'
    )
    assert line.endswith(" " + key)
    assert shlex.split(sshd_forced_command(line)) == [
        "/usr/bin/python3",
        "-I",
        '/opt/plex "cdn"/dispatcher.py',
        "--remote-guard",
        "--config",
        "/etc/plexcdn/guard's.json",
    ]
    limited = authorized_keys_line(key, from_patterns="198.18.128.*,!198.18.128.9", plex_port=0)
    assert limited.startswith('restrict,command="')
    assert ',from="198.18.128.*,!198.18.128.9" ' in limited
    assert "port-forwarding" not in limited
    with pytest.raises(dispatcher.UsageError):
        authorized_keys_line(key, plex_port=70000)
    with pytest.raises(dispatcher.UsageError):
        authorized_keys_line(key + "\nssh-ed25519 AAAA second")
    with pytest.raises(dispatcher.UsageError):
        authorized_keys_line("not a key")
    with pytest.raises(dispatcher.UsageError):
        authorized_keys_line(key, from_patterns='1.2.3.4" command="sh')


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen (openssh-client)")
def test_authorized_keys_line_parses_as_openssh_does(tmp_path: Path) -> None:
    key_path = tmp_path / "dispatch"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_path)], check=True, timeout=30)
    result = subprocess.run(
        [
            sys.executable,
            str(DISPATCHER),
            "--authorized-keys-line",
            str(key_path) + ".pub",
            *("--guard", "/opt/plex cdn/dispatcher.py", "--config", '/etc/"q".json', "--from", "198.18.128.*"),
            *("--plex-port", "32401"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(result.stdout)
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(authorized)], capture_output=True, text=True, timeout=30, check=False
    )
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(key_path)], capture_output=True, text=True, timeout=30, check=True
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == fingerprint.stdout
    assert 'permitlisten="127.0.0.1:32401"' in result.stdout


# --------------------------------------------------------------------------------------------------
# Installing over "Plex Transcoder", and again after a Plex update


def test_install_is_repeatable_and_survives_plex_updates(tmp_path: Path) -> None:
    plex = tmp_path / "plexmediaserver"
    plex.mkdir()
    target = plex / "Plex Transcoder"
    real = plex / "Plex Transcoder.real"
    target.write_bytes(b"\x7fELF plex transcoder 1.40")
    target.chmod(0o755)
    assert "moved Plex's transcoder" in dispatcher.install(plex)
    assert real.read_bytes() == b"\x7fELF plex transcoder 1.40"
    assert target.read_bytes() == DISPATCHER.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert "already" in dispatcher.install(plex)

    target.write_bytes(b"\x7fELF plex transcoder 1.41")  # what a Plex update does
    dispatcher.install(plex)
    assert real.read_bytes() == b"\x7fELF plex transcoder 1.41"
    assert target.read_bytes() == DISPATCHER.read_bytes()
    assert sorted(path.name for path in plex.iterdir()) == ["Plex Transcoder", "Plex Transcoder.real"]
    with pytest.raises(dispatcher.UsageError):
        dispatcher.install(tmp_path / "elsewhere")


# --------------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


# --------------------------------------------------------------------------------------------------
# What a transcode may ask for: the guard's allow-lists


def plex_environment(tmp_path: Path) -> dict[str, str]:
    """What Plex gives its transcoder ("Job running:" in Plex's log), with the service's own variables."""
    return {
        "EAE_ROOT": "/tmp/pms-d4a0cd44-31b5-42a2-8b7b-87235833786c/EasyAudioEncoder",
        "FFMPEG_EXTERNAL_LIBS": f"{APP_DATA}/Codecs/99c90e0-3084-linux-x86_64/",
        "XDG_CACHE_HOME": f"{APP_DATA}/Cache",
        "XDG_DATA_HOME": "/usr/lib/plexmediaserver/Resources",
        "X_PLEX_TOKEN": TOKEN,
        "PLEX_MEDIA_SERVER_APPLICATION_SUPPORT_DIR": str(Path(APP_DATA).parent),
        "PLEX_MEDIA_SERVER_HOME": "/usr/lib/plexmediaserver",
        "PLEX_MEDIA_SERVER_MAX_PLUGIN_PROCS": "6",
        "PLEX_MEDIA_SERVER_INFO_VENDOR": "Debian GNU/Linux",
        "PLEX_MEDIA_SERVER_INFO_DEVICE": "PC",
        "PLEX_MEDIA_SERVER_INFO_MODEL": "x86_64",
        "PLEX_MEDIA_SERVER_INFO_PLATFORM_VERSION": "13 (trixie)",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/var/lib/plexmediaserver",
        "LANG": "en_US.UTF-8",
        "TMPDIR": "/tmp",
    }


def plex_dash_arguments(session: str) -> list[str]:
    """A transcode the way Plex asks for one (from its "Job running:" lines): DASH with EAE audio."""
    return [
        *("-codec:0", "h264", "-codec:2", "eac3_eae", "-eae_prefix:2", "rnft5v12sq8x7ate39hmdnrz_"),
        *("-ss", "0", "-noaccurate_seek", "-analyzeduration", "20000000", "-probesize", "20000000"),
        *("-i", f"{MEDIA_DIR}/Video/TV/Show (2020)/S01E01.mkv"),
        *("-filter_complex", "[0:0]scale=w=min(1280\\,iw):h=min(720\\,ih)[0];[0]format=pix_fmts=yuv420p|nv12[1]"),
        *("-filter_complex", "[0:2] aresample=async=1:ocl='stereo':osr=48000[2]"),
        *("-map", "[1]", "-metadata:s:0", "language=eng", "-codec:0", "libx264", "-crf:0", "21", "-maxrate:0", "4M"),
        *(
            "-bufsize:0",
            "8M",
            "-r:0",
            "23.976023976023978",
            "-preset:0",
            "veryfast",
            "-x264opts:0",
            "subme=2:me_range=4",
        ),
        *("-force_key_frames:0", "expr:gte(t,n_forced*5)"),
        *("-map", "[2]", "-metadata:s:1", "language=eng", "-codec:1", "aac", "-b:1", "256k"),
        *("-f", "dash", "-seg_duration", "5", "-dash_segment_type", "mp4"),
        *("-init_seg_name", "init-stream$RepresentationID$.m4s"),
        *("-media_seg_name", "chunk-stream$RepresentationID$-$Number%05d$.m4s"),
        *("-window_size", "5", "-delete_removed", "false", "-skip_to_segment", "1", "-time_delta", "0.0625"),
        *("-manifest_name", f"http://127.0.0.1:32400/video/:/transcode/session/{session}/manifest"),
        *("-avoid_negative_ts", "disabled", "-map_metadata", "-1", "-map_chapters", "-1", "dash"),
        *("-start_at_zero", "-copyts", "-vsync", "cfr", "-y", "-nostats", "-loglevel", "quiet"),
        *("-loglevel_plex", "error"),
        *("-progressurl", f"http://127.0.0.1:32400/video/:/transcode/session/{session}/progress"),
    ]


def plex_hls_arguments() -> list[str]:
    """Plex's segment-muxer (HLS) shape, reading its input from Plex itself on loopback."""
    return [
        *("-noaccurate_seek", "-i", "http://127.0.0.1:32400/library/parts/41/file.ts?X-Plex-Token=" + TOKEN),
        *("-map", "0:v:0", "-codec:0", "copy", "-map", "0:a:0", "-codec:1", "ac3", "-channel_layout:1", "5.1"),
        *("-b:1", "640k", "-segment_format", "mpegts", "-f", "segment", "-flags", "-global_header"),
        *("-segment_time", "10", "-segment_start_number", "0", "-segment_copyts", "1"),
        *("-segment_time_delta", "0.0625", "-max_delay", "5000000", "-avoid_negative_ts", "disabled"),
        *("-map_metadata", "-1", "media-%05d.ts", "-start_at_zero", "-copyts", "-vsync", "cfr", "-y", "-nostats"),
        *("-progressurl", "http://127.0.0.1:32400/video/:/transcode/session/p7cj645pufczy/progress"),
    ]


def policy_for(tmp_path: Path) -> dispatcher.RequestPolicy:
    return dispatcher.RequestPolicy(APP_DATA, "/usr/lib/plexmediaserver", (MEDIA_DIR,), (str(tmp_path),), 32400)


def test_plex_shaped_requests_pass_the_guard_policy(tmp_path: Path) -> None:
    policy = policy_for(tmp_path)
    session = tmp_path / "session"
    for args in (plex_dash_arguments("q9zljdon5bcpoq6q0jm04cyr"), plex_hls_arguments()):
        assert dispatcher.request_problems(args, plex_environment(tmp_path), str(session), policy) == []


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"env": {"LD_PRELOAD": "/srv/plex transcode/x.so"}}, "environment variable LD_PRELOAD is not one"),
        ({"env": {"LD_AUDIT": "/tmp/x.so"}}, "LD_AUDIT"),
        ({"env": {"GCONV_PATH": "/tmp"}}, "GCONV_PATH"),
        ({"env": {"OPENSSL_CONF": "/tmp/engine.cnf"}}, "OPENSSL_CONF"),
        ({"env": {"LD_LIBRARY_PATH": "/srv/plex transcode"}}, "LD_LIBRARY_PATH has a value"),
        ({"env": {"FFMPEG_EXTERNAL_LIBS": "{session}/"}}, "FFMPEG_EXTERNAL_LIBS has a value"),
        ({"env": {"FFMPEG_EXTERNAL_LIBS": f"{APP_DATA}/Codecs/../Plug-in Support/"}}, "FFMPEG_EXTERNAL_LIBS"),
        ({"env": {"PATH": "{session}:/usr/bin"}}, "PATH has a value"),
        ({"args": ["-i", "/etc/shadow"]}, "input '/etc/shadow' is neither"),
        ({"args": ["-i", f"{MEDIA_DIR}/../etc/passwd"]}, "is neither Plex on loopback nor inside"),
        ({"args": ["-i", "concat:/etc/passwd|/etc/group"]}, "input 'concat:"),
        ({"args": ["-i", "http://203.0.113.7/x.ts"]}, "input 'http://203.0.113.7/x.ts'"),
        ({"args": ["-f", "lavfi", "-i", "movie=/etc/passwd"]}, "-f 'lavfi' is not a container"),
        ({"args": ["-f", "tee", "a.ts|/tmp/b.ts"]}, "-f 'tee'"),
        ({"args": ["-y", "-f", "data", "/var/lib/plexcdn-slave/.pam_environment"]}, "output '/var/lib/plexcdn-slave"),
        ({"args": ["../../etc/cron.d/x"]}, "output '../../etc/cron.d/x'"),
        ({"args": ["file:/etc/plexcdn/ssh/plex.authorized_keys"]}, "output 'file:"),
        ({"args": ["-hls_segment_filename", "/tmp/x-%d.ts"]}, "-hls_segment_filename '/tmp/x-%d.ts'"),
        ({"args": ["-progressurl", "http://198.51.100.9:32400/p"]}, "-progressurl 'http://198.51.100.9:32400/p'"),
        ({"args": ["-progressurl", "http://127.0.0.1:22/p"]}, "-progressurl"),
        (
            {"args": ["-filter_complex", "movie=/etc/passwd[m];[0:0][m]overlay"]},
            "filters Plex's transcoder does not use: movie",
        ),
        ({"args": ["-vf", "scale=1:1,sendcmd=f=/tmp/c"]}, "sendcmd"),
        ({"args": ["-filter_complex_script", "/tmp/graph"]}, "option -filter_complex_script is not one"),
        ({"args": ["-dump_attachment:t", "/tmp/x"]}, "option -dump_attachment:t is not one"),
        ({"args": ["-hwaccel", "vaapi"]}, "option -hwaccel is not one"),
        ({"args": ["-progressurl"]}, "option -progressurl has no value"),
        ({"cwd": "/tmp"}, "working directory /tmp is not inside the shared transcode directory"),
    ],
)
def test_the_guard_policy_refuses_what_plex_never_asks_for(
    tmp_path: Path, change: dict[str, object], refusal: str
) -> None:
    session = tmp_path / "session"
    environ = plex_environment(tmp_path)
    extra_env = change.get("env", {})
    assert isinstance(extra_env, dict)
    environ.update({name: value.replace("{session}", str(session)) for name, value in extra_env.items()})
    extra_args = change.get("args", [])
    assert isinstance(extra_args, list)
    args = [*plex_hls_arguments(), *extra_args]
    cwd = str(change.get("cwd", session))
    problems = dispatcher.request_problems(args, environ, cwd, policy_for(tmp_path))
    assert any(refusal in problem for problem in problems), problems


def test_filter_names_are_read_as_ffmpeg_reads_a_graph() -> None:
    graph = "[0:0]scale=w=min(1280\\,iw):h=720[0];[0]format=pix_fmts=yuv420p|nv12[1];[1]inlineass='a,b;c'[2]"
    assert dispatcher.filter_names(graph) == ["scale", "format", "inlineass"]
    assert dispatcher.filter_names("[0:a] aresample=async=1 , volume=2[out]") == ["aresample", "volume"]
    # A quote or escape cannot hide a second filter behind an allowed one's arguments.
    assert dispatcher.filter_names("scale=1:1',movie=/etc/passwd") == ["scale"]
    assert "movie" in dispatcher.filter_names("scale=1:1\\\\,movie=/etc/passwd")
    # Plex's unescaped ASS overrides belong to inlineass; a lower-case filter after them is a filter again.
    overrides = "[1]inlineass=overrides=ScaledBorderAndShadow=yes,FontName=Noto Sans,Bold=500:outline=2[2]"
    assert dispatcher.filter_names(overrides) == ["inlineass"]
    assert dispatcher.filter_names(overrides + ";[2]movie=/etc/passwd") == ["inlineass", "movie"]
    assert dispatcher.filter_names("scale=1:1,Bold=500") == ["scale", "Bold"]


def test_the_guard_runs_nothing_for_an_ld_preload_header(
    tmp_path: Path, recording_transcoder: tuple[Path, Path]
) -> None:
    """The attack: a run header that preloads a library into the transcoder (placed on the shared storage)."""
    transcoder, record = recording_transcoder
    session = tmp_path / "session"
    session.mkdir()
    library = session / "evil.so"
    library.write_bytes(b"\x7fELF")
    environ = {**plex_environment(tmp_path), "LD_PRELOAD": str(library)}
    result = run_guard(
        guard_argv(guard_config(tmp_path, transcoder)) + plex_hls_arguments(),
        dispatcher.run_header(environ, str(session)),
    )
    assert result.returncode == dispatcher.GUARD_REFUSED_EXIT
    assert result.stderr.startswith(dispatcher.REFUSED_PREFIX)
    assert b"LD_PRELOAD" in result.stderr
    assert not record.exists(), "the transcoder never started"
    log = (tmp_path / "guard.log").read_text()
    assert "WARNING refused: environment variable LD_PRELOAD is not one Plex's transcoder is given" in log
    assert TOKEN not in log


def test_a_request_a_slave_would_refuse_stays_local_without_marking_the_slave_bad(
    tmp_path: Path, recording_transcoder: tuple[Path, Path]
) -> None:
    transcoder, record = recording_transcoder
    (tmp_path / "known_hosts").write_text("")
    config = {
        "slaves": [{"name": "den", "host": "127.0.0.1", "port": 9, "user": "plex"}],
        "local_transcoder": str(transcoder),
        "plex_version": ORIGIN_VERSION,
        "known_hosts": str(tmp_path / "known_hosts"),
        "state_dir": str(tmp_path / "st"),
        "log_path": str(tmp_path / "origin.log"),
        "read_dirs": [MEDIA_DIR],
        "write_dirs": [str(tmp_path)],
    }
    (tmp_path / "origin.json").write_text(json.dumps(config))
    environ = {"PATH": "/usr/bin:/bin", "EXIT_WITH": "6", dispatcher.CONFIG_ENV: str(tmp_path / "origin.json")}
    result = subprocess.run(
        [sys.executable, str(DISPATCHER), "-i", "/etc/shadow", "-f", "null", "-"],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 6 and record.exists()
    log = (tmp_path / "origin.log").read_text()
    assert "transcoding locally (a slave would refuse this transcode: input '/etc/shadow'" in log
    assert "EXIT_WITH" in log, "the variables kept back are named"
    assert HostState(tmp_path / "st").bad_hosts() == {}
