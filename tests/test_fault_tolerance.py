"""Issue 10, processes: silos that disagree never hang, fits exit cleanly, a killed job restarts and resumes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fl_testing import SILO_SIZES, float_state, launch_env, net_state, run_script, seeded_module, silo_dataset
from lightning_fl.federated.sampling import epoch_permutation
from lightning_fl.seeding import derive_seed

SCRIPTS = Path(__file__).resolve().parent / "scripts"
# How often each 2-process fit runs in the clean-exit test; LIGHTNING_FL_STRESS_RUNS=20 for the count.
STRESS_RUNS = int(os.environ.get("LIGHTNING_FL_STRESS_RUNS", "3"))


def _silo_reference(batch_sizes, rounds, local_epochs, seed, lr=0.1):
    """FedAvg over two silos written out: each runs local SGD on its own data with its own batch size (no
    drop_last), the average weighted by samples; the same seeded shuffles and client RNG as the strategy."""
    net = seeded_module().net
    global_state = {k: v.clone() for k, v in net.state_dict().items()}
    for r in range(rounds):
        sums, ints, total = {}, {}, 0
        for c in range(2):  # the silo's client id is its rank
            x, y = silo_dataset(c).tensors
            net.load_state_dict(global_state)
            opt = torch.optim.SGD(net.parameters(), lr=lr)
            torch.manual_seed(derive_seed(seed, "client-rng", r, c))
            net.train()
            for e in range(local_epochs):
                order = epoch_permutation(len(y), seed, r, c, e)
                for s in range(0, len(order), batch_sizes[c]):
                    b = order[s : s + batch_sizes[c]]
                    opt.zero_grad()
                    nn.functional.cross_entropy(net(x[b]), y[b]).backward()
                    opt.step()
            total += len(y)
            for k, v in net.state_dict().items():
                if v.is_floating_point():
                    sums[k] = sums.get(k, torch.zeros_like(v, dtype=torch.float64)) + len(y) * v.double()
                else:
                    ints[k] = torch.maximum(ints[k], v) if k in ints else v.clone()
        global_state.update({k: (v / total).float() for k, v in sums.items()})
        global_state.update(ints)
    net.load_state_dict(global_state)
    return net


@pytest.mark.distributed
def test_two_silos_with_different_batch_sizes_train_the_reference_model(tmp_path):
    # Silo 0: 60 samples in batches of 8 (8 steps an epoch); silo 1: 36 samples full-batch (1 step). Each
    # process planned the other silo's steps from its own batch size before, and the round hung.
    batch_sizes = [8, SILO_SIZES[1]]
    result = run_script(tmp_path, 2, {"partition": "silo", "local_epochs": 2, "seed": 5},
                        {"data": {"silo": True}, "batch_sizes": batch_sizes, "rounds": 2})
    assert "error" not in result, result.get("error")
    assert result["rank_spread"] == 0.0
    got = {k: v for k, v in net_state(result["state"]).items() if v.is_floating_point()}
    ref = float_state(_silo_reference(batch_sizes, rounds=2, local_epochs=2, seed=5))
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        assert torch.allclose(got[key], value, atol=1e-5, rtol=0), key


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["fedavg", "ps", "ssp"])
def test_two_process_fits_exit_cleanly_every_time(kind):
    """No process group outlives the fit: the script does no cleanup of its own, and every run exits 0."""
    for run in range(STRESS_RUNS):
        proc = subprocess.run([sys.executable, str(SCRIPTS / "run_clean_exit.py"), kind], env=launch_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"run {run + 1}/{STRESS_RUNS} exited {proc.returncode}: {proc.stderr[-3000:]}"
        assert proc.stdout.count("fit done") == 2, proc.stdout[-2000:]
        assert "terminate called" not in proc.stderr


def _torchrun(tmp_path, name, *extra):
    out, ckpt_dir = tmp_path / f"{name}.pt", tmp_path / f"{name}_ckpt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts",
           "1", str(SCRIPTS / "run_elastic.py"), str(out), str(ckpt_dir), *extra]
    env = {k: v for k, v in launch_env().items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "TORCH_DISABLE_"))}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out), proc.stdout + proc.stderr, ckpt_dir


@pytest.mark.distributed
def test_torchrun_restarts_a_killed_job_which_resumes_and_ends_with_the_uninterrupted_model(tmp_path):
    straight, _, _ = _torchrun(tmp_path, "straight")
    assert straight["attempt"] == 0 and straight["epoch"] == 5
    killed, log, ckpt_dir = _torchrun(tmp_path, "killed", "kill")
    assert "rank 1: SIGKILL in round 3" in log
    assert killed["attempt"] == 1 and killed["epoch"] == 5  # finished after torchrun's one restart
    # It resumed from the end of round 2, not from scratch.
    assert f"Restored all states from the checkpoint at {ckpt_dir / 'last.ckpt'}" in log
    assert straight["state"].keys() == killed["state"].keys()
    for key, value in straight["state"].items():
        assert torch.equal(value, killed["state"][key]), key


@pytest.mark.distributed
def test_processes_that_disagree_on_a_setting_fail_before_the_first_step(tmp_path):
    result = run_script(tmp_path, 2, {"num_clients": 4, "seed": 3},
                        {"per_rank": [{"local_epochs": 1}, {"local_epochs": 2}], "rounds": 1})
    assert result["error"].startswith("processes disagree on local_epochs: process 0: 1, process 1: 2;")


def test_a_restarted_attempt_skips_the_killed_attempts_store(monkeypatch):
    """torchrun's agent store still names the killed attempt's rank-0 store (now closed) when rank 1 of the
    restart asks; rank 1 must wait for the new rank 0's store instead of joining the dead one."""
    import socket
    import threading
    from datetime import timedelta

    import torch.distributed as dist

    from lightning_fl.strategies import elastic_store

    agent = dist.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent.port))
    with socket.socket() as dead:  # a port that was bound and is closed again, as a killed process leaves it
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
    agent.set(f"{elastic_store._KEY}/0", f"{dead_port} stale-token")
    stores = {}

    def join(rank):
        stores[rank] = elastic_store.attempt_store(rank, 2, timedelta(seconds=30))

    monkeypatch.setattr(elastic_store, "_setups", 0)
    late = threading.Thread(target=join, args=(1,))
    late.start()  # rank 1 first: it meets the stale key
    threading.Event().wait(0.5)
    monkeypatch.setattr(elastic_store, "_setups", 0)  # the same fit in the other process
    join(0)
    late.join(timeout=30)
    assert not late.is_alive()
    stores[0].set("hello", "from rank 0")
    assert stores[1].get("hello") == b"from rank 0"
