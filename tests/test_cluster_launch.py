"""torchrun and SLURM start the processes themselves; the strategy must work under them unchanged.

SLURM is simulated: two processes with the environment variables `srun --ntasks=2` sets, so Lightning
detects its SLURMEnvironment exactly as on a cluster.
"""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fl_testing import TinyData, float_state, launch_env, max_abs_diff, net_state, reference_fedavg, seeded_module

SCRIPT = Path(__file__).resolve().parent / "scripts" / "run_fedavg.py"
SETTINGS = dict(num_clients=5, clients_per_round=4, local_epochs=1, partition="dirichlet", alpha=1.0, seed=9)
OPTIONS = dict(rounds=2, data=dict(batch_size=8, drop_last=True))


def _reference():
    return reference_fedavg(
        seeded_module().net, TinyData().train_set, rounds=2, num_clients=5, clients_per_round=4, local_epochs=1,
        batch_size=8, lr=0.1, partition="dirichlet", alpha=1.0, seed=9, drop_last=True,
    )


def _clean_env():
    return {k: v for k, v in launch_env().items() if not k.startswith("SLURM_")}


def _check(out, environment):
    result = torch.load(out)
    assert result["cluster_environment"] == environment  # Lightning detected the launcher's environment
    assert result["world_size"] == 2 and result["rank_spread"] == 0.0
    got = {k: v for k, v in net_state(result["state"]).items() if v.is_floating_point()}
    assert max_abs_diff(got, float_state(_reference())) <= 1e-5


@pytest.mark.distributed
def test_torchrun(tmp_path):
    out = tmp_path / "torchrun.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT),
           str(out), "2", json.dumps(SETTINGS), json.dumps(OPTIONS)]
    proc = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check(out, "TorchElasticEnvironment")


@pytest.mark.distributed
def test_slurm_srun_environment(tmp_path):
    out = tmp_path / "slurm.pt"
    job_id = str(random.randint(1000, 8999))  # Lightning derives the port from the job id
    procs = []
    for rank in range(2):
        env = _clean_env()
        env.update(
            SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
            SLURM_NODEID="0", SLURM_JOB_ID=job_id, SLURM_JOB_NAME="fedavg-test", SLURM_NODELIST="127.0.0.1",
        )
        cmd = [sys.executable, str(SCRIPT), str(out), "2", json.dumps(SETTINGS), json.dumps(OPTIONS)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    _check(out, "SLURMEnvironment")
