"""Seconds per round of FedProx and SCAFFOLD against FedAvg, on the workload of ``overhead.py``.

Three ``Trainer.fit`` calls (FedAvg, FedProx, SCAFFOLD) run in one process, each in its own thread, and
take turns one round at a time: a callback at the end of each round hands the turn to the next variant
and waits for it to come back, so exactly one variant computes at any moment and the rounds interleave
A B C, B C A, C A B, ... (the order rotates so no variant always follows the same one). Machine noise
therefore hits all three alike, as in ``overhead.py``'s alternation with a plain loop, but without
checkpoints or restarts: each fit runs uninterrupted from its own point of view.

A variant's time for round r is the wall time from getting the turn back after round r-1 to the end of
round r, i.e. everything its fit does per round and nothing of the others. Round 0 (setup, warm-up) is
not measured. The three fits share the data, initial weights, clients, batch orders and per-client
seeds; only the client algorithm differs.

Besides wall time, each round's CPU time of the fit's own thread is recorded (``time.thread_time``).
With ``--threads 1`` all of a fit's compute runs in its thread (CPU autograd runs in the caller's thread),
so CPU seconds do not count the time other processes on a shared machine take the core away; they are
the steadier measure of the work each algorithm adds.

    python benchmarks/algorithm_cost.py --threads 1      # 100 clients x 600 MNIST images, 10 per round
    python benchmarks/algorithm_cost.py --quick --synthetic --json /tmp/algorithm_cost.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

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
    make_minimal_module,
    median,
    no_worker_warning,
    save_figure,
    write_json,
)
from lightning.pytorch.callbacks import Callback  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_fl import FedAvgStrategy, FedProx, Scaffold  # noqa: E402
from lightning_fl.federated.partition import make_partition  # noqa: E402
from lightning_fl.federated.sampling import sample_clients  # noqa: E402

TARGET_RATIO = 1.15
VARIANTS = ("fedavg", "fedprox", "scaffold")


class Turns:
    """A fixed schedule of which variant may run; a variant blocks until the schedule reaches it.

    The schedule lists each variant once per round. A variant that stops (finished or failed) is skipped
    from then on, so one failure cannot leave the others waiting forever.
    """

    def __init__(self, schedule: list[int]) -> None:
        self._schedule = schedule
        self._pos = 0
        self._stopped: set[int] = set()
        self._cond = threading.Condition()

    def _skip_stopped(self) -> None:
        while self._pos < len(self._schedule) and self._schedule[self._pos] in self._stopped:
            self._pos += 1

    def wait(self, variant: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._pos >= len(self._schedule) or self._schedule[self._pos] == variant)

    def release(self, variant: int, stop: bool = False) -> None:
        with self._cond:
            if stop:
                self._stopped.add(variant)
            if self._pos < len(self._schedule) and self._schedule[self._pos] == variant:
                self._pos += 1
            self._skip_stopped()
            self._cond.notify_all()


class TurnTimer(Callback):
    """Times each round of one variant and hands the turn over at every round end."""

    def __init__(self, turns: Turns, variant: int, name: str, verbose: bool) -> None:
        self.turns, self.variant, self.name, self.verbose = turns, variant, name, verbose
        self.seconds: list[float] = []  # rounds 0..R; round 0 includes setup and warm-up
        self.cpu_seconds: list[float] = []  # the same spans, CPU time of this fit's thread
        self.state_bytes: list[Optional[float]] = []  # fl/client_state_bytes after each round
        self.mark = self.cpu_mark = 0.0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        self.seconds.append(now - self.mark)
        self.cpu_seconds.append(cpu - self.cpu_mark)
        self.state_bytes.append(trainer.strategy.round_stats.get("fl/client_state_bytes"))
        if self.verbose:
            print(
                f"round {trainer.current_epoch} {self.name}: {self.seconds[-1]:.3f}s (cpu {self.cpu_seconds[-1]:.3f}s)",
                flush=True,
            )
        self.turns.release(self.variant)
        self.turns.wait(self.variant)
        self.mark, self.cpu_mark = time.perf_counter(), time.thread_time()


def take_turns(
    names: Sequence[str],
    fit_one: Callable[[int, TurnTimer, str], L.Trainer],
    rounds: int,
    *,
    verbose: bool,
    timer: Callable[..., TurnTimer] = TurnTimer,
) -> tuple[list[TurnTimer], list[L.Trainer]]:
    """Run one ``Trainer.fit`` per variant, each in its own thread, one round at a time in a rotating order
    (A B C, B C A, C A B, ...), so machine noise hits every variant alike. ``fit_one(i, timer, state_dir)``
    builds and runs variant i's fit with ``timer`` among its callbacks (``state_dir``: a fresh directory for
    its per-client state or files). Returns the timers and trainers; a failed fit ends the run with its
    traceback."""
    n = len(names)
    turns = Turns([(r + i) % n for r in range(rounds) for i in range(n)])
    timers = [timer(turns, i, name, verbose=verbose) for i, name in enumerate(names)]
    trainers: list[Optional[L.Trainer]] = [None] * n
    errors: dict[str, str] = {}
    state_root = tempfile.TemporaryDirectory(prefix="interleaved-fits-")  # per-client state (same disk as /tmp)

    def fit(i: int) -> None:
        turns.wait(i)
        try:
            timers[i].mark, timers[i].cpu_mark = time.perf_counter(), time.thread_time()
            trainers[i] = fit_one(i, timers[i], str(Path(state_root.name) / names[i]))
        except BaseException:
            errors[names[i]] = traceback.format_exc()
        finally:
            turns.release(i, stop=True)

    with no_worker_warning(), state_root:
        threads = [threading.Thread(target=fit, args=(i,), name=f"fit-{v}") for i, v in enumerate(names)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        name, tb = next(iter(errors.items()))
        sys.exit(f"error: the {name} fit failed:\n{tb}")
    return timers, trainers  # type: ignore[return-value]


def interleave_fits(
    names: Sequence[str],
    make_strategy: Callable[[str, str], FedAvgStrategy],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    rounds: int,
    lr: float,
    seed: int,
    verbose: bool,
    timer: Callable[..., TurnTimer] = TurnTimer,
) -> tuple[list[TurnTimer], list[torch.nn.Module], list[L.Trainer]]:
    """:func:`take_turns` with the minimal module (same initial weights for every variant) on ``(x, y)``;
    ``make_strategy(name, state_dir)`` builds a variant's strategy. Returns timers, modules, trainers."""
    torch.manual_seed(seed)
    first = make_minimal_module(lr)
    modules = [first] + [copy.deepcopy(first) for _ in names[1:]]  # same initial weights

    def fit_one(i: int, turn_timer: TurnTimer, state_dir: str) -> L.Trainer:
        trainer = bench_trainer(
            strategy=make_strategy(names[i], state_dir), devices=1, max_epochs=rounds, limit_val_batches=0,
            callbacks=[turn_timer],
        )  # fmt: skip
        # The strategy replaces the sampler; shuffle=True is what a user would write.
        trainer.fit(modules[i], train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True))
        return trainer

    timers, trainers = take_turns(names, fit_one, rounds, verbose=verbose, timer=timer)
    return timers, modules, trainers


def paired_ratios(timers: Sequence[TurnTimer]) -> list[dict[str, list[float]]]:
    """Each variant's measured rounds (the warm-up round 0 left out) and their ratios to the first variant's
    round of the same index: the same stretch of machine load."""
    base, cpu_base = timers[0].seconds[1:], timers[0].cpu_seconds[1:]
    out = []
    for timer in timers:
        secs, cpu = timer.seconds[1:], timer.cpu_seconds[1:]
        out.append({
            "s_per_round": secs,
            "cpu_s_per_round": cpu,
            "ratio_per_round": [s / b for s, b in zip(secs, base)],
            "cpu_ratio_per_round": [s / b for s, b in zip(cpu, cpu_base)],
        })  # fmt: skip
    return out


def make_algorithm(name: str, mu: float) -> Any:
    return {"fedavg": None, "fedprox": FedProx(mu), "scaffold": Scaffold(1.0)}[name]


def run(args: argparse.Namespace) -> dict[str, Any]:
    x, y = load_mnist_train(args.data, args.synthetic, args.clients * args.samples_per_client, args.seed)
    rounds = args.rounds + 1

    def make_strategy(name: str, state_dir: str) -> FedAvgStrategy:
        return FedAvgStrategy(
            num_clients=args.clients, clients_per_round=args.per_round, local_epochs=args.local_epochs,
            partition="iid", seed=args.seed, client_algorithm=make_algorithm(name, args.mu), client_state_dir=state_dir,
        )  # fmt: skip

    timers, modules, _ = interleave_fits(
        VARIANTS, make_strategy, x, y, batch_size=args.batch_size, rounds=rounds, lr=args.lr, seed=args.seed,
        verbose=not args.quiet,
    )  # fmt: skip

    partition = make_partition("iid", len(y), args.clients, args.seed)
    steps = sum(
        -(-int(partition.sizes()[c]) // args.batch_size) * args.local_epochs
        for c in sample_clients(args.clients, args.per_round, args.seed, 0)
    )
    base, cpu_base = timers[0].seconds[1:], timers[0].cpu_seconds[1:]
    variants: dict[str, Any] = {}
    for name, timer, paired in zip(VARIANTS, timers, paired_ratios(timers)):
        secs, cpu = paired["s_per_round"], paired["cpu_s_per_round"]
        ratios, cpu_ratios = paired["ratio_per_round"], paired["cpu_ratio_per_round"]
        med = median(secs)
        variants[name] = {
            "s_per_round": secs,
            "warmup_s": timer.seconds[0],
            "median_s": med,
            "ratio_per_round": ratios,
            "median_ratio": median(ratios),
            "min_ratio": min(ratios),
            "max_ratio": max(ratios),
            "extra_ms_per_step": (med - median(base)) / steps * 1e3,
            "cpu_s_per_round": cpu,
            "median_cpu_s": median(cpu),
            "cpu_ratio_per_round": cpu_ratios,
            "median_cpu_ratio": median(cpu_ratios),
            "min_cpu_ratio": min(cpu_ratios),
            "max_cpu_ratio": max(cpu_ratios),
            "extra_cpu_ms_per_step": (median(cpu) - median(cpu_base)) / steps * 1e3,
            "client_state_bytes": timer.state_bytes,
        }
        if name != "fedavg":
            variants[name]["target_ratio"] = TARGET_RATIO
            variants[name]["passed"] = variants[name]["median_ratio"] <= TARGET_RATIO
    # Evidence that each fit ran its own algorithm: same start, same clients, different end.
    final = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in modules]
    for name, w in zip(VARIANTS[1:], final[1:]):
        variants[name]["max_abs_weight_diff_vs_fedavg"] = float((w - final[0]).abs().max())
    return {
        "benchmark": "algorithm_cost",
        "config": {
            "clients": args.clients,
            "samples_per_client": args.samples_per_client,
            "per_round": args.per_round,
            "local_epochs": args.local_epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "mu": args.mu,
            "scaffold_server_lr": 1.0,
            "module": "minimal (McMahanCNN + cross-entropy + SGD)",
            "seed": args.seed,
            "synthetic": bool(args.synthetic),
            "torch_threads": torch.get_num_threads(),
            "steps_per_round": steps,
            "schedule": "one round each in turn, order rotating every round, one thread per fit",
        },
        "rounds": args.rounds,
        "variants": variants,
        "target_ratio": TARGET_RATIO,
        "passed": all(v["passed"] for k, v in variants.items() if k != "fedavg"),
    }


def draw(axes: list[Any], result: dict[str, Any]) -> None:
    """Wall and CPU seconds per round of each variant, and the per-round ratios to FedAvg against the target."""
    seconds, ratio = axes
    rounds = list(range(1, result["rounds"] + 1))
    for i, (name, v) in enumerate(result["variants"].items()):
        seconds.plot(rounds, v["s_per_round"], marker="o", color=f"C{i}", label=f"{name} wall")
        seconds.plot(rounds, v["cpu_s_per_round"], marker=".", linestyle=":", color=f"C{i}", label=f"{name} cpu")
        if name != "fedavg":
            ratio.plot(rounds, v["ratio_per_round"], marker="o", color=f"C{i}",
                       label=f"{name} wall (median {v['median_ratio']:.3f})")  # fmt: skip
            ratio.plot(rounds, v["cpu_ratio_per_round"], marker=".", linestyle=":", color=f"C{i}",
                       label=f"{name} cpu (median {v['median_cpu_ratio']:.3f})")  # fmt: skip
    ratio.axhline(result["target_ratio"], color="C3", linestyle="--", label=f"target <= {result['target_ratio']:.2f}")
    seconds.set(xlabel="round", ylabel="seconds", title="seconds per round (interleaved)")
    ratio.set(xlabel="round", ylabel="ratio to FedAvg", title="cost relative to FedAvg, per round")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--samples-per-client", type=int, default=600, help="train set = clients x this (<= 60,000)")
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10, help="measured rounds per variant (one warm-up round is added)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--mu", type=float, default=0.01, help="FedProx's proximal weight")
    p.add_argument("--quick", action="store_true", help="20 clients x 30 samples, 4 per round, 2 rounds")
    p.add_argument("--quiet", action="store_true", help="no line per round")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.samples_per_client, args.per_round, args.rounds = 20, 30, 4, 2
    if args.rounds < 1 or args.per_round > args.clients or args.clients * args.samples_per_client > 60_000:
        p.error("need --rounds >= 1, --per-round <= --clients and --clients x --samples-per-client <= 60000")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    check_data(args.data, args.synthetic)
    apply_threads(args.threads)
    result = run(args)
    write_json(args.json, result)
    save_figure(args.png, lambda axes: draw(axes, result), panels=2)
    steps = result["config"]["steps_per_round"]
    print(f"\n{result['rounds']} measured rounds per variant, {steps} local steps per round, interleaved")
    rows = []
    for name, v in result["variants"].items():
        base = name == "fedavg"
        rows.append(
            [
                name if name != "fedprox" else f"fedprox (mu={args.mu:g})",
                v["median_s"],
                1.0 if base else v["median_ratio"],
                "" if base else f"{v['min_ratio']:.3f}-{v['max_ratio']:.3f}",
                v["median_cpu_s"],
                1.0 if base else v["median_cpu_ratio"],
                "" if base else f"{v['min_cpu_ratio']:.3f}-{v['max_cpu_ratio']:.3f}",
                "" if base else f"{v['extra_cpu_ms_per_step']:+.2f}",
                "" if base else f"<= {TARGET_RATIO:.2f}",
                "" if base else ("PASS" if v["passed"] else "MISS"),
            ]
        )
    headers = ["variant", "wall s/round", "ratio", "range", "cpu s/round", "cpu ratio", "cpu range",
               "cpu ms/step", "target", "result"]  # fmt: skip
    print(format_table(headers, rows))
    print("result: the median per-round wall-time ratio against the target; cpu columns: the fit thread's CPU time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
