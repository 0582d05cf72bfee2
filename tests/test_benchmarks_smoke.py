"""The benchmark scripts run end to end (quick mode, synthetic data) and write well-formed JSON.

They are separate processes, as a user would run them. ``--threads 1`` keeps them fast when other
jobs share the cores (two OpenMP threads on a contended 2-core box can be many times slower).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fl_testing import check_png

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path, *extra: str) -> dict[str, Any]:
    png = out.with_suffix(".png")
    cmd = [sys.executable, f"benchmarks/{script}", "--quick", "--synthetic", "--threads", "1", "--json", str(out), *extra]
    proc = subprocess.run([*cmd, "--png", str(png)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "PASS" in proc.stdout or "MISS" in proc.stdout, proc.stdout  # the final table was printed
    check_png(png, proc.stdout)
    return json.loads(out.read_text())


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.mark.parametrize("net", ["cnn", "linear"])
def test_overhead_quick(tmp_path: Path, net: str) -> None:
    result = _run("overhead.py", tmp_path / "overhead.json", "--net", net)
    assert result["config"]["net"] == net
    for key in ("median_lightning_s", "median_plain_s", "median_ratio", "median_cpu_ratio", "target_ratio", "rounds"):
        assert _positive(result[key]), (key, result[key])
    assert result["rounds"] == 2
    for key in ("lightning_s_per_round", "plain_s_per_round", "ratio_per_round", "cpu_ratio_per_round"):
        assert len(result[key]) == 2 and all(_positive(v) for v in result[key]), (key, result[key])
    assert isinstance(result["passed"], bool)
    # Both sides did the same work: same clients, batches and seeds give the same global model.
    assert 0 <= result["max_abs_weight_diff"] <= 1e-4


def test_memory_clients_quick(tmp_path: Path) -> None:
    result = _run("memory_clients.py", tmp_path / "memory.json")
    assert [r["clients"] for r in result["results"]] == [10, 100]
    for r in result["results"]:
        for key in ("peak_rss_mib", "before_fit_rss_mib", "ratio"):
            assert _positive(r[key]), (key, r)
        assert r["peak_rss_mib"] >= r["before_fit_rss_mib"]
        # Peak during fit() alone, where the kernel lets the high-water mark be reset (Linux); else None.
        assert r["fit_peak_rss_mib"] is None or _positive(r["fit_peak_rss_mib"])
        assert r["rounds_done"] == 1
    assert result["results"][0]["ratio"] == 1.0
    assert _positive(result["ratio_largest_vs_smallest"]) and _positive(result["target_ratio"])
    assert isinstance(result["passed"], bool)


@pytest.mark.parametrize(
    "command",
    [
        ["overhead.py"],
        ["memory_clients.py"],
        ["mcmahan_table2.py", "--quick"],
        ["scaling.py"],
        ["communication.py"],
        ["ps_throughput.py"],
        ["ps_stragglers.py"],
    ],
    ids=lambda command: command[0],
)
def test_missing_data_is_one_line(tmp_path: Path, command: list[str]) -> None:
    script, *extra = command
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *extra, "--data", str(tmp_path / "nope.npz")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--data" in lines[0], proc.stderr
