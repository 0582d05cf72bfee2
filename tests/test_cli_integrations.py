"""Issue 11: the `lightning-fl` command with the user's own classes, loggers and callbacks as config groups,
SLURM-style sweeps (submitit's local launcher) and LightningCLI."""

from __future__ import annotations

import csv
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fl_testing import TinyData, TinyModule, launch_env

QUICK = ["trainer.max_epochs=2", "strategy.local_epochs=1", "test=false", "trainer.enable_progress_bar=false"]

USER_CODE = '''
import lightning as L, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class MyModule(L.LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        self.lr = lr

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", (self.net(batch[0]).argmax(1) == batch[1]).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class MyData(L.LightningDataModule):
    def __init__(self, n: int = 200):
        super().__init__()
        x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
        self.ds = TensorDataset(x, (x[:, 0] > 0).long())

    def train_dataloader(self):
        return DataLoader(self.ds, batch_size=10, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.ds, batch_size=50)
'''


def lightning_fl(args, cwd, timeout=300, prelude=None):
    """The installed `lightning-fl` script (not `python -m`), or the CLI after ``prelude`` Python code."""
    if prelude is None:
        command = [shutil.which("lightning-fl")]
    else:
        code = f"import sys\n{prelude}\nsys.argv[0] = 'lightning-fl'\nfrom lightning_fl.cli.main import main\nmain()"
        command = [sys.executable, "-c", code]
    return subprocess.run(command + list(args), cwd=cwd, env=launch_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def values(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(r[name]) for r in rows if r.get(name)]


def last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------- the user's own classes


def test_lightning_fl_trains_the_users_own_module_and_data(tmp_path):
    (tmp_path / "my_pkg.py").write_text(USER_CODE)
    proc = lightning_fl(["model._target_=my_pkg.MyModule", "model.hidden=16", "data._target_=my_pkg.MyData",
                         "strategy.num_clients=5", "strategy.clients_per_round=5", *QUICK,
                         f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = csv_rows(tmp_path / "run")
    assert values(rows, "fl/round") == [0.0, 1.0] and len(values(rows, "train/loss")) == 2
    assert values(rows, "val/acc")[-1] > 0.6  # a separable problem: it learned
    rounds = [line for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert len(rounds) == 2 and "train/loss" in rounds[1] and "val/acc" in rounds[1]  # RoundSummary's default
    composed = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    model = composed.split("model:\n", 1)[1].split("\n", 3)[:2]
    assert model == ["  _target_: my_pkg.MyModule", "  hidden: 16"], composed  # only the user's keys


def test_config_dir_adds_the_users_own_config_groups(tmp_path):
    (tmp_path / "my_pkg.py").write_text(USER_CODE)
    (tmp_path / "confs" / "model").mkdir(parents=True)
    (tmp_path / "confs" / "model" / "mine.yaml").write_text("_target_: my_pkg.MyModule\nhidden: 4\n")
    proc = lightning_fl(["--config-dir", "confs", "model=mine", "model.hidden=5", "data._target_=my_pkg.MyData",
                         "--cfg", "job"], cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model:\n  _target_: my_pkg.MyModule\n  hidden: 5\ntrainer:" in proc.stdout
    bad = lightning_fl(["--config-dir=confs", "model=mine", "model.hiden=5"], cwd=tmp_path)
    assert bad.returncode == 2 and "model.hiden" in last_line(bad), bad.stderr[-2000:]


def test_a_bad_constructor_argument_shows_the_real_error_in_one_line(tmp_path):
    (tmp_path / "my_pkg.py").write_text(USER_CODE)
    proc = lightning_fl(["model._target_=my_pkg.MyModule", "model.x=1", "data._target_=my_pkg.MyData", *QUICK,
                         f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert last_line(proc) == (
        "lightning-fl: error: model: TypeError: MyModule.__init__() got an unexpected keyword argument 'x'"
    ), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------- loggers and callbacks


def _tensorboard_scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "logs"))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _mlflow_metrics(run_dir: Path) -> dict[str, list[float]]:
    """The MLflow file store: mlruns/<experiment>/<run>/metrics/<name> holds 'time value step' lines."""
    (run,) = [p for p in (run_dir / "mlruns").glob("*/*") if (p / "metrics").is_dir()]
    return {
        str(f.relative_to(run / "metrics")): [float(line.split()[1]) for line in f.read_text().splitlines()]
        for f in (run / "metrics").rglob("*")
        if f.is_file()
    }


@pytest.mark.parametrize(
    ("logger", "module"), [("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")]
)
def test_logger_group_records_the_round_metrics(tmp_path, logger, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"logger={logger} needs lightning-fl[{logger}] (pip install 'lightning-fl[loggers]')")
    run_dir = tmp_path / "run"
    proc = lightning_fl([f"logger={logger}", *QUICK, f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if logger == "wandb":  # offline: everything is in the run's .wandb file, to be uploaded by `wandb sync`
        (record,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
        data = record.read_bytes()
        assert b"fl/round" in data and b"val_acc" in data
        return
    metrics = _tensorboard_scalars(run_dir) if logger == "tensorboard" else _mlflow_metrics(run_dir)
    assert metrics["fl/round"] == [0.0, 1.0], metrics.keys()
    assert len(metrics["val_acc"]) == 2 and len(metrics["fl/comm_bytes"]) == 2


def test_a_missing_logger_extra_is_a_one_line_hint(tmp_path):
    hide = "sys.modules['mlflow'] = None  # as if lightning-fl[mlflow] were not installed"
    proc = lightning_fl(["logger=mlflow", *QUICK, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, prelude=hide)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last_line(proc) == "lightning-fl: error: logger=mlflow needs mlflow: pip install 'lightning-fl[mlflow]'"


def test_early_stopping_and_last_checkpoint_from_the_callbacks_group(tmp_path):
    run_dir = tmp_path / "run"
    # min_delta larger than any loss change: round 2 does not improve on round 1, patience 1 stops there.
    proc = lightning_fl(["callbacks=early_stopping", "callbacks.early_stopping.min_delta=100",
                         "callbacks.early_stopping.patience=1", "trainer.max_epochs=5", *QUICK[1:],
                         f"hydra.run.dir={run_dir}"], cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done after 2 rounds" in proc.stdout
    assert values(csv_rows(run_dir), "fl/round") == [0.0, 1.0]
    last = run_dir / "logs" / "checkpoints" / "last.ckpt"
    assert last.exists() and torch.load(last, weights_only=False)["epoch"] == 1


def test_round_summary_shows_what_the_module_logs():
    from lightning_fl.callbacks import RoundSummary

    one = torch.tensor(1.0)
    slashes = {"train/loss": one, "val/acc": one, "train/loss_step": one, "fl/round": one, "ps/push_bytes": one}
    assert RoundSummary()._names(slashes) == ["train/loss", "val/acc"]
    usual = {"train_loss": one, "val_acc": one, "train_acc": one, "fl/round": one}
    assert RoundSummary()._names(usual) == ["train_loss", "val_acc"]
    assert RoundSummary(metrics=["train_acc", "absent"])._names(usual) == ["train_acc"]


# ---------------------------------------------------------------------------------- clusters and LightningCLI


@pytest.mark.distributed
def test_submitit_local_sweep_of_two_jobs(tmp_path):
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("needs hydra-submitit-launcher: pip install 'lightning-fl[submitit]'")
    sweep = tmp_path / "sweep"
    proc = lightning_fl(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "seed=0,1",
                         *QUICK, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert values(csv_rows(sweep / job), "fl/round") == [0.0, 1.0], job
    seeds = [(sweep / job / ".hydra" / "overrides.yaml").read_text() for job in ("0", "1")]
    assert "seed=0" in seeds[0] and "seed=1" in seeds[1]


def test_lightning_cli_takes_the_strategy_by_class_path(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["main.py"])  # the arguments are `args=` below, not pytest's
    pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse[signatures] (the test extra)")
    from lightning.pytorch.cli import LightningCLI

    from lightning_fl import FedAvgStrategy

    cli = LightningCLI(
        TinyModule,
        TinyData,
        args=["fit", "--trainer.strategy=lightning_fl.FedAvgStrategy", "--trainer.strategy.num_clients=6",
              "--trainer.strategy.clients_per_round=3", "--trainer.strategy.local_epochs=2",
              "--trainer.max_epochs=2", "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.logger=false",
              "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
              f"--trainer.default_root_dir={tmp_path}"],  # fmt: skip
        save_config_kwargs={"overwrite": True},
    )
    strategy = cli.trainer.strategy
    assert isinstance(strategy, FedAvgStrategy)
    assert (strategy.num_clients, strategy.clients_per_round, strategy.local_epochs) == (6, 3, 2)
    assert cli.trainer.current_epoch == 2 and strategy.round_stats["fl/clients"] == 3
    assert float(cli.trainer.callback_metrics["val_acc"]) > 0.5
