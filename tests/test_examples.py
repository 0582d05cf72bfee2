"""The examples run (quick settings), so they cannot rot."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist.npz"


def run_example(name, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "RANK")}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / name), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_existing_module_is_federated_by_the_strategy_argument_alone():
    central = run_example("existing_module.py", "--strategy", "auto", "--epochs", "3")
    federated = run_example("existing_module.py", "--strategy", "fedavg", "--epochs", "3")
    acc = {line.split(":")[0]: float(line.split("=")[1]) for line in (central + federated).splitlines()
           if "val_acc=" in line}
    assert acc["auto"] > 0.9 and acc["fedavg"] > 0.8  # 3 rounds of 10 IID clients, one local epoch each


def test_seed_model_has_correct_shapes_on_digits():
    out = run_example("seed_model.py", "--rounds", "2")
    assert "dense layer takes 256 features" in out
    assert "round 2/2" in out


@pytest.mark.mnist
def test_mnist_example_on_a_subset():
    if not MNIST.exists():
        pytest.skip("../shared/data/mnist.npz is not here")
    out = run_example("mnist_fedavg.py", "--data", str(MNIST), "--train-subset", "1000", "--clients", "10",
                      "--per-round", "2", "--local-epochs", "1", "--rounds", "1")
    assert "round 1/1 | clients 2 (200 samples)" in out
