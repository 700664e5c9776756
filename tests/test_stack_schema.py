"""The stack file's JSON Schema and the settings reference are generated from the models, and what is
committed is what they generate."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
import yaml

from plexcdn import stack_schema
from plexcdn.transcode.layout import PLEX_HOME, SYSTEM_DIRS
from tests.conftest import ROOT

SCHEMA_PATH = ROOT / stack_schema.SCHEMA_FILE
REFERENCE_PATH = ROOT / stack_schema.REFERENCE_FILE


def test_the_committed_schema_is_what_the_models_generate() -> None:
    assert SCHEMA_PATH.read_text() == stack_schema.schema_text(), (
        f"{stack_schema.SCHEMA_FILE} differs from the models; regenerate it: {stack_schema.REGENERATE}"
    )


def test_the_schema_command_prints_the_committed_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "plexcdn", "schema"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == SCHEMA_PATH.read_text()


def test_the_schema_is_a_draft_7_schema_editors_can_use() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)


def test_both_example_stacks_name_the_schema_by_a_path_relative_to_themselves() -> None:
    for name in ("Pulumi.dev.yaml", "Pulumi.prod.yaml"):
        first = (ROOT / name).read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), name
        assert (ROOT / first.split("$schema=", 1)[1]).resolve() == SCHEMA_PATH.resolve(), first


def validator() -> Any:
    schema = json.loads(SCHEMA_PATH.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def prod_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())
    return document


@pytest.mark.parametrize(
    ("key", "value", "admitted"),
    [
        ("plex-cdn:homeSshKey", {"secure": "v1:AAAAencrypted"}, True),
        ("plex-cdn:homeSshKey", "-----BEGIN OPENSSH PRIVATE KEY-----", False),
        ("digitalocean:token", {"secure": "v1:AAAAencrypted"}, True),
        ("digitalocean:token", "dop_v1_in_clear", False),
        ("linode:token", {"secure": "v1:AAAAencrypted"}, True),
        ("aws:secretKey", {"secure": "v1:AAAAencrypted"}, True),
        ("aws:region", "eu-west-1", True),
        ("cloudflare:apiToken", {"secure": "v1:AAAAencrypted"}, True),
        ("random:anything", [1, 2], True),
        ("plex-cdn:colour", "blue", False),
        ("nonamespace", "x", False),
    ],
)
def test_the_schema_admits_secrets_encrypted_and_other_namespaces(key: str, value: Any, admitted: bool) -> None:
    document = prod_document()
    document["config"][key] = value
    errors = list(validator().iter_errors(document))
    assert (not errors) == admitted, [error.message for error in errors]


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        # Keys of the other kind of machine, and a kind's required keys.
        (lambda slave: slave.update(provider="linode"), True),
        (lambda slave: slave.pop("hostKey"), True),
        (lambda slave: slave.update(port=2222), False),
    ],
)
def test_the_schema_knows_the_keys_of_each_kind_of_slave(change: Any, refused: bool) -> None:
    from tests.stack_examples import example_documents

    document = copy.deepcopy(example_documents()["Pulumi.dev.yaml"])
    change(document["config"]["plex-cdn:transcode"]["slaves"][0])
    assert bool(list(validator().iter_errors(document))) == refused


def test_the_settings_reference_has_every_table_and_each_is_what_the_models_generate() -> None:
    text = REFERENCE_PATH.read_text()
    assert stack_schema.reference_tables_in(text) == [name for name, _, _ in stack_schema.TABLES]
    assert stack_schema.update_reference(text) == text, (
        f"{stack_schema.REFERENCE_FILE}'s tables differ from the models; regenerate them: "
        f"{stack_schema.REGENERATE_REFERENCE}"
    )


def test_the_settings_reference_names_every_directory_a_shared_path_must_not_touch() -> None:
    text = REFERENCE_PATH.read_text()
    for directory in (*SYSTEM_DIRS, PLEX_HOME):
        assert f"`{directory}`" in text, directory


def test_the_schema_command_rewrites_a_stale_reference_in_place(tmp_path: Any) -> None:
    stale = REFERENCE_PATH.read_text().replace("| `port` | `32400` |", "| `port` | `80` |", 1)
    assert stale != REFERENCE_PATH.read_text()
    copy_path = tmp_path / "stack-config.md"
    copy_path.write_text(stale)
    result = subprocess.run(
        [sys.executable, "-m", "plexcdn", "schema", "--reference", str(copy_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert copy_path.read_text() == REFERENCE_PATH.read_text()
