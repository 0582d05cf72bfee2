"""Shared test helpers: a small federated problem, a LightningModule for it, and an independent
plain-PyTorch FedAvg loop to compare the strategy against."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fl.federated.partition import make_partition
from lightning_fl.federated.sampling import epoch_permutation, sample_clients
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

    def __init__(
        self,
        lr: float = 0.1,
        gamma: float | None = None,
        momentum: float = 0.0,
        batchnorm: bool = True,
        sync_step_log: bool = False,
        crash_on_rank: int | None = None,
        failing_clients: list[int] | None = None,
    ):
        super().__init__()
        self.failing_clients = set(failing_clients or ())  # their training_step raises (a broken client)
        self.net = make_net(batchnorm=batchnorm)
        self.lr, self.gamma, self.momentum, self.sync_step_log = lr, gamma, momentum, sync_step_log
        self.crash_on_rank = crash_on_rank  # simulates a client process dying in its second round
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.crash_on_rank == self.global_rank and self.current_epoch == 1:
            raise RuntimeError(f"simulated client crash on rank {self.global_rank}")
        client = getattr(self.trainer.strategy, "current_client_id", None)
        if client is not None and client in self.failing_clients:
            raise ValueError(f"simulated failure of client {client}")
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        if self.sync_step_log:
            self.log("step_loss", loss, on_step=True, sync_dist=True)
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


class AdamModule(TinyModule):
    """TinyModule with Adam (weight decay) and a per-epoch ExponentialLR: stateful optimizer and scheduler."""

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=0.01, weight_decay=1e-4)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, 0.5)}


SILO_SIZES = (60, 36)


def silo_dataset(rank: int) -> TensorDataset:
    """The private training set of silo ``rank`` (different sizes per silo)."""
    return make_dataset(SILO_SIZES[rank], split=10 + rank)


class TinyData(L.LightningDataModule):
    """``silo=True``: each process loads only its own silo's data, as a node in a cross-silo run would."""

    def __init__(
        self, n: int = 240, batch_size: int = 8, drop_last: bool = False, seed: int = 0, silo: bool = False
    ):
        super().__init__()
        self.train_set = make_dataset(n, seed=seed)
        self.val_set = make_dataset(96, seed=seed, split=1)
        self.batch_size, self.drop_last, self.silo = batch_size, drop_last, silo

    def setup(self, stage: str) -> None:
        if self.silo:
            self.train_set = silo_dataset(self.trainer.global_rank)

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
    partition_obj: Any = None,
) -> nn.Module:
    """FedAvg written out by hand. It reuses only the package's documented pure draws (partition, client
    sample, shuffle order, per-client seed) so both runs see the same clients, batches and RNG."""
    x, y = dataset.tensors
    part = partition_obj or make_partition(partition, len(y), num_clients, seed, labels=y, alpha=alpha)
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


def fedavgm_server(lr: float, momentum: float) -> Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None]:
    """Server SGD with momentum on the pseudo-gradient, written out: v = m v + (g - avg); g -= lr v."""
    velocity: dict[str, torch.Tensor] = {}

    def step(global_state: dict[str, torch.Tensor], average: dict[str, torch.Tensor]) -> None:
        for k, avg in average.items():
            delta = global_state[k] - avg
            velocity[k] = momentum * velocity[k] + delta if k in velocity else delta.clone()
            global_state[k] = global_state[k] - lr * velocity[k]

    return step


# Set by an in-process fit earlier in a pytest run; a launched job must pick its own.
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def launch_env() -> dict[str, str]:
    """``os.environ`` without the process-group variables, for a subprocess that starts its own job."""
    import os

    return {k: v for k, v in os.environ.items() if k not in DIST_ENV}


def run_script(tmp_path: Any, devices: int, strategy: dict, options: dict | None = None) -> dict:
    """Run tests/scripts/run_fedavg.py (Lightning's popen launcher starts the other ranks)."""
    import json
    import os
    import subprocess
    import sys

    out = os.path.join(str(tmp_path), f"result_{devices}_{abs(hash(json.dumps([strategy, options])))}.pt")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "run_fedavg.py")
    env = launch_env()
    proc = subprocess.run(
        [sys.executable, script, out, str(devices), json.dumps(strategy), json.dumps(options or {})],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),  # the job's default_root_dir: nothing lands in the checkout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


def net_state(result_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("net.") :]: v for k, v in result_state.items() if k.startswith("net.")}


def fit_in_process(
    strategy: Any,
    module: L.LightningModule,
    data: L.LightningDataModule,
    rounds: int,
    ckpt_path: str | None = None,
    **trainer_kwargs: Any,
) -> L.Trainer:
    """One-process fit with quiet defaults (devices=1 needs no launcher, so it runs inside pytest)."""
    kwargs: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=rounds,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    kwargs.update(trainer_kwargs)
    # Files a fit may write (client_errors.log, client_state/) go to a temporary directory, not the checkout.
    kwargs.setdefault("default_root_dir", tempfile.mkdtemp(prefix="lightning-fl-test-"))
    trainer = L.Trainer(strategy=strategy, **kwargs)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path: Any, stdout: str) -> None:
    """A benchmark's ``--png PATH``: a decodable PNG with matplotlib installed; without it, no file and the
    one-line install hint on stdout."""
    from pathlib import Path

    path = Path(path)
    try:
        import matplotlib.image
    except ImportError:
        assert not path.exists() and "pip install 'lightning-fl[plot]'" in stdout, stdout[-2000:]
        return
    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE, (path, stdout[-2000:])
    height, width = matplotlib.image.imread(path).shape[:2]
    assert 200 <= width <= 2000 and 200 <= height <= 2000, (width, height)  # small, as committed beside the docs
