"""Federated evaluation: the user's unmodified ``validation_step`` run on each sampled client's held-out data.

Lightning's own validation loop evaluates one dataset and reduces everything to one number per metric,
with collectives at epoch end. Here every process evaluates its own clients, a different number each, so
the step is driven directly: ``self.log`` / ``self.log_dict`` are shadowed on the module instance for the
duration and record per-client values (no Lightning result collection, no per-metric collectives);
torchmetrics objects are computed per client with their cross-process sync switched off. One all-reduce
then assembles the table of every evaluated client, identical on every process.
"""

from __future__ import annotations

import csv
import os
import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader, Dataset

from lightning_fl.federated.compression import allreduce_bytes
from lightning_fl.federated.evaluation import distribution
from lightning_fl.strategies.round_data import tensor_batches

CLIENT_METRICS_FILENAME = "client_metrics.csv"
_REDUCERS = ("mean", "sum", "max", "min")


def _reducer(reduce_fx: Any) -> str:
    name = reduce_fx if isinstance(reduce_fx, str) else getattr(reduce_fx, "__name__", "mean")
    if name not in _REDUCERS:
        raise ValueError(f"federated evaluation: self.log(reduce_fx={reduce_fx!r}) is not supported; use mean, sum, max or min")
    return name


def _batch_size(batch: Any) -> int:
    from lightning.pytorch.utilities.data import extract_batch_size

    try:
        return int(extract_batch_size(batch))
    except Exception:  # noqa: BLE001 - Lightning itself falls back to 1 when it cannot tell
        return 1


class ClientLogCapture:
    """Records what ``validation_step`` logs for one client: tensors reduced over its batches as Lightning's
    epoch-level logging would (batch-size-weighted mean by default), torchmetrics objects computed once."""

    def __init__(self) -> None:
        self.batch: Any = None
        self._values: dict[str, list[float]] = {}  # name -> [accumulated, weight]
        self._reduce: dict[str, str] = {}
        self.metric_objects: dict[str, Any] = {}

    # Same parameters as LightningModule.log, so positional and keyword calls both bind.
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: Optional[bool] = None,
        on_step: Optional[bool] = None,
        on_epoch: Optional[bool] = None,
        reduce_fx: Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: Optional[int] = None,
        metric_attribute: Optional[str] = None,
        rank_zero_only: bool = False,
    ) -> None:
        from torchmetrics import Metric

        if isinstance(value, Metric):
            self.metric_objects[name] = value
            return
        if isinstance(value, torch.Tensor):
            value = float(value.detach().float().mean()) if value.numel() == 1 else float("nan")
        value = float(value)
        kind = _reducer(reduce_fx)
        weight = float(batch_size) if batch_size is not None else float(_batch_size(self.batch))
        slot = self._values.get(name)
        if slot is None:
            self._values[name] = [value * weight if kind == "mean" else value, weight]
            self._reduce[name] = kind
            return
        if kind == "mean":
            slot[0] += value * weight
        elif kind == "sum":
            slot[0] += value
        elif kind == "max":
            slot[0] = max(slot[0], value)
        else:
            slot[0] = min(slot[0], value)
        slot[1] += weight

    def log_dict(self, dictionary: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        for name, value in dictionary.items():
            self.log(name, value, *args, **kwargs)

    def results(self) -> dict[str, float]:
        out = {
            name: (acc / weight if self._reduce[name] == "mean" and weight > 0 else acc)
            for name, (acc, weight) in self._values.items()
        }
        for name, metric in self.metric_objects.items():
            out[name] = _compute_locally(metric)
        return out


def _compute_locally(metric: Any) -> float:
    """The metric over this client's batches only: no cross-process sync (processes evaluate different
    clients, so a sync would block), then reset so the next client and Lightning's own loop start empty."""
    saved = metric.distributed_available_fn
    metric.distributed_available_fn = lambda: False
    try:
        value = metric.compute()
    finally:
        metric.distributed_available_fn = saved
        metric.reset()
    return float(value.float().mean()) if isinstance(value, torch.Tensor) else float(value)


@contextmanager
def _capturing(module: LightningModule, capture: ClientLogCapture) -> Iterator[None]:
    # Instance attributes shadow the class's methods for calls made through ``self``.
    module.__dict__["log"] = capture.log
    module.__dict__["log_dict"] = capture.log_dict
    try:
        yield
    finally:
        module.__dict__.pop("log", None)
        module.__dict__.pop("log_dict", None)


@contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _batches(dataset: Dataset, indices: torch.Tensor, batch_size: int, collate_fn: Any) -> Iterator[Any]:
    """The held-out samples in order, ``batch_size`` at a time; a plain ``TensorDataset`` with torch's default
    collate is sliced directly (the same batches as per-sample fetch and stacking, see ``tensor_batches``)."""
    tensors = tensor_batches(dataset, collate_fn)
    if tensors is not None:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            yield [t[chunk] for t in tensors]
        return
    yield from DataLoader(dataset, batch_size=batch_size, sampler=indices.tolist(), collate_fn=collate_fn)


def evaluate_clients(
    strategy: Any,
    clients: list[tuple[int, torch.Tensor]],
    dataset: Dataset,
    collate_fn: Any,
    batch_size: int,
) -> dict[int, tuple[dict[str, float], int]]:
    """Run ``validation_step`` on each ``(client id, held-out indices)``; per client its values and sample count."""
    module: LightningModule = strategy.lightning_module
    out: dict[int, tuple[dict[str, float], int]] = {}
    with _eval_mode(module), torch.no_grad(), strategy.precision_plugin.val_step_context():
        for client_id, indices in clients:
            if len(indices) == 0:
                continue
            capture = ClientLogCapture()
            with _capturing(module, capture):
                for batch_idx, batch in enumerate(_batches(dataset, indices, batch_size, collate_fn)):
                    batch = strategy.batch_to_device(batch)
                    capture.batch = batch
                    module.validation_step(batch, batch_idx)
            out[client_id] = (capture.results(), len(indices))
    return out


class ClientTable:
    """Every evaluated client's metrics, in the order of ``client_ids``; the same on every process."""

    def __init__(self, client_ids: list[int], names: list[str], values: torch.Tensor, present: torch.Tensor,
                 samples: torch.Tensor, bytes_sent: int = 0) -> None:  # fmt: skip
        self.bytes_sent = bytes_sent  # what this process sent to assemble the table (0 with one process)
        self.client_ids = client_ids
        self.names = names
        self.values = values  # [clients, metrics], float64
        self.present = present  # [clients, metrics], bool: the client logged the metric
        self.samples = samples  # [clients], float64: held-out samples (0: not evaluated)

    def stats(self) -> dict[str, float]:
        """``fl/eval/<metric>/<stat>`` for every metric some client logged."""
        out: dict[str, float] = {}
        for j, name in enumerate(self.names):
            rows = self.present[:, j] & (self.samples > 0)
            if not bool(rows.any()):
                continue
            for stat, value in distribution(self.values[rows, j], self.samples[rows]).items():
                out[f"fl/eval/{name}/{stat}"] = value
        return out

    def rows(self, round_idx: int) -> list[tuple[int, int, str, float, int]]:
        """(round, client, metric, value, num_samples) rows for ``client_metrics.csv``."""
        out = []
        for i, client_id in enumerate(self.client_ids):
            if float(self.samples[i]) <= 0:
                continue
            for j, name in enumerate(self.names):
                if bool(self.present[i, j]):
                    out.append((round_idx, client_id, name, float(self.values[i, j]), int(self.samples[i])))
        return out


def gather_table(
    local: dict[int, tuple[dict[str, float], int]], client_ids: list[int], world_size: int, device: torch.device
) -> ClientTable:
    """Assemble the per-client results of all processes: one object all-gather for the metric names (each
    process may have seen only some), then one all-reduce of a [clients, 2·metrics + 1] float64 table in
    which each client's row is filled by the one process that evaluated it (so the sum is exact)."""
    names_here = sorted({name for values, _ in local.values() for name in values})
    sent = 0
    if world_size > 1:
        everyone: list[Any] = [None] * world_size
        dist.all_gather_object(everyone, names_here)
        names = sorted(set().union(*everyone))
        # all_gather_object: a ring all-gather of each rank's pickled size (int64), then of the pickles
        # padded to the largest; each rank sends (W − 1) chunks of each.
        sent = (world_size - 1) * (8 + max(len(pickle.dumps(n)) for n in everyone))
    else:
        names = names_here
    m = len(names)
    position = {c: i for i, c in enumerate(client_ids)}
    table = torch.zeros(len(client_ids), 2 * m + 1, dtype=torch.float64)
    for client_id, (values, samples) in local.items():
        i = position[client_id]
        table[i, 2 * m] = samples
        for j, name in enumerate(names):
            if name in values:
                table[i, j] = values[name]
                table[i, m + j] = 1.0
    if world_size > 1:
        moved = table.to(device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        table = moved.cpu()
        sent += allreduce_bytes(table.numel(), world_size, table.element_size())
    return ClientTable(client_ids, names, table[:, :m], table[:, m : 2 * m] > 0.5, table[:, 2 * m], sent)


def append_rows(path: str, rows: list[tuple[int, int, str, float, int]]) -> None:
    """Append to ``client_metrics.csv`` (header written when the file is new): round,client,metric,value,num_samples."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(("round", "client", "metric", "value", "num_samples"))
        for round_idx, client, metric, value, samples in rows:
            writer.writerow((round_idx, client, metric, repr(value), samples))
