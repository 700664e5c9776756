"""What the settings models publish: the JSON Schema of a whole `Pulumi.<stack>.yaml` (for editors: the stack
files name it in a `yaml-language-server` comment) and the tables of docs/stack-config.md. Both are generated
from the models in plexcdn.config, so neither can drift from what `validate` accepts; the tests regenerate them
and compare.

    python -m plexcdn schema > docs/stack-file.schema.json
    python -m plexcdn schema --reference docs/stack-config.md
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from typing import Any, Final

from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema

from plexcdn import config
from plexcdn.setting_kinds import Doc, Kind, ListOf
from plexcdn.settings_model import Settings, model_in

SCHEMA_FILE: Final = "docs/stack-file.schema.json"
REFERENCE_FILE: Final = "docs/stack-config.md"
REGENERATE: Final = f"python -m plexcdn schema > {SCHEMA_FILE}"
REGENERATE_REFERENCE: Final = f"python -m plexcdn schema --reference {REFERENCE_FILE}"

# Pulumi's encrypted value, as `pulumi config set --secret` writes it.
SECRET: Final = {
    "type": "object",
    "properties": {"secure": {"type": "string", "minLength": 1}},
    "required": ["secure"],
    "additionalProperties": False,
    "description": "an encrypted value: `pulumi config set --secret KEY`",
}
# Keys of other namespaces the stack uses; any other `namespace:key` is admitted as it is.
OTHER_KEYS: Final = {
    "digitalocean:token": {
        "$ref": "#/definitions/Secret",
        "description": "a DigitalOcean API token (write scope): `pulumi config set --secret digitalocean:token`",
    },
    "linode:token": {
        "$ref": "#/definitions/Secret",
        "description": "a Linode/Akamai API token (Linodes and Firewalls read/write): "
        "`pulumi config set --secret linode:token`",
    },
    "aws:region": {"type": "string", "description": "the AWS provider's region, e.g. us-east-1"},
    "aws:accessKey": {"$ref": "#/definitions/Secret"},
    "aws:secretKey": {"$ref": "#/definitions/Secret"},
    "aws:token": {"$ref": "#/definitions/Secret"},
}
# A namespaced key outside plex-cdn (Pulumi keys are always namespace:key).
OTHER_NAMESPACE: Final = f"^(?!{config.NAMESPACE}:)[^:]+:.+$"


class _Generator(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _doc_of(field: FieldInfo) -> Doc | None:
    return next((meta for meta in field.metadata if isinstance(meta, Doc)), None)


def _models() -> Iterator[type[Settings]]:
    seen: list[type[Settings]] = []
    pending: list[type[Settings]] = [config.StackConfig]
    while pending:
        model = pending.pop(0)
        if model in seen:
            continue
        seen.append(model)
        yield model
        pending.extend(inner for field in model.model_fields.values() if (inner := model_in(field.annotation)))


def _documented_defaults(defs: dict[str, Any]) -> None:
    """A default that depends on other settings (Doc.default) goes into the description, not `default`."""
    for model in _models():
        properties = defs.get(model.__name__, {}).get("properties", {})
        for name, field in model.model_fields.items():
            doc = _doc_of(field)
            if doc is None or doc.default is None:
                continue
            entry = properties[field.alias or name]
            entry.pop("default", None)
            entry["description"] = f"{entry.get('description', '')} (default: {doc.default.replace('`', '')})".strip()


def stack_file_schema() -> dict[str, Any]:
    """The JSON Schema of a whole stack file: `config:` with the plex-cdn settings, secrets encrypted."""
    generated = config.StackConfig.model_json_schema(
        by_alias=True, ref_template="#/definitions/{model}", schema_generator=_Generator
    )
    defs: dict[str, Any] = generated.pop("$defs", {})
    _documented_defaults(defs)
    defs["Secret"] = SECRET
    properties: dict[str, Any] = {f"{config.NAMESPACE}:{key}": value for key, value in generated["properties"].items()}
    properties[f"{config.NAMESPACE}:{config.HOME_SSH_KEY}"] = {
        "$ref": "#/definitions/Secret",
        "description": "the SSH private key `pulumi up` logs in with to machines it does not create: "
        f"`pulumi config set --secret {config.NAMESPACE}:{config.HOME_SSH_KEY} < ~/.ssh/id_ed25519`",
    }
    properties.update(OTHER_KEYS)
    return {
        # Draft 7: what the YAML language server supports.
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "plex-cdn stack file (Pulumi.<stack>.yaml)",
        "description": f"Generated from plexcdn/config.py by `{REGENERATE}`; do not edit.",
        "type": "object",
        "required": ["config"],
        "properties": {
            "config": {
                "type": "object",
                "properties": properties,
                "required": [f"{config.NAMESPACE}:{key}" for key in generated.get("required", [])],
                "patternProperties": {OTHER_NAMESPACE: {}},
                "additionalProperties": False,
            },
            "secretsprovider": {"type": "string"},
            "encryptedkey": {"type": "string"},
            "encryptionsalt": {"type": "string"},
            "environment": {},
        },
        "definitions": defs,
    }


def schema_text() -> str:
    return json.dumps(stack_file_schema(), indent=2, ensure_ascii=False) + "\n"


# --- the settings reference ---------------------------------------------------------------------------------

# The tables of docs/stack-config.md: (marker, the model, the key prefix, the fields shown).
TABLES: Final[tuple[tuple[str, type[Settings], str], ...]] = (
    ("top-level", config.StackConfig, f"{config.NAMESPACE}:"),
    ("acme", config.AcmeConfig, ""),
    ("origin", config.OriginConfig, ""),
    ("origin.location", config.Location, ""),
    ("origin.agent", config.OriginAgent, ""),
    ("admin", config.AdminConfig, ""),
    ("nginx", config.NginxSettings, ""),
    ("pops", config.PopConfig, ""),
    ("viewing", config.ViewingConfig, ""),
    ("transcode", config.TranscodeConfig, ""),
    ("transcode.origin", config.TranscodeOriginAccess, ""),
    ("transcode.slaves", config.TranscodeSlaveConfig, ""),
    ("library", config.LibraryConfig, ""),
    ("library.bitswap", config.BitswapSettings, ""),
    ("library.peers", config.LibraryViewerConfig, ""),
    ("plex", config.PlexServerSettings, ""),
)


def _default_text(field: FieldInfo) -> str:
    doc = _doc_of(field)
    if doc is not None and doc.default is not None:
        return doc.default
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=False)
    if default is None or default == ():
        return "none"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, str | int | ipaddress.IPv4Network):
        return f"`{default}`"
    return "the defaults below"


def _valid_text(field: FieldInfo) -> str:
    doc = _doc_of(field)
    if doc is not None and doc.valid is not None:
        return doc.valid
    for meta in field.metadata:
        if isinstance(meta, Kind | ListOf) and meta.valid:
            return meta.valid
    return "a mapping, below"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def table(model: type[Settings], prefix: str) -> str:
    rows = ["| key | default | valid values | what it does |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if model is config.StackConfig and config.TOP_LEVEL_KEYS[field.alias or name] != "scalar":
            continue  # each section has a table of its own
        cells = (f"`{prefix}{field.alias or name}`", _default_text(field), _valid_text(field), field.description or "")
        rows.append("| " + " | ".join(_escape(cell) for cell in cells) + " |")
    return "\n".join(rows)


_BLOCK: Final = re.compile(
    r"(<!-- settings table: (?P<name>[a-z.-]+) -->\n)(?:(?!<!--).)*?(\n<!-- end of table -->)", re.DOTALL
)


def update_reference(text: str) -> str:
    """docs/stack-config.md with every generated table block rewritten from the models."""
    tables = {name: table(model, prefix) for name, model, prefix in TABLES}

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in tables:
            raise KeyError(f"{REFERENCE_FILE} names a table the models do not have: {name}")
        return f"{match[1]}{tables[name]}{match[3]}"

    return _BLOCK.sub(replace, text)


def reference_tables_in(text: str) -> list[str]:
    return [match["name"] for match in _BLOCK.finditer(text)]
