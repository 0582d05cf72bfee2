"""Accuracy against ε: DP-FedAvg (``FedAvgStrategy(privacy=CentralDP(...))``) for a few noise multipliers,
with fixed and adaptive clipping, on scikit-learn's digits and on MNIST (issue 9, acceptance 3).

For each federation, one run without privacy (plain FedAvg, sample-weighted) and, for each noise
multiplier z and each clipping mode (fixed clip norm S; adaptive, ``target_quantile=0.5`` starting at
S), one DP run. z = 0 keeps clipping, uniform weights and the fixed denominator but adds no noise: the
reference for what clipping alone costs (its ε is infinite). Each run reports the final test accuracy
and the final ε, the ``fl/epsilon`` the strategy logged after its last round (default δ = N^(-1.1),
fixed-size sampling without replacement, replace-one, see docs/privacy.md).

DP-FedAvg needs many clients per round: the noise on the averaged update has std z·S/m per coordinate,
so its norm is about z·S·√P/m against a signal of norm ≤ S. The federations below are sized so a run
fits a shared 2-core machine (small MLPs, m = 50 and 100), which is far from the m ≥ 1,000 of the
DP-FedAvg paper; ``--noise-cohort-size M`` adds the noise of an M-client cohort (and accounts ε for M
clients per round) to see what a larger deployment would get, valid only for one that samples M.

    python benchmarks/privacy.py --threads 1 --json benchmarks/results/privacy.json --png docs/figures/privacy.png
    python benchmarks/privacy.py --quick --synthetic --json /tmp/privacy.json     # seconds
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
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

from lightning_fl import FedAvgStrategy  # noqa: E402
from lightning_fl.data.digits import DigitsDataModule  # noqa: E402
from lightning_fl.federated.privacy import CentralDP  # noqa: E402
from lightning_fl.models.nets import MLP  # noqa: E402


@dataclass
class Federation:
    name: str
    clients: int
    per_round: int
    rounds: int
    hidden: int  # MLP width: few parameters keep the noise norm z·S·√P/m small
    clip_norm: float  # fixed S; also where adaptive clipping starts
    lr: float
    local_epochs: int
    samples_per_client: int = 0  # MNIST only: the training subset is clients x this
    test_size: int = 10_000


FEDERATIONS = {
    # The 1,078-image train split of DigitsDataModule over 100 clients (~11 each), half of them per round.
    "digits": Federation("digits", clients=100, per_round=50, rounds=20, hidden=32, clip_norm=0.5, lr=0.3,
                         local_epochs=5),  # fmt: skip
    # 1,000 clients x 20 MNIST images (20,000), 100 per round (q = 0.1); full 10k test set.
    "mnist": Federation("mnist", clients=1000, per_round=100, rounds=15, hidden=32, clip_norm=0.5, lr=0.1,
                        local_epochs=2, samples_per_client=20),  # fmt: skip
}


class MLPModule(L.LightningModule):
    """MLP + cross-entropy + SGD, no metrics: the benchmark evaluates the global model itself."""

    def __init__(self, in_shape: tuple[int, ...], hidden: int, lr: float) -> None:
        super().__init__()
        self.net = MLP(in_shape, 10, (hidden,))
        self.lr = lr

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: Tensor, y: Tensor) -> float:
    net.eval()
    correct = sum(int((net(x[i : i + 2000]).argmax(1) == y[i : i + 2000]).sum()) for i in range(0, len(y), 2000))
    net.train()
    return correct / len(y)


class RoundLog(Callback):
    """After each round: the logged ε and clip norm, and the test accuracy every ``every`` rounds."""

    def __init__(self, x: Tensor, y: Tensor, every: int) -> None:
        self.x, self.y, self.every = x, y, every
        self.epsilon: list[float] = []
        self.clip: list[float] = []
        self.acc: list[tuple[int, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stats = trainer.strategy.round_stats
        self.epsilon.append(float(stats.get("fl/epsilon", float("nan"))))
        self.clip.append(float(stats.get("fl/dp_clip_norm", float("nan"))))
        r = trainer.current_epoch + 1
        if r % self.every == 0 or r == trainer.max_epochs:
            self.acc.append((r, accuracy(pl_module.net, self.x, self.y)))


def load_federation(fed: Federation, args: argparse.Namespace) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train and test tensors. Digits is bundled with scikit-learn, so it is real data even with --synthetic."""
    if fed.name == "digits":
        dm = DigitsDataModule(seed=args.seed)
        dm.setup()
        assert dm.train_set is not None and dm.test_set is not None
        return (*dm.train_set.tensors, *dm.test_set.tensors)  # type: ignore[return-value]
    x, y = load_mnist_train(args.data, args.synthetic, fed.clients * fed.samples_per_client, args.seed)
    if args.synthetic:
        g = torch.Generator().manual_seed(args.seed + 1)
        xt = torch.rand(fed.test_size, 1, 28, 28, generator=g)
        yt = torch.randint(0, 10, (fed.test_size,), generator=g)
    else:
        with np.load(args.data) as npz:
            xt = torch.from_numpy(npz["x_test"][: fed.test_size]).float().unsqueeze(1) / 255.0
            yt = torch.from_numpy(npz["y_test"][: fed.test_size]).long()
    return x, y, xt, yt


def settings(zs: list[float], adaptive: bool) -> list[tuple[str, Optional[float], bool]]:
    """(label, z or None for no privacy, adaptive clipping)."""
    out: list[tuple[str, Optional[float], bool]] = [("no DP (FedAvg)", None, False)]
    for mode in (False, True) if adaptive else (False,):
        out += [(f"z={z:g} {'adaptive' if mode else 'fixed'}", z, mode) for z in zs]
    return out


def run_one(fed: Federation, data: tuple[Tensor, ...], z: Optional[float], adaptive: bool,
            args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    x, y, xt, yt = data
    privacy = None
    if z is not None:
        cohort = args.noise_cohort_size or fed.per_round
        # The count's noise defaults to cohort/20 (Andrew et al.), which must exceed z/2: small cohorts
        # (--quick) need more, so take z there (it only slows how fast the clip norm adapts).
        sigma_b = max(cohort / 20, z) if adaptive else None
        privacy = CentralDP(
            noise_multiplier=z,
            clip_norm=fed.clip_norm,
            target_quantile=0.5 if adaptive else None,
            count_noise_multiplier=sigma_b,
            noise_cohort_size=args.noise_cohort_size,
        )
    torch.manual_seed(args.seed)  # same initial weights in every run of a federation
    module = MLPModule(tuple(x.shape[1:]), fed.hidden, fed.lr)
    log = RoundLog(xt, yt, every=max(fed.rounds // 8, 1))
    strategy = FedAvgStrategy(
        num_clients=fed.clients, clients_per_round=fed.per_round, local_epochs=fed.local_epochs,
        partition="iid", seed=args.seed, privacy=privacy,
    )  # fmt: skip
    trainer = bench_trainer(strategy=strategy, devices=1, max_epochs=fed.rounds, limit_val_batches=0, callbacks=[log])
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    # ε is not logged without privacy, and infinite (or not finite) with z = 0: both are "no guarantee".
    eps = log.epsilon[-1] if log.epsilon and z else math.inf
    return {
        "noise_multiplier": z,
        "adaptive": adaptive,
        "final_acc": log.acc[-1][1],
        "acc_curve": log.acc,
        "final_epsilon": eps if math.isfinite(eps) else None,
        "epsilon_curve": [e if math.isfinite(e) else None for e in log.epsilon] if z else None,
        "clip_norm_curve": [c if math.isfinite(c) else None for c in log.clip] if z is not None else None,
        "rounds": len(log.epsilon),
        "seconds": seconds,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    feds = [FEDERATIONS[f] for f in args.federations.split(",")]
    results: list[dict[str, Any]] = []
    for fed in feds:
        if args.rounds:
            fed.rounds = args.rounds
        if args.quick:
            fed.clients, fed.per_round, fed.rounds, fed.local_epochs = 20, 10, 2, 1
            fed.samples_per_client, fed.test_size = 20 if fed.name == "mnist" else 0, 200
        data = load_federation(fed, args)
        params = sum(p.numel() for p in MLP(tuple(data[0].shape[1:]), 10, (fed.hidden,)).parameters())
        for label, z, adaptive in settings(args.zs, not args.no_adaptive):
            r = run_one(fed, data, z, adaptive, args)
            r.update(federation=fed.name, label=label, clients=fed.clients, per_round=fed.per_round, params=params,
                     clip_norm=fed.clip_norm, noise_std_on_average=None if z is None else
                     z * fed.clip_norm / (args.noise_cohort_size or fed.per_round))  # fmt: skip
            results.append(r)
            eps = "inf" if r["final_epsilon"] is None else f"{r['final_epsilon']:.3g}"
            print(f"{fed.name} {label}: acc {r['final_acc']:.4f}, eps {eps}, {r['seconds']:.1f}s", flush=True)
            if args.json:  # after every run: a long run stopped early still leaves its results
                write_json(args.json, {**summary(args, feds), "results": results, "complete": False})
    return {**summary(args, feds), "results": results, "complete": True}


def summary(args: argparse.Namespace, feds: list[Federation]) -> dict[str, Any]:
    return {
        "benchmark": "privacy",
        "config": {
            "federations": {f.name: vars(f) for f in feds},
            "noise_multipliers": args.zs,
            "adaptive": not args.no_adaptive,
            "target_quantile": 0.5,
            "noise_cohort_size": args.noise_cohort_size,
            "batch_size": args.batch_size,
            "delta": "default N^-1.1",
            "accounting": "without_replacement (replace-one)",
            "synthetic": bool(args.synthetic),
            "seed": args.seed,
            "torch_threads": torch.get_num_threads(),
        },
    }


def merge(paths: list[Path]) -> dict[str, Any]:
    """Results of several runs (e.g. one process per federation) as one, for the table and figure."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    out = dict(parts[0], results=[r for p in parts for r in p["results"]], complete=all(p["complete"] for p in parts))
    out["config"] = dict(parts[0]["config"], federations={k: v for p in parts for k, v in p["config"]["federations"].items()})
    return out


def draw(axes: list[Any], result: dict[str, Any]) -> None:
    """Per federation: final accuracy against final ε, one line per clipping mode; no-noise references dashed."""
    for ax, fed in zip(axes, result["config"]["federations"]):
        rows = [r for r in result["results"] if r["federation"] == fed]
        for i, (mode, name) in enumerate(((False, "fixed clip"), (True, "adaptive clip"))):
            pts = sorted((r["final_epsilon"], r["final_acc"], r["noise_multiplier"]) for r in rows
                         if r["noise_multiplier"] and r["adaptive"] == mode and r["final_epsilon"])  # fmt: skip
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{i}", label=name)
                for e, a, z in pts:
                    ax.annotate(f"z={z:g}", (e, a), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
        for r in rows:
            if not r["noise_multiplier"]:  # no privacy, or z = 0 (clipping only): no finite ε
                style = "-" if r["noise_multiplier"] is None else ("--" if not r["adaptive"] else ":")
                ax.axhline(r["final_acc"], color="gray", linestyle=style, label=f"{r['label']} (ε = ∞)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter("")  # minor-tick labels of a short log range overlap
        meta = rows[0] if rows else {"clients": 0, "per_round": 0}
        ax.set(xlabel="ε (final round, δ = N^-1.1)", ylabel="test accuracy",
               title=f"{fed}: {meta['clients']} clients, {meta['per_round']} per round")  # fmt: skip


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--federations", default="digits,mnist", help=f"comma-separated from {', '.join(FEDERATIONS)}")
    p.add_argument("--zs", default="0,0.5,1,2", help="noise multipliers (0: clipping without noise)")
    p.add_argument("--no-adaptive", action="store_true", help="fixed clipping only")
    p.add_argument("--noise-cohort-size", type=int, default=None, help="noise (and ε) of an M-client cohort")
    p.add_argument("--rounds", type=int, default=0, help="override every federation's rounds")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="20 clients, 10 per round, 2 rounds, 200 test images, z in {0, 1}")
    p.add_argument("--from-json", type=Path, nargs="+", default=None, metavar="JSON",
                   help="no training: merge these results (e.g. one run per federation) into one table and figure")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick and args.zs == p.get_default("zs"):
        args.zs = "0,1"  # 2 x 5 short fits: a smoke run of a few seconds
    args.zs = [float(z) for z in args.zs.split(",")]
    unknown = set(args.federations.split(",")) - set(FEDERATIONS)
    if unknown or any(z < 0 for z in args.zs):
        p.error(f"--federations from {', '.join(FEDERATIONS)}; --zs >= 0")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner per fit
    if "mnist" in args.federations.split(",") and not args.from_json:
        check_data(args.data, args.synthetic)
    apply_threads(args.threads)
    if args.from_json:
        result = merge(args.from_json)
    else:
        with no_worker_warning():
            result = run(args)
    write_json(args.json, result)
    save_figure(args.png, lambda axes: draw(axes, result), panels=len(result["config"]["federations"]), size=(5.5, 4))
    rows = []
    for r in result["results"]:
        eps = "inf" if r["final_epsilon"] is None else f"{r['final_epsilon']:.3g}"
        noise = "" if r["noise_std_on_average"] is None else f"{r['noise_std_on_average']:.3g}"
        clip = r["clip_norm_curve"][-1] if r["clip_norm_curve"] else None
        rows.append([r["federation"], f"{r['clients']}/{r['per_round']}", r["label"], r["rounds"], noise,
                     "" if clip is None else f"{clip:.3g}", eps, f"{r['final_acc']:.4f}", f"{r['seconds']:.0f}"])  # fmt: skip
    headers = ["data", "N/m", "setting", "rounds", "noise std on avg", "final S", "final ε", "test acc", "s"]
    print(format_table(headers, rows))
    if not result.get("complete", True):
        print("PARTIAL: the run stopped before every setting finished")
    print("final ε: fl/epsilon after the last round, δ = N^-1.1, sampling without replacement (replace-one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
