"""The training data of one round on one rank: a DataLoader that replays each assigned client's batches.

The user's DataLoader is kept for everything but the order: same dataset, batch size, collate function,
workers and pinning. Only the batch sampler changes, so data never crosses clients and a client's batches
are the same whichever rank trains it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler

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
    kwargs: dict = dict(
        batch_sampler=batch_sampler,
        num_workers=dataloader.num_workers,
        collate_fn=dataloader.collate_fn,
        pin_memory=dataloader.pin_memory,
        timeout=dataloader.timeout,
        worker_init_fn=dataloader.worker_init_fn,
        multiprocessing_context=dataloader.multiprocessing_context,
        pin_memory_device=dataloader.pin_memory_device,
    )
    if dataloader.num_workers > 0:
        kwargs["prefetch_factor"] = dataloader.prefetch_factor
        kwargs["persistent_workers"] = dataloader.persistent_workers
    return DataLoader(dataloader.dataset, **kwargs)
