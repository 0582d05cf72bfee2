"""Acceptance 1: an unmodified LightningModule trains with Trainer(strategy="fedavg"), callbacks included."""

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import StrategyRegistry

from fl_testing import TinyData, fit_in_process, float_state, max_abs_diff, run_script, seeded_module
from lightning_fl import FedAvgStrategy


def test_names_are_registered_on_import():
    for name in ("fedavg", "fedavg_spawn", "fedavg_fork"):
        assert StrategyRegistry[name]["strategy"] is FedAvgStrategy
    FedAvgStrategy.register_strategies(StrategyRegistry)  # re-registering (a re-import) is harmless


def test_string_strategy_with_callbacks_logger_and_scheduler(tmp_path):
    module = seeded_module(gamma=0.5)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_acc", mode="max")
    trainer = L.Trainer(
        strategy="fedavg",
        accelerator="cpu",
        devices=1,
        max_epochs=4,
        logger=CSVLogger(tmp_path, name="logs"),
        callbacks=[ckpt, LearningRateMonitor(logging_interval="epoch")],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module, TinyData())
    assert isinstance(trainer.strategy, FedAvgStrategy)
    assert trainer.callback_metrics["val_acc"] > 0.9  # torchmetrics metric on the global model
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)  # one step per round
    rows = list(csv.DictReader(open(trainer.logger.log_dir + "/metrics.csv")))
    per_round = [r for r in rows if r.get("fl/clients")]
    assert [int(float(r["fl/clients"])) for r in per_round] == [10] * 4  # default: all 10 clients each round
    assert [int(float(r["fl/samples"])) for r in per_round] == [240] * 4
    assert len([r for r in rows if r.get("val_acc")]) == 4  # validation once per round
    best = torch.load(ckpt.best_model_path, weights_only=False)
    assert best["lightning_fl"]["mid_round"] is False
    # the checkpoint holds the global model that validation scored
    assert set(best["state_dict"]) == set(module.state_dict())


def test_early_stopping_counts_rounds():
    module = seeded_module()
    stop = EarlyStopping(monitor="val_acc", mode="max", patience=1, min_delta=1.0)  # never "improves"
    trainer = fit_in_process(FedAvgStrategy(num_clients=4), module, TinyData(), rounds=10, callbacks=[stop])
    assert trainer.current_epoch == 2  # round 0 sets the baseline, round 1 exhausts patience


def test_gradient_clipping_and_bf16_mixed_precision_are_applied():
    plain = seeded_module(lr=1.0)
    fit_in_process(FedAvgStrategy(num_clients=4), plain, TinyData(), rounds=1)
    clipped = seeded_module(lr=1.0)
    fit_in_process(FedAvgStrategy(num_clients=4), clipped, TinyData(), rounds=1, gradient_clip_val=1e-3)
    start = seeded_module(lr=1.0)
    params = lambda m: {k: v.detach() for k, v in m.net.named_parameters()}  # noqa: E731 (BN stats ignore clipping)
    moved_plain = max_abs_diff(params(plain), params(start))
    moved_clipped = max_abs_diff(params(clipped), params(start))
    assert moved_clipped < 0.2 * moved_plain  # tiny clip norm: much smaller steps
    mixed = seeded_module()
    trainer = fit_in_process(FedAvgStrategy(num_clients=4), mixed, TinyData(), rounds=3, precision="bf16-mixed")
    assert trainer.callback_metrics["val_acc"] > 0.8
    assert all(p.dtype == torch.float32 for p in mixed.parameters())


@pytest.mark.distributed
def test_registered_name_on_two_processes(tmp_path):
    result = run_script(tmp_path, 2, {}, {"by_name": "fedavg", "module": {"gamma": 0.5}, "rounds": 4})
    assert result["world_size"] == 2 and result["rank_spread"] == 0.0
    assert result["metrics"]["val_acc"] > 0.9
    assert result["lr"][0] == pytest.approx(0.1 * 0.5**4)
    assert result["metrics"]["fl/clients"] == 10
    assert result["metrics"]["fl/comm_bytes"] > 0  # one all-reduce per round between the two ranks


@pytest.mark.distributed
def test_spawn_variant_inside_pytest_matches_one_process():
    settings = dict(num_clients=6, clients_per_round=4, partition="iid", seed=2)
    spawned = seeded_module()
    L.Trainer(
        strategy=FedAvgStrategy(start_method="spawn", **settings),
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(spawned, TinyData())
    single = seeded_module()
    fit_in_process(FedAvgStrategy(**settings), single, TinyData(), rounds=2)
    assert max_abs_diff(float_state(spawned.net), float_state(single.net)) <= 1e-5


@pytest.mark.distributed
def test_per_step_synced_logging_fails_fast_instead_of_hanging(tmp_path):
    result = run_script(tmp_path, 2, {"num_clients": 4}, {"module": {"sync_step_log": True}, "rounds": 1})
    assert "sync_dist=True on every step" in result["error"] and "step_loss" in result["error"]


def test_progress_bar_shows_rounds_and_clients():
    from lightning_fl.callbacks import RoundProgressBar, RoundSummary

    seen = []

    class Probe(RoundProgressBar):
        def get_metrics(self, trainer, pl_module):
            items = super().get_metrics(trainer, pl_module)
            seen.append((self.train_progress_bar.desc.rstrip(": "), items.get("client")))
            return items

    lines = []
    fit_in_process(
        FedAvgStrategy(num_clients=6, clients_per_round=3), seeded_module(), TinyData(), rounds=2,
        enable_progress_bar=True, callbacks=[Probe(refresh_rate=1), RoundSummary(print_fn=lines.append)],
    )
    assert {desc for desc, _ in seen} >= {"Round 1/2", "Round 2/2"}
    assert {client for _, client in seen} >= {"1/3", "2/3", "3/3"}
    assert len(lines) == 2 and lines[1].startswith("round 2/2 | clients 3 (120 samples)")
