"""Memory and time of robust aggregation with 100 clients per round of the McMahan CNN, and the cost of
skipping a failing client (issue 10, acceptance 4).

**Aggregation.** For each rule (FedAvg's mean, ``Median()``, ``TrimmedMean(0.1)``, ``Krum(20)``) and 1 and 2
processes, one fresh child process (its ``ru_maxrss`` is its own) fits ``--rounds`` rounds: 100 clients
(IID, 10 MNIST images each, one local SGD step of B = 10), all 100 sampled every round, so each round ends
with K = 100 updates of P = 1,663,370 floats. The strategy's round end (all-reduce of the counts,
the rule's ``aggregate`` with its collectives, the server step) is timed by a subclass of ``FedAvgStrategy``
that wraps ``_end_round``; around it every process reads its current RSS (``VmRSS``) and its peak
(``VmHWM``). "Extra peak" is round 0's ``VmHWM`` after the round end minus ``VmRSS`` before it, i.e. what
aggregation adds on top of the updates the process already holds. Each process's lifetime peak
(``ru_maxrss``) is reported too.

**Failing client.** One process, 10 clients per round (all sampled), 20 local steps each, the same CNN:
three fits, (a) every client healthy, (b) client 3's ``training_step`` raises at its first step, (c) at its
last step. A callback adds up the wall and CPU time of every training batch (hooks included) per client, so
the failing client's time in (b) and (c) is exactly what skipping it cost (its padding steps, the log line,
the traceback file); it is compared with the same client's training time in (a), and whole rounds are
compared too (round time (b)/(c) minus (a) against the client's own training time). Round 0 is warm-up.

    python benchmarks/robust_cost.py --threads 1 --json /tmp/robust_cost.json --png docs/figures/robust_cost.png
    python benchmarks/robust_cost.py --quick --synthetic --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` when run as a script from anywhere

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import (  # noqa: E402
    add_common_args,
    apply_threads,
    bench_trainer,
    check_data,
    format_table,
    load_mnist_train,
    no_worker_warning,
    run_child,
    save_figure,
    write_json,
)
from lightning.pytorch.callbacks import Callback  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_fl import FedAvgStrategy, Krum, Median, TrimmedMean  # noqa: E402
from lightning_fl.models import McMahanCNN  # noqa: E402

# Built from the cohort K: Krum's f = K/5 (20 at K = 100), the malicious share of the robustness benchmark.
RULES: dict[str, Any] = {
    "mean": lambda k: None,
    "Median": lambda k: Median(),
    "TrimmedMean(0.1)": lambda k: TrimmedMean(beta=0.1),
    "Krum(K/5)": lambda k: Krum(num_malicious=k // 5),
}
IMAGES_PER_CLIENT = 10
FAILING_CLIENT = 3
MB = 1e6


def _proc_status(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


class CNN(L.LightningModule):
    """McMahan CNN + cross-entropy + SGD; ``fail_at`` = (client, local step) whose ``training_step`` raises.
    ``tiny``: a linear model instead, so that ``--quick`` aggregates in milliseconds."""

    def __init__(self, lr: float = 0.05, fail_at: Optional[tuple[int, int]] = None, tiny: bool = False) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)) if tiny else McMahanCNN(1, 10, 28)
        self.lr = lr
        self.fail_at = fail_at
        self._client: Optional[int] = None
        self._local_step = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        client = self.trainer.strategy.current_client_id  # type: ignore[attr-defined]
        self._local_step = self._local_step + 1 if client == self._client else 0
        self._client = client
        if self.fail_at == (client, self._local_step):
            raise RuntimeError(f"simulated failure of client {client}")
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def on_train_epoch_start(self) -> None:
        self._client = None  # the same client in the next round starts at step 0 again

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class TimedFedAvg(FedAvgStrategy):
    """Times the round end (where aggregation happens) and reads RSS around it, on every process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rounds_measured: list[list[dict[str, float]]] = []  # per round: one dict per rank

    def _end_round(self, plan: Any) -> None:
        rss, hwm = _proc_status("VmRSS"), _proc_status("VmHWM")
        wall, cpu = time.perf_counter(), time.thread_time()
        super()._end_round(plan)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        stats = getattr(self.aggregator, "last_stats", None) or {}
        mine = {"round": plan.round_idx, "end_round_s": wall, "end_round_cpu_s": cpu, "rss_before": rss,
                "hwm_before": hwm, "hwm_after": _proc_status("VmHWM"), "maxrss": _maxrss_bytes(),
                "clients": len(plan.jobs), "bytes_sent": float(getattr(stats, "bytes_sent", 0))}  # fmt: skip
        if self.world_size > 1:  # outside the timed part: every rank's numbers reach rank 0
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, mine)
            self.rounds_measured.append(gathered)
        else:
            self.rounds_measured.append([mine])


def load_train(args: argparse.Namespace, n: int) -> TensorDataset:
    x, y = load_mnist_train(args.data, args.synthetic, subset=n, seed=0)
    return TensorDataset(x, y)


def child(args: argparse.Namespace) -> int:
    """One fit per rule of ``--rules`` on ``--devices`` processes; rank 0 writes every rank's measurements.
    (The real run gives each rule its own child, so each ``ru_maxrss`` is one rule's.)"""
    clients = args.clients
    train = load_train(args, clients * IMAGES_PER_CLIENT)
    out = []
    for rule in args.rule_list:
        L.seed_everything(0, verbose=False)
        module = CNN(tiny=args.quick)
        strategy = TimedFedAvg(
            num_clients=clients, clients_per_round=clients, local_steps=1, partition="iid", seed=0,
            aggregator=RULES[rule](clients), timeout=600,
        )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="fl-robust-cost-") as root, no_worker_warning():
            trainer = bench_trainer(
                strategy=strategy, devices=args.devices, max_epochs=args.rounds, default_root_dir=root
            )
            trainer.fit(module, train_dataloaders=DataLoader(train, batch_size=IMAGES_PER_CLIENT))
        params = sum(p.numel() for p in module.parameters())
        out.append({"rule": rule, "devices": args.devices, "clients": clients, "params": params,
                    "rounds": strategy.rounds_measured})  # fmt: skip
    if trainer.is_global_zero:
        write_json_quiet(args.child_out, {"fits": out})
    return 0


def write_json_quiet(path: Path, payload: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(payload))


class ClientTimes(Callback):
    """Wall and CPU seconds of every training batch (hooks included), added up per (round, client), and per
    round in total."""

    def __init__(self) -> None:
        self.per_client: dict[tuple[int, int], list[float]] = {}
        self.per_round: dict[int, list[float]] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._round0 = (time.perf_counter(), time.thread_time())

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._t0 = (time.perf_counter(), time.thread_time())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        client = trainer.strategy.current_client_id  # type: ignore[attr-defined]
        # The round's last batch has already ended the round (client None): count it as the last client's.
        key = (trainer.current_epoch, client if client is not None else self._last)
        self._last = key[1]
        acc = self.per_client.setdefault(key, [0.0, 0.0])
        acc[0] += time.perf_counter() - self._t0[0]
        acc[1] += time.thread_time() - self._t0[1]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.per_round[trainer.current_epoch] = [time.perf_counter() - self._round0[0],
                                                 time.thread_time() - self._round0[1]]  # fmt: skip


def failing_client(args: argparse.Namespace) -> dict[str, Any]:
    """Fits (a) healthy, (b) client 3 raising at its first step, (c) at its last; per-client and round times."""
    clients, steps = args.fail_clients, args.fail_steps
    train = load_train(args, clients * steps * IMAGES_PER_CLIENT)
    out: dict[str, Any] = {"clients": clients, "local_steps": steps, "failing_client": FAILING_CLIENT, "variants": {}}
    for name, fail_at in (("healthy", None), ("fails_first_step", 0), ("fails_last_step", steps - 1)):
        L.seed_everything(0, verbose=False)
        module = CNN(fail_at=None if fail_at is None else (FAILING_CLIENT, fail_at), tiny=args.quick)
        strategy = FedAvgStrategy(num_clients=clients, local_steps=steps, partition="iid", seed=0)
        times = ClientTimes()
        with tempfile.TemporaryDirectory(prefix="fl-robust-cost-") as root, no_worker_warning():
            trainer = bench_trainer(strategy=strategy, devices=1, max_epochs=args.fail_rounds, callbacks=[times],
                                    default_root_dir=root)  # fmt: skip
            trainer.fit(module, train_dataloaders=DataLoader(train, batch_size=IMAGES_PER_CLIENT))
            failed = float(trainer.callback_metrics.get("fl/failed_clients", torch.tensor(0.0)))
        rounds = [r for r in sorted(times.per_round) if r > 0] or [0]  # round 0 is warm-up
        out["variants"][name] = {
            "failed_clients_last_round": failed,
            "round_wall_s": [times.per_round[r][0] for r in rounds],
            "round_cpu_s": [times.per_round[r][1] for r in rounds],
            "client_wall_s": [times.per_client[(r, FAILING_CLIENT)][0] for r in rounds],
            "client_cpu_s": [times.per_client[(r, FAILING_CLIENT)][1] for r in rounds],
            "other_clients_cpu_s": [statistics.median(v[1] for (rr, c), v in times.per_client.items()
                                                      if rr == r and c != FAILING_CLIENT) for r in rounds],
        }  # fmt: skip
        print(f"  failing client: {name}: client {FAILING_CLIENT} cpu "
              f"{statistics.median(out['variants'][name]['client_cpu_s']):.3f} s, round cpu "
              f"{statistics.median(out['variants'][name]['round_cpu_s']):.3f} s", flush=True)  # fmt: skip
    healthy = out["variants"]["healthy"]
    own_cpu, own_wall = statistics.median(healthy["client_cpu_s"]), statistics.median(healthy["client_wall_s"])
    out["verdict"] = {}
    for name in ("fails_first_step", "fails_last_step"):
        v = out["variants"][name]
        skip_cpu, skip_wall = statistics.median(v["client_cpu_s"]), statistics.median(v["client_wall_s"])
        d_cpu = statistics.median(v["round_cpu_s"]) - statistics.median(healthy["round_cpu_s"])
        d_wall = statistics.median(v["round_wall_s"]) - statistics.median(healthy["round_wall_s"])
        out["verdict"][name] = {
            "own_training_cpu_s": own_cpu, "own_training_wall_s": own_wall,
            "failing_client_cpu_s": skip_cpu, "failing_client_wall_s": skip_wall,
            "round_cpu_diff_s": d_cpu, "round_wall_diff_s": d_wall,
            # The acceptance: a round with the raising client costs at most the client's own work more.
            "holds": d_cpu <= own_cpu,
        }  # fmt: skip
    return out


def aggregation(args: argparse.Namespace) -> list[dict[str, Any]]:
    script = str(Path(__file__).resolve())
    rows = []
    # --quick: all rules in one child per process count (start-up dominates); otherwise one child per rule.
    groups = [args.rule_list] if args.quick else [[r] for r in args.rule_list]
    fits = []
    for devices in args.device_list:
        for rules in groups:
            cmd = [sys.executable, script, "--child", "--rules", ",".join(rules), "--devices", str(devices),
                   "--clients", str(args.clients), "--rounds", str(args.rounds), "--threads", str(args.threads or 1),
                   "--data", str(args.data), *(["--synthetic"] if args.synthetic else []),
                   *(["--quick"] if args.quick else [])]  # fmt: skip
            t0 = time.perf_counter()
            got_all = run_child(cmd, f"{','.join(rules)} on {devices} process(es)")["fits"]
            fits += [(got, (time.perf_counter() - t0) / len(got_all)) for got in got_all]
    for got, child_wall in fits:
        rule, devices = got["rule"], got["devices"]
        per_rank = list(zip(*got["rounds"]))  # [rank][round]
        row = {
            "rule": rule, "devices": devices, "clients": got["clients"], "params": got["params"],
            "child_wall_s": child_wall,
            # The round's updates a holding rule keeps (float32); the mean streams them into one sum.
            "held_updates_mb": [r[0]["clients"] * got["params"] * 4 / MB * (rule != "mean") for r in per_rank],
            "rss_before_mb": [r[0]["rss_before"] / MB for r in per_rank],
            "extra_peak_mb": [(r[0]["hwm_after"] - r[0]["rss_before"]) / MB for r in per_rank],
            "maxrss_mb": [r[-1]["maxrss"] / MB for r in per_rank],
            # Every rank waits for the slowest in the collectives: the round's time is the max.
            "end_round_s": [max(x["end_round_s"] for x in rnd) for rnd in got["rounds"]],
            "end_round_cpu_s": [[x["end_round_cpu_s"] for x in rnd] for rnd in got["rounds"]],
            "bytes_sent_mb": [r[-1]["bytes_sent"] / MB for r in per_rank],
        }  # fmt: skip
        rows.append(row)
        print(f"  {rule:<16} W={devices}: round end {', '.join(f'{t:.2f}' for t in row['end_round_s'])} s, "
              f"extra peak {' / '.join(f'{m:+.0f}' for m in row['extra_peak_mb'])} MB, "
              f"maxrss {' / '.join(f'{m:.0f}' for m in row['maxrss_mb'])} MB", flush=True)  # fmt: skip
    return rows


def draw(axes: list[Any], result: dict[str, Any]) -> None:
    agg = result["aggregation"]
    labels = [f"{r['rule']} W={r['devices']}" for r in agg]
    ax = axes[0]
    x = range(len(agg))
    # CPU (last round, slowest rank) beside wall: on a shared machine the wall time is mostly waiting.
    ax.bar([i - 0.2 for i in x], [r["end_round_s"][-1] for r in agg], 0.4, color="C7", label="wall")
    ax.bar([i + 0.2 for i in x], [max(r["end_round_cpu_s"][-1]) for r in agg], 0.4, color="C0", label="CPU")
    ax.set_xticks(x, labels, fontsize=7, rotation=30, ha="right")
    ax.set(ylabel="round end, s (last round)", title=f"aggregation of K={agg[0]['clients']} updates")
    ax = axes[1]
    for i, r in enumerate(agg):
        base, extra = r["rss_before_mb"], r["extra_peak_mb"]
        w = 0.8 / len(base)
        for j, (b, e) in enumerate(zip(base, extra)):
            x = i - 0.4 + w * (j + 0.5)
            ax.bar(x, b, w, color="C7", label="RSS before aggregation" if i == j == 0 else None)
            ax.bar(x, e, w, bottom=b, color="C3", label="extra peak" if i == j == 0 else None)
    ax.set_xticks(range(len(agg)), labels, fontsize=7, rotation=30, ha="right")
    ax.set(ylabel="MB per process", title="peak RSS per process (one bar per rank)")
    fail = result.get("failing_client")
    if fail:
        ax = axes[2]
        names = [n for n in ("healthy", "fails_first_step", "fails_last_step") if n in fail["variants"]]
        own = [statistics.median(fail["variants"][n]["client_cpu_s"]) for n in names]
        ax.bar(range(len(names)), own, color=["C0", "C1", "C2"])
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set(ylabel="CPU s of client 3 per round", title="a failing client's cost vs its own work")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", default=",".join(RULES), help=f"comma-separated from {', '.join(RULES)}")
    p.add_argument("--devices", default="1,2", help="process counts (comma-separated); with --child: one")
    p.add_argument("--clients", type=int, default=100, help="clients per round (all sampled)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per aggregation fit")
    p.add_argument("--fail-clients", type=int, default=10)
    p.add_argument("--fail-steps", type=int, default=20)
    p.add_argument("--fail-rounds", type=int, default=3, help="rounds per failing-client fit (round 0 is warm-up)")
    p.add_argument("--skip-failing", action="store_true", help="only the aggregation part")
    p.add_argument("--quick", action="store_true", help="smoke run: a linear model, 10 clients, 1 round")
    p.add_argument("--from-json", type=Path, default=None, metavar="PATH",
                   help="no measuring: redo the tables (and --json/--png) from a finished run's JSON")  # fmt: skip
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    add_common_args(p)
    args = p.parse_args(argv)
    try:
        args.rule_list = [r.strip() for r in args.rules.split(",") if r.strip()]
        args.device_list = [int(d) for d in args.devices.split(",") if d.strip()]
    except ValueError as err:
        p.error(f"--devices: {err}")
    if not args.rule_list or any(r not in RULES for r in args.rule_list):
        p.error(f"--rules: choose from {', '.join(RULES)}")
    if not args.device_list or any(d < 1 for d in args.device_list):
        p.error("--devices: process counts must be >= 1")
    if args.quick:  # a linear model, 10 clients: TrimmedMean(0.1) trims one per side, Krum(2) needs K > 6
        args.clients, args.rounds, args.fail_clients, args.fail_steps, args.fail_rounds = 10, 1, 4, 3, 2
    if args.child:
        args.devices = args.device_list[0]
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        report(args, json.loads(Path(args.from_json).read_text()))
        return 0
    check_data(args.data, args.synthetic)
    apply_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning_fl").setLevel(logging.ERROR)  # the failing client's warning, on purpose
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    if args.child:
        return child(args)
    t0 = time.perf_counter()
    print(
        f"aggregation: {args.clients} clients per round, {'linear model' if args.quick else 'McMahan CNN'}, "
        f"{args.rounds} round(s) per fit",
        flush=True,
    )
    result: dict[str, Any] = {
        "benchmark": "robust_cost", "aggregation": aggregation(args),
        "config": {"rules": {r: repr(RULES[r](args.clients)) for r in args.rule_list}, "devices": args.device_list,
                   "clients": args.clients, "rounds": args.rounds, "threads": args.threads,
                   "synthetic": bool(args.synthetic), "quick": bool(args.quick), "cpus": os.cpu_count()},
    }  # fmt: skip
    if not args.skip_failing:
        print(f"failing client: {args.fail_clients} clients x {args.fail_steps} steps, {args.fail_rounds} rounds",
              flush=True)  # fmt: skip
        result["failing_client"] = failing_client(args)
    result["total_wall_s"] = time.perf_counter() - t0
    report(args, result)
    return 0


def report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """JSON, figure, and the tables (printed last)."""
    write_json(args.json, result)
    save_figure(args.png, lambda axes: draw(axes, result), panels=3 if "failing_client" in result else 2,
                size=(5, 3.6))  # fmt: skip
    print()
    print(format_table(
        ["rule", "W", "held updates MB/proc", "RSS before MB", "extra peak MB", "ru_maxrss MB", "round end s",
         "sent MB/proc"],
        [[r["rule"], r["devices"], " / ".join(f"{m:.0f}" for m in r["held_updates_mb"]),
          " / ".join(f"{m:.0f}" for m in r["rss_before_mb"]), " / ".join(f"{m:+.0f}" for m in r["extra_peak_mb"]),
          " / ".join(f"{m:.0f}" for m in r["maxrss_mb"]), ", ".join(f"{t:.2f}" for t in r["end_round_s"]),
          " / ".join(f"{m:.1f}" for m in r["bytes_sent_mb"])] for r in result["aggregation"]],
    ))  # fmt: skip
    if "failing_client" in result:
        print()
        print(format_table(
            ["variant", "client's own training CPU s", "failing client CPU s", "round CPU diff s",
             "round wall diff s", "holds"],
            [[n, v["own_training_cpu_s"], v["failing_client_cpu_s"], v["round_cpu_diff_s"], v["round_wall_diff_s"],
              v["holds"]]
             for n, v in result["failing_client"]["verdict"].items()],
        ))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
