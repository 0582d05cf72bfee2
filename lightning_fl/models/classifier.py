"""A plain Lightning image classifier; the federated strategies drive it without it knowing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_fl.errors import check
from lightning_fl.models.nets import build_net

_OPTIMIZERS = ("sgd", "adam")


class ImageClassifier(L.LightningModule):
    """Cross-entropy classification of ``(x, y)`` batches with one of the networks of :func:`build_net`."""

    def __init__(
        self,
        arch: str = "cnn",
        in_shape: tuple[int, int, int] = (1, 8, 8),
        num_classes: int = 10,
        lr: float = 0.05,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        optimizer: str = "sgd",
        lr_decay: float = 1.0,
    ) -> None:
        super().__init__()
        check(lr > 0, f"model.lr must be > 0, got {lr}")
        check(0 < lr_decay <= 1, f"model.lr_decay must be in (0, 1], got {lr_decay}")
        check(momentum >= 0, f"model.momentum must be >= 0, got {momentum}")
        check(weight_decay >= 0, f"model.weight_decay must be >= 0, got {weight_decay}")
        check(
            optimizer in _OPTIMIZERS,
            f"model.optimizer: unknown optimizer '{optimizer}'; choose one of {', '.join(_OPTIMIZERS)}",
        )
        # Configs may pass a list (e.g. Hydra's ListConfig); a plain int tuple keeps hparams and checkpoints clean.
        in_shape = tuple(int(d) for d in in_shape)  # type: ignore[assignment]
        self.save_hyperparameters()
        self.net = build_net(arch, in_shape, num_classes)
        # Separate metric objects: each keeps its own running state across an epoch.
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.log("test_loss", F.cross_entropy(logits, y), on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("test_acc", self.test_acc, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        hp: Any = self.hparams  # AttributeDict: attribute access to the saved arguments
        opt: torch.optim.Optimizer
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:  # hparams edited after construction
            raise ValueError(
                f"model.optimizer: unknown optimizer '{hp.optimizer}'; choose one of {', '.join(_OPTIMIZERS)}"
            )
        if hp.lr_decay == 1.0:
            return opt
        scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=hp.lr_decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
