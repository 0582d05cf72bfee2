"""``lightning_fl.plotting`` and ``lightning-fl-plot`` on hand-made run directories.

The files are written the way Lightning's CSVLogger writes them (separate step-level, validation and
epoch-end rows with blank cells) so the expected values can be read off the fixture.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_fl.plotting import (
    HINT,
    MatplotlibMissing,
    client_figure,
    load_runs,
    metrics_figure,
    read_metrics_csv,
    write_figures,
    write_run_figures,
)
from lightning_fl.plotting.cli import main as plot_main

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLUMNS = [
    "epoch", "fl/clients", "fl/comm_bytes", "fl/epsilon", "fl/eval/val_acc/max", "fl/eval/val_acc/mean",
    "fl/eval/val_acc/min", "fl/eval/val_acc/p10", "fl/eval/val_acc/p90", "fl/round", "step", "test_acc",
    "train_loss_epoch", "train_loss_step", "val_acc", "val_loss",
]  # fmt: skip
ROUNDS = 3


def val_acc(round_idx: int, offset: float) -> float:
    return 0.5 + 0.1 * round_idx + offset


def write_run(run_dir: Path, overrides: list[str], offset: float = 0.0, clients: bool = True) -> None:
    """A finished run: ROUNDS rounds, 2 step-level rows each, then validation and the epoch-end row."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run_dir / "logs").mkdir()
    rows = []
    for r in range(ROUNDS):
        for s in range(2):
            rows.append({"epoch": r, "step": 10 * r + s, "train_loss_step": 9.0})  # must be ignored
        rows.append({"epoch": r, "step": 10 * r + 1, "val_acc": val_acc(r, offset), "val_loss": 1.0 - 0.1 * r})
        rows.append({
            "epoch": r, "step": 10 * r + 1, "fl/round": r, "fl/clients": 4, "fl/comm_bytes": 1e6 * (r + 1),
            "fl/epsilon": 0.5 * (r + 1), "train_loss_epoch": 2.0 - 0.5 * r,
            "fl/eval/val_acc/mean": 0.6 + r * 0.1, "fl/eval/val_acc/min": 0.3, "fl/eval/val_acc/max": 0.95,
            "fl/eval/val_acc/p10": 0.4, "fl/eval/val_acc/p90": 0.9,
        })  # fmt: skip
    rows.append({"epoch": ROUNDS, "step": 10 * ROUNDS, "test_acc": 0.77 + offset})  # trainer.test after fit
    with open(run_dir / "logs" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if clients:
        with open(run_dir / "logs" / "client_metrics.csv", "w", newline="") as f:
            f.write("round,client,metric,value,num_samples\n")
            for r in (0, 2):  # evaluation every other round
                for c, (acc, n) in enumerate([(0.5, 10), (0.7, 30), (0.9, 60), (1.0, 100)]):
                    f.write(f"{r},{c},val_acc,{acc + offset - 0.1 * (2 - r)},{n}\n")
                    f.write(f"{r},{c},val_loss,{1 - acc},{n}\n")


def assert_png(path: Path, width: int, height: int) -> None:
    image = pytest.importorskip("matplotlib.image")
    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE, path
    pixels = image.imread(path)
    assert pixels.shape[:2] == (height, width), (path, pixels.shape)


def legend_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_csvlogger_rows_give_one_epoch_level_value_per_round(tmp_path: Path) -> None:
    write_run(tmp_path / "run", ["seed=0"])
    rounds, tests = read_metrics_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert sorted(rounds) == [1, 2, 3]  # fl/round + 1
    for r in range(ROUNDS):
        got = rounds[r + 1]
        assert got["val_acc"] == pytest.approx(val_acc(r, 0.0)) and got["train_loss"] == 2.0 - 0.5 * r
        assert got["fl/comm_bytes"] == 1e6 * (r + 1)
        assert "train_loss_step" not in got and "train_loss_epoch" not in got and "step" not in got
    assert tests == {"test_acc": 0.77}  # not a round of its own


def test_reads_what_lightnings_csvlogger_writes(tmp_path: Path) -> None:
    """A real CSVLogger file (step rows, x_step/x_epoch pairs, separate validation rows): per epoch, the
    values read back are the epoch-level values Lightning reported."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from fl_testing import TinyModule, make_dataset

    class BothLevels(TinyModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("loss_both", loss, on_step=True, on_epoch=True)
            return loss

    class Record(L.Callback):
        def __init__(self) -> None:
            self.seen: list[dict[str, float]] = []

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            names = ("train_loss", "val_acc", "loss_both_epoch")
            self.seen.append({n: float(trainer.callback_metrics[n]) for n in names})

    record = Record()
    trainer = L.Trainer(max_epochs=2, logger=CSVLogger(tmp_path, name="", version="logs"), log_every_n_steps=1,
                        callbacks=[record], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1)  # fmt: skip
    trainer.fit(BothLevels(), DataLoader(make_dataset(), batch_size=16), DataLoader(make_dataset(split=1), 60))
    rounds, tests = read_metrics_csv(tmp_path / "logs" / "metrics.csv")
    assert sorted(rounds) == [1, 2] and tests == {}
    for r, expected in zip((1, 2), record.seen):
        assert rounds[r]["train_loss"] == pytest.approx(expected["train_loss"])
        assert rounds[r]["val_acc"] == pytest.approx(expected["val_acc"])
        assert rounds[r]["loss_both"] == pytest.approx(expected["loss_both_epoch"])


def test_metrics_figure_panels_curves_bands_and_test_marker(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    write_run(tmp_path / "run", ["seed=0"])
    fig = metrics_figure(load_runs([tmp_path / "run"]))
    acc, loss = [ax for ax in fig.axes if ax.get_visible()]
    assert (acc.get_title(), loss.get_title()) == ("acc", "loss")
    assert legend_labels(acc) == [
        "val_acc", "clients' val_acc (mean)", "clients' val_acc min-max", "clients' val_acc p10-p90", "test_acc",
    ]  # fmt: skip
    assert legend_labels(loss) == ["val_loss", "train_loss"]
    assert len(acc.collections) == 2  # the two bands
    val_line = acc.get_lines()[0]
    assert list(val_line.get_xdata()) == [1, 2, 3]
    assert list(val_line.get_ydata()) == pytest.approx([val_acc(r, 0.0) for r in range(ROUNDS)])
    star = acc.get_lines()[-1]
    assert list(star.get_xdata()) == [3] and list(star.get_ydata()) == [0.77]
    only = metrics_figure(load_runs([tmp_path / "run"]), metrics=["val_loss"])
    (ax,) = [ax for ax in only.axes if ax.get_visible()]
    assert legend_labels(ax) == ["val_loss"]


def test_client_figure_boxes_and_weighted_means(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    write_run(tmp_path / "run", ["seed=0"])
    fig = client_figure(load_runs([tmp_path / "run"]))
    acc, loss = [ax for ax in fig.axes if ax.get_visible()]
    assert acc.get_title().startswith("val_acc") and loss.get_title().startswith("val_loss")
    assert len(acc.patches) == 2  # one box per evaluation round
    assert [t.get_text() for t in acc.get_xticklabels()] == ["1", "3"]
    means = [line for line in acc.get_lines() if line.get_marker() == "D"][0]
    for round_idx, y in zip((0, 2), means.get_ydata()):
        values = [a - 0.1 * (2 - round_idx) for a in (0.5, 0.7, 0.9, 1.0)]
        assert y == pytest.approx(sum(v * n for v, n in zip(values, (10, 30, 60, 100))) / 200)


def test_write_run_figures_writes_valid_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    write_run(tmp_path / "run", ["seed=0"])
    written = write_run_figures(tmp_path / "run")
    names = ["metrics.png", "client_metrics.png", "comm.png", "epsilon.png"]
    assert written == [tmp_path / "run" / "plots" / n for n in names]
    assert_png(written[0], 1100, 360)  # 2 panels of 5.5 x 3.6 in at 100 dpi
    for path in written[1:]:
        assert_png(path, *_image_size(path))
    # A run without federated evaluation or privacy gets only what its logs hold.
    write_run(tmp_path / "plain", [], clients=False)
    (tmp_path / "plain" / "logs" / "metrics.csv").write_text(
        "epoch,step,train_loss,val_acc\n0,9,1.5,\n0,9,,0.4\n1,19,1.1,\n1,19,,0.6\n"
    )
    assert [p.name for p in write_run_figures(tmp_path / "plain", tmp_path / "out")] == ["metrics.png"]


def _image_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()  # IHDR: width and height right after the signature and chunk header
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_sweep_dir_gives_one_labelled_curve_per_job(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sweep = tmp_path / "multirun" / "2026-11-29" / "12-00-00"
    for job, (seed, epochs) in enumerate([(0, 1), (1, 1), (0, 5)]):
        write_run(sweep / str(job), [f"seed={seed}", f"strategy.local_epochs={epochs}", "trainer.max_epochs=3"],
                  offset=0.01 * job)  # fmt: skip
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    runs = load_runs([sweep])
    # The override every job shares says nothing; the others label the job.
    assert [r.label for r in runs] == [
        "seed=0,strategy.local_epochs=1", "seed=1,strategy.local_epochs=1", "seed=0,strategy.local_epochs=5",
    ]  # fmt: skip
    fig = metrics_figure(runs, metrics=["val_acc"])
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    # A legend of runs (by color), then a key of line styles: not "run: metric" for every artist.
    key = ["val_acc", "clients' val_acc (mean)", "clients' val_acc p10-p90", "test_acc"]
    assert legend_labels(ax) == [r.label for r in runs] + key
    lines = ax.get_lines()  # per run: val_acc, the clients' mean, the test star
    assert len(lines) == 9 and len({line.get_color() for line in lines}) == 3
    assert len(ax.collections) == 3  # one p10-p90 band per run (min-max would hide the rest)
    boxes = client_figure(runs, metrics=["val_acc"])
    assert len(boxes.axes[0].patches) == 2 * 3  # 2 evaluation rounds x 3 jobs, side by side
    # The console script: one directory per line on stdout, into SWEEP/plots by default.
    assert plot_main([str(sweep)]) == 0
    for name in ("metrics.png", "client_metrics.png", "comm.png", "epsilon.png"):
        assert_png(sweep / "plots" / name, *_image_size(sweep / "plots" / name))
    # Several run directories overlay; a plain run and a sweep job mix.
    out = tmp_path / "both"
    write_run(tmp_path / "other", ["seed=7"])
    written = write_figures([sweep / "1", tmp_path / "other"], out)
    assert [r.label for r in load_runs([sweep / "1", tmp_path / "other"])] == [
        "seed=1,strategy.local_epochs=1,trainer.max_epochs=3", "seed=7",
    ]  # fmt: skip
    assert out / "metrics.png" in written


def test_console_script_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "a", ["seed=0"])
    with pytest.raises(SystemExit) as exit_info:  # several runs: where should they go?
        plot_main([str(tmp_path / "a"), str(tmp_path / "a")])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err
    assert plot_main([str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "metrics.csv" in err[0]


def test_missing_matplotlib_raises_with_the_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_run(tmp_path / "run", ["seed=0"])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(MatplotlibMissing, match=r"pip install 'lightning-fl\[plot\]'"):
        write_run_figures(tmp_path / "run")
    assert not (tmp_path / "run" / "plots").exists()


# Makes matplotlib look uninstalled to a fresh interpreter: neither importable nor in the package metadata
# (torchmetrics and Lightning decide from the metadata whether to import it).
BLOCK_MATPLOTLIB = """
import importlib.abc, importlib.metadata as md, sys

class _NoMatplotlib(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

def _hide(real):
    def lookup(name, *args, **kwargs):
        if str(name).lower() == "matplotlib":
            raise md.PackageNotFoundError(name)
        return real(name, *args, **kwargs)
    return lookup

sys.meta_path.insert(0, _NoMatplotlib())
md.distribution, md.version = _hide(md.distribution), _hide(md.version)
"""


def test_console_script_without_matplotlib_prints_one_line(tmp_path: Path) -> None:
    """A fresh interpreter without matplotlib: exit 1 and the hint alone on stderr; and ``import
    lightning_fl`` does not load the plotting code."""
    write_run(tmp_path / "run", ["seed=0"])
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCK_MATPLOTLIB)
    code = (
        "import sys, runpy, lightning_fl; assert 'lightning_fl.plotting' not in sys.modules; "
        "sys.argv = ['lightning-fl-plot', sys.argv[1]]; runpy.run_module('lightning_fl.plotting', run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "block")}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == f"lightning-fl-plot: {HINT}"
    assert "pip install 'lightning-fl[plot]'" in HINT
    assert not (tmp_path / "run" / "plots").exists()
