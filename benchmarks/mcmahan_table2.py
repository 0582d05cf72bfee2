"""McMahan et al. (2017), Table 2, MNIST CNN: communication rounds to reach a target test accuracy (99%).

Setting of the paper: McMahanCNN (1,663,370 parameters), 100 clients, C = 0.1 (10 clients per round),
plain SGD on the clients (no momentum, no weight decay), constant learning rate tuned over a grid per row.
A row is ``{iid|shards}-e{E}-b{B|inf}``: ``shards`` is the pathological non-IID split (sort by label,
200 shards of 300, 2 per client); ``b-inf`` is full-batch (one step per local epoch; e1-binf is FedSGD).

Each (row, lr) is one ``Trainer(strategy=FedAvgStrategy(...))`` run; one Lightning epoch is one round and
validation (on the MNIST test set) runs on the global model after every ``--eval-every`` rounds. Training
stops at the first evaluation that reaches ``--target``.

    python benchmarks/mcmahan_table2.py --rows iid-e5-b10 --lrs 0.1,0.05 --until-reached --json /tmp/t2.json
    python benchmarks/mcmahan_table2.py --quick --synthetic --json /tmp/mcmahan_quick.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` when run as a script from anywhere

import lightning as L  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    add_common_args,
    apply_threads,
    bench_trainer,
    check_data,
    format_table,
    no_worker_warning,
    save_figure,
    write_json,
)
from lightning.pytorch.callbacks import Callback  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_fl import FedAvgStrategy  # noqa: E402
from lightning_fl.data.mnist import MNISTDataModule  # noqa: E402
from lightning_fl.models import ImageClassifier  # noqa: E402

NUM_CLIENTS = 100
CLIENTS_PER_ROUND = 10
DEFAULT_ROWS = ("iid-e5-b10", "iid-e1-b10", "shards-e5-b10", "shards-e1-b10")
DEFAULT_LRS = (0.05, 0.1, 0.2)

# Table 2 (CNN, 99% target): rounds for FedSGD and FedAvg, keyed by (partition, E, B); B=None is B=inf.
PAPER_ROUNDS: dict[tuple[str, int, Optional[int]], int] = {
    ("iid", 1, None): 626,
    ("shards", 1, None): 483,
    ("iid", 5, None): 179,
    ("shards", 5, None): 1000,
    ("iid", 1, 50): 65,
    ("shards", 1, 50): 600,
    ("iid", 20, None): 234,
    ("shards", 20, None): 672,
    ("iid", 1, 10): 34,
    ("shards", 1, 10): 350,
    ("iid", 5, 50): 29,
    ("shards", 5, 50): 334,
    ("iid", 20, 50): 32,
    ("shards", 20, 50): 426,
    ("iid", 5, 10): 20,
    ("shards", 5, 10): 229,
    ("iid", 20, 10): 18,
    ("shards", 20, 10): 173,
}

_ROW = re.compile(r"^(iid|shards)-e(\d+)-b(\d+|inf)$")


def parse_row(name: str) -> tuple[str, int, Optional[int]]:
    """``"shards-e5-b10"`` -> ``("shards", 5, 10)``; ``b-inf`` gives ``None`` (full client batch)."""
    m = _ROW.match(name)
    if m is None:
        raise ValueError(f"bad row '{name}': expected {{iid|shards}}-e<E>-b<B|inf>, e.g. iid-e5-b10")
    partition, e, b = m.groups()
    if int(e) < 1 or (b != "inf" and int(b) < 1):
        raise ValueError(f"bad row '{name}': E and B must be >= 1")
    return partition, int(e), None if b == "inf" else int(b)


class AccuracyRecorder(Callback):
    """Records global-model test accuracy per evaluated round and stops at the first one >= target."""

    def __init__(self, target: float, verbose: bool = True) -> None:
        self.target = target
        self.verbose = verbose
        self.rounds: list[int] = []  # 1-based round after which accuracy was measured
        self.accs: list[float] = []
        self.round_s: list[float] = []  # wall time per round, training + aggregation + any evaluation
        self.eval_s: list[float] = []
        self.reached_at: Optional[int] = None
        self._round_start = 0.0
        self._eval_start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._round_start = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_validation_end runs after the logger connector has reduced the epoch's metrics.
        if trainer.sanity_checking:
            return
        self.eval_s.append(time.perf_counter() - self._eval_start)
        acc = float(trainer.callback_metrics["val_acc"])
        r = trainer.current_epoch + 1
        self.rounds.append(r)
        self.accs.append(acc)
        if self.reached_at is None and acc >= self.target:
            self.reached_at = r
            trainer.should_stop = True  # the paper's metric is the first round at the target

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # In Lightning 2.x the per-epoch validation has already run when this hook fires.
        self.round_s.append(time.perf_counter() - self._round_start)
        if self.verbose:
            r = trainer.current_epoch + 1
            acc = f"{self.accs[-1]:.4f}" if self.rounds and self.rounds[-1] == r else "-"
            print(f"  round {r}: test acc {acc}, {self.round_s[-1]:.1f} s", flush=True)


def load_data(args: argparse.Namespace) -> tuple[TensorDataset, TensorDataset]:
    """Train (first ``--train-subset`` images) and test sets, as float32 [0, 1] images and int64 labels."""
    if args.synthetic:
        # Random images with random labels: exercises the whole pipeline, accuracy stays near 10%.
        g = torch.Generator().manual_seed(args.seed)
        n_train = args.train_subset or 60_000
        n_val = args.val_subset or 10_000
        make = lambda n: TensorDataset(  # noqa: E731
            torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
        )
        return make(n_train), make(n_val)
    dm = MNISTDataModule(path=str(args.data), train_subset=args.train_subset, val_subset=args.val_subset)
    dm.setup("fit")
    assert dm.train_set is not None and dm.val_set is not None
    return dm.train_set, dm.val_set


def run_one(row: str, lr: float, train: TensorDataset, val: TensorDataset, args: argparse.Namespace) -> dict[str, Any]:
    partition, local_epochs, batch = parse_row(row)
    # B = inf: one batch holds a client's whole partition (every client has the same size here).
    batch_size = batch if batch is not None else -(-len(train) // NUM_CLIENTS)
    L.seed_everything(args.seed, verbose=False)  # same initial global model for every lr of a row
    model = ImageClassifier(arch="mcmahan_cnn", in_shape=(1, 28, 28), lr=lr, momentum=0.0)
    recorder = AccuracyRecorder(args.target)
    strategy = FedAvgStrategy(
        num_clients=NUM_CLIENTS,
        clients_per_round=CLIENTS_PER_ROUND,
        local_epochs=local_epochs,
        partition=partition,
        seed=args.seed,
    )
    trainer = bench_trainer(
        strategy=strategy,
        max_epochs=args.max_rounds,
        devices=1,
        check_val_every_n_epoch=args.eval_every,
        callbacks=[recorder],
    )
    # The strategy replaces the sampler with per-client batches; shuffle=True is what a user writes.
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(val, batch_size=1000, shuffle=False)
    print(f"{row} lr={lr:g}: E={local_epochs} B={batch_size} partition={partition}", flush=True)
    t0 = time.perf_counter()
    with no_worker_warning():
        trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)
    wall = time.perf_counter() - t0
    rounds_run = len(recorder.round_s)
    return {
        "row": row,
        "partition": partition,
        "local_epochs": local_epochs,
        "batch_size": batch if batch is not None else "inf",
        "batch_size_used": batch_size,
        "lr": lr,
        "target": args.target,
        "rounds_to_target": recorder.reached_at,
        "paper_rounds": PAPER_ROUNDS.get((partition, local_epochs, batch)),
        "rounds_run": rounds_run,
        "best_acc": max(recorder.accs) if recorder.accs else None,
        "eval_rounds": recorder.rounds,
        "acc_curve": recorder.accs,
        "round_s": recorder.round_s,
        "eval_s": recorder.eval_s,
        "mean_round_s": sum(recorder.round_s) / rounds_run if rounds_run else None,
        "wall_s": wall,
    }


def draw(axes: list[Any], rows: list[str], results: list[dict[str, Any]], target: float) -> None:
    """Test accuracy against rounds, one panel per Table 2 row, one curve per learning rate."""
    for ax, row in zip(axes, rows):
        runs = [r for r in results if r["row"] == row]
        for r in runs:
            reached = f", {target:.0%} at {r['rounds_to_target']}" if r["rounds_to_target"] is not None else ""
            ax.plot(r["eval_rounds"], r["acc_curve"], marker="." if len(r["eval_rounds"]) < 60 else None,
                    label=f"lr {r['lr']:g}{reached}")  # fmt: skip
        ax.axhline(target, color="gray", linestyle="--", linewidth=0.8)
        ax.xaxis.get_major_locator().set_params(integer=True)  # rounds
        paper = runs[0]["paper_rounds"]
        # Where the paper reached the target, if this run got that far (else it would squash the curves).
        if paper is not None and paper <= max(r["rounds_run"] for r in runs):
            ax.axvline(paper, color="C3", linestyle=":", label=f"paper: {target:.0%} at {paper}")
        ax.set(xlabel="round", ylabel="test accuracy", title=f"{row}: E={runs[0]['local_epochs']}, "
               f"B={runs[0]['batch_size']}, {runs[0]['partition']}; paper {paper or '-'} rounds")  # fmt: skip


def print_table(results: list[dict[str, Any]], target: float) -> None:
    pct = f"{target * 100:g}%"
    print()
    print(
        format_table(
            ["row", "E", "B", "partition", "lr", f"rounds to {pct}", "paper", "best acc", "rounds run", "s/round"],
            [
                [
                    r["row"],
                    r["local_epochs"],
                    r["batch_size"],
                    r["partition"],
                    r["lr"],
                    r["rounds_to_target"] if r["rounds_to_target"] is not None else f"not in {r['rounds_run']}",
                    r["paper_rounds"] if r["paper_rounds"] is not None else "-",
                    r["best_acc"] if r["best_acc"] is not None else "-",
                    r["rounds_run"],
                    r["mean_round_s"] if r["mean_round_s"] is not None else "-",
                ]
                for r in results
            ],
        )
    )


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS), help="comma-separated {iid|shards}-e<E>-b<B|inf>")
    p.add_argument("--lrs", default=None, help=f"client lr grid (default {','.join(map(str, DEFAULT_LRS))})")
    p.add_argument(
        "--until-reached",
        action="store_true",
        help="per row, try the lrs in order and stop at the first that reaches the target (saves compute)",
    )
    p.add_argument("--max-rounds", type=int, default=50)
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--eval-every", type=int, default=1, help="evaluate the global model every N rounds")
    p.add_argument("--train-subset", type=int, default=None, help="first N training images (default all 60,000)")
    p.add_argument("--val-subset", type=int, default=None, help="first N test images (default all 10,000)")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 2 rounds, 2,000 train / 500 test images, first lr only"
    )
    p.add_argument(
        "--replot", type=Path, nargs="+", default=None, metavar="JSON",
        help="train nothing: merge the results of earlier --json files into one table and --png figure",
    )  # fmt: skip
    add_common_args(p)
    args = p.parse_args(argv)
    try:
        args.row_list = [r.strip() for r in args.rows.split(",") if r.strip()]
        for r in args.row_list:
            parse_row(r)
        lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else list(DEFAULT_LRS)
    except ValueError as err:
        p.error(str(err))
    if args.quick:
        args.max_rounds = 2
        args.train_subset = args.train_subset or 2_000
        args.val_subset = args.val_subset or 500
        lrs = lrs if args.lrs else lrs[:1]
    args.lr_list = lrs
    if not args.row_list or not lrs or any(lr <= 0 for lr in lrs):
        p.error("need at least one row and lrs > 0")
    if args.max_rounds < 1 or args.eval_every < 1 or not 0 < args.target <= 1:
        p.error("need --max-rounds >= 1, --eval-every >= 1 and 0 < --target <= 1")
    if args.train_subset is not None and args.train_subset < 2 * NUM_CLIENTS:
        p.error(f"--train-subset must be >= {2 * NUM_CLIENTS} (two shards per client)")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.replot:
        # Runs of different rows and lrs, made separately (a long row may take hours), in one figure.
        results = [r for path in args.replot for r in json.loads(Path(path).read_text())["results"]]
        target = results[0]["target"] if results else args.target
        rows = list(dict.fromkeys(r["row"] for r in results))
        save_figure(args.png, lambda axes: draw(axes, rows, results, target), panels=len(rows), size=(5, 3.6),
                    ncols=2)  # fmt: skip
        print_table(results, target)
        return 0
    check_data(args.data, args.synthetic)
    apply_threads(args.threads)
    train, val = load_data(args)
    results: list[dict[str, Any]] = []
    config = {
        "num_clients": NUM_CLIENTS,
        "clients_per_round": CLIENTS_PER_ROUND,
        "rows": args.row_list,
        "lrs": args.lr_list,
        "max_rounds": args.max_rounds,
        "target": args.target,
        "eval_every": args.eval_every,
        "train_size": len(train),
        "val_size": len(val),
        "seed": args.seed,
        "synthetic": bool(args.synthetic),
        "quick": bool(args.quick),
        "until_reached": bool(args.until_reached),
        "torch_threads": torch.get_num_threads(),
        "client_optimizer": "SGD, momentum 0, weight decay 0, constant lr",
    }
    for row in args.row_list:
        for lr in args.lr_list:
            results.append(run_one(row, lr, train, val, args))
            curve = ", ".join(f"{a:.4f}" for a in results[-1]["acc_curve"])
            print(f"  accuracy curve: [{curve}]", flush=True)
            # Rewritten after every run, so a long sweep that is stopped early keeps what it finished.
            write_json(args.json, {"benchmark": "mcmahan_table2", "config": config, "results": results})
            if args.until_reached and results[-1]["rounds_to_target"] is not None:
                break
    rows = list(dict.fromkeys(r["row"] for r in results))
    save_figure(args.png, lambda axes: draw(axes, rows, results, args.target), panels=len(rows), size=(5, 3.6),
                ncols=2)  # fmt: skip
    print_table(results, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
