"""Acceptance 4: resuming from a round-end checkpoint reproduces the uninterrupted run exactly."""

import functools

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from fl_testing import TinyData, fit_in_process, float_state, seeded_module
from lightning_fl import FedAvgStrategy, FederatedConfigError

# Server momentum and a per-round LR schedule make the run depend on strategy and scheduler state.
SETTINGS = dict(num_clients=6, clients_per_round=3, local_epochs=2, partition="dirichlet", alpha=1.0, seed=11)


def strategy():
    return FedAvgStrategy(server_optimizer=functools.partial(torch.optim.SGD, lr=1.0, momentum=0.9), **SETTINGS)


def module():
    return seeded_module(gamma=0.8, momentum=0.5)


def test_resume_from_round_end_checkpoint_equals_uninterrupted_run(tmp_path):
    straight = module()
    fit_in_process(strategy(), straight, TinyData(), rounds=5)

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="round{epoch}", auto_insert_metric_name=False)
    first = module()
    fit_in_process(strategy(), first, TinyData(), rounds=2, callbacks=[ckpt], enable_checkpointing=True)
    saved = torch.load(tmp_path / "round1.ckpt", weights_only=False)
    assert saved["lightning_fl"]["mid_round"] is False
    assert "optimizer" in saved["lightning_fl"]["server"]  # server momentum is in the checkpoint

    resumed = module()  # fresh objects, as in a new process
    fit_in_process(strategy(), resumed, TinyData(), rounds=5, ckpt_path=str(tmp_path / "round1.ckpt"))
    for key, value in float_state(straight).items():
        assert torch.equal(value, float_state(resumed)[key]), key


def test_mid_round_checkpoint_holds_the_global_model_and_refuses_to_resume(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1, filename="step{step}", auto_insert_metric_name=False)
    m = module()
    trainer = fit_in_process(strategy(), m, TinyData(), rounds=1, callbacks=[ckpt], enable_checkpointing=True)
    plan = trainer.strategy.current_plan
    assert plan.num_steps > 3  # so step 3 is inside the round
    saved = torch.load(tmp_path / "step3.ckpt", weights_only=False)
    assert saved["lightning_fl"]["mid_round"] is True
    # The weights saved mid-round are the round's starting global model (the initial weights here),
    # not the local weights of the client that was training.
    initial = module()
    for key, value in float_state(initial).items():
        assert torch.equal(saved["state_dict"][key], value), key
    with pytest.raises(FederatedConfigError, match="middle of a round"):
        fit_in_process(strategy(), module(), TinyData(), rounds=2, ckpt_path=str(tmp_path / "step3.ckpt"))
