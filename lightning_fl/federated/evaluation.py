"""Federated evaluation math: held-out shares, the evaluated sample, and the distribution over clients.

Pure functions of their arguments and seeds, so every process computes the same split and sample without
communicating, and a resumed run redraws what an uninterrupted one drew.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch

from lightning_fl.errors import check
from lightning_fl.federated.partition import Partition
from lightning_fl.seeding import generator

# The statistics logged per metric as fl/eval/<metric>/<stat>.
STATS = ("mean", "min", "p10", "median", "p90", "max", "std")


def held_out_count(num_samples: int, fraction: float) -> int:
    """How many of a client's ``num_samples`` are held out: ceil(n·fraction), leaving at least one to train on.

    Rounding up gives every client with two or more samples something to be evaluated on; a client with one
    sample keeps it for training (it is then not evaluated).
    """
    if num_samples <= 1 or fraction <= 0:
        return 0
    return min(num_samples - 1, math.ceil(num_samples * fraction))


def split_client(indices: torch.Tensor, fraction: float, seed: int, client_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, held-out indices) of one client: a seeded draw of ``held_out_count`` samples.

    Both keep the partition's order, so training batches stay a function of the training indices alone.
    """
    n = len(indices)
    k = held_out_count(n, fraction)
    if k == 0:
        return indices, indices[:0]
    chosen = torch.randperm(n, generator=generator(seed, "held-out", client_id))[:k]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[chosen] = True
    return indices[~mask], indices[mask]


def split_partition(
    partition: Partition, fraction: float, seed: int, client_ids: Optional[Sequence[int]] = None
) -> tuple[Partition, Partition]:
    """Split every client of ``partition`` into its training part and its held-out part (disjoint).

    ``client_ids[i]`` names part ``i`` for the seed (a silo's partition has one part, its own client id).
    """
    check(0.0 <= fraction < 1.0, f"eval_fraction must be in [0, 1), got {fraction}")
    ids = list(range(partition.num_clients)) if client_ids is None else list(client_ids)
    train, held = [], []
    for part, client_id in enumerate(ids):
        t, h = split_client(partition.client(part), fraction, seed, client_id)
        train.append(t)
        held.append(h)
    return Partition.from_parts(train), Partition.from_parts(held)


def eval_sample(num_clients: int, eval_clients: Optional[int], seed: int, round_idx: int) -> list[int]:
    """The clients evaluated after ``round_idx``: all of them (sorted) or a seeded sample, its own stream."""
    if eval_clients is None or eval_clients >= num_clients:
        return list(range(num_clients))
    perm = torch.randperm(num_clients, generator=generator(seed, "eval-sample", round_idx))
    return sorted(perm[:eval_clients].tolist())


def is_eval_round(round_idx: int, every: int, last_round: Optional[int] = None) -> bool:
    """Every ``every``-th round (1-based: rounds every, 2·every, ...) and always the last one."""
    return (round_idx + 1) % every == 0 or (last_round is not None and round_idx == last_round)


def distribution(values: torch.Tensor, weights: torch.Tensor) -> dict[str, float]:
    """The sample-weighted mean and the spread over clients (each client counts once).

    Percentiles interpolate linearly between order statistics (numpy's default); ``std`` is the population
    standard deviation over clients. ``weights`` are the clients' held-out sample counts.
    """
    check(values.numel() > 0, "distribution() needs at least one client value")
    v = values.double()
    w = weights.double()
    q = torch.quantile(v, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    total = float(w.sum())
    return {
        "mean": float((v * w).sum() / total) if total > 0 else float(v.mean()),
        "min": float(v.min()),
        "p10": float(q[0]),
        "median": float(q[1]),
        "p90": float(q[2]),
        "max": float(v.max()),
        "std": float(v.std(unbiased=False)),
    }
