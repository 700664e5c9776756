"""The kinds of value a stack setting takes, each in one place: how it is read, the message when it is wrong
(saying what would be valid), what the documentation calls valid, and its JSON Schema.

A kind annotates a model field (`Annotated[int, WholeNumber(1, 65535)]`) and replaces pydantic's own parsing of
it, so that strings Pulumi gives for numbers and booleans ("32400", "true") are read as today, no value reaches
a rendered file with a control character or line break in it, and every message reads like the rest of the
program's rather than like pydantic's.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import reprlib
import typing
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

JsonSchema = dict[str, Any]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Control characters and line or paragraph separators: a value reaching a rendered file (authorized_keys, nginx,
# fstab, exports, YAML, shell) must not end its line, hide its end, or carry a NUL into it.
UNSAFE_TEXT: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
UNSAFE_TEXT_PATTERN: Final = r"[\x00-\x1f\x7f-\x9f\u2028\u2029]"
# The longest text setting: a 16384-bit RSA key is about 2,800 characters.
MAX_TEXT: Final = 8192

_SHOWN = reprlib.Repr()
_SHOWN.maxlevel = 2
_SHOWN.maxstring = 72
_SHOWN.maxother = 72
_SHOWN.maxlong = 40
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 4


# A settings key as a path names it without quoting: pops[1].region.
PLAIN_KEY: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def shown(value: object) -> str:
    """A value as a message quotes it: on one line (repr escapes control characters), and short however large or
    deep the value is."""
    try:
        return _SHOWN.repr(value)
    except (ValueError, RecursionError):
        if isinstance(value, int):
            return f"a number of about {int(value.bit_length() * 0.30103):,} digits"
        return f"a {type(value).__name__}"


Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """A rule between settings broken: where (the setting's place, keys as the stack file spells them), and
    what would be valid."""

    loc: Loc
    message: str


def setting_error(message: str) -> PydanticCustomError:
    """A problem with one setting; the message says what would be valid. No placeholders are expanded in it."""
    return PydanticCustomError("setting", message)


def one_of(values: Sequence[str]) -> str:
    return "one of " + ", ".join(values)


# Control characters have no Unicode names; these are the ones a message is likely to meet.
_CONTROL_NAMES: Final = {
    "\x00": "NULL",
    "\t": "TAB",
    "\n": "LINE FEED",
    "\r": "CARRIAGE RETURN",
    "\x1b": "ESCAPE",
    "\x7f": "DELETE",
    "\x85": "NEXT LINE",
}


def unsafe_character(text: str) -> str | None:
    """Where `text` holds a control character or line separator, described for a message; None if it holds none."""
    found = UNSAFE_TEXT.search(text)
    if found is None:
        return None
    character = found.group()
    name = unicodedata.name(character, "") or _CONTROL_NAMES.get(character, "a control character")
    return f"holds {name} (U+{ord(character):04X}) at character {found.start() + 1}"


class Kind:
    """One kind of setting. Subclasses define `check` (raise `setting_error`), `json_schema`, `valid` (for the
    settings reference) and `must` (what a message says the value must be)."""

    valid = ""
    must = ""

    def check(self, value: object) -> object:
        raise NotImplementedError

    def json_schema(self) -> JsonSchema:
        raise NotImplementedError

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        validator = core_schema.no_info_plain_validator_function(self.check)
        # An optional setting (`str | None = None`): null, as an empty YAML value gives it, means left out.
        if type(None) in typing.get_args(source):
            return core_schema.nullable_schema(validator)
        return validator

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        if schema["type"] == "nullable":
            return {"anyOf": [self.json_schema(), {"type": "null"}]}
        return self.json_schema()


_DIGITS: Final = re.compile(r" *[0-9]{1,15} *")
_DIGITS_PATTERN: Final = "^ *[0-9]{1,15} *$"


class WholeNumber(Kind):
    """An integer in a range; also a string of digits, as Pulumi gives numbers set with `pulumi config set`."""

    def __init__(self, low: int, high: int, what: str = "a whole number") -> None:
        self.low, self.high, self.what = low, high, what
        self.valid = f"{low} to {high}"
        self.must = f"{what} from {low} to {high}"

    def check(self, value: object) -> int:
        number = int(value) if isinstance(value, str) and _DIGITS.fullmatch(value) else value
        if isinstance(number, int) and not isinstance(number, bool) and self.low <= number <= self.high:
            return number
        raise setting_error(f"must be {self.what} from {self.low} to {self.high}, got {shown(value)}")

    def json_schema(self) -> JsonSchema:
        return {
            "anyOf": [
                {"type": "integer", "minimum": self.low, "maximum": self.high},
                {"type": "string", "pattern": _DIGITS_PATTERN},
            ]
        }


class Fraction(Kind):
    """A number in a range (a latitude, a longitude)."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.valid = f"{low:g} to {high:g}"
        self.must = f"a number from {low:g} to {high:g}"

    def check(self, value: object) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high:
            return float(value)
        raise setting_error(f"must be a number from {self.low:g} to {self.high:g}, got {shown(value)}")

    def json_schema(self) -> JsonSchema:
        return {"type": "number", "minimum": self.low, "maximum": self.high}


_DECIMAL: Final = re.compile(r" *[0-9]{1,9}(\.[0-9]{1,9})? *")
_DECIMAL_PATTERN: Final = r"^ *[0-9]{1,9}(\.[0-9]{1,9})? *$"


class Amount(Fraction):
    """A quantity in a range, in a unit the message names (a bitrate in Mbit/s); also a string of digits with
    an optional decimal point, as Pulumi gives numbers set with `pulumi config set`."""

    def __init__(self, low: float, high: float, what: str) -> None:
        super().__init__(low, high)
        self.what = what
        self.must = f"{what} from {low:g} to {high:g}"

    def check(self, value: object) -> float:
        number = float(value) if isinstance(value, str) and _DECIMAL.fullmatch(value) else value
        if isinstance(number, int | float) and not isinstance(number, bool) and self.low <= number <= self.high:
            return float(number)
        raise setting_error(f"must be {self.must}, got {shown(value)}")

    def json_schema(self) -> JsonSchema:
        return {"anyOf": [super().json_schema(), {"type": "string", "pattern": _DECIMAL_PATTERN}]}


class Boolean(Kind):
    """true or false; also the strings "true" and "false" in any case, as Pulumi gives them."""

    valid = "`true`, `false`"
    must = "true or false"

    def check(self, value: object) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise setting_error(f"must be true or false, got {shown(value)}")

    def json_schema(self) -> JsonSchema:
        return {
            "anyOf": [{"type": "boolean"}, {"type": "string", "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"}]
        }


class Choice(Kind):
    """One of a few words: `Annotated[Literal["a", "b"], Choice(("a", "b"))]` keeps the Literal for mypy."""

    def __init__(self, options: Sequence[str], extra: str = "") -> None:
        self.options = tuple(options)
        self.extra = extra
        self.valid = ", ".join(f"`{option}`" for option in self.options)
        self.must = one_of(self.options) + extra

    def check(self, value: object) -> str:
        if isinstance(value, str) and value.strip(" ") in self.options:
            return value.strip(" ")
        if isinstance(value, str) and value.strip(" "):
            raise setting_error(f"{shown(value.strip(' '))} is not valid; use {one_of(self.options)}{self.extra}")
        raise setting_error(f"must be {one_of(self.options)}{self.extra}, got {shown(value)}")

    def json_schema(self) -> JsonSchema:
        return {"type": "string", "enum": list(self.options)}


class Text(Kind):
    """A one-line string, trimmed of spaces, never empty, without control characters or line separators."""

    def __init__(
        self,
        must: str,
        accept: Callable[[str], bool] | None = None,
        *,
        explain: Callable[[str], str | None] | None = None,
        normalize: Callable[[str], str] | None = None,
        pattern: str | None = None,
        max_length: int = MAX_TEXT,
        valid: str | None = None,
        schema: JsonSchema | None = None,
    ) -> None:
        self.must = must
        self.accept = accept
        self.explain = explain
        self.normalize = normalize
        self.pattern = pattern
        self.max_length = max_length
        self.valid = valid or must
        self.schema = schema

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise setting_error(f"must be {self.must}, got {shown(value)}")
        text = value.strip(" ")
        if (where := unsafe_character(text)) is not None:
            raise setting_error(f"{where}: it must be {self.must}, on one line")
        if not text:
            raise setting_error(f"must be {self.must}, got {shown(value)}")
        if len(text) > self.max_length:
            raise setting_error(
                f"is {len(text):,} characters long; it must be {self.must}, at most {self.max_length:,}"
            )
        if self.accept is not None and not self.accept(text):
            raise setting_error(f"must be {self.must}, got {shown(text)}")
        if self.explain is not None and (message := self.explain(text)) is not None:
            raise setting_error(message)
        return self.normalize(text) if self.normalize is not None else text

    def json_schema(self) -> JsonSchema:
        if self.schema is not None:
            return dict(self.schema)
        schema: JsonSchema = {"type": "string", "minLength": 1, "maxLength": self.max_length}
        schema["pattern"] = self.pattern or f"^[^{UNSAFE_TEXT_PATTERN[1:-1]}]*$"
        return schema


# --- names, addresses and paths ------------------------------------------------------------------------------

LABEL: Final = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DNS_NAME_PATTERN: Final = rf"^({LABEL}\.)+{LABEL}\.?$"
_LABEL: Final = re.compile(LABEL)


def is_hostname(value: str) -> bool:
    labels = value.rstrip(".").split(".")
    return len(value) <= 253 and len(labels) >= 2 and all(_LABEL.fullmatch(label) for label in labels)


def is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


HOST_PATTERN: Final = r"^([a-z0-9.-]+|[0-9A-Fa-f:.]+)$"
SSH_KEY_TYPES: Final = r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com)"
# A comment is printable ASCII: a line break or separator in it would end the line in authorized_keys or YAML.
SSH_PUBLIC_KEY_PATTERN: Final = rf"^{SSH_KEY_TYPES} [A-Za-z0-9+/]+={{0,3}}( [\x21-\x7e][\x20-\x7e]*)?$"
SSH_HOST_KEY_PATTERN: Final = rf"^{SSH_KEY_TYPES} [A-Za-z0-9+/]+={{0,3}}$"
UNIX_USER_PATTERN: Final = r"^[a-z_][a-z0-9_-]{0,31}$"
EMAIL_PATTERN: Final = r"^[A-Za-z0-9._%+-]+@([A-Za-z0-9-]+\.)+[A-Za-z]{2,}$"
# The plexmediaserver package version as dpkg prints it, e.g. 1.41.3.9314-a0bfb8370.
PLEX_VERSION_PATTERN: Final = r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+-[0-9a-f]{7,40}$"
# Also a Linode label part: no "--", and it must end in a letter or digit.
MACHINE_NAME_PATTERN: Final = r"^[a-z](-?[a-z0-9])*$"


def matches(pattern: str) -> Callable[[str], bool]:
    compiled = re.compile(pattern, re.ASCII)
    return lambda value: compiled.fullmatch(value) is not None


def host(must: str = "a DNS name or an IP address") -> Text:
    return Text(must, lambda v: is_ip_address(v) or is_hostname(v), pattern=HOST_PATTERN, max_length=253)


def unix_user() -> Text:
    return Text("a user name such as root or admin", matches(UNIX_USER_PATTERN), pattern=UNIX_USER_PATTERN)


def ssh_host_key() -> Text:
    return Text(
        "the machine's SSH host key as `ssh-keyscan -t ed25519 HOST` prints it after the host name "
        "(ssh-ed25519 AAAA...): `pulumi up` then sends its secrets to that machine and no other",
        matches(SSH_HOST_KEY_PATTERN),
        pattern=SSH_HOST_KEY_PATTERN,
        valid="an SSH host key line without a comment (`ssh-ed25519 AAAA...`), as `ssh-keyscan -t ed25519` prints it",
    )


def machine_name(length: int, names: str) -> Text:
    return Text(
        f"1-{length} lower-case letters, digits or single '-', starting with a letter and ending in a letter or "
        f"digit (it names {names})",
        lambda v: len(v) <= length and matches(MACHINE_NAME_PATTERN)(v),
        pattern=MACHINE_NAME_PATTERN,
        max_length=length,
        valid=f"1 to {length} lower-case letters, digits or single `-`, starting with a letter and ending in a "
        "letter or digit",
    )


def inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


_PATH_UNSAFE: Final = re.compile(r'["\\]')


def shared_path_problem(value: str, system_dirs: Sequence[str], plex_home: str) -> str | None:
    """Why a directory cannot be shared with transcode slaves at the same path, or None."""
    if not value.startswith("/") or value.startswith("//") or posixpath.normpath(value) != value:
        return "must be an absolute path without '.', '..', '//' or a trailing '/', e.g. /srv/media"
    if value == "/":
        return "must not be / (the whole system)"
    if _PATH_UNSAFE.search(value):
        return "must not hold control characters, double quotes or backslashes (fstab and exports cannot carry them)"
    for system in system_dirs:
        if inside(value, system) or inside(system, value):
            return f"overlaps {system}, which each slave needs for itself; share a directory of your own data"
    if inside(plex_home, value):
        return (
            f"holds {plex_home}, the plex account's home on the slaves (its .ssh is where the origin's key is "
            "authorised); share a directory below it, such as the app data dir"
        )
    return None


def absolute_dir_problem(value: str) -> str | None:
    if not value.startswith("/") or _PATH_UNSAFE.search(value) or value.rstrip("/") == "":
        return "must be an absolute directory path such as /srv/media, without quotes or backslashes"
    return None


ABSOLUTE_PATH_PATTERN: Final = rf'^/[^{UNSAFE_TEXT_PATTERN[1:-1]}"\\]*$'


# --- networks ---------------------------------------------------------------------------------------------------


class PrivateIPv4Subnet(Kind):
    def __init__(self, example: str) -> None:
        self.example = example
        self.valid = f"a private IPv4 network of at least 4 addresses, e.g. `{example}`"
        self.must = f"a private IPv4 network of at least 4 addresses such as {example}"

    def check(self, value: object) -> ipaddress.IPv4Network:
        if not isinstance(value, str):
            raise setting_error(f"must be {self.must}, got {shown(value)}")
        text = value.strip(" ")
        try:
            subnet = ipaddress.IPv4Network(text) if text and UNSAFE_TEXT.search(text) is None else None
        except ValueError:
            subnet = None
        if subnet is None:
            raise setting_error(f"{shown(value)} is not an IPv4 network such as {self.example}")
        if not subnet.is_private or subnet.num_addresses < 4:
            raise setting_error(f"must be a private IPv4 network of at least 4 addresses, e.g. {self.example}")
        return subnet

    def json_schema(self) -> JsonSchema:
        return {"type": "string", "pattern": r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$"}


# Networks a cloud firewall never sees as a source: the deploying machine reaches a VM from its public address.
LOCAL_NETWORKS: Final = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
)
# The broadest network SSH may be opened to: one provider's allocation, not a share of the internet.
SSH_MIN_PREFIX: Final = {4: 8, 6: 32}


def is_local_network(network: Network) -> bool:
    return any(network.version == local.version and network.subnet_of(local) for local in LOCAL_NETWORKS)  # type: ignore[arg-type]


def _share(network: Network) -> str:
    return "the whole internet" if network.prefixlen == 0 else "a large share of the internet"


class SshSource(Kind):
    """A network every VM's firewall admits on port 22: an address of one's own, never a share of the internet,
    never a private network (a cloud firewall sees the public address a router gives a machine)."""

    def __init__(self, example: str, instead: str) -> None:
        self.example = example
        self.instead = instead
        self.must = f"a network in CIDR form such as {example}"
        self.valid = (
            f"a network in CIDR form (host bits zero), e.g. `{example}`; at most a /{SSH_MIN_PREFIX[4]} or an "
            f"IPv6 /{SSH_MIN_PREFIX[6]}; not a private network"
        )

    def check(self, value: object) -> Network:
        if not isinstance(value, str):
            raise setting_error(f"must be {self.must}, got {shown(value)}")
        text = value.strip(" ")
        try:
            network = ipaddress.ip_network(text) if text and UNSAFE_TEXT.search(text) is None else None
        except ValueError:
            network = None
        if network is None:
            raise setting_error(
                f"{shown(value)} is not a network in CIDR form such as {self.example} (host bits must be zero)"
            )
        if network.prefixlen < SSH_MIN_PREFIX[network.version]:
            raise setting_error(
                f"{network} is too broad for SSH: it would open SSH on every VM to {_share(network)}; {self.instead}"
            )
        if is_local_network(network):
            raise setting_error(
                f"{network} is a private network: a cloud firewall sees the public address a machine's router "
                "gives it; give that public address instead"
            )
        return network

    def json_schema(self) -> JsonSchema:
        return {"type": "string", "pattern": r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"}


class AnyNetwork(Kind):
    """A network a machine connects from, host bits allowed (203.0.113.7/24 means 203.0.113.0/24)."""

    valid = "a network such as `203.0.113.0/24` or `2001:db8::/48`"
    must = "a network such as 203.0.113.0/24 or 2001:db8::/48"

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise setting_error(f"must be {self.must}, got {shown(value)}")
        text = value.strip(" ")
        try:
            network = ipaddress.ip_network(text, strict=False) if text and not UNSAFE_TEXT.search(text) else None
        except ValueError:
            network = None
        if network is None:
            raise setting_error(f"{shown(value)} is not a network such as 203.0.113.0/24 or 2001:db8::/48")
        return str(network)

    def json_schema(self) -> JsonSchema:
        return {"type": "string", "pattern": r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"}


# --- containers -------------------------------------------------------------------------------------------------


class ListOf:
    """A list setting: its items keep their own kinds; the list itself must be a list of the right length."""

    def __init__(self, must: str, *, min_items: int = 1, max_items: int | None = None, optional: bool = False) -> None:
        self.must = must
        self.min_items = min_items
        self.max_items = max_items
        self.optional = optional
        self.valid = must

    def _check(self, value: object) -> object:
        if value is None and self.optional:
            return ()
        if (
            not isinstance(value, list | tuple)
            or len(value) < self.min_items
            or (self.max_items is not None and len(value) > self.max_items)
        ):
            raise setting_error(f"must be {self.must}, got {shown(value)}")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        generated = handler(schema)
        if self.min_items:
            generated["minItems"] = self.min_items
        if self.max_items is not None:
            generated["maxItems"] = self.max_items
        return {"anyOf": [generated, {"type": "null"}]} if self.optional else generated


class Section:
    """An optional mapping of settings with defaults: absent, empty and null all mean the defaults."""

    def _check(self, value: object) -> object:
        return {} if value is None else value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"anyOf": [handler(schema), {"type": "null"}]}


@dataclass(frozen=True)
class Missing:
    """The message when a required setting is left out, in place of "is required"."""

    message: str


@dataclass(frozen=True)
class Doc:
    """What the settings reference says where the model cannot: a default that depends on other settings, or a
    description of the valid values in words."""

    default: str | None = None
    valid: str | None = None
