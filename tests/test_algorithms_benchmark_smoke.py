"""``benchmarks/algorithms.py`` runs end to end (quick, synthetic MNIST, real digits): every algorithm, both
straggler settings, a table, JSON and a figure; ``--from-json`` redoes the table for another target.

One process for all 32 fits, as a user runs it; a few seconds on 2 cores. The replay and the missing-data
check call ``main`` in this process: each would otherwise pay the seconds of importing torch and Lightning.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fl_testing import check_png, launch_env

REPO_ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = ["FedAvg", "FedProx", "SCAFFOLD", "FedNova", "FedAvgM", "FedAdagrad", "FedAdam", "FedYogi"]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_algorithms", REPO_ROOT / "benchmarks" / "algorithms.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_algorithms_quick(tmp_path: Path) -> None:
    out, png = tmp_path / "algorithms.json", tmp_path / "algorithms.png"
    cmd = [sys.executable, "benchmarks/algorithms.py", "--quick", "--synthetic", "--threads", "1"]
    proc = subprocess.run([*cmd, "--json", str(out), "--png", str(png)], cwd=REPO_ROOT, env=launch_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "rounds to target" in proc.stdout  # the final table was printed
    check_png(png, proc.stdout)
    result = json.loads(out.read_text())
    assert result["benchmark"] == "algorithms" and result["complete"]
    runs = result["results"]
    keys = {(r["federation"], r["stragglers"], r["algorithm"]) for r in runs}
    assert keys == {(f, s, a) for f in ("mnist", "digits") for s in (0.0, 0.5) for a in ALGORITHMS}
    for r in runs:
        assert len(r["acc_curve"]) == 2 and all(0.0 <= a <= 1.0 for a in r["acc_curve"]), r
        assert r["final_acc"] == r["acc_curve"][-1]
    assert len(result["summary"]) == len(keys)

    # Replay: a target every run reaches at round 1 gives rounds_to_target 1 everywhere, without training.
    replayed = tmp_path / "replayed.json"
    assert _bench().main(["--from-json", str(out), "--targets", "mnist=1e-9,digits=1e-9", "--json", str(replayed)]) == 0
    summary = json.loads(replayed.read_text())["summary"]
    assert all(row["rounds_to_target"] == [1] and row["target"] == 1e-9 for row in summary), summary


def test_algorithms_missing_data_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:  # sys.exit(message): Python prints it as one line on stderr
        _bench().main(["--quick", "--data", str(tmp_path / "nope.npz")])
    message = str(exc.value.code)
    assert "\n" not in message and "--data" in message, message
