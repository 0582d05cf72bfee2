"""Seconds per round of secure aggregation and of central DP against plain FedAvg, on the cross-device
workload of ``benchmarks/flower/`` (issue 9, acceptance 5), and how secure aggregation's cost grows
with the clients per round.

Part 1 (interleaved rounds). One ``Trainer.fit`` per variant, each in its own thread, taking turns one
round at a time with a rotating order, exactly as ``algorithm_cost.py`` does (its ``Turns`` and
``TurnTimer`` are reused): machine noise hits every variant alike. Variants, all on the same data,
initial weights, clients and batch orders (1,000 clients x 60 MNIST images, 100 per round, B = 10,
E = 1, McMahanCNN, lr 0.05):

- ``plain``: FedAvg;
- ``secure``: ``secure_aggregation=SecureAggregation()`` with its defaults. In one process (world size
  1) every pair of neighbours is inside the process, so no mask is added (they would cancel there and
  hide nothing, see docs/secure_aggregation.md): this is key agreement, shares and quantization;
- ``secure_masked``: the same with ``mask_same_process_pairs=True``: every client also expands and adds
  its k ChaCha20 masks, i.e. the client-side work of a real deployment, all done by this one process;
- ``dp``: ``privacy=CentralDP(noise_multiplier=1, clip_norm=1)``.

Targets: secure ≤ 1.5x plain, DP ≤ 1.1x plain (median over rounds of the per-round ratio; the secure
target is judged on ``secure_masked``, the deployment's work).

Part 2 (cost against clients per round K). ``SecAggRound`` alone, outside training, with the model's
numel and every mask expanded: setup (keys, shares) and add (quantize + masks) per round for K = 10, 100,
1,000, next to the counts of ``lightning_fl.federated.secure.cost_table`` (SecAgg+'s K·k masks against
full pairwise masking's K(K−1)). ``add`` is timed for at most ``--max-adds`` clients and scaled to K
(each client's add is the same work); a per-client split into quantization and mask expansion shows
where the time goes.

    python benchmarks/secure_cost.py --threads 1 --json benchmarks/results/secure_cost.json --png docs/figures/secure_cost.png
    python benchmarks/secure_cost.py --quick --synthetic --json /tmp/secure_cost.json     # seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` when run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    add_common_args,
    apply_threads,
    check_data,
    format_table,
    load_mnist_train,
    make_minimal_module,
    median,
    save_figure,
    write_json,
)
from algorithm_cost import interleave_fits, paired_ratios  # noqa: E402

from lightning_fl import FedAvgStrategy  # noqa: E402
from lightning_fl.federated.privacy import CentralDP  # noqa: E402
from lightning_fl.federated.secure import SecAggRound, SecureAggregation, cost_table  # noqa: E402
from lightning_fl.federated.secure import keys as sa_keys  # noqa: E402
from lightning_fl.federated.secure.prg import add_mask_  # noqa: E402
from lightning_fl.seeding import generator  # noqa: E402

VARIANTS = ("plain", "secure", "secure_masked", "dp")
TARGETS = {"secure": 1.5, "secure_masked": 1.5, "dp": 1.1}
JUDGED = ("secure_masked", "dp")  # the secure target is judged on the deployment's work


def make_variant(name: str) -> dict[str, Any]:
    if name == "secure":
        return {"secure_aggregation": SecureAggregation()}
    if name == "secure_masked":
        return {"secure_aggregation": SecureAggregation(mask_same_process_pairs=True)}
    if name == "dp":
        return {"privacy": CentralDP(noise_multiplier=1.0, clip_norm=1.0)}
    return {}


def interleaved(args: argparse.Namespace) -> dict[str, Any]:
    x, y = load_mnist_train(args.data, args.synthetic, args.clients * args.samples_per_client, args.seed)
    rounds = args.rounds + 1

    def make_strategy(name: str, state_dir: str) -> FedAvgStrategy:
        return FedAvgStrategy(
            num_clients=args.clients, clients_per_round=args.per_round, local_epochs=1, partition="iid",
            seed=args.seed, client_state_dir=state_dir, **make_variant(name),
        )  # fmt: skip

    timers, modules, trainers = interleave_fits(
        VARIANTS, make_strategy, x, y, batch_size=10, rounds=rounds, lr=args.lr, seed=args.seed,
        verbose=not args.quiet,
    )  # fmt: skip
    recovered = {
        name: float(t.callback_metrics.get("fl/clients", torch.tensor(-1.0))) if t is not None else None
        for name, t in zip(VARIANTS, trainers)
    }
    first = modules[0]
    cpu_base = timers[0].cpu_seconds[1:]
    variants: dict[str, Any] = {}
    final = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in modules]
    for name, timer, w, paired in zip(VARIANTS, timers, final, paired_ratios(timers)):
        secs, cpu = paired["s_per_round"], paired["cpu_s_per_round"]
        ratios, cpu_ratios = paired["ratio_per_round"], paired["cpu_ratio_per_round"]
        v = {
            "s_per_round": secs, "warmup_s": timer.seconds[0], "median_s": median(secs),
            "ratio_per_round": ratios, "median_ratio": median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
            "cpu_s_per_round": cpu, "median_cpu_s": median(cpu), "cpu_ratio_per_round": cpu_ratios,
            "median_cpu_ratio": median(cpu_ratios),
            "extra_cpu_ms_per_client": (median(cpu) - median(cpu_base)) / args.per_round * 1e3,
            "clients_last_round": recovered[name],
            "max_abs_weight_diff_vs_plain": float((w - final[0]).abs().max()),
        }  # fmt: skip
        if name in TARGETS:
            v["target_ratio"] = TARGETS[name]
            v["passed"] = v["median_ratio"] <= TARGETS[name]
        variants[name] = v
    numel = sum(p.numel() for p in first.parameters())
    return {"variants": variants, "numel": numel, "rounds": args.rounds}


def _time(fn: Any) -> tuple[float, float]:
    """(wall, thread CPU) seconds of ``fn()``."""
    t, c = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - t, time.thread_time() - c


def per_client_split(numel: int, clients: int, repeats: int = 3) -> dict[str, float]:
    """Where one client's ``add`` goes: stochastic quantization, one ChaCha20 keystream + add (one mask)."""
    cfg = SecureAggregation()
    rnd = SecAggRound(cfg, 0, list(range(clients)), [0] * clients, numel=numel)
    update = torch.randn(numel) * 1e-3
    quant = min(_time(lambda: rnd.fixed_point.encode(update, generator(0, "q", 0, 0)))[1] for _ in range(repeats))
    ring = np.zeros(numel + 2, dtype=np.uint32)
    key = bytes(range(32))
    mask = min(_time(lambda: add_mask_(ring, key, 1))[1] for _ in range(repeats))
    sk = sa_keys.generate_private_key()
    pk = sa_keys.public_bytes(sa_keys.generate_private_key())
    agree = min(_time(lambda: sa_keys.agree(sk, pk, "mask", 0, 0, 1))[1] for _ in range(repeats))
    return {"quantize_s": quant, "mask_s": mask, "key_agreement_s": agree}


def scaling(numel: int, cohorts: list[int], max_adds: int) -> list[dict[str, Any]]:
    """Setup and add time of one round at each K, every mask expanded (one process does all clients)."""
    rows = []
    counts = {r["clients"]: r for r in cost_table(cohorts, numel=numel)}
    update = torch.randn(numel) * 1e-3
    for k in cohorts:
        cfg = SecureAggregation(mask_same_process_pairs=True)
        rnd = SecAggRound(cfg, 0, list(range(k)), [0] * k, numel=numel)
        setup_s, setup_cpu = _time(rnd.setup)
        timed = min(k, max_adds)
        add_s, add_cpu = _time(lambda r=rnd, n=timed: [r.add(c, update, 1) for c in range(n)])
        scale = k / timed
        row = dict(counts[k])
        row.update(setup_s=setup_s, setup_cpu_s=setup_cpu, adds_timed=timed, add_s=add_s * scale,
                   add_cpu_s=add_cpu * scale, per_client_add_cpu_s=add_cpu / timed,
                   round_cpu_s=setup_cpu + add_cpu * scale)  # fmt: skip
        rows.append(row)
        print(f"K={k}: setup {setup_cpu:.3f}s cpu, add {add_cpu / timed * 1e3:.1f} ms cpu per client "
              f"({timed} timed)", flush=True)  # fmt: skip
    return rows


def draw(axes: list[Any], result: dict[str, Any]) -> None:
    ratio, growth = axes
    run = result["interleaved"]
    rounds = list(range(1, run["rounds"] + 1))
    for i, (name, v) in enumerate(run["variants"].items()):
        if name == "plain":
            continue
        ratio.plot(rounds, v["ratio_per_round"], marker="o", color=f"C{i}", label=f"{name} wall (median {v['median_ratio']:.2f})")
        ratio.plot(rounds, v["cpu_ratio_per_round"], marker=".", linestyle=":", color=f"C{i}",
                   label=f"{name} cpu (median {v['median_cpu_ratio']:.2f})")  # fmt: skip
    for name, target in (("secure", 1.5), ("dp", 1.1)):
        ratio.axhline(target, color="gray", linestyle="--", linewidth=0.8)
        ratio.annotate(f"{name} target {target}", (rounds[0], target), fontsize="x-small")
    ratio.set(xlabel="round", ylabel="ratio to plain FedAvg", title="cost per round, interleaved")
    ratio.xaxis.get_major_locator().set_params(integer=True)
    rows = result["scaling"]
    ks = [r["clients"] for r in rows]
    measured = [r["round_cpu_s"] for r in rows]
    growth.plot(ks, measured, marker="o", label="measured setup + add (cpu s)")
    # Full pairwise masking costs each client K−1 masks instead of k: scale the mask part accordingly.
    split = result["per_client"]
    full = [r["setup_cpu_s"] + r["clients"] * (split["quantize_s"] + (r["clients"] - 1) * split["mask_s"]) for r in rows]
    growth.plot(ks, full, marker="s", linestyle="--", label="full pairwise (K−1 masks/client), estimated")
    growth.set(xscale="log", yscale="log", xlabel="clients per round K", ylabel="cpu seconds per round",
               title="secure aggregation: SecAgg+ vs full pairwise")  # fmt: skip


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--samples-per-client", type=int, default=60)
    p.add_argument("--per-round", type=int, default=100)
    p.add_argument("--rounds", type=int, default=4, help="measured rounds per variant (one warm-up round is added)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--cohorts", default="10,100,1000", help="clients per round for the scaling table")
    p.add_argument("--max-adds", type=int, default=100, help="clients whose add is timed per K (scaled to K)")
    p.add_argument("--skip-interleaved", action="store_true", help="only the scaling table")
    p.add_argument("--quick", action="store_true", help="50 clients x 12 images, 10 per round, 1 round; small numel")
    p.add_argument("--quiet", action="store_true", help="no line per round")
    add_common_args(p)
    args = p.parse_args(argv)
    args.cohorts = [int(k) for k in args.cohorts.split(",")]
    if args.quick:
        args.clients, args.samples_per_client, args.per_round, args.rounds = 50, 12, 10, 1
        args.cohorts, args.max_adds = [10, 100], 5
    if args.rounds < 1 or args.per_round > args.clients or args.clients * args.samples_per_client > 60_000:
        p.error("need --rounds >= 1, --per-round <= --clients and --clients x --samples-per-client <= 60000")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    check_data(args.data, args.synthetic)
    apply_threads(args.threads)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner per fit
    numel = sum(p.numel() for p in make_minimal_module(args.lr).parameters())
    run = None if args.skip_interleaved else interleaved(args)
    scaling_numel = 100_000 if args.quick else numel  # --quick: seconds, not the model's 1.66 M values
    result = {
        "benchmark": "secure_cost",
        "config": {
            "clients": args.clients, "samples_per_client": args.samples_per_client, "per_round": args.per_round,
            "local_epochs": 1, "batch_size": 10, "lr": args.lr, "module": "minimal (McMahanCNN + cross-entropy + SGD)",
            "numel": numel, "scaling_numel": scaling_numel, "seed": args.seed, "synthetic": bool(args.synthetic),
            "torch_threads": torch.get_num_threads(), "dp": "CentralDP(noise_multiplier=1, clip_norm=1)",
            "secure": "SecureAggregation() defaults; secure_masked adds mask_same_process_pairs=True",
        },  # fmt: skip
        "interleaved": run,
        "per_client": per_client_split(scaling_numel, args.per_round),
        "scaling": scaling(scaling_numel, args.cohorts, args.max_adds),
    }
    if run is not None:
        result["passed"] = all(run["variants"][v]["passed"] for v in JUDGED)
    write_json(args.json, result)
    if run is not None:
        save_figure(args.png, lambda axes: draw(axes, result), panels=2)
        rows = []
        for name, v in run["variants"].items():
            t = TARGETS.get(name)
            rows.append([name, v["median_s"], 1.0 if t is None else v["median_ratio"],
                         "" if t is None else f"{v['min_ratio']:.2f}-{v['max_ratio']:.2f}", v["median_cpu_s"],
                         1.0 if t is None else v["median_cpu_ratio"],
                         "" if t is None else f"{v['extra_cpu_ms_per_client']:+.1f}",
                         "" if t is None else f"<= {t}",
                         "" if t is None else ("PASS" if v["passed"] else "MISS")])  # fmt: skip
        print(f"\n{run['rounds']} measured rounds per variant, {args.per_round} clients per round, interleaved")
        print(format_table(["variant", "wall s/round", "ratio", "range", "cpu s/round", "cpu ratio",
                            "cpu ms/client", "target", "result"], rows))  # fmt: skip
    s = result["per_client"]
    print(f"\nper client, numel {scaling_numel:,}: quantize {s['quantize_s'] * 1e3:.1f} ms, one mask "
          f"{s['mask_s'] * 1e3:.2f} ms, one key agreement {s['key_agreement_s'] * 1e3:.3f} ms (cpu)")  # fmt: skip
    rows = [[r["clients"], r["neighbors"], r["masks"], r["masks_full_pairwise"],
             f"{r['masks_full_pairwise'] / r['masks']:.1f}x", r["setup_cpu_s"], r["per_client_add_cpu_s"] * 1e3,
             r["round_cpu_s"], r["adds_timed"]] for r in result["scaling"]]  # fmt: skip
    print(format_table(["K", "k", "masks K*k", "masks K(K-1)", "ratio", "setup cpu s", "add cpu ms/client",
                        "round cpu s", "adds timed"], rows))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
