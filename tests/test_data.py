"""Data modules: real digits, a synthetic mnist.npz, and (when present) the shared real MNIST file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_fl.data import DigitsDataModule, MNISTDataModule

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared/data/mnist.npz"


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


# ----------------------------------------------------------------------------------------- digits


def test_digits_shapes_ranges_and_split() -> None:
    dm = DigitsDataModule(batch_size=16, val_fraction=0.2, seed=0)
    dm.setup("fit")
    x_train, y_train = dm.train_set.tensors
    x_val, y_val = dm.val_set.tensors
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 1797
    assert len(dm.val_set) == len(dm.test_set) == round(1797 * 0.2)
    assert x_train.shape[1:] == DigitsDataModule.dims == (1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0
    assert set(y_train.tolist()) == set(range(DigitsDataModule.num_classes))
    assert set(y_val.tolist()) <= set(range(10))

    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (16, 1, 8, 8) and yb.shape == (16,)
    assert dm.val_dataloader().batch_size == 256
    assert dm.test_dataloader().dataset is dm.test_set
    # test_acc and val_acc measure different images: the 1,797 images are distinct, so no image is in two splits.
    x_all = torch.cat([s.tensors[0] for s in (dm.train_set, dm.val_set, dm.test_set)])
    assert len({tuple(x.flatten().tolist()) for x in x_all}) == 1797
    # Evaluation order is fixed.
    first = next(iter(dm.val_dataloader()))[1]
    assert torch.equal(first, y_val[:256])


def test_digits_split_is_deterministic_per_seed() -> None:
    a, b, c = DigitsDataModule(seed=3), DigitsDataModule(seed=3), DigitsDataModule(seed=4)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert torch.equal(a.val_set.tensors[1], b.val_set.tensors[1])
    assert not torch.equal(a.val_set.tensors[1], c.val_set.tensors[1])
    # Independent of the global RNG.
    torch.manual_seed(123)
    d = DigitsDataModule(seed=3)
    d.setup()
    assert torch.equal(a.val_set.tensors[0], d.val_set.tensors[0])


def test_digits_setup_twice_keeps_split() -> None:
    dm = DigitsDataModule()
    dm.setup("fit")
    train = dm.train_set
    dm.setup("test")
    assert dm.train_set is train


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"batch_size": 0}, "data.batch_size"),
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"test_fraction": 0.0}, "data.test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "data.test_fraction"),
    ],
)
def test_digits_rejects_bad_settings(kwargs: dict, setting: str) -> None:
    with pytest.raises(ValueError) as info:
        DigitsDataModule(**kwargs)
    assert setting in _one_line(info.value)


def test_digits_batch_size_message() -> None:
    with pytest.raises(ValueError, match=r"^data\.batch_size must be >= 1, got 0$"):
        DigitsDataModule(batch_size=0)


# ------------------------------------------------------------------------------------------ mnist


def _write_npz(
    path: Path, n_train: int = 50, n_test: int = 20, drop: str | None = None, **override: np.ndarray
) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }
    arrays["x_train"][0] = 255  # a known all-white image to check the scaling
    arrays.update(override)
    if drop is not None:
        del arrays[drop]
    np.savez(path, **arrays)
    return path


def test_mnist_reads_npz(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "mnist.npz")
    dm = MNISTDataModule(path=str(path), batch_size=8)
    dm.setup("fit")
    x, y = dm.train_set.tensors
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [i % 10 for i in range(50)]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.all(x[0] == 1.0)
    raw = np.load(path)["x_train"]
    assert torch.allclose(x[1, 0], torch.from_numpy(raw[1]).float() / 255)
    assert MNISTDataModule.dims == (1, 28, 28) and MNISTDataModule.num_classes == 10

    # Validation and test both serve the 20 test-split images, in order.
    assert len(dm.val_set) == 20 and len(dm.test_set) == 20
    val_loader = dm.val_dataloader()
    assert val_loader.batch_size == 1000
    assert torch.equal(next(iter(val_loader))[1], torch.arange(20) % 10)
    assert next(iter(dm.test_dataloader()))[0].shape == (20, 1, 28, 28)
    xb, _ = next(iter(dm.train_dataloader()))
    assert xb.shape == (8, 1, 28, 28)


def test_mnist_subsets_keep_first_samples(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "mnist.npz")
    full = MNISTDataModule(path=str(path))
    full.setup()
    dm = MNISTDataModule(path=str(path), train_subset=12, val_subset=5)
    dm.setup()
    assert len(dm.train_set) == 12 and len(dm.val_set) == 5
    assert torch.equal(dm.train_set.tensors[0], full.train_set.tensors[0][:12])
    assert torch.equal(dm.val_set.tensors[1], full.val_set.tensors[1][:5])


def test_mnist_reads_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_npz(tmp_path / "mnist.npz")
    calls: list[object] = []
    real_load = np.load

    def counting_load(*args: object, **kwargs: object) -> object:
        calls.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", counting_load)
    dm = MNISTDataModule(path=str(path))
    dm.setup("fit")
    dm.setup("validate")
    dm.setup("test")
    assert len(calls) == 1


def test_mnist_missing_file_message(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError) as info:  # checked when the module is built, before any launch
        MNISTDataModule(path=str(missing))
    msg = _one_line(info.value)
    assert msg == (
        f"data.path: no MNIST file at '{missing}' (expected an npz with x_train, y_train, x_test, y_test); "
        "pass the path to mnist.npz or set data.download=true"
    )


def test_mnist_missing_key_message(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "partial.npz", drop="y_test")
    with pytest.raises(ValueError) as info:
        MNISTDataModule(path=str(path)).setup()
    msg = _one_line(info.value)
    assert "data.path" in msg and "'y_test'" in msg


def test_mnist_shape_mismatch_message(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "bad.npz", y_train=np.zeros(49, dtype=np.uint8))
    with pytest.raises(ValueError) as info:
        MNISTDataModule(path=str(path)).setup()
    msg = _one_line(info.value)
    assert "data.path" in msg and "'y_train'" in msg

    path = _write_npz(tmp_path / "bad_images.npz", x_test=np.zeros((20, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError) as info:
        MNISTDataModule(path=str(path)).setup()
    assert "'x_test'" in _one_line(info.value)


def test_mnist_unreadable_file_message(tmp_path: Path) -> None:
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError) as info:
        MNISTDataModule(path=str(path)).setup()
    assert "data.path" in _one_line(info.value)


def test_mnist_needs_path_or_download() -> None:
    with pytest.raises(ValueError) as info:
        MNISTDataModule(path=None, download=False)
    msg = _one_line(info.value)
    assert "data.path" in msg and "data.download=true" in msg


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"batch_size": 0}, "data.batch_size"),
        ({"train_subset": 0}, "data.train_subset"),
        ({"val_subset": 0}, "data.val_subset"),
    ],
)
def test_mnist_rejects_bad_settings(tmp_path: Path, kwargs: dict, setting: str) -> None:
    with pytest.raises(ValueError) as info:
        MNISTDataModule(path=str(tmp_path / "mnist.npz"), **kwargs)
    assert setting in _one_line(info.value)


def test_mnist_download_without_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail, whether or not torchvision is installed.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    dm = MNISTDataModule(download=True, root=str(tmp_path))
    with pytest.raises(ImportError) as info:
        dm.setup()
    msg = _one_line(info.value)
    assert "pip install torchvision" in msg and "data.path" in msg


@pytest.mark.mnist
def test_real_mnist_class_counts() -> None:
    if not SHARED_MNIST.is_file():
        pytest.skip(f"{SHARED_MNIST} not present")
    dm = MNISTDataModule(path=str(SHARED_MNIST))
    dm.setup("fit")
    x, y = dm.train_set.tensors
    assert x.shape == (60000, 1, 28, 28)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    counts = torch.bincount(y, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert len(dm.val_set) == 10000
