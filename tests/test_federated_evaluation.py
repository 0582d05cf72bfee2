"""Federated evaluation (issue 12): per-client metrics of the user's validation_step on held-out shares,
their distribution, world-size independence, resume, and monitors."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn

import lightning_fl
from fl_testing import TinyData, fit_in_process, max_abs_diff, net_state, run_script, seeded_module
from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.evaluation import distribution, eval_sample, held_out_count, is_eval_round, split_partition
from lightning_fl.federated.partition import Partition, make_partition

# ---------------------------------------------------------------- math


def test_held_out_share_is_disjoint_seeded_and_keeps_a_training_sample() -> None:
    partition = make_partition("iid", 53, 5, seed=3)
    train, held = split_partition(partition, 0.2, seed=7)
    again_train, again_held = split_partition(partition, 0.2, seed=7)
    assert torch.equal(held.indices, again_held.indices) and torch.equal(train.indices, again_train.indices)
    for c in range(5):
        whole = set(partition.client(c).tolist())
        t, h = set(train.client(c).tolist()), set(held.client(c).tolist())
        assert not t & h and t | h == whole
        assert len(h) == math.ceil(len(whole) * 0.2)
    other = split_partition(partition, 0.2, seed=8)[1]
    assert not torch.equal(other.indices, held.indices)
    assert held_out_count(1, 0.5) == 0 and held_out_count(2, 0.01) == 1 and held_out_count(10, 0.95) == 9
    # A silo's one-part partition is split with its own client id as the seed key.
    one = Partition.from_parts([torch.arange(20)])
    assert torch.equal(split_partition(one, 0.25, 0, [1])[1].indices, split_partition(partition_of(20, 2), 0.25, 0)[1].client(1))


def partition_of(n: int, parts: int) -> Partition:
    return Partition.from_parts([torch.arange(n) for _ in range(parts)])


def test_eval_sample_and_schedule() -> None:
    assert eval_sample(7, None, 0, 3) == list(range(7))
    sample = eval_sample(50, 5, 0, 3)
    assert len(set(sample)) == 5 and sample == sorted(sample) and sample == eval_sample(50, 5, 0, 3)
    assert sample != eval_sample(50, 5, 0, 4)
    assert [r for r in range(10) if is_eval_round(r, 3, last_round=9)] == [2, 5, 8, 9]


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), written out."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def test_distribution_against_a_direct_computation() -> None:
    values = [0.9, 0.5, 1.0, 0.75, 0.6, 0.95, 0.8]
    weights = [10, 3, 7, 1, 4, 12, 5]
    got = distribution(torch.tensor(values, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64))
    s = sorted(values)
    mean = sum(v * w for v, w in zip(values, weights)) / sum(weights)
    plain = sum(values) / len(values)
    std = math.sqrt(sum((v - plain) ** 2 for v in values) / len(values))
    expected = {"mean": mean, "min": 0.5, "p10": _percentile(s, 0.1), "median": 0.8, "p90": _percentile(s, 0.9),
                "max": 1.0, "std": std}  # fmt: skip
    assert got == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- in a fit


class RecordingModule(L.LightningModule):
    """Logs a tensor loss (batch-size-weighted mean), a torchmetrics accuracy and a summed count; records
    which training rows it trained on and which rows it evaluated."""

    def __init__(self) -> None:
        super().__init__()
        import torchmetrics

        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        self.acc = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")
        self.trained_rows: set[tuple[float, ...]] = set()
        self.evaluated_rows: set[tuple[float, ...]] = set()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.trained_rows.update(tuple(r) for r in x.tolist())
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.evaluated_rows.update(tuple(r) for r in x.tolist())
        logits = self.net(x)
        self.acc(logits, y)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", self.acc)
        self.log_dict({"seen": float(len(y))}, reduce_fx="sum")

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_per_client_metrics_and_statistics_match_a_direct_computation(tmp_path: Path) -> None:
    data = TinyData(n=120, batch_size=8)
    module = RecordingModule()
    strategy = lightning_fl.FedAvgStrategy(num_clients=5, clients_per_round=3, eval_fraction=0.3, seed=4)
    trainer = fit_in_process(strategy, module, data, rounds=2, default_root_dir=str(tmp_path), limit_val_batches=0)
    rows = [r for r in _rows(tmp_path / "client_metrics.csv") if r["round"] == "1"]
    # The held-out shares, computed independently, evaluated with the final global model.
    _, held = split_partition(make_partition("iid", 120, 5, seed=4), 0.3, seed=4)
    x, y = data.train_set.tensors
    module.eval()
    per_client = {}
    with torch.no_grad():
        for c in range(5):
            idx = held.client(c)
            logits = module.net(x[idx])
            per_client[c] = {
                "val_loss": float(nn.functional.cross_entropy(logits, y[idx])),
                "val_acc": float((logits.argmax(1) == y[idx]).float().mean()),
                "seen": float(len(idx)),
                "n": len(idx),
            }
    assert len(rows) == 5 * 3
    for row in rows:
        expected = per_client[int(row["client"])]
        assert float(row["value"]) == pytest.approx(expected[row["metric"]], abs=1e-6), row
        assert int(row["num_samples"]) == expected["n"]
    metrics = trainer.callback_metrics
    for name in ("val_loss", "val_acc", "seen"):
        values = torch.tensor([per_client[c][name] for c in range(5)])
        weights = torch.tensor([float(per_client[c]["n"]) for c in range(5)])
        for stat, value in distribution(values, weights).items():
            assert float(metrics[f"fl/eval/{name}/{stat}"]) == pytest.approx(value, abs=1e-6), (name, stat)
    assert float(metrics["fl/eval_clients"]) == 5


def test_held_out_samples_are_never_trained_on(tmp_path: Path) -> None:
    data = TinyData(n=120, batch_size=4)
    module = RecordingModule()
    strategy = lightning_fl.FedAvgStrategy(num_clients=4, eval_fraction=0.25, local_epochs=2, seed=0)
    # limit_val_batches=0: no central validation, so validation_step sees held-out client data only.
    fit_in_process(strategy, module, data, rounds=2, default_root_dir=str(tmp_path), limit_val_batches=0)
    x = data.train_set.tensors[0]
    _, held = split_partition(make_partition("iid", 120, 4, seed=0), 0.25, seed=0)
    held_rows = {tuple(r) for r in x[held.indices].tolist()}
    assert module.evaluated_rows == held_rows
    assert not module.trained_rows & held_rows
    assert len(module.trained_rows) == 120 - len(held_rows)  # everything else is trained on


def test_a_sample_of_clients_every_other_round_and_central_validation_beside_it(tmp_path: Path) -> None:
    strategy = lightning_fl.FedAvgStrategy(
        num_clients=8, clients_per_round=4, eval_fraction=0.2, eval_every=2, eval_clients=3, seed=1
    )
    trainer = fit_in_process(strategy, seeded_module(), TinyData(), rounds=3, default_root_dir=str(tmp_path))
    rows = _rows(tmp_path / "client_metrics.csv")
    by_round: dict[str, set[str]] = {}
    for r in rows:
        by_round.setdefault(r["round"], set()).add(r["client"])
    # Rounds 2 and 3 (0-based 1, and the last one, 2), three sampled clients each.
    assert sorted(by_round) == ["1", "2"]
    assert by_round["1"] == {str(c) for c in eval_sample(8, 3, 1, 1)}
    assert all(len(v) == 3 for v in by_round.values())
    assert "val_acc" in trainer.callback_metrics and "fl/eval/val_acc/p10" in trainer.callback_metrics


def test_monitors_can_follow_a_federated_metric(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="fl/eval/val_acc/p10", mode="max", save_top_k=1)
    stop = EarlyStopping(monitor="fl/eval/val_acc/mean", mode="max", patience=1, min_delta=1.0)
    strategy = lightning_fl.FedAvgStrategy(num_clients=4, eval_fraction=0.25, seed=0)
    trainer = fit_in_process(
        strategy, seeded_module(), TinyData(), rounds=5, callbacks=[checkpoint, stop], enable_checkpointing=True,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    assert trainer.current_epoch < 5  # no round improves by min_delta=1.0: stopped early
    assert checkpoint.best_model_score is not None and Path(checkpoint.best_model_path).is_file()


def test_resume_continues_the_evaluation_exactly(tmp_path: Path) -> None:
    def strategy() -> lightning_fl.FedAvgStrategy:
        return lightning_fl.FedAvgStrategy(num_clients=6, clients_per_round=3, eval_fraction=0.2, seed=2)

    full = fit_in_process(strategy(), seeded_module(), TinyData(), rounds=3, default_root_dir=str(tmp_path / "a"))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1)
    fit_in_process(strategy(), seeded_module(), TinyData(), rounds=2, callbacks=[ckpt], enable_checkpointing=True,
                   default_root_dir=str(tmp_path / "b"))  # fmt: skip
    last = sorted((tmp_path / "ck").glob("*.ckpt"))[-1]
    module = seeded_module()
    resumed = fit_in_process(strategy(), module, TinyData(), rounds=3, ckpt_path=str(last),
                             default_root_dir=str(tmp_path / "b"))  # fmt: skip
    for name, value in full.callback_metrics.items():
        if name.startswith("fl/eval"):
            assert float(resumed.callback_metrics[name]) == float(value), name
    a = [r for r in _rows(tmp_path / "a" / "client_metrics.csv") if r["round"] == "2"]
    b = [r for r in _rows(tmp_path / "b" / "client_metrics.csv") if r["round"] == "2"]
    assert a == b and a


def test_two_processes_equal_one(tmp_path: Path) -> None:
    strategy = {"num_clients": 6, "clients_per_round": 4, "eval_fraction": 0.25, "eval_clients": 5, "seed": 3}
    results, tables = [], []
    for devices in (1, 2):
        root = tmp_path / f"d{devices}"
        results.append(run_script(tmp_path, devices, strategy, {"trainer": {"default_root_dir": str(root)}}))
        tables.append(_rows(root / "client_metrics.csv"))
    one, two = results
    assert two["world_size"] == 2
    # The same clients, metrics and sample counts; values equal up to the all-reduce's summation order,
    # which already makes the global weights differ in the last bits (as plain FedAvg's do).
    key = [(r["round"], r["client"], r["metric"], r["num_samples"]) for r in tables[0]]
    assert key == [(r["round"], r["client"], r["metric"], r["num_samples"]) for r in tables[1]]
    assert len(key) == 3 * 5  # 3 rounds x 5 sampled clients, one metric
    for a, b in zip(tables[0], tables[1]):
        assert float(a["value"]) == pytest.approx(float(b["value"]), abs=1e-6)
    fed = {k: v for k, v in one["metrics"].items() if k.startswith("fl/eval")}
    assert len(fed) == 7 + 1
    assert fed == pytest.approx({k: v for k, v in two["metrics"].items() if k.startswith("fl/eval")}, abs=1e-6)
    assert max_abs_diff(net_state(one["state"]), net_state(two["state"])) <= 1e-5


def test_silos_hold_out_their_own_data(tmp_path: Path) -> None:
    strategy = {"partition": "silo", "eval_fraction": 0.25, "seed": 0}
    root = tmp_path / "silo"
    result = run_script(tmp_path, 2, strategy, {"data": {"silo": True}, "trainer": {"default_root_dir": str(root)}})
    rows = _rows(root / "client_metrics.csv")
    samples = {(r["client"], r["num_samples"]) for r in rows}
    assert samples == {("0", "15"), ("1", "9")}  # ceil(60 * 0.25), ceil(36 * 0.25): each silo's own share
    assert result["metrics"]["fl/eval_clients"] == 2


@pytest.mark.parametrize(
    "kwargs, setting",
    [({"eval_fraction": 1.0}, "eval_fraction"), ({"eval_fraction": -0.1}, "eval_fraction"),
     ({"eval_every": 0}, "eval_every"), ({"eval_clients": 0}, "eval_clients")],
)  # fmt: skip
def test_bad_settings_are_one_line_errors(kwargs: dict, setting: str) -> None:
    with pytest.raises(FederatedConfigError, match=setting) as info:
        lightning_fl.FedAvgStrategy(**kwargs)
    assert "\n" not in str(info.value)


def test_round_summary_prints_the_clients_mean_and_worst_tenth(tmp_path: Path) -> None:
    from lightning_fl.callbacks import RoundSummary

    lines: list[str] = []
    strategy = lightning_fl.FedAvgStrategy(num_clients=6, clients_per_round=3, eval_fraction=0.25, seed=0)
    trainer = fit_in_process(strategy, seeded_module(), TinyData(), rounds=2, default_root_dir=str(tmp_path),
                             callbacks=[RoundSummary(print_fn=lines.append)])  # fmt: skip
    stats = trainer.strategy.round_stats
    expected = f"clients val_acc {stats['fl/eval/val_acc/mean']:.4f} (worst 10% {stats['fl/eval/val_acc/p10']:.4f})"
    assert len(lines) == 2 and expected in lines[1], lines


class _PlainDataset(torch.utils.data.Dataset):
    """Not a TensorDataset: federated evaluation fetches and collates it per sample."""

    def __init__(self, base: torch.utils.data.TensorDataset) -> None:
        self.base = base
        self.targets = base.tensors[1]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        return self.base[i]


def test_sliced_and_per_sample_batches_give_the_same_values(tmp_path: Path) -> None:
    def run(wrap: bool, root: Path) -> list[dict[str, str]]:
        data = TinyData()
        if wrap:
            data.train_set = _PlainDataset(data.train_set)
        strategy = lightning_fl.FedAvgStrategy(num_clients=4, eval_fraction=0.25, seed=0)
        fit_in_process(strategy, RecordingModule(), data, rounds=1, default_root_dir=str(root), limit_val_batches=0)
        return _rows(root / "client_metrics.csv")

    assert run(False, tmp_path / "a") == run(True, tmp_path / "b")


def test_processes_that_disagree_on_evaluation_fail_before_the_first_step(tmp_path: Path) -> None:
    # Evaluation's gather would otherwise block one process until the collective timeout.
    result = run_script(tmp_path, 2, {"num_clients": 4, "eval_fraction": 0.25},
                        {"per_rank": [{"eval_every": 1}, {"eval_every": 2}], "rounds": 1})  # fmt: skip
    assert result["error"].startswith("processes disagree on eval_every: process 0: 1, process 1: 2;")


def test_the_evaluation_gather_is_counted_in_comm_bytes(tmp_path: Path) -> None:
    import pickle

    from lightning_fl.federated.compression import allreduce_bytes

    base = {"num_clients": 6, "clients_per_round": 4, "seed": 3}
    with_eval = run_script(tmp_path, 2, {**base, "eval_fraction": 0.25, "eval_clients": 5}, {"rounds": 1})
    without = run_script(tmp_path, 2, {**base, "eval_fraction": 0.0}, {"rounds": 1})
    # Same model, same round buffer: the difference is the evaluation's two collectives, by the ring formulas.
    names = (1 * (8 + len(pickle.dumps(["val_acc"]))))  # all_gather_object of the metric names, W = 2
    table = allreduce_bytes(5 * (2 * 1 + 1), 2, 8)  # [clients, 2 * metrics + 1] float64
    assert with_eval["metrics"]["fl/comm_bytes"] - without["metrics"]["fl/comm_bytes"] == names + table


def test_a_module_without_validation_step_is_a_one_line_error(tmp_path: Path) -> None:
    class NoValidation(RecordingModule):
        validation_step = L.LightningModule.validation_step  # the base class's: not overridden

    strategy = lightning_fl.FedAvgStrategy(num_clients=4, eval_fraction=0.25)
    with pytest.raises(FederatedConfigError, match="eval_fraction=0.25: .*NoValidation has none") as info:
        fit_in_process(strategy, NoValidation(), TinyData(), rounds=1, default_root_dir=str(tmp_path), limit_val_batches=0)
    assert "\n" not in str(info.value)
