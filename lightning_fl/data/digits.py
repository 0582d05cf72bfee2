"""scikit-learn's bundled 8x8 handwritten digits: real data that needs no download."""

from __future__ import annotations

from typing import Optional

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from lightning_fl.errors import check


class DigitsDataModule(LightningDataModule):
    """The 1,797 images of ``sklearn.datasets.load_digits`` split once into train, validation and test.

    Images are float32 ``(N, 1, 8, 8)`` in ``[0, 1]``; labels are int64. The three splits are disjoint, so
    ``test_acc`` measures images that neither training nor model selection (early stopping) saw.
    """

    dims: tuple[int, int, int] = (1, 8, 8)
    num_classes: int = 10

    def __init__(
        self, batch_size: int = 10, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
    ) -> None:
        super().__init__()
        check(batch_size >= 1, f"data.batch_size must be >= 1, got {batch_size}")
        check(0.0 < val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {val_fraction}")
        check(0.0 < test_fraction < 1.0, f"data.test_fraction must be in (0, 1), got {test_fraction}")
        check(
            val_fraction + test_fraction < 1.0,
            f"data.val_fraction + data.test_fraction must be < 1 (training needs images), got "
            f"{val_fraction} + {test_fraction}",
        )
        self.batch_size = int(batch_size)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.seed = int(seed)
        self.train_set: Optional[TensorDataset] = None
        self.val_set: Optional[TensorDataset] = None
        self.test_set: Optional[TensorDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:  # fit, then validate/test: build the split once
            return
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:  # pragma: no cover - scikit-learn is a declared dependency
            raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") from err

        bunch = load_digits()
        # Pixel values are integers 0..16 in the bundled data.
        images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.as_tensor(bunch.target, dtype=torch.int64)

        n = len(labels)
        n_val = max(int(round(n * self.val_fraction)), 1)  # no split may be empty
        n_test = max(int(round(n * self.test_fraction)), 1)
        # A private generator makes the split depend on the seed only, not on the global RNG state.
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        val_idx, test_idx, train_idx = perm[:n_val], perm[n_val : n_val + n_test], perm[n_val + n_test :]
        self.train_set = TensorDataset(images[train_idx], labels[train_idx])
        self.val_set = TensorDataset(images[val_idx], labels[val_idx])
        self.test_set = TensorDataset(images[test_idx], labels[test_idx])

    def _require(self, dataset: Optional[TensorDataset]) -> TensorDataset:
        if dataset is None:
            raise RuntimeError("DigitsDataModule: call setup() before asking for a dataloader")
        return dataset

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._require(self.train_set), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        # Evaluation has no gradient, so larger batches are just faster.
        return DataLoader(self._require(self.val_set), batch_size=max(self.batch_size, 256), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._require(self.test_set), batch_size=max(self.batch_size, 256), shuffle=False)
