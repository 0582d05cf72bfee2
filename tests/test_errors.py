"""Bad settings are one-line errors naming the setting, raised before any process starts; bad client
updates are rejected and reported, never averaged into the global model."""

import subprocess
import sys

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fl_testing import TinyData, fit_in_process, seeded_module
from lightning_fl import FedAvgStrategy, FederatedConfigError


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        (dict(num_clients=10, clients_per_round=11), "clients_per_round"),
        (dict(clients_per_round=20), "clients_per_round"),  # default num_clients is 10
        (dict(alpha=0.0, partition="dirichlet"), "alpha"),
        (dict(alpha=-1.0), "alpha"),
        (dict(partition="noniid"), "partition"),
        (dict(local_epochs=0), "local_epochs"),
        (dict(num_clients=0), "num_clients"),
        (dict(shards_per_client=0), "shards_per_client"),
        (dict(timeout=-5), "timeout"),
        (dict(server_optimizer="adam"), "server_optimizer"),
    ],
)
def test_constructor_rejects_bad_settings(kwargs, setting):
    with pytest.raises(FederatedConfigError) as err:
        FedAvgStrategy(**kwargs)
    assert setting in _one_line(err)


@pytest.mark.parametrize(
    ("strategy_kwargs", "trainer_kwargs", "setting"),
    [
        (dict(num_clients=4), dict(accumulate_grad_batches=2), "accumulate_grad_batches"),
        (dict(num_clients=4), dict(max_steps=5), "max_steps"),
        (dict(num_clients=4), dict(limit_train_batches=0.5), "limit_train_batches"),
        (dict(num_clients=4), dict(val_check_interval=0.5), "val_check_interval"),
        (dict(num_clients=4), dict(sync_batchnorm=True), "sync_batchnorm"),
        (dict(num_clients=4, clients_per_round=1), {}, "clients_per_round"),
        (dict(partition="silo", clients_per_round=1), {}, "clients_per_round"),
    ],
)
def test_trainer_conflicts_fail_before_processes_start(strategy_kwargs, trainer_kwargs, setting):
    # devices=2 with the popen launcher: had the check come after launch, pytest would be re-run as rank 1.
    trainer = L.Trainer(
        strategy=FedAvgStrategy(**strategy_kwargs), accelerator="cpu", devices=2, max_epochs=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, **trainer_kwargs,
    )
    with pytest.raises(FederatedConfigError) as err:
        trainer.fit(seeded_module(), TinyData())
    assert setting in _one_line(err)
    assert not torch.distributed.is_initialized()


def test_more_clients_than_samples_is_a_clear_error():
    with pytest.raises(FederatedConfigError) as err:
        fit_in_process(FedAvgStrategy(num_clients=500), seeded_module(), TinyData(n=240), rounds=1)
    assert "num_clients=500" in _one_line(err) and "240" in str(err.value)


def test_clients_too_small_for_one_batch_is_a_clear_error():
    data = TinyData(n=40, batch_size=16, drop_last=True)  # 10 clients of 4 samples, batches of 16
    with pytest.raises(FederatedConfigError) as err:
        fit_in_process(FedAvgStrategy(num_clients=10), seeded_module(), data, rounds=1)
    assert "batch_size=16" in _one_line(err)


def test_iterable_or_unbatched_training_data_is_rejected_with_a_reason():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from zip(torch.randn(8, 6), torch.zeros(8, dtype=torch.long))

    class StreamData(TinyData):
        def train_dataloader(self):
            return DataLoader(Stream(), batch_size=4)

    with pytest.raises(FederatedConfigError) as err:
        fit_in_process(FedAvgStrategy(num_clients=2), seeded_module(), StreamData(), rounds=1)
    assert "map-style" in _one_line(err)


class PoisonedData(TinyData):
    """One training sample is NaN: whichever client owns it ends its local training with NaN weights."""

    def __init__(self) -> None:
        super().__init__()
        x, y = self.train_set.tensors
        x = x.clone()
        x[17] = float("nan")
        self.train_set = TensorDataset(x, y)


def test_nan_client_update_is_rejected_and_reported():
    module = seeded_module(batchnorm=False)
    trainer = fit_in_process(FedAvgStrategy(num_clients=8, seed=0), module, PoisonedData(), rounds=3)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert trainer.callback_metrics["fl/rejected_clients"] == 1  # the poisoned client, every round
    assert trainer.callback_metrics["fl/clients"] == 7
    assert trainer.callback_metrics["val_acc"] > 0.9  # the other seven clients still train the model


def test_nan_client_update_can_be_made_fatal():
    with pytest.raises(FloatingPointError, match="client"):
        fit_in_process(
            FedAvgStrategy(num_clients=8, skip_nonfinite_updates=False), seeded_module(batchnorm=False),
            PoisonedData(), rounds=1,
        )


def test_import_is_light():
    code = "import sys, lightning_fl; print('hydra' in sys.modules, 'lightning_fl.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.distributed
def test_a_crashed_process_ends_the_job_instead_of_hanging(tmp_path):
    import json
    import os
    import time

    from fl_testing import launch_env

    script = os.path.join(os.path.dirname(__file__), "scripts", "run_fedavg.py")
    env = launch_env()
    start = time.monotonic()
    proc = subprocess.run(
        # on_client_error="raise": the error ends the process, as a crash would (the default skips the client).
        [sys.executable, script, str(tmp_path / "out.pt"), "2",
         json.dumps({"num_clients": 4, "timeout": 60, "on_client_error": "raise"}),
         json.dumps({"module": {"crash_on_rank": 1}, "rounds": 3})],
        env=env, capture_output=True, text=True, timeout=240,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "simulated client crash on rank 1" in proc.stderr
    assert elapsed < 60  # the survivor noticed the dead peer; it did not sit out the collective timeout
    assert not (tmp_path / "out.pt").exists()


def test_interrupted_round_leaves_the_last_global_model_in_the_module():
    from lightning.pytorch.callbacks import Callback

    from fl_testing import float_state

    recorded = {}

    class InterruptMidRound(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                recorded.update(float_state(pl_module))  # the global model after round 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 3:
                raise RuntimeError("interrupted")

    module = seeded_module()
    with pytest.raises(RuntimeError, match="interrupted"):
        fit_in_process(FedAvgStrategy(num_clients=4), module, TinyData(), rounds=3, callbacks=[InterruptMidRound()])
    assert recorded and all(torch.equal(v, float_state(module)[k]) for k, v in recorded.items())
