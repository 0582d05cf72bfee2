"""Scaling of ``strategy="fedavg"``: seconds per round and peak RSS against clients N and against processes.

Workload (the same in every configuration): McMahanCNN + cross-entropy + SGD (no metrics, no logging),
the first 10,000 MNIST training images, IID partition, E=1, B=10, C=0.1 (``clients_per_round = N // 10``).

(a) N in (10, 100, 1000), one process. 10,000 images make every configuration do *identical* work per
    round: 10% of the data = 1,000 samples = 100 full steps of 10 samples (N=10: 1 client x 100 steps;
    N=100: 10 clients x 10 steps; N=1000: 100 clients x 1 step). What changes is only the number of
    clients the round switches between (1, 10, 100: load global weights, reset the optimizer, fold the
    weights into the running sum) and the size of the partition, so this isolates the per-client cost.
(b) processes 1 -> 2 (``devices=1`` vs ``devices=2``, gloo on CPU) at N=100: the same 10 clients per round,
    split 5 + 5 over the two ranks. The devices=1 point is the N=100 point of (a).

Every configuration runs in a fresh subprocess (peak RSS never goes down; a process group cannot be
re-made in-process), which Lightning's popen launcher re-runs for rank 1. A round's time is measured in
the training process: the wall time between consecutive ``on_train_epoch_end`` calls, i.e. everything a
round costs (dataloader rebuild, client switches, steps, all-reduce, epoch-end hooks). Round 0 warms up
and is not measured; the reported value is the median of the measured rounds (rank 0's clock). Peak RSS
is each process's ``ru_maxrss`` at the end of its run.

On a 2-core machine Lightning gives 1 process 2 torch threads and each of 2 processes 1 thread
(threads = cores // processes unless OMP_NUM_THREADS/--threads is set), so the compute available per
round is the same 2 cores either way and the expected speedup from 2 processes is modest. On a shared
machine pass ``--threads 1``: a 2-thread process sharing 2 cores with one other busy process was measured
~30x slower per round (OpenMP threads spin-waiting for the busy core), which swamps what is measured here.

    python benchmarks/scaling.py
    python benchmarks/scaling.py --quick --synthetic --threads 1 --json /tmp/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` when run as a script from anywhere

from _common import (  # noqa: E402
    add_common_args,
    apply_threads,
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

# Set by Lightning's launcher or a surrounding pytest; a fresh child must pick its own port and ranks.


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000], help="values of N for (a)")
    p.add_argument("--process-clients", type=int, default=100, help="N for the processes 1 -> 2 comparison (b)")
    p.add_argument("--train-subset", type=int, default=10_000, help="first n MNIST training images")
    p.add_argument("--fraction", type=float, default=0.1, help="C: clients_per_round = max(1, round(C * N))")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (one warm-up round is added)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--quick", action="store_true", help="N in (10, 100), 1,000 images, 1 measured round")
    # Internal: train one configuration and write its result to a JSON file.
    p.add_argument("--child-clients", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-devices", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.process_clients, args.train_subset, args.rounds = [10, 100], 100, 1000, 1
    if args.child_clients is None and per_round(args, args.process_clients) < 2:
        p.error("--process-clients x --fraction must give >= 2 clients per round (one per process)")
    if args.rounds < 1 or min(args.clients) < 1 or max([*args.clients, args.process_clients]) > args.train_subset:
        p.error("need --rounds >= 1 and 1 <= every N <= --train-subset (each client needs data)")
    return args


def per_round(args: argparse.Namespace, num_clients: int) -> int:
    return min(num_clients, max(1, round(args.fraction * num_clients)))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(args: argparse.Namespace) -> None:
    """Train one configuration; rank 0 writes every rank's numbers to ``--child-out``."""
    import lightning as L
    import torch
    import torch.distributed as dist
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_fl import FedAvgStrategy

    class RoundTimer(Callback):
        """Wall time between consecutive round ends; the first round (warm-up) has no start mark."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self._mark: Optional[float] = None

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            now = time.perf_counter()
            if self._mark is not None:
                self.times.append(now - self._mark)
            self._mark = now

    apply_threads(args.threads)
    n = args.child_clients
    x, y = load_mnist_train(args.data, args.synthetic, args.train_subset, args.seed)
    torch.manual_seed(args.seed)
    module = make_minimal_module(args.lr)
    timer = RoundTimer()
    strategy = FedAvgStrategy(num_clients=n, clients_per_round=per_round(args, n), partition="iid", seed=args.seed)
    trainer = bench_trainer(
        strategy=strategy, devices=args.child_devices, max_epochs=args.rounds + 1, limit_val_batches=0, callbacks=[timer]
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)
    with no_worker_warning():
        trainer.fit(module, train_dataloaders=loader)
    plan = strategy.current_plan
    mine: dict[str, Any] = {
        "rank": trainer.global_rank,
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
        "local_steps_last_round": plan.local_steps if plan is not None else None,
    }
    ranks = [mine]
    if trainer.world_size > 1:
        ranks = [{} for _ in range(trainer.world_size)]
        dist.all_gather_object(ranks, mine)
    if trainer.global_rank == 0:
        result = {
            "clients": n,
            "devices": trainer.world_size,
            "clients_per_round": strategy.sampled_per_round,
            "samples_per_round": strategy.round_stats.get("fl/samples"),
            "steps_per_round": plan.num_steps if plan is not None else None,
            "s_per_round": timer.times,
            "median_s_per_round": median(timer.times),
            "ranks": ranks,
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in ranks),
        }
        Path(args.child_out).write_text(json.dumps(result))
    if trainer.world_size > 1:
        dist.barrier()  # leave together so no rank exits while another is still in a collective
        dist.destroy_process_group()


def measure(args: argparse.Namespace, num_clients: int, devices: int) -> dict[str, Any]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()),
        "--child-clients", str(num_clients), "--child-devices", str(devices),
        "--train-subset", str(args.train_subset), "--fraction", repr(args.fraction),
        "--batch-size", str(args.batch_size), "--rounds", str(args.rounds), "--lr", repr(args.lr),
        "--seed", str(args.seed), "--threads", str(args.threads), "--data", str(args.data),
        "--clients", str(num_clients), "--process-clients", str(num_clients),
    ]  # fmt: skip
    if args.synthetic:
        cmd.append("--synthetic")
    return run_child(cmd, f"N={num_clients}, devices={devices}")


def draw(axes: list[Any], payload: dict[str, Any]) -> None:
    """Seconds per round against N (one process), and one process against two at the same N."""
    clients, processes = axes
    sweep = payload["clients_sweep"]
    clients.plot([r["clients"] for r in sweep], [r["median_s_per_round"] for r in sweep], marker="o")
    clients.set_xscale("log")
    clients.set(xlabel="simulated clients N", ylabel="seconds per round (median)",
                title="1 process: same samples and steps per round")  # fmt: skip
    runs = payload["processes_sweep"]
    labels = [f"{r['devices']} process{'es' if r['devices'] > 1 else ''}" for r in runs]
    bars = processes.bar(labels, [r["median_s_per_round"] for r in runs], color=["C0", "C1"])
    processes.bar_label(bars, fmt="%.3g")
    processes.set(ylabel="seconds per round (median)",
                  title=f"N={runs[0]['clients']}: speedup {payload['speedup_2_vs_1_process']:.2f}x")  # fmt: skip


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    check_data(args.data, args.synthetic)
    if args.child_clients is not None:
        child(args)
        return 0

    configs = [(n, 1) for n in sorted(set(args.clients))]
    if (args.process_clients, 1) not in configs:
        configs.append((args.process_clients, 1))
    configs.append((args.process_clients, 2))
    results = []
    for n, devices in configs:
        r = measure(args, n, devices)
        print(
            f"N={n} devices={devices}: {r['median_s_per_round']:.3f} s/round, "
            f"peak RSS {' / '.join(str(round(x['peak_rss_mib'])) for x in r['ranks'])} MiB per process",
            flush=True,
        )
        results.append(r)

    by_key = {(r["clients"], r["devices"]): r for r in results}
    one, two = by_key[(args.process_clients, 1)], by_key[(args.process_clients, 2)]
    speedup = one["median_s_per_round"] / two["median_s_per_round"]
    cores = os.cpu_count() or 1
    t1, t2 = one["ranks"][0]["torch_threads"], sum(x["torch_threads"] for x in two["ranks"])
    who = (
        f"--threads {args.threads} is set" if args.threads > 0 else "Lightning sets torch threads = cores // processes"
    )
    same = (
        "the same threads do the work either way, so the 1 -> 2 process speedup is expected to be modest"
        if t1 == t2
        else "the 2-process run has more threads, so its speedup is not from the strategy alone"
    )
    note = f"{cores} cores, {who}: 1 process runs {t1} torch thread(s), 2 processes {t2} in total; {same}."
    payload = {
        "benchmark": "scaling",
        "config": {
            "train_subset": args.train_subset,
            "fraction": args.fraction,
            "batch_size": args.batch_size,
            "local_epochs": 1,
            "rounds_measured": args.rounds,
            "warmup_rounds": 1,
            "lr": args.lr,
            "seed": args.seed,
            "threads": args.threads,
            "synthetic": bool(args.synthetic),
            "model": "McMahanCNN (minimal module: CE + SGD)",
            "cpu_count": cores,
        },
        "clients_sweep": [r for r in results if r["devices"] == 1 and r["clients"] in args.clients],
        "processes_sweep": [one, two],
        "speedup_2_vs_1_process": speedup,
        "note": note,
    }
    write_json(args.json, payload)
    save_figure(args.png, lambda axes: draw(axes, payload), panels=2)
    print(f"\nnote: {note}")
    print(f"speedup 2 vs 1 process at N={args.process_clients}: {speedup:.2f}x\n")
    print(
        format_table(
            [
                "N",
                "processes",
                "clients/round",
                "samples/round",
                "steps/round/rank",
                "s/round (median)",
                "peak RSS MiB/process",
            ],
            [
                [
                    r["clients"],
                    r["devices"],
                    r["clients_per_round"],
                    int(r["samples_per_round"]) if r["samples_per_round"] is not None else "n/a",
                    r["steps_per_round"],
                    r["median_s_per_round"],
                    " / ".join(f"{x['peak_rss_mib']:.0f}" for x in r["ranks"]),
                ]
                for r in results
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
