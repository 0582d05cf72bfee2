"""The FedOpt family from the command line: every preset by name, a composition, and bad settings."""

import subprocess
import sys

import pytest

from fl_testing import launch_env

NAMES = ["fedprox", "scaffold", "fednova", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]
QUICK = ["trainer.max_epochs=1", "strategy.local_epochs=1", "trainer.enable_progress_bar=false", "test=false"]


def lightning_fl(args, cwd):
    command = [sys.executable, "-m", "lightning_fl", *args]
    return subprocess.run(command, cwd=cwd, env=launch_env(), capture_output=True, text=True, timeout=600)


def test_every_preset_runs_by_name_in_one_sweep(tmp_path):
    proc = lightning_fl(["-m", f"strategy={','.join(NAMES)}", *QUICK, f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done after 1 rounds") == len(NAMES)
    overrides = sorted((p / ".hydra" / "overrides.yaml").read_text() for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert all(any(f"strategy={n}" in o for o in overrides) for n in NAMES)


def test_a_composition_is_one_line_of_overrides(tmp_path):
    proc = lightning_fl(
        ["strategy=fedprox", "strategy.client_algorithm.mu=0.1", "strategy/server_optimizer=fedyogi",
         "strategy.local_steps=3", "strategy.stragglers=0.5", *QUICK, f"hydra.run.dir={tmp_path}/run"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "lightning_fl.FedProx" in config and "mu: 0.1" in config and "lightning_fl.FedYogi" in config


@pytest.mark.parametrize(
    "args,named",
    [
        (["strategy=fedprox", "strategy.client_algorithm.mu=-1"], "mu must be >= 0"),
        (["strategy=fedadam", "strategy.server_optimizer.tau=0"], "tau must be > 0"),
        (["strategy=fedyogi", "strategy.server_optimizer.betas=[0.9,1.5]"], "betas[1] must be in [0, 1)"),
        (["strategy=parameter_server", "+strategy.client_algorithm._target_=lightning_fl.FedProx"],
         "client_algorithm=FedProx(mu=0.01) is a federated setting"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, args, named):
    quick = [a for a in QUICK if not a.startswith("strategy.")]  # parameter_server has no local_epochs
    proc = lightning_fl([*args, *quick, f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lightning-fl: error: ") and named in last, last
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "sweep",
    [
        ["strategy/aggregator=median,trimmed_mean,krum,norm_bound", "strategy/attack=sign_flip"],
        ["strategy/compression=quantize8,topk", "strategy/attack=label_flip"],
        ["strategy/privacy=dp,dp_adaptive", "strategy/secure_aggregation=secagg", "strategy=fedprox"],
    ],
    ids=["aggregators", "compression", "privacy+secagg"],
)
def test_every_part_has_a_preset(tmp_path, sweep):
    proc = lightning_fl(["-m", *sweep, *QUICK, f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sum(len(arg.split("=")[1].split(",")) for arg in sweep[:1])
    assert proc.stdout.count("done after 1 rounds") == jobs
