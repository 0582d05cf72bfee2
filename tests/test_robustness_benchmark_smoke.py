"""``benchmarks/robustness.py`` and ``benchmarks/robust_cost.py`` run end to end in quick mode, as a user runs
them: every attack x every aggregator, a table, JSON, a figure and the acceptance verdicts; the cost script
with its 2-process child and the failing-client fits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fl_testing import check_png, launch_env

REPO_ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ["none", "sign_flip", "scale", "gaussian", "label_flip"]
AGGREGATORS = ["FedAvg", "Median", "TrimmedMean(0.2)", "Krum", "NormBound(1)"]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, f"benchmarks/{script}", "--threads", "1", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=launch_env(), capture_output=True, text=True, timeout=300)


def test_robustness_quick(tmp_path: Path) -> None:
    out, png = tmp_path / "robustness.json", tmp_path / "robustness.png"
    # One partition keeps the smoke run short; both go through the same code.
    proc = _run("robustness.py", "--quick", "--synthetic", "--partitions", "dirichlet", "--json", str(out),
                "--png", str(png))  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "FedAvg degrades" in proc.stdout  # the acceptance table was printed
    check_png(png, proc.stdout)
    result = json.loads(out.read_text())
    assert result["benchmark"] == "robustness" and result["complete"]
    runs = result["results"]
    assert {(r["attack"], r["aggregator"]) for r in runs} == {(t, a) for t in ATTACKS for a in AGGREGATORS}
    for r in runs:
        assert len(r["acc_curve"]) == 2 and 0.0 <= r["final_acc"] <= 1.0, r
        # 20 % of the 10 sampled clients are attackers in every attacked run.
        assert r["malicious_last_round"] == (None if r["attack"] == "none" else 2.0), r
    assert "Krum(num_malicious=2, multi=8" in result["config"]["aggregators"]["Krum"]
    verdicts = result["acceptance"]
    assert [v["attack"] for v in verdicts] == ["sign_flip", "scale", "gaussian"]

    # Replay from the JSON: the same summary without training.
    replayed = tmp_path / "replayed.json"
    proc = _run("robustness.py", "--from-json", str(out), "--json", str(replayed))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(replayed.read_text())["summary"] == result["summary"]


def test_robust_cost_quick(tmp_path: Path) -> None:
    out, png = tmp_path / "robust_cost.json", tmp_path / "robust_cost.png"
    # 2 processes only: the child launch, the sharded rules and the per-rank gather are the parts at risk.
    proc = _run("robust_cost.py", "--quick", "--synthetic", "--devices", "2", "--json", str(out), "--png", str(png))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    check_png(png, proc.stdout)
    result = json.loads(out.read_text())
    rows = result["aggregation"]
    assert [r["rule"] for r in rows] == ["mean", "Median", "TrimmedMean(0.1)", "Krum(K/5)"]
    for r in rows:
        assert r["devices"] == 2 and len(r["maxrss_mb"]) == 2 and all(m > 0 for m in r["maxrss_mb"]), r
        assert len(r["end_round_s"]) == 1 and r["end_round_s"][0] > 0, r
    # The holding rules move updates between the processes; the mean sends none of its own.
    assert rows[0]["bytes_sent_mb"] == [0.0, 0.0] and all(b > 0 for r in rows[1:] for b in r["bytes_sent_mb"])
    fail = result["failing_client"]
    assert fail["variants"]["healthy"]["failed_clients_last_round"] == 0
    assert fail["variants"]["fails_first_step"]["failed_clients_last_round"] == 1
    assert fail["variants"]["fails_last_step"]["failed_clients_last_round"] == 1
    assert set(fail["verdict"]) == {"fails_first_step", "fails_last_step"}
