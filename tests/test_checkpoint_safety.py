"""Issue 10, checkpoints that survive: atomic writes, weights_only loads, one-line errors for bad files."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from fl_testing import TinyData, fit_in_process, float_state, launch_env, seeded_module
from lightning_fl import FedAvgStrategy, FederatedConfigError, ParameterServerStrategy
from lightning_fl.strategies.checkpoint_io import AtomicCheckpointIO, CheckpointError

SETTINGS = dict(num_clients=4, clients_per_round=2, seed=5)


def _fit_and_save(tmp_path, strategy=None, module=None, rounds=1, name="last"):
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename=name, save_top_k=1, every_n_epochs=1)
    module = module or seeded_module()
    fit_in_process(strategy or FedAvgStrategy(**SETTINGS), module, TinyData(), rounds=rounds,
                   callbacks=[ckpt], enable_checkpointing=True)
    return tmp_path / f"{name}.ckpt", module


def _resume(path, strategy=None, module=None, rounds=2):
    return fit_in_process(strategy or FedAvgStrategy(**SETTINGS), module or seeded_module(), TinyData(),
                          rounds=rounds, ckpt_path=str(path))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One round-end FedAvg checkpoint, shared (read-only) by the tests below."""
    path, module = _fit_and_save(tmp_path_factory.mktemp("ckpt"))
    return path, float_state(module)


def test_our_checkpoints_load_with_weights_only_and_name_their_strategy(saved):
    path, _ = saved
    checkpoint = torch.load(path, weights_only=True)  # nothing in it needs pickle's arbitrary objects
    assert checkpoint["lightning_fl"]["strategy"] == "fedavg"
    assert checkpoint["lightning_fl"]["num_clients"] == 4
    assert not list(path.parent.glob(".*.tmp"))  # no temporary file left behind


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "model.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    class Unpicklable:  # torch.save has written part of the file when it reaches this
        def __reduce__(self):
            raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "extra": Unpicklable()}, path)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


def test_a_kill_during_the_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "model.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    # A child writes a new checkpoint slowly (a stream that sleeps after each chunk) and is SIGKILLed midway.
    child = textwrap.dedent(f"""
        import sys, time, torch
        from lightning_fl.strategies import checkpoint_io
        real_save = torch.save
        def slow_save(obj, f):
            class Slow:
                def write(self, data):
                    n = f.write(data); f.flush(); print("writing", flush=True); time.sleep(0.2); return n
                def __getattr__(self, name):
                    return getattr(f, name)
            real_save(obj, Slow(), _use_new_zipfile_serialization=False)
        checkpoint_io.torch.save = slow_save
        checkpoint_io.AtomicCheckpointIO().save_checkpoint({{"state_dict": {{"w": torch.zeros(100000)}}}}, {str(path)!r})
        print("finished", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=launch_env())
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p for p in tmp_path.iterdir() if p.name != "model.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # the half-written temporary file
    assert torch.equal(AtomicCheckpointIO().load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((3,), 2.0)}}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]  # the next write clears it


def test_truncated_and_foreign_files_are_one_line_errors(saved, tmp_path):
    path, _ = saved
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint '.*truncated\.ckpt' cannot be read: .*truncated") as err:
        _resume(truncated)
    assert "\n" not in str(err.value)
    garbage = tmp_path / "notes.ckpt"
    garbage.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.ckpt' cannot be read"):
        _resume(garbage)
    plain = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.ones(2)}, plain)
    with pytest.raises(CheckpointError, match="plain.ckpt' is not a Lightning checkpoint"):
        _resume(plain)


def test_another_models_checkpoint_is_a_one_line_error(saved):
    path, _ = saved
    with pytest.raises(CheckpointError, match=r"holds another model: .*net\.1\.") as err:
        _resume(path, module=seeded_module(batchnorm=False))  # no BatchNorm: keys and shapes differ
    assert "\n" not in str(err.value)


def test_another_strategy_or_number_of_clients_is_refused(saved, tmp_path):
    path, _ = saved
    with pytest.raises(CheckpointError, match="written by strategy='fedavg', this run uses strategy='parameter_server'"):
        _resume(path, strategy=ParameterServerStrategy())
    ps_path, _ = _fit_and_save(tmp_path, strategy=ParameterServerStrategy(), name="ps")
    with pytest.raises(CheckpointError, match="written by strategy='parameter_server', this run uses strategy='fedavg'"):
        _resume(ps_path)
    ddp_path, _ = _fit_and_save(tmp_path, strategy="ddp", name="ddp")
    with pytest.raises(CheckpointError, match="no 'lightning_fl' entry"):
        _resume(ddp_path)
    with pytest.raises(FederatedConfigError, match="num_clients=4, this run has num_clients=6"):
        _resume(path, strategy=FedAvgStrategy(num_clients=6, clients_per_round=2, seed=5))


def test_weights_of_any_checkpoint_still_load_for_testing(saved):
    """The strategy check is for resuming a fit; validate/test only need the same model."""
    path, weights = saved
    module = seeded_module(seed=99)
    trainer = fit_in_process(ParameterServerStrategy(), module, TinyData(), rounds=1)
    trainer.validate(module, TinyData(), ckpt_path=str(path), verbose=False)
    for key, value in weights.items():
        assert torch.equal(float_state(module)[key], value), key


def test_cli_resumes_with_ckpt_path_last_and_reports_a_bad_file_in_one_line(tmp_path):
    from test_cli import run_cli

    quick = ["strategy.local_epochs=1", "trainer.enable_progress_bar=false", "test=false"]
    run = f"hydra.run.dir={tmp_path}/run"
    first = run_cli(quick + ["trainer.max_epochs=1", run], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "run" / "logs" / "checkpoints" / "last.ckpt"  # conf/callbacks/default.yaml keeps it
    # Resume in place: no path at all, so no quoting of Lightning's "epoch=0-step=59.ckpt" names.
    resumed = run_cli(quick + ["trainer.max_epochs=2", run, "ckpt_path=last"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {last}" in resumed.stdout + resumed.stderr
    assert "done after 2 rounds" in resumed.stdout
    (tmp_path / "cut.ckpt").write_bytes(last.read_bytes()[:4096])
    bad = run_cli(quick + ["trainer.max_epochs=2", f"hydra.run.dir={tmp_path}/bad", f"ckpt_path={tmp_path}/cut.ckpt"],
                  cwd=tmp_path)
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("lightning-fl: error:")]
    assert errors == [f"lightning-fl: error: checkpoint '{tmp_path}/cut.ckpt' cannot be read: the file is truncated "
                      "or corrupt, or not a torch checkpoint (RuntimeError: PytorchStreamReader failed reading zip "
                      "archive: failed finding central directory)"], bad.stderr[-2000:]
    assert "Traceback" not in bad.stderr


class _Custom:  # a pickled object of its own class (e.g. a hyperparameter) is not plain data
    pass


def test_an_object_weights_only_refuses_is_named_with_the_way_out(tmp_path):
    path = tmp_path / "custom.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"thing": _Custom()}}, path)
    with pytest.raises(CheckpointError, match=r"holds an object of type .*_Custom, which loading with "
                                              r"weights_only=True refuses; .*weights_only=False"):
        _resume(path)
    assert AtomicCheckpointIO().load_checkpoint(path, weights_only=False)["hyper_parameters"]["thing"]
