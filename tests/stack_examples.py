"""The example stacks as documents, with the dev stack's commented examples (transcode offload, library
sharing, admin.deployFrom) uncommented, and every leaf setting in them by its path."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import yaml

from tests.conftest import ROOT

NAMESPACE = "plex-cdn:"
# Commented examples: a section's first line, whose indented comment lines below it belong to it.
COMMENTED_SECTIONS = ("  # plex-cdn:transcode:", "  # plex-cdn:library:")
COMMENTED_LINES = ("    # deployFrom: ",)


def uncommented(text: str) -> str:
    """The dev stack with its commented examples turned on."""
    lines = text.splitlines()
    out: list[str] = []
    in_section = False
    for line in lines:
        if line in COMMENTED_SECTIONS:
            in_section = True
            out.append("  " + line[len("  # ") :])
        elif in_section and line.startswith("  #   "):
            out.append("  " + line[len("  # ") :])
        elif line.startswith(COMMENTED_LINES):
            in_section = False
            out.append(line.replace("# ", "", 1))
        else:
            in_section = False
            out.append(line)
    return "\n".join(out) + "\n"


def example_documents() -> dict[str, dict[str, Any]]:
    """Both example stacks, parsed; the dev stack with every commented example on."""
    dev = yaml.safe_load(uncommented((ROOT / "Pulumi.dev.yaml").read_text()))
    prod = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())
    for section in ("plex-cdn:transcode", "plex-cdn:library"):
        assert isinstance(dev["config"].get(section), dict), f"the dev stack's commented {section} was not found"
    assert dev["config"]["plex-cdn:admin"].get("deployFrom"), "the dev stack's commented deployFrom was not found"
    return {"Pulumi.dev.yaml": dev, "Pulumi.prod.yaml": prod}


Path = tuple[str | int, ...]


def leaves(value: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every scalar in a settings value, by its place (mapping keys and list indexes)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, (*path, index))
    else:
        yield path, value


def setting_leaves(document: dict[str, Any]) -> Iterator[tuple[Path, Any]]:
    """The leaves of the plex-cdn settings: (("transcode", "slaves", 0, "host"), "192.168.1.20"), ..."""
    for key, value in document["config"].items():
        if key.startswith(NAMESPACE):
            yield from leaves(value, (key[len(NAMESPACE) :],))


def path_text(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def settings_of(document: dict[str, Any]) -> dict[str, Any]:
    return {
        key[len(NAMESPACE) :]: copy.deepcopy(value)
        for key, value in document["config"].items()
        if key.startswith(NAMESPACE)
    }


def with_leaf(document: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    """A copy of the document with one setting changed."""
    changed = copy.deepcopy(document)
    target: Any = changed["config"][NAMESPACE + str(path[0])]
    if len(path) == 1:
        changed["config"][NAMESPACE + str(path[0])] = value
        return changed
    for part in path[1:-1]:
        target = target[part]
    target[path[-1]] = value
    return changed
