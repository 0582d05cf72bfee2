"""Test accuracy of FedAvg with compressed client updates against uncompressed, after the same rounds.

Issue 13, acceptance 3: on an MNIST federation of 100 clients (IID and the 2-shard non-IID split of
McMahan et al.), 8-bit quantization and top-k 1 % with error feedback should end within 1 point of
uncompressed FedAvg; the same schemes without error feedback are shown beside them; three seeds.

Sized to run in about 25 minutes on a loaded 2-core machine with ``--threads 1``: a subset of MNIST
(100 clients x 100 training images), McMahan et al.'s MLP with one hidden layer of 200 (159,010 weights),
10 clients per round, E = 1, B = 10, SGD lr 0.05, 30 rounds by default (docs/benchmarks.md reports 400,
where top-k has caught up; at 30 it lags by several points); accuracy on the 10,000 MNIST test images.
Every variant of a seed shares the initial weights, partition, sampled clients and batch orders, so the
differences within a seed are the compression's alone. Each fit runs in this process, one after the
other (devices=1: the compressed exchange is the same sum with any number of processes, as tested).

    python benchmarks/compression_accuracy.py --threads 1 --rounds 400 --eval-every 20 --json acc.json --png acc.png
    python benchmarks/compression_accuracy.py --from-json a.json b.json --json merged.json   # no training
    python benchmarks/compression_accuracy.py --quick --synthetic --json /tmp/acc.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` when run as a script from anywhere

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
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
from lightning.pytorch.callbacks import Callback  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_fl import FedAvgStrategy, Quantize, TopK  # noqa: E402
from lightning_fl.models import MLP  # noqa: E402

# name -> compressor; "-noef": the same without error feedback.
VARIANTS: dict[str, Optional[Quantize | TopK]] = {
    "none": None,
    "q8": Quantize(bits=8),
    "q8-noef": Quantize(bits=8, error_feedback=False),
    "topk1%": TopK(fraction=0.01),
    "topk1%-noef": TopK(fraction=0.01, error_feedback=False),
    "topk10%": TopK(fraction=0.1),  # not run by default: a milder top-k, for --variants
}
DEFAULT_VARIANTS = ("none", "q8", "q8-noef", "topk1%", "topk1%-noef")
TARGETED = ("q8", "topk1%")  # with error feedback: within TOLERANCE_POINTS of none
TOLERANCE_POINTS = 1.0


class NetModule(L.LightningModule):
    """MLP + cross-entropy + SGD; nothing logged."""

    def __init__(self, hidden: int, lr: float) -> None:
        super().__init__()
        self.net = MLP((1, 28, 28), 10, hidden=(hidden,))
        self.lr = lr

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def accuracy(net: torch.nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        correct = sum(int((net(x[i : i + 2000]).argmax(1) == y[i : i + 2000]).sum()) for i in range(0, len(y), 2000))
    return correct / len(y)


class TestAccuracy(Callback):
    """Test accuracy of the global model after every ``every``-th round and after the last one."""

    def __init__(self, x: Tensor, y: Tensor, every: int, rounds: int) -> None:
        self.x, self.y, self.every, self.rounds = x, y, every, rounds
        self.curve: list[tuple[int, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.current_epoch + 1  # the global model after this many rounds
        if done % self.every == 0 or done == self.rounds:
            was_training = pl_module.training
            pl_module.eval()
            self.curve.append((done, accuracy(pl_module.net, self.x, self.y)))
            pl_module.train(was_training)


def load_test(data: Path, synthetic: bool, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` MNIST test images, scaled like the training set (random ones with --synthetic)."""
    if synthetic:
        g = torch.Generator().manual_seed(seed + 1)
        return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    with zipfile.ZipFile(data) as archive:  # the test arrays are small (7.8 MB): load them whole
        with archive.open("x_test.npy") as f:
            x = np.load(f)[:n]
        with archive.open("y_test.npy") as f:
            y = np.load(f)[:n]
    return torch.from_numpy(x).to(torch.float32).unsqueeze(1) / 255.0, torch.from_numpy(y).to(torch.int64)


def run_one(
    args: argparse.Namespace, partition: str, seed: int, variant: str, data: tuple[Tensor, ...], state_dir: str
) -> dict[str, Any]:
    x, y, tx, ty = data
    torch.manual_seed(seed)  # the same initial weights for every variant of a seed
    module = NetModule(args.hidden, args.lr)
    cb = TestAccuracy(tx, ty, args.eval_every, args.rounds)
    strategy = FedAvgStrategy(
        num_clients=args.clients,
        clients_per_round=args.per_round,
        local_epochs=args.local_epochs,
        partition=partition,
        seed=seed,
        compression=VARIANTS[variant],
        client_state_dir=str(Path(state_dir) / f"{partition}-{seed}-{variant}"),
    )
    comm: list[float] = []

    class Comm(Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            comm.append(trainer.strategy.round_stats["fl/comm_bytes"])  # type: ignore[attr-defined]

    trainer = bench_trainer(
        strategy=strategy, devices=1, max_epochs=args.rounds, limit_val_batches=0, callbacks=[cb, Comm()]
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)  # the strategy samples
    start = time.perf_counter()
    with no_worker_warning():
        trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    return {
        "partition": partition,
        "seed": seed,
        "variant": variant,
        "final_accuracy": cb.curve[-1][1],
        "curve": cb.curve,
        "seconds": seconds,
        "params": sum(p.numel() for p in module.parameters()),
    }


def summarize(runs: list[dict[str, Any]], partitions: list[str], variants: list[str]) -> list[dict[str, Any]]:
    """Per partition and variant: mean/std/min/max of final accuracy over seeds, and the paired gap to none."""
    rows = []
    for part in partitions:
        base = {r["seed"]: r["final_accuracy"] for r in runs if r["partition"] == part and r["variant"] == "none"}
        for v in variants:
            accs = {r["seed"]: r["final_accuracy"] for r in runs if r["partition"] == part and r["variant"] == v}
            if not accs:
                continue
            vals = list(accs.values())
            paired = [100 * (a - base[s]) for s, a in accs.items() if s in base]  # points, same seed
            row: dict[str, Any] = {
                "partition": part,
                "variant": v,
                "seeds": sorted(accs),
                "mean_accuracy": statistics.fmean(vals),
                "std_accuracy": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "accuracies": [accs[s] for s in sorted(accs)],
                "mean_gap_points": statistics.fmean(paired) if paired else None,
                "min_gap_points": min(paired) if paired else None,
                "max_gap_points": max(paired) if paired else None,
            }
            if v in TARGETED and paired:
                row["target"] = f">= none - {TOLERANCE_POINTS:g} point (mean over seeds)"
                row["passed"] = round(row["mean_gap_points"], 6) >= -TOLERANCE_POINTS  # float noise at exactly -1
            rows.append(row)
    return rows


def draw(axes: list[Any], runs: list[dict[str, Any]], partitions: list[str], variants: list[str]) -> None:
    """Mean test accuracy over seeds against rounds, one panel per partition."""
    for ax, part in zip(axes, partitions):
        for i, v in enumerate(variants):
            curves = [r["curve"] for r in runs if r["partition"] == part and r["variant"] == v]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            xs = [c[0] for c in curves[0][:n]]
            ys = [100 * statistics.fmean(c[j][1] for c in curves) for j in range(n)]
            style = ":" if v.endswith("-noef") else "-"
            ax.plot(xs, ys, style, marker="o", markersize=3, color=f"C{i}", label=f"{v} ({len(curves)} seeds)")
        ax.set(xlabel="round", ylabel="test accuracy %", title=f"{part}: mean over seeds")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--samples-per-client", type=int, default=100, help="train set = clients x this (<= 60,000)")
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--hidden", type=int, default=200, help="MLP hidden width (784 -> h -> 10)")
    p.add_argument("--test-size", type=int, default=10_000, help="MNIST test images evaluated")
    p.add_argument("--eval-every", type=int, default=5, help="rounds between test evaluations (the last always)")
    p.add_argument("--partitions", default="iid,shards")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {', '.join(VARIANTS)}".replace("%", "%%"))
    p.add_argument("--quick", action="store_true", help="20 clients x 30 images, 4 per round, 2 rounds, 1 seed, iid, 3 variants")
    p.add_argument(
        "--from-json",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="merge earlier runs of the same configuration (e.g. variants run separately): table and figure, no training",
    )
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.samples_per_client, args.per_round, args.rounds = 20, 30, 4, 2
        args.seeds, args.test_size, args.eval_every = "0", 500, 1
        args.partitions = "iid"
        if args.variants == p.get_default("variants"):
            args.variants = "none,q8,topk1%-noef"
    args.partition_list = [s.strip() for s in args.partitions.split(",") if s.strip()]
    args.variant_list = [s.strip() for s in args.variants.split(",") if s.strip()]
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds: a comma list of integers, got '{args.seeds}'")
    bad = [v for v in args.variant_list if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    bad = [s for s in args.partition_list if s not in ("iid", "shards", "dirichlet")]
    if bad:
        p.error(f"--partitions: unknown {', '.join(bad)}; choose from iid, shards, dirichlet")
    if "none" not in args.variant_list:
        args.variant_list.insert(0, "none")  # every gap is measured against it
    if args.rounds < 1 or args.per_round > args.clients or args.clients * args.samples_per_client > 60_000:
        p.error("need --rounds >= 1, --per-round <= --clients and --clients x --samples-per-client <= 60000")
    if not args.seed_list or not args.partition_list:
        p.error("need at least one seed and one partition")
    return args


def merge_runs(paths: list[Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The runs of several result files of one configuration; a (partition, seed, variant) run twice is kept once."""
    config: Optional[dict[str, Any]] = None
    runs: dict[tuple[str, int, str], dict[str, Any]] = {}
    for path in paths:
        result = json.loads(path.read_text())
        same = {k: v for k, v in result["config"].items() if k != "variants"}
        if config is None:
            config = dict(result["config"])
        elif same != {k: v for k, v in config.items() if k != "variants"}:
            raise SystemExit(f"error: --from-json: {path} was run with another configuration than {paths[0]}")
        config["variants"] = {**config["variants"], **result["config"]["variants"]}
        for run in result["runs"]:
            runs.setdefault((run["partition"], run["seed"], run["variant"]), run)
    assert config is not None
    config["variants"] = {v: config["variants"][v] for v in VARIANTS if v in config["variants"]}
    return config, list(runs.values())


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        config, runs = merge_runs(args.from_json)
        args.rounds, args.clients, args.samples_per_client = config["rounds"], config["clients"], config["samples_per_client"]
        args.per_round, args.seed_list, args.partition_list = config["per_round"], config["seeds"], config["partitions"]
        args.variant_list = list(config["variants"])
        return report(args, config, runs)
    check_data(args.data, args.synthetic)
    apply_threads(args.threads)
    n = args.clients * args.samples_per_client
    x, y = load_mnist_train(args.data, args.synthetic, n, args.seed)
    data = (x, y, *load_test(args.data, args.synthetic, args.test_size, args.seed))
    runs: list[dict[str, Any]] = []
    config = {
        "clients": args.clients,
        "samples_per_client": args.samples_per_client,
        "per_round": args.per_round,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "model": f"MLP 784-{args.hidden}-10",
        "test_size": args.test_size,
        "partitions": args.partition_list,
        "seeds": args.seed_list,
        "variants": {v: repr(VARIANTS[v]) for v in args.variant_list},
        "synthetic": bool(args.synthetic),
        "torch_threads": torch.get_num_threads(),
    }

    # Seed-major order: a run stopped early still has every variant of its first seeds.
    with tempfile.TemporaryDirectory(prefix="compression_accuracy-") as state_dir:
        for seed in args.seed_list:
            for part in args.partition_list:
                for v in args.variant_list:
                    run = run_one(args, part, seed, v, data, state_dir)
                    runs.append(run)
                    print(f"{part} seed {seed} {v}: test acc {100 * run['final_accuracy']:.2f}% "
                          f"({run['seconds']:.1f}s)", flush=True)  # fmt: skip
                    if args.json is not None:
                        write_json(args.json, payload(args, config, runs, complete=False))
    return report(args, config, runs)


def payload(args: argparse.Namespace, config: dict[str, Any], runs: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
    rows = summarize(runs, args.partition_list, args.variant_list)
    targeted = [r for r in rows if "passed" in r]
    return {
        "benchmark": "compression_accuracy",
        "complete": complete,  # False in a file written between runs
        "config": config,
        "runs": runs,
        "summary": rows,
        "tolerance_points": TOLERANCE_POINTS,
        "passed": all(r["passed"] for r in targeted) if targeted else None,
    }


def report(args: argparse.Namespace, config: dict[str, Any], runs: list[dict[str, Any]]) -> int:
    """Write the JSON and the figure, print the table."""
    result = payload(args, config, runs, complete=True)
    write_json(args.json, result)
    save_figure(
        args.png, lambda axes: draw(axes, runs, args.partition_list, args.variant_list), panels=len(args.partition_list)
    )
    table = []
    for r in result["summary"]:
        gap = r["mean_gap_points"]
        table.append(
            [
                r["partition"], r["variant"], f"{100 * r['mean_accuracy']:.2f} ± {100 * r['std_accuracy']:.2f}",
                " ".join(f"{100 * a:.2f}" for a in r["accuracies"]),
                "" if r["variant"] == "none" or gap is None else f"{gap:+.2f} ({r['min_gap_points']:+.2f}..{r['max_gap_points']:+.2f})",
                f">= -{TOLERANCE_POINTS:g}" if "passed" in r else "",
                "" if "passed" not in r else ("PASS" if r["passed"] else "MISS"),
            ]
        )  # fmt: skip
    print(f"\n{args.rounds} rounds, {args.clients} clients x {args.samples_per_client} images, {args.per_round} per round, "
          f"seeds {args.seed_list}: test accuracy % (mean ± std over seeds)")  # fmt: skip
    headers = ["partition", "variant", "accuracy %", "per seed", "gap vs none, points (range)", "target", "result"]
    print(format_table(headers, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
