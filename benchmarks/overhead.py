"""Seconds per round: ``Trainer(strategy=FedAvgStrategy(...))`` vs a hand-written PyTorch FedAvg loop.

Both run in this one process and alternate round by round, so machine noise hits both alike: a
callback at the end of each Lightning epoch (= round) runs the same round of the plain loop on its own
copy of the model. Lightning's time for round r is the wall time from the end of that callback in
round r-1 to its start in round r, i.e. everything Lightning does per round (dataloader rebuild, hooks,
logging, aggregation) and nothing of the plain loop. Round 0 warms both up and is not measured.

The plain loop draws the same clients, batch order and per-client seeds from ``lightning_fl``'s pure
functions, so after every round both global models must agree (checked; proves "same work").

    python benchmarks/overhead.py                 # 100 clients x 600 MNIST images, 10 per round
    python benchmarks/overhead.py --quick --synthetic --json /tmp/overhead.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_common` when run as a script from anywhere

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
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
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_fl import FedAvgStrategy  # noqa: E402
from lightning_fl.federated.partition import Partition, make_partition  # noqa: E402
from lightning_fl.federated.sampling import epoch_permutation, sample_clients  # noqa: E402
from lightning_fl.models import ImageClassifier  # noqa: E402
from lightning_fl.seeding import derive_seed  # noqa: E402

TARGET_RATIO = 1.10
WEIGHT_TOLERANCE = 1e-4


class PlainFedAvg:
    """FedAvg as one would write it without Lightning: load global, fresh SGD, train, weighted sum."""

    def __init__(
        self,
        net: nn.Module,
        x: Tensor,
        y: Tensor,
        partition: Partition,
        clients: int,
        per_round: int,
        local_epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
    ) -> None:
        self.net, self.x, self.y, self.partition = net, x, y, partition
        self.clients, self.per_round, self.local_epochs = clients, per_round, local_epochs
        self.batch_size, self.lr, self.seed = batch_size, lr, seed
        # McMahanCNN has no buffers; parameters are the whole float state.
        self.params = list(net.parameters())
        self.global_params = [p.detach().clone() for p in self.params]
        self.sums = [torch.zeros_like(p) for p in self.params]

    def run_round(self, r: int) -> None:
        sampled = sample_clients(self.clients, self.per_round, self.seed, r)
        sizes = self.partition.sizes()
        total = sum(int(sizes[c]) for c in sampled)
        for s in self.sums:
            s.zero_()
        # Σ wᵢθᵢ / Σ wᵢ with float32 weights nᵢ/n, as the strategy computes it: dividing by a Σ wᵢ that
        # is 1 up to rounding changes the last bit, and training amplifies that over later rounds.
        weight_sum = torch.zeros((), dtype=torch.float32)
        for c in sampled:
            idx = self.partition.client(c)
            with torch.no_grad():
                for p, g in zip(self.params, self.global_params):
                    p.copy_(g)
            opt = torch.optim.SGD(self.params, lr=self.lr)
            torch.manual_seed(derive_seed(self.seed, "client-rng", r, c))  # same RNG stream as the strategy
            self.net.train()
            for e in range(self.local_epochs):
                order = idx[epoch_permutation(len(idx), self.seed, r, c, e)]
                for start in range(0, len(order), self.batch_size):
                    b = order[start : start + self.batch_size]
                    opt.zero_grad()
                    F.cross_entropy(self.net(self.x[b]), self.y[b]).backward()
                    opt.step()
            with torch.no_grad():
                for s, p in zip(self.sums, self.params):
                    s.add_(p, alpha=len(idx) / total)
            weight_sum += len(idx) / total
        for g, s in zip(self.global_params, self.sums):
            g.copy_(s.div_(float(weight_sum)))
        # Leave the network holding the global model, as the strategy leaves the LightningModule.
        with torch.no_grad():
            for p, g in zip(self.params, self.global_params):
                p.copy_(g)


class AlternatingTimer(Callback):
    """Runs plain round r right after Lightning's round r and splits the wall clock between the two."""

    def __init__(self, plain: PlainFedAvg, verbose: bool = True) -> None:
        self.plain = plain
        self.verbose = verbose
        self.lightning_times: list[float] = []  # rounds 1..R
        self.plain_times: list[float] = []  # rounds 0..R (0 = warm-up)
        self.weight_diffs: list[float] = []  # after every round, 0..R
        # CPU seconds of this process over the same spans: steadier than wall time on a shared machine
        # (time the process waits for a core is not counted).
        self.lightning_cpu: list[float] = []
        self.plain_cpu: list[float] = []
        self._mark: Optional[float] = None
        self._cpu_mark: Optional[float] = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        if self._mark is not None and self._cpu_mark is not None:
            self.lightning_times.append(t0 - self._mark)
            self.lightning_cpu.append(c0 - self._cpu_mark)
        r = trainer.current_epoch
        self.plain.run_round(r)
        t1, c1 = time.perf_counter(), time.process_time()
        self.plain_times.append(t1 - t0)
        self.plain_cpu.append(c1 - c0)
        # Outside both timed spans: the strategy has aggregated, so the module holds the global model.
        diff = max(
            float((a.detach() - b).abs().max()) for a, b in zip(pl_module.net.parameters(), self.plain.global_params)
        )
        self.weight_diffs.append(diff)
        if self.verbose:
            lt = f"{self.lightning_times[-1]:.3f}s (CPU {self.lightning_cpu[-1]:.3f}s)" if r > 0 else "warm-up"
            print(
                f"round {r}: lightning_fl {lt}, plain {self.plain_times[-1]:.3f}s (CPU {self.plain_cpu[-1]:.3f}s), "
                f"max|dw| {diff:.2e}",
                flush=True,
            )
        self._mark, self._cpu_mark = time.perf_counter(), time.process_time()


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--samples-per-client", type=int, default=600, help="train set = clients x this (<= 60,000)")
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--rounds", type=int, default=15, help="measured rounds (one warm-up round is added)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument(
        "--module",
        choices=("minimal", "classifier"),
        default="minimal",
        help="minimal: CNN+CE+SGD only (pure overhead); classifier: ImageClassifier (adds metrics and logging)",
    )
    p.add_argument(
        "--net",
        choices=("cnn", "linear"),
        default="cnn",
        help="minimal module's network: McMahan's CNN, or Flatten + Linear (almost no compute: the framework's own cost)",
    )
    p.add_argument(
        "--fast-path",
        choices=("auto", "on", "off"),
        default="auto",
        help="FedAvgStrategy(fast_path=None/True/False): a client's local steps inside one Lightning step",
    )
    p.add_argument("--quick", action="store_true", help="20 clients x 30 samples, 4 per round, 2 rounds")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.samples_per_client, args.per_round, args.rounds = 20, 30, 4, 2
    if args.net != "cnn" and args.module != "minimal":
        p.error("--net linear needs --module minimal")
    if args.rounds < 1 or args.per_round > args.clients or args.clients * args.samples_per_client > 60_000:
        p.error("need --rounds >= 1, --per-round <= --clients and --clients x --samples-per-client <= 60000")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    x, y = load_mnist_train(args.data, args.synthetic, args.clients * args.samples_per_client, args.seed)
    torch.manual_seed(args.seed)
    if args.module == "minimal":
        module = make_minimal_module(args.lr, linear=args.net == "linear")
    else:
        module = ImageClassifier(arch="mcmahan_cnn", in_shape=(1, 28, 28), lr=args.lr)
    # Same initial weights, own copy: the plain loop never touches the Lightning module.
    plain_net = copy.deepcopy(module.net)
    partition = make_partition("iid", len(y), args.clients, args.seed)  # what the strategy builds
    plain = PlainFedAvg(
        plain_net, x, y, partition, args.clients, args.per_round, args.local_epochs, args.batch_size, args.lr, args.seed
    )
    timer = AlternatingTimer(plain)
    strategy = FedAvgStrategy(
        num_clients=args.clients,
        clients_per_round=args.per_round,
        local_epochs=args.local_epochs,
        partition="iid",
        seed=args.seed,
        fast_path={"auto": None, "on": True, "off": False}[args.fast_path],
    )
    trainer = bench_trainer(
        strategy=strategy, devices=1, max_epochs=args.rounds + 1, limit_val_batches=0, callbacks=[timer]
    )
    # The strategy replaces the sampler; shuffle=True is what a user would write.
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)
    with no_worker_warning():
        trainer.fit(module, train_dataloaders=loader)

    final_diff = max(
        float((a.detach() - b).abs().max()) for a, b in zip(module.net.parameters(), plain.global_params)
    )
    lightning_times = timer.lightning_times
    plain_times = timer.plain_times[1:]
    ratios = [lt / pt for lt, pt in zip(lightning_times, plain_times)]
    median_ratio = median(ratios)
    cpu_ratios = [lc / pc for lc, pc in zip(timer.lightning_cpu, timer.plain_cpu[1:])]
    return {
        "benchmark": "overhead",
        "config": {
            "clients": args.clients,
            "samples_per_client": args.samples_per_client,
            "per_round": args.per_round,
            "local_epochs": args.local_epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "module": args.module,
            "net": args.net,
            "fast_path": args.fast_path,
            "seed": args.seed,
            "synthetic": bool(args.synthetic),
            "torch_threads": torch.get_num_threads(),  # read after fit: Lightning's launcher may set it
            "steps_per_round": sum(
                -(-int(partition.sizes()[c]) // args.batch_size) * args.local_epochs
                for c in sample_clients(args.clients, args.per_round, args.seed, 0)
            ),
        },
        "rounds": len(ratios),
        "lightning_s_per_round": lightning_times,
        "plain_s_per_round": plain_times,
        "ratio_per_round": ratios,
        "median_lightning_s": median(lightning_times),
        "median_plain_s": median(plain_times),
        "median_ratio": median_ratio,
        "lightning_cpu_s_per_round": timer.lightning_cpu,
        "plain_cpu_s_per_round": timer.plain_cpu[1:],
        "cpu_ratio_per_round": cpu_ratios,
        "median_cpu_ratio": median(cpu_ratios),
        "target_ratio": TARGET_RATIO,
        "passed": median_ratio <= TARGET_RATIO,
        "max_abs_weight_diff": max([final_diff, *timer.weight_diffs]),
    }


def draw(axes: list[Any], result: dict[str, Any]) -> None:
    """Seconds per round of both loops, and their per-round ratio against the target."""
    rounds = list(range(1, result["rounds"] + 1))
    seconds, ratio = axes
    seconds.plot(rounds, result["lightning_s_per_round"], marker="o", label="lightning_fl")
    seconds.plot(rounds, result["plain_s_per_round"], marker="o", label="plain PyTorch")
    seconds.set(xlabel="round", ylabel="seconds", title="FedAvg seconds per round")
    ratio.plot(rounds, result["ratio_per_round"], marker="o", label="lightning_fl / plain")
    ratio.axhline(result["median_ratio"], color="C0", linestyle=":", label=f"median {result['median_ratio']:.3f}")
    ratio.axhline(result["target_ratio"], color="C3", linestyle="--", label=f"target <= {result['target_ratio']:.2f}")
    ratio.set(xlabel="round", ylabel="ratio", title="overhead per round")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)  # rounds


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    check_data(args.data, args.synthetic)
    apply_threads(args.threads)
    result = run(args)
    write_json(args.json, result)
    save_figure(args.png, lambda axes: draw(axes, result), panels=2)
    agree = result["max_abs_weight_diff"] <= WEIGHT_TOLERANCE
    print(
        f"\nweights agree: max |lightning_fl - plain| = {result['max_abs_weight_diff']:.3e} "
        f"(tolerance {WEIGHT_TOLERANCE:g}) -> {'OK' if agree else 'FAILED'}"
    )
    print(
        format_table(
            ["rounds", "lightning_fl s/round", "plain s/round", "ratio", "CPU ratio", "target", "result"],
            [
                [
                    result["rounds"],
                    result["median_lightning_s"],
                    result["median_plain_s"],
                    result["median_ratio"],
                    result["median_cpu_ratio"],
                    f"<= {TARGET_RATIO:.2f}",
                    "PASS" if result["passed"] else "MISS",
                ]
            ],
        )
    )
    if not agree:
        print("error: the two runs did not do the same work (weights differ)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
