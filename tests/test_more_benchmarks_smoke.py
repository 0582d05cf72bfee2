"""``benchmarks/scaling.py``, ``communication.py`` and ``ps_throughput.py`` run end to end (quick, synthetic).

Each is a separate process that starts 2-process Lightning launches of its own, as a user would run it;
``--threads 1`` keeps them fast when other jobs share the cores. Together well under 90 s on 2 cores.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fl_testing import check_png, launch_env

REPO_ROOT = Path(__file__).resolve().parents[1]
MCMAHAN_CNN_PARAMS = 1_663_370


def _run(script: str, out: Path) -> tuple[dict[str, Any], str]:
    png = out.with_suffix(".png")
    cmd = [sys.executable, f"benchmarks/{script}", "--quick", "--synthetic", "--threads", "1", "--json", str(out)]
    env = launch_env()
    proc = subprocess.run([*cmd, "--png", str(png)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    check_png(png, proc.stdout)
    return json.loads(out.read_text()), proc.stdout


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_scaling_quick(tmp_path: Path) -> None:
    result, stdout = _run("scaling.py", tmp_path / "scaling.json")
    assert result["benchmark"] == "scaling" and "s/round (median)" in stdout
    sweep = result["clients_sweep"]
    assert [r["clients"] for r in sweep] == [10, 100]
    # The fair design: every N trains the same samples in the same number of steps per round.
    assert len({r["samples_per_round"] for r in sweep}) == 1 and len({r["steps_per_round"] for r in sweep}) == 1
    assert [r["devices"] for r in result["processes_sweep"]] == [1, 2]
    for r in sweep + result["processes_sweep"]:
        assert _positive(r["median_s_per_round"]) and all(_positive(t) for t in r["s_per_round"])
        assert len(r["ranks"]) == r["devices"]
        assert all(_positive(x["peak_rss_mib"]) and x["torch_threads"] == 1 for x in r["ranks"])
    assert _positive(result["speedup_2_vs_1_process"]) and "note" in result


def test_communication_quick(tmp_path: Path) -> None:
    result, stdout = _run("communication.py", tmp_path / "comm.json")
    assert result["benchmark"] == "communication" and "measured/formula" in stdout
    rows = result["results"]
    assert [r["model"] for r in rows] == ["mlp:13", "mlp:126"]
    for r in rows:
        p = r["params"]
        assert p == 795 * int(r["model"][4:]) + 10 and r["model_bytes"] == 4 * p
        # 2 ranks: a ring all-reduce sends 2 (W-1)/W = 1 buffer: P weights + Σw, rejected, clients, failed.
        assert r["fedavg_formula_bytes_per_rank_round"] == 4 * (p + 4)
        # Push + pull of the padded flat parameters on gloo: the push (reduce-scatter, run as an all-reduce)
        # sends 2 (W-1)/W = 1 buffer, the pull (all-gather) (W-1)/W = 1/2: 1.5 buffers per step.
        padded = -(-p // 2) * 2
        assert r["ps_formula_bytes_per_rank_step"] == 4 * padded * 3 // 2
        if result["config"]["lo_readable"]:
            assert _positive(r["fedavg_measured_bytes_per_rank_round"]) and _positive(
                r["ps_measured_bytes_per_rank_step"]
            )
            if result["config"]["isolated_netns"]:  # nothing else on this lo: TCP/IP headers only
                assert 0.95 < r["fedavg_ratio"] < 1.3, r
        else:
            assert r["fedavg_measured_bytes_per_rank_round"] is None
    assert set(result["collectives_ring_formula"]) == {"all_reduce", "reduce_scatter_tensor", "all_gather_into_tensor"}
    _check_compressed(result)


def _check_compressed(result: dict[str, Any]) -> None:
    """The compressed-update rows (issue 13): what is logged follows the exchange's formula exactly."""
    from lightning_fl.federated.compression import Quantize, TopK, exchange_bytes

    rows = {r["compression"]: r for r in result["compressed"]}
    assert list(rows) == ["none", "q8", "topk0.01"] and all(r["clients_per_rank"] == 1 for r in rows.values())
    p = rows["none"]["params"]
    assert p == 795 * 126 + 10
    extra = {}
    for spec, comp in (("q8", Quantize(8)), ("topk0.01", TopK(0.01))):
        r = rows[spec]
        assert r["upload_bytes_per_client"] == comp.compressed_nbytes(p)
        # The exchange: one block per rank, one record plus the round's bookkeeping sums (16 B).
        extra[spec] = r["logged_bytes_per_rank_round"] - exchange_bytes(1, comp, p, 2)
        assert extra[spec] == 16, r
    assert extra["q8"] == extra["topk0.01"]
    assert 3.9 < rows["q8"]["logged_reduction_vs_none"] < 4.0 and 45 < rows["topk0.01"]["logged_reduction_vs_none"] < 50
    if result["config"]["lo_readable"] and result["config"]["isolated_netns"]:
        for r in rows.values():
            assert 0.95 < r["measured_over_logged"] < 1.6, r  # small payloads: per-call framing shows
    assert isinstance(result["compressed_passed"], bool)
    # The formula table's first row (1 client per process) is what was logged.
    first = result["compressed_formulas_w2"][0]
    assert first["clients_per_rank"] == 1
    for spec, r in rows.items():
        assert first[spec]["bytes_per_rank_round"] == r["logged_bytes_per_rank_round"], spec


def test_ps_throughput_quick(tmp_path: Path) -> None:
    result, stdout = _run("ps_throughput.py", tmp_path / "ps.json")
    assert result["benchmark"] == "ps_throughput" and ("PASS" in stdout or "MISS" in stdout)
    assert result["config"]["params"] == MCMAHAN_CNN_PARAMS
    memory = {(m["optimizer"], m["processes"]): m for m in result["optimizer_state"]}
    assert set(memory) == {(o, s) for o in ("sgd_momentum", "adam") for s in (1, 2)}
    for (optimizer, s), m in memory.items():
        assert len(m["ddp_bytes_per_rank"]) == len(m["ps_bytes_per_rank"]) == s
        # One momentum buffer (SGD) or two moments (Adam) per parameter, plus Adam's scalar step counts.
        full = 4 * MCMAHAN_CNN_PARAMS * (1 if optimizer == "sgd_momentum" else 2)
        assert all(full <= b <= full + 64 for b in m["ddp_bytes_per_rank"])
        assert m["ps_over_ddp"] == pytest.approx(1.0 / s, rel=0.01)
    runs = result["throughput_runs"]
    assert [r["strategy"] for r in runs] == ["ddp", "parameter_server"]
    assert all(_positive(r["samples_per_s"]) for r in runs)
    assert (
        _positive(result["ddp_samples_per_s"])
        and _positive(result["ps_samples_per_s"])
        and _positive(result["ps_over_ddp"])
    )
    assert isinstance(result["passed"], bool)


def test_evaluation_cost_quick(tmp_path: Path) -> None:
    result, stdout = _run("evaluation_cost.py", tmp_path / "evaluation_cost.json")
    fed, central = result["variants"]["federated"], result["variants"]["central"]
    assert len(fed["s_per_round"]) == len(central["s_per_round"]) == result["rounds"] == 2
    assert all(_positive(s) for s in fed["s_per_round"] + central["s_per_round"])
    # Evaluation never changes training; the federated variant logged its client statistics.
    assert result["same_final_weights"] is True
    assert {"fl/eval/val_acc/mean", "fl/eval/val_acc/p10", "fl/eval/val_loss/p90"} <= set(result["federated_metrics"])
    assert "same final weights: True" in stdout
