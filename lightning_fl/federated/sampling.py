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
    num_steps: int,
    drop_last: bool,
    seed: int,
    round_idx: int,
    client_id: int,
) -> list[list[int]]:
    """The first ``num_steps`` mini-batches (dataset indices) of a client's round.

    A client's batches are its local epochs one after another, each a fresh shuffle of its samples;
    ``num_steps`` cuts that stream, so E full epochs, a fixed number of local steps (more or fewer than an
    epoch) and a straggler's partial work all draw the same batches in the same order.
    """
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < num_steps:
        order = indices[epoch_permutation(len(indices), seed, round_idx, client_id, epoch)]
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            if (drop_last and len(batch) < batch_size) or len(batches) == num_steps:
                break
            batches.append(batch.tolist())
        epoch += 1
    return batches


def batches_per_epoch(num_samples: int, batch_size: int, drop_last: bool) -> int:
    return num_samples // batch_size if drop_last else -(-num_samples // batch_size)


def num_client_steps(
    num_samples: int, batch_size: int, drop_last: bool, local_epochs: int = 1, local_steps: int | None = None
) -> int:
    """Local steps of a client: ``local_steps`` if set, else ``local_epochs`` full passes (0: no full batch)."""
    per_epoch = batches_per_epoch(num_samples, batch_size, drop_last)
    if per_epoch == 0:
        return 0
    return local_steps if local_steps is not None else per_epoch * local_epochs


def straggler_steps(steps: list[int], client_ids: list[int], fraction: float, seed: int, round_idx: int) -> list[int]:
    """System heterogeneity as in FedProx's experiments (Li et al. 2020, §5.2).

    ``round(fraction · K)`` of the round's K clients, drawn uniformly, are stragglers: each does a uniformly
    random number of local steps in ``[1, its full steps]`` instead of all of them. A pure function of
    ``(seed, round)`` and the client ids, so the number of processes does not change who straggles.
    """
    count = round(fraction * len(client_ids))
    if count == 0:
        return list(steps)
    picked = torch.randperm(len(client_ids), generator=generator(seed, "stragglers", round_idx))[:count].tolist()
    out = list(steps)
    for pos in picked:
        if out[pos] > 1:
            g = generator(seed, "straggler-steps", round_idx, client_ids[pos])
            out[pos] = int(torch.randint(1, out[pos] + 1, (1,), generator=g))
    return out
