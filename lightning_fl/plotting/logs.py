"""Reading a run's logs with the standard library only (no torch, Lightning or pandas needed to plot)."""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

METRICS_FILE = Path("logs") / "metrics.csv"
CLIENT_METRICS_FILE = Path("logs") / "client_metrics.csv"
CLIENT_COLUMNS = ("round", "client", "metric", "value", "num_samples")
# fl/eval/<metric>/<stat>; <metric> may itself contain "/" (e.g. "val/acc"), the stat never does.
FED_EVAL = re.compile(r"^fl/eval/(?P<metric>.+)/(?P<stat>[^/]+)$")
_NOT_METRICS = {"epoch", "step"}


@dataclass
class ClientRow:
    round: int  # 0-based, the same index as the run's fl/round column
    client: str
    metric: str
    value: float
    num_samples: float


@dataclass
class RunLogs:
    """One run's logs: ``rounds[r][name]`` is the epoch-level value of ``name`` in round ``r`` (1-based)."""

    path: Path
    label: str
    rounds: dict[int, dict[str, float]] = field(default_factory=dict)
    tests: dict[str, float] = field(default_factory=dict)  # test_* (trainer.test after fit): one value each
    clients: list[ClientRow] = field(default_factory=list)

    def columns(self) -> list[str]:
        names: dict[str, None] = {}
        for values in self.rounds.values():
            names.update(dict.fromkeys(values))
        return list(names)

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """The rounds where ``name`` was logged, and its values there."""
        xs = [r for r in sorted(self.rounds) if name in self.rounds[r]]
        return xs, [self.rounds[r][name] for r in xs]

    @property
    def last_round(self) -> Optional[int]:
        return max(self.rounds) if self.rounds else None


def _float(cell: str) -> Optional[float]:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _metric_name(column: str) -> Optional[str]:
    """Column -> metric name, or None for columns that are not per-round metrics.

    A metric logged with ``on_step=True, on_epoch=True`` appears as ``x_step`` and ``x_epoch``: the epoch-level
    one is the round's value, the step-level one is noise at this scale.
    """
    if column in _NOT_METRICS or column.endswith("_step"):
        return None
    return column[: -len("_epoch")] if column.endswith("_epoch") else column


def read_metrics_csv(path: Path) -> tuple[dict[int, dict[str, float]], dict[str, float]]:
    """``(rounds, tests)`` from Lightning's CSVLogger ``metrics.csv``.

    CSVLogger writes one row per ``log_metrics`` call: step-level rows, the validation row and the training
    epoch-end row of one epoch are separate rows with blank cells elsewhere. Rows are grouped by ``epoch``
    and, per metric, the last value written in that epoch wins (the epoch-level value comes after the
    step-level ones; a resumed run that rewrites an epoch overrides it). The round number is
    ``fl/round + 1`` where the strategy logged it (1-based, as the console prints "round 3/20"), else
    ``epoch + 1`` (e.g. the parameter-server strategy, which has epochs, not rounds). ``test_*`` columns,
    written by ``trainer.test`` after fit, are returned apart.
    """
    by_epoch: dict[int, dict[str, float]] = {}
    tests: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = _float(row.get("epoch") or "")
            for column, cell in row.items():
                name = _metric_name(column or "")
                value = _float(cell or "")
                if name is None or value is None:
                    continue
                if name.startswith("test_") or name.startswith("test/"):
                    tests[name] = value
                elif epoch is not None:
                    by_epoch.setdefault(int(epoch), {})[name] = value
    rounds: dict[int, dict[str, float]] = {}
    for epoch, values in sorted(by_epoch.items()):
        index = values.get("fl/round", epoch)
        rounds.setdefault(int(index) + 1, {}).update(values)
    return rounds, tests


def read_client_metrics(path: Path) -> list[ClientRow]:
    """Rows of a per-client metrics file (format in :mod:`lightning_fl.plotting`); blank/non-finite values skipped."""
    rows: list[ClientRow] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CLIENT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(CLIENT_COLUMNS)}")
        for row in reader:
            value, round_idx = _float(row["value"]), _float(row["round"])
            if value is None or round_idx is None:
                continue
            weight = _float(row["num_samples"])
            rows.append(ClientRow(int(round_idx), row["client"], row["metric"], value, weight or 0.0))
    return rows


def read_overrides(run_dir: Path) -> Optional[list[str]]:
    """Hydra's ``.hydra/overrides.yaml`` (a YAML list of ``key=value`` strings) without a YAML parser."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    items = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("- "):
            item = line[2:].strip()
            if len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"":
                item = item[1:-1]
            items.append(item)
    return items


def find_metrics_csv(path: Path) -> Optional[Path]:
    """The metrics file of a run directory (``logs/metrics.csv``), its ``logs/`` folder, or the file itself."""
    for candidate in (path, path / METRICS_FILE, path / "metrics.csv"):
        if candidate.is_file():
            return candidate
    return None


def sweep_jobs(path: Path) -> list[Path]:
    """The job directories of a Hydra multirun sweep directory (numbered subdirs with ``.hydra/overrides.yaml``)."""
    if not path.is_dir():
        return []
    jobs = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and (p / ".hydra" / "overrides.yaml").is_file()]
    return sorted(jobs, key=lambda p: int(p.name))


def expand_run_dirs(paths: list[Path]) -> list[Path]:
    """Each path as a run, a sweep directory expanded to its jobs in job order. Raises ``FileNotFoundError``
    naming the first path that is neither."""
    runs: list[Path] = []
    for path in paths:
        path = Path(path)
        if find_metrics_csv(path) is not None:
            runs.append(path)
            continue
        jobs = [job for job in sweep_jobs(path) if find_metrics_csv(job) is not None]
        if not jobs:
            raise FileNotFoundError(
                f"{path}: no {METRICS_FILE} and no Hydra multirun jobs (numbered subdirectories with "
                f".hydra/overrides.yaml and {METRICS_FILE})"
            )
        runs.extend(jobs)
    return runs


def run_root(path: Path) -> Path:
    """The run directory (the one holding ``.hydra/``) of a run dir, its ``logs/`` folder or its metrics file."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    return path.parent if path.name == "logs" else path


def run_labels(run_dirs: list[Path]) -> list[str]:
    """One legend label per run: the Hydra overrides that differ between the runs (``seed=1,strategy.local_epochs=5``).

    Overrides every run shares say nothing in a legend; a run without overrides is named by its directory.
    """
    roots = [run_root(d) for d in run_dirs]
    overrides = [read_overrides(root) or [] for root in roots]
    shared = set.intersection(*(set(items) for items in overrides)) if len(roots) > 1 else set()
    labels = []
    for root, items in zip(roots, overrides):
        varying = [item for item in items if item not in shared]
        labels.append(",".join(varying) if varying else "/".join(root.resolve().parts[-2:]))
    # Runs with the same overrides (reruns) still need distinct labels.
    return [
        f"{label} ({'/'.join(root.resolve().parts[-2:])})" if labels.count(label) > 1 else label
        for label, root in zip(labels, roots)
    ]


def load_runs(paths: list[Path]) -> list[RunLogs]:
    """Every run (sweeps expanded) with its metrics, test values and per-client rows (if the file exists)."""
    run_dirs = expand_run_dirs(paths)
    runs = []
    for run_dir, label in zip(run_dirs, run_labels(run_dirs)):
        metrics = find_metrics_csv(run_dir)
        assert metrics is not None
        rounds, tests = read_metrics_csv(metrics)
        client_file = metrics.parent / CLIENT_METRICS_FILE.name
        clients = read_client_metrics(client_file) if client_file.is_file() else []
        runs.append(RunLogs(path=run_dir, label=label, rounds=rounds, tests=tests, clients=clients))
    return runs
