"""The transcode-offload lab: an origin namespace and slave namespaces running their own sshd.

The dispatcher is installed as "Plex Transcoder" in a lab Plex directory, with ffmpeg standing in for
the real transcoder. Every namespace sees the same files, which plays the part of the shared storage
(NFS in a real set-up) at identical paths. The slaves let the origin's key run only the guard, through
the authorized_keys line the dispatcher builds.

All namespaces share one kernel, so /proc/loadavg reads the same everywhere: each slave's guard reads
its load from a file of its own instead, which the lab writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from labs.netns import NETNS_ETC, Lab, LabError
from plexcdn.transcode import dispatcher
from plexcdn.transcode import render as transcode_render

PREFIX = "pct-"
# Slave n is joined to the origin by 198.18.128.(4n)/30: the origin takes .(4n+1), the slave .(4n+2).
SUBNET_BASE = "198.18.128"
PLEX_VERSION = "1.41.3.9314-a0bfb8370"
CLIP_NAME = "Tëst clip 'one' (2024) $HOME.mkv"
CLIP_SECONDS = 4
DISPATCHER_SOURCE = Path(dispatcher.__file__)
PLEX_PORT = 32400
# Stands in for Plex Media Server on the origin's loopback: serves the media directory and notes each
# request's method and path (never its query, where Plex puts the token).
PLEX_STAND_IN = """
import functools, http.server, sys
directory, log_path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        with open(log_path, "a") as log:
            log.write(self.command + " " + self.path.split("?")[0] + "\\n")
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=directory))
with open(log_path, "a") as log:
    log.write("ready\\n")
server.serve_forever()
"""


def lab_tools_missing() -> str | None:
    missing = [tool for tool in ("ffmpeg", "ffprobe", "ssh", "ssh-keygen") if shutil.which(tool) is None]
    if not Path("/usr/sbin/sshd").exists():
        missing.append("sshd")
    if not Path("/usr/bin/python3").exists():
        missing.append("/usr/bin/python3")
    if missing:
        return f"needs {', '.join(missing)} (Debian packages ffmpeg, openssh-client, openssh-server, python3)"
    return None


def nfs_unavailable_reason() -> str | None:
    """Why the kernel here cannot serve or mount NFS, or None when it can."""
    filesystems = Path("/proc/filesystems").read_text(encoding="ascii")
    kinds = {line.split()[-1] for line in filesystems.splitlines() if line.strip()}
    missing = [kind for kind in ("nfs", "nfsd") if kind not in kinds]
    if missing:
        return f"the kernel has no {' or '.join(missing)} filesystem (not in /proc/filesystems, no modules to load)"
    return None


@dataclass(frozen=True)
class SlaveAccount:
    """The unprivileged account a slave's guard runs as, set up the way slave-setup does it: a home root owns, the
    dispatch key in a file root owns, and sshd's settings for the account from the rendered drop-in. It exists in
    the slave namespaces only (their own /etc/passwd and /etc/group, bind-mounted by `ip netns exec`)."""

    name: str = "pctplex"
    uid: int = 64981
    gid: int = 64981


@dataclass
class SlaveHost:
    name: str
    role: str
    address: str
    directory: Path
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def guard_config(self) -> Path:
        return self.directory / "guard.json"

    @property
    def guard_log(self) -> Path:
        return self.directory / "guard.log"

    @property
    def loadavg(self) -> Path:
        return self.directory / "loadavg"

    @property
    def version_file(self) -> Path:
        return self.directory / "plex-version"

    @property
    def sshd_log(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def home(self) -> Path:
        return self.directory / "home"

    @property
    def account_keys(self) -> Path:
        return self.directory / "account.authorized_keys"


@dataclass
class DispatchRun:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float


class TranscodeLab:
    """Builds the lab on entry and removes every namespace, process and file on exit."""

    def __init__(
        self, slave_count: int = 2, bad_host_seconds: float = 3.0, account: SlaveAccount | None = None
    ) -> None:
        """With ACCOUNT, the slaves' guards run as that unprivileged account instead of root."""
        if not 1 <= slave_count <= 4:
            raise LabError("the transcode lab has one to four slaves")
        self.slave_count = slave_count
        self.bad_host_seconds = bad_host_seconds
        self.account = account
        # Short on purpose: ssh's control sockets live under it and a socket path holds 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp"))
        self.lab = Lab(PREFIX)
        self.slaves: list[SlaveHost] = []
        self.plex_dir = self.root / "plex"
        self.transcoder = self.plex_dir / dispatcher.TRANSCODER_NAME
        self.real_transcoder = self.plex_dir / (dispatcher.TRANSCODER_NAME + dispatcher.REAL_SUFFIX)
        self.guard_path = self.root / "opt" / "dispatcher.py"
        self.shared = self.root / "shared"
        self.media = self.shared / "media"
        self.transcode_dir = self.shared / "transcode"
        self.clip = self.media / CLIP_NAME
        self.keys = self.root / "keys"
        self.origin_key = self.keys / "dispatch_ed25519"
        self.known_hosts = self.keys / "known_hosts"
        self.state_dir = self.root / "state"
        self.origin_log = self.root / "origin.log"
        self.config_path = self.plex_dir / dispatcher.CONFIG_NAME
        self.plex_log = self.root / "plex-stand-in.log"

    def __enter__(self) -> TranscodeLab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------

    def _build(self) -> None:
        for directory in (self.plex_dir, self.guard_path.parent, self.media, self.transcode_dir, self.keys):
            directory.mkdir(parents=True)
        self.state_dir.mkdir(mode=0o700)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        self.transcoder.write_bytes(DISPATCHER_SOURCE.read_bytes())
        self.transcoder.chmod(0o755)
        self.guard_path.write_bytes(DISPATCHER_SOURCE.read_bytes())
        ffmpeg = shutil.which("ffmpeg")
        assert ffmpeg is not None
        self.real_transcoder.symlink_to(ffmpeg)
        self._make_clip()
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "plexcdn-dispatch", "-f", str(self.origin_key)])
        public_key = self.origin_key.with_suffix(".pub").read_text(encoding="ascii")
        if self.account is not None:
            # The account reads the clip and the guard, and writes the segments, as plex does through NFS.
            self.root.chmod(0o755)
            os.chown(self.transcode_dir, self.account.uid, self.account.gid)

        self.lab.add_namespace("origin")
        known_hosts: list[str] = []
        for index in range(self.slave_count):
            name = f"slave{index + 1}"
            self.lab.add_namespace(name)
            link = self.lab.link("origin", name, f"{SUBNET_BASE}.{4 * index}/30")
            slave = SlaveHost(name, name, str(link.b_addr), self.root / name)
            slave.directory.mkdir()
            host_key = slave.directory / "ssh_host_ed25519_key"
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(host_key)])
            host_public = host_key.with_suffix(".pub").read_text(encoding="ascii").split()
            known_hosts.append(f"{slave.address} {host_public[0]} {host_public[1]}")
            line = dispatcher.authorized_keys_line(
                public_key,
                guard_path=str(self.guard_path),
                python="/usr/bin/python3",
                guard_config=str(slave.guard_config),
                from_patterns=f"{SUBNET_BASE}.*",
            )
            (slave.directory / "authorized_keys").write_text(line + "\n", encoding="utf-8")
            if self.account is not None:
                self._add_account(slave, line)
            (slave.directory / "sshd_config").write_text(self._sshd_config(slave, host_key), encoding="utf-8")
            self.slaves.append(slave)
            self.set_load(name, 0.0, 2)
            self.set_version(name, PLEX_VERSION)
        self.known_hosts.write_text("\n".join(known_hosts) + "\n", encoding="ascii")
        self.write_origin_config()
        self._start_plex_stand_in()
        for slave in self.slaves:
            self.start_sshd(slave.name)

    def _start_plex_stand_in(self, timeout: float = 10) -> None:
        process = self.lab.start(
            "origin", ["/usr/bin/python3", "-c", PLEX_STAND_IN, str(self.media), str(self.plex_log), str(PLEX_PORT)]
        )
        if not wait_until(lambda: self.plex_log.exists() and "ready" in self.plex_log.read_text(), timeout):
            raise LabError(f"the Plex stand-in did not start on 127.0.0.1:{PLEX_PORT} (exit {process.poll()})")

    def _add_account(self, slave: SlaveHost, key_line: str) -> None:
        account = self.account
        assert account is not None
        passwd = Path("/etc/passwd").read_text(encoding="utf-8")
        group = Path("/etc/group").read_text(encoding="utf-8")
        etc = NETNS_ETC / self.lab.ns(slave.role)
        etc.mkdir(parents=True, exist_ok=True)
        # '*': no password, but not locked, so sshd (without PAM) takes the account's keys.
        (etc / "passwd").write_text(
            passwd + f"{account.name}:*:{account.uid}:{account.gid}::{slave.home}:/bin/sh\n", encoding="utf-8"
        )
        (etc / "group").write_text(group + f"{account.name}:x:{account.gid}:\n", encoding="utf-8")
        slave.home.mkdir(mode=0o755)
        slave.account_keys.write_text(key_line + "\n", encoding="utf-8")
        os.chown(slave.account_keys, 0, account.gid)
        slave.account_keys.chmod(0o640)
        drop_in = transcode_render.render_template(
            "transcode/sshd-plexcdn-transcode.conf.j2",
            stack="lab",
            slave_user=account.name,
            authorized_keys=str(slave.account_keys),
        )
        (slave.directory / "sshd-plexcdn-transcode.conf").write_text(drop_in, encoding="utf-8")
        slave.guard_log.touch()
        os.chown(slave.guard_log, account.uid, account.gid)

    def _sshd_config(self, slave: SlaveHost, host_key: Path) -> str:
        account_settings = []
        if self.account is not None:
            # As Debian's sshd_config does: the drop-ins first, then the defaults (the Match ends with its file).
            account_settings = [f"Include {slave.directory / 'sshd-plexcdn-transcode.conf'}"]
        return "\n".join(
            [
                *account_settings,
                f"ListenAddress {slave.address}:22",
                f"HostKey {host_key}",
                "PidFile none",
                f"AuthorizedKeysFile {slave.directory / 'authorized_keys'}",
                "AuthenticationMethods publickey",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                # The lab logs in as root, which sshd then allows only under the forced command.
                "PermitRootLogin forced-commands-only",
                # bash run by sshd reads ~/.bashrc unless nested; this machine's root .bashrc is not the lab's.
                "SetEnv SHLVL=1",
                "UsePAM no",
                "StrictModes no",
                "PrintMotd no",
                "MaxSessions 30",
                "MaxStartups 30:30:60",
                "LogLevel VERBOSE",
                "",
            ]
        )

    def _make_clip(self) -> None:
        _run(
            [
                "ffmpeg",
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                f"testsrc=size=320x240:rate=25:duration={CLIP_SECONDS}",
                "-f",
                "lavfi",
                "-i",
                f"sine=frequency=440:sample_rate=48000:duration={CLIP_SECONDS}",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "25",
                "-c:a",
                "aac",
                "-shortest",
                str(self.clip),
            ]
        )

    # ---------------------------------------------------------------------------------------------

    def slave(self, name: str) -> SlaveHost:
        for slave in self.slaves:
            if slave.name == name:
                return slave
        raise LabError(f"no slave {name}")

    def origin_config(self, slaves: Sequence[str] | None = None, probe_cache_seconds: float = 0) -> dict[str, object]:
        """The origin's configuration; without a probe cache, so each dispatch sees the load as the lab set it."""
        chosen = [slave for slave in self.slaves if slaves is None or slave.name in slaves]
        return {
            "slaves": [
                {
                    "name": slave.name,
                    "host": slave.address,
                    "port": 22,
                    "user": self.account.name if self.account is not None else "root",
                    "identity_file": str(self.origin_key),
                    "python": "/usr/bin/python3",
                    "guard_path": str(self.guard_path),
                }
                for slave in chosen
            ],
            # The origin's dispatcher runs as root here, the slaves' guards as the account.
            "require_same_ids": self.account is None,
            **self.request_policy(),
            "plex_version": PLEX_VERSION,
            "known_hosts": str(self.known_hosts),
            "state_dir": str(self.state_dir),
            "log_path": str(self.origin_log),
            "bad_host_seconds": self.bad_host_seconds,
            "probe_cache_seconds": probe_cache_seconds,
            "connect_timeout": 1,
            "kill_grace_seconds": 2,
        }

    def request_policy(self) -> dict[str, object]:
        """What transcodes may name: the lab's media and transcode directories, as the stack's are."""
        return {"read_dirs": [str(self.media)], "write_dirs": [str(self.transcode_dir)]}

    def write_origin_config(self, slaves: Sequence[str] | None = None, probe_cache_seconds: float = 0) -> None:
        text = json.dumps(self.origin_config(slaves, probe_cache_seconds), indent=1)
        dispatcher.parse_config(json.loads(text))
        self.config_path.write_text(text, encoding="utf-8")

    def set_load(self, name: str, load1: float, cpus: int) -> None:
        slave = self.slave(name)
        slave.loadavg.write_text(f"{load1:.2f} {load1:.2f} {load1:.2f} 1/100 4242\n", encoding="ascii")
        guard = {
            "transcoder": str(self.real_transcoder),
            "version_command": ["cat", str(slave.version_file)],
            "log_path": str(slave.guard_log),
            "loadavg_path": str(slave.loadavg),
            "cpu_count": cpus,
            "kill_grace_seconds": 2,
            **self.request_policy(),
        }
        dispatcher.parse_config(guard)
        slave.guard_config.write_text(json.dumps(guard, indent=1), encoding="utf-8")

    def set_version(self, name: str, version: str) -> None:
        self.slave(name).version_file.write_text(version + "\n", encoding="ascii")

    def start_sshd(self, name: str, timeout: float = 10) -> None:
        slave = self.slave(name)
        if slave.sshd is not None and slave.sshd.poll() is None:
            return
        before = slave.sshd_log.read_text(encoding="utf-8", errors="replace") if slave.sshd_log.exists() else ""
        slave.sshd = self.lab.start(
            slave.role,
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(slave.directory / "sshd_config")],
            log=slave.sshd_log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = slave.sshd_log.read_text(encoding="utf-8", errors="replace")[len(before) :]
            if "Server listening on" in log:
                return
            if slave.sshd.poll() is not None:
                raise LabError(f"sshd in {self.lab.ns(slave.role)} exited {slave.sshd.returncode}: {log.strip()}")
            time.sleep(0.05)
        raise LabError(f"sshd in {self.lab.ns(slave.role)} did not start listening within {timeout:g}s")

    def stop_sshd(self, name: str) -> None:
        """Stop the slave's sshd and every session it carries, as when the slave goes away."""
        slave = self.slave(name)
        for pid in self.namespace_pids(slave.role):
            if _exe(pid).endswith("/sshd"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if slave.sshd is not None:
            slave.sshd.wait(timeout=5)
            self.lab.processes.remove(slave.sshd)
            slave.sshd = None

    def close_masters(self) -> None:
        """End the origin's ssh ControlMasters, so the next dispatch connects afresh."""
        for pid in self.namespace_pids("origin"):
            if _exe(pid).endswith("/ssh"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not any(_exe(pid).endswith("/ssh") for pid in self.namespace_pids("origin")), 5)

    def reset(self) -> None:
        """Every slave up, idle, on the origin's version; no host marked bad; empty logs and output."""
        for slave in self.slaves:
            self.start_sshd(slave.name)
            self.set_load(slave.name, 0.0, 2)
            self.set_version(slave.name, PLEX_VERSION)
            slave.guard_log.unlink(missing_ok=True)
            if self.account is not None:
                slave.guard_log.touch()
                os.chown(slave.guard_log, self.account.uid, self.account.gid)
        self.write_origin_config()
        (self.state_dir / "hosts.json").unlink(missing_ok=True)
        self.origin_log.unlink(missing_ok=True)

    # ---------------------------------------------------------------------------------------------

    def namespace_pids(self, role: str) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", self.lab.ns(role)], capture_output=True, text=True, check=False
        ).stdout
        return [int(pid) for pid in out.split()]

    def transcoder_pids(self, role: str) -> list[int]:
        """ffmpeg processes (the stand-in transcoder) running in a namespace."""
        ffmpeg = os.path.realpath(shutil.which("ffmpeg") or "ffmpeg")
        return [pid for pid in self.namespace_pids(role) if _exe(pid) == ffmpeg]

    def hls_args(self, output_dir: Path, realtime_seconds: int = 0, source_url: str = "") -> list[str]:
        """Arguments in the shape Plex gives its transcoder: an input file, HLS segments in the transcode dir.

        With realtime_seconds the clip loops at its own pace for that long, for a transcode to kill;
        with source_url the input is read from there instead of the shared media directory.
        """
        source = ["-i", source_url or str(self.clip)]
        if realtime_seconds:
            source = ["-re", "-stream_loop", "-1", *source, "-t", str(realtime_seconds)]
        return [
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            *source,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "0",
            "-hls_segment_filename",
            str(output_dir / "media-%03d.ts"),
            "stream index.m3u8",
        ]

    def output_dir(self, name: str) -> Path:
        directory = self.transcode_dir / name
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        if self.account is not None:
            # Plex makes each session directory as plex; the slave's transcoder writes into it as plex.
            os.chown(directory, self.account.uid, self.account.gid)
        return directory

    def run_as(self, role: str, uid: int, gid: int, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run ARGV in a namespace as UID:GID with no other groups (setpriv), as a local user there would."""
        command = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]
        return self.lab.run(role, command, check=False, timeout=60)

    def load_filter(self, role: str, rules: str) -> None:
        """Load an nftables table in a namespace, as the slave's filter unit does at boot."""
        self.lab.run(role, ["nft", "-f", "-"], input=rules)

    def spawn(
        self, args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, program: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start the dispatcher in the origin namespace the way Plex starts its transcoder."""
        argv = self.lab.command("origin", [str(program or self.transcoder), *args])
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env) if env is not None else lab_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def dispatch(
        self,
        args: Sequence[str],
        cwd: Path,
        env: Mapping[str, str] | None = None,
        program: Path | None = None,
        timeout: float = 60,
    ) -> DispatchRun:
        started = time.monotonic()
        process = self.spawn(args, cwd, env, program)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
        return DispatchRun(
            process.returncode,
            stdout.decode("utf-8", "replace"),
            stderr.decode("utf-8", "replace"),
            time.monotonic() - started,
        )

    def origin_log_text(self) -> str:
        return self.origin_log.read_text(encoding="utf-8") if self.origin_log.exists() else ""

    def close(self) -> None:
        try:
            self.lab.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def lab_environment(token: str = "") -> dict[str, str]:
    """The environment Plex gives its transcoder, near enough: a PATH, a locale, and the server's token."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    if token:
        env["X_PLEX_TOKEN"] = token
    return env


def first_segment_listed(playlist: Path) -> bool:
    """Whether the HLS playlist lists a finished segment, the moment a player could start."""
    try:
        return ".ts" in playlist.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def _run(argv: Sequence[str]) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise LabError(f"{argv[0]} exited {result.returncode}: {result.stderr.strip()}")
