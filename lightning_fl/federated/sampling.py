"""Which clients train in a round, and in which order a client visits its samples."""

from __future__ import annotations

import torch

from lightning_fl.errors import check
from lightning_fl.seeding import generator


def sample_clients(num_clients: int, clients_per_round: int, seed: int, round_idx: int) -> list[int]:
    """``clients_per_round`` distinct client ids drawn uniformly without replacement for ``round_idx``.

    The draw is a pure function of ``(seed, round_idx)``: every process computes the same sample
    without communicating, and resuming at round r redraws exactly what an uninterrupted run drew.
    """
    check(num_clients >= 1, f"num_clients must be >= 1, got {num_clients}")
    check(
        1 <= clients_per_round <= num_clients,
        f"clients_per_round must be in [1, num_clients={num_clients}], got {clients_per_round}",
    )
    perm = torch.randperm(num_clients, generator=generator(seed, "sample", round_idx))
    return perm[:clients_per_round].tolist()


def epoch_permutation(num_samples: int, seed: int, round_idx: int, client_id: int, local_epoch: int) -> torch.Tensor:
    """The order in which a client visits its ``num_samples`` samples in one local epoch."""
    return torch.randperm(num_samples, generator=generator(seed, "shuffle", round_idx, client_id, local_epoch))


def client_batches(
    indices: torch.Tensor,
    batch_size: int,
    local_epochs: int,
    drop_last: bool,
    seed: int,
    round_idx: int,
    client_id: int,
) -> list[list[int]]:
    """The mini-batches (dataset indices) a client trains on in one round, epoch after epoch."""
    batches: list[list[int]] = []
    for epoch in range(local_epochs):
        order = indices[epoch_permutation(len(indices), seed, round_idx, client_id, epoch)]
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            if drop_last and len(batch) < batch_size:
                break
            batches.append(batch.tolist())
    return batches


def num_client_batches(num_samples: int, batch_size: int, local_epochs: int, drop_last: bool) -> int:
    """``len(client_batches(...))`` without drawing anything."""
    per_epoch = num_samples // batch_size if drop_last else -(-num_samples // batch_size)
    return per_epoch * local_epochs
