"""The figures. Matplotlib is imported here only, when a figure is made, never by ``import lightning_fl``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from lightning_fl.plotting.logs import FED_EVAL, RunLogs, load_runs, run_root

HINT = "matplotlib is not installed: pip install 'lightning-fl[plot]'"
DPI = 100
MAX_BOX_ROUNDS = 20  # more evaluation rounds than this: an evenly spaced subset (always the last) is boxed
_SPLITS = ("train", "val", "test")
_STYLE = {"train": "--", "val": "-"}
_SPLIT_COLOR = {"val": "C0", "test": "C0", "train": "C1", "fed": "C2"}


class MatplotlibMissing(ImportError):
    """Raised instead of a bare ImportError so callers can print :data:`HINT` and go on."""


def require_matplotlib() -> None:
    """Raise :class:`MatplotlibMissing` (message: :data:`HINT`) unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MatplotlibMissing(HINT) from None


def _figure(nrows: int, ncols: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """A Figure on an Agg canvas, without pyplot: no global state, no GUI backend, safe in any process."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[nrows * ncols :]:
        ax.set_visible(False)
    return fig, axes


def _grid(panels: int) -> tuple[int, int]:
    ncols = min(2, panels)
    return math.ceil(panels / ncols), ncols


def _colors(n: int) -> list[str]:
    return [f"C{i % 10}" for i in range(n)]


def _split(name: str) -> tuple[Optional[str], str]:
    """``val_acc`` -> ``("val", "acc")``: metrics of the same quantity share a panel whatever the split."""
    for split in _SPLITS:
        for sep in ("_", "/"):
            if name.startswith(split + sep) and len(name) > len(split) + 1:
                return split, name[len(split) + 1 :]
    return None, name


def _wanted(name: str, metrics: Optional[Sequence[str]]) -> bool:
    return metrics is None or name in metrics


def metrics_figure(runs: Sequence[RunLogs], metrics: Optional[Sequence[str]] = None) -> Optional[Any]:
    """Global metrics over rounds, one panel per quantity (``acc``, ``loss``, ...), one color per run.

    Train curves dashed, validation solid, ``fl/eval/<metric>/mean`` (or ``median``) dotted with a light
    min-max band and a darker p10-p90 band, ``test_*`` as a star at the last round. ``metrics`` keeps only
    the named metrics (``val_acc``, ``fl/eval/val_acc``; a ``test_*`` value joins a kept metric's panel).
    None when there is nothing to draw.
    """
    several = len(runs) > 1
    # panel -> [(run index, kind, name)], in the order first seen
    panels: dict[str, list[tuple[int, str, str]]] = {}
    for i, run in enumerate(runs):
        fed: dict[str, None] = {}
        for name in run.columns():
            match = FED_EVAL.match(name)
            if match:
                if _wanted(match["metric"], metrics) or _wanted(f"fl/eval/{match['metric']}", metrics):
                    fed[match["metric"]] = None
            elif not name.startswith("fl/") and _wanted(name, metrics):
                panels.setdefault(_split(name)[1], []).append((i, "curve", name))
        for metric in fed:
            panels.setdefault(_split(metric)[1], []).append((i, "fed", metric))
    for i, run in enumerate(runs):
        for name in run.tests:
            quantity = _split(name)[1]
            if _wanted(name, metrics) or (quantity in panels and metrics is not None):
                panels.setdefault(quantity, []).append((i, "test", name))
    if not panels:
        return None
    fig, axes = _figure(*_grid(len(panels)), width=5.5, height=3.6)
    colors = _colors(len(runs))
    for ax, (quantity, entries) in zip(axes, panels.items()):
        for i, kind, name in entries:
            # One run: a color per split (a test star matches its validation curve), each artist labelled.
            # Several: a color per run, and a legend of runs plus a key of line styles (see _several_legend),
            # since labelling every artist "run: metric" buries the plot under its legend.
            run = runs[i]
            color = colors[i] if several else _SPLIT_COLOR.get("fed" if kind == "fed" else _split(name)[0], "C3")
            if kind == "curve":
                xs, ys = run.series(name)
                ax.plot(xs, ys, _style(name), color=color, marker="." if len(xs) < 60 else None,
                        label="_" if several else name)  # fmt: skip
            elif kind == "fed":
                _fed_band(ax, run, name, color, None if several else f"clients' {name}", min_max=not several)
            else:
                x = run.last_round if run.last_round is not None else 1
                ax.plot([x], [run.tests[name]], "*", color=color, markersize=11, linestyle="none",
                        label="_" if several else name)  # fmt: skip
        ax.set_title(quantity)
        _rounds_axis(ax)
        ax.grid(True, alpha=0.3)
        if several:
            _several_legend(ax, runs, entries, colors)
        else:
            ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _style(name: str) -> str:
    return _STYLE.get(_split(name)[0] or "", "-.")


def _several_legend(ax: Any, runs: Sequence[RunLogs], entries: list[tuple[int, str, str]], colors: list[str]) -> None:
    """Runs by color, then what each line style means, in gray."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    shown = sorted({i for i, _, _ in entries})
    handles: list[Any] = [Line2D([], [], color=colors[i], linewidth=3, label=runs[i].label) for i in shown]
    keys: dict[tuple[str, str], None] = dict.fromkeys((kind, name) for _, kind, name in entries)
    for kind, name in keys:
        if kind == "curve":
            handles.append(Line2D([], [], color="gray", linestyle=_style(name), label=name))
        elif kind == "fed":
            handles.append(Line2D([], [], color="gray", linestyle=":", label=f"clients' {name} (mean)"))
            handles.append(Patch(color="gray", alpha=0.3, linewidth=0, label=f"clients' {name} p10-p90"))
        else:
            handles.append(Line2D([], [], color="gray", marker="*", markersize=9, linestyle="none", label=name))
    ax.legend(handles=handles, fontsize="small")


def _rounds_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _fed_band(ax: Any, run: RunLogs, metric: str, color: str, label: Optional[str], min_max: bool = True) -> None:
    """The clients' distribution of ``metric``: the mean (or median) with p10-p90 and min-max bands
    (min-max left out when several runs share the panel: overlapping wide bands hide everything)."""
    prefix = f"fl/eval/{metric}/"
    center = next((s for s in ("mean", "median", "p50") if run.series(prefix + s)[0]), None)
    if center is not None:
        xs, ys = run.series(prefix + center)
        ax.plot(xs, ys, ":", color=color, marker="." if len(xs) < 60 else None,
                label=f"{label} ({center})" if label else "_")  # fmt: skip
    bands = (("min", "max", 0.12), ("p10", "p90", 0.25)) if min_max else (("p10", "p90", 0.2),)
    for low, high, alpha in bands:
        lo, hi = dict(zip(*run.series(prefix + low))), dict(zip(*run.series(prefix + high)))
        xs = sorted(set(lo) & set(hi))
        if xs:
            ax.fill_between(xs, [lo[x] for x in xs], [hi[x] for x in xs], color=color, alpha=alpha, linewidth=0,
                            label=f"{label} {low}-{high}" if label else "_")  # fmt: skip


def comm_figure(runs: Sequence[RunLogs]) -> Optional[Any]:
    """``fl/comm_bytes`` (bytes a rank sends in a round) per round and cumulative; None if no run logs it."""
    have = [(i, run) for i, run in enumerate(runs) if run.series("fl/comm_bytes")[0]]
    if not have:
        return None
    fig, (per_round, cumulative) = _figure(1, 2, width=5.5, height=3.6)
    colors = _colors(len(runs))
    for i, run in have:
        xs, ys = run.series("fl/comm_bytes")
        mb = [y / 1e6 for y in ys]
        total, running = 0.0, []
        for y in mb:
            total += y
            running.append(total)
        label = run.label if len(runs) > 1 else "fl/comm_bytes"
        per_round.plot(xs, mb, "-", color=colors[i], marker="." if len(xs) < 60 else None, label=label)
        cumulative.plot(xs, running, "-", color=colors[i], label=label)
    per_round.set_title("sent per rank per round")
    per_round.set_ylabel("MB")
    cumulative.set_title("sent per rank, cumulative")
    cumulative.set_ylabel("MB")
    for ax in (per_round, cumulative):
        _rounds_axis(ax)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def epsilon_figure(runs: Sequence[RunLogs]) -> Optional[Any]:
    """Privacy budget ``fl/epsilon`` spent so far, per round; None if no run logs it."""
    have = [(i, run) for i, run in enumerate(runs) if run.series("fl/epsilon")[0]]
    if not have:
        return None
    fig, (ax,) = _figure(1, 1, width=6, height=3.8)
    colors = _colors(len(runs))
    for i, run in have:
        xs, ys = run.series("fl/epsilon")
        ax.plot(xs, ys, "-", color=colors[i], marker="." if len(xs) < 60 else None,
                label=run.label if len(runs) > 1 else "fl/epsilon")  # fmt: skip
    ax.set_title("privacy: ε spent")
    _rounds_axis(ax)
    ax.set_ylabel("ε")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _spaced(values: list[int], most: int) -> list[int]:
    if len(values) <= most:
        return values
    step = (len(values) - 1) / (most - 1)
    return sorted({values[round(k * step)] for k in range(most)})


def client_figure(runs: Sequence[RunLogs], metrics: Optional[Sequence[str]] = None) -> Optional[Any]:
    """Per evaluation round, the distribution of a metric over the evaluated clients: one box per round
    (and per run, side by side), the box over clients (each counts once), a diamond at the
    sample-weighted mean. One panel per metric. None when no run has per-client rows."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(r.metric for r in run.clients if _wanted(r.metric, metrics)))
    if not names:
        return None
    rounds_of = {
        metric: _spaced(sorted({r.round for run in runs for r in run.clients if r.metric == metric}), MAX_BOX_ROUNDS)
        for metric in names
    }
    boxes_wide = max(len(rounds) for rounds in rounds_of.values()) * len(runs)
    width = min(12.0, max(5.5, 1.5 + 0.45 * boxes_wide))
    ncols = min(len(names), 2 if width <= 7 else 1)  # wide panels stack
    fig, axes = _figure(math.ceil(len(names) / ncols), ncols, width=width, height=3.8)
    colors = _colors(len(runs))
    for ax, metric in zip(axes, names):
        rounds = rounds_of[metric]
        width = 0.8 / len(runs)
        handles = []
        for i, run in enumerate(runs):
            data, positions, means = [], [], []
            for k, rnd in enumerate(rounds):
                rows = [r for r in run.clients if r.metric == metric and r.round == rnd]
                if not rows:
                    continue
                data.append([r.value for r in rows])
                positions.append(k + (i - (len(runs) - 1) / 2) * width)
                weight = sum(r.num_samples for r in rows)
                means.append(sum(r.value * r.num_samples for r in rows) / weight if weight > 0 else math.nan)
            if not data:
                continue
            boxes = ax.boxplot(data, positions=positions, widths=width * 0.85, patch_artist=True, showfliers=True,
                               manage_ticks=False)  # fmt: skip
            for box in boxes["boxes"]:
                box.set(facecolor=colors[i], alpha=0.45, edgecolor=colors[i])
            for median in boxes["medians"]:
                median.set(color="black")
            ax.plot(positions, means, "D", color=colors[i], markersize=4, markeredgecolor="black", linestyle="none")
            handles.append(boxes["boxes"][0])
            handles[-1].set_label(run.label if len(runs) > 1 else "clients")
        ax.set_xticks(range(len(rounds)))
        ax.set_xticklabels([str(r + 1) for r in rounds], fontsize="small")  # 1-based, like the other figures
        ax.set_xlim(-0.6, len(rounds) - 0.4)
        ax.set_title(f"{metric} per client (◆ sample-weighted mean)")
        ax.set_xlabel("round")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(handles=handles, fontsize="small")
    fig.tight_layout()
    return fig


def save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def write_figures(
    paths: Sequence[Path], out_dir: Path, metrics: Optional[Sequence[str]] = None
) -> list[Path]:
    """Draw every figure the runs' logs allow into ``out_dir``; several runs (a sweep: its jobs) overlay.

    Files: ``metrics.png``, ``client_metrics.png``, ``comm.png``, ``epsilon.png`` (each only when its data
    exists). Raises :class:`MatplotlibMissing` (an ImportError carrying :data:`HINT`) without matplotlib,
    ``FileNotFoundError`` for a path with no logs.
    """
    require_matplotlib()  # the hint first, before reading logs, even when no figure would apply
    runs = load_runs([Path(p) for p in paths])
    figures = {
        "metrics.png": metrics_figure(runs, metrics),
        "client_metrics.png": client_figure(runs, metrics),
        "comm.png": comm_figure(runs),
        "epsilon.png": epsilon_figure(runs),
    }
    return [save(fig, Path(out_dir) / name) for name, fig in figures.items() if fig is not None]


def write_run_figures(run_dir: Path, out_dir: Optional[Path] = None, metrics: Optional[Sequence[str]] = None) -> list[Path]:
    """The figures of one run (or one sweep directory) into ``out_dir`` (default ``<run_dir>/plots``)."""
    return write_figures([run_dir], Path(out_dir) if out_dir is not None else run_root(Path(run_dir)) / "plots", metrics)
