"""MNIST read from the common ``mnist.npz`` layout, or downloaded through torchvision."""

from __future__ import annotations

import os
import zipfile
from typing import Any, Optional

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from lightning_fl.errors import FederatedConfigError, check

_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _missing_file(path: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"data.path: no MNIST file at '{path}' (expected an npz with x_train, y_train, x_test, y_test); "
        "pass the path to mnist.npz or set data.download=true"
    )


def _to_tensors(
    images: Any, labels: Any, image_key: str, label_key: str, source: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one split and convert it to float32 ``(N, 1, 28, 28)`` in [0, 1] and int64 labels.

    ``source`` is the setting the arrays came from, so an error message points at what to fix.
    """
    images = torch.as_tensor(np.asarray(images))
    labels = torch.as_tensor(np.asarray(labels))
    check(
        images.dim() == 3 and tuple(images.shape[1:]) == (28, 28),
        f"{source}: '{image_key}' must have shape (N, 28, 28), got {tuple(images.shape)}",
    )
    check(
        labels.dim() == 1 and len(labels) == len(images),
        f"{source}: '{label_key}' must have shape ({len(images)},) to match '{image_key}', got {tuple(labels.shape)}",
    )
    labels = labels.to(torch.int64)
    if len(labels):
        check(
            int(labels.min()) >= 0 and int(labels.max()) < 10,
            f"{source}: '{label_key}' must hold labels 0..9, got {int(labels.min())}..{int(labels.max())}",
        )
    # Plain [0, 1] scaling without mean/std normalisation, as in McMahan et al. (2017).
    return images.to(torch.float32).unsqueeze(1) / 255.0, labels


class MNISTDataModule(LightningDataModule):
    """MNIST with the 60k training images for training and the 10k test images for validation and test.

    ``train_subset`` / ``val_subset`` keep the first n samples of each split for quick runs; the
    validation subset is also what ``test_dataloader`` serves, since both use the test split.
    """

    dims: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10

    def __init__(
        self,
        path: Optional[str] = None,
        batch_size: int = 10,
        download: bool = False,
        root: str = "./data",
        train_subset: Optional[int] = None,
        val_subset: Optional[int] = None,
    ) -> None:
        super().__init__()
        check(batch_size >= 1, f"data.batch_size must be >= 1, got {batch_size}")
        check(train_subset is None or train_subset >= 1, f"data.train_subset must be >= 1 or null, got {train_subset}")
        check(val_subset is None or val_subset >= 1, f"data.val_subset must be >= 1 or null, got {val_subset}")
        check(
            path is not None or download,
            "data.path: no MNIST file given; set data.path to an mnist.npz or set data.download=true",
        )
        if path is not None and not os.path.isfile(os.path.expanduser(path)):
            raise _missing_file(path)  # fail now, before Lightning starts processes
        self.path = path
        self.batch_size = int(batch_size)
        self.download = bool(download)
        self.root = root
        self.train_subset = train_subset
        self.val_subset = val_subset
        self.train_set: Optional[TensorDataset] = None
        self.val_set: Optional[TensorDataset] = None
        self.test_set: Optional[TensorDataset] = None

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node, so a download never races with itself.
        if self.path is None and self.download:
            self._torchvision_splits()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:  # fit then test must not read 55 MB twice
            return
        if self.path is not None:
            (x_train, y_train), (x_test, y_test) = self._npz_splits(self.path)
        else:
            (x_train, y_train), (x_test, y_test) = self._torchvision_splits()
        if self.train_subset is not None:
            x_train, y_train = x_train[: self.train_subset], y_train[: self.train_subset]
        if self.val_subset is not None:
            x_test, y_test = x_test[: self.val_subset], y_test[: self.val_subset]
        self.train_set = TensorDataset(x_train, y_train)
        self.val_set = TensorDataset(x_test, y_test)
        self.test_set = self.val_set

    @staticmethod
    def _npz_splits(path: str) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        file = os.path.expanduser(path)
        if not os.path.isfile(file):
            raise _missing_file(path)
        try:
            loaded = np.load(file, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise FederatedConfigError(f"data.path: cannot read '{path}' as an npz file ({first_line})") from err
        # A bare .npy loads as one array rather than an archive of named arrays.
        check(isinstance(loaded, np.lib.npyio.NpzFile), f"data.path: '{path}' is not an npz archive of named arrays")
        with loaded as npz:
            for key in _KEYS:
                check(key in npz.files, f"data.path: '{path}' has no array '{key}' (expected {', '.join(_KEYS)})")
            arrays = {key: npz[key] for key in _KEYS}
        train = _to_tensors(arrays["x_train"], arrays["y_train"], "x_train", "y_train", "data.path")
        test = _to_tensors(arrays["x_test"], arrays["y_test"], "x_test", "y_test", "data.path")
        return train, test

    def _torchvision_splits(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        try:
            from torchvision.datasets import MNIST
        except ImportError as err:
            raise ImportError(
                "data.download=true needs torchvision: pip install torchvision, or pass data.path to an mnist.npz"
            ) from err
        train = MNIST(self.root, train=True, download=True)
        test = MNIST(self.root, train=False, download=True)
        return (
            _to_tensors(train.data, train.targets, "train images", "train labels", "data.download"),
            _to_tensors(test.data, test.targets, "test images", "test labels", "data.download"),
        )

    def _require(self, dataset: Optional[TensorDataset]) -> TensorDataset:
        if dataset is None:
            raise RuntimeError("MNISTDataModule: call setup() before asking for a dataloader")
        return dataset

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._require(self.train_set), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._require(self.val_set), batch_size=max(self.batch_size, 1000), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._require(self.test_set), batch_size=max(self.batch_size, 1000), shuffle=False)
