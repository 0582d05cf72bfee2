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


def seed_torch(seed: int) -> None:
    """``torch.manual_seed(seed)`` for the devices in use, without its cost on the ones that are not.

    ``torch.manual_seed`` also queues a seed for CUDA, XPU and MTIA when they are not initialised, and each
    queueing formats the Python stack: about a millisecond under Lightning's deep stack, paid once per
    client in a simulation. When none of them is initialised only the CPU generator (and MPS, where it
    exists) is seeded; initialised devices get exactly ``torch.manual_seed``.
    """
    lazy = (torch.cuda, torch.xpu, torch.mtia)
    custom = torch._C._get_privateuse1_backend_name() != "privateuseone"
    if custom or any(module.is_initialized() for module in lazy):
        torch.manual_seed(seed)
        return
    if torch.backends.mps.is_available():
        torch.mps.manual_seed(seed)
    torch.default_generator.manual_seed(int(seed))
