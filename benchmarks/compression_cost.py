"""Seconds per round that compressed updates add, on the workload of ``overhead.py`` (issue 13, acceptance 4).

McMahan's CNN (1,663,370 weights), 100 IID clients of 600 MNIST images, 10 per round, E = 1, B = 10:
uncompressed FedAvg, ``Quantize(8)`` and ``TopK(0.01)`` (both with error feedback) train in one process,
each ``Trainer.fit`` in its own thread, taking turns one round at a time in a rotating order (the
scheduling of ``algorithm_cost.py``, whose ``Turns`` and ``TurnTimer`` are reused): machine noise hits all
variants alike and no fit is restarted. Round 0 (setup, warm-up) is not measured.

Two measures, both from the same run:

* **round ratio** (the acceptance measure): a compressed variant's wall (and thread-CPU) seconds per round
  over uncompressed FedAvg's round of the same index. It holds everything compression costs: compressing
  with error feedback, reading and writing each client's residual, decoding and summing the uploads,
  and the strategy's different bookkeeping;
* **timed calls**: the compress (``compress_with_feedback``) and decode-and-sum (``CompressedUploads.exchange``)
  calls, wrapped with timers in this script (the package is not modified), as a share of the variant's own
  round. It isolates the compressor's math from the noise of whole rounds, but misses the residual I/O.

With one process the exchange moves nothing: it is the decode and sum that every process pays.

    python benchmarks/compression_cost.py --threads 1 --data ../shared/data/mnist.npz
    python benchmarks/compression_cost.py --quick --synthetic --json /tmp/compression_cost.json
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` when run as a script from anywhere

import torch  # noqa: E402
from _common import (  # noqa: E402
    add_common_args,
    apply_threads,
    check_data,
    format_table,
    load_mnist_train,
    median,
    save_figure,
    write_json,
)
from algorithm_cost import TurnTimer, interleave_fits, paired_ratios  # noqa: E402

import lightning_fl.strategies.fedavg as fedavg_module  # noqa: E402
from lightning_fl import FedAvgStrategy, Quantize, TopK  # noqa: E402
from lightning_fl.federated.compression import CompressedUploads  # noqa: E402

TARGET_RATIO = 1.10
VARIANTS: dict[str, Optional[Quantize | TopK]] = {"none": None, "q8": Quantize(bits=8), "topk1%": TopK(fraction=0.01)}


class CallTimes:
    """Wall and CPU seconds spent inside the wrapped calls, per thread (= per variant's fit) and round."""

    def __init__(self) -> None:
        self.local = threading.local()

    def reset(self) -> None:
        self.local.compress = [0.0, 0.0, 0]  # wall, cpu, calls
        self.local.decode = [0.0, 0.0, 0]

    def take(self) -> dict[str, list[float]]:
        out = {"compress": list(self.local.compress), "decode": list(self.local.decode)}
        self.reset()
        return out

    def wrap(self, key: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                acc = getattr(self.local, key)
                acc[0] += time.perf_counter() - t0
                acc[1] += time.thread_time() - c0
                acc[2] += 1

        return timed


class CostTimer(TurnTimer):
    """``TurnTimer`` that also records the timed calls of each round (before handing the turn over)."""

    def __init__(self, calls: CallTimes, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = calls
        self.per_round: list[dict[str, list[float]]] = []

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.calls.reset()  # the call times are per thread: start this fit's from zero, in its own thread

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.per_round.append(self.calls.take())
        super().on_train_epoch_end(trainer, pl_module)


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = list(VARIANTS)
    calls = CallTimes()
    # The strategy module imported the function by name: patch it there. exchange() is a method.
    fedavg_module.compress_with_feedback = calls.wrap("compress", fedavg_module.compress_with_feedback)
    CompressedUploads.exchange = calls.wrap("decode", CompressedUploads.exchange)  # type: ignore[method-assign]

    x, y = load_mnist_train(args.data, args.synthetic, args.clients * args.samples_per_client, args.seed)
    rounds = args.rounds + 1

    def make_strategy(name: str, state_dir: str) -> FedAvgStrategy:
        return FedAvgStrategy(
            num_clients=args.clients, clients_per_round=args.per_round, local_epochs=args.local_epochs,
            partition="iid", seed=args.seed, compression=VARIANTS[name], client_state_dir=state_dir,
        )  # fmt: skip

    timers, modules, _ = interleave_fits(
        names, make_strategy, x, y, batch_size=args.batch_size, rounds=rounds, lr=args.lr, seed=args.seed,
        verbose=not args.quiet, timer=lambda *a, **k: CostTimer(calls, *a, **k),
    )  # fmt: skip

    variants: dict[str, Any] = {}
    for name, timer, paired in zip(names, timers, paired_ratios(timers)):
        secs, cpu = paired["s_per_round"], paired["cpu_s_per_round"]
        ratios, cpu_ratios = paired["ratio_per_round"], paired["cpu_ratio_per_round"]
        measured = timer.per_round[1:]
        call_wall = [r["compress"][0] + r["decode"][0] for r in measured]
        call_cpu = [r["compress"][1] + r["decode"][1] for r in measured]
        v: dict[str, Any] = {
            "s_per_round": secs,
            "median_s": median(secs),
            "cpu_s_per_round": cpu,
            "median_cpu_s": median(cpu),
            "ratio_per_round": ratios,
            "median_ratio": median(ratios),
            "cpu_ratio_per_round": cpu_ratios,
            "median_cpu_ratio": median(cpu_ratios),
            "compress_calls_per_round": [r["compress"][2] for r in measured],
            "compress_s_per_round": [r["compress"][0] for r in measured],
            "compress_cpu_s_per_round": [r["compress"][1] for r in measured],
            "decode_s_per_round": [r["decode"][0] for r in measured],
            "decode_cpu_s_per_round": [r["decode"][1] for r in measured],
            # The timed calls against the rest of the same round (what the round would take without them).
            "calls_share_per_round": [c / (s - c) for c, s in zip(call_wall, secs)],
            "calls_cpu_share_per_round": [c / (s - c) for c, s in zip(call_cpu, cpu)],
        }
        v["median_calls_share"] = median(v["calls_share_per_round"])
        v["median_calls_cpu_share"] = median(v["calls_cpu_share_per_round"])
        if name != "none":
            v["target_ratio"] = TARGET_RATIO
            v["passed"] = v["median_ratio"] <= TARGET_RATIO
            v["passed_cpu"] = v["median_cpu_ratio"] <= TARGET_RATIO
            v["passed_calls"] = 1 + v["median_calls_share"] <= TARGET_RATIO
        variants[name] = v
    final = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in modules]
    for name, w in zip(names[1:], final[1:]):  # evidence that each fit really compressed
        variants[name]["max_abs_weight_diff_vs_none"] = float((w - final[0]).abs().max())
    return {
        "benchmark": "compression_cost",
        "config": {
            "clients": args.clients,
            "samples_per_client": args.samples_per_client,
            "per_round": args.per_round,
            "local_epochs": args.local_epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "module": "minimal (McMahanCNN + cross-entropy + SGD)",
            "variants": {k: repr(c) for k, c in VARIANTS.items()},
            "seed": args.seed,
            "synthetic": bool(args.synthetic),
            "torch_threads": torch.get_num_threads(),
            "devices": 1,
            "schedule": "one round each in turn, order rotating every round, one thread per fit",
        },
        "rounds": args.rounds,
        "variants": variants,
        "target_ratio": TARGET_RATIO,
        "passed": all(v["passed"] for k, v in variants.items() if k != "none"),
    }


def draw(axes: list[Any], result: dict[str, Any]) -> None:
    """Per-round ratio to uncompressed (wall and CPU) and the timed calls' share of each round."""
    ratio, share = axes
    rounds = list(range(1, result["rounds"] + 1))
    for i, (name, v) in enumerate(result["variants"].items()):
        if name == "none":
            continue
        ratio.plot(rounds, v["ratio_per_round"], marker="o", color=f"C{i}", label=f"{name} wall ({v['median_ratio']:.3f})")
        ratio.plot(rounds, v["cpu_ratio_per_round"], marker=".", linestyle=":", color=f"C{i}",
                   label=f"{name} cpu ({v['median_cpu_ratio']:.3f})")  # fmt: skip
        share.plot(rounds, [100 * s for s in v["calls_share_per_round"]], marker="o", color=f"C{i}", label=f"{name} wall")
        share.plot(rounds, [100 * s for s in v["calls_cpu_share_per_round"]], marker=".", linestyle=":",
                   color=f"C{i}", label=f"{name} cpu")  # fmt: skip
    ratio.axhline(result["target_ratio"], color="C3", linestyle="--", label=f"target <= {result['target_ratio']:.2f}")
    share.axhline(100 * (result["target_ratio"] - 1), color="C3", linestyle="--", label="target")
    ratio.set(xlabel="round", ylabel="ratio to uncompressed", title="round time vs uncompressed (interleaved)")
    share.set(xlabel="round", ylabel="% of the rest of the round", title="compress + decode calls, timed inside")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--samples-per-client", type=int, default=600, help="train set = clients x this (<= 60,000)")
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5, help="measured rounds per variant (one warm-up round is added)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--quick", action="store_true", help="12 clients x 20 samples, 3 per round, 1 round")
    p.add_argument("--quiet", action="store_true", help="no line per round")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.samples_per_client, args.per_round, args.rounds = 12, 20, 3, 1
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
    print(f"\n{result['rounds']} measured rounds per variant, interleaved, {args.per_round} clients per round")
    rows = []
    for name, v in result["variants"].items():
        base = name == "none"
        ms = 1e3 * median(v["compress_s_per_round"]) / max(1, median(v["compress_calls_per_round"]))
        rows.append(
            [
                name, v["median_s"], "1" if base else f"{v['median_ratio']:.3f}", v["median_cpu_s"],
                "1" if base else f"{v['median_cpu_ratio']:.3f}",
                "" if base else f"{ms:.1f}", "" if base else f"{1e3 * median(v['decode_s_per_round']):.1f}",
                "" if base else f"{100 * v['median_calls_share']:.2f}",
                "" if base else f"{100 * v['median_calls_cpu_share']:.2f}",
                "" if base else f"<= {TARGET_RATIO:.2f}", "" if base else ("PASS" if v["passed"] else "MISS"),
            ]
        )  # fmt: skip
    headers = ["variant", "wall s/round", "wall ratio", "cpu s/round", "cpu ratio", "compress ms/client",
               "decode ms/round", "calls % (wall)", "calls % (cpu)", "target", "result"]  # fmt: skip
    print(format_table(headers, rows))
    print("result: the median per-round wall-time ratio to uncompressed; calls %: timed compress + decode calls "
          "over the rest of the same round")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
