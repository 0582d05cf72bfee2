"""FedAvg, FedProx, SCAFFOLD, FedNova, FedAvgM, FedAdagrad, FedAdam and FedYogi on the same heterogeneous
federations, with and without stragglers: final test accuracy and rounds to a target, over several seeds.

Federations (issue 8, acceptance 4), sized for about 20-25 minutes on 2 shared cores with ``--threads 1``:

- ``mnist``: the first 6,000 MNIST training images, 50 clients x 120 images, McMahan et al.'s pathological
  non-IID split (sort by label, 2 shards of 60 per client), MLP 784-200-200-10 ("2NN"), 30 rounds, test
  accuracy on all 10,000 test images;
- ``digits``: scikit-learn's 8x8 digits (the 1,079-image train split of ``DigitsDataModule``), 20 clients,
  Dirichlet label skew alpha = 0.1, MLP 64-200-200-10, 30 rounds, test accuracy on its 359-image test split.

Every run: 10 clients per round, 10 local SGD steps per client (B = 10), the same client optimizer for
every algorithm (plain SGD, lr 0.1, no momentum: SCAFFOLD's and FedNova's papers use plain SGD). ``--stragglers 0,0.5``: with 0.5, half of each round's clients do a uniformly random number
of steps in [1, full] (FedProx's system heterogeneity). Server and client hyper-parameters are the
classes' defaults, i.e. the values written next to the papers in ``conf/strategy/*``; none were tuned here.

Each (federation, stragglers, algorithm, seed) is one ``Trainer.fit`` in this process, one after another
(imports cost seconds). A seed fixes the partition, the client sample, the stragglers and the initial model,
so within a seed every algorithm sees the same federation.

    python benchmarks/algorithms.py --threads 1 --json /tmp/algorithms.json --png docs/figures/algorithms.png
    python benchmarks/algorithms.py --quick --synthetic --threads 1
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
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_fl import (  # noqa: E402
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedAvgStrategy,
    FedNova,
    FedProx,
    FedYogi,
    Scaffold,
)
from lightning_fl.data.digits import DigitsDataModule  # noqa: E402
from lightning_fl.models.nets import build_net  # noqa: E402

# name -> (client algorithm, server optimizer), built fresh per run; defaults are the papers' (conf/strategy/*).
ALGORITHMS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "FedAvg": lambda: (None, None),
    "FedProx": lambda: (FedProx(), None),  # mu = 0.01
    "SCAFFOLD": lambda: (Scaffold(), None),  # server lr 1
    "FedNova": lambda: (FedNova(), None),
    "FedAvgM": lambda: (None, FedAvgM()),  # lr 1, momentum 0.9
    "FedAdagrad": lambda: (None, FedAdagrad()),  # lr 0.1, tau 1e-3
    "FedAdam": lambda: (None, FedAdam()),  # lr 0.01, betas (0.9, 0.99), tau 1e-3
    "FedYogi": lambda: (None, FedYogi()),  # lr 0.01, betas (0.9, 0.99), tau 1e-3
}


@dataclass(frozen=True)
class Federation:
    name: str
    title: str
    partition: str
    num_clients: int
    clients_per_round: int
    local_steps: int
    batch_size: int
    rounds: int
    arch: str
    client_lr: float
    target: float  # picked from the real run so that FedAvg reaches it with every seed, stragglers or not
    alpha: float = 0.5
    shards_per_client: int = 2
    train_size: Optional[int] = None  # MNIST: first N training images
    test_size: Optional[int] = None  # MNIST: first N test images (None: all 10,000)


FEDERATIONS: dict[str, Federation] = {
    "mnist": Federation(
        "mnist", "MNIST, 2 label shards/client", "shards", num_clients=50, clients_per_round=10, local_steps=10,
        batch_size=10, rounds=30, arch="mlp", client_lr=0.1, target=0.75, train_size=6000,
    ),  # fmt: skip
    "digits": Federation(
        "digits", "digits, Dirichlet alpha=0.1", "dirichlet", num_clients=20, clients_per_round=10,
        local_steps=10, batch_size=10, rounds=30, arch="mlp", client_lr=0.1, target=0.80, alpha=0.1,
    ),  # fmt: skip
}

# --quick: the whole pipeline, every algorithm and straggler setting, in seconds (not a result).
QUICK = dict(num_clients=10, clients_per_round=3, local_steps=2, rounds=2)
QUICK_MNIST = dict(train_size=200, test_size=200)


class Classifier(L.LightningModule):
    """Network + cross-entropy + plain SGD; counts correct test predictions itself (no metric objects, no
    logging) so the per-step cost is the model's, the same for every algorithm."""

    def __init__(self, arch: str, in_shape: tuple[int, int, int], lr: float) -> None:
        super().__init__()
        self.net = build_net(arch, in_shape, 10)
        self.lr = lr
        self.correct = 0
        self.seen = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def on_validation_epoch_start(self) -> None:
        self.correct = self.seen = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.correct += int((self.net(x).argmax(1) == y).sum())
        self.seen += len(y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # SGD: SCAFFOLD and FedNova need it; no momentum, as in their papers.
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Curve(Callback):
    """Global-model test accuracy after every round (validation runs on the test set each round)."""

    def __init__(self) -> None:
        self.accs: list[float] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.accs.append(pl_module.correct / max(pl_module.seen, 1))  # type: ignore[operator]


def load_federation_data(fed: Federation, args: argparse.Namespace) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) tensors for one federation."""
    if fed.name == "digits":  # bundled with scikit-learn: real data even with --synthetic
        dm = DigitsDataModule(seed=0)
        dm.setup("fit")
        assert dm.train_set is not None and dm.test_set is not None
        return dm.train_set, dm.test_set
    x, y = load_mnist_train(args.data, args.synthetic, subset=fed.train_size, seed=0)
    train = TensorDataset(x, y)
    if args.synthetic:
        g = torch.Generator().manual_seed(1)
        n = fed.test_size or 10_000
        return train, TensorDataset(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
    from lightning_fl.data.mnist import MNISTDataModule

    dm = MNISTDataModule(path=str(args.data), val_subset=fed.test_size)
    dm.setup("fit")
    assert dm.val_set is not None  # MNIST's 10,000 test images
    return train, dm.val_set


def run_one(
    fed: Federation, algorithm: str, stragglers: float, seed: int, data: tuple[TensorDataset, TensorDataset], root: str
) -> dict[str, Any]:
    train, test = data
    client_algorithm, server_optimizer = ALGORITHMS[algorithm]()
    L.seed_everything(seed, verbose=False)  # same initial model for every algorithm of a seed
    model = Classifier(fed.arch, tuple(train.tensors[0].shape[1:]), fed.client_lr)  # type: ignore[arg-type]
    strategy = FedAvgStrategy(
        num_clients=fed.num_clients,
        clients_per_round=fed.clients_per_round,
        local_steps=fed.local_steps,
        partition=fed.partition,
        alpha=fed.alpha,
        shards_per_client=fed.shards_per_client,
        seed=seed,
        client_algorithm=client_algorithm,
        server_optimizer=server_optimizer,
        stragglers=stragglers,
    )
    curve = Curve()
    trainer = bench_trainer(
        strategy=strategy, devices=1, max_epochs=fed.rounds, callbacks=[curve], default_root_dir=root
    )
    t0 = time.perf_counter()
    with no_worker_warning():
        trainer.fit(
            model,
            train_dataloaders=DataLoader(train, batch_size=fed.batch_size, shuffle=True),
            val_dataloaders=DataLoader(test, batch_size=1000),
        )
    wall = time.perf_counter() - t0
    reached = next((i + 1 for i, a in enumerate(curve.accs) if a >= fed.target), None)
    return {
        "federation": fed.name,
        "algorithm": algorithm,
        "stragglers": stragglers,
        "seed": seed,
        "final_acc": curve.accs[-1] if curve.accs else None,
        "rounds_to_target": reached,
        "acc_curve": curve.accs,
        "wall_s": wall,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[dict[str, Any]], feds: dict[str, Federation]) -> list[dict[str, Any]]:
    """One row per (federation, stragglers, algorithm): mean ± std over seeds, rounds to target."""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["federation"], r["stragglers"], r["algorithm"]), []).append(r)
    rows = []
    for (fed, s, algo), runs in groups.items():
        finals = [r["final_acc"] for r in runs if r["final_acc"] is not None]
        reached = [r["rounds_to_target"] for r in runs if r["rounds_to_target"] is not None]
        mean, std = _mean_std(finals) if finals else (float("nan"), float("nan"))
        rows.append({
            "federation": fed, "stragglers": s, "algorithm": algo, "seeds": [r["seed"] for r in runs],
            "final_acc_mean": mean, "final_acc_std": std, "target": feds[fed].target,
            "rounds_to_target": [r["rounds_to_target"] for r in runs],
            # Mean over the seeds that reached the target; `reached` says how many did.
            "rounds_to_target_mean": statistics.fmean(reached) if reached else None,
            "reached": len(reached), "mean_wall_s": statistics.fmean(r["wall_s"] for r in runs),
        })  # fmt: skip
    return rows


def draw(axes: list[Any], results: list[dict[str, Any]], panels: list[tuple[Federation, float]]) -> None:
    """Accuracy against rounds, mean over seeds; one panel per federation x straggler setting."""
    for ax, (fed, s) in zip(axes, panels):
        for i, algo in enumerate(ALGORITHMS):
            curves = [r["acc_curve"] for r in results if (r["federation"], r["stragglers"], r["algorithm"]) ==
                      (fed.name, s, algo) and r["acc_curve"]]  # fmt: skip
            if not curves:
                continue
            n = min(len(c) for c in curves)
            mean = [statistics.fmean(c[k] for c in curves) for k in range(n)]
            # Client algorithms solid, server optimizers dashed: the two halves of the composition.
            ax.plot(range(1, n + 1), mean, label=algo, color=f"C{i}", linestyle="-" if i < 4 else "--")
        ax.axhline(fed.target, color="gray", linestyle=":", linewidth=0.8)  # the target of "rounds to target"
        ax.xaxis.get_major_locator().set_params(integer=True)  # rounds
        ax.set(xlabel="round", ylabel="test accuracy", title=f"{fed.title}, stragglers {s:g}", ylim=(0, 1))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--federations", default="mnist,digits", help=f"comma-separated from {', '.join(FEDERATIONS)}")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated subset")
    p.add_argument("--stragglers", default="0,0.5", help="comma-separated shares of straggling clients")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (partition, sampling, init)")
    p.add_argument("--rounds", type=int, default=None, help="override every federation's rounds")
    p.add_argument("--quick", action="store_true", help="smoke run: 10 tiny clients, 2 rounds, one seed")
    p.add_argument("--targets", default=None, metavar="FED=ACC,...", help="override targets, e.g. mnist=0.8")
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="PATH",
        help="no training: redo the table (and --json/--png) from a finished run's JSON, e.g. with new --targets",
    )
    add_common_args(p)
    args = p.parse_args(argv)
    try:
        args.fed_list = [FEDERATIONS[f.strip()] for f in args.federations.split(",") if f.strip()]
        args.algo_list = [a.strip() for a in args.algorithms.split(",") if a.strip()]
        unknown = [a for a in args.algo_list if a not in ALGORITHMS]
        if unknown:
            raise KeyError(unknown[0])
        args.straggler_list = [float(s) for s in args.stragglers.split(",") if s.strip()]
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except (KeyError, ValueError) as err:
        p.error(f"bad --federations/--algorithms/--stragglers/--seeds value: {err}")
    if not (args.fed_list and args.algo_list and args.straggler_list and args.seed_list):
        p.error("need at least one federation, algorithm, straggler setting and seed")
    if any(not 0 <= s <= 1 for s in args.straggler_list):
        p.error("--stragglers: shares must be in [0, 1]")
    try:
        args.target_map = {k.strip(): float(v) for k, v in (t.split("=") for t in (args.targets or "").split(",") if t)}
    except ValueError:
        p.error(f"--targets: expected FED=ACC,..., got '{args.targets}'")
    if any(not 0 < t <= 1 for t in args.target_map.values()):
        p.error("--targets: accuracies must be in (0, 1]")
    if args.quick:
        args.seed_list = args.seed_list[:1]
        args.fed_list = [replace(f, **QUICK, **(QUICK_MNIST if f.name == "mnist" else {})) for f in args.fed_list]
    args.fed_list = [replace(f, target=args.target_map.get(f.name, f.target)) for f in args.fed_list]
    if args.rounds is not None:
        if args.rounds < 1:
            p.error("--rounds must be >= 1")
        args.fed_list = [replace(f, rounds=args.rounds) for f in args.fed_list]
    return args


def report(args: argparse.Namespace, payload: dict[str, Any], feds: dict[str, Federation]) -> None:
    """Summary into the JSON, the figure, and the table (printed last)."""
    results = payload["results"]
    payload["summary"] = summary = summarize(results, feds)
    write_json(args.json, payload)
    stragglers = list(dict.fromkeys(r["stragglers"] for r in results))
    panels = [(feds[f], s) for f in dict.fromkeys(r["federation"] for r in results) for s in stragglers]
    save_figure(args.png, lambda axes: draw(axes, results, panels), panels=len(panels), size=(5, 3.6),
                ncols=len(stragglers))  # fmt: skip
    print()
    if not payload.get("complete", True):
        print("note: PARTIAL run (stopped early): the table holds only the seeds that finished")
    print(format_table(
        ["federation", "stragglers", "algorithm", "final test acc", "target", "rounds to target", "s/run"],
        [[r["federation"], r["stragglers"], r["algorithm"], f"{r['final_acc_mean']:.4f} ± {r['final_acc_std']:.4f}",
          r["target"],
          (f"{r['rounds_to_target_mean']:.1f}" if r["reached"] else "-") + f" ({r['reached']}/{len(r['seeds'])})",
          r["mean_wall_s"]] for r in summary],
    ))  # fmt: skip


def replay(args: argparse.Namespace) -> int:
    """``--from-json``: the stored curves give rounds to any target without training again."""
    payload = json.loads(Path(args.from_json).read_text())
    feds = {name: Federation(**{**f, "target": args.target_map.get(name, f["target"])})
            for name, f in payload["config"]["federations"].items()}  # fmt: skip
    for r in payload["results"]:
        target = feds[r["federation"]].target
        r["rounds_to_target"] = next((i + 1 for i, a in enumerate(r["acc_curve"]) if a >= target), None)
    payload["config"]["federations"] = {name: asdict(f) for name, f in feds.items()}
    report(args, payload, feds)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        return replay(args)
    if any(f.name == "mnist" for f in args.fed_list):
        check_data(args.data, args.synthetic)
    apply_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit "GPU available" banners
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")  # Lightning's own, once per fit
    feds = {f.name: f for f in args.fed_list}
    config = {
        "federations": {f.name: asdict(f) for f in args.fed_list},
        "algorithms": {a: [repr(part) for part in ALGORITHMS[a]()] for a in args.algo_list},
        "stragglers": args.straggler_list,
        "seeds": args.seed_list,
        "client_optimizer": "SGD, momentum 0, weight decay 0, constant lr (per federation)",
        "synthetic": bool(args.synthetic),
        "quick": bool(args.quick),
        "torch_threads": torch.get_num_threads(),
    }
    results: list[dict[str, Any]] = []
    total = len(args.fed_list) * len(args.straggler_list) * len(args.algo_list) * len(args.seed_list)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fl-algorithms-") as root:  # SCAFFOLD's client-state files
        data = {}
        for fed in args.fed_list:
            data[fed.name] = load_federation_data(fed, args)
            print(f"{fed.name}: {len(data[fed.name][0])} train / {len(data[fed.name][1])} test images, "
                  f"{fed.num_clients} clients, {fed.rounds} rounds, target {fed.target:g}", flush=True)  # fmt: skip
        # Seeds outermost: a sweep stopped early still has every cell of the table for the seeds it finished.
        for seed in args.seed_list:
            for fed in args.fed_list:
                for s in args.straggler_list:
                    for algo in args.algo_list:
                        r = run_one(fed, algo, s, seed, data[fed.name], root)
                        results.append(r)
                        print(f"  [{len(results)}/{total}] {fed.name} stragglers={s:g} {algo:<10} seed {seed}: "
                              f"final {r['final_acc']:.4f}, target at {r['rounds_to_target']}, {r['wall_s']:.1f} s",
                              flush=True)  # fmt: skip
                        if args.json is not None:  # rewritten after every run: a stopped sweep keeps its runs
                            args.json.parent.mkdir(parents=True, exist_ok=True)
                            args.json.write_text(json.dumps({"benchmark": "algorithms", "config": config,
                                                             "results": results, "complete": False}, indent=2))
    report(args, {"benchmark": "algorithms", "config": config, "results": results, "complete": True,
                  "total_wall_s": time.perf_counter() - t_start}, feds)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
