"""Issue 11: lightning_fl in other people's Hydra apps (the search-path plugin and the example project
whose README commands these tests run), and the plugin's promise to stay out of apps' way."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fl_testing import launch_env

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "hydra_project"


def copy_app(tmp_path: Path) -> Path:
    """The example project in a temporary directory: a Hydra app with seed: null and its own classes."""
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("outputs", "multirun", "__pycache__"))
    return app


def readme_commands() -> list[str]:
    """The `python train.py ...` lines of README.md's "Use it in your own project" section."""
    section = REPO.joinpath("README.md").read_text().split("## Use it in your own project", 1)[1].split("\n## ")[0]
    return [line.split("#")[0].strip() for line in section.splitlines() if line.startswith("python train.py")]


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def logged(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(r[name]) for r in rows if r.get(name)]


def test_plugin_is_light_and_composes_our_strategy_configs(tmp_path):
    """Importing the plugin and composing our configs, seed fallback included, imports no torch."""
    app = copy_app(tmp_path)
    (app / "configs" / "noseed.yaml").write_text("defaults:\n  - trainer: default\n  - _self_\n")
    code = textwrap.dedent(
        f"""
        import sys
        from hydra import compose, initialize_config_dir
        from hydra.errors import ConfigCompositionException
        from omegaconf import OmegaConf
        from omegaconf.errors import ValidationError

        with initialize_config_dir(config_dir={str(app / "configs")!r}, version_base="1.3"):
            cfg = compose("train", overrides=["+trainer/strategy=fedavg", "trainer.strategy.num_clients=7"])
            s = cfg.trainer.strategy
            assert s._target_ == "lightning_fl.FedAvgStrategy" and s.num_clients == 7, s
            assert cfg.seed is None and s.seed == 0  # the app's seed is null: the strategy's own default
            assert compose("train", overrides=["+trainer/strategy=fedavg", "seed=5"]).trainer.strategy.seed == 5
            assert compose("noseed", overrides=["+trainer/strategy=fedavg"]).trainer.strategy.seed == 0  # no seed
            ps = compose("train", overrides=["+trainer/strategy=parameter_server"]).trainer.strategy
            assert ps._target_ == "lightning_fl.ParameterServerStrategy", ps
            m = compose("train", overrides=["+trainer/strategy=fedavg", "trainer/strategy/server_optimizer=fedavgm"])
            shipped = OmegaConf.load({str(REPO / "conf/strategy/server_optimizer/fedavgm.yaml")!r})
            assert m.trainer.strategy.server_optimizer._target_ == shipped._target_
            for bad in ("trainer.strategy.num_client=3", "trainer.strategy.local_epochs=abc"):
                try:
                    compose("train", overrides=["+trainer/strategy=fedavg", bad])
                except (ConfigCompositionException, ValidationError):
                    pass
                else:
                    raise AssertionError(bad + " was accepted")
            assert "lightning_fl" not in str(compose("train").get("trainer"))  # nothing added unasked
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning", "lightning_fl"))
        assert not heavy, heavy[:5]
        assert "hydra_plugins.lightning_fl_searchpath" in sys.modules
        print("light")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "light" in proc.stdout, proc.stderr[-3000:]


def test_readme_lists_the_example_commands():
    commands = readme_commands()
    assert any(c.split()[2:] == ["+trainer/strategy=fedavgm"] for c in commands)  # one override each
    assert any(c.split()[2:] == ["+trainer/strategy=fedprox"] for c in commands)
    assert any("+trainer/strategy=fedprox" in c for c in commands)
    assert any("+trainer/strategy=parameter_server" in c and "trainer.devices=2" in c for c in commands)
    assert any(c.startswith("python train.py -m") and "trainer.devices=2" in c for c in commands)


@pytest.mark.distributed
@pytest.mark.parametrize("command", readme_commands())
def test_example_project_readme_command(tmp_path, command):
    """Each README command, 2 epochs, in a copy of the example project: FedAvg, FedAvg + server optimizer,
    FedProx and the parameter server (2 processes) from our configs by one override, and a 2-job sweep
    with 2 processes each that leaves exactly one sweep directory."""
    preset = re.search(r"\+trainer/strategy=(\w+)", command)
    if preset and not (REPO / "conf" / "strategy" / f"{preset.group(1)}.yaml").exists():
        pytest.skip(f"conf/strategy/{preset.group(1)}.yaml is not shipped yet")
    app = copy_app(tmp_path)
    multirun = " -m " in f" {command} "
    extra = ["trainer.max_epochs=2"] + ([] if multirun else [f"hydra.run.dir={tmp_path}/run"])
    args = command.split()[1:] + extra
    proc = subprocess.run([sys.executable, *args], cwd=app, env=launch_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    if multirun:
        sweeps = [p for p in (app / "multirun").glob("*/*") if p.is_dir()]
        assert len(sweeps) == 1, sweeps  # no stray sweep started by a re-launched rank
        jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
        assert [j.name for j in jobs] == ["0", "1"]
        run_dirs = jobs
        assert proc.stdout.count("train.py: FedAvgStrategy after 2 epochs") == 2
    else:
        run_dirs = [tmp_path / "run"]
        expected = re.search(r"\+trainer/strategy=(\w+)", command)
        name = "SingleDeviceStrategy" if expected is None else None
        if name:
            assert f"train.py: {name} after 2 epochs" in proc.stdout, proc.stdout[-2000:]
    for run_dir in run_dirs:
        rows = metrics_rows(run_dir)
        assert len(logged(rows, "val/acc")) == 2 and 0.4 < logged(rows, "val/acc")[-1] <= 1.0
        if preset and preset.group(1).startswith("parameter_server"):
            assert "train.py: ParameterServerStrategy after 2 epochs" in proc.stdout
            assert logged(rows, "ps/push_bytes"), "2 processes pushed gradients"
        elif preset:
            assert logged(rows, "fl/round") == [0.0, 1.0]
            assert "round 2/2 | clients" in proc.stdout and "train/loss" in proc.stdout  # RoundSummary
    if "strategy=fedavgm" in command:
        composed = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
        assert "server_optimizer:\n" in composed and "momentum: 0.9" in composed
