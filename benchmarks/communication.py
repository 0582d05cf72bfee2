"""Bytes on the wire per rank: measured on the loopback interface vs the strategies' collective formulas.

For models of several sizes (MLPs of ~10k, ~100k, ~1M parameters and McMahanCNN, 1,663,370), one
2-process launch (``devices=2``, gloo over loopback) trains, one after the other in the same processes:

* ``FedAvgStrategy`` for a few rounds on tiny data. Its one all-reduce per round happens inside the round's
  last step. Rank 0 reads the ``lo`` transmit counter of ``/proc/net/dev`` at the start of the last step and
  at ``on_train_epoch_end`` (window A: one step + the all-reduce + epoch-end hooks), and around the step
  before it (window B: one step with no aggregation). A - B is the aggregation's traffic with the
  background of one step (Lightning's own small collectives, if any) taken out. Both ranks' traffic goes
  over ``lo``, so per rank = (A - B) / 2 (a 2-rank ring all-reduce is symmetric). It is compared with
  ``fl/comm_bytes``, the strategy's formula 2(W-1)/W * 4 * (P + 2) (the buffer carries Σw and a counter),
  and with the model size 4P. The reported value is the median over rounds.
* ``ParameterServerStrategy`` for a few steps after a warm-up: the ``lo`` counter over K consecutive steps,
  / 2 / K, vs the strategy's own ``bytes_pushed + bytes_pulled`` over the same steps (reduce-scatter +
  all-gather, (W-1)/W * 4 * padded P each). Every step has both collectives, so there is no collective-free
  window to subtract; the FedAvg window B shows how small the per-step background is.

* ``FedAvgStrategy(compression=...)`` (``--compressions``: none, 8-bit, top-k 10 % / 1 % / 0.1 % by default)
  on ``--compression-model`` (McMahanCNN), with the same windows as plain FedAvg: the exchange of the
  compressed uploads (one all-gather of a block per rank: counts, the round's bookkeeping sums and every
  client's fixed-size record) also runs in the round's last step. ``fl/comm_bytes`` there is what the
  strategy logs: the exchange, by the ring all-gather formula. The gather moves every
  client's upload, so the rows are per number of clients a process trains in the round
  (``--compression-clients-per-rank``, default 1 and 2: clients_per_round = 2 or 4 with 2 processes);
  1 is the cross-silo case and the issue's target (8-bit >= 3.5x, top-k 1 % >= 20x fewer bytes than none).

``lo`` counts IP packets, so TCP/IP headers and ACKs (and gloo's small control messages) are included:
a ratio slightly above 1 is expected. Where ``unshare -n`` works (root), the launch runs in its own
network namespace, so no other process on the machine can add to its ``lo`` counter; otherwise the
shared ``lo`` is used and traffic of other processes during a window would inflate it (noted in the
output). Without a readable ``/proc/net/dev`` only the formulas are reported.

    python benchmarks/communication.py
    python benchmarks/communication.py --quick --synthetic --threads 1 --json /tmp/comm.json
    python benchmarks/communication.py --only-compression --threads 1     # only the compressed-update rows
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
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

from lightning_fl.federated.compression import Quantize, TopK, allreduce_bytes, exchange_bytes  # noqa: E402

# MLP(784 -> h -> 10) has 795h + 10 parameters: ~10k, ~100k, ~1M; then the paper's CNN.
DEFAULT_MODELS = ("mlp:13", "mlp:126", "mlp:1258", "mcmahan_cnn")
WORLD = 2
DEFAULT_COMPRESSIONS = ("none", "q8", "topk0.1", "topk0.01", "topk0.001")
# Issue 13, acceptance 2: measured within 5 % of logged; fewer bytes than none by these factors (1 client/rank).
LOGGED_TOLERANCE = 0.05
TARGET_REDUCTION = {"q8": 3.5, "topk0.01": 20.0}
FORMULA_CLIENTS_PER_ROUND = (2, 10, 20, 100)  # the table computed from the formulas, W = 2


def make_compressor(spec: str) -> Optional[Quantize | TopK]:
    """``none``, ``qBITS`` (Quantize, default block size and error feedback) or ``topkFRACTION`` (TopK)."""
    if spec == "none":
        return None
    if spec.startswith("q") and spec[1:].isdigit():
        return Quantize(bits=int(spec[1:]))
    if spec.startswith("topk"):
        try:
            return TopK(fraction=float(spec[4:]))
        except ValueError:
            pass
    raise ValueError(f"--compressions: '{spec}' is none, qBITS or topkFRACTION")


def compression_label(spec: str) -> str:
    if spec == "none":
        return "none (all-reduce)"
    if spec.startswith("q"):
        return f"{spec[1:]}-bit"
    return f"top-k {float(spec[4:]) * 100:g} %"


def lo_tx_bytes() -> Optional[int]:
    """Bytes transmitted on the loopback interface so far (this network namespace), or None if unreadable."""
    try:
        with open("/proc/net/dev") as f:
            for line in f:
                name, sep, rest = line.partition(":")
                if sep and name.strip() == "lo":
                    return int(rest.split()[8])  # 8 receive columns come first
    except (OSError, ValueError, IndexError):
        return None
    return None


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma list of mlp:HIDDEN or mcmahan_cnn")
    p.add_argument("--rounds", type=int, default=4, help="FedAvg rounds (each one is measured)")
    p.add_argument("--ps-steps", type=int, default=10, help="parameter-server steps measured (after 2 warm-up)")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--steps-per-client", type=int, default=3, help="FedAvg: 2 clients, this many steps each")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--calibration-numel", type=int, default=1_000_000, help="floats in the raw-collective check")
    p.add_argument("--no-netns", action="store_true", help="use the shared lo even where `unshare -n` works")
    p.add_argument("--compressions", default=",".join(DEFAULT_COMPRESSIONS), help="comma list: none, qBITS, topkFRACTION")
    p.add_argument("--compression-model", default="mcmahan_cnn", help="mlp:HIDDEN or mcmahan_cnn")
    p.add_argument("--compression-clients-per-rank", default="1,2", help="comma list: clients each process trains")
    p.add_argument("--only-compression", action="store_true", help="skip the plain FedAvg / PS model sweep")
    p.add_argument("--quick", action="store_true", help="two small MLPs, 2 rounds, 3 PS steps")
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)  # internal: the 2-process run
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.rounds, args.ps_steps, args.calibration_numel = "mlp:13,mlp:126", 2, 3, 100_000
        args.compression_model, args.compressions, args.compression_clients_per_rank = "mlp:126", "none,q8,topk0.01", "1"
    args.model_list = [] if args.only_compression else [m.strip() for m in args.models.split(",") if m.strip()]
    args.compression_list = [c.strip() for c in args.compressions.split(",") if c.strip()]
    for c in args.compression_list:
        try:
            make_compressor(c)
        except ValueError as error:
            p.error(str(error))
    try:
        args.clients_per_rank = [int(c) for c in args.compression_clients_per_rank.split(",") if c.strip()]
    except ValueError:
        args.clients_per_rank = []
    if not args.clients_per_rank or min(args.clients_per_rank) < 1:
        p.error("--compression-clients-per-rank: a comma list of integers >= 1")
    for m in [*args.model_list, args.compression_model]:
        if m != "mcmahan_cnn" and not (m.startswith("mlp:") and m[4:].isdigit() and int(m[4:]) > 0):
            p.error(f"--models: '{m}' is neither mlp:HIDDEN nor mcmahan_cnn")
    if args.rounds < 1 or args.ps_steps < 1 or args.steps_per_client < 2:
        p.error(
            "need --rounds >= 1, --ps-steps >= 1 and --steps-per-client >= 2 (window B needs a step before the last)"
        )
    return args


def child(args: argparse.Namespace) -> None:
    """Runs in both ranks (Lightning's launcher re-runs this script); rank 0 writes the results."""
    import lightning as L
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from lightning.pytorch.callbacks import Callback
    from torch import Tensor, nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_fl import FedAvgStrategy, ParameterServerStrategy
    from lightning_fl.models import MLP, McMahanCNN

    class NetModule(L.LightningModule):
        """Network + cross-entropy + SGD; nothing logged, so no metric syncs add traffic."""

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=args.lr)

    class FedAvgWindows(Callback):
        """Window A = last step + all-reduce + epoch end; window B = the step before, no aggregation."""

        def __init__(self) -> None:
            self.rounds: list[dict[str, Any]] = []
            self._b0 = self._a0 = 0

        def on_train_batch_start(
            self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
        ) -> None:
            last = trainer.strategy.current_plan.num_steps - 1  # type: ignore[attr-defined]
            if batch_idx == last - 1:
                self._b0 = lo_tx_bytes() or 0
            elif batch_idx == last:
                self._a0 = lo_tx_bytes() or 0

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            end = lo_tx_bytes() or 0
            stats = trainer.strategy.round_stats  # type: ignore[attr-defined]
            self.rounds.append(
                {
                    "window_a_lo_bytes": end - self._a0,
                    "window_b_lo_bytes": self._a0 - self._b0,
                    "formula_bytes_per_rank": stats["fl/comm_bytes"],
                    "model_bytes": stats["fl/model_bytes"],
                }
            )

    class PSWindow(Callback):
        """lo bytes and the strategy's byte counters over steps warmup .. warmup + K - 1."""

        def __init__(self, warmup: int, steps: int) -> None:
            self.warmup, self.steps = warmup, steps
            self.result: dict[str, Any] = {}
            self._lo0 = self._counted0 = 0

        def _counted(self, trainer: L.Trainer) -> int:
            return trainer.strategy.bytes_pushed + trainer.strategy.bytes_pulled  # type: ignore[attr-defined]

        def on_train_batch_start(
            self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
        ) -> None:
            if trainer.global_step == self.warmup:
                self._lo0, self._counted0 = lo_tx_bytes() or 0, self._counted(trainer)

        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            if trainer.global_step == self.warmup + self.steps:  # global_step counts optimizer steps done
                self.result = {
                    "lo_bytes": (lo_tx_bytes() or 0) - self._lo0,
                    "formula_bytes_per_rank": self._counted(trainer) - self._counted0,
                    "steps": self.steps,
                }

    def build(spec: str) -> nn.Module:
        torch.manual_seed(args.seed)
        if spec == "mcmahan_cnn":
            return McMahanCNN(1, 10, 28)
        return MLP((1, 28, 28), 10, hidden=(int(spec[4:]),))

    def trainer_for(strategy: Any, callback: Callback, **kwargs: Any) -> L.Trainer:
        return bench_trainer(
            strategy=strategy, devices=WORLD, limit_val_batches=0, callbacks=[callback], **kwargs
        )

    apply_threads(args.threads)
    fed_n = 2 * args.steps_per_client * args.batch_size  # 2 clients (one per rank), full batches only
    warmup = 2
    ps_n = WORLD * args.batch_size * (warmup + args.ps_steps)  # one epoch covers every step
    x, y = load_mnist_train(args.data, args.synthetic, max(fed_n, ps_n), args.seed)
    results = []
    with no_worker_warning():
        for spec in args.model_list:
            fed_cb = FedAvgWindows()
            fed = trainer_for(
                FedAvgStrategy(num_clients=2, clients_per_round=2, seed=args.seed), fed_cb, max_epochs=args.rounds
            )
            loader = DataLoader(TensorDataset(x[:fed_n], y[:fed_n]), batch_size=args.batch_size, shuffle=True)
            model = NetModule(build(spec))
            fed.fit(model, train_dataloaders=loader)

            ps_cb = PSWindow(warmup, args.ps_steps)
            ps = trainer_for(ParameterServerStrategy(), ps_cb, max_steps=warmup + args.ps_steps, max_epochs=1)
            loader = DataLoader(TensorDataset(x[:ps_n], y[:ps_n]), batch_size=args.batch_size, shuffle=False)
            ps.fit(NetModule(build(spec)), train_dataloaders=loader)
            params = sum(p.numel() for p in model.parameters())
            results.append({"model": spec, "params": params, "fedavg_rounds": fed_cb.rounds, "ps": ps_cb.result})
        compressed = []
        # Error feedback on (the default); it changes what is sent, not how many bytes. The directory is
        # the same path on both ranks (both got --child-out), as the strategy's store needs.
        state_dir = Path(args.child_out).parent / "client_state"
        for per_rank in args.clients_per_rank:
            clients = WORLD * per_rank  # every client sampled every round: per_rank uploads on each rank
            n = clients * args.steps_per_client * args.batch_size
            cx, cy = load_mnist_train(args.data, args.synthetic, n, args.seed)
            for spec in args.compression_list:
                cb = FedAvgWindows()
                strategy = FedAvgStrategy(
                    num_clients=clients, clients_per_round=clients, seed=args.seed,
                    compression=make_compressor(spec), client_state_dir=str(state_dir / f"{spec}-{per_rank}"),
                )  # fmt: skip
                trainer = trainer_for(strategy, cb, max_epochs=args.rounds)
                loader = DataLoader(TensorDataset(cx, cy), batch_size=args.batch_size, shuffle=True)
                model = NetModule(build(args.compression_model))
                trainer.fit(model, train_dataloaders=loader)
                compressed.append(
                    {
                        "model": args.compression_model,
                        "params": sum(p.numel() for p in model.parameters()),
                        "compression": spec,
                        "clients_per_rank": per_rank,
                        "fedavg_rounds": cb.rounds,
                    }
                )
    collectives = calibrate_collectives(args.calibration_numel)
    if dist.get_rank() == 0:
        payload = {
            "results": results,
            "compressed": compressed,
            "collectives": collectives,
            "lo_readable": lo_tx_bytes() is not None,
            "threads": torch.get_num_threads(),
        }
        Path(args.child_out).write_text(json.dumps(payload))
    dist.barrier()  # leave together so no rank exits while another is still in a collective
    dist.destroy_process_group()


def calibrate_collectives(numel: int) -> dict[str, Optional[float]]:
    """lo bytes per rank of each raw collective on a float32 buffer, as a fraction of the buffer's bytes.

    A ring sends 2(W-1)/W of the buffer in an all-reduce and (W-1)/W in a reduce-scatter or all-gather;
    this shows what this torch build's gloo actually sends, which explains the strategies' ratios.
    """
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    full = torch.ones(numel)
    shard = torch.empty(numel // world)
    calls = {
        "all_reduce": lambda: dist.all_reduce(full),
        "reduce_scatter_tensor": lambda: dist.reduce_scatter_tensor(shard, full),
        "all_gather_into_tensor": lambda: dist.all_gather_into_tensor(full, shard),
    }
    out: dict[str, Optional[float]] = {}
    # A tiny all-gather (the exchange's counts): its lo bytes are all per-call overhead (TCP/IP headers,
    # ACKs, gloo's framing), the fixed cost each collective adds on top of its payload. Per rank, per call.
    counts, gathered, calls_n = torch.zeros(2, dtype=torch.int64), torch.empty(2 * world, dtype=torch.int64), 20
    dist.all_gather_into_tensor(gathered, counts)
    dist.barrier()
    before = lo_tx_bytes()
    for _ in range(calls_n):
        dist.all_gather_into_tensor(gathered, counts)
    dist.barrier()
    after = lo_tx_bytes()
    out["small_all_gather_bytes_per_call"] = (
        None if before is None or after is None else (after - before) / world / calls_n
    )
    for name, call in calls.items():
        call()  # warm-up: connection setup and buffers are not part of the steady state
        dist.barrier()
        before = lo_tx_bytes()
        call()
        dist.barrier()  # both ranks' sends are done; the two barriers add a few hundred bytes
        after = lo_tx_bytes()
        out[name] = None if before is None or after is None else (after - before) / world / (4 * numel)
    return out


def netns_available() -> bool:
    """Whether this user can run a command in a fresh network namespace with its own lo."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True)
    return probe.returncode == 0


def launch(args: argparse.Namespace, use_netns: bool) -> dict[str, Any]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()),
        "--models", ",".join(args.model_list) or "mlp:13",
        "--compressions", ",".join(args.compression_list), "--compression-model", args.compression_model,
        "--compression-clients-per-rank", ",".join(map(str, args.clients_per_rank)),
        "--rounds", str(args.rounds), "--ps-steps", str(args.ps_steps), "--batch-size", str(args.batch_size),
        "--steps-per-client", str(args.steps_per_client), "--lr", repr(args.lr), "--seed", str(args.seed),
        "--threads", str(args.threads), "--data", str(args.data),
        "--calibration-numel", str(args.calibration_numel),
    ]  # fmt: skip
    if args.synthetic:
        cmd.append("--synthetic")
    if not args.model_list:
        cmd.append("--only-compression")
    if use_netns:
        # A private lo (down in a new namespace until raised); rank 1, started by rank 0, inherits it.
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *cmd]
    return run_child(cmd, "the 2-process run")


def summarize(raw: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    measured_ok = raw["lo_readable"]
    for r in raw["results"]:
        rounds = r["fedavg_rounds"]
        formula = median([x["formula_bytes_per_rank"] for x in rounds])
        per_rank = [(x["window_a_lo_bytes"] - x["window_b_lo_bytes"]) / WORLD for x in rounds]
        ps = r["ps"]
        ps_formula = ps["formula_bytes_per_rank"] / ps["steps"]
        ps_measured = ps["lo_bytes"] / WORLD / ps["steps"]
        rows.append(
            {
                "model": r["model"],
                "params": r["params"],
                "model_bytes": 4 * r["params"],
                "fedavg_formula_bytes_per_rank_round": formula,
                "fedavg_measured_bytes_per_rank_round": median(per_rank) if measured_ok else None,
                "fedavg_measured_per_round": per_rank if measured_ok else None,
                "fedavg_background_lo_bytes_per_step": median([x["window_b_lo_bytes"] for x in rounds])
                if measured_ok
                else None,
                "fedavg_ratio": median(per_rank) / formula if measured_ok and formula else None,
                "ps_formula_bytes_per_rank_step": ps_formula,
                "ps_measured_bytes_per_rank_step": ps_measured if measured_ok else None,
                "ps_ratio": ps_measured / ps_formula if measured_ok and ps_formula else None,
                "ps_steps_measured": ps["steps"],
            }
        )
    return rows


def summarize_compressed(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (compression, clients per rank): median measured vs logged bytes, and the cut vs none."""
    measured_ok = raw["lo_readable"]
    rows = []
    for r in raw.get("compressed", []):
        rounds = r["fedavg_rounds"]
        logged = median([x["formula_bytes_per_rank"] for x in rounds])
        per_rank = [(x["window_a_lo_bytes"] - x["window_b_lo_bytes"]) / WORLD for x in rounds]
        measured = median(per_rank) if measured_ok else None
        comp = make_compressor(r["compression"])
        per_rank_clients = r["clients_per_rank"]
        rows.append(
            {
                "model": r["model"],
                "params": r["params"],
                "compression": r["compression"],
                "label": compression_label(r["compression"]),
                "clients_per_rank": per_rank_clients,
                "clients_per_round": WORLD * per_rank_clients,
                "upload_bytes_per_client": 4 * r["params"] if comp is None else comp.compressed_nbytes(r["params"]),
                "logged_bytes_per_rank_round": logged,
                "logged_per_round": [x["formula_bytes_per_rank"] for x in rounds],
                "measured_bytes_per_rank_round": measured,
                "measured_per_round": per_rank if measured_ok else None,
                "measured_over_logged": measured / logged if measured is not None and logged else None,
            }
        )
    for row in rows:  # the cut against the uncompressed round with the same clients per rank
        base = next(
            (b for b in rows if b["compression"] == "none" and b["clients_per_rank"] == row["clients_per_rank"]), None
        )
        row["logged_reduction_vs_none"] = base["logged_bytes_per_rank_round"] / row["logged_bytes_per_rank_round"] if base else None
        m, mb = row["measured_bytes_per_rank_round"], base and base["measured_bytes_per_rank_round"]
        row["measured_reduction_vs_none"] = mb / m if m and mb else None
        ok_logged = row["measured_over_logged"] is not None and abs(row["measured_over_logged"] - 1) <= LOGGED_TOLERANCE
        row["within_tolerance"] = ok_logged if measured_ok else None
        target = TARGET_REDUCTION.get(row["compression"]) if row["clients_per_rank"] == 1 else None
        row["target_reduction"] = target
        if target is not None:
            red = row["measured_reduction_vs_none"]
            row["passed"] = bool(ok_logged and red is not None and red >= target)
    return rows


def formula_rows(params: int, specs: list[str], bookkeeping: float, none_extra: float) -> list[dict[str, Any]]:
    """Bytes per rank per round from the formulas, W = 2, for more clients per round than measured.

    none: the ring all-reduce of P + 2 float32 values, whatever the number of clients; compressed: the
    exchange (counts + C/W records per rank) plus the bookkeeping sums it carries (read off the logged rows).
    """
    rows = []
    for clients in FORMULA_CLIENTS_PER_ROUND:
        per_rank = -(-clients // WORLD)
        none = allreduce_bytes(params + 2, WORLD) + none_extra
        row: dict[str, Any] = {"clients_per_round": clients, "clients_per_rank": per_rank}
        for spec in specs:
            comp = make_compressor(spec)
            b = none if comp is None else exchange_bytes(per_rank, comp, params, WORLD) + bookkeeping
            row[spec] = {"bytes_per_rank_round": b, "reduction_vs_none": none / b}
        rows.append(row)
    return rows


def draw_compressed(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Bytes per rank per round of each scheme: what the strategy logged (bars) and lo measured (dots)."""
    for i, per_rank in enumerate(sorted({r["clients_per_rank"] for r in rows})):
        sel = [r for r in rows if r["clients_per_rank"] == per_rank]
        xs = [j + 0.4 * i for j in range(len(sel))]
        ax.bar(xs, [r["logged_bytes_per_rank_round"] for r in sel], width=0.38, color=f"C{i}", alpha=0.6,
               label=f"logged fl/comm_bytes, {per_rank} client(s)/process")  # fmt: skip
        measured = [r["measured_bytes_per_rank_round"] for r in sel]
        if any(m is not None for m in measured):
            ax.plot(xs, [m if m is not None else float("nan") for m in measured], "o", color="k",
                    label="measured (lo)" if i == 0 else None)  # fmt: skip
        ax.set_xticks([j + 0.2 for j in range(len(sel))], [r["label"] for r in sel], rotation=20, fontsize="small")
    ax.set_yscale("log")
    model = rows[0]["model"] if rows else ""
    ax.set(ylabel="bytes per rank per round", title=f"FedAvg compressed uploads ({model}), 2 processes, gloo")


def draw(axes: list[Any], rows: list[dict[str, Any]]) -> None:
    """Bytes per rank against model size: the strategy's formula (line) and the loopback measurement (dots)."""
    params = [r["params"] for r in rows]
    for ax, what, unit in zip(axes, ("fedavg", "ps"), ("round", "step")):
        formula = [r[f"{what}_formula_bytes_per_rank_{unit}"] for r in rows]
        measured = [r[f"{what}_measured_bytes_per_rank_{unit}"] for r in rows]
        ax.plot(params, formula, "-", label="formula (what the strategy logs)")
        if any(m is not None for m in measured):
            ax.plot(params, [m if m is not None else float("nan") for m in measured], "o", label="measured (lo)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        name = "FedAvg all-reduce" if what == "fedavg" else "parameter server push + pull"
        ax.set(xlabel="parameters P", ylabel=f"bytes per rank per {unit}", title=f"{name}, 2 processes, gloo")


def print_compressed(
    crows: list[dict[str, Any]], formulas: list[dict[str, Any]], specs: list[str], coll: dict[str, Any]
) -> None:
    def num(v: Optional[float], fmt: str = "{:.0f}") -> str:
        return "n/a" if v is None else fmt.format(v)

    print(f"\nfedavg with compressed uploads ({crows[0]['model']}, P = {crows[0]['params']:,}), 2 processes: "
          "bytes per rank per round")  # fmt: skip
    table = []
    for r in crows:
        verdict = "" if "passed" not in r else ("PASS" if r["passed"] else "MISS")
        target = f">= {r['target_reduction']:g}x" if r["target_reduction"] else ""
        table.append(
            [
                r["label"], r["clients_per_rank"], r["upload_bytes_per_client"], num(r["logged_bytes_per_rank_round"]),
                num(r["measured_bytes_per_rank_round"]), num(r["measured_over_logged"], "{:.4f}"),
                num(r["logged_reduction_vs_none"], "{:.2f}x"), num(r["measured_reduction_vs_none"], "{:.2f}x"),
                target, verdict,
            ]
        )  # fmt: skip
    headers = ["scheme", "clients/process", "upload B/client", "logged B/rank/round", "measured B/rank/round",
               "measured/logged", "logged cut", "measured cut", "target", "result"]  # fmt: skip
    print(format_table(headers, table))
    small = coll.get("small_all_gather_bytes_per_call")
    if small is not None:
        print(f"per-call overhead on lo of a 16-byte all-gather: {small:.0f} B/rank (headers, ACKs, gloo framing)")
    print(f"result: measured within {LOGGED_TOLERANCE:.0%} of logged and the measured cut vs none (1 client/process)")
    print("\nfrom the formulas, 2 processes, clients split evenly: bytes per rank per round (cut vs none)")
    ftable = [
        [f["clients_per_round"], f["clients_per_rank"],
         *(f"{f[s]['bytes_per_rank_round']:.0f} ({f[s]['reduction_vs_none']:.2f}x)" for s in specs)]
        for f in formulas
    ]  # fmt: skip
    print(format_table(["clients/round", "clients/process", *(compression_label(s) for s in specs)], ftable))


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    check_data(args.data, args.synthetic)
    if args.child_out is not None:
        child(args)
        return 0

    readable = lo_tx_bytes() is not None
    use_netns = readable and not args.no_netns and netns_available()
    raw = launch(args, use_netns)
    rows = summarize(raw)
    crows = summarize_compressed(raw)
    formulas: list[dict[str, Any]] = []
    if crows:
        first = next((r for r in crows if r["compression"] != "none"), crows[0])
        comp = make_compressor(first["compression"])
        # What the logged rows add beyond the exchange's records: the round's bookkeeping sums in the block.
        bookkeeping = (
            first["logged_bytes_per_rank_round"]
            - exchange_bytes(first["clients_per_rank"], comp, first["params"], WORLD)
            if comp is not None
            else 0.0
        )
        none_row = next((r for r in crows if r["compression"] == "none"), None)
        none_extra = (
            none_row["logged_bytes_per_rank_round"] - allreduce_bytes(first["params"] + 2, WORLD) if none_row else 0.0
        )
        formulas = formula_rows(first["params"], args.compression_list, bookkeeping, none_extra)
    notes = [
        "measured = loopback (lo) transmit bytes of both ranks / 2; includes TCP/IP headers, ACKs and gloo "
        "control messages, so slightly above the formula is expected",
        "fedavg: per round = (window [last step start, epoch end] - window [previous step]) / 2, median over rounds",
        "parameter_server: per step = lo bytes over the measured steps / 2 / steps (no subtraction: every step "
        "has push and pull)",
        "own network namespace (unshare -n): no other process can add to lo" if use_netns else
        "shared network namespace: other processes' loopback traffic during a window would be counted",
    ]  # fmt: skip
    coll = raw["collectives"]
    ring = {"all_reduce": 2 * (WORLD - 1) / WORLD, "reduce_scatter_tensor": (WORLD - 1) / WORLD}
    ring["all_gather_into_tensor"] = ring["reduce_scatter_tensor"]
    rs = coll.get("reduce_scatter_tensor")
    if rs is not None and rs > 1.5 * ring["reduce_scatter_tensor"]:
        notes.append(
            f"gloo's reduce_scatter_tensor sent {rs:.2f}x its buffer per rank (a ring sends "
            f"{ring['reduce_scatter_tensor']:.2f}x): the parameter server's push costs about as much as an "
            "all-reduce here (the strategy's bytes_pushed counter accounts for this on gloo)"
        )
    if crows:
        notes.append(
            "compressed: the exchange all-gathers every client's record, so bytes grow with the clients a "
            "process trains while the uncompressed all-reduce does not; rows with 1 client per process are "
            "the cross-silo case (one client per process, the real uplink) and carry the issue's targets; "
            "the formula table shows more clients per round"
        )
    if not raw["lo_readable"]:
        notes = ["/proc/net/dev is not readable here: only the formula values are reported"]
    payload = {
        "benchmark": "communication",
        "config": {
            "world_size": WORLD,
            "backend": "gloo",
            "models": args.model_list,
            "fedavg_rounds": args.rounds,
            "fedavg_clients": 2,
            "steps_per_client": args.steps_per_client,
            "ps_steps": args.ps_steps,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "threads": args.threads,
            "synthetic": bool(args.synthetic),
            "isolated_netns": use_netns,
            "lo_readable": raw["lo_readable"],
        },
        "results": rows,
        "compressed": crows,
        "compressed_formulas_w2": formulas,
        "compressed_config": {
            "model": args.compression_model,
            "compressions": args.compression_list,
            "clients_per_rank": args.clients_per_rank,
            "error_feedback": True,
            "logged_tolerance": LOGGED_TOLERANCE,
            "target_reduction_1_client_per_rank": TARGET_REDUCTION,
        },
        "compressed_passed": all(r["passed"] for r in crows if "passed" in r) if crows else None,
        "collectives_bytes_per_rank_over_buffer": coll,
        "collectives_ring_formula": ring,
        "calibration_numel": args.calibration_numel,
        "notes": notes,
    }
    write_json(args.json, payload)

    def draw_all(axes: list[Any]) -> None:
        if rows:
            draw(axes[:2], rows)
        if crows:
            draw_compressed(axes[-1], crows)

    save_figure(args.png, draw_all, panels=(2 if rows else 0) + (1 if crows else 0) or 1)

    def whole(v: Optional[float]) -> Any:
        return "n/a" if v is None else int(round(v))

    def ratio(v: Optional[float]) -> Any:
        return "n/a" if v is None else f"{v:.3f}"

    print("\n".join(f"note: {n}" for n in notes))
    print(f"\nraw gloo collectives, 2 processes, {args.calibration_numel:,} floats: bytes sent per rank / buffer bytes")
    print(
        format_table(
            ["collective", "measured", "ring formula"],
            [[name, ratio(coll.get(name)), f"{ring[name]:.3f}"] for name in ring],
        )
    )
    if crows:
        print_compressed(crows, formulas, args.compression_list, coll)
    if not rows:
        return 0
    print("\nfedavg, 2 processes: bytes per rank per round (one all-reduce)")
    fed_headers = ["model", "params P", "model MB", "4P bytes", "formula B/rank/round", "measured B/rank/round"]
    fed_rows = [
        [
            r["model"],
            r["params"],
            r["model_bytes"] / 1e6,
            r["model_bytes"],
            whole(r["fedavg_formula_bytes_per_rank_round"]),
            whole(r["fedavg_measured_bytes_per_rank_round"]),
            ratio(r["fedavg_ratio"]),
            whole(r["fedavg_background_lo_bytes_per_step"]),
        ]
        for r in rows
    ]
    print(format_table([*fed_headers, "measured/formula", "background B/step (lo)"], fed_rows))
    print("\nparameter_server, 2 processes: bytes per rank per step (push + pull)")
    ps_rows = [
        [
            r["model"],
            r["params"],
            whole(r["ps_formula_bytes_per_rank_step"]),
            whole(r["ps_measured_bytes_per_rank_step"]),
            ratio(r["ps_ratio"]),
        ]
        for r in rows
    ]
    print(
        format_table(["model", "params P", "formula B/rank/step", "measured B/rank/step", "measured/formula"], ps_rows)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
