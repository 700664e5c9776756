"""Boot lab guests: Debian 13 VMs under QEMU, each booting the program's user_data from a NoCloud seed.

A guest is 1 vCPU and 1 GiB (the smallest POP size), its disk a copy-on-write overlay of the base
image (`labs.guest_image`), its serial console written to `console.log`. Its NICs, as on a Droplet:
eth0 on the lab bridge (a tap moved into the lab namespace once QEMU holds it), eth1 QEMU's
restricted user-mode network whose only open port is the package cache (`labs.guest_environment`).

`/dev/kvm` exists on the lab machine but KVM guests hang before their first console line there:
`choose_accelerator` probes KVM with a kernel that must print within a few seconds and otherwise
uses TCG. `PLEXCDN_LAB_ACCEL=tcg|kvm` skips the probe.

Lab-side access uses `labs.remote_steps.SshSession`: the lab's private key and a pinned host key (the
guest prints its host keys to the console on first boot; `Guest.host_keys()` reads them there).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from labs import guest_environment as env
from labs.guest_image import BaseImage
from labs.netns import LabError
from labs.remote_steps import CommandResult, Connection, SshSession

ACCEL_VARIABLE: Final = "PLEXCDN_LAB_ACCEL"
KVM_PROBE_SECONDS: Final = 10
MEMORY_MIB: Final = 1024
CPUS: Final = 1
TAP_READY_SECONDS: Final = 10
STOP_SECONDS: Final = 60
CACHE_RELAY: Final = Path(__file__).resolve().with_name("cache_relay.py")
KERNEL_COMMAND_LINE: Final = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
HOST_KEYS_BEGIN: Final = "-----BEGIN SSH HOST KEY KEYS-----"
HOST_KEYS_END: Final = "-----END SSH HOST KEY KEYS-----"
# getty's prompt starts a line; kernel or cloud-init output may follow it on the same line.
LOGIN_PROMPT: Final = re.compile(rb"^\r?(?!Last )[\w.-]+ login: ", re.MULTILINE)
CLOUD_INIT_FINISHED: Final = re.compile(rb"Cloud-init v\. \S+ finished at")
BOOT_MARKS: Final = {"login": LOGIN_PROMPT, "cloud-init": CLOUD_INIT_FINISHED}
ACCEL_VERDICT_FILE: Final = Path("/run/plexcdn-lab-accelerator.json")


def qemu_missing() -> str | None:
    missing = [tool for tool in ("qemu-system-x86_64", "qemu-img", "cloud-localds") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (Debian packages qemu-system-x86, qemu-utils, cloud-image-utils)"
    return None


def choose_accelerator(kernel: Path, scratch: Path, verdict_file: Path = ACCEL_VERDICT_FILE) -> str:
    """ "kvm" when a KVM guest prints its first console line within KVM_PROBE_SECONDS, else "tcg". The
    verdict is kept for the machine's current boot (a kernel or module change comes with a reboot)."""
    forced = os.environ.get(ACCEL_VARIABLE)
    if forced in ("kvm", "tcg"):
        return forced
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with contextlib.suppress(OSError, ValueError):
        kept = json.loads(verdict_file.read_text())
        if kept.get("boot_id") == boot_id and kept.get("accelerator") in ("kvm", "tcg"):
            return str(kept["accelerator"])
    accelerator = "kvm" if _kvm_prints(kernel, scratch) else "tcg"
    with contextlib.suppress(OSError):
        verdict_file.write_text(json.dumps({"boot_id": boot_id, "accelerator": accelerator}))
    return accelerator


def _kvm_prints(kernel: Path, scratch: Path) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    scratch.mkdir(parents=True, exist_ok=True)
    console = scratch / "kvm-probe.log"
    console.unlink(missing_ok=True)
    probe = subprocess.Popen(
        [
            *("qemu-system-x86_64", "-accel", "kvm", "-m", "256", "-smp", "1", "-kernel", str(kernel)),
            *("-append", "console=ttyS0 panic=-1", "-no-reboot", "-nodefaults"),
            *("-serial", f"file:{console}", "-display", "none", "-monitor", "none"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + KVM_PROBE_SECONDS
        while time.monotonic() < deadline and probe.poll() is None:
            if console.exists() and b"Linux version" in console.read_bytes():
                return True
            time.sleep(0.2)
        return False
    finally:
        _kill_process_group(probe)


def _kill_process_group(process: subprocess.Popen[bytes], grace: float = 5) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def qmp(socket_path: Path, command: str, arguments: dict[str, Any] | None = None, timeout: float = 5) -> Any:
    """One QMP command on a guest's monitor socket; returns its "return" value."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(socket_path))
        stream = connection.makefile("rwb")

        def send(execute: str, args: dict[str, Any] | None = None) -> Any:
            message: dict[str, Any] = {"execute": execute}
            if args:
                message["arguments"] = args
            stream.write(json.dumps(message).encode() + b"\n")
            stream.flush()
            while True:
                line = stream.readline()
                if not line:
                    raise LabError(f"QMP {execute}: the monitor closed the connection")
                reply = json.loads(line)
                if "return" in reply:
                    return reply["return"]
                if "error" in reply:
                    raise LabError(f"QMP {execute}: {reply['error'].get('desc', reply['error'])}")

        stream.readline()  # the greeting
        send("qmp_capabilities")
        return send(command, arguments)


@dataclass(frozen=True)
class GuestSpec:
    """One VM: its name (file names, default hostname), the user_data bytes as the program made them,
    and its slot on the lab network."""

    name: str
    user_data: bytes = field(repr=False)
    index: int
    hostname: str | None = None
    instance_id: str | None = None
    memory_mib: int = MEMORY_MIB
    cpus: int = CPUS

    @property
    def identity(self) -> env.GuestIdentity:
        return env.GuestIdentity(self.instance_id or f"plexcdn-lab-{self.name}", self.hostname or self.name)


@dataclass(frozen=True)
class CloudInitStatus:
    status: str
    errors: tuple[str, ...]
    recoverable_errors: dict[str, list[str]]
    raw: dict[str, Any]

    @property
    def clean(self) -> bool:
        return self.status == "done" and not self.errors and not self.recoverable_errors


@dataclass
class Guest:
    """A guest and its files under `directory`; `start()` boots it, `stop()` always ends it."""

    spec: GuestSpec
    image: BaseImage
    directory: Path
    namespace: str
    cache_port: int
    accelerator: str = "tcg"
    bridge: str = "br0"
    tap_prefix: str = "pcv-"
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    _host_keys: tuple[str, ...] = ()
    boot_seen: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def address(self) -> str:
        return str(env.guest_address(self.spec.index))

    @property
    def tap(self) -> str:
        return f"{self.tap_prefix}tap{self.spec.index}"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def qmp_socket(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def overlay(self) -> Path:
        return self.directory / "disk.qcow2"

    @property
    def seed(self) -> Path:
        return self.directory / "seed.img"

    def qemu_command(self) -> list[str]:
        cache_forward = (
            f"tcp:{env.CACHE_GUEST_ADDRESS}:{env.CACHE_GUEST_PORT}-"
            f"cmd:{sys.executable} -I -S {CACHE_RELAY} {self.cache_port}"
        )
        uplink = f"user,id=uplink,net={env.UPLINK_SUBNET},ipv6=off,restrict=on,guestfwd={cache_forward}"
        return [
            "qemu-system-x86_64",
            *("-name", f"plexcdn-lab-{self.name}", "-accel", self.accelerator, "-cpu", "max"),
            *("-m", str(self.spec.memory_mib), "-smp", str(self.spec.cpus), "-nodefaults", "-no-user-config"),
            *("-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd), "-append", KERNEL_COMMAND_LINE),
            *("-drive", f"file={self.overlay},if=virtio,format=qcow2,cache=unsafe,discard=unmap"),
            *("-drive", f"file={self.seed},if=virtio,format=raw,readonly=on"),
            *("-netdev", f"tap,id=lab,ifname={self.tap},script=no,downscript=no"),
            # No option ROM: the kernel boots directly, and Debian installs the iPXE ROMs only as a recommendation.
            *("-device", f"virtio-net-pci,netdev=lab,mac={env.lab_mac(self.spec.index)},romfile="),
            *("-netdev", uplink),
            *("-device", f"virtio-net-pci,netdev=uplink,mac={env.uplink_mac(self.spec.index)},romfile="),
            *("-device", "virtio-rng-pci"),
            *("-serial", f"file:{self.console_log}", "-display", "none", "-monitor", "none"),
            *("-qmp", f"unix:{self.qmp_socket},server=on,wait=off"),
        ]

    def write_seed(self) -> None:
        seed_dir = self.directory / "seed"
        seed_dir.mkdir(parents=True, exist_ok=True)
        (seed_dir / "user-data").write_bytes(self.spec.user_data)
        (seed_dir / "meta-data").write_text(env.meta_data(self.spec.identity))
        (seed_dir / "network-config").write_text(env.network_config(self.spec.index))
        result = subprocess.run(
            [
                *("cloud-localds", "-N", str(seed_dir / "network-config"), str(self.seed)),
                *(str(seed_dir / "user-data"), str(seed_dir / "meta-data")),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise LabError(f"cloud-localds for guest {self.name}: {result.stderr.strip()}")
        # The user_data may hold secrets; only the seed image needs them from here on.
        (seed_dir / "user-data").unlink()
        self.seed.chmod(0o600)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        self.console_log.unlink(missing_ok=True)
        self.qmp_socket.unlink(missing_ok=True)
        self.image.overlay(self.overlay)
        self.write_seed()
        with (self.directory / "qemu.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.qemu_command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self.started_at = time.monotonic()
        self.boot_seen = {}
        (self.directory / "qemu.pid").write_text(str(self.process.pid))
        self._attach_tap()

    def _attach_tap(self) -> None:
        """Move QEMU's tap into the lab namespace onto the bridge; QEMU keeps its descriptor."""
        deadline = time.monotonic() + TAP_READY_SECONDS
        while not Path(f"/sys/class/net/{self.tap}").exists():
            if self.process is not None and self.process.poll() is not None:
                raise LabError(f"QEMU for guest {self.name} exited: {self._qemu_log_tail()}")
            if time.monotonic() > deadline:
                raise LabError(f"QEMU for guest {self.name} made no tap {self.tap} in {TAP_READY_SECONDS} s")
            time.sleep(0.05)
        _ip("link", "set", self.tap, "netns", self.namespace)
        _ip("-n", self.namespace, "link", "set", self.tap, "master", self.bridge, "up")

    def _qemu_log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "qemu.log").read_text(errors="replace")[-2000:]
        return ""

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def console_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.console_log.read_bytes().decode(errors="replace")
        return ""

    def wait_for_console(self, pattern: re.Pattern[bytes], timeout: float, after: int = 0) -> float:
        """Seconds from the start until the console shows `pattern` (searched from byte `after` on)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise LabError(f"guest {self.name} stopped; console:\n{self.console_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if pattern.search(self.console_log.read_bytes(), after):
                    return time.monotonic() - self.started_at
            time.sleep(0.5)
        raise LabError(
            f"guest {self.name}: no {pattern.pattern!r} on the console within {timeout:.0f} s; "
            f"console ends:\n{self.console_text()[-3000:]}"
        )

    def poll_boot(self) -> dict[str, float]:
        """Seconds from the start at which the console first showed the login prompt ("login") and
        cloud-init's "finished" line ("cloud-init"), as far as seen so far; call it often."""
        if not self.running():
            raise LabError(f"guest {self.name} stopped; console:\n{self.console_text()[-3000:]}")
        with contextlib.suppress(OSError):
            console = self.console_log.read_bytes()
            for name, pattern in BOOT_MARKS.items():
                if name not in self.boot_seen and pattern.search(console):
                    self.boot_seen[name] = time.monotonic() - self.started_at
        return dict(self.boot_seen)

    def wait_for_boot(self, timeout: float) -> tuple[float, float]:
        """Seconds until the login prompt and until cloud-init finished (polled twice a second)."""
        wait_for_boots([self], timeout)
        return self.boot_seen["login"], self.boot_seen["cloud-init"]

    def console_size(self) -> int:
        with contextlib.suppress(OSError):
            return self.console_log.stat().st_size
        return 0

    def host_keys(self, timeout: float = 1800) -> tuple[str, ...]:
        """The host public keys cloud-init printed on the console at first boot (authorized_keys form)."""
        if not self._host_keys:
            self.wait_for_console(re.compile(re.escape(HOST_KEYS_END).encode()), timeout)
            keys = console_host_keys(self.console_text())
            if not keys:
                raise LabError(f"guest {self.name} printed no host keys between the console markers")
            self._host_keys = keys
        return self._host_keys

    def host_key(self, key_type: str = "ssh-ed25519", timeout: float = 1800) -> str:
        for key in self.host_keys(timeout):
            if key.startswith(key_type + " "):
                return key
        raise LabError(f"guest {self.name} printed no {key_type} host key")

    def connection(self, private_key: str, host_key: str | None = None, user: str = "root", **extra: Any) -> Connection:
        return Connection(self.address, private_key, user=user, host_key=host_key, **extra)

    def session(
        self,
        private_key: str,
        host_key: str | None = None,
        *,
        accept_any_host_key: bool = False,
        dial_error_limit: int = 60,
    ) -> SshSession:
        """An SSH session from the lab namespace (use as a context manager); refuses without a host key
        unless `accept_any_host_key`."""
        connection = self.connection(private_key, host_key, dial_error_limit=dial_error_limit)
        return SshSession(connection, self.namespace, accept_any_host_key=accept_any_host_key)

    def run(
        self,
        command: str,
        private_key: str,
        host_key: str | None,
        stdin: str | bytes | None = None,
        timeout: float = 600,
        *,
        accept_any_host_key: bool = False,
    ) -> CommandResult:
        with self.session(private_key, host_key, accept_any_host_key=accept_any_host_key) as session:
            return session.run(command, stdin=stdin, timeout=timeout)

    def cloud_init_status(self, private_key: str, host_key: str, timeout: float = 900) -> CloudInitStatus:
        """`cloud-init status --wait --long`, once cloud-init has finished (or failed)."""
        result = self.run("cloud-init status --wait --format json", private_key, host_key, timeout=timeout)
        try:
            raw = json.loads(result.stdout)
        except ValueError:
            raise LabError(f"cloud-init status on {self.name}: {result.stdout[-500:]} {result.stderr[-500:]}") from None
        return CloudInitStatus(
            str(raw.get("status") or raw.get("extended_status")),
            tuple(raw.get("errors") or ()),
            dict(raw.get("recoverable_errors") or {}),
            raw,
        )

    def boot_id(self, private_key: str, host_key: str) -> str:
        return self.run("cat /proc/sys/kernel/random/boot_id", private_key, host_key, timeout=60).stdout.strip()

    def reboot(self, private_key: str, host_key: str, timeout: float = 600) -> float:
        """Reboot from inside (`systemctl reboot`, as a person would) and wait until SSH answers from the
        new boot; returns the seconds that took."""
        before = self.boot_id(private_key, host_key)
        started = time.monotonic()
        offset = self.console_size()
        with contextlib.suppress(LabError):
            # The connection may drop before the command's exit status arrives.
            self.run("systemctl reboot", private_key, host_key, timeout=60)
        self.wait_for_console(LOGIN_PROMPT, timeout, after=offset)
        deadline = started + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(LabError):
                if self.boot_id(private_key, host_key) not in ("", before):
                    return time.monotonic() - started
            time.sleep(2)
        raise LabError(f"guest {self.name} did not come back over SSH within {timeout:.0f} s of its reboot")

    def reset(self) -> None:
        """A hard reset, as a provider's power cycle."""
        qmp(self.qmp_socket, "system_reset")

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """ACPI power-off, then QEMU's quit, then SIGKILL; always leaves the process gone."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(OSError, LabError, ValueError):
                qmp(self.qmp_socket, "system_powerdown")
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError, LabError, ValueError):
                    qmp(self.qmp_socket, "quit")
                _kill_process_group(self.process)
        (self.directory / "qemu.pid").unlink(missing_ok=True)
        self.qmp_socket.unlink(missing_ok=True)

    def kill(self) -> None:
        if self.process is not None:
            _kill_process_group(self.process, grace=2)
        (self.directory / "qemu.pid").unlink(missing_ok=True)

    def remove_disk(self) -> None:
        self.overlay.unlink(missing_ok=True)
        self.seed.unlink(missing_ok=True)


def console_host_keys(console: str) -> tuple[str, ...]:
    """The keys between cloud-init's "SSH HOST KEY KEYS" markers on a console (the first boot's)."""
    begin = console.find(HOST_KEYS_BEGIN)
    end = console.find(HOST_KEYS_END, begin)
    if begin < 0 or end < 0:
        return ()
    block = console[begin + len(HOST_KEYS_BEGIN) : end]
    return tuple(
        " ".join(match.groups()) for match in re.finditer(r"((?:ssh|ecdsa)-[\w@.-]+) (AAAA[0-9A-Za-z+/=]+)", block)
    )


def qemu_running(directory: Path) -> bool:
    """Whether the QEMU recorded in a guest directory (qemu.pid) still runs."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((directory / "qemu.pid").read_text())
        return b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def kill_recorded_guests(state_dir: Path) -> list[int]:
    """Kill QEMU processes recorded under `state_dir` (qemu.pid files) by a lab that is gone."""
    killed = []
    for pid_file in state_dir.glob("**/qemu.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text())
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
            # Only a QEMU started for this very directory: a reused pid stays untouched.
            if b"qemu-system" in command_line and str(pid_file.parent).encode() in command_line:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
        pid_file.unlink(missing_ok=True)
    deadline = time.monotonic() + 10
    while killed and time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in killed):
        time.sleep(0.1)
    return killed


def wait_for_boots(guests: Sequence[Guest], timeout: float) -> None:
    """Poll every guest's console until each has shown its login prompt and cloud-init's end, so each
    guest's times are its own however many boot at once."""
    deadline = time.monotonic() + timeout
    while True:
        pending = [guest for guest in guests if len(guest.poll_boot()) < len(BOOT_MARKS)]
        if not pending:
            return
        if time.monotonic() > deadline:
            guest = pending[0]
            missing = ", ".join(name for name in BOOT_MARKS if name not in guest.boot_seen)
            raise LabError(
                f"guest {guest.name}: no {missing} on the console within {timeout:.0f} s; "
                f"console ends:\n{guest.console_text()[-3000:]}"
            )
        time.sleep(0.5)
