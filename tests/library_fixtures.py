"""Stack settings with a library swarm, shared by the library tests."""

from __future__ import annotations

from typing import Any

from tests.conftest import HOME_HOST_KEY, example_values

SEEDER_HOST = "203.0.113.10"
VIEWER_HOST = "viewer.example.org"
VIEWER_NETWORK = "198.51.100.0/24"


def library_settings() -> dict[str, Any]:
    """A seeder at home (by address), a viewer at home (by name, with the network it connects from) and a
    cache node in the cloud."""
    return {
        "swarm": "friends",
        "seeders": [
            {
                "name": "alice",
                "kind": "host",
                "host": SEEDER_HOST,
                "user": "admin",
                "hostKey": HOME_HOST_KEY,
                "mediaDir": "/srv/media",
            }
        ],
        "viewers": [
            {
                "name": "carol",
                "kind": "host",
                "host": VIEWER_HOST,
                "hostKey": HOME_HOST_KEY,
                "swarmCidrs": [VIEWER_NETWORK],
                "cacheGb": 200,
            },
            {"name": "tokyo", "kind": "cloud", "provider": "linode", "region": "ap-northeast", "size": "g6-nanode-1"},
        ],
    }


def library_values() -> dict[str, Any]:
    values = example_values()
    values["library"] = library_settings()
    return values
