#!/usr/bin/python3 -I
# plexcdn-transcode-dispatcher
"""Runs Plex's transcoder on a slave over SSH, standing in for "Plex Transcoder" on the Plex server.

One file, standard library only: it is copied over the transcoder on the Plex server (the real binary
becomes "Plex Transcoder.real") and onto every slave, where the origin's SSH key may run nothing but
its guard. The slaves see the media and the transcode directory at the same paths (shared storage),
run Plex as the same UID/GID and have the same Plex version.

  "Plex Transcoder" ARGS...                      dispatch: how Plex calls it
  dispatcher.py --remote-guard [--config PATH]   on a slave: the forced command of the origin's key
  dispatcher.py --authorized-keys-line PUBKEY_FILE [--guard PATH] [--python PATH] [--config PATH]
                [--from PATTERNS] [--plex-port N]  the slave's authorized_keys line for that key
  dispatcher.py --install PLEX_DIR               put this file in place of "Plex Transcoder" (again
                                                 after every Plex update; safe to repeat)
  dispatcher.py --status                         hosts marked bad and where transcodes ran

The configuration is JSON, read from plexcdn-transcode.json beside this file or from the file that
PLEXCDN_TRANSCODE_CONFIG names.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import FrameType

DISPATCHER_MARK = b"# plexcdn-transcode-dispatcher"
CONFIG_ENV = "PLEXCDN_TRANSCODE_CONFIG"
CONFIG_NAME = "plexcdn-transcode.json"
GUARD_FLAG = "--remote-guard"
STARTED_MARKER = b"plexcdn-guard: started\n"
REFUSED_PREFIX = b"plexcdn-guard: refused: "
GUARD_REFUSED_EXIT = 254
HEADER_LIMIT = 4 * 1024 * 1024
REDACTED = "<redacted>"
TRANSCODER_NAME = "Plex Transcoder"
REAL_SUFFIX = ".real"
DEFAULT_VERSION_COMMAND = ("dpkg-query", "--showformat=${Version}", "--show", "plexmediaserver")
DEFAULT_PLEX_DIR = "/usr/lib/plexmediaserver"
DEFAULT_APP_DATA_DIR = "/var/lib/plexmediaserver/Library/Application Support/Plex Media Server"
SECRET_ENV_NAME = re.compile(r"TOKEN", re.IGNORECASE)
TOKEN_IN_TEXT = re.compile(
    r"(?i)(x[-_]plex[-_]token)((?:%3D|[\"']?\s*[=:]\s*[\"']?|\s+))([^\s&\"',;}\]]+)",
)
# ssh binds "<ControlPath>.<16 random chars>" before renaming it; a sun_path holds 108 bytes.
MAX_CONTROL_PATH = 108 - 18
# Plex's FFmpeg hands these codecs to EasyAudioEncoder (libavcodec/eae.c in Plex's published FFmpeg source:
# decoders ac3_eae, eac3_eae, truehd_eae, mlp_eae; encoders ac3_eae, eac3_eae), through files in a watch folder
# (EAE_ROOT, /tmp/pms-<uuid>/EasyAudioEncoder) that only the Plex server's own EAE process serves.
EAE_CODEC = re.compile(r"[a-z0-9]+_eae")
CODEC_OPTION = re.compile(r"-(?:c|codec|acodec)(?::\S*)?")
EAE_OPTION = re.compile(r"-eae_(?:prefix|root)(?::\S*)?")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or has a wrong value; the message says which."""


class ProbeError(RuntimeError):
    """A slave did not answer the probe; the message says what ssh or the guard reported."""


class UsageError(ValueError):
    """A command line this file does not accept."""


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Slave:
    name: str
    host: str
    port: int = 22
    user: str = "plex"
    identity_file: str = ""
    python: str = "/usr/bin/python3"
    guard_path: str = "/opt/plexcdn/dispatcher.py"


@dataclass(frozen=True)
class Config:
    slaves: tuple[Slave, ...] = ()
    # On the origin: the real transcoder to exec when no slave is good. Empty: this file's path + ".real".
    local_transcoder: str = ""
    # On a slave: the only program the guard runs.
    transcoder: str = "/usr/lib/plexmediaserver/Plex Transcoder"
    plex_version: str = ""
    version_command: tuple[str, ...] = DEFAULT_VERSION_COMMAND
    known_hosts: str = "/etc/plexcdn/known_hosts"
    state_dir: str = "/var/lib/plexcdn-transcode"
    log_path: str = ""
    bad_host_seconds: float = 60.0
    # The load is a one-minute average: a probe a few seconds old says as much as a new one, and saves a round trip.
    probe_cache_seconds: float = 10.0
    connect_timeout: int = 2
    control_persist_seconds: int = 300
    kill_grace_seconds: float = 3.0
    require_same_ids: bool = True
    # The transcoder reports to Plex at http://127.0.0.1:<port>; each slave's master connection forwards that
    # port on the slave's loopback back to the origin. 0: no forward.
    plex_port: int = 32400
    ssh: str = "ssh"
    loadavg_path: str = "/proc/loadavg"
    cpu_count: int = 0
    # What a transcode may name (see "What a transcode may ask for"): the shared directories it reads and writes,
    # and where Plex keeps its app data and its own files. Empty lists: no path at all.
    app_data_dir: str = DEFAULT_APP_DATA_DIR
    plex_dir: str = DEFAULT_PLEX_DIR
    read_dirs: tuple[str, ...] = ()
    write_dirs: tuple[str, ...] = ()

    def real_local_transcoder(self) -> str:
        return self.local_transcoder or os.path.abspath(__file__) + REAL_SUFFIX


_SLAVE_TYPES: dict[str, type] = {
    "name": str,
    "host": str,
    "port": int,
    "user": str,
    "identity_file": str,
    "python": str,
    "guard_path": str,
}
_CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {
    "slaves": list,
    "local_transcoder": str,
    "transcoder": str,
    "plex_version": str,
    "version_command": list,
    "known_hosts": str,
    "state_dir": str,
    "log_path": str,
    "bad_host_seconds": (int, float),
    "probe_cache_seconds": (int, float),
    "connect_timeout": int,
    "control_persist_seconds": int,
    "kill_grace_seconds": (int, float),
    "require_same_ids": bool,
    "plex_port": int,
    "ssh": str,
    "loadavg_path": str,
    "cpu_count": int,
    "app_data_dir": str,
    "plex_dir": str,
    "read_dirs": list,
    "write_dirs": list,
}
_LIST_KEYS = ("slaves", "version_command", "read_dirs", "write_dirs")


def _check_keys(where: str, values: Mapping[str, Any], types: Mapping[str, type | tuple[type, ...]]) -> None:
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(types))}")
    for key, value in values.items():
        expected = types[key]
        # bool is an int in Python; a port of `true` is a typo, not a number.
        if isinstance(value, bool) and expected is not bool:
            raise ConfigError(f"{where}: {key} must be {_type_name(expected)}, not a boolean")
        if not isinstance(value, expected):
            raise ConfigError(f"{where}: {key} must be {_type_name(expected)}, not {type(value).__name__}")


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


def _parse_slave(raw: object, where: str) -> Slave:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object")
    _check_keys(where, raw, _SLAVE_TYPES)
    for required in ("name", "host"):
        if not raw.get(required):
            raise ConfigError(f"{where}: {required} is required")
    for word in ("host", "user"):
        # ssh would read a leading "-" as an option.
        if str(raw.get(word, "")).startswith("-") or any(char.isspace() for char in str(raw.get(word, ""))):
            raise ConfigError(f"{where}: {word} {raw[word]!r} may not start with '-' or hold spaces")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", raw["name"]):
        raise ConfigError(f"{where}: name {raw['name']!r} may hold only letters, digits, '_', '.', '-'")
    return Slave(**raw)


def _check_ranges(config: Config, where: str) -> None:
    if min(config.bad_host_seconds, config.kill_grace_seconds, config.probe_cache_seconds) < 0:
        raise ConfigError(f"{where}: bad_host_seconds, probe_cache_seconds and kill_grace_seconds must be >= 0")
    if not 0 <= config.plex_port <= 65535:
        raise ConfigError(f"{where}: plex_port must be a TCP port, or 0 for none")
    if config.connect_timeout < 1:
        raise ConfigError(f"{where}: connect_timeout must be at least 1 (second)")
    names = [slave.name for slave in config.slaves]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{where}: slave names must be unique; repeated: {', '.join(duplicates)}")


def parse_config(values: object, where: str = "config") -> Config:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: the top level must be a JSON object")
    _check_keys(where, values, _CONFIG_TYPES)
    slaves = [_parse_slave(raw, f"{where}: slaves[{index}]") for index, raw in enumerate(values.get("slaves", []))]
    version_command = values.get("version_command", list(DEFAULT_VERSION_COMMAND))
    if not version_command or not all(isinstance(word, str) for word in version_command):
        raise ConfigError(f"{where}: version_command must be a non-empty list of strings")
    directories: list[tuple[str, ...]] = []
    for key in ("read_dirs", "write_dirs"):
        listed = values.get(key, [])
        if not all(isinstance(item, str) and _is_clean_absolute(item) and item != "/" for item in listed):
            raise ConfigError(f"{where}: {key} must list absolute, normalised directories other than /")
        directories.append(tuple(listed))
    for key in ("app_data_dir", "plex_dir"):
        if key in values and not _is_clean_absolute(values[key]):
            raise ConfigError(f"{where}: {key} must be an absolute, normalised path")
    simple = {k: v for k, v in values.items() if k not in _LIST_KEYS}
    config = Config(
        slaves=tuple(slaves),
        version_command=tuple(version_command),
        read_dirs=directories[0],
        write_dirs=directories[1],
        **simple,
    )
    _check_ranges(config, where)
    return config


def config_path() -> Path:
    override = os.environ.get(CONFIG_ENV)
    return Path(override) if override else Path(os.path.abspath(__file__)).with_name(CONFIG_NAME)


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not JSON: {error}") from None
    return parse_config(values, str(path))


def config_as_json(config: Config) -> dict[str, Any]:
    """The configuration as the JSON object parse_config reads back."""
    values: dict[str, Any] = {}
    for item in fields(config):
        value = getattr(config, item.name)
        if item.name == "slaves":
            values["slaves"] = [{f.name: getattr(slave, f.name) for f in fields(slave)} for slave in value]
        elif item.name in ("version_command", "read_dirs", "write_dirs"):
            values[item.name] = list(value)
        else:
            values[item.name] = value
    return values


# --------------------------------------------------------------------------------------------------
# What a transcode may ask for
#
# The guard runs Plex's transcoder with the environment, arguments and working directory the origin sends.
# Whoever holds the dispatch key would otherwise choose a library to preload, files to overwrite and hosts to
# reach, as the slave's plex account. So both sides hold a request to the lists below, each entry with the
# reason Plex's transcoder needs it: the dispatcher forwards only the variables listed (and transcodes locally
# what a slave would refuse), and the guard refuses, and logs, any request naming anything else.


@dataclass(frozen=True)
class RequestPolicy:
    app_data_dir: str
    plex_dir: str
    read_dirs: tuple[str, ...]
    write_dirs: tuple[str, ...]
    plex_port: int

    @classmethod
    def of(cls, config: Config) -> RequestPolicy:
        return cls(config.app_data_dir, config.plex_dir, config.read_dirs, config.write_dirs, config.plex_port)


def _is_clean_absolute(path: str) -> bool:
    return path.startswith("/") and not path.startswith("//") and posixpath.normpath(path) == path.rstrip("/")


def _inside(path: str, directories: Sequence[str]) -> bool:
    """Whether the absolute PATH names something inside (or is) one of DIRECTORIES, read lexically."""
    if not _is_clean_absolute(path):
        return False
    clean = posixpath.normpath(path)
    return any(clean == root or clean.startswith(root.rstrip("/") + "/") for root in directories)


_SYSTEM_BIN_DIRS = frozenset({"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"})
_LOCALE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_WORD = re.compile(r"[A-Za-z0-9 ._()/+-]{0,64}")
_DIGITS = re.compile(r"[0-9]{1,9}")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def _env_path_list(value: str, _policy: RequestPolicy) -> bool:
    return all(entry in _SYSTEM_BIN_DIRS for entry in value.split(":"))


def _env_absolute(value: str, _policy: RequestPolicy) -> bool:
    return _is_clean_absolute(value)


def _env_codecs(value: str, policy: RequestPolicy) -> bool:
    return _inside(value, [posixpath.join(policy.app_data_dir, "Codecs")])


def _env_cache(value: str, policy: RequestPolicy) -> bool:
    return value.rstrip("/") == posixpath.join(policy.app_data_dir, "Cache")


def _env_resources(value: str, policy: RequestPolicy) -> bool:
    return value.rstrip("/") == posixpath.join(policy.plex_dir, "Resources")


def _env_plex_libraries(value: str, policy: RequestPolicy) -> bool:
    return all(
        entry.rstrip("/") in (policy.plex_dir, posixpath.join(policy.plex_dir, "lib")) for entry in value.split(":")
    )


def _env_application_support(value: str, policy: RequestPolicy) -> bool:
    return value.rstrip("/") == posixpath.dirname(policy.app_data_dir)


def _env_plex_home(value: str, policy: RequestPolicy) -> bool:
    return value.rstrip("/") == policy.plex_dir


def _env_token(value: str, _policy: RequestPolicy) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_-]{1,200}", value))


def _matches(pattern: re.Pattern[str]) -> Callable[[str, RequestPolicy], bool]:
    return lambda value, _policy: bool(pattern.fullmatch(value))


# Plex names these in the "Job running:" line it logs for every transcode, or its service starts with them.
# Anything else (LD_PRELOAD, LD_AUDIT, GCONV_PATH, OPENSSL_CONF, LIBVA_DRIVERS_PATH... all of which make a
# program load code from a path) is not forwarded and not accepted.
ENVIRONMENT_RULES: dict[str, tuple[Callable[[str, RequestPolicy], bool], str]] = {
    "X_PLEX_TOKEN": (_env_token, "the transcoder's progress reports to Plex carry it"),
    "FFMPEG_EXTERNAL_LIBS": (_env_codecs, "where Plex's codec libraries are: only inside the app data's Codecs"),
    "XDG_CACHE_HOME": (_env_cache, "fontconfig's cache for burnt-in subtitles: the app data's Cache"),
    "XDG_DATA_HOME": (_env_resources, "Plex's own fonts and data: its Resources directory"),
    "EAE_ROOT": (_env_absolute, "the directory the transcoder exchanges audio with the EasyAudioEncoder in"),
    "LD_LIBRARY_PATH": (_env_plex_libraries, "older Plex releases point it at Plex's own libraries, nowhere else"),
    "PATH": (_env_path_list, "the service's search path: the system's own directories only"),
    "HOME": (_env_absolute, "the plex account's home, as the service has it"),
    "TMPDIR": (_env_absolute, "where temporary files go"),
    "PLEX_MEDIA_SERVER_TMPDIR": (_env_absolute, "Plex's temporary directory"),
    "PLEX_MEDIA_SERVER_APPLICATION_SUPPORT_DIR": (_env_application_support, "the app data's parent"),
    "PLEX_MEDIA_SERVER_HOME": (_env_plex_home, "Plex's program directory"),
    "PLEX_MEDIA_SERVER_MAX_PLUGIN_PROCS": (_matches(_DIGITS), "a number from Plex's service"),
    "PLEX_MEDIA_SERVER_MAX_STACK_SIZE": (_matches(_DIGITS), "a number from Plex's service"),
    "PLEX_MEDIA_SERVER_INFO_VENDOR": (_matches(_WORD), "describes the server in Plex's reports"),
    "PLEX_MEDIA_SERVER_INFO_DEVICE": (_matches(_WORD), "describes the server in Plex's reports"),
    "PLEX_MEDIA_SERVER_INFO_MODEL": (_matches(_WORD), "describes the server in Plex's reports"),
    "PLEX_MEDIA_SERVER_INFO_PLATFORM_VERSION": (_matches(_WORD), "describes the server in Plex's reports"),
    "PLEX_MEDIA_SERVER_USER": (_matches(_NAME_CHARS), "the account Plex runs as"),
    "LANG": (_matches(_LOCALE), "the locale of messages and numbers"),
    "LANGUAGE": (_matches(_LOCALE), "the locale of messages"),
    "TZ": (_matches(re.compile(r"[A-Za-z0-9_+-]{1,32}(/[A-Za-z0-9_+-]{1,32}){0,2}")), "the time zone, by name"),
}
# LC_ALL, LC_CTYPE, LC_NUMERIC...: the locale, by name only.
_LOCALE_VARIABLE = re.compile(r"LC_[A-Z]{2,16}")


def environment_problems(environ: Mapping[str, str], policy: RequestPolicy) -> list[str]:
    problems = []
    for name in sorted(environ):
        value = environ[name]
        if _LOCALE_VARIABLE.fullmatch(name):
            rule = _matches(_LOCALE)
        elif name in ENVIRONMENT_RULES:
            rule = ENVIRONMENT_RULES[name][0]
        else:
            problems.append(f"environment variable {name} is not one Plex's transcoder is given")
            continue
        if not rule(value, policy):
            problems.append(f"environment variable {name} has a value the transcoder is never given")
    return problems


# What Plex sets for the transcoder itself: a transcode without it, or with another value, is not what Plex asked
# for, so the request goes as it is and a slave refuses it. The rest comes with Plex's service and is left out
# when a slave would not take it.
ESSENTIAL_VARIABLES = frozenset({"X_PLEX_TOKEN", "FFMPEG_EXTERNAL_LIBS", "XDG_CACHE_HOME", "XDG_DATA_HOME", "EAE_ROOT"})


def forwarded_environment(environ: Mapping[str, str], policy: RequestPolicy) -> dict[str, str]:
    """The variables of Plex's environment to send to a slave; the rest (the service's own) stay here."""
    forwarded = {}
    for name, value in environ.items():
        if name in ESSENTIAL_VARIABLES or not environment_problems({name: value}, policy):
            forwarded[name] = value
    return forwarded


@dataclass(frozen=True)
class TranscoderOption:
    takes_value: bool
    kind: str  # how its value is checked: value, input, output, report, format, filter
    why: str


def _options(kind: str, takes_value: bool, why: str, *names: str) -> dict[str, TranscoderOption]:
    return {name: TranscoderOption(takes_value, kind, why) for name in names}


# The options seen in Plex's transcoder command lines (its "Job running:" log lines, and what prt, kube-plex
# and clusterplex pass on), by what they do. An option may carry a stream specifier ("-codec:0", "-b:1").
# Not listed, so refused: options that read or write a file of their own (-filter_complex_script, -attach,
# -dump_attachment, -passlogfile, -vstats_file, -sdp_file, -report...), and hardware options: slaves are not
# set up for hardware transcoding, so such a transcode stays on the Plex server.
TRANSCODER_OPTIONS: dict[str, TranscoderOption] = {
    **_options("input", True, "the media or stream to transcode", "i"),
    **_options(
        "value",
        True,
        "reading the input: seek, probing, timestamps",
        "ss",
        "t",
        "to",
        "analyzeduration",
        "probesize",
        "fflags",
        "max_delay",
        "stream_loop",
        "itsoffset",
        "sub_charenc",
        "fix_sub_duration",
        "canvas_size",
        "ignore_unknown",
        "avoid_negative_ts",
        "max_muxing_queue_size",
    ),
    **_options(
        "value",
        False,
        "reading and writing: flags without a value",
        "noaccurate_seek",
        "accurate_seek",
        "copyts",
        "start_at_zero",
        "re",
        "y",
        "n",
        "vn",
        "an",
        "sn",
        "dn",
        "shortest",
        "nostdin",
        "nostats",
        "stats",
        "hide_banner",
        "xioerror",
        "version",
    ),
    **_options(
        "value",
        True,
        "choosing streams and codecs and their settings",
        "map",
        "map_metadata",
        "map_chapters",
        "map_inlineass",
        "codec",
        "c",
        "b",
        "maxrate",
        "minrate",
        "bufsize",
        "crf",
        "qp",
        "preset",
        "tune",
        "profile",
        "level",
        "x264opts",
        "x264-params",
        "x265-params",
        "g",
        "keyint_min",
        "sc_threshold",
        "force_key_frames",
        "r",
        "vsync",
        "fps_mode",
        "s",
        "aspect",
        "pix_fmt",
        "ac",
        "ar",
        "channel_layout",
        "sample_fmt",
        "q",
        "threads",
        "filter_threads",
        "metadata",
        "disposition",
        "tag",
        "flags",
        "strict",
        "strict_ts",
        "eae_prefix",
        "break_non_keyframes",
        "bsf",
        "frames",
    ),
    **_options("filter", True, "filter graphs, checked filter by filter", "filter_complex", "filter", "vf", "af"),
    **_options("format", True, "the container read or written", "f", "segment_format"),
    **_options(
        "value",
        True,
        "segmenting the output (DASH, HLS, segment muxers)",
        "seg_duration",
        "dash_segment_type",
        "window_size",
        "extra_window_size",
        "delete_removed",
        "skip_to_segment",
        "time_delta",
        "segment_time",
        "segment_start_number",
        "segment_copyts",
        "segment_time_delta",
        "segment_list_type",
        "segment_list_unfinished",
        "segment_list_separate_stream_times",
        "hls_time",
        "hls_list_size",
        "hls_flags",
        "hls_playlist_type",
        "use_template",
        "use_timeline",
        "single_file",
        "streaming",
        "ldash",
        "adaptation_sets",
    ),
    **_options(
        "output",
        True,
        "names of the segments and playlists written into the session directory",
        "init_seg_name",
        "media_seg_name",
        "hls_segment_filename",
    ),
    **_options(
        "report",
        True,
        "where the transcoder reports to Plex: its URL on loopback, or a name in the session directory",
        "progressurl",
        "manifest_name",
        "segment_list",
    ),
    **_options("value", True, "how much the transcoder logs", "loglevel", "v", "loglevel_plex"),
}
# The containers Plex reads and writes. Not lavfi, concat, tee and the like, which would read or write
# whatever their argument names.
CONTAINER_FORMATS = frozenset(
    {
        "dash",
        "segment",
        "ssegment",
        "stream_segment",
        "hls",
        "mpegts",
        "matroska",
        "webm",
        "mp4",
        "mov",
        "ismv",
        "null",
        "mp3",
        "adts",
        "aac",
        "ac3",
        "eac3",
        "flac",
        "ogg",
        "wav",
        "srt",
        "ass",
        "webvtt",
        "mpjpeg",
        "image2",
        "mjpeg",
        "s16le",
        "avi",
        "mpeg",
        "vob",
        "h264",
        "hevc",
    }
)
# Filters Plex's transcoder graphs use. Not movie, amovie, sendcmd, zmq, ladspa, frei0r, lv2 and the like,
# which open files, sockets or libraries named in their arguments.
TRANSCODER_FILTERS = frozenset(
    {
        "scale",
        "format",
        "setsar",
        "setdar",
        "setpts",
        "asetpts",
        "fps",
        "pad",
        "crop",
        "yadif",
        "bwdif",
        "overlay",
        "inlineass",
        "tonemap",
        "zscale",
        "colorspace",
        "colormatrix",
        "setparams",
        "null",
        "anull",
        "copy",
        "split",
        "asplit",
        "trim",
        "atrim",
        "aresample",
        "aformat",
        "pan",
        "volume",
        "channelmap",
        "amix",
        "amerge",
        "loudnorm",
        "dynaudnorm",
        "afade",
        "fade",
        "transpose",
        "hflip",
        "vflip",
        "rotate",
        "framerate",
        "select",
        "aselect",
        "showinfo",
    }
)
_OPTION = re.compile(r"-([A-Za-z0-9_-]+?)(?::[A-Za-z0-9#:._-]+)?")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _loopback_plex_url(value: str, policy: RequestPolicy) -> bool:
    try:
        url = urllib.parse.urlsplit(value)
        port = url.port
    except ValueError:
        return False
    return url.scheme == "http" and url.hostname in _LOOPBACK_HOSTS and port == policy.plex_port != 0


def _session_name(value: str) -> bool:
    """A file name relative to the working directory: no protocol ("x:"), no way out of the directory."""
    if not value or value.startswith("/") or ":" in value or "\\" in value:
        return False
    return ".." not in value.split("/")


def _input_ok(value: str, policy: RequestPolicy) -> bool:
    if _loopback_plex_url(value, policy):
        return True
    if value.startswith("/"):
        return _inside(value, (*policy.read_dirs, *policy.write_dirs))
    return _session_name(value)


def _output_ok(value: str, policy: RequestPolicy) -> bool:
    if value in ("-", "pipe:", "pipe:1"):
        return True
    if value.startswith("/"):
        return _inside(value, policy.write_dirs)
    return _session_name(value)


def filter_names(graph: str) -> list[str]:
    """The filters a filter graph runs, in order, read as ffmpeg reads it: chains split at ';', filters at ',',
    "[label]"s around them, quotes and backslash escapes inside their arguments."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    index = 0
    while index < len(graph):
        char = graph[index]
        if char == "\\" and index + 1 < len(graph):
            current.append(graph[index : index + 2])
            index += 2
            continue
        if char == "'":
            quoted = not quoted
        elif char in ",;" and not quoted:
            pieces.append("".join(current))
            current = []
            index += 1
            continue
        current.append(char)
        index += 1
    pieces.append("".join(current))
    names: list[str] = []
    for piece in pieces:
        text = re.sub(r"^(\s*\[[^\]]*\])*\s*", "", piece)
        name = re.match(r"[A-Za-z0-9_]*", text)
        # Plex writes inlineass's ASS style overrides unescaped (overrides=Bold=500,FontName=...); its own
        # filter reads them. ASS keys are capitalised, ffmpeg's filter names never are.
        if names and names[-1] == "inlineass" and re.match(r"[A-Z][A-Za-z]*=", text):
            continue
        names.append(name.group(0) if name else "")
    return names


def _value_problem(word: str, kind: str, value: str, policy: RequestPolicy) -> str | None:
    if kind == "input" and not _input_ok(value, policy):
        return f"input {value!r} is neither Plex on loopback nor inside a shared directory"
    if kind == "output" and not _output_ok(value, policy):
        return f"{word} {value!r} is not in the shared transcode directory"
    if kind == "report" and not (_loopback_plex_url(value, policy) or _output_ok(value, policy)):
        return f"{word} {value!r} is neither Plex on loopback nor in the shared transcode directory"
    if kind == "format" and value not in CONTAINER_FORMATS:
        return f"{word} {value!r} is not a container Plex's transcoder uses"
    if kind == "filter":
        unknown = sorted({name for name in filter_names(value) if name not in TRANSCODER_FILTERS})
        if unknown:
            return f"{word} runs filters Plex's transcoder does not use: {', '.join(unknown)}"
    return None


def argument_problems(args: Sequence[str], policy: RequestPolicy) -> list[str]:
    problems: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        index += 1
        option = _OPTION.fullmatch(word) if word.startswith("-") and word != "-" else None
        if option is None:
            if word.startswith("-") and word != "-":
                problems.append(f"argument {word!r} is not an option Plex's transcoder is given")
            elif not _output_ok(word, policy):
                problems.append(f"output {word!r} is not in the shared transcode directory")
            continue
        spec = TRANSCODER_OPTIONS.get(option.group(1))
        if spec is None:
            problems.append(f"option {word} is not one Plex's transcoder is given")
        elif spec.takes_value and index >= len(args):
            problems.append(f"option {word} has no value")
        elif spec.takes_value:
            problem = _value_problem(word, spec.kind, args[index], policy)
            index += 1
            if problem is not None:
                problems.append(problem)
    return problems


def request_problems(args: Sequence[str], environ: Mapping[str, str], cwd: str, policy: RequestPolicy) -> list[str]:
    """Why a slave would refuse this transcode, or nothing when it would run it."""
    problems = []
    if not _inside(cwd, policy.write_dirs):
        problems.append(f"working directory {cwd} is not inside the shared transcode directory")
    return problems + environment_problems(environ, policy) + argument_problems(args, policy)


# --------------------------------------------------------------------------------------------------
# Secrets and the decision log


def secrets_in(environ: Mapping[str, str], argv: Sequence[str] = ()) -> list[str]:
    """Every token value the environment or the arguments carry, longest first so none is half-redacted."""
    found = {value for name, value in environ.items() if SECRET_ENV_NAME.search(name) and value}
    for word in argv:
        found.update(match.group(3) for match in TOKEN_IN_TEXT.finditer(word))
    return sorted((secret for secret in found if len(secret) >= 4), key=len, reverse=True)


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return TOKEN_IN_TEXT.sub(lambda match: f"{match.group(1)}{match.group(2)}{REDACTED}", text)


class DecisionLog:
    """Appends one line per decision; each line is a single write, so concurrent dispatchers never interleave."""

    def __init__(self, path: str, secrets: Sequence[str] = (), clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.secrets = list(secrets)
        self.clock = clock

    def write(self, level: str, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.clock()))
        line = f"{stamp} pid={os.getpid()} {level} {redact(message, self.secrets)}"
        line = line.replace("\n", "\\n") + "\n"
        data = line.encode("utf-8", "backslashreplace")
        if not self.path:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError:
            # Plex keeps the transcoder's stderr; a log that cannot be opened must not stop transcoding.
            with contextlib.suppress(OSError):
                os.write(2, b"plexcdn-transcode: " + data)
            return
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def info(self, message: str) -> None:
        self.write("INFO", message)

    def warning(self, message: str) -> None:
        self.write("WARNING", message)

    def error(self, message: str) -> None:
        self.write("ERROR", message)


def describe_command(program: str, args: Sequence[str]) -> str:
    return shlex.join([program, *args])


def easy_audio_encoder_use(args: Sequence[str]) -> list[str]:
    """The options by which these transcoder arguments call on Plex's EasyAudioEncoder; empty when they do not.

    Only option words and their values count, never an input or output path that happens to hold "eae".
    """
    found: list[str] = []
    for index, word in enumerate(args[:-1]):
        value = args[index + 1]
        if CODEC_OPTION.fullmatch(word) and EAE_CODEC.fullmatch(value):
            found.append(f"{word} {value}")
        elif EAE_OPTION.fullmatch(word):
            found.append(word)
    return found


def easy_audio_encoder_reason(args: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """Why this transcode must stay beside Plex Media Server, or None when nothing ties it there."""
    use = easy_audio_encoder_use(args)
    if not use:
        return None
    root = environ.get("EAE_ROOT", "")
    where = f" in {root}" if root else ""
    return (
        f"it needs Plex's EasyAudioEncoder ({', '.join(use)}), which runs only beside Plex Media Server on this "
        f"machine and answers through its watch folder{where}, not on a slave"
    )


# --------------------------------------------------------------------------------------------------
# Shared state: hosts marked bad, and where transcodes ran


@dataclass(frozen=True)
class BadHost:
    name: str
    until: float
    reason: str


class HostState:
    """A JSON file in the state directory, changed only under an exclusive lock and replaced atomically.

    Many dispatchers run at once (one per stream); the lock keeps one's marks from erasing another's,
    and the atomic replace means a reader never sees half a file.
    """

    def __init__(self, state_dir: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(state_dir)
        self.path = self.directory / "hosts.json"
        self.lock_path = self.directory / "hosts.lock"
        self.clock = clock

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[dict[str, Any]]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            data = self._read()
            before = json.dumps(data, sort_keys=True)
            yield data
            if exclusive and json.dumps(data, sort_keys=True) != before:
                self._write(data)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"hosts": {}, "counts": {}}
        if not isinstance(data, dict):
            return {"hosts": {}, "counts": {}}
        data.setdefault("hosts", {})
        data.setdefault("counts", {})
        return data

    def _write(self, data: dict[str, Any]) -> None:
        temporary = self.directory / f".hosts.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1, sort_keys=True)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def bad_hosts(self) -> dict[str, BadHost]:
        now = self.clock()
        with self._locked(exclusive=False) as data:
            hosts = data["hosts"]
        bad: dict[str, BadHost] = {}
        for name, entry in hosts.items():
            if isinstance(entry, dict) and float(entry.get("bad_until", 0)) > now:
                bad[name] = BadHost(name, float(entry["bad_until"]), str(entry.get("reason", "")))
        return bad

    def mark_bad(self, name: str, reason: str, seconds: float) -> BadHost:
        until = self.clock() + seconds
        with self._locked(exclusive=True) as data:
            data["hosts"][name] = {"bad_until": until, "reason": reason, "marked_at": self.clock()}
            data.get("probes", {}).pop(name, None)
        return BadHost(name, until, reason)

    def cached_probe(self, name: str, max_age: float) -> tuple[Probe, float] | None:
        """A probe answer stored no more than max_age seconds ago, and its age."""
        if max_age <= 0:
            return None
        with self._locked(exclusive=False) as data:
            entry = data.get("probes", {}).get(name)
        if not isinstance(entry, dict):
            return None
        try:
            age = self.clock() - float(entry["at"])
            probe = Probe.from_values(entry["answer"])
        except (KeyError, TypeError, ValueError, ProbeError):
            return None
        return (probe, age) if 0 <= age <= max_age else None

    def store_probe(self, name: str, probe: Probe) -> None:
        with self._locked(exclusive=True) as data:
            data.setdefault("probes", {})[name] = {"at": self.clock(), "answer": probe.as_values()}

    def clear(self, name: str) -> None:
        with self._locked(exclusive=True) as data:
            data["hosts"].pop(name, None)

    def count(self, outcome: str, detail: str = "") -> None:
        with self._locked(exclusive=True) as data:
            counts = data["counts"]
            counts[outcome] = int(counts.get(outcome, 0)) + 1
            if outcome == "local":
                data["last_local"] = {"at": self.clock(), "reason": detail}

    def snapshot(self) -> dict[str, Any]:
        with self._locked(exclusive=False) as data:
            return data


# --------------------------------------------------------------------------------------------------
# Probing and choosing a slave


@dataclass(frozen=True)
class Probe:
    load1: float
    cpus: int
    plex_version: str
    uid: int
    gid: int
    transcoder: str
    transcoder_ok: bool

    @property
    def load_per_core(self) -> float:
        return self.load1 / max(self.cpus, 1)

    def as_values(self) -> dict[str, Any]:
        return {
            "load1": self.load1,
            "cpus": self.cpus,
            "plex_version": self.plex_version,
            "uid": self.uid,
            "gid": self.gid,
            "transcoder": self.transcoder,
            "transcoder_ok": self.transcoder_ok,
        }

    @classmethod
    def from_json(cls, text: str) -> Probe:
        try:
            values = json.loads(text.strip().splitlines()[-1])
        except (IndexError, ValueError) as error:
            raise ProbeError(f"the guard's answer is not a probe: {text.strip()[:200]!r}") from error
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: object) -> Probe:
        try:
            assert isinstance(values, dict)
            return cls(
                load1=float(values["load1"]),
                cpus=int(values["cpus"]),
                plex_version=str(values["plex_version"]),
                uid=int(values["uid"]),
                gid=int(values["gid"]),
                transcoder=str(values["transcoder"]),
                transcoder_ok=bool(values["transcoder_ok"]),
            )
        except (AssertionError, ValueError, KeyError, TypeError) as error:
            raise ProbeError(f"the guard's answer is not a probe: {str(values)[:200]!r}") from error


def refusal_reason(probe: Probe, origin_version: str, origin_ids: tuple[int, int] | None) -> str | None:
    """Why a slave that answered must not transcode, or None when it may."""
    if probe.plex_version != origin_version:
        return f"Plex version {probe.plex_version or 'unknown'} differs from the origin's {origin_version}"
    if origin_ids is not None and (probe.uid, probe.gid) != origin_ids:
        return (
            f"it runs the transcoder as uid/gid {probe.uid}/{probe.gid}, the origin as "
            f"{origin_ids[0]}/{origin_ids[1]}: its files on the shared storage would have the wrong owner"
        )
    if not probe.transcoder_ok:
        return f"its transcoder {probe.transcoder} is missing or not executable"
    return None


def detect_plex_version(config: Config) -> str:
    """The configured Plex version, or what version_command prints; empty when neither works."""
    if config.plex_version:
        return config.plex_version
    try:
        result = subprocess.run(list(config.version_command), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def select_slave(
    config: Config,
    *,
    state: HostState,
    log: DecisionLog,
    probe: Callable[[Slave], Probe],
    origin_version: str,
    origin_ids: tuple[int, int] | None,
) -> Slave | None:
    """The good slave with the lowest load per core; every slave found bad on the way is marked so."""
    if not config.slaves:
        log.info("no slaves configured")
        return None
    bad = state.bad_hosts()
    candidates: list[Slave] = []
    for slave in config.slaves:
        if slave.name in bad:
            remaining = bad[slave.name].until - state.clock()
            log.info(f"skipping slave {slave.name}: marked bad for {remaining:.0f}s more ({bad[slave.name].reason})")
        else:
            candidates.append(slave)
    if not candidates:
        return None
    if not origin_version:
        log.warning(
            "the origin's Plex version is unknown (set plex_version or a working version_command), "
            "so no slave can be checked against it and none is used"
        )
        return None

    answers: dict[str, Probe | ProbeError] = {}

    def attempt(slave: Slave) -> None:
        cached = state.cached_probe(slave.name, config.probe_cache_seconds)
        if cached is not None:
            log.info(f"slave {slave.name}: using its probe from {cached[1]:.1f}s ago")
            answers[slave.name] = cached[0]
            return
        try:
            answer = probe(slave)
        except ProbeError as error:
            answers[slave.name] = error
            return
        state.store_probe(slave.name, answer)
        answers[slave.name] = answer

    # Slaves are asked at once, so one that times out delays the choice by one timeout, not one per slave.
    threads = [threading.Thread(target=attempt, args=(slave,)) for slave in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    good: list[tuple[float, str, Slave, Probe]] = []
    for slave in candidates:
        answer = answers[slave.name]
        if isinstance(answer, ProbeError):
            state.mark_bad(slave.name, f"unreachable: {answer}", config.bad_host_seconds)
            log.warning(f"slave {slave.name} unreachable ({answer}); marked bad for {config.bad_host_seconds:g}s")
            continue
        refusal = refusal_reason(answer, origin_version, origin_ids if config.require_same_ids else None)
        if refusal is not None:
            state.mark_bad(slave.name, f"refused: {refusal}", config.bad_host_seconds)
            log.warning(f"refusing slave {slave.name}: {refusal}; marked bad for {config.bad_host_seconds:g}s")
            continue
        good.append((answer.load_per_core, slave.name, slave, answer))
    if not good:
        return None
    good.sort(key=lambda item: (item[0], item[1]))
    chosen = good[0]
    others = ", ".join(f"{name} {per_core:.2f}" for per_core, name, _, _ in good[1:])
    log.info(
        f"chose slave {chosen[1]}: load per core {chosen[0]:.2f} "
        f"({chosen[3].load1:.2f} on {chosen[3].cpus} cores)" + (f"; others: {others}" if others else "")
    )
    return chosen[2]


# --------------------------------------------------------------------------------------------------
# SSH


def _ssh_path_option(name: str, path: str) -> str:
    # ssh expands %-tokens in these paths and splits UserKnownHostsFile on whitespace.
    return f'{name}="{path.replace("%", "%%")}"'


def remote_command(slave: Slave, op: str, args: Sequence[str] = ()) -> str:
    """The command line ssh asks the slave to run; every word shell-quoted, so any argument survives."""
    words = [slave.python, "-I", slave.guard_path, GUARD_FLAG, op]
    if op == "run":
        words += ["--", *args]
    return shlex.join(words)


class SshTransport:
    """ssh to the slaves over one persistent ControlMaster connection per slave."""

    def __init__(self, config: Config, log: DecisionLog) -> None:
        self.config = config
        self.log = log

    def control_path(self, slave: Slave) -> str | None:
        digest = f"{zlib.crc32(f'{slave.user}@{slave.host}:{slave.port}'.encode()):08x}"
        path = os.path.join(self.config.state_dir, f"cm-{slave.name[:16]}-{digest}")
        return path if len(path.encode()) <= MAX_CONTROL_PATH else None

    def base_argv(self, slave: Slave) -> list[str]:
        config = self.config
        argv = [
            config.ssh,
            "-F",
            "/dev/null",
            "-T",
            "-e",
            "none",
            "-p",
            str(slave.port),
            "-l",
            slave.user,
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={config.connect_timeout}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            _ssh_path_option("UserKnownHostsFile", config.known_hosts),
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "CheckHostIP=no",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=2",
            "-o",
            "LogLevel=ERROR",
        ]
        if slave.identity_file:
            argv += ["-o", "IdentitiesOnly=yes", "-o", _ssh_path_option("IdentityFile", slave.identity_file)]
        control = self.control_path(slave)
        if control is not None:
            argv += ["-o", _ssh_path_option("ControlPath", control)]
        return argv

    def ensure_master(self, slave: Slave) -> None:
        """Start the slave's ControlMaster unless one is running; one dispatcher at a time does this."""
        control = self.control_path(slave)
        if control is None:
            self.log.info(f"state_dir is too long for an ssh control socket; slave {slave.name} without multiplexing")
            return
        Path(self.config.state_dir).mkdir(parents=True, exist_ok=True)
        base = self.base_argv(slave)
        errors_path = os.path.join(self.config.state_dir, f"master-{slave.name}.err")
        with open(os.path.join(self.config.state_dir, f"master-{slave.name}.lock"), "a") as lock:
            waiting_since = time.time()
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Dispatchers that queued behind one whose connection just failed take its answer, rather
            # than each waiting out its own connect timeout in turn.
            with contextlib.suppress(OSError):
                if os.path.getmtime(errors_path) >= waiting_since and os.path.getsize(errors_path) > 0:
                    message = Path(errors_path).read_text(encoding="utf-8", errors="replace").strip()
                    raise ProbeError(f"{message} (another dispatcher's attempt)")
            check = subprocess.run(
                [*base, "-O", "check", slave.host],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=5,
                check=False,
            )
            if check.returncode == 0:
                return
            # A master killed without cleanup leaves its socket; a new master cannot bind over it.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(control)
            forward: list[str] = []
            if self.config.plex_port:
                port = self.config.plex_port
                # A slave whose loopback port is taken (its own Plex running) must fail here, not send callbacks there.
                forward = ["-o", "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:{port}:127.0.0.1:{port}"]
            # The backgrounded master keeps the stderr it was given; a file, not a pipe, so nobody waits on it.
            with open(errors_path, "wb") as errors:
                started = subprocess.run(
                    [
                        *base,
                        "-o",
                        "ControlMaster=yes",
                        "-o",
                        f"ControlPersist={self.config.control_persist_seconds}",
                        *forward,
                        "-N",
                        "-f",
                        slave.host,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    timeout=self.config.connect_timeout + 10,
                    check=False,
                    start_new_session=True,
                )
            if started.returncode != 0:
                message = Path(errors_path).read_text(encoding="utf-8", errors="replace").strip()
                if not message:
                    message = f"ssh exited {started.returncode}"
                    Path(errors_path).write_text(message + "\n", encoding="utf-8")
                raise ProbeError(message)

    def probe(self, slave: Slave) -> Probe:
        try:
            self.ensure_master(slave)
            result = subprocess.run(
                [*self.base_argv(slave), "-o", "ControlMaster=no", slave.host, remote_command(slave, "probe")],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.config.connect_timeout + 10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ProbeError("timed out") from None
        except OSError as error:
            raise ProbeError(f"cannot run ssh: {error}") from None
        if result.returncode != 0:
            raise ProbeError(result.stderr.strip() or f"ssh exited {result.returncode}")
        return Probe.from_json(result.stdout)


def run_header(environ: Mapping[str, str], cwd: str) -> bytes:
    """What the guard reads from stdin before it starts the transcoder: never on a command line."""
    return json.dumps({"cwd": cwd, "env": dict(environ)}).encode("ascii") + b"\n"


@dataclass
class RemoteResult:
    started: bool
    exit_code: int
    refused: str = ""
    ssh_messages: list[str] = field(default_factory=list)
    stopped_by_signal: int = 0


class StderrRelay(threading.Thread):
    """Copies the remote stderr to ours, taking out the guard's own status lines.

    Lines before the guard says "started" come from ssh or the guard, and tell why a run never began.
    """

    def __init__(self, source: IO[bytes], sink_fd: int = 2) -> None:
        super().__init__(daemon=True)
        self.source = source
        self.sink_fd = sink_fd
        self.started = False
        self.refused = ""
        self.messages: list[str] = []

    def _emit(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.sink_fd, view)
            except OSError:
                return
            view = view[written:]

    def run(self) -> None:
        fd = self.source.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            if self.started:
                self._emit(chunk)
                continue
            pending += chunk
            while not self.started and b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line + b"\n" == STARTED_MARKER:
                    self.started = True
                elif line.startswith(REFUSED_PREFIX):
                    self.refused = line[len(REFUSED_PREFIX) :].decode("utf-8", "replace")
                else:
                    self.messages.append(line.decode("utf-8", "replace"))
                    self._emit(line + b"\n")
            if self.started and pending:
                self._emit(pending)
                pending = b""
        if pending:
            self.messages.append(pending.decode("utf-8", "replace"))
            self._emit(pending)


class SignalForwarder:
    """Turns SIGTERM/SIGINT/SIGHUP into an end-of-file on the session, which makes the guard stop the transcoder.

    If ssh has not gone within the grace period, it is killed, which closes the session all the same.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, write_fd: int, grace: float) -> None:
        self.write_fd = write_fd
        self.grace = grace
        self.process: subprocess.Popen[bytes] | None = None
        self.received = 0
        self.closed = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def attach(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        if self.received:
            self._stop()

    def close_session_input(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                os.close(self.write_fd)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self.received:
            self.received = signum
            if self.process is not None:
                self._stop()

    def _stop(self) -> None:
        self.close_session_input()
        process = self.process
        if process is None:
            return

        def kill_if_running() -> None:
            if process.poll() is None:
                process.kill()

        timer = threading.Timer(self.grace + 5, kill_if_running)
        timer.daemon = True
        timer.start()


def run_remote(
    transport: SshTransport,
    slave: Slave,
    args: Sequence[str],
    environ: Mapping[str, str],
    cwd: str,
) -> RemoteResult:
    read_fd, write_fd = os.pipe()
    forwarder = SignalForwarder(write_fd, transport.config.kill_grace_seconds)
    forwarder.install()
    try:
        try:
            process = subprocess.Popen(
                [*transport.base_argv(slave), "-o", "ControlMaster=no", slave.host, remote_command(slave, "run", args)],
                stdin=read_fd,
                stderr=subprocess.PIPE,
            )
        except OSError as error:
            return RemoteResult(started=False, exit_code=255, ssh_messages=[f"cannot run ssh: {error}"])
        finally:
            os.close(read_fd)
        forwarder.attach(process)
        assert process.stderr is not None
        relay = StderrRelay(process.stderr)
        relay.start()
        header = memoryview(run_header(forwarded_environment(environ, RequestPolicy.of(transport.config)), cwd))
        # The session's stdin stays open for as long as this process lives: its end is the stop signal.
        with contextlib.suppress(OSError):
            while header and not forwarder.closed:
                header = header[os.write(write_fd, header) :]
        code = process.wait()
        relay.join(timeout=5)
    finally:
        forwarder.restore()
        forwarder.close_session_input()
    exit_code = code if code >= 0 else 128 - code
    return RemoteResult(
        started=relay.started,
        exit_code=exit_code,
        refused=relay.refused,
        ssh_messages=relay.messages,
        stopped_by_signal=forwarder.received,
    )


# --------------------------------------------------------------------------------------------------
# Dispatch (the origin side)


def exec_local(config: Config, args: Sequence[str], log: DecisionLog) -> int:
    local = config.real_local_transcoder()
    try:
        os.execv(local, [local, *args])  # noqa: S606 - Plex's own transcoder, with Plex's arguments
    except OSError as error:
        log.error(f"cannot run the local transcoder {local}: {error.strerror}")
        return 127
    return 0  # pragma: no cover - execv does not return


def dispatch(args: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    path = config_path()
    try:
        config = load_config(path)
    except ConfigError as error:
        # A broken configuration must not break Plex: say so and transcode here.
        fallback = Config()
        with contextlib.suppress(OSError):
            os.write(2, f"plexcdn-transcode: {error}; transcoding locally\n".encode())
        return exec_local(fallback, args, DecisionLog(""))
    log = DecisionLog(config.log_path, secrets_in(environ, args))
    state = HostState(config.state_dir)
    log.info(f"transcode requested: {describe_command(TRANSCODER_NAME, args)}")
    eae_reason = easy_audio_encoder_reason(args, environ)
    if eae_reason is not None:
        return _go_local(config, state, log, args, eae_reason)
    left_out = sorted(set(environ) - set(forwarded_environment(environ, RequestPolicy.of(config))))
    if config.slaves and left_out:
        log.info(f"Plex's environment a slave would not take, kept here: {', '.join(left_out)}")
    refusal = _refusal_here(config, args, environ)
    if refusal:
        return _go_local(config, state, log, args, f"a slave would refuse this transcode: {refusal}")
    try:
        choice = _choose(config, state, log)
    except Exception as error:  # whatever broke, Plex still gets its transcode
        choice = f"dispatcher error: {type(error).__name__}: {error}"
    if isinstance(choice, str):
        return _go_local(config, state, log, args, choice)
    slave, transport, cwd = choice
    log.info(f"running on slave {slave.name} ({slave.user}@{slave.host}:{slave.port}) in {cwd}")
    result = run_remote(transport, slave, args, environ, cwd)
    with contextlib.suppress(OSError):
        return _after_remote(config, state, log, args, slave=slave, transport=transport, result=result)
    return result.exit_code


def _refusal_here(config: Config, args: Sequence[str], environ: Mapping[str, str]) -> str:
    """What the slaves' guards would refuse in this request; checked here so that it never marks a slave bad."""
    if not config.slaves:
        return ""
    try:
        cwd = os.getcwd()
    except OSError:
        return ""  # _choose says why
    policy = RequestPolicy.of(config)
    return "; ".join(request_problems(args, forwarded_environment(environ, policy), cwd, policy))


def _choose(config: Config, state: HostState, log: DecisionLog) -> tuple[Slave, SshTransport, str] | str:
    """The slave to run on, with what to reach it and the working directory; or why the transcode stays here."""
    try:
        cwd = os.getcwd()
    except OSError:
        return "the working directory is gone"
    transport = SshTransport(config, log)
    slave = select_slave(
        config,
        state=state,
        log=log,
        probe=transport.probe,
        origin_version=detect_plex_version(config),
        origin_ids=(os.getuid(), os.getgid()),
    )
    if slave is None:
        return "no good slave"
    try:
        # After a cached probe the master may have gone; starting it here keeps the run on one connection.
        transport.ensure_master(slave)
    except (ProbeError, subprocess.TimeoutExpired) as error:
        state.mark_bad(slave.name, f"unreachable: {error}", config.bad_host_seconds)
        log.warning(f"slave {slave.name} unreachable ({error}); marked bad for {config.bad_host_seconds:g}s")
        return f"slave {slave.name} unreachable"
    return slave, transport, cwd


def _after_remote(
    config: Config,
    state: HostState,
    log: DecisionLog,
    args: Sequence[str],
    *,
    slave: Slave,
    transport: SshTransport,
    result: RemoteResult,
) -> int:
    for message in result.ssh_messages:
        log.info(f"slave {slave.name} said: {message}")
    if not result.started:
        reason = f"refused: {result.refused}" if result.refused else f"did not start (ssh exited {result.exit_code})"
        state.mark_bad(slave.name, reason, config.bad_host_seconds)
        log.warning(f"slave {slave.name} {reason}; marked bad for {config.bad_host_seconds:g}s")
        if result.stopped_by_signal:
            return result.exit_code
        return _go_local(config, state, log, args, f"slave {slave.name} {reason}")
    if result.stopped_by_signal:
        log.info(
            f"stopped by signal {result.stopped_by_signal}; slave {slave.name} ended the transcoder, "
            f"exit {result.exit_code}"
        )
    elif result.exit_code == 255:
        # 255 is also ssh's own failure code: a slave that no longer answers is marked bad.
        try:
            transport.probe(slave)
        except ProbeError as error:
            state.mark_bad(slave.name, f"lost during a transcode: {error}", config.bad_host_seconds)
            log.warning(f"slave {slave.name} lost during the transcode ({error}); marked bad")
    state.count("remote")
    log.info(f"slave {slave.name} finished: exit {result.exit_code}")
    return result.exit_code


def _go_local(config: Config, state: HostState, log: DecisionLog, args: Sequence[str], reason: str) -> int:
    with contextlib.suppress(OSError):
        state.count("local", reason)
    log.warning(f"transcoding locally ({reason}) with {config.real_local_transcoder()}")
    return exec_local(config, args, log)


# --------------------------------------------------------------------------------------------------
# The guard (the slave side)


@dataclass(frozen=True)
class GuardRequest:
    config_path: Path | None
    op: str
    args: tuple[str, ...]


def parse_guard_invocation(own_args: Sequence[str], original_command: str | None) -> GuardRequest:
    """What the guard was asked to do.

    Under a forced command (authorized_keys `command=`), its own arguments come from the slave's
    owner and choose the configuration; the request comes from SSH_ORIGINAL_COMMAND, the command the
    origin asked for, and may only name an operation and the transcoder's arguments.
    """
    words = list(own_args)
    chosen_config: Path | None = None
    if len(words) >= 2 and words[0] == "--config":
        chosen_config = Path(words[1])
        words = words[2:]
    if original_command is not None:
        try:
            asked = shlex.split(original_command)
        except ValueError as error:
            raise UsageError(f"cannot parse the requested command: {error}") from None
        if GUARD_FLAG not in asked:
            raise UsageError("this key may only run the transcode guard")
        words = asked[asked.index(GUARD_FLAG) + 1 :]
    if not words or words[0] not in ("probe", "run"):
        raise UsageError("expected `probe` or `run -- ARGS...`")
    if words[0] == "probe":
        if len(words) != 1:
            raise UsageError("probe takes no arguments")
        return GuardRequest(chosen_config, "probe", ())
    if len(words) < 2 or words[1] != "--":
        raise UsageError("expected `run -- ARGS...`")
    return GuardRequest(chosen_config, "run", tuple(words[2:]))


def read_loadavg(path: str) -> float:
    with open(path, encoding="ascii") as source:
        return float(source.read().split()[0])


def probe_answer(config: Config) -> dict[str, Any]:
    try:
        cpus = config.cpu_count or len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    return {
        "load1": read_loadavg(config.loadavg_path),
        "cpus": cpus,
        "plex_version": detect_plex_version(config),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "transcoder": config.transcoder,
        "transcoder_ok": os.access(config.transcoder, os.X_OK),
    }


def read_header(stream: IO[bytes]) -> tuple[str, dict[str, str]]:
    line = stream.readline(HEADER_LIMIT + 1)
    if not line.endswith(b"\n"):
        raise UsageError("no run header on stdin (or it is too long)")
    try:
        values = json.loads(line)
    except ValueError:
        raise UsageError("the run header is not JSON") from None
    if not isinstance(values, dict):
        raise UsageError("the run header is not an object")
    cwd, env = values.get("cwd"), values.get("env")
    if not isinstance(cwd, str) or not isinstance(env, dict):
        raise UsageError("the run header needs cwd (a string) and env (an object)")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise UsageError("the run header's env must map strings to strings")
    return cwd, env


def _refuse(log: DecisionLog, reason: str) -> int:
    log.warning(f"refused: {reason}")
    with contextlib.suppress(OSError):
        os.write(2, REFUSED_PREFIX + reason.encode("utf-8", "backslashreplace") + b"\n")
    return GUARD_REFUSED_EXIT


class TranscoderStopper:
    """Ends the transcoder's whole process group: SIGTERM, then SIGKILL after the grace period."""

    def __init__(self, process: subprocess.Popen[bytes], grace: float, log: DecisionLog) -> None:
        self.process = process
        self.grace = grace
        self.log = log
        self.finished = threading.Event()
        self.reason = ""
        self._lock = threading.Lock()

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.reason or self.finished.is_set():
                return
            self.reason = reason
        self.log.info(f"stopping pid {self.process.pid} and its group: {reason}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        if not self.finished.wait(self.grace):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def stop_in_background(self, reason: str) -> None:
        threading.Thread(target=self.stop, args=(reason,), daemon=True).start()

    def watch_input(self, stream: IO[bytes]) -> None:
        """The origin never closes the session's stdin: its end means the dispatcher or the link is gone."""

        def drain() -> None:
            with contextlib.suppress(OSError, ValueError):
                while os.read(stream.fileno(), 65536):
                    pass
            self.stop("the origin's session ended")

        threading.Thread(target=drain, daemon=True).start()


def guard_run(config: Config, log: DecisionLog, args: Sequence[str], stdin: IO[bytes]) -> int:
    try:
        cwd, env = read_header(stdin)
    except UsageError as error:
        return _refuse(log, str(error))
    log.secrets = secrets_in(env, args)
    if not os.path.isdir(cwd):
        return _refuse(log, f"working directory {cwd} does not exist here (is the shared storage mounted?)")
    if not os.access(config.transcoder, os.X_OK):
        return _refuse(log, f"transcoder {config.transcoder} is missing or not executable")
    problems = request_problems(args, env, cwd, RequestPolicy.of(config))
    if problems:
        return _refuse(log, "; ".join(problems))
    with contextlib.suppress(OSError):
        os.write(2, STARTED_MARKER)
    process = subprocess.Popen(
        [config.transcoder, *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True
    )
    stopper = TranscoderStopper(process, config.kill_grace_seconds, log)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: stopper.stop_in_background(f"guard got signal {number}"))
    log.info(f"running pid {process.pid} in {cwd}: {describe_command(config.transcoder, args)}")
    stopper.watch_input(stdin)
    code = process.wait()
    stopper.finished.set()
    # Anything the transcoder left in its group would outlive the session otherwise.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    exit_code = code if code >= 0 else 128 - code
    log.info(f"pid {process.pid} exited {exit_code}" + (f" ({stopper.reason})" if stopper.reason else ""))
    return exit_code


def guard_main(own_args: Sequence[str]) -> int:
    try:
        request = parse_guard_invocation(own_args, os.environ.get("SSH_ORIGINAL_COMMAND"))
    except UsageError as error:
        sys.stderr.write(f"plexcdn-guard: {error}\n")
        return 2
    path = request.config_path or config_path()
    try:
        config = load_config(path) if path.exists() or request.config_path else Config()
    except ConfigError as error:
        sys.stderr.write(f"plexcdn-guard: {error}\n")
        return 2
    log = DecisionLog(config.log_path)
    if request.op == "probe":
        try:
            answer = probe_answer(config)
        except (OSError, ValueError, IndexError) as error:
            sys.stderr.write(f"plexcdn-guard: cannot read the load: {error}\n")
            return 2
        sys.stdout.write(json.dumps(answer) + "\n")
        return 0
    return guard_run(config, log, request.args, sys.stdin.buffer)


# --------------------------------------------------------------------------------------------------
# Set-up helpers


def _quote_option_value(text: str) -> str:
    return text.replace('"', '\\"')


def authorized_keys_line(
    public_key: str,
    *,
    guard_path: str = "/opt/plexcdn/dispatcher.py",
    python: str = "/usr/bin/python3",
    guard_config: str = "",
    from_patterns: str = "",
    plex_port: int = 32400,
) -> str:
    """A line for the slave's authorized_keys that lets the origin's key run the guard and nothing else.

    `restrict` turns off forwarding, the pty and ~/.ssh/rc; `command=` replaces whatever the client
    asks for with the guard, which reads the request from SSH_ORIGINAL_COMMAND. With a plex_port, the
    one forward allowed back is the slave's 127.0.0.1:<plex_port> to the origin's Plex.
    """
    key = public_key.strip()
    parts = key.split()
    if "\n" in key or "\r" in key or len(parts) < 2 or not re.match(r"^(ssh-|ecdsa-|sk-)", parts[0]):
        raise UsageError("expected one public key line such as `ssh-ed25519 AAAA... comment`")
    words = [python, "-I", guard_path, GUARD_FLAG]
    if guard_config:
        words += ["--config", guard_config]
    command = shlex.join(words)
    if any(char in command for char in "\n\r\0"):
        raise UsageError("paths in the forced command may not hold line breaks or NUL")
    options = ["restrict"]
    if plex_port:
        if not 0 < plex_port <= 65535:
            raise UsageError(f"plex port {plex_port} is not a TCP port")
        # permitopen limits the -L direction to that same loopback port: sshd has no "none" for it.
        options += ["port-forwarding", f'permitlisten="127.0.0.1:{plex_port}"', f'permitopen="127.0.0.1:{plex_port}"']
    options.append(f'command="{_quote_option_value(command)}"')
    if from_patterns:
        if not re.fullmatch(r"[A-Za-z0-9.:/*?!,_-]+", from_patterns):
            raise UsageError(f"from patterns {from_patterns!r} hold characters sshd would not read as patterns")
        options.append(f'from="{from_patterns}"')
    return ",".join(options) + " " + " ".join(parts)


def install(plex_dir: Path, source: Path | None = None) -> str:
    """Put the dispatcher in place of "Plex Transcoder", keeping the real one beside it.

    Safe to run again and again (for example from an apt hook): after a Plex update has written a new
    transcoder over the dispatcher, that new binary becomes the ".real" one.
    """
    own = (source or Path(os.path.abspath(__file__))).read_bytes()
    target = plex_dir / TRANSCODER_NAME
    real = plex_dir / (TRANSCODER_NAME + REAL_SUFFIX)
    if not target.exists():
        raise UsageError(f"{target} does not exist: is {plex_dir} Plex Media Server's directory?")
    current = target.read_bytes()
    if DISPATCHER_MARK in current[:512]:
        if current == own:
            return f"{target} is already this dispatcher"
        _write_beside(target, own, like=target)
        return f"updated the dispatcher at {target}"
    staged = real.with_name(real.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staged)
    # Link, then rename: at no moment is there no "Plex Transcoder" for Plex to start.
    os.link(target, staged)
    os.replace(staged, real)
    _write_beside(target, own, like=real)
    return f"moved Plex's transcoder to {real} and installed the dispatcher at {target}"


def _write_beside(target: Path, data: bytes, like: Path) -> None:
    info = like.stat()
    temporary = target.with_name(f".plexcdn-{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o755)  # noqa: S103 - Plex runs the transcoder as its own user
        if os.geteuid() == 0:
            os.chown(temporary, info.st_uid, info.st_gid)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _option(args: list[str], name: str, default: str = "") -> str:
    if name in args:
        index = args.index(name)
        if index + 1 >= len(args):
            raise UsageError(f"{name} needs a value")
        value = args[index + 1]
        del args[index : index + 2]
        return value
    return default


def main(argv: Sequence[str]) -> int:
    args = list(argv[1:])
    try:
        if args[:1] == [GUARD_FLAG]:
            return guard_main(args[1:])
        if args[:1] == ["--authorized-keys-line"] and len(args) >= 2:
            rest = args[2:]
            line = authorized_keys_line(
                Path(args[1]).read_text(encoding="utf-8"),
                guard_path=_option(rest, "--guard", "/opt/plexcdn/dispatcher.py"),
                python=_option(rest, "--python", "/usr/bin/python3"),
                guard_config=_option(rest, "--config"),
                from_patterns=_option(rest, "--from"),
                plex_port=int(_option(rest, "--plex-port", "32400")),
            )
            if rest:
                raise UsageError(f"unexpected arguments: {' '.join(rest)}")
            sys.stdout.write(line + "\n")
            return 0
        if args[:1] == ["--install"] and len(args) == 2:
            sys.stdout.write(install(Path(args[1])) + "\n")
            return 0
        if args == ["--status"]:
            config = load_config(config_path())
            sys.stdout.write(json.dumps(HostState(config.state_dir).snapshot(), indent=1, sort_keys=True) + "\n")
            return 0
    except (UsageError, ConfigError, OSError, ValueError) as error:
        sys.stderr.write(f"plexcdn-transcode: {error}\n")
        return 2
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
