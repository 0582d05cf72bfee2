"""The project's original seed model, with its shapes corrected, trained with FedAvg.

The seed design: two 3x3 convolutions (32 and 64 channels), average pooling, a 100-unit dense layer and
10 outputs. Its dense layer must be sized from the input: with unpadded 3x3 convolutions an HxH image
becomes (H-4)x(H-4) after both convolutions and ((H-4)//2)^2 after 2x2 pooling, so 28x28 MNIST gives
64 * 12 * 12 = 9,216 features and 8x8 digits give 64 * 2 * 2 = 256. `lightning_fl.models.SeedCNN`
computes this from `image_size` instead of hard-coding it.

    python examples/seed_model.py                       # digits (8x8), offline
    python examples/seed_model.py --mnist mnist.npz     # MNIST (28x28)
"""

from __future__ import annotations

import argparse

import lightning as L

from lightning_fl import FedAvgStrategy
from lightning_fl.callbacks import RoundSummary
from lightning_fl.data import DigitsDataModule, MNISTDataModule
from lightning_fl.models import ImageClassifier, SeedCNN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default=None, help="path to mnist.npz (default: scikit-learn digits)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--train-subset", type=int, default=None)
    args = parser.parse_args()

    L.seed_everything(0)
    if args.mnist:
        data: L.LightningDataModule = MNISTDataModule(path=args.mnist, batch_size=20, train_subset=args.train_subset)
    else:
        data = DigitsDataModule(batch_size=10)
    shape = data.dims
    net = SeedCNN(in_channels=shape[0], num_classes=10, image_size=shape[-1])
    print(f"SeedCNN on {shape}: dense layer takes {net.flat_features} features")
    model = ImageClassifier(arch="seed_cnn", in_shape=shape, num_classes=10, lr=0.05, momentum=0.9)
    strategy = FedAvgStrategy(num_clients=20, clients_per_round=10, local_epochs=2, partition="dirichlet", alpha=1.0)
    L.Trainer(
        strategy=strategy, accelerator="cpu", devices=1, max_epochs=args.rounds,
        callbacks=[RoundSummary(metrics=("train_loss", "val_acc"))], logger=False,
        enable_checkpointing=False, enable_progress_bar=False,
    ).fit(model, data)


if __name__ == "__main__":
    main()
