"""An existing, ordinary Lightning project made federated by changing one argument.

`DigitsClassifier` and `DigitsData` below are written the way any Lightning user writes them: nothing in
them knows about federated learning. Train them centrally, then federated:

    python examples/existing_module.py --strategy auto      # ordinary training
    python examples/existing_module.py --strategy fedavg    # 10 IID clients, all of them each round

The only difference between the two runs is `Trainer(strategy=...)`.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import lightning_fl  # noqa: F401  (registers strategy="fedavg")


class DigitsClassifier(L.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10, average="micro")

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self.net(x), y)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)}


class DigitsData(L.LightningDataModule):
    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        data = TensorDataset(torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y))
        self.train_set, self.val_set = random_split(data, [1437, 360], generator=torch.Generator().manual_seed(0))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", default="fedavg", help="'auto' (ordinary) or 'fedavg' (federated)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs, or rounds with fedavg")
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()
    L.seed_everything(0)
    trainer = L.Trainer(
        strategy=args.strategy, accelerator="cpu", devices=args.devices, max_epochs=args.epochs,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
    )
    trainer.fit(DigitsClassifier(), DigitsData())
    if trainer.is_global_zero:
        print(f"{args.strategy}: val_acc={float(trainer.callback_metrics['val_acc']):.4f}")


if __name__ == "__main__":
    main()
