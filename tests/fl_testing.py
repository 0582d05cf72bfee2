"""Shared test helpers: a small federated problem, a LightningModule for it, and an independent
plain-PyTorch FedAvg loop to compare the strategy against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fl.partition import make_partition
from lightning_fl.sampling import epoch_permutation, sample_clients
from lightning_fl.seeding import derive_seed


def make_dataset(n: int = 240, dim: int = 6, classes: int = 3, seed: int = 0, split: int = 0) -> TensorDataset:
    """Gaussian blobs; the class centres depend on ``seed`` only, the samples on ``(seed, split)``."""
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(seed)) * 2
    g = torch.Generator().manual_seed(seed * 1000 + split + 1)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    return TensorDataset(x, y)


def make_net(dim: int = 6, classes: int = 3, batchnorm: bool = True) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(dim, 16)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.ReLU(), nn.Linear(16, classes)]
    return nn.Sequential(*layers)


class TinyModule(L.LightningModule):
    """An ordinary LightningModule: torchmetrics accuracy, SGD and an optional per-epoch ExponentialLR."""

    def __init__(self, lr: float = 0.1, gamma: float | None = None, momentum: float = 0.0, batchnorm: bool = True):
        super().__init__()
        self.net = make_net(batchnorm=batchnorm)
        self.lr, self.gamma, self.momentum = lr, gamma, momentum
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.val_acc(self.net(x), y)
        self.log("val_acc", self.val_acc, on_epoch=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)
        if self.gamma is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, self.gamma)}


class TinyData(L.LightningDataModule):
    def __init__(self, n: int = 240, batch_size: int = 8, drop_last: bool = False, seed: int = 0):
        super().__init__()
        self.train_set = make_dataset(n, seed=seed)
        self.val_set = make_dataset(96, seed=seed, split=1)
        self.batch_size, self.drop_last = batch_size, drop_last

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=32)


def float_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def reference_fedavg(
    net: nn.Module,
    dataset: TensorDataset,
    *,
    rounds: int,
    num_clients: int,
    clients_per_round: int,
    local_epochs: int,
    batch_size: int,
    lr: float,
    partition: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    gamma: float | None = None,
    momentum: float = 0.0,
    drop_last: bool = False,
    server_step: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None] | None = None,
) -> nn.Module:
    """FedAvg written out by hand. It reuses only the package's documented pure draws (partition, client
    sample, shuffle order, per-client seed) so both runs see the same clients, batches and RNG."""
    x, y = dataset.tensors
    part = make_partition(partition, len(y), num_clients, seed, labels=y, alpha=alpha)
    global_state = {k: v.clone() for k, v in net.state_dict().items()}
    for r in range(rounds):
        lr_r = lr * (gamma**r if gamma is not None else 1.0)
        sums: dict[str, torch.Tensor] = {}
        ints: dict[str, torch.Tensor] = {}
        total = 0
        for c in sample_clients(num_clients, clients_per_round, seed, r):
            idx = part.client(c)
            net.load_state_dict(global_state)
            opt = torch.optim.SGD(net.parameters(), lr=lr_r, momentum=momentum)
            torch.manual_seed(derive_seed(seed, "client-rng", r, c))
            net.train()
            for e in range(local_epochs):
                order = idx[epoch_permutation(len(idx), seed, r, c, e)]
                for s in range(0, len(order), batch_size):
                    b = order[s : s + batch_size]
                    if drop_last and len(b) < batch_size:
                        break
                    opt.zero_grad()
                    nn.functional.cross_entropy(net(x[b]), y[b]).backward()
                    opt.step()
            n = len(idx)
            total += n
            for k, v in net.state_dict().items():
                if v.is_floating_point():
                    sums[k] = sums.get(k, torch.zeros_like(v, dtype=torch.float64)) + n * v.double()
                else:
                    ints[k] = torch.maximum(ints[k], v) if k in ints else v.clone()
        average = {k: (v / total).float() for k, v in sums.items()}
        if server_step is None:
            global_state.update(average)
        else:
            server_step(global_state, average)
        global_state.update(ints)
    net.load_state_dict(global_state)
    return net


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), (a.keys(), b.keys())
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def seeded_module(seed: int = 1, **kwargs: Any) -> TinyModule:
    torch.manual_seed(seed)
    return TinyModule(**kwargs)


def clients_sizes(sizes: Sequence[int]) -> bool:
    return len(set(sizes)) > 1
