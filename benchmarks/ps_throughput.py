"""``strategy="parameter_server"`` vs ``strategy="ddp"``: per-rank optimizer memory and training throughput.

(a) Optimizer state per rank, McMahanCNN (1,663,370 parameters), SGD with momentum and Adam, for S = 1
    and 2 processes: the parameter server's ``trainer.strategy.optimizer_state_bytes()`` (each rank holds
    the state of its 1/S bucket only) next to DDP's (the bytes of every state tensor of
    ``trainer.optimizers[0]``: each rank holds all of it). Read after 2 training steps, when the state exists.
(b) Throughput with ``devices=2`` (gloo, CPU), McMahanCNN, plain SGD, batch 32 per worker, the same MNIST
    images and initial weights for both. Both strategies train in one 2-process launch, alternating
    DDP, PS, DDP, PS, ... so that machine noise hits both alike. In each fit a callback on rank 0 times the
    steps after a warm-up: throughput = measured steps x 32 x 2 / (wall time from the end of the last
    warm-up step to the end of the last measured step). The reported value is the median over repeats.
    Target (issue 4): synchronous PS >= 0.8x DDP's throughput on CPU.

Every process count runs in a fresh subprocess, which Lightning's popen launcher re-runs for rank 1.
On 2 cores Lightning gives each of 2 processes one torch thread (unless --threads/OMP_NUM_THREADS is set).

    python benchmarks/ps_throughput.py
    python benchmarks/ps_throughput.py --quick --synthetic --threads 1 --json /tmp/ps.json
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
    apply_threads,
    bench_trainer,
    check_data,
    format_table,
    load_mnist_train,
    median,
    no_worker_warning,
    run_child,
    save_figure,
    write_json,
)

TARGET_RATIO = 0.8
OPTIMIZERS = ("sgd_momentum", "adam")
STRATEGIES = ("ddp", "parameter_server")
STATE_STEPS = 2


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=32, help="per worker")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--steps", type=int, default=50, help="measured steps per fit")
    p.add_argument("--repeats", type=int, default=3, help="fits per strategy, alternating DDP, PS, DDP, PS, ...")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--quick", action="store_true", help="2 warm-up + 5 measured steps, 1 repeat")
    p.add_argument("--child-devices", type=int, default=None, help=argparse.SUPPRESS)  # internal
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.warmup_steps, args.steps, args.repeats = 2, 5, 1
    if min(args.batch_size, args.warmup_steps, args.steps, args.repeats) < 1:
        p.error("--batch-size, --warmup-steps, --steps and --repeats must be >= 1")
    return args


def child(args: argparse.Namespace) -> None:
    """Runs in every rank; rank 0 writes every rank's numbers to ``--child-out``."""
    import lightning as L
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from lightning.pytorch.callbacks import Callback
    from torch import Tensor
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_fl import ParameterServerStrategy
    from lightning_fl.models import McMahanCNN

    class CNNModule(L.LightningModule):
        def __init__(self, optimizer: str) -> None:
            super().__init__()
            torch.manual_seed(args.seed)  # the same initial weights in every fit
            self.net = McMahanCNN(1, 10, 28)
            self.optimizer = optimizer

        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            if self.optimizer == "adam":
                return torch.optim.Adam(self.parameters(), lr=1e-3)
            momentum = 0.9 if self.optimizer == "sgd_momentum" else 0.0
            return torch.optim.SGD(self.parameters(), lr=args.lr, momentum=momentum)

    class StepTimer(Callback):
        """Wall time from the end of step ``warmup`` to the end of step ``warmup + steps``."""

        def __init__(self, warmup: int, steps: int) -> None:
            self.warmup, self.steps = warmup, steps
            self.elapsed: Optional[float] = None
            self._t0 = 0.0

        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            if trainer.global_step == self.warmup:
                self._t0 = time.perf_counter()
            elif trainer.global_step == self.warmup + self.steps:
                self.elapsed = time.perf_counter() - self._t0

    def make_strategy(name: str) -> Any:
        return ParameterServerStrategy() if name == "parameter_server" else "ddp"

    def fit(strategy: str, optimizer: str, steps: int, callbacks: list[Callback]) -> L.Trainer:
        trainer = bench_trainer(
            strategy=make_strategy(strategy), devices=args.child_devices, max_steps=steps, max_epochs=1,
            limit_val_batches=0, callbacks=callbacks,
        )
        n = args.batch_size * args.child_devices * steps  # one epoch holds every step
        # Sequential order; Lightning's DistributedSampler gives each rank its own half of it.
        loader = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=args.batch_size, shuffle=False)
        with no_worker_warning():
            trainer.fit(CNNModule(optimizer), train_dataloaders=loader)
        return trainer

    def state_bytes(trainer: L.Trainer, strategy: str) -> int:
        if strategy == "parameter_server":
            return int(trainer.strategy.optimizer_state_bytes())  # type: ignore[attr-defined]
        return sum(
            t.numel() * t.element_size()
            for state in trainer.optimizers[0].state.values()
            for t in state.values()
            if isinstance(t, torch.Tensor)
        )

    apply_threads(args.threads)
    devices = args.child_devices
    steps_total = args.warmup_steps + args.steps
    x, y = load_mnist_train(
        args.data, args.synthetic, args.batch_size * devices * max(steps_total, STATE_STEPS), args.seed
    )

    memory: list[dict[str, Any]] = []
    for optimizer in OPTIMIZERS:
        for strategy in STRATEGIES:
            trainer = fit(strategy, optimizer, STATE_STEPS, [])
            memory.append({"optimizer": optimizer, "strategy": strategy, "bytes": state_bytes(trainer, strategy)})
    params = sum(p.numel() for p in CNNModule("sgd").parameters())

    throughput: list[dict[str, Any]] = []
    if devices > 1:
        for repeat in range(args.repeats):
            for strategy in STRATEGIES:  # DDP first, then PS, every repeat
                timer = StepTimer(args.warmup_steps, args.steps)
                trainer = fit(strategy, "sgd", steps_total, [timer])
                elapsed = timer.elapsed if timer.elapsed is not None else float("nan")
                samples = args.steps * args.batch_size * devices
                throughput.append(
                    {"repeat": repeat, "strategy": strategy, "elapsed_s": elapsed, "samples_per_s": samples / elapsed}
                )

    ranks = [memory]
    if devices > 1:
        ranks = [[] for _ in range(devices)]
        dist.all_gather_object(ranks, memory)
    if not dist.is_initialized() or dist.get_rank() == 0:
        Path(args.child_out).write_text(
            json.dumps(
                {
                    "devices": devices,
                    "params": params,
                    "memory_by_rank": ranks,
                    "throughput": throughput,
                    "torch_threads": torch.get_num_threads(),
                }
            )
        )
    if devices > 1:
        dist.barrier()  # leave together so no rank exits while another is still in a collective
        dist.destroy_process_group()


def launch(args: argparse.Namespace, devices: int) -> dict[str, Any]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child-devices", str(devices),
        "--batch-size", str(args.batch_size), "--warmup-steps", str(args.warmup_steps), "--steps", str(args.steps),
        "--repeats", str(args.repeats), "--lr", repr(args.lr), "--seed", str(args.seed),
        "--threads", str(args.threads), "--data", str(args.data),
    ]  # fmt: skip
    if args.synthetic:
        cmd.append("--synthetic")
    return run_child(cmd, f"the {devices}-process run")


def draw(axes: list[Any], payload: dict[str, Any]) -> None:
    """Optimizer state per rank (largest rank), DDP against PS; throughput of each run and the medians."""
    memory, throughput = axes
    entries = payload["optimizer_state"]
    xs = list(range(len(entries)))
    for offset, (key, label) in ((-0.2, ("ddp_bytes_per_rank", "DDP")), (0.2, ("ps_bytes_per_rank", "PS"))):
        memory.bar([x + offset for x in xs], [max(m[key]) / 1e6 for m in entries], width=0.4, label=label)
    memory.set_xticks(xs)
    memory.set_xticklabels([f"{m['optimizer']}\nS={m['processes']}" for m in entries], fontsize="small")
    memory.set(ylabel="MB per rank", title="optimizer state (largest rank)")
    medians = [payload["ddp_samples_per_s"], payload["ps_samples_per_s"]]
    bars = throughput.bar(["DDP", "sync PS"], medians, color=["C0", "C1"], alpha=0.6, label="median")
    throughput.bar_label(bars, fmt="%.0f", label_type="center")
    runs = payload["throughput_runs"]
    throughput.plot([0 if r["strategy"] == "ddp" else 1 for r in runs], [r["samples_per_s"] for r in runs], "ko",
                    markersize=4, label="each run")  # fmt: skip
    throughput.set(ylabel="samples/s", title=f"2 processes: PS / DDP = {payload['ps_over_ddp']:.2f} "
                   f"(target >= {payload['target_ratio']:.2f})")  # fmt: skip


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    check_data(args.data, args.synthetic)
    if args.child_devices is not None:
        child(args)
        return 0

    runs = {s: launch(args, s) for s in (1, 2)}
    params = runs[1]["params"]
    memory: list[dict[str, Any]] = []
    for optimizer in OPTIMIZERS:
        for s, run in runs.items():
            per_rank = {st: [next(m["bytes"] for m in rank if m["optimizer"] == optimizer and m["strategy"] == st)
                             for rank in run["memory_by_rank"]] for st in STRATEGIES}  # fmt: skip
            ddp, ps = max(per_rank["ddp"]), max(per_rank["parameter_server"])
            memory.append(
                {
                    "optimizer": optimizer,
                    "processes": s,
                    "ddp_bytes_per_rank": per_rank["ddp"],
                    "ps_bytes_per_rank": per_rank["parameter_server"],
                    "ps_over_ddp": ps / ddp if ddp else None,  # the largest rank's, vs the ideal 1/S
                    "ideal": 1.0 / s,
                }
            )
    rows = runs[2]["throughput"]
    ddp_tp = median([r["samples_per_s"] for r in rows if r["strategy"] == "ddp"])
    ps_tp = median([r["samples_per_s"] for r in rows if r["strategy"] == "parameter_server"])
    ratio = ps_tp / ddp_tp
    passed = ratio >= TARGET_RATIO
    payload = {
        "benchmark": "ps_throughput",
        "config": {
            "model": "McMahanCNN",
            "params": params,
            "batch_size_per_worker": args.batch_size,
            "warmup_steps": args.warmup_steps,
            "measured_steps": args.steps,
            "repeats": args.repeats,
            "throughput_optimizer": "SGD (no momentum)",
            "lr": args.lr,
            "seed": args.seed,
            "threads": args.threads,
            "torch_threads_per_process_2proc": runs[2]["torch_threads"],
            "synthetic": bool(args.synthetic),
            "cpu_count": os.cpu_count(),
        },
        "optimizer_state": memory,
        "throughput_runs": rows,
        "ddp_samples_per_s": ddp_tp,
        "ps_samples_per_s": ps_tp,
        "ps_over_ddp": ratio,
        "target_ratio": TARGET_RATIO,
        "passed": passed,
    }
    write_json(args.json, payload)
    save_figure(args.png, lambda axes: draw(axes, payload), panels=2)

    order = ", ".join(f"{'DDP' if r['strategy'] == 'ddp' else 'PS'} {r['samples_per_s']:.0f}" for r in rows)
    print(f"throughput runs in order (samples/s): {order}")
    print(f"\n(a) optimizer state per rank, McMahanCNN ({params:,} parameters)")
    print(
        format_table(
            ["optimizer", "processes S", "DDP MB (per rank)", "PS MB (per rank)", "PS / DDP", "ideal 1/S"],
            [
                [m["optimizer"], m["processes"], " / ".join(f"{b / 1e6:.3f}" for b in m["ddp_bytes_per_rank"]),
                 " / ".join(f"{b / 1e6:.3f}" for b in m["ps_bytes_per_rank"]), m["ps_over_ddp"], m["ideal"]]
                for m in memory
            ],
        )
    )  # fmt: skip
    print(
        f"\n(b) throughput, 2 processes x batch {args.batch_size}, SGD, median of {args.repeats} "
        f"({runs[2]['torch_threads']} torch thread(s) per process, {os.cpu_count()} cores)"
    )
    print(
        format_table(
            ["DDP samples/s", "PS samples/s", "PS / DDP", "target", "result"],
            [[ddp_tp, ps_tp, ratio, f">= {TARGET_RATIO:.2f}", "PASS" if passed else "MISS"]],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
