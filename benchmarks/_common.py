"""Helpers shared by the benchmark scripts: data, model, output (table, JSON, optional plot).

Kept free of the package's CLI and config so the benchmarks measure the strategy, not the launcher.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "mnist.npz"
MNIST_TRAIN_SIZE = 60_000
# Set by an earlier Lightning launch in the calling process; a child run must pick its own.
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Arguments every benchmark takes."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"MNIST npz (default: {DEFAULT_DATA})")
    parser.add_argument("--synthetic", action="store_true", help="random MNIST-shaped data; no file needed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results as JSON")
    parser.add_argument("--png", type=Path, default=None, metavar="PATH", help="write the figure (needs matplotlib)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads for everything measured (0: torch's default); 1 avoids OpenMP "
        "spin-wait blow-ups when other processes share the cores",
    )


def apply_threads(threads: int) -> None:
    """Set the thread count once, before any timed work, so every side of a comparison gets the same."""
    if threads > 0:
        torch.set_num_threads(threads)
        # Lightning's launcher resets the thread count inside fit() unless OMP_NUM_THREADS is set.
        os.environ["OMP_NUM_THREADS"] = str(threads)


def check_data(data: Path, synthetic: bool) -> None:
    """Exit with one line naming --data when the MNIST file is missing (before any slow work)."""
    if not synthetic and not Path(data).is_file():
        sys.exit(f"error: --data: no MNIST file at '{data}'; pass --data PATH to an mnist.npz, or use --synthetic")


def load_mnist_train(data: Path, synthetic: bool, subset: Optional[int] = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The first ``subset`` MNIST training images as float32 (N, 1, 28, 28) in [0, 1] and int64 labels.

    Same scaling as ``MNISTDataModule``. Synthetic data has the same shapes and dtypes; only the
    samples actually used are generated, so smoke runs stay cheap.
    """
    check_data(data, synthetic)
    n = MNIST_TRAIN_SIZE if subset is None else min(int(subset), MNIST_TRAIN_SIZE)
    if synthetic:
        g = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), dtype=torch.int64, generator=g)
    else:
        images = torch.from_numpy(_read_npz_rows(Path(data), "x_train", n))
        labels = torch.from_numpy(_read_npz_rows(Path(data), "y_train", n)).to(torch.int64)
    return images.to(torch.float32).unsqueeze(1) / 255.0, labels


def _read_npz_rows(path: Path, key: str, rows: int) -> np.ndarray:
    """The first ``rows`` rows of array ``key`` in an npz, streamed from the archive.

    ``np.load`` would decompress the whole 47 MB ``x_train`` first; that transient would set the peak RSS
    of a small run before training even starts and hide what training costs.
    """
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        if fortran_order or dtype.hasobject:  # not row-major raw data: take the simple road
            with np.load(path, allow_pickle=False) as npz:
                return np.ascontiguousarray(npz[key][:rows])
        rows = min(rows, shape[0])
        count = rows * math.prod(shape[1:])
        buf = f.read(count * dtype.itemsize)
        if len(buf) != count * dtype.itemsize:
            sys.exit(f"error: --data: '{path}' is truncated ({key})")
        return np.frombuffer(buf, dtype=dtype).reshape((rows, *shape[1:])).copy()


def make_minimal_module(lr: float, linear: bool = False) -> Any:
    """A LightningModule that is McMahanCNN + cross-entropy + SGD and nothing else (no metrics, no logging).

    It does exactly what the plain loop does per step, so any time difference is framework overhead.
    ``linear``: ``Flatten + Linear(784, 10)`` instead of the CNN, so a step computes almost nothing and
    the framework's own cost per step is what remains.
    """
    import lightning as L

    from lightning_fl.models import McMahanCNN

    class MinimalCNN(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)) if linear else McMahanCNN(1, 10, 28)

        def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr)

    return MinimalCNN()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width text table; floats get 4 significant digits, columns are right-aligned."""

    def cell(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([line, rule, *body])


def write_json(path: Optional[Path], payload: dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")


PLOT_HINT = "pip install 'lightning-fl[plot]'"


def save_figure(
    path: Optional[Path],
    draw: Callable[[list[Any]], None],
    panels: int = 1,
    size: tuple[float, float] = (6, 4),
    ncols: Optional[int] = None,
) -> Optional[Path]:
    """``--png``: a figure with ``panels`` axes of ``size`` inches (``ncols`` a row, default all in one),
    drawn by ``draw(axes)``, saved to ``path``.

    Nothing when ``path`` is None; one line and no figure when matplotlib is missing (it is an optional
    extra), so a long benchmark never fails at its very end for want of a plot. No pyplot: an Agg canvas
    needs no display and keeps no global figure state.
    """
    if path is None:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print(f"note: matplotlib is not installed, skipped the figure {path}: {PLOT_HINT}")
        return None
    ncols = min(ncols or panels, panels)
    nrows = -(-panels // ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[panels:]:
        ax.set_visible(False)
    axes = axes[:panels]
    draw(axes)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)  # small: these PNGs are committed beside docs/benchmarks.md
    print(f"wrote {path}")
    return path


def plot_lines(
    path: Optional[Path],
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
) -> None:
    """Plot ``{label: (xs, ys)}`` to ``path`` (see :func:`save_figure`)."""

    def draw(axes: list[Any]) -> None:
        ax = axes[0]
        for label, (xs, ys) in series.items():
            ax.plot(list(xs), list(ys), marker="o", label=label)
        if logx:
            ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)

    save_figure(path, draw)


# What every benchmark Trainer shares: no logger, checkpoints, progress bar or summary, no sanity check.
BENCH_TRAINER_DEFAULTS: dict[str, Any] = dict(
    accelerator="cpu",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
)


def bench_trainer(**kwargs: Any) -> Any:
    """A ``lightning.Trainer`` with :data:`BENCH_TRAINER_DEFAULTS`, overridden or extended by ``kwargs``."""
    import lightning as L

    return L.Trainer(**{**BENCH_TRAINER_DEFAULTS, **kwargs})


@contextlib.contextmanager
def no_worker_warning() -> Iterator[None]:
    """Benchmarks index in-memory tensors in the main process on purpose; Lightning's advice to add
    DataLoader workers is noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        yield



def run_child(cmd: Sequence[str], what: str) -> dict[str, Any]:
    """Run a benchmark's child command (Lightning's popen launcher re-runs it for the other ranks) with
    ``--child-out PATH`` appended; rank 0 writes its results there as JSON. Exit with one error naming
    ``what`` and the child's last lines if it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
        proc = subprocess.run([*cmd, "--child-out", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-20:])
            sys.exit(f"error: {what} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out.read_text())
