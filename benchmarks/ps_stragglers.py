"""Throughput of DDP, synchronous PS and bounded-staleness (SSP) PS under stragglers, in one 2-process run.

Model McMahanCNN (1,663,370 parameters), plain SGD, batch 32 per worker, MNIST (or --synthetic), gloo on
CPU, one torch thread per process. The straggler model is ``benchmarks/straggler_model.py``:

- ``none``: no sleeps;
- ``transient``: at every step each worker independently, with probability 0.25, sleeps 2c;
- ``persistent``: worker 1 sleeps c before every step (always 2x slower);

where c, the compute time of one step, is measured first (median forward + backward time of a DDP
warm-up fit, the larger of the two workers') and then fixed for the whole run. The sleep happens in a
callback at the start of the batch; the draws depend only on (seed, worker, step), so every strategy meets
the same stragglers. Every fit is one epoch of ``--steps`` steps; throughput = steps x 32 x 2 / wall time
from ``on_train_start`` to ``on_train_end`` on rank 0 (SSP's last step waits for every update, so that is
when both workers are done). Fits alternate strategy by strategy inside each condition, for each repeat;
the median over repeats is reported.

Next to each measured SSP / sync ratio: the event simulation of the same straggler draws with the measured
c (communication taken as free), and the fraction of it that was measured. Targets (issue 4): (i) sync PS
>= 0.8x DDP; (ii) SSP with staleness 3 >= 1.10x sync PS; (iii) theory: the pace of the slow worker, so
SSP ~ sync.

    python benchmarks/ps_stragglers.py
    python benchmarks/ps_stragglers.py --quick --synthetic --json /tmp/stragglers.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` when run as a script from anywhere

from _common import (  # noqa: E402
    add_common_args,
    bench_trainer,
    check_data,
    format_table,
    load_mnist_train,
    make_minimal_module,
    median,
    no_worker_warning,
    run_child,
    save_figure,
    write_json,
)
from straggler_model import CONDITIONS, extra_sleep, finish_time, speedup  # noqa: E402

WORKERS = 2
STRATEGIES = ("ddp", "ps_sync", "ps_ssp1", "ps_ssp3")
STALENESS = {"ps_sync": None, "ps_ssp1": 1, "ps_ssp3": 3}
SYNC_OVER_DDP_TARGET = 0.8
SSP3_OVER_SYNC_TARGET = 1.10


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=32, help="per worker")
    p.add_argument("--steps", type=int, default=120, help="steps per fit (one epoch)")
    p.add_argument("--calibration-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--quick", action="store_true", help="12 steps per fit, 1 repeat (a smoke run)")
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)  # internal
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.calibration_steps, args.repeats = 12, 6, 1
    if min(args.batch_size, args.steps, args.calibration_steps, args.repeats) < 1:
        p.error("--batch-size, --steps, --calibration-steps and --repeats must be >= 1")
    return args


def child(args: argparse.Namespace) -> None:
    """Runs in both ranks (Lightning's popen launcher re-runs this command); rank 0 writes the results."""
    import lightning as L
    import torch
    import torch.distributed as dist
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_fl import ParameterServerStrategy

    class Stragglers(Callback):
        """Sleeps before each batch as the straggler model says; times compute and the whole fit."""

        def __init__(self, condition: str, compute: float) -> None:
            self.condition, self.compute = condition, compute
            self.compute_times: list[float] = []
            self.elapsed = float("nan")
            self._t_batch = self._t_fit = 0.0

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self._t_fit = time.perf_counter()

        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
            pause = extra_sleep(self.condition, trainer.global_rank, trainer.global_step, WORKERS, self.compute, args.seed)
            if pause:
                time.sleep(pause)
            self._t_batch = time.perf_counter()

        def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
            self.compute_times.append(time.perf_counter() - self._t_batch)

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.elapsed = time.perf_counter() - self._t_fit

    def fit(strategy: str, steps: int, callback: Stragglers) -> None:
        chosen: Any = "ddp" if strategy == "ddp" else ParameterServerStrategy(staleness=STALENESS[strategy])
        trainer = bench_trainer(
            strategy=chosen, devices=WORKERS, max_steps=steps, max_epochs=1, limit_val_batches=0, callbacks=[callback]
        )
        loader = DataLoader(TensorDataset(x[: n(steps)], y[: n(steps)]), batch_size=args.batch_size, shuffle=False)
        torch.manual_seed(args.seed)  # the same initial weights in every fit
        with no_worker_warning():
            trainer.fit(make_minimal_module(args.lr), train_dataloaders=loader)

    def n(steps: int) -> int:
        return args.batch_size * WORKERS * steps  # one epoch holds every step; each rank gets its half

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # Lightning's launcher keeps it for both ranks
    x, y = load_mnist_train(args.data, args.synthetic, n(max(args.steps, args.calibration_steps)), args.seed)

    calibration = Stragglers("none", 0.0)
    fit("ddp", args.calibration_steps, calibration)
    local = torch.tensor([median(calibration.compute_times[2:] or calibration.compute_times)])
    dist.all_reduce(local, op=dist.ReduceOp.MAX)
    compute = float(local)

    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for condition in CONDITIONS:
            for strategy in STRATEGIES:
                callback = Stragglers(condition, compute)
                fit(strategy, args.steps, callback)
                samples = args.steps * args.batch_size * WORKERS
                runs.append(
                    {
                        "repeat": repeat,
                        "condition": condition,
                        "strategy": strategy,
                        "elapsed_s": callback.elapsed,
                        "samples_per_s": samples / callback.elapsed,
                        "compute_s_median": median(callback.compute_times),
                    }
                )
    if dist.get_rank() == 0:
        Path(args.child_out).write_text(json.dumps({"compute_s": compute, "runs": runs}))
    dist.barrier()
    dist.destroy_process_group()


def launch(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()),
        "--batch-size", str(args.batch_size), "--steps", str(args.steps),
        "--calibration-steps", str(args.calibration_steps), "--repeats", str(args.repeats),
        "--lr", repr(args.lr), "--seed", str(args.seed), "--data", str(args.data),
    ]  # fmt: skip
    if args.synthetic:
        cmd.append("--synthetic")
    return run_child(cmd, "the 2-process run")


def simulated_ratio(condition: str, staleness: int, steps: int, compute: float, seed: int) -> float:
    """SSP / sync throughput the event simulation gives for this run's own straggler draws."""
    times = [
        [compute + extra_sleep(condition, w, k, WORKERS, compute, seed) for k in range(steps)] for w in range(WORKERS)
    ]
    return finish_time(times, 0) / finish_time(times, staleness)


STRATEGY_LABELS = {"ddp": "DDP", "ps_sync": "sync PS", "ps_ssp1": "SSP s=1", "ps_ssp3": "SSP s=3"}


def draw(axes: list[Any], summary: dict[str, Any]) -> None:
    """Throughput per straggler condition and strategy; SSP over sync PS, measured against simulated."""
    throughput, speedups = axes
    xs = list(range(len(CONDITIONS)))
    width = 0.8 / len(STRATEGIES)
    for k, s in enumerate(STRATEGIES):
        offset = (k - (len(STRATEGIES) - 1) / 2) * width
        throughput.bar([x + offset for x in xs], [summary[c]["samples_per_s"][s] for c in CONDITIONS], width=width,
                       label=STRATEGY_LABELS.get(s, s))  # fmt: skip
    throughput.set_xticks(xs)
    throughput.set_xticklabels(CONDITIONS)
    throughput.set(ylabel="samples/s (median)", title="throughput, 2 workers")
    for k, (s, color) in enumerate(((1, "C2"), (3, "C3"))):
        offset = (k - 0.5) * 0.4
        speedups.bar([x + offset for x in xs], [summary[c][f"ssp{s}_over_sync"] for c in CONDITIONS], width=0.4,
                     color=color, alpha=0.7, label=f"SSP s={s} measured")  # fmt: skip
        speedups.plot([x + offset for x in xs], [summary[c][f"ssp{s}_over_sync_simulated"] for c in CONDITIONS],
                      "kD", markersize=5, label="simulated, same draws" if k == 0 else None)  # fmt: skip
    speedups.axhline(1.0, color="gray", linewidth=0.8)
    speedups.set_xticks(xs)
    speedups.set_xticklabels(CONDITIONS)
    speedups.set(ylabel="SSP / sync PS throughput", title="bounded staleness against sync PS")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    check_data(args.data, args.synthetic)
    if args.child_out is not None:
        child(args)
        return 0

    result = launch(args)
    compute, runs = result["compute_s"], result["runs"]
    throughput = {
        (c, s): median([r["samples_per_s"] for r in runs if r["condition"] == c and r["strategy"] == s])
        for c in CONDITIONS
        for s in STRATEGIES
    }
    rows, summary = [], {}
    for c in CONDITIONS:
        sync = throughput[(c, "ps_sync")]
        entry: dict[str, Any] = {
            "samples_per_s": {s: throughput[(c, s)] for s in STRATEGIES},
            "sync_over_ddp": sync / throughput[(c, "ddp")],
        }
        for s in (1, 3):
            measured = throughput[(c, f"ps_ssp{s}")] / sync
            simulated = simulated_ratio(c, s, args.steps, compute, args.seed)
            entry[f"ssp{s}_over_sync"] = measured
            entry[f"ssp{s}_over_sync_simulated"] = simulated
            entry[f"ssp{s}_over_sync_expected"] = speedup(c, s)  # long-run, many steps
            entry[f"ssp{s}_fraction_of_simulated"] = measured / simulated
        summary[c] = entry
        rows.append(
            [c, *(throughput[(c, s)] for s in STRATEGIES), entry["sync_over_ddp"],
             f"{entry['ssp1_over_sync']:.3f} / {entry['ssp1_over_sync_simulated']:.3f}",
             f"{entry['ssp3_over_sync']:.3f} / {entry['ssp3_over_sync_simulated']:.3f}"]
        )  # fmt: skip
    checks = {
        "(i) sync PS / DDP, no straggler": (summary["none"]["sync_over_ddp"], SYNC_OVER_DDP_TARGET),
        "(ii) SSP s=3 / sync PS, transient": (summary["transient"]["ssp3_over_sync"], SSP3_OVER_SYNC_TARGET),
    }
    payload = {
        "benchmark": "ps_stragglers",
        "config": {
            "model": "McMahanCNN",
            "workers": WORKERS,
            "batch_size_per_worker": args.batch_size,
            "steps_per_fit": args.steps,
            "repeats": args.repeats,
            "optimizer": "SGD (no momentum)",
            "lr": args.lr,
            "seed": args.seed,
            "torch_threads_per_process": 1,
            "synthetic": bool(args.synthetic),
            "cpu_count": os.cpu_count(),
        },
        "compute_s": compute,
        "runs": runs,
        "summary": summary,
        "targets": {name: {"measured": m, "target": t, "passed": m >= t} for name, (m, t) in checks.items()},
    }
    write_json(args.json, payload)
    save_figure(args.png, lambda axes: draw(axes, summary), panels=2)

    print(f"compute time c = {compute * 1000:.1f} ms per step (measured, then fixed); {args.steps} steps per fit")
    print(f"samples/s, median of {args.repeats}; SSP / sync columns: measured / simulated with the same draws\n")
    headers = ["condition", "DDP", "sync PS", "SSP s=1", "SSP s=3", "sync/DDP", "SSP1/sync", "SSP3/sync"]
    print(format_table(headers, rows))
    print()
    for name, (measured, target) in checks.items():
        print(f"{name}: {measured:.3f} (target >= {target:.2f}) {'PASS' if measured >= target else 'MISS'}")
    for s in (1, 3):
        t = summary["transient"]
        print(
            f"transient, SSP s={s}: measured {t[f'ssp{s}_over_sync']:.3f} = "
            f"{100 * t[f'ssp{s}_fraction_of_simulated']:.0f}% of the simulated {t[f'ssp{s}_over_sync_simulated']:.3f} "
            f"(long-run expectation {t[f'ssp{s}_over_sync_expected']:.3f})"
        )
    p = summary["persistent"]
    print(
        f"(iii) persistent straggler: theory says SSP runs at the slow worker's pace, SSP/sync -> 1 "
        f"(simulated {p['ssp3_over_sync_simulated']:.3f}); measured s=1 {p['ssp1_over_sync']:.3f}, "
        f"s=3 {p['ssp3_over_sync']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
