"""Shared fixtures: the example stack, stacks built from dicts, and test certificates."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from plexcdn.config import StackConfig, parse_config, read_stack_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_STACK = ROOT / "Pulumi.dev.yaml"


def example_values() -> dict[str, Any]:
    return copy.deepcopy(read_stack_file(EXAMPLE_STACK))


def five_pop_values() -> dict[str, Any]:
    """A tree: two hubs in public mode, three edges, one of them two hops from the origin."""
    values = example_values()
    values["origin"] = {"host": "home.example.net", "port": 32400, "link": "public", "verifyName": "home.example.net"}
    values["pops"] = [
        {"name": "us", "provider": "digitalocean", "region": "nyc3", "size": "s-1vcpu-1gb", "upstream": "origin"},
        {"name": "eu", "provider": "linode", "region": "eu-central", "size": "g6-nanode-1", "upstream": "origin"},
        {"name": "asia", "provider": "linode", "region": "ap-northeast", "size": "g6-nanode-1", "upstream": "us"},
        {"name": "sg", "provider": "digitalocean", "region": "sgp1", "size": "s-1vcpu-1gb", "upstream": "asia"},
        {"name": "uk", "provider": "digitalocean", "region": "lon1", "size": "s-1vcpu-2gb", "upstream": "eu"},
    ]
    return values


def wireguard_values() -> dict[str, Any]:
    values = example_values()
    values["origin"] = {"host": "home.example.net", "port": 32400, "link": "wireguard"}
    return values


def config_from(values: dict[str, Any], stack: str = "dev") -> StackConfig:
    return parse_config(values, stack)


@pytest.fixture
def example_config() -> StackConfig:
    return config_from(example_values())


def write_stack(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"config": {f"plex-cdn:{k}": v for k, v in values.items()}}))
    return path
