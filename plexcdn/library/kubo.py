"""The kubo release plex-cdn installs, and the settings that turn its defaults into a private swarm.

The defaults (`kubo-defaults.json`) are what `ipfs init` of the pinned release writes, from kubo's
config/init.go, without the identity. The checksums are kubo's published SHA-512 of the release
archives; the install script refuses an archive that does not match.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

# kubo's RPC API has no authorization of its own on loopback, and it can publish into the library, read the
# keys and stop the daemon: so it listens on a Unix socket in a directory only the group API_GROUP may enter.
# systemd makes the directory (RuntimeDirectory, mode 0750, the daemon's group) and removes it when kubo stops.
API_GROUP: Final = "plexcdn-ipfs-api"
RUNTIME_DIR: Final = "/run/plexcdn-ipfs-api"
API_SOCKET: Final = f"{RUNTIME_DIR}/api.sock"
API_ADDRESS: Final = f"/unix{API_SOCKET}"
API_URL: Final = f"unix:{API_SOCKET}"
# The gateway serves every block of the swarm to whoever asks: the same directory keeps it to the same group.
GATEWAY_ADDRESS: Final = f"/unix{RUNTIME_DIR}/gateway.sock"
_DEFAULTS: Final = Path(__file__).with_name("kubo-defaults.json")


@dataclass(frozen=True)
class KuboRelease:
    version: str
    url_base: str
    sha512: dict[str, str]  # Debian architecture -> SHA-512 of kubo_v<version>_linux-<arch>.tar.gz


RELEASE: Final = KuboRelease(
    version="0.43.1",
    url_base="https://dist.ipfs.tech/kubo/v0.43.1",
    sha512={
        "amd64": "ff53b2428794fc8cca39505d28c15b4cceaef4b90a09284f291f611fcdc8c06399690575fc89cbd4d85ef71f3652581296c6f2e710386f887c8edf36b6e89d71",  # noqa: E501
        "arm64": "70f082584651ef78fb5b07448be53bb0adf141aadcb7eea15ffa59bd9ca78fed46781c2cf5915b3528c591052f97486067fedb0a7a1415abd5bfd44942921501",  # noqa: E501
    },
)


def default_config() -> dict[str, Any]:
    """A fresh copy of the pinned release's defaults."""
    document: dict[str, Any] = json.loads(_DEFAULTS.read_text())
    return copy.deepcopy(document)


def private_swarm_overrides(document: dict[str, Any]) -> None:
    """Cut every tie to the public network that the defaults have.

    With a swarm key, kubo refuses to start while AutoConf points at the public network's settings, and its
    "auto" placeholders (bootstrap, delegated routers and publishers, DNS-over-HTTPS resolvers) stand for
    public services. go-libp2p's pre-shared-key protector works on TCP streams only: QUIC, WebTransport and
    WebRTC cannot carry it, so the swarm speaks TCP.
    """
    document["AutoConf"] = {"Enabled": False}
    document["AutoTLS"] = {"Enabled": False}
    document["AutoNAT"] = {"ServiceMode": "disabled"}
    # Every friend is a DHT server: with a handful of peers, IPNS records must be stored on all of them.
    document["Routing"] = {"Type": "dhtserver", "DelegatedRouters": []}
    document["Ipns"].update({"DelegatedPublishers": [], "UsePubsub": True})
    document["Pubsub"].update({"Enabled": True, "Router": "gossipsub"})
    document["DNS"] = {"Resolvers": {}}
    document["Swarm"].update(
        {
            "RelayClient": {"Enabled": False},
            "RelayService": {"Enabled": False},
            "Transports": {
                "Network": {
                    "TCP": True,
                    "QUIC": False,
                    "WebTransport": False,
                    "WebRTCDirect": False,
                    "Websocket": False,
                },
                "Security": {},
                "Multiplexers": {},
            },
        }
    )
