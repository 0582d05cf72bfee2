"""``benchmarks/algorithm_cost.py`` and ``memory_clients.py --client-algorithm scaffold`` run end to end
(quick mode, synthetic data) and write well-formed JSON, as a user would run them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from fl_testing import check_png

REPO_ROOT = Path(__file__).resolve().parents[1]
MCMAHAN_CNN_PARAMS = 1_663_370


def _run(script: str, out: Path, *extra: str) -> tuple[dict[str, Any], str]:
    png = out.with_suffix(".png")
    cmd = [sys.executable, f"benchmarks/{script}", "--quick", "--synthetic", "--threads", "1", "--json", str(out)]
    proc = subprocess.run([*cmd, *extra, "--png", str(png)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "PASS" in proc.stdout or "MISS" in proc.stdout, proc.stdout  # the final table was printed
    check_png(png, proc.stdout)
    return json.loads(out.read_text()), proc.stdout


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_algorithm_cost_quick(tmp_path: Path) -> None:
    result, _ = _run("algorithm_cost.py", tmp_path / "cost.json")
    assert result["benchmark"] == "algorithm_cost" and result["rounds"] == 2
    variants = result["variants"]
    assert list(variants) == ["fedavg", "fedprox", "scaffold"]
    for name, v in variants.items():
        assert len(v["s_per_round"]) == len(v["ratio_per_round"]) == 2, (name, v)
        assert all(_positive(t) for t in v["s_per_round"]) and _positive(v["median_s"]) and _positive(v["warmup_s"])
        assert v["min_ratio"] <= v["median_ratio"] <= v["max_ratio"]
    assert variants["fedavg"]["median_ratio"] == 1.0
    for name in ("fedprox", "scaffold"):
        assert isinstance(variants[name]["passed"], bool) and variants[name]["target_ratio"] == 1.15
        # Same start, same clients: a different end shows the algorithm really ran.
        assert variants[name]["max_abs_weight_diff_vs_fedavg"] > 0
    # Only SCAFFOLD keeps client state: one model-sized file per client trained so far (4 per round here).
    assert all(b is None for b in variants["fedavg"]["client_state_bytes"])
    per_file = 4 * MCMAHAN_CNN_PARAMS
    sizes = variants["scaffold"]["client_state_bytes"]
    assert len(sizes) == 3 and sizes == sorted(sizes) and per_file * 4 <= sizes[0] < per_file * 4 * 1.01
    assert isinstance(result["passed"], bool)


def test_memory_clients_scaffold_quick(tmp_path: Path) -> None:
    result, stdout = _run("memory_clients.py", tmp_path / "memory.json", "--client-algorithm", "scaffold")
    assert result["config"]["client_algorithm"] == "scaffold" and "all clients MB" in stdout
    assert [r["clients"] for r in result["results"]] == [10, 100]
    for r in result["results"]:
        assert _positive(r["peak_rss_mib"]) and r["rounds_done"] == 1
        assert r["params"] == MCMAHAN_CNN_PARAMS
        # One round of 10 clients: 10 variate files, measured on disk and by the strategy's metric alike.
        assert r["client_state_files"] == 10
        assert 10 * 4 * r["params"] <= r["client_state_bytes"] < 10 * 4 * r["params"] * 1.01
        assert r["client_state_metric_bytes"] == r["client_state_bytes"]
        assert r["client_state_files_left_after_fit"] == 0  # removed at the end of fit
        assert r["projected_all_clients_bytes"] == r["clients"] * 4 * r["params"]
    assert isinstance(result["passed"], bool)


def test_algorithm_cost_missing_data_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/algorithm_cost.py", "--data", str(tmp_path / "nope.npz")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--data" in lines[0], proc.stderr
