"""Acceptance 6: the `lightning-fl` command, its sweeps, its errors, and its configs mirroring the API."""

import dataclasses
import inspect
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from fl_testing import launch_env
from lightning_fl.cli.config import (
    DigitsDataConfig,
    FedAvgConfig,
    ImageClassifierConfig,
    MNISTDataConfig,
    ParameterServerConfig,
    TrainerConfig,
)

REPO = Path(__file__).resolve().parents[1]
QUICK = ["trainer.max_epochs=2", "strategy.local_epochs=1", "trainer.enable_progress_bar=false"]


def run_cli(args, cwd, command=None, timeout=300):
    env = launch_env()
    command = command or [sys.executable, "-m", "lightning_fl"]
    return subprocess.run(command + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_default_job_runs_and_prints_rounds(tmp_path):
    proc = run_cli(QUICK + [f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = [line for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert [r.split(" | ")[0] for r in rounds] == ["round 1/2", "round 2/2"]
    assert "clients 10" in rounds[0] and "val_acc" in rounds[0]
    # Federated evaluation is on in the default job: the clients' mean and worst tenth beside the global metric.
    assert "clients val_acc " in rounds[0] and "(worst 10% " in rounds[0], rounds[0]
    assert "done after 2 rounds" in proc.stdout and "test_acc=" in proc.stdout
    assert (tmp_path / "run" / "logs" / "metrics.csv").exists()
    header = (tmp_path / "run" / "logs" / "client_metrics.csv").read_text().splitlines()[0]
    assert header == "round,client,metric,value,num_samples"
    assert (tmp_path / "run" / "plots" / "client_metrics.png").is_file() or "lightning-fl[plot]" in proc.stdout
    assert list((tmp_path / "run").rglob("*.ckpt"))


def test_console_script_is_installed(tmp_path):
    exe = shutil.which("lightning-fl")
    assert exe is not None, "pip install -e . should put lightning-fl on PATH"
    proc = run_cli(["--cfg", "job"], cwd=tmp_path, command=[exe])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "num_clients: 20" in proc.stdout and "partition: dirichlet" in proc.stdout


@pytest.mark.distributed
def test_two_job_multirun_sweep(tmp_path):
    proc = run_cli(
        ["-m", "strategy.local_epochs=1,2"] + QUICK[:1] + QUICK[2:] + [f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done after 2 rounds") == 2
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]


@pytest.mark.distributed
def test_multirun_with_two_processes_uses_spawn(tmp_path):
    proc = run_cli(
        ["-m", "seed=0,1", "trainer.devices=2", "trainer.max_epochs=1", "strategy.local_epochs=1",
         "trainer.enable_progress_bar=false", "test=false", f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "using the spawn launcher" in proc.stderr
    assert proc.stdout.count("done after 1 rounds") == 2


@pytest.mark.distributed
def test_single_run_with_two_processes_uses_popen_under_hydra(tmp_path):
    proc = run_cli(
        ["trainer.devices=2", "trainer.max_epochs=1", "strategy.local_epochs=1", "test=false",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 1/1" in proc.stdout and "MB/rank" in proc.stdout
    assert "comm 0.00 MB/rank" not in proc.stdout  # two ranks exchanged their sums


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["strategy.clients_per_round=50"], "strategy.clients_per_round"),
        (["strategy.alpha=0"], "strategy.alpha"),
        (["strategy.partition=noniid"], "strategy.partition"),
        (["strategy.num_client=5"], "strategy.num_client"),
        (["strategy.local_epochs=abc"], "strategy.local_epochs"),
        (["trainer.devics=2"], "trainer.devics"),
        (["data=mnist"], "data.path"),
        (["data=mnist", "data.path=/no/such/mnist.npz"], "data.path"),
        (["model.arch=resnet"], "model.arch"),
        (["strategy.num_clients=5000"], "num_clients=5000"),  # found when the data is known
    ],
)
def test_bad_settings_give_one_line_errors(tmp_path, args, named):
    proc = run_cli(args + QUICK + [f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lightning-fl: error: ") and named in last, last
    assert "Traceback" not in proc.stderr


def _init_params(cls, skip=()):
    sig = inspect.signature(cls.__init__)
    return {n for n, p in sig.parameters.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - set(skip)


def _fields(cfg):
    return {f.name for f in dataclasses.fields(cfg)} - {"_target_"}


def test_configs_mirror_the_python_api_one_to_one():
    import lightning as L

    from lightning_fl import FedAvgStrategy, ParameterServerStrategy
    from lightning_fl.data import DigitsDataModule, MNISTDataModule
    from lightning_fl.models import ImageClassifier

    # Objects the Trainer builds itself (devices, cluster environment, precision) are not settings.
    wired_by_trainer = ("accelerator", "parallel_devices", "cluster_environment", "checkpoint_io", "precision_plugin")
    assert _fields(FedAvgConfig) == _init_params(FedAvgStrategy, skip=wired_by_trainer)
    # ParameterServerStrategy takes client_algorithm only to refuse it with a reason (tests/test_fedopt_family.py).
    assert _fields(ParameterServerConfig) == _init_params(
        ParameterServerStrategy, skip=wired_by_trainer + ("client_algorithm",)
    )
    assert _fields(DigitsDataConfig) == _init_params(DigitsDataModule)
    assert _fields(MNISTDataConfig) == _init_params(MNISTDataModule)
    assert _fields(ImageClassifierConfig) == _init_params(ImageClassifier)
    assert _fields(TrainerConfig) <= _init_params(L.Trainer)
    for cfg, cls in (
        (FedAvgConfig, FedAvgStrategy),
        (ParameterServerConfig, ParameterServerStrategy),
        (ImageClassifierConfig, ImageClassifier),
    ):
        defaults = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()}
        for f in dataclasses.fields(cfg):
            if f.name in defaults and isinstance(f.default, (int, float, str, bool, type(None))):
                if f.name in ("seed", "timeout", "in_shape", "num_classes"):  # interpolations; timedelta vs s
                    continue
                assert f.default == defaults[f.name], f.name


@pytest.mark.distributed
@pytest.mark.parametrize("preset", ["parameter_server", "parameter_server_ssp"])
def test_parameter_server_from_the_command_line(tmp_path, preset):
    proc = run_cli(
        [f"strategy={preset}", "trainer.devices=2", "trainer.max_epochs=1", "test=false",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 1/1" in proc.stdout and "done after 1 epochs" in proc.stdout  # no federated rounds here
    header = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "ps/push_bytes" in header and "val_acc" in header
    assert ("ps/staleness_max" in header) == (preset == "parameter_server_ssp")


def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(dist.glob("lightning_fl-*.whl"))
    env_dir = tmp_path / "venv"
    # The new environment sees the dependencies of *this* interpreter (torch, lightning, ...), wherever they
    # are: system_site_packages=True would expose the base interpreter's, not an enclosing venv's. Paths
    # in a .pth file are added without running their .pth files, so this checkout's editable install stays
    # out and the wheel is what gets imported.
    venv.create(env_dir, system_site_packages=False, with_pip=True)
    py = env_dir / "bin" / "python"
    site_dir = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    outer = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    Path(site_dir, "_outer_site_packages.pth").write_text("\n".join(outer) + "\n")
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    where = subprocess.run([str(py), "-c", "import lightning_fl; print(lightning_fl.__file__)"], cwd=workdir,
                           capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                if k != "PYTHONPATH"})
    assert str(env_dir) in where.stdout, where.stdout + where.stderr  # the wheel, not the checkout
    proc = run_cli(["trainer.max_epochs=1", "strategy.local_epochs=1", "test=false",
                    "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}/run"],
                   cwd=workdir, command=[str(env_dir / "bin" / "lightning-fl")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 1/1" in proc.stdout
    # The wheel's Hydra plugin finds the wheel's strategy configs (another layout than the checkout's).
    app = tmp_path / "app"
    (app / "trainer").mkdir(parents=True)
    (app / "trainer" / "default.yaml").write_text("_target_: lightning.pytorch.trainer.Trainer\n")
    (app / "train.yaml").write_text("defaults:\n  - trainer: default\n  - _self_\nseed: null\n")
    code = ("from hydra import compose, initialize_config_dir\n"
            f"with initialize_config_dir(config_dir={str(app)!r}, version_base='1.3'):\n"
            "    s = compose('train', overrides=['+trainer/strategy=fedavg']).trainer.strategy\n"
            "print(s._target_, s.seed)\n")
    plugin = subprocess.run([str(py), "-c", code], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert plugin.stdout.split() == ["lightning_fl.FedAvgStrategy", "0"], plugin.stderr[-3000:]
