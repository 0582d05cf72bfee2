"""Peak RSS of one process simulating N federated clients, for N = 10, 100, 1000 on the same data.

Every N trains in a fresh subprocess (peak RSS never goes down, so runs must not share a process):
``FedAvgStrategy(num_clients=N, clients_per_round=min(10, N))`` with McMahanCNN on the first 6,000 MNIST
training images, E=1, B=10, 2 rounds, IID partition. The child reports ``ru_maxrss`` as JSON on its
last stdout line. The target is that 1,000 clients cost at most 1.2x the memory of 10 clients, i.e.
per-client state is O(1) (the partition is one permutation plus offsets; aggregation is a running sum).

``--client-algorithm scaffold`` runs the same with SCAFFOLD, whose per-client control variates (one
model-sized vector for every client that ever trained) must live on disk, not in RAM. Each child then
also reports the client-state directory after every round (measured before the strategy removes it at
the end of fit) and the disk all N clients would take once each has trained (N x 4 bytes x parameters).

    python benchmarks/memory_clients.py
    python benchmarks/memory_clients.py --client-algorithm scaffold
    python benchmarks/memory_clients.py --quick --synthetic --json /tmp/memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` when run as a script from anywhere

from _common import (  # noqa: E402
    REPO_ROOT,
    add_common_args,
    apply_threads,
    bench_trainer,
    check_data,
    format_table,
    load_mnist_train,
    no_worker_warning,
    plot_lines,
    save_figure,
    write_json,
)

TARGET_RATIO = 1.2


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0), so a later ru_maxrss covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000], help="values of N to measure")
    p.add_argument("--train-subset", type=int, default=6000, help="first n MNIST training images, shared by all N")
    p.add_argument("--per-round", type=int, default=10, help="clients per round (capped at N)")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument(
        "--client-algorithm",
        choices=("fedavg", "fedprox", "scaffold"),
        default="fedavg",
        help="client algorithm of every run (scaffold: control variates on disk, their size reported)",
    )
    p.add_argument("--quick", action="store_true", help="N in (10, 100), 200 images, 1 round")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # internal: train N clients, report
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.train_subset, args.rounds = [10, 100], 200, 1
    if args.rounds < 1 or min(args.clients) < 1 or max(args.clients) > args.train_subset:
        p.error("need --rounds >= 1 and 1 <= every --clients value <= --train-subset (each client needs data)")
    return args


def dir_usage(path: Path) -> tuple[int, int, int]:
    """(files, apparent bytes, allocated bytes) of the regular files under ``path``."""
    files = apparent = allocated = 0
    for root, _, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(root, name))
            files += 1
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return files, apparent, allocated


def make_disk_probe(directory: Path) -> Any:
    """A callback that records the client-state directory and the strategy's metric after every round.

    The strategy deletes the directory when fit ends, so it must be measured while training runs.
    """
    from lightning.pytorch.callbacks import Callback

    class DiskProbe(Callback):
        def __init__(self) -> None:
            self.rounds: list[dict[str, Any]] = []

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            files, apparent, allocated = dir_usage(directory)
            metric = trainer.strategy.round_stats.get("fl/client_state_bytes")
            self.rounds.append(
                {"files": files, "apparent_bytes": apparent, "allocated_bytes": allocated, "metric_bytes": metric}
            )

    return DiskProbe()


def child(args: argparse.Namespace, num_clients: int) -> dict[str, Any]:
    """Train ``num_clients`` simulated clients in this process and report its peak RSS."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_fl import FedAvgStrategy, FedProx, Scaffold
    from lightning_fl.models import ImageClassifier

    apply_threads(args.threads)
    x, y = load_mnist_train(args.data, args.synthetic, args.train_subset, args.seed)
    torch.manual_seed(args.seed)
    module = ImageClassifier(arch="mcmahan_cnn", in_shape=(1, 28, 28), lr=args.lr)
    before_fit = peak_rss_mib()  # imports + data + model: identical for every N
    # With the high-water mark reset, the peak after fit() is the peak *during* fit(): the part that could
    # depend on N. The process peak is then max(before, during), i.e. what ru_maxrss alone would report.
    can_reset = reset_peak_rss()
    algorithm = {"fedavg": None, "fedprox": FedProx(0.01), "scaffold": Scaffold(1.0)}[args.client_algorithm]
    with tempfile.TemporaryDirectory(prefix="memory_clients-") as state_dir:
        strategy = FedAvgStrategy(
            num_clients=num_clients,
            clients_per_round=min(args.per_round, num_clients),
            local_epochs=args.local_epochs,
            partition="iid",
            seed=args.seed,
            client_algorithm=algorithm,
            client_state_dir=state_dir,  # not under the working directory (the default root)
        )
        probe = make_disk_probe(Path(state_dir))
        trainer = bench_trainer(
            strategy=strategy, devices=1, max_epochs=args.rounds, limit_val_batches=0, callbacks=[probe]
        )
        loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)
        with no_worker_warning():
            trainer.fit(module, train_dataloaders=loader)
        during_fit = peak_rss_mib()
        left_after_fit = dir_usage(Path(state_dir))[0]  # the strategy removes its run directory at the end
    params = sum(p.numel() for p in module.parameters())
    last = probe.rounds[-1] if probe.rounds else {}
    return {
        "clients": num_clients,
        "peak_rss_mib": max(before_fit, during_fit),
        "before_fit_rss_mib": before_fit,
        "fit_peak_rss_mib": during_fit if can_reset else None,
        "rounds_done": trainer.current_epoch,
        "train_samples": len(y),
        "params": params,
        "client_state_per_round": probe.rounds,
        "client_state_files": last.get("files", 0),
        "client_state_bytes": last.get("apparent_bytes", 0),
        "client_state_allocated_bytes": last.get("allocated_bytes", 0),
        "client_state_metric_bytes": last.get("metric_bytes"),
        "client_state_files_left_after_fit": left_after_fit,
        # What the store reaches once every client has trained: one float32 vector per client.
        "projected_all_clients_bytes": num_clients * 4 * params if args.client_algorithm == "scaffold" else 0,
    }


def child_command(args: argparse.Namespace, num_clients: int) -> list[str]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(num_clients),
        "--train-subset",
        str(args.train_subset),
        "--per-round",
        str(args.per_round),
        "--local-epochs",
        str(args.local_epochs),
        "--batch-size",
        str(args.batch_size),
        "--rounds",
        str(args.rounds),
        "--lr",
        repr(args.lr),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        "--data",
        str(args.data),
        "--clients",
        str(num_clients),
        "--client-algorithm",
        args.client_algorithm,
    ]
    if args.synthetic:
        cmd.append("--synthetic")
    return cmd


def measure(args: argparse.Namespace, num_clients: int) -> dict[str, Any]:
    proc = subprocess.run(child_command(args, num_clients), cwd=REPO_ROOT, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-20:])
        sys.exit(f"error: the run with {num_clients} clients failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def draw_with_disk(axes: list[Any], results: list[dict[str, Any]], rss: dict[str, tuple[list, list]]) -> None:
    """Peak RSS against N, and the client-state disk: measured after the last round and all-clients bound."""
    memory, disk = axes
    for label, (xs, ys) in rss.items():
        memory.plot(xs, ys, marker="o", label=label)
    memory.set(xlabel="simulated clients N", ylabel="peak RSS (MiB)", title="Peak memory (SCAFFOLD)")
    ns = [r["clients"] for r in results]
    disk.plot(ns, [r["client_state_bytes"] / 1e6 for r in results], marker="o", label="measured after training")
    disk.plot(ns, [r["projected_all_clients_bytes"] / 1e6 for r in results], marker="o", linestyle="--",
              label="every client trained (N x 4 x params)")  # fmt: skip
    disk.set(xlabel="simulated clients N", ylabel="MB on disk", title="SCAFFOLD control variates on disk")
    disk.set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    check_data(args.data, args.synthetic)
    if args.child is not None:
        print(json.dumps(child(args, args.child)), flush=True)  # last stdout line: read by the parent
        return 0

    results = []
    for n in sorted(set(args.clients)):
        r = measure(args, n)
        during = "n/a" if r["fit_peak_rss_mib"] is None else f"{r['fit_peak_rss_mib']:.1f} MiB"
        print(
            f"N={n}: peak RSS {r['peak_rss_mib']:.1f} MiB "
            f"(before fit {r['before_fit_rss_mib']:.1f} MiB, during fit {during})",
            flush=True,
        )
        results.append(r)
    base = results[0]["peak_rss_mib"]
    fit_base = results[0]["fit_peak_rss_mib"]
    for r in results:
        r["ratio"] = r["peak_rss_mib"] / base
        r["fit_ratio"] = r["fit_peak_rss_mib"] / fit_base if fit_base and r["fit_peak_rss_mib"] else None
    worst = results[-1]["ratio"]  # largest N vs smallest N
    passed = worst <= TARGET_RATIO
    payload = {
        "benchmark": "memory_clients",
        "config": {
            "train_subset": args.train_subset,
            "per_round": args.per_round,
            "local_epochs": args.local_epochs,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "lr": args.lr,
            "seed": args.seed,
            "threads": args.threads,
            "synthetic": bool(args.synthetic),
            "partition": "iid",
            "model": "ImageClassifier(mcmahan_cnn)",
            "client_algorithm": args.client_algorithm,
        },
        "results": results,
        "ratio_largest_vs_smallest": worst,
        "target_ratio": TARGET_RATIO,
        "passed": passed,
    }
    write_json(args.json, payload)
    rss_series = {
        name: ([r["clients"] for r in results], [r[key] if r[key] is not None else float("nan") for r in results])
        for name, key in (
            ("peak RSS (process)", "peak_rss_mib"),
            ("RSS before fit", "before_fit_rss_mib"),
            ("peak RSS during fit", "fit_peak_rss_mib"),
        )
    }
    if args.client_algorithm == "scaffold":
        save_figure(args.png, lambda axes: draw_with_disk(axes, results, rss_series), panels=2)
    else:
        plot_lines(
            args.png,
            rss_series,
            "simulated clients N",
            "peak RSS (MiB)",
            "Peak memory vs number of simulated clients"
            + ("" if args.client_algorithm == "fedavg" else f" ({args.client_algorithm})"),
            logx=True,
        )
    print(
        f"\nratio {results[-1]['clients']} vs {results[0]['clients']} clients: {worst:.3f} "
        f"(target <= {TARGET_RATIO}) -> {'PASS' if passed else 'MISS'}"
    )
    print(
        format_table(
            [
                "clients",
                "peak RSS MiB",
                "before fit",
                "during fit",
                "during-fit ratio",
                "ratio vs smallest",
                "target",
                "result",
            ],
            [
                [
                    r["clients"],
                    r["peak_rss_mib"],
                    r["before_fit_rss_mib"],
                    "n/a" if r["fit_peak_rss_mib"] is None else r["fit_peak_rss_mib"],
                    "n/a" if r["fit_ratio"] is None else r["fit_ratio"],
                    r["ratio"],
                    f"<= {TARGET_RATIO:.2f}",
                    "PASS" if r["ratio"] <= TARGET_RATIO else "MISS",
                ]
                for r in results
            ],
        )
    )
    if args.client_algorithm == "scaffold":
        print(f"\nclient-state disk at the end of training ({args.rounds} rounds), and with every client trained:")
        print(
            format_table(
                ["clients", "files", "disk MB", "allocated MB", "fl/client_state_bytes MB", "all clients MB"],
                [
                    [
                        r["clients"],
                        r["client_state_files"],
                        r["client_state_bytes"] / 1e6,
                        r["client_state_allocated_bytes"] / 1e6,
                        "n/a" if r["client_state_metric_bytes"] is None else r["client_state_metric_bytes"] / 1e6,
                        r["projected_all_clients_bytes"] / 1e6,
                    ]
                    for r in results
                ],
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
