"""The FedAvg workload every framework runs, and the pieces they share (data, model, one client's training,
global evaluation, round timing).

Kept free of Flower so that ``lightning_fl`` and the plain loop run without it. Every framework draws its
clients with ``lightning_fl.federated.sampling.sample_clients`` on the same ``lightning_fl.federated.partition.make_partition``
split and starts from the same seeded initial weights, so all of them do the same work per round.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_fl.federated.partition import Partition, make_partition
from lightning_fl.federated.sampling import epoch_permutation, sample_clients
from lightning_fl.models import McMahanCNN
from lightning_fl.seeding import derive_seed

EVAL_BATCH = 1000


@dataclasses.dataclass
class Spec:
    """One framework x workload run; travels to worker processes as JSON."""

    workload: str
    num_clients: int
    samples_per_client: int
    per_round: int
    local_epochs: int
    batch_size: int
    lr: float
    rounds: int  # measured rounds
    warmup: int  # unmeasured rounds before them
    evaluate: bool  # global evaluation on the test set after every round
    test_size: int
    threads: int
    seed: int
    data: str
    synthetic: bool
    flower_cpus_per_client: float = 0.0  # 0: = threads (one client at a time, like the others)

    @property
    def total_rounds(self) -> int:
        return self.warmup + self.rounds

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        return cls(**json.loads(text))


# --------------------------------------------------------------------------------------------- data

_CACHE: dict[tuple[Any, ...], Any] = {}


def load_data(spec: Spec) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train images/labels (first clients x samples rows) and test images/labels, float32 in [0, 1]."""
    return (*load_train(spec), *load_test(spec))


def load_train(spec: Spec) -> tuple[Tensor, Tensor]:
    """Cached per process: a Flower actor trains many clients and must not reload the file for each."""
    n = spec.num_clients * spec.samples_per_client
    return _load(spec, "train", n, 0)


def load_test(spec: Spec) -> tuple[Tensor, Tensor]:
    return _load(spec, "test", spec.test_size, 1)


def _load(spec: Spec, split: str, n: int, salt: int) -> tuple[Tensor, Tensor]:
    key = ("data", split, spec.data, spec.synthetic, n, spec.seed)
    if key not in _CACHE:
        if spec.synthetic:
            g = torch.Generator().manual_seed(spec.seed * 2 + salt)
            images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
            labels = torch.randint(0, 10, (n,), generator=g)
        else:
            with np.load(spec.data) as npz:  # only the split asked for is decompressed
                images, labels = torch.from_numpy(npz[f"x_{split}"][:n]), torch.from_numpy(npz[f"y_{split}"][:n])
        _CACHE[key] = (images.float().unsqueeze(1) / 255.0, labels.long())
    return _CACHE[key]


def partition_of(spec: Spec) -> Partition:
    """The same IID split ``FedAvgStrategy(partition="iid", seed=spec.seed)`` builds."""
    key = ("partition", spec.num_clients, spec.samples_per_client, spec.seed)
    if key not in _CACHE:
        _CACHE[key] = make_partition("iid", spec.num_clients * spec.samples_per_client, spec.num_clients, spec.seed)
    return _CACHE[key]


def sampled(spec: Spec, round_idx: int) -> list[int]:
    return sample_clients(spec.num_clients, spec.per_round, spec.seed, round_idx)


# --------------------------------------------------------------------------------------------- model


def initial_net(spec: Spec) -> nn.Module:
    """McMahanCNN with the same initial weights in every framework."""
    torch.manual_seed(spec.seed)
    return McMahanCNN(1, 10, 28)


def make_module(lr: float, net: Optional[nn.Module] = None) -> Any:
    """A LightningModule that is McMahanCNN + cross-entropy + SGD, plus loss/accuracy on validation.

    No metrics objects or per-step logging: Lightning-side time is framework overhead, not extra work.
    """
    import lightning as L

    class CNNModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net if net is not None else McMahanCNN(1, 10, 28)

        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
            x, y = batch
            logits = self.net(x)
            self.log("val_loss", F.cross_entropy(logits, y), batch_size=len(y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean(), batch_size=len(y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr)

    return CNNModule()


def train_client(net: nn.Module, spec: Spec, x: Tensor, y: Tensor, idx: Tensor, round_idx: int, client: int) -> None:
    """One client's local training as a hand-written loop: fresh SGD, E shuffled passes, batch B.

    Batch order and the client's RNG seed are lightning_fl's (pure functions of seed, round, client).
    """
    opt = torch.optim.SGD(net.parameters(), lr=spec.lr)
    torch.manual_seed(derive_seed(spec.seed, "client-rng", round_idx, client))
    net.train()
    for e in range(spec.local_epochs):
        order = idx[epoch_permutation(len(idx), spec.seed, round_idx, client, e)]
        for start in range(0, len(order), spec.batch_size):
            b = order[start : start + spec.batch_size]
            opt.zero_grad()
            F.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()


@torch.no_grad()
def evaluate(net: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Loss and accuracy of the global model on the test set (batches of 1000)."""
    net.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(y), EVAL_BATCH):
        logits = net(x[start : start + EVAL_BATCH])
        loss += float(F.cross_entropy(logits, y[start : start + EVAL_BATCH], reduction="sum"))
        correct += int((logits.argmax(1) == y[start : start + EVAL_BATCH]).sum())
    return loss / len(y), correct / len(y)


# --------------------------------------------------------------------------------------------- timing


class RoundClock:
    """Wall-clock marks per round: begin, end of training+aggregation, end of the round.

    ``time.time()`` (not perf_counter) so the parent can subtract its own launch time for startup.
    """

    def __init__(self) -> None:
        self.begin: list[float] = []
        self.train_end: list[float] = []
        self.end: list[float] = []
        self.first_train: Optional[float] = None  # when the first client of the first round started training
        self.test_acc: Optional[float] = None
        self.threads: Optional[int] = None
        self.weights_sum: Optional[float] = None  # float64 sum of the final global weights: same work, same value
        self.notes: list[str] = []

    def round_begin(self) -> None:
        self.begin.append(time.time())

    def round_trained(self) -> None:
        self.train_end.append(time.time())

    def round_end(self) -> None:
        self.end.append(time.time())

    def final_weights(self, net: nn.Module) -> None:
        with torch.no_grad():
            self.weights_sum = float(sum(p.double().sum() for p in net.parameters()))

    def client_started(self, when: Optional[float] = None) -> None:
        if self.first_train is None:
            self.first_train = time.time() if when is None else when

    def write(self, path: str | Path) -> None:
        Path(path).write_text(
            json.dumps(
                {
                    "begin": self.begin,
                    "train_end": self.train_end,
                    "end": self.end,
                    "first_train": self.first_train,
                    "test_acc": self.test_acc,
                    "threads": self.threads,
                    "weights_sum": self.weights_sum,
                    "notes": self.notes,
                }
            )
        )


def round_times(marks: dict[str, Any], warmup: int) -> tuple[list[float], list[float]]:
    """Whole-round and training-part seconds of the measured rounds.

    A whole round runs from its begin mark to the next round's begin mark, so whatever a framework does
    between rounds (e.g. rebuilding dataloaders) is charged to it; the last round ends at its end mark.
    The training part runs from the begin mark to the end of aggregation (before global evaluation).
    """
    begin, end, trained = marks["begin"], marks["end"], marks["train_end"]
    whole, train = [], []
    for r in range(warmup, len(begin)):
        stop = begin[r + 1] if r + 1 < len(begin) else end[r]
        whole.append(stop - begin[r])
        train.append(trained[r] - begin[r])
    return whole, train


# --------------------------------------------------------------------------------------------- frameworks


def run_plain(spec: Spec, clock: RoundClock) -> None:
    """FedAvg as one writes it by hand: for each sampled client load global, train, add weighted; average."""
    x, y = load_train(spec)
    xte, yte = load_test(spec) if spec.evaluate else (x[:0], y[:0])  # the test set only when evaluating
    partition = partition_of(spec)
    sizes = partition.sizes()
    net = initial_net(spec)
    params = list(net.parameters())  # McMahanCNN has no buffers: parameters are the whole state
    global_params = [p.detach().clone() for p in params]
    sums = [torch.zeros_like(p) for p in params]
    for r in range(spec.total_rounds):
        clock.round_begin()
        clients = sampled(spec, r)
        total = sum(int(sizes[c]) for c in clients)
        for s in sums:
            s.zero_()
        for c in clients:
            with torch.no_grad():
                for p, g in zip(params, global_params):
                    p.copy_(g)
            idx = partition.client(c)
            clock.client_started()
            train_client(net, spec, x, y, idx, r, c)
            with torch.no_grad():
                for s, p in zip(sums, params):
                    s.add_(p, alpha=len(idx) / total)
        with torch.no_grad():
            for g, s, p in zip(global_params, sums, params):
                g.copy_(s)
                p.copy_(s)
        clock.round_trained()
        if spec.evaluate:
            clock.test_acc = evaluate(net, xte, yte)[1]
        clock.round_end()
    clock.threads = torch.get_num_threads()
    clock.final_weights(net)


def run_lightning_fl(spec: Spec, clock: RoundClock) -> None:
    """``Trainer(strategy=FedAvgStrategy(...))`` on an ordinary module and DataLoader; one epoch = one round."""
    import logging
    import warnings

    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_fl import FedAvgStrategy

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    x, y = load_train(spec)
    xte, yte = load_test(spec) if spec.evaluate else (x[:0], y[:0])  # the test set only when evaluating
    module = make_module(spec.lr, initial_net(spec))

    class Marks(Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            clock.round_begin()

        def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
            # Not on_train_batch_start: a callback with per-batch hooks keeps lightning_fl off its fast path
            # (a benchmark mark must not change what is measured). The first backward is the first step.
            clock.client_started()

        def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            clock.round_trained()  # aggregation happened inside the round's last training step

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if not spec.evaluate:
                clock.round_trained()
            else:
                clock.test_acc = float(trainer.callback_metrics["val_acc"])
            clock.round_end()

    trainer = L.Trainer(
        strategy=FedAvgStrategy(
            num_clients=spec.num_clients,
            clients_per_round=spec.per_round,
            local_epochs=spec.local_epochs,
            partition="iid",
            seed=spec.seed,
        ),
        accelerator="cpu",
        devices=1,
        max_epochs=spec.total_rounds,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if spec.evaluate else 0,
        callbacks=[Marks()],
    )
    # shuffle=True is what a user writes; the strategy replaces the sampler with the round's clients.
    train = DataLoader(TensorDataset(x, y), batch_size=spec.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(xte, yte), batch_size=EVAL_BATCH) if spec.evaluate else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    clock.threads = torch.get_num_threads()
    clock.final_weights(module.net)
