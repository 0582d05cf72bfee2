"""Issue 13's benchmarks run end to end (quick, synthetic) and the Hydra compression presets mirror the
Python API. ``communication.py``'s compressed rows are checked in test_more_benchmarks_smoke.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fl_testing import check_png, launch_env
from lightning_fl import FedAvgStrategy, Quantize, TopK

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path) -> tuple[dict[str, Any], str]:
    png = out.with_suffix(".png")
    cmd = [sys.executable, f"benchmarks/{script}", "--quick", "--synthetic", "--threads", "1", "--json", str(out)]
    proc = subprocess.run([*cmd, "--png", str(png)], cwd=REPO_ROOT, env=launch_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "PASS" in proc.stdout or "MISS" in proc.stdout, proc.stdout  # the final table was printed
    check_png(png, proc.stdout)
    return json.loads(out.read_text()), proc.stdout


def _fraction(value: Any) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


def test_compression_accuracy_quick(tmp_path: Path) -> None:
    result, _ = _run("compression_accuracy.py", tmp_path / "acc.json")
    assert result["benchmark"] == "compression_accuracy" and result["complete"]
    runs = result["runs"]
    assert [(r["partition"], r["seed"], r["variant"]) for r in runs] == [
        ("iid", 0, "none"), ("iid", 0, "q8"), ("iid", 0, "topk1%-noef")
    ]  # fmt: skip
    for r in runs:
        assert [c[0] for c in r["curve"]] == [1, 2] and all(_fraction(c[1]) for c in r["curve"])
        assert r["final_accuracy"] == r["curve"][-1][1] and r["seconds"] > 0
    rows = {r["variant"]: r for r in result["summary"]}
    assert rows["none"]["mean_gap_points"] == 0.0 and "passed" not in rows["none"]
    assert isinstance(rows["q8"]["passed"], bool) and "passed" not in rows["topk1%-noef"]  # no target without EF
    assert math.isclose(rows["q8"]["mean_gap_points"], 100 * (runs[1]["final_accuracy"] - runs[0]["final_accuracy"]))
    assert result["passed"] == rows["q8"]["passed"]


def test_compression_accuracy_merges_runs_made_separately(tmp_path: Path) -> None:
    """--from-json: variants run in two commands give the table of one run, ``none`` kept once."""
    base = [sys.executable, "benchmarks/compression_accuracy.py", "--quick", "--synthetic", "--threads", "1"]
    for name, variants in (("a", "none,q8"), ("b", "none,topk1%")):
        proc = subprocess.run([*base, "--variants", variants, "--json", str(tmp_path / f"{name}.json")], cwd=REPO_ROOT,
                              env=launch_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    separate = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab"}
    merged_path = tmp_path / "merged.json"
    proc = subprocess.run([sys.executable, "benchmarks/compression_accuracy.py", "--from-json", str(tmp_path / "a.json"),
                           str(tmp_path / "b.json"), "--json", str(merged_path)], cwd=REPO_ROOT, env=launch_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = json.loads(merged_path.read_text())
    assert [(r["variant"]) for r in merged["runs"]] == ["none", "q8", "topk1%"]
    rows = {r["variant"]: r for r in merged["summary"]}
    for name, variant in (("a", "q8"), ("b", "topk1%")):
        alone = {r["variant"]: r for r in separate[name]["summary"]}[variant]
        assert rows[variant]["mean_gap_points"] == alone["mean_gap_points"]
    assert list(merged["config"]["variants"]) == ["none", "q8", "topk1%"]


def test_compression_cost_quick(tmp_path: Path) -> None:
    result, _ = _run("compression_cost.py", tmp_path / "cost.json")
    assert result["benchmark"] == "compression_cost" and result["rounds"] == 1
    variants = result["variants"]
    assert list(variants) == ["none", "q8", "topk1%"]
    # The wrapped calls ran once per client (3 per round) in the compressed fits and never in the plain one.
    assert variants["none"]["compress_calls_per_round"] == [0] and variants["none"]["median_calls_share"] == 0
    for name in ("q8", "topk1%"):
        v = variants[name]
        assert v["compress_calls_per_round"] == [3] and v["decode_s_per_round"][0] > 0
        assert v["median_ratio"] > 0 and isinstance(v["passed"], bool) and v["target_ratio"] == 1.10
        assert v["max_abs_weight_diff_vs_none"] > 0  # same start, same clients: compression really ran


@pytest.mark.parametrize(
    ("preset", "expected"), [("quantize8", Quantize(bits=8)), ("topk", TopK(fraction=0.01))]
)
def test_hydra_presets_mirror_the_python_api(preset: str, expected: Any) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    made = instantiate(OmegaConf.load(REPO_ROOT / "conf" / "strategy" / "compression" / f"{preset}.yaml"))
    assert made == expected and made.error_feedback
    assert FedAvgStrategy(num_clients=4, clients_per_round=2, compression=made).compression == expected
