"""Stack files generated to break the reader: control characters and line or paragraph separators in the
example stack's strings, YAML tags, anchors and alias bombs, huge and odd numbers, deep nesting, wrong
encodings and valid-but-absurd values, each through `python -m plexcdn validate` in a process of its own.

Every document is refused with lines that name a setting (or the file), or accepted; none escapes with a
traceback or runs past the hang guard. An accepted document's render must have the example's shape: the
same files, the same cloud-init keys and written paths, the same nginx directives with the same number of
arguments, and the same number of shell words on every line of every script. A value that slipped a `;`,
a brace, a line break or a space through validation into a template shows up as a difference there."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests import stack_file_driver
from tests.conftest import ROOT, example_values
from tests.test_hostile_stack_files import billion_laughs

DOCUMENTS = 500

HOSTILE_CHARACTERS = [
    *(chr(code) for code in range(0x20)),
    "\x7f",
    "\x85",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\u200b",
    "\u202e",
    "\ufffd",
    "\u0131",
    "\uff0e",
    "\U0001f600",
    ";",
    "{",
    "}",
    "'",
    '"',
    "`",
    "$(",
    "\\",
    " ",
    "#",
    "*",
    "&",
    "|",
    "%",
    "<",
    ">",
    "!",
    "..",
    "/",
    ":",
    "@",
]

# None, booleans, zero and the like are left out: where a setting is optional or a switch (`artworkCacheMb: 0`
# turns the cache off) they are valid and choose another shape of stack, which is not what this compares.
ABSURD_VALUES: list[Any] = [
    -1,
    1,
    65535,
    65536,
    2**31,
    2**63,
    10**30,
    -(10**30),
    0.5,
    1e308,
    float("inf"),
    float("nan"),
    "",
    " 4",
    "4 ",
    "1e3",
    [],
    {},
    [[[]]],
    {"": ""},
]

# YAML written as text where a value goes: what yaml.safe_dump would never produce.
RAW_YAML = [
    '!!python/object/apply:os.system ["true"]',
    "!!python/name:os.system",
    "!!binary aGVsbG8=",
    "!custom value",
    "!!timestamp 2001-12-14",
    "2001-12-14",
    ".nan",
    "-.inf",
    "0x1F",
    "0o17",
    "1_000",
    "1e99999",
    "9" * 5000,
    "&anchor value",
    "*undefined",
    "[&a x, *a, *a]",
    "&self {k: *self}",
    billion_laughs(),
    "[" * 5000 + "]" * 5000,
    "{" * 2000 + "}" * 2000,
    "{a: 1, a: 2}",
    "? [a, b] : c",
    "{<<: {email: x@example.com}}",
    "!!set {a, b}",
    "!!omap [a: 1]",
    '"\\uD800"',
    '"\\x00"',
    "'it''s'",
    '"a\\u2028b"',
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in the settings a value could be replaced, subtrees included."""
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


def _get(values: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        values = values[part]
    return values


def _set(values: Any, path: tuple[Any, ...], replacement: Any) -> None:
    """Replace what is at `path`, if an earlier replacement of a subtree left it there."""
    try:
        parent = _get(values, path[:-1])
        parent[path[-1]]
    except (KeyError, IndexError, TypeError):
        return
    parent[path[-1]] = replacement


EXAMPLE_PATHS = list(_paths(example_values()))
STRING_PATHS = [path for path in EXAMPLE_PATHS if isinstance(_get(example_values(), path), str)]

hostile_text = st.lists(st.sampled_from(HOSTILE_CHARACTERS) | st.text(max_size=3), min_size=1, max_size=4).map("".join)


@st.composite
def hostile_string(draw: st.DrawFn, original: str) -> str:
    how = draw(st.sampled_from(["insert", "replace", "repeat"]))
    if how == "insert":
        at = draw(st.integers(0, len(original)))
        return original[:at] + draw(hostile_text) + original[at:]
    if how == "replace":
        return draw(hostile_text)
    return original * draw(st.sampled_from([100, 1000, 20_000]))


# Odd but possibly valid: what a value may be and still be accepted, so that accepted documents are many.
ODD_BUT_VALID_TEXT = ["-", "0", "9", "x", "Z", "xn--", "+tag", ".", "a-b"]


@st.composite
def odd_but_valid(draw: st.DrawFn, original: Any) -> Any:
    if isinstance(original, int) and not isinstance(original, bool):
        return draw(st.integers(1, 2 * original + 2) | st.sampled_from([-1, str(original), f"{original}.0"]))
    at = draw(st.integers(0, len(original)))
    return original[:at] + draw(st.sampled_from(ODD_BUT_VALID_TEXT)) + original[at:]


NUMBER_PATHS = [path for path in EXAMPLE_PATHS if type(_get(example_values(), path)) is int]


@st.composite
def hostile_documents(draw: st.DrawFn) -> bytes:
    values = example_values()
    raw: dict[str, str] = {}
    for index in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["string", "string", "odd", "odd", "odd", "odd", "absurd", "raw"]))
        if kind == "odd":
            path = draw(st.sampled_from(STRING_PATHS + NUMBER_PATHS))
            _set(values, path, draw(odd_but_valid(_get(example_values(), path))))
        elif kind == "string":
            path = draw(st.sampled_from(STRING_PATHS))
            original = _get(example_values(), path)
            _set(values, path, draw(hostile_string(original)))
        elif kind == "absurd":
            _set(values, draw(st.sampled_from(EXAMPLE_PATHS)), draw(st.sampled_from(ABSURD_VALUES)))
        else:
            sentinel = f"HOSTILE{index}SENTINEL"
            raw[sentinel] = draw(st.sampled_from(RAW_YAML))
            _set(values, draw(st.sampled_from(EXAMPLE_PATHS)), sentinel)
    document = {"config": {f"plex-cdn:{key}": value for key, value in values.items()}}
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1_000_000)
    for sentinel, yaml_text in raw.items():
        text = text.replace(sentinel, yaml_text)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-32", "latin-1", "broken"]))
    if encoding == "broken":
        content = text.encode()
        at = draw(st.integers(0, len(content)))
        return content[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00"])) + content[at:]
    return text.encode(encoding, errors="replace")


@dataclass
class Driver:
    process: subprocess.Popen[str]

    def run(self, *argv: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(list(argv)) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the driver died"
        answer: dict[str, Any] = json.loads(line)
        return answer


@pytest.fixture(scope="module")
def driver() -> Iterator[Driver]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.stack_file_driver"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield Driver(process)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


# --- the render's shape ---------------------------------------------------------------------------------------------

NGINX_TOKEN = re.compile(r"""\s+|#[^\n]*|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[{};]|[^\s{};"']+""")


def nginx_directives(text: str) -> list[tuple[int, str, int]]:
    """(block depth, directive, number of arguments), in order, tokenized as nginx's parser does."""
    directives: list[tuple[int, str, int]] = []
    depth = 0
    words: list[str] = []
    for match in NGINX_TOKEN.finditer(text):
        token = match.group()
        if token.isspace() or token.startswith("#"):
            continue
        if token in ("{", ";"):
            directives.append((depth, words[0] if words else "", len(words) - 1))
            words = []
            depth += token == "{"
        elif token == "}":
            depth -= 1
        else:
            words.append(token)
    assert not words and depth == 0, "an unterminated directive or block"
    return directives


def shell_words(line: str) -> int:
    try:
        return len(shlex.split(line, comments=True))
    except ValueError:
        return -1  # a quote that spans lines: the count of the example's same line must be -1 too


@dataclass(frozen=True)
class Shape:
    files: list[str]
    nginx: dict[str, list[tuple[int, str, int]]]
    cloud_init_keys: list[str]
    written_paths: list[str]
    commands: list[int]
    script_words: dict[str, list[int]]


def shapes(out: Path, written: list[str]) -> list[Shape]:
    """One shape per POP, in the stack's order (the directories carry the POPs' names, which may differ)."""
    pops: dict[str, list[Path]] = {}
    for line in written:
        path = Path(line)
        pops.setdefault(path.relative_to(out).parts[0], []).append(path)
    result = []
    for directory, paths in pops.items():
        names = sorted(str(path.relative_to(out / directory)) for path in paths)
        nginx = {
            name: nginx_directives((out / directory / name).read_text()) for name in names if name.endswith(".conf")
        }
        cloud_init = yaml.safe_load((out / directory / "cloud-init.yaml").read_text())
        written_files = cloud_init.get("write_files", [])
        scripts = {
            entry["path"]: [shell_words(line) for line in entry["content"].splitlines()]
            for entry in written_files
            if str(entry.get("content", "")).startswith("#!")
        }
        commands = [
            shell_words(command) if isinstance(command, str) else len(command)
            for key in ("bootcmd", "runcmd")
            for command in cloud_init.get(key, [])
        ]
        result.append(
            Shape(names, nginx, list(cloud_init), [entry["path"] for entry in written_files], commands, scripts)
        )
    return result


@pytest.fixture(scope="module")
def example_shapes(driver: Driver, tmp_path_factory: pytest.TempPathFactory) -> list[Shape]:
    directory = tmp_path_factory.mktemp("example")
    stack_file = directory / "Pulumi.example.yaml"
    stack_file.write_text(yaml.safe_dump({"config": {f"plex-cdn:{k}": v for k, v in example_values().items()}}))
    out = directory / "out"
    rendered = driver.run("render", str(stack_file), "--out", str(out))
    assert rendered["status"] == 0, rendered
    return shapes(out, rendered["stdout"].splitlines())


# --- the fuzzing ------------------------------------------------------------------------------------------------

TOP_LEVEL_SETTINGS = set(example_values()) | {"transcode", "library", "plex", "homeSshKey", "plexToken"}
# `error: <setting>[.<key>|[<index>]|['<odd key>']]...: <what is wrong>` (a path too deep to print ends in
# `...`), or a problem with the file itself.
NAMED_SETTING = re.compile(
    r"error: (?:plex-cdn:)?([A-Za-z][A-Za-z0-9]*)(?:\.[A-Za-z0-9_-]+|\[\d+\]|\[['\"].*?['\"]\])*(?:\.\.\.)?: "
)


def names_a_setting_or_the_file(line: str, stack_file: Path) -> bool:
    if line.startswith(f"error: {stack_file}"):
        return True
    named = NAMED_SETTING.match(line)
    return named is not None and named.group(1) in TOP_LEVEL_SETTINGS


@settings(
    max_examples=DOCUMENTS,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(document=hostile_documents())
def test_a_hostile_stack_file_is_refused_by_name_or_renders_the_examples_shape(
    document: bytes, driver: Driver, example_shapes: list[Shape], tmp_path: Path
) -> None:
    stack_file = tmp_path / "Pulumi.fuzz.yaml"
    stack_file.write_bytes(document)
    validated = driver.run("validate", str(stack_file))
    assert not validated["hung"], f"validate ran past {stack_file_driver.HANG_GUARD_SECONDS} s"
    assert validated["traceback"] is None, validated["traceback"]
    assert "Traceback" not in validated["stderr"], validated["stderr"]
    errors = [line for line in validated["stderr"].splitlines() if not line.startswith("warning: ")]
    if validated["status"] == 1:
        assert errors, "refused without saying why"
        unnamed = [line for line in errors if not names_a_setting_or_the_file(line, stack_file)]
        assert not unnamed, unnamed
        quoting = [f"{line[:200]}... ({len(line):,} characters)" for line in errors if len(line) >= 2000]
        assert not quoting, f"a message quotes a value whole: {quoting}"
        event("refused")
        return
    event("accepted")
    assert validated["status"] == 0 and not errors, validated
    out = tmp_path / "out"
    rendered = driver.run("render", str(stack_file), "--out", str(out))
    assert rendered["status"] == 0 and rendered["traceback"] is None, rendered
    assert shapes(out, rendered["stdout"].splitlines()) == example_shapes


def test_a_value_that_breaks_out_of_its_template_changes_the_shape(tmp_path: Path) -> None:
    """The comparison above sees an injected directive and an injected shell word."""
    assert nginx_directives("server_name a.example.com; listen 443;") != nginx_directives(
        "server_name a.example.com; include /x; listen 443;"
    )
    assert nginx_directives('add_header X "a;b";') == [(0, "add_header", 2)]
    assert shell_words("certbot -d 'a.example.com'") != shell_words("certbot -d a.example.com x")
    with pytest.raises(AssertionError):
        nginx_directives("server { listen 443;")
