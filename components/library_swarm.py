"""The library swarm's shared secrets: the swarm key, and one libp2p identity per peer.

Made before any peer so that every peer's bootstrap list can name the others by peer ID. The swarm key
and the private keys are secrets end to end; peer IDs and IPNS names come from the public halves.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_random as random
import pulumi_tls as tls

from components.outputs import secret
from plexcdn.library import keys


@dataclass(frozen=True)
class LibrarySwarmArgs:
    peers: tuple[str, ...]  # every peer of the swarm: one identity each
    seeders: tuple[str, ...]  # those that publish their library under their IPNS name


@dataclass(frozen=True)
class PeerKeys:
    private_key_pem: pulumi.Output[str]  # secret
    peer_id: pulumi.Output[str]
    ipns_name: pulumi.Output[str]  # what the peer publishes under with its own key


class LibrarySwarm(pulumi.ComponentResource):
    swarm_key_file: pulumi.Output[str]  # secret: swarm.key as kubo reads it
    peers: dict[str, PeerKeys]

    def __init__(self, name: str, args: LibrarySwarmArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("plex-cdn:library_swarm:LibrarySwarm", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        swarm_key = random.RandomBytes(f"{name}-swarm-key", length=keys.SWARM_KEY_BYTES, opts=child)
        self.swarm_key_file = secret(swarm_key.hex.apply(keys.swarm_key_file))
        self.peers = {}
        for peer in args.peers:
            identity = tls.PrivateKey(f"{name}-{peer}-identity", algorithm="ED25519", opts=child)
            self.peers[peer] = PeerKeys(
                private_key_pem=secret(identity.private_key_pem),
                peer_id=identity.public_key_pem.apply(keys.peer_id),
                ipns_name=identity.public_key_pem.apply(keys.ipns_name),
            )
        self.register_outputs(
            {
                "peer_ids": {peer: peer_keys.peer_id for peer, peer_keys in self.peers.items()},
                "ipns_names": {seeder: self.peers[seeder].ipns_name for seeder in args.seeders},
            }
        )
