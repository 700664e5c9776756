"""WireGuard key arithmetic: a public key from a private one, as `wg pubkey` computes it."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

KEY_BYTES = 32


def public_key(private_key_b64: str) -> str:
    raw = base64.b64decode(private_key_b64, validate=True)
    if len(raw) != KEY_BYTES:
        raise ValueError(f"a WireGuard private key is {KEY_BYTES} bytes, got {len(raw)}")
    public = X25519PrivateKey.from_private_bytes(raw).public_key()
    return base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
