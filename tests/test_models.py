"""Networks and the Lightning classifier."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_fl.models import MLP, ImageClassifier, McMahanCNN, SeedCNN, SmallCNN, build_net


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mcmahan_cnn_parameter_count() -> None:
    assert _num_params(McMahanCNN()) == 1_663_370
    assert _num_params(build_net("mcmahan_cnn", (1, 28, 28), 10)) == 1_663_370


def test_mlp_is_mcmahan_2nn() -> None:
    # 784*200+200 + 200*200+200 + 200*10+10
    assert _num_params(MLP((1, 28, 28))) == 199_210


@pytest.mark.parametrize("arch", ["mlp", "cnn", "mcmahan_cnn", "seed_cnn"])
@pytest.mark.parametrize("size", [28, 8])
def test_output_shapes(arch: str, size: int) -> None:
    net = build_net(arch, (1, size, size), 10)
    out = net(torch.rand(3, 1, size, size))
    assert out.shape == (3, 10)


def test_class_defaults_and_channels() -> None:
    assert SmallCNN()(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert SeedCNN()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert SeedCNN(in_channels=3, num_classes=7, image_size=6)(torch.rand(2, 3, 6, 6)).shape == (2, 7)
    assert build_net("mcmahan_cnn", (3, 32, 32), 100)(torch.rand(2, 3, 32, 32)).shape == (2, 100)


def test_seed_cnn_flatten_size() -> None:
    assert SeedCNN(image_size=28).classifier[1].in_features == 12 * 12 * 64
    assert SeedCNN(image_size=8).classifier[1].in_features == 2 * 2 * 64


def test_seed_cnn_rejects_tiny_images() -> None:
    with pytest.raises(ValueError) as info:
        SeedCNN(image_size=5)
    assert "\n" not in str(info.value) and "5" in str(info.value)


def test_build_net_unknown_arch() -> None:
    with pytest.raises(ValueError) as info:
        build_net("resnet", (1, 8, 8), 10)
    assert str(info.value) == "model.arch: unknown architecture 'resnet'; choose one of mlp, cnn, mcmahan_cnn, seed_cnn"


# ------------------------------------------------------------------------------------- classifier


def _separable_loaders(n: int = 256, seed: int = 0) -> tuple[DataLoader, DataLoader, TensorDataset]:
    """Four classes, each a fixed random 8x8 prototype plus small noise."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(4, 1, 8, 8, generator=gen)
    y = torch.arange(n) % 4
    x = prototypes[y] + 0.05 * torch.randn(n, 1, 8, 8, generator=gen)
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=16, shuffle=True), DataLoader(data, batch_size=64), data


def _trainer(max_epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _dataset_loss(model: ImageClassifier, data: TensorDataset) -> float:
    x, y = data.tensors
    model.eval()
    with torch.no_grad():
        loss = float(F.cross_entropy(model(x), y))
    model.train()
    return loss


def test_classifier_learns_separable_problem() -> None:
    L.seed_everything(0, verbose=False)
    train, val, data = _separable_loaders()
    model = ImageClassifier(arch="cnn", in_shape=(1, 8, 8), num_classes=4, lr=0.1, momentum=0.9)
    before = _dataset_loss(model, data)
    trainer = _trainer(max_epochs=3)
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    after = _dataset_loss(model, data)
    assert after < 0.5 * before
    metrics = trainer.callback_metrics
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(metrics)
    assert float(metrics["val_acc"]) > 0.9

    results = trainer.test(model, dataloaders=val, verbose=False)
    assert results[0]["test_acc"] > 0.9 and "test_loss" in results[0]


def test_classifier_lr_decay_per_epoch() -> None:
    train, _, _ = _separable_loaders(n=32)
    model = ImageClassifier(arch="mlp", num_classes=4, lr=0.2, lr_decay=0.5)
    trainer = _trainer(max_epochs=2)
    trainer.fit(model, train_dataloaders=train)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.2 * 0.25)


def test_classifier_optimizers() -> None:
    sgd = ImageClassifier(lr=0.3, momentum=0.5, weight_decay=1e-4).configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["lr"] == 0.3 and sgd.defaults["momentum"] == 0.5 and sgd.defaults["weight_decay"] == 1e-4
    adam = ImageClassifier(optimizer="adam", lr=1e-3).configure_optimizers()
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 1e-3
    decayed = ImageClassifier(lr_decay=0.9).configure_optimizers()
    assert isinstance(decayed, dict) and decayed["lr_scheduler"]["interval"] == "epoch"
    assert decayed["lr_scheduler"]["scheduler"].gamma == 0.9


def test_classifier_saves_hparams_as_plain_values() -> None:
    model = ImageClassifier(arch="seed_cnn", in_shape=[1, 28, 28], lr=0.01)  # type: ignore[arg-type]
    assert model.hparams.in_shape == (1, 28, 28)
    assert model.hparams.arch == "seed_cnn" and model.hparams.lr == 0.01
    assert isinstance(model.net, SeedCNN)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"lr": 0.0}, "model.lr"),
        ({"lr_decay": 0.0}, "model.lr_decay"),
        ({"lr_decay": 1.5}, "model.lr_decay"),
        ({"optimizer": "rmsprop"}, "model.optimizer"),
        ({"arch": "vgg"}, "model.arch"),
    ],
)
def test_classifier_rejects_bad_settings(kwargs: dict, setting: str) -> None:
    with pytest.raises(ValueError) as info:
        ImageClassifier(**kwargs).configure_optimizers()
    assert setting in str(info.value) and "\n" not in str(info.value)


def test_classifier_on_digits_datamodule() -> None:
    from lightning_fl.data import DigitsDataModule

    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=32, seed=0)
    model = ImageClassifier(
        arch="cnn", in_shape=DigitsDataModule.dims, num_classes=DigitsDataModule.num_classes, lr=0.1, momentum=0.9
    )
    trainer = _trainer(max_epochs=2)
    trainer.fit(model, datamodule=dm)
    assert float(trainer.callback_metrics["val_acc"]) > 0.8
