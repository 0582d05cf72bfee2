"""Final test accuracy under attack: each attack x each aggregator, IID and non-IID, over several seeds
(issue 10, acceptance 1).

Federation (sized for about 25 minutes on 2 shared cores with ``--threads 1``): scikit-learn's 8x8 digits
(the 1,079-image train split of ``DigitsDataModule``, test accuracy on its 359-image test split), 20 clients,
10 sampled per round, 10 local SGD steps (B = 10, lr 0.1, no momentum), 20 rounds, MLP 64-200-200-10.
Partitions: ``iid`` and ``dirichlet`` (label skew, alpha = 0.5). ``--dataset mnist`` uses the first 6,000
MNIST training images instead (same federation, test on 2,000 test images; slower).

20 % of each round's sampled clients (2 of 10) are malicious, drawn afresh every round by the strategy:

- ``sign_flip``: sends -4 u (scale 4: with 2 of 10 attackers it cancels the 8 benign updates on average; the
  library's default scale 1 only slows FedAvg down);
- ``scale``: sends 10 u (boosting, the library's default);
- ``gaussian``: sends N(0, I) noise (std 1, the library's default);
- ``label_flip``: trains on y -> 9 - y (data poisoning; its update is honest training on wrong labels).

"A little is enough" (``ModelPoisoning("little_is_enough")``) is left out: the strategy refuses it today
(it needs the benign updates' statistics before the malicious updates are formed).

Aggregators: FedAvg's weighted mean, ``Median()``, ``TrimmedMean(0.2)`` (trims 2 per side of 10),
``Krum(2, multi=8)`` (f = the expected malicious count; Multi-Krum averages the K - f best) and
``NormBound(1.0)`` (just above the longest benign update seen in a clean probe, seed 0, rounds 0-9: median
norms 0.3-0.6 IID, 0.7-0.8 Dirichlet, longest 1.03; so it hardly clips honest clients). ``none`` is the clean run of each aggregator (its own reference:
the coordinate-wise rules lose some accuracy without any attack on skewed data).

Acceptance (printed and stored in the JSON): per partition, the clean accuracy is clean FedAvg's; FedAvg
"degrades" when its mean accuracy under an attack is more than 3 points below; a model-poisoning attack is
"held" when some robust aggregator's mean accuracy is within 3 points of the clean accuracy.

Each (seed, partition, attack, aggregator) is one ``Trainer.fit`` in this process, one after another. A seed
fixes the partition, the client sample, the malicious clients and the initial model.

    python benchmarks/robustness.py --threads 1 --json /tmp/robustness.json --png docs/figures/robustness.png
    python benchmarks/robustness.py --quick --synthetic --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` when run as a script from anywhere

import lightning as L  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    add_common_args,
    apply_threads,
    bench_trainer,
    check_data,
    format_table,
    load_mnist_train,
    no_worker_warning,
    save_figure,
    write_json,
)
from algorithms import Classifier, Curve  # noqa: E402  (same module and per-round test accuracy)
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_fl import FedAvgStrategy, Krum, LabelFlip, Median, ModelPoisoning, NormBound, TrimmedMean  # noqa: E402
from lightning_fl.data.digits import DigitsDataModule  # noqa: E402

FRACTION = 0.2
MODEL_POISONING = ("sign_flip", "scale", "gaussian")
ATTACKS: dict[str, Callable[[], Any]] = {
    "none": lambda: None,
    "sign_flip": lambda: ModelPoisoning("sign_flip", fraction=FRACTION, scale=4.0),
    "scale": lambda: ModelPoisoning("scale", fraction=FRACTION, scale=10.0),
    "gaussian": lambda: ModelPoisoning("gaussian", fraction=FRACTION, std=1.0),
    "label_flip": lambda: LabelFlip(fraction=FRACTION, num_classes=10),
}
# Built per run from the round's cohort K: Krum's f is the expected malicious count round(0.2 K).
AGGREGATORS: dict[str, Callable[[int], Any]] = {
    "FedAvg": lambda k: None,
    "Median": lambda k: Median(),
    "TrimmedMean(0.2)": lambda k: TrimmedMean(beta=0.2),
    "Krum": lambda k: Krum(num_malicious=round(FRACTION * k), multi=k - round(FRACTION * k)),
    "NormBound(1)": lambda k: NormBound(max_norm=1.0),
}
TOLERANCE = 0.03  # "within 3 points"


@dataclass(frozen=True)
class Setup:
    dataset: str
    num_clients: int = 20
    clients_per_round: int = 10
    local_steps: int = 10
    batch_size: int = 10
    rounds: int = 20
    client_lr: float = 0.1
    alpha: float = 0.5
    arch: str = "mlp"
    train_size: Optional[int] = None  # MNIST only
    test_size: Optional[int] = None


QUICK = dict(local_steps=2, rounds=2, num_clients=10)
MNIST_SIZES = dict(train_size=6000, test_size=2000)
QUICK_MNIST = dict(train_size=200, test_size=200)


def load_data(setup: Setup, args: argparse.Namespace) -> tuple[TensorDataset, TensorDataset]:
    if setup.dataset == "digits":  # bundled with scikit-learn: real data even with --synthetic
        dm = DigitsDataModule(seed=0)
        dm.setup("fit")
        assert dm.train_set is not None and dm.test_set is not None
        return dm.train_set, dm.test_set
    x, y = load_mnist_train(args.data, args.synthetic, subset=setup.train_size, seed=0)
    if args.synthetic:
        g = torch.Generator().manual_seed(1)
        n = setup.test_size or 10_000
        return TensorDataset(x, y), TensorDataset(
            torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
        )
    from lightning_fl.data.mnist import MNISTDataModule

    dm = MNISTDataModule(path=str(args.data), val_subset=setup.test_size)
    dm.setup("fit")
    assert dm.val_set is not None
    return TensorDataset(x, y), dm.val_set


def run_one(
    setup: Setup, partition: str, attack: str, aggregator: str, seed: int, data: tuple[TensorDataset, TensorDataset]
) -> dict[str, Any]:
    train, test = data
    agg = AGGREGATORS[aggregator](setup.clients_per_round)
    atk = ATTACKS[attack]()
    L.seed_everything(seed, verbose=False)  # same initial model for every cell of a seed
    model = Classifier(setup.arch, tuple(train.tensors[0].shape[1:]), setup.client_lr)  # type: ignore[arg-type]
    strategy = FedAvgStrategy(
        num_clients=setup.num_clients,
        clients_per_round=setup.clients_per_round,
        local_steps=setup.local_steps,
        partition=partition,
        alpha=setup.alpha,
        seed=seed,
        aggregator=agg,
        attack=atk,
    )
    curve = Curve()
    t0 = time.perf_counter()
    # A scratch root: nothing a fit writes (client_errors.log, ...) lands in the repository.
    with no_worker_warning(), tempfile.TemporaryDirectory(prefix="fl-robustness-") as root:
        trainer = bench_trainer(
            strategy=strategy, devices=1, max_epochs=setup.rounds, callbacks=[curve], default_root_dir=root
        )
        trainer.fit(
            model,
            train_dataloaders=DataLoader(train, batch_size=setup.batch_size, shuffle=True),
            val_dataloaders=DataLoader(test, batch_size=1000),
        )
    malicious = trainer.callback_metrics.get("fl/malicious_clients")
    return {
        "dataset": setup.dataset, "partition": partition, "attack": attack, "aggregator": aggregator,
        "aggregator_repr": repr(agg), "attack_repr": repr(atk), "seed": seed,
        "final_acc": curve.accs[-1] if curve.accs else None, "acc_curve": curve.accs,
        "malicious_last_round": None if malicious is None else float(malicious),
        "wall_s": time.perf_counter() - t0,
    }  # fmt: skip


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, partition, attack, aggregator): final accuracy mean ± std over seeds."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["partition"], r["attack"], r["aggregator"]), []).append(r)
    rows = []
    for (ds, part, atk, agg), runs in groups.items():
        finals = [r["final_acc"] for r in runs if r["final_acc"] is not None]
        mean, std = _mean_std(finals) if finals else (float("nan"), float("nan"))
        rows.append({"dataset": ds, "partition": part, "attack": atk, "aggregator": agg,
                     "seeds": [r["seed"] for r in runs], "final_acc_mean": mean, "final_acc_std": std,
                     "mean_wall_s": statistics.fmean(r["wall_s"] for r in runs)})  # fmt: skip
    return rows


def acceptance(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, partition, model-poisoning attack): does FedAvg degrade, and does some robust aggregator
    stay within 3 points of clean FedAvg?"""
    cell = {(r["dataset"], r["partition"], r["attack"], r["aggregator"]): r["final_acc_mean"] for r in summary}
    out = []
    for ds, part in dict.fromkeys((r["dataset"], r["partition"]) for r in summary):
        clean = cell.get((ds, part, "none", "FedAvg"))
        if clean is None:
            continue
        for atk in MODEL_POISONING:
            fedavg = cell.get((ds, part, atk, "FedAvg"))
            robust = {a: cell[(ds, part, atk, a)] for a in AGGREGATORS if a != "FedAvg" and (ds, part, atk, a) in cell}
            if fedavg is None or not robust:
                continue
            best = max(robust, key=lambda a: robust[a])
            out.append({
                "dataset": ds, "partition": part, "attack": atk, "clean_acc": clean, "fedavg_acc": fedavg,
                "fedavg_degrades": fedavg < clean - TOLERANCE, "best_robust": best, "best_robust_acc": robust[best],
                "within_3_points": [a for a in robust if robust[a] >= clean - TOLERANCE],
                "held": robust[best] >= clean - TOLERANCE,
            })  # fmt: skip
    return out


def draw(axes: list[Any], summary: list[dict[str, Any]], panels: list[tuple[str, str]]) -> None:
    """Heat map per (dataset, partition): attacks down, aggregators across, mean final accuracy in each cell."""
    aggs = [a for a in AGGREGATORS if any(r["aggregator"] == a for r in summary)]
    atks = [a for a in ATTACKS if any(r["attack"] == a for r in summary)]
    for ax, (ds, part) in zip(axes, panels):
        cell = {(r["attack"], r["aggregator"]): r for r in summary if (r["dataset"], r["partition"]) == (ds, part)}
        grid = [[cell[(t, a)]["final_acc_mean"] if (t, a) in cell else float("nan") for a in aggs] for t in atks]
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for i, t in enumerate(atks):
            for j, a in enumerate(aggs):
                if (t, a) in cell:
                    r = cell[(t, a)]
                    ax.text(j, i, f"{r['final_acc_mean']:.3f}\n±{r['final_acc_std']:.3f}", ha="center", va="center",
                            fontsize=7)  # fmt: skip
        ax.set_xticks(range(len(aggs)), [a.replace("(", "\n(") for a in aggs], fontsize=7)
        ax.set_yticks(range(len(atks)), atks, fontsize=8)
        ax.set_title(f"{ds}, {part}: final test accuracy", fontsize=9)
        ax.grid(False)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    p.add_argument("--partitions", default="iid,dirichlet", help="comma-separated: iid, dirichlet")
    p.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated subset (none = clean)")
    p.add_argument("--aggregators", default=",".join(AGGREGATORS), help="comma-separated subset")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (partition, sampling, attackers, init)")
    p.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    p.add_argument("--quick", action="store_true", help="smoke run: 10 clients, 2 steps, 2 rounds, one seed")
    p.add_argument("--from-json", type=Path, default=None, metavar="PATH",
                   help="no training: redo the table (and --json/--png) from a finished or partial run's JSON")  # fmt: skip
    add_common_args(p)
    args = p.parse_args(argv)
    try:
        args.partition_list = [s.strip() for s in args.partitions.split(",") if s.strip()]
        args.attack_list = [s.strip() for s in args.attacks.split(",") if s.strip()]
        args.aggregator_list = [s.strip() for s in args.aggregators.split(",") if s.strip()]
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as err:
        p.error(f"--seeds: {err}")
    for name, given, known in (("--partitions", args.partition_list, ("iid", "dirichlet")),
                               ("--attacks", args.attack_list, ATTACKS), ("--aggregators", args.aggregator_list, AGGREGATORS)):  # fmt: skip
        bad = [g for g in given if g not in known]
        if bad or not given:
            p.error(f"{name}: unknown or empty {bad}; choose from {', '.join(known)}")
    if not args.seed_list:
        p.error("--seeds: need at least one seed")
    setup = Setup(args.dataset, **(MNIST_SIZES if args.dataset == "mnist" else {}))
    if args.quick:
        args.seed_list = args.seed_list[:1]
        setup = replace(setup, **QUICK, **(QUICK_MNIST if args.dataset == "mnist" else {}))
    if args.rounds is not None:
        if args.rounds < 1:
            p.error("--rounds must be >= 1")
        setup = replace(setup, rounds=args.rounds)
    args.setup = setup
    return args


def report(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    """Summary and acceptance into the JSON, the figure, and the tables (printed last)."""
    payload["summary"] = summary = summarize(payload["results"])
    payload["acceptance"] = verdicts = acceptance(summary)
    write_json(args.json, payload)
    panels = list(dict.fromkeys((r["dataset"], r["partition"]) for r in summary))
    save_figure(args.png, lambda axes: draw(axes, summary, panels), panels=len(panels), size=(6, 3.6))
    aggs = [a for a in AGGREGATORS if any(r["aggregator"] == a for r in summary)]
    cell = {(r["dataset"], r["partition"], r["attack"], r["aggregator"]): r for r in summary}
    rows = []
    for ds, part, atk in dict.fromkeys((r["dataset"], r["partition"], r["attack"]) for r in summary):
        row: list[Any] = [ds, part, atk]
        for a in aggs:
            r = cell.get((ds, part, atk, a))
            row.append(f"{r['final_acc_mean']:.3f} ± {r['final_acc_std']:.3f}" if r else "-")
        rows.append(row)
    print()
    print(format_table(["dataset", "partition", "attack", *aggs], rows))
    if verdicts:
        print()
        print(format_table(
            ["partition", "attack", "clean FedAvg", "FedAvg", "FedAvg degrades", "best robust", "its acc",
             "within 3 points", "held"],
            [[v["partition"], v["attack"], f"{v['clean_acc']:.3f}", f"{v['fedavg_acc']:.3f}", v["fedavg_degrades"],
              v["best_robust"], f"{v['best_robust_acc']:.3f}", ", ".join(v["within_3_points"]) or "-", v["held"]]
             for v in verdicts],
        ))  # fmt: skip


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        payload = json.loads(Path(args.from_json).read_text())
        # --seeds picks the seeds to summarize, e.g. the complete ones of a sweep stopped early.
        payload["results"] = [r for r in payload["results"] if r["seed"] in args.seed_list]
        report(args, payload)
        return 0
    setup: Setup = args.setup
    if setup.dataset == "mnist":
        check_data(args.data, args.synthetic)
    apply_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit "GPU available" banners
    logging.getLogger("lightning_fl").setLevel(logging.ERROR)  # per-round rejection notices are expected here
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    config = {
        "setup": asdict(setup), "partitions": args.partition_list, "attacks": args.attack_list,
        "aggregators": {a: repr(AGGREGATORS[a](setup.clients_per_round)) for a in args.aggregator_list},
        "attack_objects": {a: repr(ATTACKS[a]()) for a in args.attack_list}, "seeds": args.seed_list,
        "malicious_fraction": FRACTION, "little_is_enough": "left out: FedAvgStrategy refuses it today",
        "synthetic": bool(args.synthetic), "quick": bool(args.quick), "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    data = load_data(setup, args)
    print(f"{setup.dataset}: {len(data[0])} train / {len(data[1])} test images, {setup.num_clients} clients, "
          f"{setup.clients_per_round} per round, {setup.rounds} rounds", flush=True)  # fmt: skip
    results: list[dict[str, Any]] = []
    total = len(args.seed_list) * len(args.partition_list) * len(args.attack_list) * len(args.aggregator_list)
    t_start = time.perf_counter()
    # Seeds outermost: a sweep stopped early still has every cell of the table for the seeds it finished.
    for seed in args.seed_list:
        for part in args.partition_list:
            for atk in args.attack_list:
                for agg in args.aggregator_list:
                    r = run_one(setup, part, atk, agg, seed, data)
                    results.append(r)
                    print(f"  [{len(results)}/{total}] {part} {atk:<10} {agg:<16} seed {seed}: "
                          f"final {r['final_acc']:.4f}, {r['wall_s']:.1f} s", flush=True)  # fmt: skip
                    if args.json is not None:  # rewritten after every run: a stopped sweep keeps its runs
                        args.json.parent.mkdir(parents=True, exist_ok=True)
                        args.json.write_text(
                            json.dumps(
                                {"benchmark": "robustness", "config": config, "results": results, "complete": False},
                                indent=2,
                            )
                        )
    report(args, {"benchmark": "robustness", "config": config, "results": results, "complete": True,
                  "total_wall_s": time.perf_counter() - t_start})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
