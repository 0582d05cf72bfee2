"""Key material: X25519 key pairs, key agreement + HKDF, and authenticated encryption of shares.

All primitives are the ``cryptography`` package's (OpenSSL), imported lazily so that the rest of
lightning_fl works without the ``secure`` extra. Keys come from the OS CSPRNG. ``deterministic`` keys,
derived from the run's seed, exist only for reproducible tests and simulations: anyone who knows the
seed knows every key, so they hide nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any

from lightning_fl.errors import FederatedConfigError

EXTRA_HINT = "secure aggregation needs the 'cryptography' package: pip install 'lightning-fl[secure]'"
KEY_BYTES = 32  # X25519 public and private keys, and every derived symmetric key
TAG_BYTES = 16  # ChaCha20-Poly1305 authentication tag
_NONCE = bytes(12)  # every encryption key is derived for exactly one message, so a fixed nonce is safe


def require_cryptography() -> None:
    """Raise a one-line :class:`FederatedConfigError` naming the extra when ``cryptography`` is missing."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise FederatedConfigError(EXTRA_HINT) from None


def _x25519() -> Any:
    require_cryptography()
    from cryptography.hazmat.primitives.asymmetric import x25519

    return x25519


def _context(purpose: str, *fields: object) -> bytes:
    return ("lightning_fl/secagg/" + purpose + "/" + repr(tuple(fields))).encode()


def generate_private_key(deterministic_from: tuple | None = None) -> Any:
    """A fresh X25519 private key from the OS CSPRNG, or (insecure) one derived from a seed tuple."""
    x25519 = _x25519()
    if deterministic_from is None:
        return x25519.X25519PrivateKey.generate()
    raw = hashlib.blake2b(repr(deterministic_from).encode(), digest_size=KEY_BYTES, person=b"lfl-secagg").digest()
    return x25519.X25519PrivateKey.from_private_bytes(raw)


def public_bytes(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes_raw()


def private_bytes(private_key: Any) -> bytes:
    return private_key.private_bytes_raw()


def private_key_from_bytes(raw: bytes) -> Any:
    return _x25519().X25519PrivateKey.from_private_bytes(raw)


def agree(private_key: Any, peer_public: bytes, purpose: str, *context: object) -> bytes:
    """A 32-byte key both ends derive alike: HKDF-SHA256(X25519(sk, pk), info = purpose + context).

    Binding the purpose, the round and the (ordered) pair into ``info`` gives every use its own key, so a
    mask key is never reused as an encryption key or in another round.
    """
    x25519 = _x25519()
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    shared = private_key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_context(purpose, *context)).derive(shared)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """ChaCha20-Poly1305 under a single-use key; ``associated`` (not secret) is authenticated too."""
    require_cryptography()
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    return ChaCha20Poly1305(key).encrypt(_NONCE, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """Inverse of :func:`encrypt`; raises ``cryptography.exceptions.InvalidTag`` on any tampering."""
    require_cryptography()
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    return ChaCha20Poly1305(key).decrypt(_NONCE, ciphertext, associated)
