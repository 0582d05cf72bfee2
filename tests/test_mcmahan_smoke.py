"""``benchmarks/mcmahan_table2.py`` runs end to end in quick mode on synthetic data and writes well-formed JSON.

A separate process, as a user would run it; ``--threads 1`` keeps it fast when other jobs share the cores.
One IID and one shards row keep it well under 30 s while covering both partitions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fl_testing import check_png

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/mcmahan_table2.py"


def test_mcmahan_table2_quick(tmp_path: Path) -> None:
    out = tmp_path / "mcmahan.json"
    cmd = [
        sys.executable,
        SCRIPT,
        "--quick",
        "--synthetic",
        "--threads",
        "1",
        "--rows",
        "iid-e1-b10,shards-e1-b10",
        "--json",
        str(out),
        "--png",
        str(tmp_path / "mcmahan.png"),
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{SCRIPT} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    check_png(tmp_path / "mcmahan.png", proc.stdout)  # one panel per row
    assert "rounds to 99%" in proc.stdout  # the final table was printed
    result = json.loads(out.read_text())
    assert result["benchmark"] == "mcmahan_table2"
    assert result["config"]["quick"] is True and result["config"]["num_clients"] == 100
    assert [r["row"] for r in result["results"]] == ["iid-e1-b10", "shards-e1-b10"]
    for r in result["results"]:
        for key in (
            "partition",
            "local_epochs",
            "batch_size",
            "lr",
            "rounds_to_target",
            "paper_rounds",
            "rounds_run",
            "best_acc",
            "eval_rounds",
            "acc_curve",
            "round_s",
            "mean_round_s",
        ):
            assert key in r, (key, r)
        assert r["rounds_run"] == 2 and r["eval_rounds"] == [1, 2]
        assert len(r["acc_curve"]) == 2 and all(0.0 <= a <= 1.0 for a in r["acc_curve"])
        assert len(r["round_s"]) == 2 and all(s > 0 for s in r["round_s"])
        # Random labels cannot reach 99%.
        assert r["rounds_to_target"] is None
    assert result["results"][0]["paper_rounds"] == 34 and result["results"][1]["paper_rounds"] == 350

    # --replot: runs made separately (another lr, another row) merged into one table and figure, no training.
    other = dict(result, results=[dict(result["results"][0], lr=0.5)])
    (tmp_path / "other.json").write_text(json.dumps(other))
    png = tmp_path / "merged.png"
    cmd = [sys.executable, SCRIPT, "--replot", str(out), str(tmp_path / "other.json"), "--png", str(png)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_png(png, proc.stdout)
    table = [line for line in proc.stdout.splitlines() if line.strip().startswith(("iid-", "shards-"))]
    assert len(table) == 3 and "0.5" in table[2]
