"""Issue 4's straggler model and ``benchmarks/ps_stragglers.py`` (quick, synthetic)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fl_testing import check_png, launch_env

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from straggler_model import extra_sleep, finish_time, speedup, step_times  # noqa: E402


def test_simulation_by_hand():
    # Worker 1 straggles (3) at step 0 only. Sync: every step waits for the slower worker: 3 + 1 + 1.
    times = [[1, 1, 1], [3, 1, 1]]
    assert finish_time(times, 0) == 5
    # s = 1: worker 0 may start step 1 at once, and step 2 only after worker 1's step 0 (t = 3): 3 + 1 = 4;
    # worker 1 finishes at 3 + 1 + 1 = 5 either way. The job ends with the slowest worker.
    assert finish_time(times, 1) == 5
    times = [[1, 1, 1, 3], [3, 1, 1, 1]]  # both straggle once, at different steps
    assert finish_time(times, 0) == 3 + 1 + 1 + 3
    assert finish_time(times, 2) == 6  # the stragglers overlap: 3 + 1 + 1 + 1 and 1 + 1 + 1 + 3


def test_simulated_speedups_are_those_the_issue_quotes():
    # Issue 4: 1.14x at staleness 1, 1.20x at 3, tending to 1.875 / 1.5 = 1.25x; none with a slow worker.
    assert speedup("transient", 1) == pytest.approx(1.14, abs=0.01)
    assert speedup("transient", 3) == pytest.approx(1.20, abs=0.01)
    assert speedup("transient", 100) == pytest.approx(1.25, abs=0.01)
    assert speedup("persistent", 3, steps=2000) == pytest.approx(1.0, abs=0.01)
    assert speedup("none", 3, steps=100) == 1.0


def test_straggler_draws_are_fixed_and_have_the_stated_rate():
    draws = [extra_sleep("transient", w, k, 2, 1.0, seed=0) for w in range(2) for k in range(4000)]
    assert set(draws) == {0.0, 2.0}
    assert draws.count(2.0) / len(draws) == pytest.approx(0.25, abs=0.02)
    assert draws == [extra_sleep("transient", w, k, 2, 1.0, seed=0) for w in range(2) for k in range(4000)]
    assert step_times("persistent", 2, 3, compute=0.5) == [[0.5] * 3, [1.0] * 3]
    with pytest.raises(ValueError, match="unknown straggler condition"):
        extra_sleep("sometimes", 0, 0, 2, 1.0)


@pytest.mark.distributed
def test_ps_stragglers_quick(tmp_path: Path) -> None:
    out = tmp_path / "stragglers.json"
    env = launch_env()
    proc = subprocess.run(
        [sys.executable, "benchmarks/ps_stragglers.py", "--quick", "--synthetic", "--json", str(out),
         "--png", str(tmp_path / "stragglers.png")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_png(tmp_path / "stragglers.png", proc.stdout)
    result = json.loads(out.read_text())
    assert result["benchmark"] == "ps_stragglers" and result["compute_s"] > 0
    runs = result["runs"]
    assert {(r["condition"], r["strategy"]) for r in runs} == {
        (c, s) for c in ("none", "transient", "persistent") for s in ("ddp", "ps_sync", "ps_ssp1", "ps_ssp3")
    }
    assert all(r["samples_per_s"] > 0 for r in runs)
    # The sleeps were really injected: transient and persistent stragglers slow synchronous DDP down.
    ddp = {r["condition"]: r["samples_per_s"] for r in runs if r["strategy"] == "ddp"}
    assert ddp["transient"] < 0.9 * ddp["none"] and ddp["persistent"] < 0.9 * ddp["none"]
    assert "(ii) SSP s=3 / sync PS, transient" in proc.stdout and "(iii) persistent straggler" in proc.stdout


def test_straggler_model_png(tmp_path: Path) -> None:
    png = tmp_path / "model.png"
    proc = subprocess.run([sys.executable, "benchmarks/straggler_model.py", "--steps", "200", "--png", str(png)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[3].split()[0] == "transient"  # the table is printed with or without a plot
    check_png(png, proc.stdout)
