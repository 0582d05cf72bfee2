"""Seconds per round with federated evaluation against central evaluation only (issue 12, acceptance 5).

MNIST, 100 IID clients, 10 per round, E = 1, B = 10, the McMahan CNN (``ImageClassifier``, whose
``validation_step`` logs a loss and a torchmetrics accuracy). Both variants hold out 10 % of every client's
data (so both train exactly the same steps) and run central validation on the 10,000 test images every
round; the federated variant also evaluates all 100 clients on their held-out share every round
(``eval_every=1``), the central variant never does (its ``eval_every`` is past the end; the fit's last
round, which always evaluates, is not measured). The two fits take turns one round at a time in one
process (``algorithm_cost.py``'s harness), so machine noise hits both alike.

    python benchmarks/evaluation_cost.py --data ../shared/data/mnist.npz --threads 1
    python benchmarks/evaluation_cost.py --quick --synthetic
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    add_common_args,
    apply_threads,
    bench_trainer,
    check_data,
    format_table,
    median,
    save_figure,
    write_json,
)
from algorithm_cost import TurnTimer, paired_ratios, take_turns  # noqa: E402
from mcmahan_table2 import load_data  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_fl import FedAvgStrategy  # noqa: E402
from lightning_fl.models import ImageClassifier  # noqa: E402

TARGET_RATIO = 1.2
VARIANTS = ("central", "federated")


def run(args: argparse.Namespace) -> dict[str, Any]:
    train, val = load_data(args)
    rounds = args.rounds + 2  # round 0 warms up; the last one always evaluates federatedly: neither measured
    torch.manual_seed(args.seed)
    first = ImageClassifier(arch="mcmahan_cnn", in_shape=(1, 28, 28), lr=args.lr, momentum=0.0)
    modules = [first, ImageClassifier(arch="mcmahan_cnn", in_shape=(1, 28, 28), lr=args.lr, momentum=0.0)]
    modules[1].load_state_dict(first.state_dict())

    def fit_one(i: int, timer: TurnTimer, files_dir: str) -> L.Trainer:
        strategy = FedAvgStrategy(
            num_clients=args.clients, clients_per_round=args.per_round, partition="iid", seed=args.seed,
            eval_fraction=args.eval_fraction, eval_every=1 if i == 1 else rounds + 1,
        )  # fmt: skip
        trainer = bench_trainer(strategy=strategy, devices=1, max_epochs=rounds, callbacks=[timer],
                                default_root_dir=files_dir)  # client_metrics.csv: not in the checkout
        trainer.fit(
            modules[i],
            train_dataloaders=DataLoader(train, batch_size=args.batch_size, shuffle=True),
            val_dataloaders=DataLoader(val, batch_size=1000),
        )
        return trainer

    timers, trainers = take_turns(VARIANTS, fit_one, rounds, verbose=not args.quiet)
    for timer in timers:  # drop the last round (the central variant evaluates federatedly there too)
        timer.seconds, timer.cpu_seconds = timer.seconds[:-1], timer.cpu_seconds[:-1]
    paired = paired_ratios(timers)
    federated = trainers[1].callback_metrics  # type: ignore[union-attr]
    weights_equal = all(torch.equal(a, b) for a, b in zip(modules[0].state_dict().values(), modules[1].state_dict().values()))
    return {
        "benchmark": "evaluation_cost",
        "config": {
            "clients": args.clients, "per_round": args.per_round, "batch_size": args.batch_size, "lr": args.lr,
            "eval_fraction": args.eval_fraction, "train_size": len(train), "val_size": len(val),
            "seed": args.seed, "synthetic": bool(args.synthetic), "torch_threads": torch.get_num_threads(),
        },  # fmt: skip
        "rounds": args.rounds,
        "variants": {
            name: {
                "s_per_round": p["s_per_round"],
                "median_s": median(p["s_per_round"]),
                "ratio_per_round": p["ratio_per_round"],
                "median_ratio": median(p["ratio_per_round"]),
                "cpu_s_per_round": p["cpu_s_per_round"],
                "median_cpu_ratio": median(p["cpu_ratio_per_round"]),
            }
            for name, p in zip(VARIANTS, paired)
        },
        "federated_metrics": {k: float(v) for k, v in federated.items() if k.startswith("fl/eval")},
        "same_final_weights": weights_equal,  # evaluation must not change training
        "target_ratio": TARGET_RATIO,
        "passed": median(paired[1]["ratio_per_round"]) <= TARGET_RATIO,
    }


def draw(axes: list[Any], result: dict[str, Any]) -> None:
    seconds, ratio = axes
    rounds = list(range(1, result["rounds"] + 1))
    for i, (name, v) in enumerate(result["variants"].items()):
        seconds.plot(rounds, v["s_per_round"], marker="o", color=f"C{i}", label=name)
    fed = result["variants"]["federated"]
    ratio.plot(rounds, fed["ratio_per_round"], marker="o", color="C1", label=f"median {fed['median_ratio']:.3f}")
    ratio.axhline(result["target_ratio"], color="C3", linestyle="--", label=f"target <= {result['target_ratio']:.1f}")
    seconds.set(xlabel="round", ylabel="seconds", title="seconds per round (interleaved)")
    ratio.set(xlabel="round", ylabel="federated / central", title="cost of federated evaluation")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=6, help="measured rounds per variant")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--train-subset", type=int, default=None, help="first N training images (default all 60,000)")
    p.add_argument("--val-subset", type=int, default=None, help="first N test images (default all 10,000)")
    p.add_argument("--quick", action="store_true", help="2,000 / 500 images, 20 clients, 4 per round, 2 rounds")
    p.add_argument("--quiet", action="store_true")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.train_subset, args.val_subset, args.clients, args.per_round, args.rounds = 2000, 500, 20, 4, 2
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    check_data(args.data, args.synthetic)
    apply_threads(args.threads)
    result = run(args)
    write_json(args.json, result)
    save_figure(args.png, lambda axes: draw(axes, result), panels=2)
    rows = [[name, v["median_s"], v["median_ratio"], v["median_cpu_ratio"]] for name, v in result["variants"].items()]
    print()
    print(format_table(["variant", "median s/round", "ratio", "cpu ratio"], rows))
    print(f"same final weights: {result['same_final_weights']}; target <= {TARGET_RATIO}: "
          f"{'met' if result['passed'] else 'MISSED'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
