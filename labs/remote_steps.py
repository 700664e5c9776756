"""pulumi-command's remote steps, run against the boot lab's guests as the provider would run them.

What the provider does (pulumi/pulumi-command, provider/pkg/provider/remote):
- Every operation dials anew (`Connection.Dial`): up to `dial_error_limit` attempts (default 10),
  each bounded by `per_dial_timeout` seconds (default 15), waiting 100 ms, then 1.5 times longer after
  each failure, at most 5 s. With `host_key` set only that key is accepted (and only its algorithm
  offered); without it any host key is accepted.
- `remote.Command` opens one session and `Run`s the string: an SSH "exec" request, which sshd runs
  as `<login shell> -c <string>`; stdin carries `stdin` (or is empty), stdout and stderr are captured,
  and a non-zero exit fails the resource with the output in the error. `create` runs on create;
  on a change of any input `update` runs, or `create` when there is no `update`; `delete` runs when
  the resource is destroyed, dependents first. `triggers` changing replaces the resource (the new one's
  create first, then the old one's delete).
- `remote.CopyToRemote` copies over SFTP. For a directory source without a trailing slash, the
  directory itself lands inside `remote_path` (`remote_path/<name>/...`), with a trailing slash its
  contents do; `remote_path` is created (with parents) when missing, and an existing file there is an
  error. Files are created without a mode (the server's 0666 & umask), overwritten when present.
  It re-copies on update only when the source's hash or `remote_path` changed.

Here the same happens through OpenSSH: a control master per operation is the dial (retried as above,
with the host key pinned in a known_hosts file and StrictHostKeyChecking=yes), the command is the
same exec request over it, and copies go through OpenSSH's sftp. One difference: a host key that does
not match stops at once, where the provider would retry it `dial_error_limit` times to the same end.

Secrets: `Step.secrets()` are every value the step holds as a secret (the private key, stdin when it
was a secret input, ...). They are replaced by `[secret]` in anything this module logs or raises.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from labs.netns import LabError

DIAL_ERROR_LIMIT_DEFAULT: Final = 10
PER_DIAL_TIMEOUT_DEFAULT: Final = 15
RETRY_DELAY_S: Final = 0.1
RETRY_BACKOFF: Final = 1.5
RETRY_MAX_DELAY_S: Final = 5.0
COMMAND_TIMEOUT_S: Final = 1800
REDACTED: Final = "[secret]"
# ssh's stderr when the server's key is not the pinned one; retrying cannot change that.
HOST_KEY_FAILURES: Final = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED")

SshPrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
Logging = Literal["stdout", "stderr", "stdoutAndStderr", "none"]
Operation = Literal["create", "update", "delete", "replace", "copy", "unchanged"]


class StepError(LabError):
    """A step failed. `str()` is safe to print (secrets redacted, output withheld where logging is off);
    the full output is on `stdout`/`stderr`."""

    def __init__(self, message: str, stdout: str = "", stderr: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr
        self.returncode = returncode
        # Raised from StepRunner.apply: the state after the steps that completed (see there).
        self.deployment: Deployment | None = None


class HostKeyError(StepError):
    """The server did not show the pinned host key, or no host key was given and none may be trusted blindly."""


class DialError(StepError):
    """No SSH connection within the dial attempts."""


class Redactor:
    """Replaces secret values (and each long line of a multi-line secret) in text meant for logs."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            values.add(secret)
            values.update(line.strip() for line in secret.splitlines() if len(line.strip()) >= 8)
        self.values = sorted(values, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, REDACTED)
        return text

    def extended(self, secrets: Iterable[str]) -> Redactor:
        return Redactor([*self.values, *secrets])


# --- connections -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """pulumi-command's `remote.ConnectionArgs`, the fields the lab uses."""

    host: str
    private_key: str = field(repr=False)
    user: str = "root"
    port: int = 22
    host_key: str | None = None  # authorized_keys form: "ssh-ed25519 AAAA... [comment]"
    dial_error_limit: int = DIAL_ERROR_LIMIT_DEFAULT
    per_dial_timeout: int = PER_DIAL_TIMEOUT_DEFAULT

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def digest_fields(self) -> dict[str, object]:
        return {
            "host": self.host,
            "user": self.user,
            "port": self.port,
            "host_key": self.host_key,
            "private_key_sha256": hashlib.sha256(self.private_key.encode()).hexdigest(),
        }


def openssh_private_key(private_key: str) -> bytes:
    """The key in OpenSSH's own format; accepts what the provider's Go parser accepts (OpenSSH, PKCS#8,
    PKCS#1 RSA, SEC1 EC PEM), unencrypted."""
    data = private_key.encode()
    try:
        key: object
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, SshPrivateKey):
            raise TypeError(f"{type(key).__name__} keys do not sign SSH sessions")
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    except (ValueError, TypeError) as error:
        raise StepError(f"the connection's private key cannot be used: {type(error).__name__}") from None


def host_key_algorithms(host_key: str) -> str:
    key_type = host_key.split(maxsplit=1)[0]
    # Go's FixedHostKey offers the key's type; for RSA that means its SHA-2 signatures to a modern sshd.
    return "rsa-sha2-512,rsa-sha2-256,ssh-rsa" if key_type == "ssh-rsa" else key_type


def known_hosts_line(host: str, port: int, host_key: str) -> str:
    parts = host_key.split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise HostKeyError(f"not a public key in authorized_keys form: {host_key[:40]!r}")
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {parts[0]} {parts[1]}\n"


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class SshSession:
    """One dialled connection (an OpenSSH control master), as the provider's `Dial` gives one client.

    `namespace` is the network namespace to dial from (the lab's), or None for this one.
    `accept_any_host_key=True` is the only way to connect without `connection.host_key`.
    """

    def __init__(
        self,
        connection: Connection,
        namespace: str | None = None,
        *,
        accept_any_host_key: bool = False,
        redact: Redactor | None = None,
    ) -> None:
        if connection.host_key is None and not accept_any_host_key:
            raise HostKeyError(
                f"no host key for {connection.describe()}: give the guest's host key, "
                "or pass accept_any_host_key=True to trust whatever answers"
            )
        self.connection = connection
        self.namespace = namespace
        self.redact = (redact or Redactor()).extended([connection.private_key])
        self.directory = Path(tempfile.mkdtemp(prefix="plexcdn-ssh-"))
        self.master: subprocess.Popen[bytes] | None = None
        key_path = self.directory / "id"
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(openssh_private_key(connection.private_key))
        self.options = [
            "-F",
            "/dev/null",
            "-i",
            str(key_path),
            "-p",
            str(connection.port),
            "-l",
            connection.user,
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            f"ConnectTimeout={connection.per_dial_timeout}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"ControlPath={self.directory}/control",
        ]
        if connection.host_key is not None:
            known_hosts = self.directory / "known_hosts"
            known_hosts.write_text(known_hosts_line(connection.host, connection.port, connection.host_key))
            self.options += [
                "-o",
                f"UserKnownHostsFile={known_hosts}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"HostKeyAlgorithms={host_key_algorithms(connection.host_key)}",
            ]
        else:
            self.options += [
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=no",
            ]

    def _in_namespace(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv] if self.namespace else argv

    def __enter__(self) -> SshSession:
        try:
            self.dial()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dial(self) -> None:
        """Connect, retrying as the provider does; raises DialError or HostKeyError."""
        limit = self.connection.dial_error_limit
        delay = RETRY_DELAY_S
        attempt = 0
        last_error = ""
        while True:
            attempt += 1
            error = self._dial_once()
            if error is None:
                return
            last_error = self.redact(error)
            if any(marker in error for marker in HOST_KEY_FAILURES):
                raise HostKeyError(f"{self.connection.describe()} did not show the pinned host key: {last_error}")
            if limit != -1 and attempt > limit:
                raise DialError(
                    f"dialing {self.connection.describe()}: after {attempt - 1} failed attempts: {last_error}"
                )
            time.sleep(min(delay, RETRY_MAX_DELAY_S))
            delay *= RETRY_BACKOFF

    def _dial_once(self) -> str | None:
        control = self.directory / "control"
        control.unlink(missing_ok=True)
        stderr_path = self.directory / "master.err"
        with stderr_path.open("wb") as stderr:
            master = subprocess.Popen(
                self._in_namespace(["ssh", *self.options, "-o", "ControlMaster=yes", "-N", "-T", self.connection.host]),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.connection.per_dial_timeout + 5
        while time.monotonic() < deadline:
            if master.poll() is not None:
                return stderr_path.read_text(errors="replace").strip() or f"ssh exited {master.returncode}"
            if control.exists() and self._check():
                self.master = master
                return None
            time.sleep(0.1)
        _kill_group(master)
        return f"no connection within {self.connection.per_dial_timeout + 5} s"

    def _check(self) -> bool:
        result = subprocess.run(
            self._in_namespace(["ssh", *self.options, "-O", "check", self.connection.host]),
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0

    def run(self, command: str, stdin: str | bytes | None = None, timeout: float = COMMAND_TIMEOUT_S) -> CommandResult:
        """One exec session: `command` exactly as given (the login shell runs it with -c), stdin then EOF."""
        started = time.monotonic()
        returncode, out, err = self.run_bytes(command, stdin, timeout)
        return CommandResult(
            returncode, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - started
        )

    def run_bytes(
        self, command: str, stdin: str | bytes | None = None, timeout: float = COMMAND_TIMEOUT_S
    ) -> tuple[int, bytes, bytes]:
        """`run`, with stdout and stderr as bytes (for binary output such as a tar stream)."""
        if self.master is None:
            raise StepError("not connected")
        data = stdin.encode() if isinstance(stdin, str) else stdin
        process = subprocess.Popen(
            self._in_namespace(["ssh", *self.options, "-o", "ControlMaster=no", "-T", self.connection.host, command]),
            stdin=subprocess.PIPE if data else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(input=data or None, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise StepError(f"{self.connection.describe()}: command did not finish within {timeout:.0f} s") from None
        return process.returncode, out, err

    def sftp(self, batch: Sequence[str], timeout: float = 600) -> CommandResult:
        if self.master is None:
            raise StepError("not connected")
        batch_file = self.directory / "sftp-batch"
        batch_file.write_text("".join(line + "\n" for line in batch))
        started = time.monotonic()
        # sftp takes the port as -P and the user in the destination; the rest of ssh's options as they are.
        options = _sftp_options(self.options)
        result = subprocess.run(
            self._in_namespace(
                [
                    "sftp",
                    *options,
                    "-o",
                    "ControlMaster=no",
                    "-b",
                    str(batch_file),
                    f"{self.connection.user}@{_sftp_host(self.connection.host)}",
                ]
            ),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        return CommandResult(
            result.returncode,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
            time.monotonic() - started,
        )

    def close(self) -> None:
        if self.master is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    self._in_namespace(["ssh", *self.options, "-O", "exit", self.connection.host]),
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
            _kill_group(self.master)
            self.master = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _sftp_options(ssh_options: list[str]) -> list[str]:
    options: list[str] = []
    iterator = iter(ssh_options)
    for option in iterator:
        value = next(iterator)
        if option == "-p":
            options += ["-P", value]
        elif option == "-l":
            continue
        else:
            options += [option, value]
    return options


def _sftp_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


# --- CopyToRemote ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyPlan:
    """The remote directories to make and the files to write, in the provider's order."""

    directories: tuple[str, ...]
    files: tuple[tuple[Path, str], ...]


RemoteKind = Literal["dir", "file", "none"]


def _remote_join(*parts: str) -> str:
    return posixpath.normpath(posixpath.join(*parts))


def plan_directory_copy(source: str, remote_path: str, remote_kinds: Mapping[str, RemoteKind]) -> CopyPlan:
    """What CopyToRemote does with a local directory `source` (a trailing slash meaning "its contents"),
    given the remote paths that exist (`remote_kinds`, by normalized path; missing means absent)."""
    local = Path(source)
    if not local.is_dir():
        raise StepError(f"copy source {source} is not a directory")

    def kind(path: str) -> RemoteKind:
        return remote_kinds.get(posixpath.normpath(path), "none")

    directories: list[str] = []

    def need_directory(path: str) -> None:
        if kind(path) == "file":
            raise StepError(f"remote path {path} exists but is not a directory")
        if kind(path) == "none":
            directories.append(path)

    top = posixpath.normpath(remote_path)
    # The provider's MkdirAll: missing parents too.
    missing = []
    current = top
    while current not in ("/", ".", "") and kind(current) == "none":
        missing.append(current)
        current = posixpath.dirname(current)
    if missing:
        directories.extend(reversed(missing))
    else:
        need_directory(top)
    destination = top
    if not source.endswith("/"):
        destination = _remote_join(top, local.name)
        need_directory(destination)
    files: list[tuple[Path, str]] = []
    for directory, subdirectories, names in _walk_sorted(local):
        relative = directory.relative_to(local)
        remote_directory = _remote_join(destination, str(relative)) if str(relative) != "." else destination
        for subdirectory in subdirectories:
            need_directory(_remote_join(remote_directory, subdirectory))
        for name in names:
            remote = _remote_join(remote_directory, name)
            if kind(remote) == "dir":
                raise StepError(f"failed to create remote file {remote}: it is a directory")
            files.append((directory / name, remote))
    return CopyPlan(tuple(directories), tuple(files))


def _walk_sorted(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    # Go's fs.WalkDir visits entries in lexical order; symlinks are followed like the provider's os.Open.
    for directory, subdirectories, names in os.walk(root, followlinks=True):
        subdirectories.sort()
        yield Path(directory), list(subdirectories), sorted(names)


def remote_paths_to_check(source: str, remote_path: str) -> list[str]:
    """Every remote path whose kind the plan depends on."""
    local = Path(source)
    top = posixpath.normpath(remote_path)
    paths = [top]
    current = posixpath.dirname(top)
    while current not in ("/", ".", ""):
        paths.append(current)
        current = posixpath.dirname(current)
    destination = top if source.endswith("/") else _remote_join(top, local.name)
    paths.append(destination)
    for directory, subdirectories, names in _walk_sorted(local):
        relative = directory.relative_to(local)
        remote_directory = _remote_join(destination, str(relative)) if str(relative) != "." else destination
        paths.extend(_remote_join(remote_directory, name) for name in [*subdirectories, *names])
    return list(dict.fromkeys(paths))


# One exec session reads NUL-separated paths on stdin and answers d/f/- for each (stat follows links, as SFTP's).
_KIND_PROBE: Final = (
    'while IFS= read -r -d \'\' p; do if [ -d "$p" ]; then echo d; elif [ -e "$p" ]; then echo f; else echo -; fi; done'
)


def _sftp_quote(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def copy_directory(session: SshSession, source: str, remote_path: str) -> CopyPlan:
    """CopyToRemote of a directory over an open session; returns what it did."""
    paths = remote_paths_to_check(source, remote_path)
    probe = session.run(f"bash -c {shlex.quote(_KIND_PROBE)}", stdin=b"".join(p.encode() + b"\0" for p in paths))
    answers = probe.stdout.split()
    if probe.returncode != 0 or len(answers) != len(paths):
        raise StepError(f"checking the remote paths failed: {session.redact(probe.stderr.strip())}")
    kinds: dict[str, RemoteKind] = {
        posixpath.normpath(path): {"d": "dir", "f": "file"}.get(answer, "none")  # type: ignore[misc]
        for path, answer in zip(paths, answers, strict=True)
    }
    plan = plan_directory_copy(source, remote_path, kinds)
    with tempfile.TemporaryDirectory(prefix="plexcdn-copy-") as staging_name:
        staging = Path(staging_name)
        batch = [f"mkdir {_sftp_quote(directory)}" for directory in plan.directories]
        for number, (local, remote) in enumerate(plan.files):
            # sftp sends the local file's mode; the provider sends none (the server uses 0666 & umask).
            staged = staging / str(number)
            shutil.copyfile(local, staged)
            staged.chmod(0o666)
            batch.append(f"put {_sftp_quote(str(staged))} {_sftp_quote(remote)}")
        if batch:
            result = session.sftp(batch)
            if result.returncode != 0:
                raise StepError(f"copying {source} to {remote_path} failed: {session.redact(result.stderr.strip())}")
    return plan


def source_digest(source: str) -> str:
    """A hash of a directory's names and contents, standing in for the archive hash the provider compares."""
    digest = hashlib.sha256(("contents" if source.endswith("/") else Path(source).name).encode())
    root = Path(source)
    for directory, _, names in _walk_sorted(root):
        for name in names:
            path = directory / name
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# --- steps -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandStep:
    """A `remote.Command`. `secret_inputs` names the inputs that arrived as secrets (e.g. "stdin")."""

    name: str
    connection: Connection
    create: str | None = None
    update: str | None = None
    delete: str | None = None
    stdin: str | None = field(default=None, repr=False)
    logging: Logging = "stdoutAndStderr"
    triggers: tuple[str, ...] = ()
    secret_inputs: frozenset[str] = frozenset()
    depends_on: tuple[str, ...] = ()

    def secrets(self) -> list[str]:
        values = [self.connection.private_key]
        for name in self.secret_inputs:
            value = getattr(self, name, None)
            if isinstance(value, str):
                values.append(value)
        return values

    def digest(self) -> str:
        """Changes when any input the provider diffs changes (triggers are kept apart: they replace)."""
        fields = {
            "connection": self.connection.digest_fields(),
            "create": self.create,
            "update": self.update,
            "delete": self.delete,
            "stdin_sha256": hashlib.sha256((self.stdin or "").encode()).hexdigest(),
            "logging": self.logging,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CopyStep:
    """A `remote.CopyToRemote` of a local directory (a `FileArchive` of a directory path)."""

    name: str
    connection: Connection
    source: str
    remote_path: str
    triggers: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()

    def secrets(self) -> list[str]:
        return [self.connection.private_key]

    def digest(self) -> str:
        return hashlib.sha256(f"{source_digest(self.source)}\0{self.remote_path}".encode()).hexdigest()


Step = CommandStep | CopyStep


@dataclass(frozen=True)
class StepRecord:
    """What ran for one step (for the log and for tests): never the output of a step that logs none."""

    name: str
    operation: Operation
    host: str
    returncode: int | None
    seconds: float
    stdout: str = ""
    stderr: str = ""


@dataclass
class Deployment:
    """The steps as last applied (the provider's state): their inputs' digests, for updates and destroy."""

    steps: dict[str, Step] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


HostKeyLookup = Callable[[Connection], str | None]


class Session(Protocol):
    """What the runner needs of a connection: `SshSession`, or a stand-in in unit tests."""

    redact: Redactor

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc: object) -> None: ...

    def run(
        self, command: str, stdin: str | bytes | None = None, timeout: float = COMMAND_TIMEOUT_S
    ) -> CommandResult: ...


# Opens a session: (connection with its host key settled, namespace, accept_any_host_key, redactor).
SessionFactory = Callable[[Connection, str | None, bool, Redactor], Session]
CopyFunction = Callable[[Session, str, str], CopyPlan]


def ssh_session(connection: Connection, namespace: str | None, accept_any_host_key: bool, redact: Redactor) -> Session:
    return SshSession(connection, namespace, accept_any_host_key=accept_any_host_key, redact=redact)


class StepRunner:
    """Runs steps as pulumi-command would, from `namespace`, logging to `log_path` (redacted).

    `host_key_for` supplies a host key for a connection that has none (the lab reads guests' keys from
    their consoles); when it returns None the step is refused unless `accept_any_host_key`.
    """

    def __init__(
        self,
        namespace: str | None = None,
        log_path: Path | None = None,
        *,
        host_key_for: HostKeyLookup | None = None,
        accept_any_host_key: bool = False,
        echo: Callable[[str], None] | None = None,
        session_factory: SessionFactory = ssh_session,
        copy: CopyFunction | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.copy = copy or _copy_over_ssh
        self.namespace = namespace
        self.log_path = log_path
        self.host_key_for = host_key_for
        self.accept_any_host_key = accept_any_host_key
        self.echo = echo
        self.records: list[StepRecord] = []

    def _log(self, redact: Redactor, text: str) -> None:
        line = redact(text)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a") as out:
                out.write(line + "\n")
        if self.echo is not None:
            self.echo(line)

    def _connection(self, step: Step) -> Connection:
        connection = step.connection
        if connection.host_key is None and self.host_key_for is not None:
            found = self.host_key_for(connection)
            if found is not None:
                connection = replace(connection, host_key=found)
        return connection

    def _session(self, step: Step, redact: Redactor) -> Session:
        return self.session_factory(self._connection(step), self.namespace, self.accept_any_host_key, redact)

    def apply(self, steps: Sequence[Step], previous: Deployment | None = None) -> Deployment:
        """`pulumi up`: create new steps, update changed ones, replace retriggered ones, delete dropped ones.

        A failing step raises its StepError with `deployment` set to what the stack's state would then hold:
        the steps that completed as they are now, the failed one and those not reached as they were before
        (so the next `apply` runs exactly those again)."""
        _check_order(steps)
        previous = previous or Deployment()
        current = Deployment()
        names = {step.name for step in steps}
        deleted: set[str] = set()
        try:
            for step in steps:
                old = previous.steps.get(step.name)
                if old is None:
                    self._run(step, "create")
                elif old.triggers != step.triggers:
                    self._run(step, "create")
                    self._run(old, "delete")
                elif previous.digests.get(step.name) != step.digest():
                    self._run(step, "update")
                else:
                    self._record(step, "unchanged", None, 0.0)
                current.steps[step.name] = step
                current.digests[step.name] = step.digest()
                current.order.append(step.name)
            for name in reversed(previous.order):
                if name not in names:
                    self._run(previous.steps[name], "delete")
                    deleted.add(name)
        except StepError as error:
            partial = Deployment(dict(current.steps), dict(current.digests), list(current.order))
            for name in previous.order:
                if name not in partial.steps and name not in deleted:
                    partial.steps[name] = previous.steps[name]
                    partial.digests[name] = previous.digests[name]
                    partial.order.append(name)
            error.deployment = partial
            raise
        return current

    def destroy(self, deployment: Deployment) -> None:
        """`pulumi destroy`: each command's delete, dependents first."""
        for name in reversed(deployment.order):
            self._run(deployment.steps[name], "delete")

    def _record(self, step: Step, operation: Operation, returncode: int | None, seconds: float, **output: str) -> None:
        self.records.append(StepRecord(step.name, operation, step.connection.host, returncode, seconds, **output))

    def _run(self, step: Step, operation: Operation) -> None:
        redact = Redactor(step.secrets())
        if isinstance(step, CopyStep):
            if operation == "delete":
                self._record(step, "unchanged", None, 0.0)  # CopyToRemote removes nothing on delete
                return
            self._copy(step, redact)
            return
        command = {"create": step.create, "update": step.update or step.create, "delete": step.delete}[operation]
        if command is None:
            self._record(step, operation, None, 0.0)
            return
        self._log(redact, f"{step.name}: {operation} on {step.connection.describe()}")
        with self._session(step, redact) as session:
            result = session.run(command, stdin=step.stdin)
        stdout = result.stdout if step.logging in ("stdout", "stdoutAndStderr") else ""
        stderr = result.stderr if step.logging in ("stderr", "stdoutAndStderr") else ""
        for stream, text in (("stdout", stdout), ("stderr", stderr)):
            for line in text.splitlines():
                self._log(redact, f"{step.name}: {stream}: {line}")
        self._record(step, operation, result.returncode, result.seconds, stdout=redact(stdout), stderr=redact(stderr))
        self._log(redact, f"{step.name}: {operation} exited {result.returncode} after {result.seconds:.1f} s")
        if result.returncode != 0:
            shown = (stdout + stderr) if step.logging != "none" else "(output withheld: the step logs none)"
            raise StepError(
                redact(f"{step.name}: {operation} exited {result.returncode}:\n{shown}"),
                result.stdout,
                result.stderr,
                result.returncode,
            )

    def _copy(self, step: CopyStep, redact: Redactor) -> None:
        self._log(redact, f"{step.name}: copy {step.source} to {step.connection.describe()}:{step.remote_path}")
        started = time.monotonic()
        with self._session(step, redact) as session:
            plan = self.copy(session, step.source, step.remote_path)
        seconds = time.monotonic() - started
        self._record(step, "copy", 0, seconds)
        self._log(redact, f"{step.name}: copied {len(plan.files)} files, made {len(plan.directories)} directories")


def _copy_over_ssh(session: Session, source: str, remote_path: str) -> CopyPlan:
    if not isinstance(session, SshSession):
        raise StepError("copying needs an SSH session")
    return copy_directory(session, source, remote_path)


def _check_order(steps: Sequence[Step]) -> None:
    seen: set[str] = set()
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise StepError("two steps share a name")
    for step in steps:
        for dependency in step.depends_on:
            if dependency in names and dependency not in seen:
                raise StepError(f"step {step.name} comes before {dependency}, which it depends on")
        seen.add(step.name)
