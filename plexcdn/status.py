"""`python -m plexcdn status`: each POP's health, then Plex's current sessions and the POP each came through.

The POPs are read over SSH with the admin's own key (admin.sshPublicKey is on every POP), their addresses and
pinned host keys taken from the stack's outputs (`pulumi stack output --json`): nothing secret leaves Pulumi.
Each POP answers every check in `POP_CHECKS` in one SSH session; a check is a shell command run on the POP and a
parser of its output, so more checks (certificate expiry, failover) add to the tuple without touching the rest.

Plex's sessions come from the Plex host over SSH where the stack manages it (a script there reads the server's
token and asks Plex on loopback), else from Plex's API with a token given in the environment. A session is
attributed by its client's identifier (Plex's Player machineIdentifier, the app's X-Plex-Client-Identifier),
which every POP logs: the address Plex shows cannot tell, since with the agent or WireGuard it is the viewer's own.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import ipaddress
import json
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from plexcdn import certificate_check, plex_settings, render, topology
from plexcdn.config import HOME_LAN_RANGES, StackConfig
from plexcdn.transcode.render import as_root

TOKEN_ENV: Final = "PLEXCDN_PLEX_TOKEN"  # noqa: S105 - the variable's name, not a token
VIEWER_PORT: Final = 443
ACCESS_LOG: Final = "/var/log/nginx/access.log"
DEFAULT_WINDOW_MINUTES: Final = 15
DEFAULT_LOG_LINES: Final = 20000
SSH_CONNECT_TIMEOUT_S: Final = 8
SSH_COMMAND_TIMEOUT_S: Final = 60
POP_READERS: Final = 8  # SSH sessions open at once
_SECTION: Final = "@@plexcdn-check "
_EXIT: Final = "@@plexcdn-exit "


class StatusError(RuntimeError):
    """Status cannot start: the message says which input is wrong and what would do."""


# --- SSH ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SshTarget:
    label: str
    host: str
    port: int
    user: str
    host_key: str  # "ssh-ed25519 AAAA...": the only key accepted for this host


@dataclass
class Ssh:
    """The system's ssh client, with the host keys the stack pinned and nothing else trusted."""

    identities: Sequence[Path] = ()
    options: Sequence[str] = ()
    connect_timeout_s: int = SSH_CONNECT_TIMEOUT_S

    def run(self, target: SshTarget, command: str, timeout: float = SSH_COMMAND_TIMEOUT_S) -> tuple[int, str, str]:
        """(exit status, stdout, stderr); 255 with ssh's reason when the host cannot be reached or is not the one
        the stack knows."""
        with tempfile.TemporaryDirectory(prefix="plexcdn-status-") as directory:
            known_hosts = Path(directory) / "known_hosts"
            host = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
            known_hosts.write_text(f"{host} {target.host_key}\n")
            argv = [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={known_hosts}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                f"HostKeyAlgorithms={target.host_key.split()[0]}",
                "-o",
                f"ConnectTimeout={self.connect_timeout_s}",
                "-p",
                str(target.port),
                *(option for identity in self.identities for option in ("-i", str(identity))),
                *self.options,
                f"{target.user}@{target.host}",
                command,
            ]
            try:
                result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                return 255, "", f"no answer within {timeout:.0f} s"
            return result.returncode, result.stdout, result.stderr


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --- the POPs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PopTarget:
    name: str
    role: str
    address: str
    host_key: str


def pop_targets(config: StackConfig, outputs: Mapping[str, Any]) -> list[PopTarget]:
    """The stack's POPs in tree order, with the address and host key the stack's outputs give each."""
    pops = outputs.get("pops")
    if not isinstance(pops, Mapping):
        raise StatusError(
            "the stack outputs have no `pops`: give the output of `pulumi stack output --json` (--outputs FILE, "
            "or - for stdin) for this stack"
        )
    targets = []
    for place in topology.places(config):
        entry = pops.get(place.pop.name)
        if not isinstance(entry, Mapping) or not entry.get("ipv4"):
            raise StatusError(f"the stack outputs name no address for POP {place.pop.name}: has `pulumi up` made it?")
        host_key = entry.get("hostKey")
        if not isinstance(host_key, str) or not host_key.startswith("ssh-"):
            raise StatusError(
                f"the stack outputs give no hostKey for POP {place.pop.name}: run `pulumi up` with this version once, "
                "so status can pin the POPs' SSH host keys"
            )
        targets.append(PopTarget(place.pop.name, place.role, str(entry["ipv4"]), host_key))
    return targets


@dataclass(frozen=True)
class LogLine:
    """One access-log line as status reads it: when, which port it came in on, which app sent it."""

    time: datetime.datetime
    port: int
    client_id: str


_ESCAPED: Final = re.compile(r"\\x([0-9A-Fa-f]{2})")
_LOG_LINE: Final = re.compile(r'\[(?P<time>[^\]]+)\] .* port=(?P<port>\d+) cid="(?P<cid>[^"]*)"$')


def parse_access_log(text: str) -> list[LogLine]:
    """The lines that name a client; lines without one (health checks, older formats) are skipped."""
    lines = []
    for raw in text.splitlines():
        match = _LOG_LINE.search(raw)
        if match is None or match["cid"] in ("", "-"):
            continue
        try:
            when = datetime.datetime.fromisoformat(match["time"])
        except ValueError:
            continue
        # nginx writes `"`, `\` and bytes outside printable ASCII as \xHH; a query parameter arrives URL-encoded.
        client = urllib.parse.unquote(_ESCAPED.sub(lambda hit: chr(int(hit[1], 16)), match["cid"]))
        lines.append(LogLine(when, int(match["port"]), client))
    return lines


@dataclass(frozen=True)
class StatusOptions:
    window: datetime.timedelta = datetime.timedelta(minutes=DEFAULT_WINDOW_MINUTES)
    log_lines: int = DEFAULT_LOG_LINES
    # Prepended to the POPs' paths, `{pop}` replaced by the POP's name: the labs keep each POP in a directory.
    pop_prefix: str = ""
    now: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    def prefixed(self, pop: str, path: str) -> str:
        return self.pop_prefix.replace("{pop}", pop) + path


class CheckFailedError(Exception):
    """A check ran but its answer is bad: the message says what."""


@dataclass(frozen=True)
class PopCheck:
    """One thing status asks each POP: a shell command run there, and what its output means."""

    name: str
    command: Callable[[StatusOptions, str], str]  # (options, POP name) -> the command
    parse: Callable[[str, int, StatusOptions], object]  # (stdout and stderr, exit status, options) -> value
    show: Callable[[object], str]  # the value in the text report
    to_json: Callable[[object], object] = lambda value: value


def _release_command(options: StatusOptions, pop: str) -> str:
    return f"curl -fsS --max-time 5 http://127.0.0.1{render.RELEASE_PATH}"


def _release_parse(output: str, status: int, options: StatusOptions) -> object:
    if status != 0:
        raise CheckFailedError(f"nginx does not answer {render.RELEASE_PATH}: {_last_line(output) or f'exit {status}'}")
    release = output.strip()
    if not re.fullmatch(r"[0-9a-f]{16}", release):
        raise CheckFailedError(f"nginx answers {render.RELEASE_PATH} with {release[:40]!r}, not a release")
    return release


def _access_log_command(options: StatusOptions, pop: str) -> str:
    return f"tail -n {options.log_lines} {options.prefixed(pop, ACCESS_LOG)}"


def _access_log_parse(output: str, status: int, options: StatusOptions) -> object:
    if status != 0:
        raise CheckFailedError(f"cannot read {ACCESS_LOG}: {_last_line(output) or f'exit {status}'}")
    since = options.now - options.window
    return [line for line in parse_access_log(output) if line.time >= since]


def _access_log_show(value: object) -> str:
    assert isinstance(value, list)
    clients = {line.client_id for line in value}
    return f"{len(value)} app requests from {len(clients)} apps recently"


def _access_log_json(value: object) -> object:
    assert isinstance(value, list)
    return {"recentRequests": len(value), "recentClients": len({line.client_id for line in value})}


@dataclass(frozen=True)
class CertificateState:
    not_after: datetime.datetime
    days_left: int  # as of the status run, not of the POP's last check


CERTIFICATE_STATE: Final = f"{render.CERTIFICATE_STATE_DIR}/{certificate_check.STATE_FILE}"


def _certificate_command(options: StatusOptions, pop: str) -> str:
    return f"cat {options.prefixed(pop, CERTIFICATE_STATE)}"


def _certificate_parse(output: str, status: int, options: StatusOptions) -> object:
    if status != 0:
        raise CheckFailedError(
            f"no certificate check yet ({CERTIFICATE_STATE}: {_last_line(output) or f'exit {status}'}); "
            f"{render.CERTIFICATE_CHECK_PROGRAM} runs hourly"
        )
    try:
        state = json.loads(output)
        if "error" in state:
            raise CheckFailedError(f"the certificate cannot be read: {state['error']}")
        expiry = datetime.datetime.strptime(state["notAfter"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckFailedError(f"{CERTIFICATE_STATE} is not what {render.CERTIFICATE_CHECK_PROGRAM} writes") from None
    now = options.now if options.now.tzinfo is not None else options.now.replace(tzinfo=datetime.UTC)
    return CertificateState(expiry, certificate_check.days_left(expiry.timestamp(), now.timestamp()))


def _certificate_show(value: object) -> str:
    assert isinstance(value, CertificateState)
    shown = f"certificate until {value.not_after:%Y-%m-%d} ({value.days_left} days)"
    if value.days_left < certificate_check.DEFAULT_WARN_DAYS:
        shown += ": renewal is failing, the POP answers its DNS health check unhealthy"
    return shown


def _certificate_json(value: object) -> object:
    assert isinstance(value, CertificateState)
    return {"notAfter": f"{value.not_after:%Y-%m-%dT%H:%M:%SZ}", "daysLeft": value.days_left}


RELEASE_CHECK: Final = PopCheck("release", _release_command, _release_parse, lambda value: f"release {value}")
CERTIFICATE_CHECK: Final = PopCheck(
    "certificate", _certificate_command, _certificate_parse, _certificate_show, _certificate_json
)
ACCESS_LOG_CHECK: Final = PopCheck(
    "accessLog", _access_log_command, _access_log_parse, _access_log_show, _access_log_json
)
POP_CHECKS: Final[tuple[PopCheck, ...]] = (RELEASE_CHECK, CERTIFICATE_CHECK, ACCESS_LOG_CHECK)


@dataclass
class PopHealth:
    name: str
    role: str
    address: str
    reachable: bool
    error: str = ""
    values: dict[str, object] = field(default_factory=dict)  # check name -> its value
    failures: dict[str, str] = field(default_factory=dict)  # check name -> what is wrong

    @property
    def healthy(self) -> bool:
        return self.reachable and not self.failures

    @property
    def release(self) -> str | None:
        value = self.values.get(RELEASE_CHECK.name)
        return value if isinstance(value, str) else None

    @property
    def recent_lines(self) -> list[LogLine] | None:
        value = self.values.get(ACCESS_LOG_CHECK.name)
        return value if isinstance(value, list) else None


def _composite(checks: Sequence[PopCheck], options: StatusOptions, pop: str) -> str:
    """One remote command answering every check, each section marked, each exit status kept."""
    parts = []
    for check in checks:
        parts.append(f"echo '{_SECTION}{check.name}'; ({check.command(options, pop)}) 2>&1; echo \"{_EXIT}$?\"")
    return "; ".join(parts)


def _sections(output: str) -> dict[str, tuple[str, int]]:
    sections: dict[str, tuple[str, int]] = {}
    name = None
    body: list[str] = []
    for line in output.splitlines():
        if line.startswith(_SECTION):
            name, body = line[len(_SECTION) :], []
        elif line.startswith(_EXIT) and name is not None:
            sections[name] = ("\n".join(body), int(line[len(_EXIT) :] or 1))
            name = None
        elif name is not None:
            body.append(line)
    return sections


def pop_health(
    target: PopTarget,
    ssh: Ssh,
    options: StatusOptions,
    checks: Sequence[PopCheck] = POP_CHECKS,
    user: str = "root",
) -> PopHealth:
    health = PopHealth(target.name, target.role, target.address, reachable=False)
    ssh_target = SshTarget(f"POP {target.name}", target.address, 22, user, target.host_key)
    status, stdout, stderr = ssh.run(ssh_target, _composite(checks, options, target.name))
    sections = _sections(stdout)
    if status == 255 or not sections:
        health.error = _last_line(stderr) or f"ssh exited {status}"
        return health
    health.reachable = True
    for check in checks:
        if check.name not in sections:
            health.failures[check.name] = "no answer"
            continue
        output, exit_status = sections[check.name]
        try:
            health.values[check.name] = check.parse(output, exit_status, options)
        except CheckFailedError as failure:
            health.failures[check.name] = str(failure)
    return health


# --- Plex's sessions -------------------------------------------------------------------------------------------


Decision = Literal["direct play", "direct stream", "transcode"]


@dataclass(frozen=True)
class PlexSession:
    user: str
    client_id: str
    product: str
    device: str
    address: str
    local: bool
    relayed: bool
    decision: Decision
    bitrate_kbps: int | None
    title: str


def _flag(value: object) -> bool:
    return value is True or str(value).lower() in ("1", "true")


def _decision(entry: Mapping[str, Any]) -> Decision:
    transcode = entry.get("TranscodeSession")
    if isinstance(transcode, Mapping):
        if transcode.get("videoDecision") == "transcode" or transcode.get("audioDecision") == "transcode":
            return "transcode"
        return "direct stream"
    return "direct play"


def _bitrate(entry: Mapping[str, Any]) -> int | None:
    session = entry.get("Session")
    if isinstance(session, Mapping) and str(session.get("bandwidth", "")).isdigit():
        return int(session["bandwidth"])
    media = entry.get("Media")
    if isinstance(media, list) and media and isinstance(media[0], Mapping):
        bitrate = str(media[0].get("bitrate", ""))
        if bitrate.isdigit():
            return int(bitrate)
    return None


def parse_sessions(document: Mapping[str, Any]) -> list[PlexSession]:
    """Plex's /status/sessions (JSON) as status shows it; the fields Plex leaves out read as unknown."""
    container = document.get("MediaContainer")
    if not isinstance(container, Mapping):
        raise ValueError("not a Plex MediaContainer")
    sessions = []
    for entry in container.get("Metadata") or []:
        if not isinstance(entry, Mapping):
            continue
        user = entry.get("User") if isinstance(entry.get("User"), Mapping) else {}
        player = entry.get("Player") if isinstance(entry.get("Player"), Mapping) else {}
        assert isinstance(user, Mapping) and isinstance(player, Mapping)
        title = str(entry.get("title", ""))
        if entry.get("grandparentTitle"):
            title = f"{entry['grandparentTitle']} - {title}"
        sessions.append(
            PlexSession(
                user=str(user.get("title", "?")),
                client_id=str(player.get("machineIdentifier", "")),
                product=str(player.get("product", "?")),
                device=str(player.get("title", "") or player.get("device", "")),
                address=str(player.get("address", "") or player.get("remotePublicAddress", "")),
                local=_flag(player.get("local")),
                relayed=_flag(player.get("relayed")),
                decision=_decision(entry),
                bitrate_kbps=_bitrate(entry),
                title=title,
            )
        )
    return sessions


def sessions_over_ssh(config: StackConfig, ssh: Ssh) -> list[PlexSession]:
    """From the managed Plex host: the script there reads the token and asks Plex on loopback."""
    host = plex_settings.managed_host(config)
    if host is None:
        raise StatusError("the stack does not manage the Plex host over SSH")
    target = SshTarget(f"the Plex host ({host.setting})", host.host, host.port, host.user, host.host_key)
    status, stdout, stderr = ssh.run(target, as_root(plex_settings.sessions_script(config), host.user))
    if status != 0:
        raise StatusError(f"{target.label} {host.user}@{host.host}: {_last_line(stderr) or f'exit {status}'}")
    try:
        return parse_sessions(json.loads(stdout))
    except ValueError as error:
        raise StatusError(f"{target.label} answered something that is not Plex's sessions ({error})") from None


def _plain_http_allowed(url: str) -> bool:
    """The token crosses plain HTTP only to a machine at home (a LAN address) or this one."""
    host = urllib.parse.urlsplit(url).hostname or ""
    return host == "localhost" or _on_a_lan(host)


def sessions_with_token(url: str, token: str, timeout: float = 15) -> list[PlexSession]:
    """From Plex's API at `url` with the server owner's token (in a header, never in the URL)."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https") or (scheme == "http" and not _plain_http_allowed(url)):
        raise StatusError(f"{url}: the token goes over HTTPS, or plain HTTP to a private address only")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url.rstrip("/") + plex_settings.SESSIONS_PATH,
        headers={"X-Plex-Token": token, "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310
            return parse_sessions(json.loads(reply.read()))
    except urllib.error.HTTPError as error:
        raise StatusError(f"Plex at {url} answered {plex_settings.SESSIONS_PATH} with HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise StatusError(f"Plex at {url} cannot be reached: {reason}") from None
    except ValueError as error:
        raise StatusError(f"Plex at {url} answered something that is not its sessions ({error})") from None


# --- which POP a session came through --------------------------------------------------------------------------

RouteKind = Literal["pop", "plex-relay", "bypass", "unknown"]


@dataclass(frozen=True)
class Route:
    kind: RouteKind
    pop: str | None
    detail: str


def attribute(session: PlexSession, pops: Sequence[PopHealth]) -> Route:
    """Where a session's requests come in: Plex's relay, the LAN, the POP whose log shows its app on the viewers'
    port most recently (else the POP that relayed it), or past the CDN."""
    if session.relayed:
        return Route("plex-relay", None, "through Plex's relay (capped at 1-2 Mbit/s), past the CDN")
    # Through a POP Plex sees a viewer's public address (or the hub's); a LAN address means the app is at home.
    if session.local or _on_a_lan(session.address):
        return Route("bypass", None, "BYPASSES the CDN: on your LAN")
    seen: list[tuple[datetime.datetime, PopHealth]] = []
    relayed: list[tuple[datetime.datetime, PopHealth]] = []
    for pop in pops:
        for line in pop.recent_lines or []:
            if line.client_id != session.client_id or not session.client_id:
                continue
            (seen if line.port == VIEWER_PORT else relayed).append((line.time, pop))
    if seen:
        _, pop = max(seen, key=lambda pair: pair[0])
        return Route("pop", pop.name, f"through POP {pop.name} ({pop.role})")
    if relayed:
        _, pop = max(relayed, key=lambda pair: pair[0])
        return Route("pop", pop.name, f"through POP {pop.name} ({pop.role}), relayed from a POP that was not read")
    unread = [pop.name for pop in pops if pop.recent_lines is None]
    if unread:
        return Route("unknown", None, f"not seen at the POPs that were read; {', '.join(unread)} could not be")
    return Route("bypass", None, "BYPASSES the CDN: direct to your home address")


def _on_a_lan(address: str) -> bool:
    """A home network's address (RFC 1918, CGNAT, ULA) or the machine's own; not merely "not global", which
    Python's is_private also says of documentation and benchmarking ranges."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    lan = any(parsed.version == network.version and parsed in network for network in HOME_LAN_RANGES)
    return lan or parsed.is_loopback or parsed.is_link_local


# --- the report ------------------------------------------------------------------------------------------------


@dataclass
class StatusReport:
    pops: list[PopHealth]
    plex_source: str  # how the sessions were read
    sessions: list[tuple[PlexSession, Route]] = field(default_factory=list)
    plex_error: str = ""

    @property
    def complete(self) -> bool:
        return all(pop.healthy for pop in self.pops) and not self.plex_error


def gather(
    config: StackConfig,
    targets: Sequence[PopTarget],
    ssh: Ssh,
    options: StatusOptions,
    *,
    plex_url: str | None = None,
    token: str | None = None,
    checks: Sequence[PopCheck] = POP_CHECKS,
) -> StatusReport:
    # POPs are read side by side: one that does not answer costs its connect timeout once, not per POP.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(POP_READERS, len(targets)))) as readers:
        pops = list(readers.map(lambda target: pop_health(target, ssh, options, checks), targets))
    report = StatusReport(pops, "")
    try:
        if plex_settings.managed_host(config) is not None:
            host = plex_settings.managed_host(config)
            assert host is not None
            report.plex_source = f"the Plex host over SSH ({host.user}@{host.host})"
            sessions = sessions_over_ssh(config, ssh)
        elif token:
            url = plex_url or config.shared_url
            report.plex_source = f"Plex's API at {url}"
            sessions = sessions_with_token(url, token)
        else:
            report.plex_source = "nowhere"
            raise StatusError(
                f"the stack does not manage the Plex host: give the server's token in {TOKEN_ENV} (e.g. "
                f"`{TOKEN_ENV}=$(pulumi config get plex-cdn:plexToken)`) to read Plex's sessions"
            )
    except StatusError as error:
        report.plex_error = str(error)
        return report
    report.sessions = [(session, attribute(session, pops)) for session in sessions]
    return report


def _rate(kbps: int | None) -> str:
    return "? Mbit/s" if kbps is None else f"{kbps / 1000:.1f} Mbit/s"


def report_text(report: StatusReport, checks: Sequence[PopCheck] = POP_CHECKS) -> str:
    lines = ["POPs"]
    for pop in report.pops:
        head = f"  {pop.name:<12} {pop.role:<4} {pop.address:<39}"
        if not pop.reachable:
            lines.append(f"{head} UNREACHABLE: {pop.error}")
            continue
        parts = []
        for check in checks:
            if check.name in pop.failures:
                parts.append(f"{check.name} FAILED: {pop.failures[check.name]}")
            elif check.name in pop.values:
                parts.append(check.show(pop.values[check.name]))
        lines.append(f"{head} reachable; " + "; ".join(parts))
    if report.plex_error:
        lines.append(f"Sessions: cannot be read: {report.plex_error}")
        return "\n".join(lines) + "\n"
    lines.append(f"Sessions ({len(report.sessions)}, from {report.plex_source})")
    for session, route in report.sessions:
        client = f"{session.product} on {session.device}" if session.device else session.product
        lines.append(
            f"  {session.user:<16} {client:<32} {session.address:<39} {session.decision:<13} "
            f"{_rate(session.bitrate_kbps):>12}  {route.detail}"
        )
    bypassing = sum(route.kind in ("bypass", "plex-relay") for _, route in report.sessions)
    if bypassing:
        lines.append(f"{bypassing} of {len(report.sessions)} sessions do not come through the CDN (docs/status.md)")
    return "\n".join(lines) + "\n"


def report_json(report: StatusReport, checks: Sequence[PopCheck] = POP_CHECKS) -> dict[str, object]:
    by_name = {check.name: check for check in checks}
    return {
        "pops": [
            {
                "name": pop.name,
                "role": pop.role,
                "address": pop.address,
                "reachable": pop.reachable,
                **({"error": pop.error} if pop.error else {}),
                "checks": {
                    name: {"ok": True, "value": by_name[name].to_json(value)} for name, value in pop.values.items()
                }
                | {name: {"ok": False, "error": failure} for name, failure in pop.failures.items()},
            }
            for pop in report.pops
        ],
        "plex": {"source": report.plex_source, **({"error": report.plex_error} if report.plex_error else {})},
        "sessions": [
            {
                "user": session.user,
                "clientId": session.client_id,
                "product": session.product,
                "device": session.device,
                "address": session.address,
                "decision": session.decision,
                "bitrateKbps": session.bitrate_kbps,
                "title": session.title,
                "route": route.kind,
                "pop": route.pop,
                "detail": route.detail,
            }
            for session, route in report.sessions
        ],
    }


def read_outputs(source: str) -> Mapping[str, Any]:
    """The stack's outputs, as `pulumi stack output --json` prints them, from a file or stdin (`-`)."""
    try:
        text = Path(source).read_text() if source != "-" else sys.stdin.read()
        document = json.loads(text)
    except (OSError, ValueError) as error:
        raise StatusError(f"--outputs {source}: not the JSON `pulumi stack output --json` prints ({error})") from None
    if not isinstance(document, Mapping):
        raise StatusError(f"--outputs {source}: not the JSON `pulumi stack output --json` prints")
    return document
