"""Split a training set among federated clients.

A partition is stored as one index permutation plus offsets (CSR layout): O(dataset size) memory
whatever the number of clients, so 1,000 clients cost no more than 10.

Schemes
-------
``iid``        uniform random split into near-equal parts.
``dirichlet``  label skew: for every class, the share of each client is drawn from Dir(alpha); small
               alpha gives few classes per client (Hsu et al. 2019). Draws that leave a client empty are
               redrawn (bounded), then rejected with an error naming ``alpha``.
``shards``     McMahan et al. 2017: sort by label, cut into ``num_clients * shards_per_client`` equal
               shards, give each client ``shards_per_client`` random shards ("pathological non-IID").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from lightning_fl.errors import FederatedConfigError, check
from lightning_fl.seeding import derive_seed, generator

PARTITIONS = ("iid", "dirichlet", "shards", "silo")


@dataclass(frozen=True)
class Partition:
    """Client ``i`` owns dataset indices ``indices[offsets[i]:offsets[i + 1]]``."""

    indices: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def from_parts(cls, parts: Sequence[torch.Tensor]) -> Partition:
        sizes = torch.tensor([len(p) for p in parts], dtype=torch.long)
        offsets = torch.zeros(len(parts) + 1, dtype=torch.long)
        torch.cumsum(sizes, 0, out=offsets[1:])
        indices = torch.cat([p.long() for p in parts]) if parts else torch.zeros(0, dtype=torch.long)
        return cls(indices=indices, offsets=offsets)

    @property
    def num_clients(self) -> int:
        return len(self.offsets) - 1

    def sizes(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def client(self, client_id: int) -> torch.Tensor:
        return self.indices[self.offsets[client_id] : self.offsets[client_id + 1]]


def iid_partition(num_samples: int, num_clients: int, seed: int) -> Partition:
    _check_sizes(num_samples, num_clients)
    perm = torch.randperm(num_samples, generator=generator(seed, "partition", "iid"))
    return Partition.from_parts(list(torch.tensor_split(perm, num_clients)))


def dirichlet_partition(
    labels: torch.Tensor, num_clients: int, alpha: float, seed: int, min_size: int = 1, max_tries: int = 100
) -> Partition:
    """Label-skewed split; every client ends up with at least ``min_size`` samples."""
    _check_sizes(len(labels), num_clients)
    check(alpha > 0, f"alpha must be > 0 for partition='dirichlet', got {alpha}")
    classes = torch.unique(labels)
    for attempt in range(max_tries):
        gen = generator(seed, "partition", "dirichlet", attempt)
        parts: list[list[torch.Tensor]] = [[] for _ in range(num_clients)]
        # torch.distributions has no generator argument: draw from a forked, seeded global RNG instead.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "partition", "dirichlet-shares", attempt))
            shares = torch.distributions.Dirichlet(torch.full((num_clients,), float(alpha))).sample((len(classes),))
        for c, share in zip(classes, shares):
            idx = torch.nonzero(labels == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)]
            cuts = (torch.cumsum(share.double(), 0) * len(idx)).round().long().clamp(max=len(idx))
            for client, chunk in enumerate(torch.tensor_split(idx, cuts[:-1])):
                parts[client].append(chunk)
        merged = [torch.cat(p) for p in parts]
        if min(len(p) for p in merged) >= min_size:
            return Partition.from_parts(merged)
    raise FederatedConfigError(
        f"alpha={alpha} leaves some of num_clients={num_clients} clients empty in {max_tries} draws of "
        f"{len(labels)} samples; raise alpha or lower num_clients"
    )


def shard_partition(labels: torch.Tensor, num_clients: int, shards_per_client: int, seed: int) -> Partition:
    check(shards_per_client >= 1, f"shards_per_client must be >= 1, got {shards_per_client}")
    num_shards = num_clients * shards_per_client
    check(
        len(labels) >= num_shards,
        f"partition='shards' needs at least num_clients*shards_per_client={num_shards} samples, got {len(labels)}",
    )
    by_label = torch.sort(labels, stable=True).indices
    shards = torch.tensor_split(by_label, num_shards)
    order = torch.randperm(num_shards, generator=generator(seed, "partition", "shards")).view(num_clients, -1)
    return Partition.from_parts([torch.cat([shards[s] for s in row.tolist()]) for row in order])


def make_partition(
    scheme: str,
    num_samples: int,
    num_clients: int,
    seed: int,
    labels: torch.Tensor | None = None,
    alpha: float = 0.5,
    shards_per_client: int = 2,
) -> Partition:
    """Dispatch on ``scheme``; label-based schemes need ``labels``."""
    if scheme == "iid":
        return iid_partition(num_samples, num_clients, seed)
    if scheme in ("dirichlet", "shards"):
        if labels is None:
            raise FederatedConfigError(f"partition='{scheme}' needs the labels of the training set")
        if scheme == "dirichlet":
            return dirichlet_partition(labels, num_clients, alpha, seed)
        return shard_partition(labels, num_clients, shards_per_client, seed)
    raise FederatedConfigError(f"partition must be one of {', '.join(PARTITIONS)}; got '{scheme}'")


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Integer class labels of a map-style dataset, found without a training pass where possible.

    Looks at, in order: ``Subset`` (labels of the parent at its indices), a ``targets``/``labels``/``y``
    attribute, the last tensor of a ``TensorDataset``; otherwise reads every item once and takes
    ``item[1]`` (tuples) or ``item["label" | "labels" | "y" | "target"]`` (dicts).
    """
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    for name in ("targets", "labels", "y"):
        value = getattr(dataset, name, None)
        if value is not None and not callable(value):
            return _as_label_tensor(value, name)
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return _as_label_tensor(dataset.tensors[-1], "TensorDataset.tensors[-1]")
    labels = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        labels.append(_item_label(dataset[i]))
    return _as_label_tensor(labels, "dataset items")


def _item_label(item: Any) -> Any:
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[1]
    if isinstance(item, dict):
        for key in ("label", "labels", "y", "target"):
            if key in item:
                return item[key]
    raise FederatedConfigError(
        "cannot find labels in the training set for a label-based partition; give the dataset a "
        "`targets` attribute or use partition='iid'"
    )


def _as_label_tensor(value: Any, where: str) -> torch.Tensor:
    labels = torch.as_tensor(value).flatten() if not isinstance(value, torch.Tensor) else value.flatten()
    if labels.is_floating_point() or labels.is_complex():
        raise FederatedConfigError(f"labels from {where} are not integers (dtype {labels.dtype}); use partition='iid'")
    return labels.long().cpu()


def _check_sizes(num_samples: int, num_clients: int) -> None:
    check(num_clients >= 1, f"num_clients must be >= 1, got {num_clients}")
    check(
        num_samples >= num_clients,
        f"num_clients={num_clients} exceeds the {num_samples} training samples: every client needs data",
    )
