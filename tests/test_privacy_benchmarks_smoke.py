"""``benchmarks/privacy.py`` (accuracy against ε) and ``benchmarks/secure_cost.py`` (cost per round of
secure aggregation and DP) run end to end in quick mode, as a user runs them, and write well-formed JSON,
a figure and the final table (issue 9, acceptance 3 and 5)."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fl_testing import check_png, launch_env

pytest.importorskip("dp_accounting", reason="needs the privacy extra: pip install 'lightning-fl[privacy]'")
pytest.importorskip("cryptography", reason="needs the secure extra: pip install 'lightning-fl[secure]'")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, tmp_path: Path, *extra: str) -> tuple[dict, str]:
    out, png = tmp_path / "result.json", tmp_path / "result.png"
    cmd = [sys.executable, f"benchmarks/{script}", "--quick", "--synthetic", "--threads", "1", "--json", str(out),
           "--png", str(png), *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    check_png(png, proc.stdout)
    return json.loads(out.read_text()), proc.stdout


def test_privacy_quick(tmp_path: Path) -> None:
    result, stdout = _run("privacy.py", tmp_path)
    assert "final ε" in stdout and result["benchmark"] == "privacy" and result["complete"]
    runs = result["results"]
    keys = {(r["federation"], r["noise_multiplier"], r["adaptive"]) for r in runs}
    expected = {(f, None, False) for f in ("digits", "mnist")}
    expected |= {(f, z, a) for f in ("digits", "mnist") for z in (0.0, 1.0) for a in (False, True)}
    assert keys == expected
    for r in runs:
        assert 0.0 <= r["final_acc"] <= 1.0 and r["rounds"] == 2, r
        if r["noise_multiplier"]:  # ε is the one the strategy logged: finite, and growing round by round
            assert r["final_epsilon"] > 0 and math.isfinite(r["final_epsilon"])
            assert r["epsilon_curve"][0] < r["epsilon_curve"][1] == r["final_epsilon"]
        else:  # no privacy, or clipping without noise: no finite ε
            assert r["final_epsilon"] is None
    # Adaptive clipping moved the clip norm away from where it started; fixed clipping did not.
    for r in runs:
        if r["noise_multiplier"] is not None:
            assert (r["clip_norm_curve"][-1] != r["clip_norm"]) == r["adaptive"], r
    # --from-json redoes the table and figure without training (in-process: no second interpreter start).
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        privacy = importlib.import_module("privacy")
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    merged = tmp_path / "merged.json"
    assert privacy.main(["--from-json", str(tmp_path / "result.json"), "--json", str(merged)]) == 0
    assert json.loads(merged.read_text())["results"] == runs


def test_secure_cost_quick(tmp_path: Path) -> None:
    result, stdout = _run("secure_cost.py", tmp_path)
    assert "PASS" in stdout or "MISS" in stdout  # the final table was printed
    variants = result["interleaved"]["variants"]
    assert set(variants) == {"plain", "secure", "secure_masked", "dp"}
    for name, v in variants.items():
        assert len(v["s_per_round"]) == 1 and all(t > 0 for t in v["s_per_round"]) and v["median_cpu_s"] > 0, name
        assert v["clients_last_round"] == 10  # every sampled client made it into the sum
    for name in ("secure", "secure_masked", "dp"):
        assert isinstance(variants[name]["passed"], bool)
        assert variants[name]["max_abs_weight_diff_vs_plain"] > 0  # same start and clients, a different sum
    assert isinstance(result["passed"], bool)
    rows = result["scaling"]
    assert [r["clients"] for r in rows] == [10, 100]
    assert rows[1]["masks"] < rows[1]["masks_full_pairwise"] and all(r["setup_cpu_s"] > 0 for r in rows)
    assert all(result["per_client"][k] > 0 for k in ("quantize_s", "mask_s", "key_agreement_s"))
