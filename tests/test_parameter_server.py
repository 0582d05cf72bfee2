"""Issue 4, synchronous mode: sharded parameter server vs DDP, optimizer memory, checkpoints."""

import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import StrategyRegistry

from fl_testing import AdamModule, TinyData, TinyModule, launch_env, seeded_module
from lightning_fl import FederatedConfigError, ParameterServerStrategy

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "run_ps.py")


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ps") / "results.pt"
    env = launch_env()
    proc = subprocess.run([sys.executable, SCRIPT, str(out), "2"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=False)


def _diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def _fit(module, devices=1, epochs=2, **kwargs):
    trainer = L.Trainer(
        strategy=ParameterServerStrategy(), accelerator="cpu", devices=devices, max_epochs=epochs, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )
    trainer.fit(module, TinyData(batch_size=16))
    return trainer


def test_registered():
    for name in ("parameter_server", "parameter_server_spawn", "parameter_server_fork"):
        assert StrategyRegistry[name]["strategy"] is ParameterServerStrategy


@pytest.mark.distributed
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_process_ps_equals_ddp(two_process_results, optimizer):
    ddp, ps = two_process_results[f"ddp-{optimizer}"], two_process_results[f"parameter_server-{optimizer}"]
    assert _diff(ddp, ps) <= 1e-5
    torch.manual_seed(1)
    initial = seeded_module().state_dict()
    assert _diff(initial, ps) > 1e-2  # it trained
    # The user's LR scheduler still drives the shard optimizers (ExponentialLR 0.5, two epochs).
    assert two_process_results[f"lr-{optimizer}"] == pytest.approx((0.1 if optimizer == "sgd" else 0.01) * 0.25)


@pytest.mark.distributed
def test_optimizer_state_memory_falls_with_shards(two_process_results):
    torch.manual_seed(1)
    one = _fit(seeded_module(momentum=0.9, gamma=0.5)).strategy.optimizer_state_bytes()
    two = two_process_results["state_bytes-sgd"]
    params = sum(p.numel() for p in TinyModule().parameters())
    assert one == params * 4  # one momentum buffer, whole model
    assert two == -(-params // 2) * 4  # half of it (one bucket of two)


@pytest.mark.distributed
def test_push_bytes_follow_the_reduce_scatter_formula(two_process_results):
    params = sum(p.numel() for p in TinyModule().parameters())
    padded = -(-params // 2) * 2
    steps = 2 * -(-(240 // 2) // 16)  # 2 epochs of ceil(120 / 16) batches per rank
    # gloo reduce-scatters through an all-reduce: 2 (W - 1) / W of the padded buffer per rank and step
    assert two_process_results["push_bytes-sgd"] == steps * 2 * (2 - 1) * padded * 4 // 2


@pytest.mark.distributed
def test_resume_and_checkpoint_in_the_users_optimizer_format(two_process_results):
    assert _diff(two_process_results["resume-straight"], two_process_results["resume-resumed"]) == 0.0
    ckpt = torch.load(two_process_results["ckpt"], weights_only=False)
    state = ckpt["optimizer_states"][0]["state"]
    module = TinyModule()
    params = list(module.parameters())
    assert len(state) == len(params)
    for i, p in enumerate(params):
        assert state[i]["exp_avg"].shape == p.shape and state[i]["exp_avg_sq"].shape == p.shape
        assert state[i]["exp_avg_sq"].abs().sum() > 0  # gathered from both buckets, not zeros


@pytest.mark.distributed
def test_a_two_process_checkpoint_loads_into_one_process(two_process_results):
    saved = torch.load(two_process_results["ckpt"], weights_only=False)["optimizer_states"][0]["state"]
    seen = {}

    class Capture(Callback):
        def on_train_start(self, trainer, pl_module):  # after the checkpoint is restored, before any step
            seen.update(trainer.strategy.optimizer_state(trainer.optimizers[0])["state"])

    torch.manual_seed(1)
    trainer = L.Trainer(
        strategy=ParameterServerStrategy(), accelerator="cpu", devices=1, max_epochs=3, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[Capture()],
    )
    trainer.fit(AdamModule(), TinyData(batch_size=16), ckpt_path=two_process_results["ckpt"])
    assert seen.keys() == saved.keys()
    for i in saved:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(seen[i][key], saved[i][key]), (i, key)


@pytest.mark.parametrize(
    ("trainer_kwargs", "named"),
    [(dict(gradient_clip_val=1.0), "gradient_clip_val"), (dict(accumulate_grad_batches=2), "accumulate_grad_batches")],
)
def test_unsupported_trainer_settings_fail_before_launch(trainer_kwargs, named):
    trainer = L.Trainer(strategy="parameter_server", accelerator="cpu", devices=2, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, **trainer_kwargs)
    with pytest.raises(FederatedConfigError, match=named):
        trainer.fit(seeded_module(), TinyData())


def test_non_elementwise_optimizer_is_refused():
    class LBFGSModule(TinyModule):
        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters())

    with pytest.raises(FederatedConfigError, match="element-wise"):
        _fit(LBFGSModule())


def test_one_process_equals_ddp():
    torch.manual_seed(1)
    ps = AdamModule()
    _fit(ps)
    torch.manual_seed(1)
    ddp = AdamModule()  # same sampler (DistributedSampler) and so the same batches as the PS run
    L.Trainer(strategy="ddp", accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(ddp, TinyData(batch_size=16))
    assert _diff(ddp.state_dict(), ps.state_dict()) <= 1e-6
    torch.manual_seed(1)
    assert _diff(AdamModule().state_dict(), ps.state_dict()) > 1e-2  # and it trained


@pytest.mark.distributed
def test_a_killed_worker_ends_the_job_with_a_clear_error(tmp_path):
    import json
    import time

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "run_fedavg.py")
    env = launch_env()
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, script, str(tmp_path / "out.pt"), "2", "{}",
         json.dumps({"by_name": "parameter_server", "module": {"crash_on_rank": 1}, "rounds": 3})],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode != 0
    assert "simulated client crash on rank 1" in proc.stderr
    assert time.monotonic() - start < 60  # not the 30-minute collective timeout
