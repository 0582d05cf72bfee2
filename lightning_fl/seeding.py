"""Deterministic seeds derived from a base seed and a path of keys.

Every random choice of a federated run (client sampling, partitions, each client's shuffles and its
torch RNG) is drawn from its own generator seeded by ``derive_seed(seed, *keys)``. A choice then depends
only on *what* it is for (round 3, client 17, local epoch 2), never on which process makes it or on what
was drawn before, so one process and eight processes produce the same run, and a resumed run needs no RNG
state beyond the round counter.
"""

from __future__ import annotations

import hashlib

import torch

_MASK63 = (1 << 63) - 1


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed that is a stable hash of ``seed`` and ``keys`` (same on every platform and run)."""
    text = repr((int(seed),) + tuple(keys)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & _MASK63


def generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(seed, *keys)``."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))
