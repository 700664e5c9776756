"""The private swarm's key and each peer's libp2p identity, in the formats kubo reads.

Pulumi generates the secrets (a random swarm key, one Ed25519 key per peer); these functions turn them
into `swarm.key`, kubo's `Identity.PrivKey` and the peer ID, so that every peer's bootstrap list can
name the others before any host exists.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

SWARM_KEY_HEADER: Final = "/key/swarm/psk/1.0.0/"
SWARM_KEY_BYTES: Final = 32
_HEX_KEY: Final = re.compile(rf"[0-9a-f]{{{SWARM_KEY_BYTES * 2}}}")
_BASE58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE36_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
# libp2p's key protobuf: field 1 (KeyType, Ed25519 = 1), field 2 (the key bytes).
_ED25519_TYPE: Final = b"\x08\x01"
_IDENTITY_MULTIHASH: Final = b"\x00"
_CID_V1: Final = b"\x01"
_LIBP2P_KEY_CODEC: Final = b"\x72"


def swarm_key_file(key_hex: str) -> str:
    """`swarm.key` as go-libp2p's pre-shared-key protector reads it: header, encoding, 64 hex digits."""
    key = key_hex.strip().lower()
    if not _HEX_KEY.fullmatch(key):
        raise ValueError(f"a swarm key is {SWARM_KEY_BYTES} bytes written as {SWARM_KEY_BYTES * 2} hex digits")
    return f"{SWARM_KEY_HEADER}\n/base16/\n{key}\n"


def _protobuf_key(raw: bytes) -> bytes:
    return _ED25519_TYPE + b"\x12" + bytes([len(raw)]) + raw


def _encode(data: bytes, alphabet: str) -> str:
    """Big-endian base-N as multibase writes it: each leading zero byte becomes the alphabet's zero digit."""
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, remainder = divmod(number, len(alphabet))
        digits = alphabet[remainder] + digits
    zeros = len(data) - len(data.lstrip(b"\0"))
    return alphabet[0] * zeros + digits


@dataclass(frozen=True)
class PeerIdentity:
    """What kubo's `Identity` section holds: the peer ID and the base64 protobuf private key."""

    peer_id: str
    private_key_b64: str


def _public_multihash(public: ed25519.Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    encoded = _protobuf_key(raw)
    # Keys of 42 bytes or fewer are inlined as an identity multihash: Ed25519 peer IDs start "12D3KooW".
    return _IDENTITY_MULTIHASH + bytes([len(encoded)]) + encoded


def _load_public(public_key_pem: str) -> ed25519.Ed25519PublicKey:
    key = serialization.load_pem_public_key(public_key_pem.encode())
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError("a libp2p peer identity here is an Ed25519 key")
    return key


def peer_id(public_key_pem: str) -> str:
    """The peer ID of an Ed25519 public key (PEM), as libp2p prints it (base58btc)."""
    return _encode(_public_multihash(_load_public(public_key_pem)), _BASE58_ALPHABET)


def ipns_name(public_key_pem: str) -> str:
    """The IPNS name a peer publishes under with its own key, as kubo prints it (CIDv1 libp2p-key, base36)."""
    cid = _CID_V1 + _LIBP2P_KEY_CODEC + _public_multihash(_load_public(public_key_pem))
    return "k" + _encode(cid, _BASE36_ALPHABET)


def identity(private_key_pem: str) -> PeerIdentity:
    """kubo's `Identity` for an Ed25519 private key in PKCS#8 PEM (what pulumi-tls generates)."""
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("a libp2p peer identity here is an Ed25519 key")
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key()
    public_raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # libp2p marshals an Ed25519 private key as the 32-byte seed followed by the 32-byte public key.
    private_b64 = base64.b64encode(_protobuf_key(seed + public_raw)).decode()
    return PeerIdentity(_encode(_public_multihash(public), _BASE58_ALPHABET), private_b64)


def private_key_pem(seed: bytes | None = None) -> str:
    """An Ed25519 key in PKCS#8 PEM, from a 32-byte seed or fresh, for labs and tests (stacks get theirs from
    pulumi-tls)."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed) if seed else ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_key_pem(private_key_pem: str) -> str:
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return public.decode()
