"""Every leaf setting of both example stacks (the dev stack's commented examples on), changed to a value of
the wrong type and, where the setting has a range or a set of choices, to one outside it: the model's message
names exactly that setting and says what would be valid, and the published JSON Schema refuses it too."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plexcdn import stack_schema
from plexcdn.config import ConfigError, StackConfig, parse_config
from plexcdn.setting_kinds import Choice, Fraction, WholeNumber, shown
from plexcdn.settings_model import setting_at
from tests.conftest import ROOT, example_values
from tests.stack_examples import Path, example_documents, path_text, setting_leaves, settings_of, with_leaf

DOCUMENTS = example_documents()
SCHEMA = json.loads((ROOT / stack_schema.SCHEMA_FILE).read_text())
VALIDATOR = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
# Settings whose valid values are a set a rule checks (a provider's table, the other POPs' names, the ACME
# servers), by their last key; the kinds of the others say whether they have a range or choices.
# (An upstream that is not even a POP name: a schema cannot know the other POPs' names, only their form.)
RULE_CHOSEN = {"region": "mars-1", "size": "s-64vcpu", "upstream": "no-such-pop", "server": "letsencrypt"}


def wrong_types(value: Any) -> list[Any]:
    """Values of another type than the setting's: a mapping always, and a scalar of another kind."""
    scalar: Any = 12345 if isinstance(value, str) else 7 if isinstance(value, bool) else "twelve"
    return [{"wrong": "type"}, scalar]


def outside(path: Path, value: Any) -> list[tuple[Any, str]]:
    """(a value outside the setting's range or choices, what its message must then contain)."""
    _, field = setting_at(StackConfig, tuple(part for part in path if isinstance(part, str)))
    assert field is not None, path
    for kind in field.metadata:
        if isinstance(kind, WholeNumber):
            span = f"from {kind.low} to {kind.high}"
            return [(kind.low - 1, span), (kind.high + 1, span)]
        if isinstance(kind, Fraction):
            span = f"from {kind.low:g} to {kind.high:g}"
            return [(kind.low - 1, span), (kind.high + 1, span)]
        if isinstance(kind, Choice):
            return [(f"no-{value}", str(value))]
    last = next(part for part in reversed(path) if isinstance(part, str))
    if last in RULE_CHOSEN:
        # The message lists the valid choices, so the example's own value is among them.
        return [(RULE_CHOSEN[last], str(value))]
    return []


def mutations() -> list[tuple[str, Path, Any, str]]:
    found: list[tuple[str, Path, Any, str]] = []
    for name, document in DOCUMENTS.items():
        for path, value in setting_leaves(document):
            # The message quotes what was given.
            found.extend((name, path, wrong, shown(wrong)) for wrong in wrong_types(value))
            found.extend((name, path, bad, expected) for bad, expected in outside(path, value))
    return found


MUTATIONS = mutations()


def problems_of(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(settings_of(document), "dev")
    return list(caught.value.problems)


def test_both_example_stacks_with_their_commented_examples_are_valid_and_match_the_schema() -> None:
    for name, document in DOCUMENTS.items():
        parse_config(settings_of(document), "dev")
        assert not list(VALIDATOR.iter_errors(document)), name


def test_every_setting_of_the_examples_is_changed_and_ranges_and_choices_are_tried() -> None:
    changed = {path_text(path) for _, path, value, expected in MUTATIONS if expected != shown(value)}
    # Ranges and choices from the kinds and from the rules, in every section.
    assert {
        "origin.port",
        "origin.link",
        "acme.server",
        "nginx.streamBufferMb",
        "pops[0].provider",
        "pops[0].region",
        "pops[0].size",
        "pops[1].upstream",
        "transcode.plexUid",
        "transcode.slaves[1].kind",
        "transcode.slaves[1].region",
        "library.swarmPort",
        "library.viewers[0].cacheGb",
        "library.viewers[1].provider",
        "viewing.hoursPerMonth",
        "viewing.bitrateMbps",
    } <= changed
    assert len({(name, path) for name, path, _, _ in MUTATIONS}) == sum(
        len(list(setting_leaves(document))) for document in DOCUMENTS.values()
    )


@pytest.mark.parametrize(
    ("stack", "path", "value", "expected"),
    MUTATIONS,
    ids=[f"{stack}:{path_text(path)}={value!r}" for stack, path, value, _ in MUTATIONS],
)
def test_each_wrong_value_is_named_by_its_setting_with_what_would_be_valid(
    stack: str, path: Path, value: Any, expected: str
) -> None:
    setting = path_text(path)
    problems = problems_of(with_leaf(DOCUMENTS[stack], path, value))
    named = [problem for problem in problems if problem.startswith(f"{setting}: ")]
    assert named, problems
    message = named[0][len(setting) + 2 :]
    assert expected in message, named[0]
    assert any(word in message for word in ("must", "use ", "one of", "such as")), named[0]


@pytest.mark.parametrize(
    ("stack", "path", "value", "expected"),
    MUTATIONS,
    ids=[f"{stack}:{path_text(path)}={value!r}" for stack, path, value, _ in MUTATIONS],
)
def test_the_schema_refuses_each_wrong_value(stack: str, path: Path, value: Any, expected: str) -> None:
    errors = list(VALIDATOR.iter_errors(with_leaf(DOCUMENTS[stack], path, value)))
    assert errors, f"the schema admits {path_text(path)} = {value!r}"


UNSAFE = ["\n", "\r", "\x00", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\u2029"]


def string_leaves() -> list[tuple[str, Path, str]]:
    return [
        (name, path, value)
        for name, document in DOCUMENTS.items()
        for path, value in setting_leaves(document)
        if isinstance(value, str)
    ]


@pytest.mark.parametrize("character", UNSAFE, ids=[f"U+{ord(c):04X}" for c in UNSAFE])
def test_no_string_setting_takes_a_control_character_or_line_separator(character: str) -> None:
    """Anywhere in the value, at its ends too: a value reaching a rendered file must not end or hide a line."""
    for stack, path, value in string_leaves():
        for placed in (value[:2] + character + value[2:], value + character):
            problems = problems_of(with_leaf(DOCUMENTS[stack], path, placed))
            assert any(p.startswith(f"{path_text(path)}: ") for p in problems), (path, placed, problems)
            assert all("\n" not in p and "\u2028" not in p and "\x85" not in p for p in problems), problems


def test_the_comment_of_the_admin_key_is_printable_ascii() -> None:
    values = example_values()
    for comment in ('you@laptop\u2028command="sh"', "you\x00", "café"):
        values["admin"]["sshPublicKey"] = f"{values['admin']['sshPublicKey'].rsplit(' ', 1)[0]} {comment}"
        with pytest.raises(ConfigError) as caught:
            parse_config(values, "dev")
        assert [p for p in caught.value.problems if p.startswith("admin.sshPublicKey: ")], caught.value.problems


def test_strings_pulumi_gives_for_numbers_and_booleans_are_read_as_before() -> None:
    values = example_values()
    values["origin"]["port"] = "32400"
    values["nginx"] = {"viewerHttp2": "true", "streamBufferMb": " 8 ", "artworkCacheMb": "0"}
    values["origin"]["agent"] = {
        "listenPort": "32443",
        "applyFirewall": "FALSE",
        "sshHostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHomeHostKeyForTheTestsOnlyNotARealMachine0",
    }
    config = parse_config(values, "dev")
    assert config.origin.port == 32400 and config.origin.agent is not None
    assert config.origin.agent.listen_port == 32443 and config.origin.agent.apply_firewall is False
    assert (
        config.nginx.viewer_http2 is True and config.nginx.stream_buffer_mb == 8 and config.nginx.artwork_cache_mb == 0
    )
    for port, hint in (("²", "'²'"), ("٣٢٤٠٠", "got"), ("1e3", "got"), ("0x7d00", "got"), ("9" * 16, "got")):
        values["origin"]["port"] = port
        with pytest.raises(ConfigError) as caught:
            parse_config(values, "dev")
        assert [p for p in caught.value.problems if p.startswith("origin.port: must be a whole number")], port
        assert any(hint in p for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    ("cidr", "hint"),
    [
        ("::/1", "too broad for SSH"),
        ("::/0", "the whole internet"),
        ("0.0.0.0/1", "too broad for SSH"),
        ("2001::/16", "at most a /8 or an IPv6 /32"),
        ("192.168.1.0/24", "is a private network"),
        ("fd00:1::/48", "is a private network"),
    ],
)
def test_an_admin_network_broader_than_deploy_from_allows_is_too_broad_for_ssh(cidr: str, hint: str) -> None:
    values = example_values()
    values["admin"]["cidr"] = cidr
    with pytest.raises(ConfigError) as caught:
        parse_config(values, "dev")
    assert [p for p in caught.value.problems if p.startswith("admin.cidr: ") and hint in p], caught.value.problems
    values["admin"]["cidr"] = "2001:db8::/32"
    assert str(parse_config(values, "dev").admin.cidr) == "2001:db8::/32"


def test_rules_between_settings_run_when_other_settings_are_wrong() -> None:
    """The POP tree is checked although a POP's size and the domain are wrong, and an agent's port although
    its host key is missing: one run reports all of them."""
    values = example_values()
    values["domain"] = "not a domain"
    values["pops"][0]["size"] = "huge"
    values["pops"][1]["upstream"] = "nowhere"
    values["origin"]["agent"] = {"listenPort": 32400}
    with pytest.raises(ConfigError) as caught:
        parse_config(values, "dev")
    settings = [p.split(": ")[0] for p in caught.value.problems]
    assert settings == [
        "domain",
        "origin.agent.sshHostKey",
        "origin.agent.listenPort",
        "pops[0].size",
        "pops[1].upstream",
    ], caught.value.problems


def test_a_rule_is_not_run_over_a_setting_that_is_itself_wrong() -> None:
    """A POP whose name is wrong is not also reported as a missing upstream of its edges."""
    values = example_values()
    values["pops"][0]["name"] = "US!"
    with pytest.raises(ConfigError) as caught:
        parse_config(values, "dev")
    assert [p.split(": ")[0] for p in caught.value.problems] == ["pops[0].name"], caught.value.problems


def test_the_stack_name_and_warnings_are_not_settings() -> None:
    for key in ("stack", "warnings"):
        values = example_values()
        values[key] = "x"
        with pytest.raises(ConfigError) as caught:
            parse_config(values, "dev")
        assert caught.value.problems == (
            f"{key}: unknown setting; valid settings here: domain, sharedHostname, acme, origin, admin, nginx, pops, "
            "viewing, transcode, library, plex",
        )


# The Pulumi program under the mock engine, in a process of its own: reading 5,000 nested arrays leaves a
# RecursionError behind in the interpreter that runs it, as it would leave one in `pulumi up`'s.
PROGRAM_RUN = """
import json, runpy, sys
import pulumi
from labs.mock_engine import install_mocks
_, monitor = install_mocks("dev")
pulumi.runtime.set_all_config(json.loads(sys.stdin.read()))
try:
    runpy.run_path("__main__.py", run_name="__main__")
except pulumi.RunError as error:
    print(json.dumps({"error": str(error), "registered": len(monitor.registrations)}))
"""


def test_the_pulumi_program_stops_with_the_problems_alone_before_any_resource() -> None:
    """Values Pulumi cannot even read as JSON (nested past Python's recursion limit, a number too long to
    convert) are named with every other problem, and nothing is registered."""
    settings = {
        f"plex-cdn:{key}": value if isinstance(value, str) else json.dumps(value)
        for key, value in example_values().items()
    }
    settings["plex-cdn:pops"] = "[" * 5000 + "]" * 5000
    settings["plex-cdn:nginx"] = '{"streamBufferMb": ' + "9" * 5000 + "}"
    settings["plex-cdn:domain"] = "example.com\u2028evil"
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM_RUN],
        input=json.dumps(settings),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    assert result.stdout, result.stderr
    outcome = json.loads(result.stdout)
    lines = outcome["error"].splitlines()
    assert lines[0] == "invalid stack configuration:"
    assert [line.split(": ")[0].strip() for line in lines[1:-1]] == ["domain", "nginx", "pops"], lines
    assert "got a value that is not readable JSON" in lines[2] and "got a value that is not readable JSON" in lines[3]
    assert lines[-1] == "Fix the settings in Pulumi.dev.yaml"
    assert outcome["registered"] == 0


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


@st.composite
def damaged_documents(draw: st.DrawFn) -> dict[str, Any]:
    """The dev stack with its examples on, a few of its settings (leaves or whole sections) replaced by junk."""
    document = DOCUMENTS["Pulumi.dev.yaml"]
    places = [path for path, _ in setting_leaves(document)]
    places += sorted({path[:cut] for path in places for cut in range(1, len(path))}, key=repr)
    for path in draw(st.lists(st.sampled_from(places), min_size=1, max_size=4)):
        try:
            document = with_leaf(document, path, draw(junk))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change already replaced what held this place
    return document


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_documents())
def test_any_damage_anywhere_is_a_config_error_naming_settings_never_a_crash(document: dict[str, Any]) -> None:
    try:
        parse_config(settings_of(document), "dev")
    except ConfigError as error:
        assert error.problems
        for problem in error.problems:
            setting, _, message = problem.partition(": ")
            assert setting and message and "\n" not in problem, problem
