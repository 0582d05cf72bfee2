"""The pseudorandom generator that turns a 32-byte pairwise key into a mask over Z_2^32.

ChaCha20 (``cryptography``/OpenSSL) keystream, read as little-endian uint32 words. Each key is derived
for one pair, one round and one purpose (``keys.agree``), so the all-zero nonce is never reused with a
key. The ring arithmetic runs on numpy ``uint32`` arrays: unsigned numpy arithmetic wraps modulo 2^32 by
definition, which is exactly Z_2^32, with no int64 copy (torch has no uint32 addition). A mask then costs
a keystream (GB/s in OpenSSL) and one in-place add.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from lightning_fl.errors import check
from lightning_fl.federated.secure.keys import KEY_BYTES, require_cryptography


def keystream_words(key: bytes, numel: int) -> np.ndarray:
    """``numel`` uniform uint32 words expanded from ``key`` (ChaCha20, zero nonce, counter from 0)."""
    check(len(key) == KEY_BYTES, f"mask_vector: key must be {KEY_BYTES} bytes, got {len(key)}")
    require_cryptography()
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    stream = bytearray(4 * numel)
    if numel:
        Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update_into(bytes(4 * numel), stream)
    return np.frombuffer(stream, dtype="<u4")


_SCRATCH = threading.local()  # per thread: ranks simulated as threads must not share a keystream buffer


def _scratch(nbytes: int) -> tuple[memoryview, bytearray]:
    """A zero input and an output buffer of at least ``nbytes``, reused across masks: a fresh 4·numel
    allocation (and its page faults) per mask cost about as much as the keystream itself."""
    zeros = getattr(_SCRATCH, "zeros", b"")
    if len(zeros) < nbytes:
        _SCRATCH.zeros, _SCRATCH.out = bytes(nbytes), bytearray(nbytes)
    return memoryview(_SCRATCH.zeros)[:nbytes], _SCRATCH.out


def add_mask_(ring: np.ndarray, key: bytes, sign: int) -> None:
    """``ring ← ring + sign · PRG(key)  (mod 2^32)`` in place, for a uint32 array and sign ±1."""
    check(len(key) == KEY_BYTES, f"mask_vector: key must be {KEY_BYTES} bytes, got {len(key)}")
    require_cryptography()
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    if not ring.size:
        return
    zeros, out = _scratch(4 * ring.size)
    Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update_into(zeros, out)
    words = np.frombuffer(out, dtype="<u4", count=ring.size)  # the same words as keystream_words(key, size)
    if sign > 0:
        np.add(ring, words, out=ring)
    else:
        np.subtract(ring, words, out=ring)


def mask_vector(key: bytes, numel: int) -> torch.Tensor:
    """``numel`` uniform elements of Z_2^32 as int64 in [0, 2^32) (for inspection and tests)."""
    return torch.from_numpy(keystream_words(key, numel).astype(np.int64))
