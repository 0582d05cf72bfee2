"""The fast path (a client's local steps inside one Lightning step) against the ordinary path (issue 14).

Each comparison trains the same module twice, once per path, and requires bit-identical weights
(``torch.equal``), the same ``global_step`` and the same epoch-level logged values.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset, default_collate

from fl_testing import TinyData, TinyModule, fit_in_process, max_abs_diff, net_state, run_script, seeded_module
from lightning_fl import FedAvgStrategy, FederatedConfigError, FedNova, FedProx, LabelFlip, Scaffold
from lightning_fl.federated.schedule import plan_round
from lightning_fl.strategies.fast_path import round_items
from lightning_fl.strategies.round_data import RoundBatchSampler, rebuild_loader, tensor_batches

FAST_LOG = "lightning_fl.strategies.fast_path"
# Dirichlet clients of unequal sizes: clients run different numbers of local steps.
SETTINGS = dict(num_clients=6, clients_per_round=4, partition="dirichlet", alpha=0.5, seed=3)
ROUNDS = 3


def both_paths(
    settings: dict | None = None,
    module_kwargs: dict | None = None,
    data_kwargs: dict | None = None,
    module_cls: Any = None,
    **trainer_kwargs: Any,
) -> tuple[dict, dict]:
    """(ordinary, fast) fits of the same module: final states, global steps, metrics, batches per round."""
    out = []
    cls = module_cls or TinyModule
    for fast in (False, True):
        torch.manual_seed(1)
        module = cls(**(module_kwargs or {}))
        strategy = FedAvgStrategy(**{**SETTINGS, **(settings or {})}, fast_path=fast)
        trainer = fit_in_process(strategy, module, TinyData(**(data_kwargs or {})), ROUNDS, **trainer_kwargs)
        out.append({
            "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "global_step": trainer.global_step,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "batches": trainer.num_training_batches,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "direct": strategy._fast._direct is not None,
        })
    return out[0], out[1]


def assert_identical(ordinary: dict, fast: dict) -> None:
    assert ordinary["state"].keys() == fast["state"].keys()
    for key, value in ordinary["state"].items():
        assert torch.equal(value, fast["state"][key]), key
    assert fast["global_step"] == ordinary["global_step"]
    assert fast["metrics"] == ordinary["metrics"]
    assert fast["lr"] == ordinary["lr"]
    # The fast path really ran: one Lightning step per client instead of one per local batch.
    assert fast["batches"] < ordinary["batches"]


def test_direct_local_steps_call_every_overridden_hook_as_lightning_does():
    """The fast path's own step loop against Lightning's closure: the same hooks, in the same order, seeing the
    same gradients and losses, with self.log working inside them; then the same weights."""
    runs = []
    for fast in (False, True):
        torch.manual_seed(1)
        module = HookedModule(gamma=0.9, momentum=0.9, batchnorm=False)
        recorder = HookRecorder()
        strategy = FedAvgStrategy(**SETTINGS, client_algorithm=FedProx(mu=0.1), fast_path=fast)
        trainer = fit_in_process(strategy, module, TinyData(), ROUNDS, callbacks=[recorder], gradient_clip_val=0.5)
        runs.append((module, recorder, trainer, strategy))
    (ordinary, ordinary_cb, ordinary_trainer, _), (fast, fast_cb, fast_trainer, strategy) = runs
    assert strategy._fast._direct is not None and fast_trainer.num_training_batches < ordinary_trainer.num_training_batches
    assert len(fast.events) > 50 and fast.events == ordinary.events
    assert fast_cb.events == ordinary_cb.events
    assert {name for name, _ in fast_cb.events} == {"on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step"}
    assert {fx for _, fx in fast_cb.events} == {"on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step"}
    for key, value in ordinary.state_dict().items():
        assert torch.equal(value, fast.state_dict()[key]), key
    for name in ("grad_norm", "train_loss"):  # logged from two hooks: reset only in the epoch's first batch
        assert float(fast_trainer.callback_metrics[name]) == float(ordinary_trainer.callback_metrics[name]), name


def test_a_profiler_keeps_lightnings_own_optimizer_step_on_the_fast_path():
    from lightning.pytorch.profilers import SimpleProfiler

    ordinary, fast = both_paths(module_kwargs=dict(gamma=0.9), profiler=SimpleProfiler())
    assert_identical(ordinary, fast)
    assert not fast["direct"]


class NoBatchIndex(TinyModule):
    def training_step(self, batch: Any) -> torch.Tensor:  # type: ignore[override]
        return super().training_step(batch, 0)


def test_a_training_step_without_batch_idx():
    ordinary, fast = both_paths(module_cls=NoBatchIndex)
    assert_identical(ordinary, fast)
    assert fast["direct"]


def _grad_norm(module: L.LightningModule) -> float:
    return sum(float((p.grad.double() ** 2).sum()) for p in module.parameters() if p.grad is not None) ** 0.5


class HookedModule(TinyModule):
    """Overrides the per-optimizer-step hooks and records what each one sees."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events: list[tuple] = []

    def on_before_zero_grad(self, optimizer: Any) -> None:
        self.events.append(("zero_grad", _grad_norm(self)))

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.events.append(("before_backward", float(loss)))

    def on_after_backward(self) -> None:
        self.events.append(("after_backward", _grad_norm(self)))
        self.log("grad_norm", _grad_norm(self), on_step=False, on_epoch=True)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.events.append(("before_step", _grad_norm(self)))

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None) -> None:
        self.events.append(("clip", gradient_clip_val, _grad_norm(self)))
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


class HookRecorder(L.Callback):
    """Per-optimizer-step callback hooks (not per batch: the fast path may run with them)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def _seen(self, name: str, module: L.LightningModule) -> None:
        self.events.append((name, module._current_fx_name))

    def on_before_zero_grad(self, trainer: L.Trainer, module: L.LightningModule, optimizer: Any) -> None:
        self._seen("on_before_zero_grad", module)

    def on_before_backward(self, trainer: L.Trainer, module: L.LightningModule, loss: torch.Tensor) -> None:
        self._seen("on_before_backward", module)

    def on_after_backward(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._seen("on_after_backward", module)

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer: Any) -> None:
        self._seen("on_before_optimizer_step", module)


def test_automatic_optimization_clipping_and_epoch_lr_scheduler():
    assert_identical(*both_paths(module_kwargs=dict(gamma=0.8, momentum=0.9), gradient_clip_val=0.3))


def test_bf16_mixed_precision():
    assert_identical(*both_paths(module_kwargs=dict(gamma=0.9), precision="bf16-mixed"))


@pytest.mark.parametrize(
    "part",
    [FedProx(mu=0.1), Scaffold(), FedNova()],
    ids=["fedprox", "scaffold", "fednova"],
)
def test_client_algorithms(part):
    module = dict(batchnorm=False, gamma=0.9)  # SCAFFOLD and FedNova need plain SGD
    assert_identical(*both_paths(settings=dict(client_algorithm=part), module_kwargs=module, gradient_clip_val=1.0))


def test_stragglers_drop_last_local_steps_and_failing_clients():
    settings = dict(stragglers=0.5, local_steps=3)
    ordinary, fast = both_paths(
        settings=settings, module_kwargs=dict(failing_clients=[1]), data_kwargs=dict(drop_last=True, batch_size=16)
    )
    assert_identical(ordinary, fast)
    assert fast["metrics"].get("fl/failed_clients", 0.0) >= 0.0


def test_label_flip_attack():
    assert_identical(*both_paths(settings=dict(attack=LabelFlip(fraction=0.5, num_classes=3))))


def test_automatic_mode_runs_the_first_round_per_batch_then_takes_the_fast_path():
    torch.manual_seed(1)
    auto = seeded_module(gamma=0.9)
    trainer = fit_in_process(FedAvgStrategy(**SETTINGS), auto, TinyData(), ROUNDS)
    assert trainer.num_training_batches == 4  # the last round: one step per client
    ordinary, _ = both_paths(module_kwargs=dict(gamma=0.9))
    for key, value in ordinary["state"].items():
        assert torch.equal(value, auto.state_dict()[key]), key
    assert trainer.global_step == ordinary["global_step"]


# ---------------------------------------------------------------- when the fast path must not be taken
class CountBatches(L.Callback):
    def __init__(self) -> None:
        self.calls = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.calls += 1


class StepLogging(TinyModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("loss_step", loss, on_step=True, on_epoch=False)
        return loss


def reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == FAST_LOG and "not taken" in r.getMessage()]


def test_per_batch_callback_keeps_the_ordinary_path_and_says_why_once(caplog):
    caplog.set_level(logging.INFO, logger=FAST_LOG)
    counter = CountBatches()
    torch.manual_seed(1)
    module = seeded_module()
    trainer = fit_in_process(FedAvgStrategy(**SETTINGS), module, TinyData(), ROUNDS, callbacks=[counter])
    assert counter.calls == trainer.global_step  # the callback saw every local batch
    assert len(reasons(caplog)) == 1 and "CountBatches" in reasons(caplog)[0]
    with pytest.raises(FederatedConfigError, match="fast_path=True.*CountBatches"):
        fit_in_process(FedAvgStrategy(**SETTINGS, fast_path=True), seeded_module(), TinyData(), 1, callbacks=[CountBatches()])


def test_step_interval_scheduler_and_lr_monitor_keep_the_ordinary_path(caplog):
    caplog.set_level(logging.INFO, logger=FAST_LOG)
    fit_in_process(
        FedAvgStrategy(**SETTINGS), seeded_module(), TinyData(), 2,
        callbacks=[LearningRateMonitor("step")], logger=CSVLogger(_tmp(), name="x"),
    )
    assert len(reasons(caplog)) == 1 and "LearningRateMonitor" in reasons(caplog)[0]


def test_per_step_logging_keeps_the_ordinary_path_and_says_why_once(caplog):
    caplog.set_level(logging.INFO, logger=FAST_LOG)
    torch.manual_seed(1)
    module = StepLogging()
    logger = CSVLogger(_tmp(), name="x")
    trainer = fit_in_process(FedAvgStrategy(**SETTINGS), module, TinyData(), ROUNDS, logger=logger, log_every_n_steps=1)
    found = reasons(caplog)
    assert len(found) == 1 and "loss_step" in found[0]
    torch.manual_seed(1)
    ordinary = StepLogging()
    reference = fit_in_process(FedAvgStrategy(**SETTINGS, fast_path=False), ordinary, TinyData(), ROUNDS)
    assert trainer.num_training_batches == reference.num_training_batches  # every round per batch
    for key, value in ordinary.state_dict().items():
        assert torch.equal(value, module.state_dict()[key]), key
    with pytest.raises(FederatedConfigError, match="fast_path=True.*loss_step"):
        fit_in_process(FedAvgStrategy(**SETTINGS, fast_path=True), StepLogging(), TinyData(), 1)


def _tmp() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="lightning-fl-test-")


# ---------------------------------------------------------------- data
def test_tensor_batches_equal_per_sample_fetch_and_collate():
    g = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(50, 3, 4, generator=g), torch.randint(0, 5, (50,), generator=g))
    plan = plan_round(0, [0, 1], [25, 25], [3, 3], 1, 0)
    parts = [torch.arange(25), 25 + torch.arange(25)]
    sampler = RoundBatchSampler(plan, lambda c: parts[c], batch_size=10, drop_last=False, seed=0)
    user = DataLoader(dataset, batch_size=10)
    assert tensor_batches(dataset, user.collate_fn) is not None
    indexed = list(rebuild_loader(user, sampler))

    class Subclass(TensorDataset):  # excluded: it could override __getitem__; fetched per sample
        pass

    fetched = list(rebuild_loader(DataLoader(Subclass(*dataset.tensors), batch_size=10), sampler))
    assert tensor_batches(Subclass(*dataset.tensors), default_collate) is None
    assert tensor_batches(dataset, lambda b: default_collate(b)) is None  # the user's own collate is kept
    assert len(indexed) == len(fetched) == 6
    for a, b in zip(indexed, fetched):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)


def test_every_rank_runs_as_many_items_as_the_busiest():
    # 5 clients over 2 ranks: 3 and 2 clients, so rank 1 pads one item.
    steps = [4, 1, 1, 3, 2]
    plans = [plan_round(0, list(range(5)), [10] * 5, steps, 2, r) for r in range(2)]
    items = [round_items(p) for p in plans]
    assert len(items[0]) == len(items[1]) == max(len([j for j in p.jobs if j.num_steps]) for p in plans)
    assert sum(i is None for i in items[0] + items[1]) == 1


# ---------------------------------------------------------------- processes
@pytest.mark.distributed
def test_two_processes_on_the_fast_path_equal_the_ordinary_path_and_one_process(tmp_path):
    # 5 clients on 2 processes: one process trains 3 clients, the other 2 and a padding item.
    settings = dict(num_clients=5, clients_per_round=5, partition="dirichlet", alpha=0.5, seed=3)
    options = {"module": {"gamma": 0.9}, "rounds": 2}
    fast = run_script(tmp_path, 2, {**settings, "fast_path": True}, options)
    ordinary = run_script(tmp_path, 2, {**settings, "fast_path": False}, options)
    one = run_script(tmp_path, 1, {**settings, "fast_path": True}, options)
    assert fast["world_size"] == 2 and fast["rank_spread"] == 0.0
    for key, value in net_state(ordinary["state"]).items():
        assert torch.equal(net_state(fast["state"])[key], value), key
    assert fast["metrics"] == ordinary["metrics"]
    # Across process counts only the order of the all-reduce's additions differs (as on the ordinary path).
    floats = lambda r: {k: v for k, v in net_state(r["state"]).items() if v.is_floating_point()}  # noqa: E731
    assert max_abs_diff(floats(fast), floats(one)) <= 1e-5
