"""Smoke test of benchmarks/flower/compare.py without Flower: lightning_fl and the plain loop, tiny sizes.

Runs in the current interpreter (``--python sys.executable``), which need not have flwr; the Flower rows
are exercised only when flwr[simulation] is importable here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fl_testing import check_png

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "flower" / "compare.py"


def _has_flower() -> bool:
    return importlib.util.find_spec("flwr") is not None and importlib.util.find_spec("ray") is not None


def _compare(tmp_path: Path, frameworks: str, workloads: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """compare.py --quick --synthetic with the workers on this interpreter; its result and JSON payload."""
    out = tmp_path / "compare.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--synthetic", "--frameworks", frameworks, "--workloads", workloads,
           "--python", sys.executable, "--logdir", str(tmp_path / "logs"), "--json", str(out), *extra]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res, json.loads(out.read_text())


def test_compare_quick_synthetic(tmp_path: Path) -> None:
    frameworks = ["lightning_fl", "plain"] + (["flower"] if _has_flower() else [])
    res, payload = _compare(
        tmp_path, ",".join(frameworks), "mnist_e1,cross_device", "--warmup", "0", "--png", str(tmp_path / "compare.png")
    )
    check_png(tmp_path / "compare.png", res.stdout)
    # The table comes last.
    assert "framework" in res.stdout and res.stdout.rstrip().splitlines()[-1].split()[0] in frameworks

    rows = {(r["framework"], r["workload"]): r for r in payload["rows"]}
    assert set(rows) == {(f, w) for f in frameworks for w in ("mnist_e1", "cross_device")}
    for row in rows.values():
        assert "error" not in row, row.get("error")
        assert row["s_per_round"] > 0 and row["train_s_per_round"] > 0
        assert 0 < row["train_s_per_round"] <= row["s_per_round"] + 1e-6
        assert row["startup_s"] > 0 and row["peak_rss_mib"] > 50
        assert row["torch_threads"] >= 1
    assert rows[("plain", "mnist_e1")]["ratio_vs_plain"] == 1.0
    # Same clients, same initial weights, same batch order: after the same rounds lightning_fl and the
    # plain loop evaluate to the same accuracy.
    acc = {f: rows[(f, "cross_device")]["test_acc"] for f in ("lightning_fl", "plain")}
    assert abs(acc["lightning_fl"] - acc["plain"]) <= 0.01, acc
    assert any(t["target"].startswith("cross_device") for t in payload["targets"])


def _pfl_python() -> str | None:
    """pfl's own venv (benchmarks/flower/setup_pfl_env.sh) if built, else this interpreter if it has pfl."""
    venv = REPO / "benchmarks" / "flower" / ".venv-pfl" / "bin" / "python"
    if venv.exists():
        return str(venv)
    return sys.executable if importlib.util.find_spec("pfl") is not None else None


def test_compare_quick_pfl_same_work(tmp_path: Path) -> None:
    """pfl-research on the same clients as the plain loop ends at the same global weights (E=1 and E>1)."""
    pfl_python = _pfl_python()
    if pfl_python is None:
        pytest.skip("pfl not installed (benchmarks/flower/setup_pfl_env.sh builds its venv)")
    _, payload = _compare(
        tmp_path, "plain,pfl", "cross_device,mnist_e5", "--warmup", "1", "--repeat", "2", "--pfl-python", pfl_python
    )
    assert len(payload["runs"]) == 2 * 2 * 2
    rows = {(r["framework"], r["workload"]): r for r in payload["rows"]}
    for row in rows.values():
        assert "error" not in row, row.get("error")
        assert row["repetitions"] == 2 and len(row["train_s_per_round_per_rep"]) == 2
        assert 0 < row["train_s_per_round"] <= row["s_per_round"] + 1e-6
    for w in ("cross_device", "mnist_e5"):
        plain, pfl = rows[("plain", w)]["weights_sum"], rows[("pfl", w)]["weights_sum"]
        assert abs(plain - pfl) <= 1e-5 * max(1.0, abs(plain)), (w, plain, pfl)
    assert rows[("pfl", "cross_device")]["test_acc"] == rows[("plain", "cross_device")]["test_acc"]
