"""FedAvg on MNIST with the CNN of McMahan et al. (2017), from Python.

    python examples/mnist_fedavg.py --data ../shared/data/mnist.npz                  # IID, E=5, B=10
    python examples/mnist_fedavg.py --data mnist.npz --partition shards --rounds 50  # pathological non-IID

100 clients, 10 sampled per round (C = 0.1), plain SGD clients, as in the paper. The same run from the
command line: `lightning-fl data=mnist data.path=mnist.npz model=mcmahan_cnn strategy.num_clients=100
strategy.clients_per_round=10 strategy.partition=iid strategy.local_epochs=5 model.momentum=0`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L

from lightning_fl import FedAvgStrategy
from lightning_fl.callbacks import RoundSummary
from lightning_fl.data import MNISTDataModule
from lightning_fl.models import ImageClassifier

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="path to mnist.npz")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--partition", default="iid", choices=["iid", "shards", "dirichlet"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=None, help="use the first N training images")
    args = parser.parse_args()

    L.seed_everything(0)
    data = MNISTDataModule(path=args.data, batch_size=args.batch_size, train_subset=args.train_subset)
    model = ImageClassifier(arch="mcmahan_cnn", in_shape=(1, 28, 28), num_classes=10, lr=args.lr)
    strategy = FedAvgStrategy(
        num_clients=args.clients, clients_per_round=args.per_round, local_epochs=args.local_epochs,
        partition=args.partition, seed=0,
    )
    trainer = L.Trainer(
        strategy=strategy, accelerator="cpu", devices=args.devices, max_epochs=args.rounds,
        callbacks=[RoundSummary(metrics=("train_loss", "val_acc"))], logger=False,
        enable_checkpointing=False, enable_progress_bar=False,
    )
    trainer.fit(model, data)


if __name__ == "__main__":
    main()
