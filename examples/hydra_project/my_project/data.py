"""A small LightningDataModule: Gaussian blobs, generated from a seed (no download)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


def blobs(n: int, features: int, classes: int, seed: int, split: int) -> TensorDataset:
    centers = torch.randn(classes, features, generator=torch.Generator().manual_seed(seed)) * 0.5
    g = torch.Generator().manual_seed(seed * 1000 + split)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorDataset(centers[y] + torch.randn(n, features, generator=g), y)


class BlobData(L.LightningDataModule):
    def __init__(self, n_train: int = 800, features: int = 16, classes: int = 4, batch_size: int = 16) -> None:
        super().__init__()
        self.train_set = blobs(n_train, features, classes, seed=0, split=1)
        self.val_set = blobs(200, features, classes, seed=0, split=2)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=200)
