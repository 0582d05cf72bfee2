"""The training data of one round on one rank: a DataLoader that replays each assigned client's batches.

The user's DataLoader is kept for everything but the order: same dataset, batch size, collate function,
workers and pinning. Only the batch sampler changes, so data never crosses clients and a client's batches
are the same whichever rank trains it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, TensorDataset, default_collate

from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.sampling import client_batches
from lightning_fl.federated.schedule import RoundPlan


class RoundBatchSampler(Sampler[list[int]]):
    """Yields, in order, every local batch of this rank's clients, then padding batches."""

    def __init__(
        self,
        plan: RoundPlan,
        client_indices: Callable[[int], torch.Tensor],
        batch_size: int,
        drop_last: bool,
        seed: int,
        pad_index: int = 0,
    ) -> None:
        self.plan = plan
        self.client_indices = client_indices
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.pad_index = pad_index

    def __len__(self) -> int:
        return self.plan.num_steps

    def __iter__(self) -> Iterator[list[int]]:
        emitted = 0
        for job in self.plan.jobs:
            if job.num_steps == 0:
                continue
            batches = client_batches(
                self.client_indices(job.client_id),
                self.batch_size,
                job.num_steps,
                self.drop_last,
                self.seed,
                self.plan.round_idx,
                job.client_id,
            )
            assert len(batches) == job.num_steps, "client batch count disagrees with the round plan"
            yield from batches
            emitted += len(batches)
        # Padding: a real (tiny) batch so collate works; the strategy skips the step without using it.
        for _ in range(self.plan.num_steps - emitted):
            yield [self.pad_index]


def identity_collate(data: Any) -> Any:
    """Collate for loaders whose dataset already returns collated batches (module level: picklable)."""
    return data


def tensor_batches(dataset: Any, collate_fn: Any) -> Optional[tuple[torch.Tensor, ...]]:
    """The tensors of ``dataset`` when indexing them gives exactly ``collate_fn``'s batches, else ``None``.

    ``default_collate`` over ``TensorDataset`` items (tuples of rows) is a list of ``torch.stack``-ed rows,
    which equals ``[t[idx] for t in tensors]`` value for value and dtype for dtype on contiguous tensors.
    Subclasses are excluded: they may override ``__getitem__``.
    """
    if type(dataset) is not TensorDataset or collate_fn is not default_collate:
        return None
    tensors = tuple(dataset.tensors)
    if not tensors or not all(t.is_contiguous() and t.layout == torch.strided for t in tensors):
        return None
    return tensors


class TensorBatchDataset(Dataset):
    """A ``TensorDataset`` that answers a whole batch of indices by indexing (``__getitems__``).

    Torch's fetcher calls ``__getitems__(indices)`` and passes the result to the loader's collate, which is
    ``identity_collate`` here: one indexing per tensor instead of a fetch per sample plus ``torch.stack``.
    """

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = tuple(tensors)

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return [t[idx] for t in self.tensors]


def make_fetch(dataset: Any, collate_fn: Callable[[Any], Any]) -> Callable[[list[int]], Any]:
    """indices -> one collated batch, as torch's map-style fetcher makes it (or by indexing, when equal)."""
    tensors = tensor_batches(dataset, collate_fn)
    if tensors is not None:
        return TensorBatchDataset(tensors).__getitems__
    getitems = getattr(dataset, "__getitems__", None)
    if getitems:
        return lambda indices: collate_fn(getitems(indices))
    return lambda indices: collate_fn([dataset[i] for i in indices])


def loader_settings(dataloader: object) -> tuple[DataLoader, int, bool]:
    """Check that a training DataLoader can be federated; return it with its batch size and drop_last."""
    if not isinstance(dataloader, DataLoader):
        raise FederatedConfigError(
            f"the training dataloader must be a torch DataLoader to be split among clients, got "
            f"{type(dataloader).__name__}"
        )
    if isinstance(dataloader.dataset, IterableDataset):
        raise FederatedConfigError(
            "the training set is an IterableDataset; federated partitioning needs a map-style dataset "
            "(with __len__ and __getitem__)"
        )
    if dataloader.batch_size is None:
        raise FederatedConfigError(
            "the training DataLoader has no batch_size (custom batch_sampler?); give it a batch_size: "
            "clients batch their own partitions"
        )
    return dataloader, int(dataloader.batch_size), bool(dataloader.drop_last)


def rebuild_loader(dataloader: DataLoader, batch_sampler: RoundBatchSampler) -> DataLoader:
    """A DataLoader like ``dataloader`` whose batches come from ``batch_sampler``."""
    dataset, collate_fn = dataloader.dataset, dataloader.collate_fn
    tensors = tensor_batches(dataset, collate_fn)
    if tensors is not None:  # the same batches, by indexing instead of per-sample fetch and collate
        dataset, collate_fn = TensorBatchDataset(tensors), identity_collate
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn, **worker_settings(dataloader))


def worker_settings(dataloader: DataLoader, persistent_workers: Optional[bool] = None) -> dict[str, Any]:
    """The user's loading settings (workers, pinning, timeout) for a loader we rebuild around their dataset."""
    kwargs: dict[str, Any] = dict(
        num_workers=dataloader.num_workers,
        pin_memory=dataloader.pin_memory,
        timeout=dataloader.timeout,
        worker_init_fn=dataloader.worker_init_fn,
        multiprocessing_context=dataloader.multiprocessing_context,
        pin_memory_device=dataloader.pin_memory_device,
    )
    if dataloader.num_workers > 0:
        kwargs["prefetch_factor"] = dataloader.prefetch_factor
        kwargs["persistent_workers"] = dataloader.persistent_workers if persistent_workers is None else persistent_workers
    return kwargs
