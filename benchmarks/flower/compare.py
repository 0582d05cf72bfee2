"""lightning_fl vs a plain PyTorch loop vs pfl-research vs Flower's simulation engine on the same FedAvg workload.

Frameworks: ``lightning_fl`` (Trainer(strategy=FedAvgStrategy)), ``plain`` (hand-written loop),
``pfl`` (pfl-research's simulator, PyTorch backend, in its own venv), ``flower`` (Flower simulation, plain
PyTorch ClientApp), ``flower_lightning`` (Flower simulation, a ClientApp that runs a Lightning Trainer per
round). Workloads: ``mnist_e1`` / ``mnist_e5`` (100 IID
clients x 600 MNIST images, 10 per round, B=10, E=1 / 5) and ``cross_device`` (1,000 clients x 60,
100 per round, E=1, global evaluation on the 10k test images after every round).

Every framework x workload runs in its own subprocess, one at a time, workload by workload with the
frameworks in sequence; ``--repeat N`` does that N times (the frameworks' order rotated each time) and
reports medians over the repetitions. Per run: seconds per round (median of the measured rounds, after warm-up),
the training part of a round (up to the end of aggregation, before global evaluation), startup
(subprocess launch to the first client's training begun: Flower's server starts round 1 before Ray's
actors exist, so "round 1 begun" alone would hide Ray's start; that mark is in the JSON as
startup_first_round_s) and peak memory of the process tree (RSS summed over the
worker and all its descendants, e.g. Ray's raylet/GCS/actors, sampled from /proc every 0.2 s; PSS too).

    bash benchmarks/flower/setup_env.sh                       # once: the venv with flwr[simulation]
    bash benchmarks/flower/setup_pfl_env.sh                   # once: pfl-research's own venv
    python benchmarks/flower/compare.py --json /tmp/flower.json
    python benchmarks/flower/compare.py --quick --synthetic --frameworks lightning_fl,plain --json /tmp/q.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "mnist.npz"
VENV_PYTHON = HERE / ".venv" / "bin" / "python"
PFL_VENV_PYTHON = HERE / ".venv-pfl" / "bin" / "python"
FRAMEWORKS = ("lightning_fl", "plain", "pfl", "flower", "flower_lightning")
FLOWER_FRAMEWORKS = ("flower", "flower_lightning")
WORKLOADS = ("mnist_e1", "mnist_e5", "cross_device")
PAGE = os.sysconf("SC_PAGE_SIZE")
# Targets from the issue: lightning_fl no slower than Flower (plain client) on mnist_*; on cross_device
# its training part at most 1.25x the plain loop's.
CROSS_DEVICE_TRAIN_RATIO = 1.25


# --------------------------------------------------------------------------------------------- worker side


def worker_main(framework: str, spec_json: str, out: str) -> int:
    """Runs one framework on one workload in this process and writes its round marks to ``out``."""
    sys.path[:0] = [str(HERE), str(REPO_ROOT)]
    import torch
    from workloads import RoundClock, Spec, run_lightning_fl, run_plain

    spec = Spec.from_json(spec_json)
    torch.set_num_threads(spec.threads)
    clock = RoundClock()
    if framework == "plain":
        run_plain(spec, clock)
    elif framework == "lightning_fl":
        run_lightning_fl(spec, clock)
    elif framework == "pfl":
        from pfl_apps import run_pfl

        run_pfl(spec, clock)
    else:
        from flower_apps import run_flower

        run_flower(spec, clock, "plain" if framework == "flower" else "lightning")
    clock.write(out)
    return 0


def versions_main() -> int:
    """Prints the worker interpreter's package versions as JSON (flwr/ray/pfl absent -> null)."""
    import importlib.metadata
    import importlib.util

    found: dict[str, Optional[str]] = {}
    for name in ("torch", "lightning", "flwr", "ray"):
        try:
            found[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - any import failure means "not usable here"
            found[name] = None
    try:  # pfl's import sets up its framework machinery; its presence and version are enough here
        found["pfl"] = importlib.metadata.version("pfl") if importlib.util.find_spec("pfl") else None
    except Exception:  # noqa: BLE001
        found["pfl"] = None
    print(json.dumps(found))
    return 0


# --------------------------------------------------------------------------------------------- memory


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id) for every live process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces
            table[int(entry)] = (int(fields[1]), int(fields[3]))
        except (OSError, IndexError, ValueError):
            continue
    return table


def process_tree(root: int) -> list[int]:
    """``root``, its descendants, and anything left in its session (Ray daemons may be reparented)."""
    table = _proc_table()
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, sid) in table.items():
            if pid not in tree and (ppid in tree or sid == root):
                tree.add(pid)
                grew = True
    return sorted(p for p in tree if p in table)


def _rss_pss(pid: int) -> tuple[int, int]:
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE
        pss = 0
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
        return rss, pss
    except (OSError, ValueError, IndexError):
        return 0, 0


class TreeMemory(threading.Thread):
    """Samples summed RSS and PSS of a process tree until stopped; keeps the peaks."""

    def __init__(self, root: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = 0
        self.max_procs = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            pids = process_tree(self.root)
            totals = [_rss_pss(p) for p in pids]
            self.peak_rss = max(self.peak_rss, sum(t[0] for t in totals))
            self.peak_pss = max(self.peak_pss, sum(t[1] for t in totals))
            self.max_procs = max(self.max_procs, len(pids))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# --------------------------------------------------------------------------------------------- orchestration


def workload_spec(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == "cross_device":
        clients, samples, per_round, epochs, evaluate = 1000, 60, 100, 1, True
        if args.quick:
            clients, samples, per_round = 50, 12, 10
    else:
        clients, samples, per_round, epochs, evaluate = 100, 600, 10, 1 if name == "mnist_e1" else 5, False
        if args.quick:
            clients, samples, per_round = 20, 30, 4
    return {
        "workload": name,
        "num_clients": clients,
        "samples_per_client": samples,
        "per_round": per_round,
        "local_epochs": epochs,
        "batch_size": 10,
        "lr": 0.05,
        "rounds": args.rounds_for.get(name, args.rounds),
        "warmup": args.warmup,
        "evaluate": evaluate,
        "test_size": 500 if args.quick else 10_000,
        "threads": args.threads,
        "seed": args.seed,
        "data": str(args.data),
        "synthetic": bool(args.synthetic),
        "flower_cpus_per_client": args.flower_cpus_per_client,
    }


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def run_one(python: str, framework: str, spec: dict[str, Any], logdir: Path, timeout: float) -> dict[str, Any]:
    """Launches one worker subprocess, watches its memory, and turns its marks into a result row."""
    sys.path.insert(0, str(HERE))
    from workloads import round_times

    tag = f"{spec['workload']}-{framework}"
    out, log = logdir / f"{tag}.json", logdir / f"{tag}.log"
    env = dict(os.environ)
    threads = str(spec["threads"])
    # Lightning's launcher resets torch's thread count unless OMP_NUM_THREADS is set; set it for all.
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [python, str(HERE / "compare.py"), "--worker", framework, "--spec", json.dumps(spec), "--out", str(out)]
    row: dict[str, Any] = {"framework": framework, "workload": spec["workload"], "log": str(log)}
    with open(log, "w") as logf:
        launched = time.time()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        memory = TreeMemory(proc.pid)
        memory.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        memory.stop()
        for pid in process_tree(proc.pid):  # our own leftovers only (its session), e.g. Ray daemons
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if rc is None:
            proc.wait()
    row.update(peak_rss_mib=memory.peak_rss / 2**20, peak_pss_mib=memory.peak_pss / 2**20, max_procs=memory.max_procs)
    if rc != 0 or not out.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-25:]
        why = "timed out" if rc is None else f"exit status {rc}"
        row["error"] = f"{why}; last lines of {log}:\n" + "\n".join(tail)
        return row
    marks = json.loads(out.read_text())
    whole, train = round_times(marks, spec["warmup"])
    row.update(
        s_per_round=_median(whole),
        train_s_per_round=_median(train),
        rounds_s=whole,
        train_rounds_s=train,
        startup_s=marks["first_train"] - launched,
        startup_first_round_s=marks["begin"][0] - launched,
        torch_threads=marks["threads"],
        test_acc=marks["test_acc"],
        weights_sum=marks.get("weights_sum"),
        wall_s=time.time() - launched,
    )
    return row


MEDIAN_KEYS = ("s_per_round", "train_s_per_round", "startup_s", "startup_first_round_s", "peak_rss_mib",
               "peak_pss_mib", "wall_s")  # fmt: skip


def aggregate_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per framework x workload: the median over its repetitions of each run's figures.

    A single repetition gives that run's row unchanged (plus ``repetitions``). Failed repetitions are left
    out; if all failed, the row is the first failure.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["framework"], r["workload"]), []).append(r)
    rows = []
    for (framework, workload), group in groups.items():
        ok = [r for r in group if "error" not in r]
        if not ok:
            rows.append({**group[0], "repetitions": 0, "failed_repetitions": len(group)})
            continue
        if len(ok) == 1:
            row = {k: v for k, v in ok[0].items() if k != "rep"}
        else:
            row = {"framework": framework, "workload": workload, "logs": [r["log"] for r in ok]}
            for key in MEDIAN_KEYS:
                row[key] = _median([r[key] for r in ok])
            row["rounds_s"] = [t for r in ok for t in r["rounds_s"]]
            row["train_rounds_s"] = [t for r in ok for t in r["train_rounds_s"]]
            row["torch_threads"] = ok[0]["torch_threads"]
            row["test_acc"] = ok[-1]["test_acc"]
            row["test_acc_per_rep"] = [r["test_acc"] for r in ok]
            row["weights_sum"] = ok[-1].get("weights_sum")
            row["max_procs"] = max(r.get("max_procs", 0) for r in ok)
        row["repetitions"] = len(ok)
        row["s_per_round_per_rep"] = [r["s_per_round"] for r in ok]
        row["train_s_per_round_per_rep"] = [r["train_s_per_round"] for r in ok]
        if len(ok) < len(group):
            row["failed_repetitions"] = len(group) - len(ok)
        rows.append(row)
    return rows


def worker_versions(python: str) -> dict[str, Optional[str]]:
    res = subprocess.run([python, str(HERE / "compare.py"), "--versions"], capture_output=True, text=True)
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": (res.stderr or res.stdout).strip()[-500:]}  # type: ignore[dict-item]


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.3g}" if isinstance(v, float) and abs(v) < 100 else (f"{v:.0f}" if isinstance(v, float) else str(v))

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    plain = {r["workload"]: r for r in rows if r["framework"] == "plain" and "error" not in r}
    for r in rows:
        base = plain.get(r["workload"])
        if base is None or "error" in r:
            continue
        r["ratio_vs_plain"] = r["s_per_round"] / base["s_per_round"]
        r["train_ratio_vs_plain"] = r["train_s_per_round"] / base["train_s_per_round"]
        r["startup_ratio_vs_plain"] = r["startup_s"] / base["startup_s"]


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ok = {(r["workload"], r["framework"]): r for r in rows if "error" not in r}
    verdicts = []
    for w in ("mnist_e1", "mnist_e5"):
        lf, fl = ok.get((w, "lightning_fl")), ok.get((w, "flower"))
        if lf and fl:
            verdicts.append(
                {
                    "target": f"{w}: lightning_fl s/round <= flower (plain client) s/round",
                    "value": f"{lf['s_per_round']:.3f} s vs {fl['s_per_round']:.3f} s",
                    "passed": lf["s_per_round"] <= fl["s_per_round"],
                }
            )
    lf, pf = ok.get(("cross_device", "lightning_fl")), ok.get(("cross_device", "pfl"))
    if lf and pf:
        verdicts.append(
            {
                "target": "cross_device: lightning_fl training part <= pfl-research's",
                "value": f"{lf['train_s_per_round']:.3f} s vs {pf['train_s_per_round']:.3f} s",
                "passed": lf["train_s_per_round"] <= pf["train_s_per_round"],
            }
        )
    if lf and "train_ratio_vs_plain" in lf:
        verdicts.append(
            {
                "target": f"cross_device: lightning_fl training part <= {CROSS_DEVICE_TRAIN_RATIO}x plain",
                "value": f"{lf['train_ratio_vs_plain']:.2f}x",
                "passed": lf["train_ratio_vs_plain"] <= CROSS_DEVICE_TRAIN_RATIO,
            }
        )
    return verdicts


FRAMEWORK_LABELS = {"lightning_fl": "lightning_fl", "plain": "plain PyTorch", "pfl": "pfl-research",
                    "flower": "Flower, plain client", "flower_lightning": "Flower, Lightning client"}  # fmt: skip


def write_figure(path: Path, rows: list[dict[str, Any]]) -> None:
    """Seconds per round (the training part hatched inside), startup and peak memory, per workload and framework."""
    sys.path.insert(0, str(HERE.parent))  # benchmarks/_common; imported here only: it pulls in torch
    from _common import save_figure

    done = [r for r in rows if "error" not in r]
    workloads = list(dict.fromkeys(r["workload"] for r in done))
    frameworks = [f for f in FRAMEWORKS if any(r["framework"] == f for r in done)]

    def draw(axes: list[Any]) -> None:
        width = 0.8 / max(1, len(frameworks))
        for ax, key, title in zip(axes, ("s_per_round", "startup_s", "peak_rss_mib"),
                                  ("s/round (hatched: training; dots: repetitions)", "startup (s)", "peak RSS (MiB)")):  # fmt: skip
            for k, f in enumerate(frameworks):
                xs, ys, train, reps = [], [], [], []
                for w, workload in enumerate(workloads):
                    row = next((r for r in done if r["framework"] == f and r["workload"] == workload), None)
                    if row is not None:
                        xs.append(w + (k - (len(frameworks) - 1) / 2) * width)
                        ys.append(row[key])
                        train.append(row["train_s_per_round"])
                        reps.append(row.get("train_s_per_round_per_rep", []))
                ax.bar(xs, ys, width=width, color=f"C{k}", label=FRAMEWORK_LABELS[f] if ax is axes[0] else None)
                if key == "s_per_round":
                    ax.bar(xs, train, width=width, fill=False, hatch="//", edgecolor="white", linewidth=0)
                    for x, values in zip(xs, reps):  # each repetition's training part (medians are the bars)
                        if len(values) > 1:
                            ax.plot([x] * len(values), values, "k.", markersize=3)
            ax.set_xticks(range(len(workloads)))
            ax.set_xticklabels(workloads)
            ax.set_title(title)

    save_figure(path, draw, panels=3, size=(4.5, 3.6))


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=f"comma list of {', '.join(FRAMEWORKS)}")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--rounds", type=int, default=None, help="measured rounds per run (default 3; 1 with --quick)")
    p.add_argument(
        "--rounds-for",
        default="",
        metavar="W=N,...",
        help="measured rounds per workload, overriding --rounds (e.g. mnist_e5=2 to keep the run short)",
    )
    p.add_argument("--warmup", type=int, default=1, help="unmeasured rounds before them (default 1)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="repetitions of the whole sequence (frameworks alternated, order rotated); medians over them",
    )
    p.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all cores)"
    )
    p.add_argument(
        "--flower-cpus-per-client",
        type=float,
        default=0.0,
        help="Ray num_cpus per Flower client (default: --threads, i.e. one client at a time like the others)",
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"MNIST npz (default: {DEFAULT_DATA})")
    p.add_argument("--synthetic", action="store_true", help="random MNIST-shaped data; no file needed")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 measured round: a smoke test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write all results as JSON")
    p.add_argument("--png", type=Path, default=None, metavar="PATH", help="write the figure (needs matplotlib)")
    p.add_argument(
        "--setup",
        action="store_true",
        help="run setup_env.sh / setup_pfl_env.sh first (builds .venv with flwr, .venv-pfl with pfl)",
    )
    p.add_argument(
        "--python", default=None, help="interpreter for the workers (default: .venv's if built, else this one)"
    )
    p.add_argument(
        "--pfl-python",
        default=None,
        help="interpreter for the pfl worker (default: .venv-pfl's if built, else the workers' interpreter)",
    )
    p.add_argument("--logdir", type=Path, default=None, help="worker logs (default: a new temp dir)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run before it is killed")
    p.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--versions", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    try:
        args.rounds_for = {k: int(v) for k, v in (item.split("=") for item in args.rounds_for.split(",") if item)}
    except ValueError:
        p.error("--rounds-for takes WORKLOAD=N[,WORKLOAD=N...]")
    args.frameworks = [f for f in args.frameworks.split(",") if f]
    args.workloads = [w for w in args.workloads.split(",") if w]
    bad = [f for f in args.frameworks if f not in FRAMEWORKS]
    bad += [w for w in [*args.workloads, *args.rounds_for] if w not in WORKLOADS]
    if bad:
        p.error(f"unknown framework/workload: {', '.join(bad)}")
    if min([args.rounds, *args.rounds_for.values()]) < 1 or args.warmup < 0 or args.threads < 1 or args.repeat < 1:
        p.error("need --rounds >= 1, --warmup >= 0, --threads >= 1, --repeat >= 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.versions:
        return versions_main()
    if args.worker:
        return worker_main(args.worker, args.spec, args.out)
    if not args.synthetic and not args.data.is_file():
        sys.exit(f"error: --data: no MNIST file at '{args.data}'; pass --data PATH to an mnist.npz, or use --synthetic")
    if args.setup:
        if any(f in FLOWER_FRAMEWORKS for f in args.frameworks):
            subprocess.run(["bash", str(HERE / "setup_env.sh")], check=True)
        if "pfl" in args.frameworks:
            subprocess.run(["bash", str(HERE / "setup_pfl_env.sh")], check=True)
    python = args.python or (str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable)
    pfl_python = args.pfl_python or (str(PFL_VENV_PYTHON) if PFL_VENV_PYTHON.exists() else python)
    versions = worker_versions(python)
    frameworks = list(args.frameworks)
    skipped = []
    skipped_rows = []
    if not (versions.get("flwr") and versions.get("ray")):
        for f in [f for f in frameworks if f in FLOWER_FRAMEWORKS]:
            frameworks.remove(f)
            skipped.append(f)
            skipped_rows.append({"framework": f, "reason": "flwr[simulation] not importable"})
        if skipped:
            print(
                f"note: flwr[simulation] is not importable by {python}; skipped {', '.join(skipped)} "
                f"(run benchmarks/flower/setup_env.sh or pass --setup)"
            )
    if "pfl" in frameworks:
        pfl_versions = worker_versions(pfl_python) if pfl_python != python else versions
        versions["pfl"] = pfl_versions.get("pfl")
        if not versions["pfl"]:
            frameworks.remove("pfl")
            skipped_rows.append({"framework": "pfl", "reason": "pfl not importable"})
            print(
                f"note: pfl is not importable by {pfl_python}; skipped pfl "
                f"(run benchmarks/flower/setup_pfl_env.sh or pass --setup)"
            )
    interpreter = {f: pfl_python if f == "pfl" else python for f in frameworks}
    # The plain loop first: it is every ratio's denominator.
    frameworks.sort(key=lambda f: (f != "plain", FRAMEWORKS.index(f)))
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="flower-compare-"))
    logdir.mkdir(parents=True, exist_ok=True)
    print(f"workers: {python} ({', '.join(f'{k} {v}' for k, v in versions.items())}); logs in {logdir}", flush=True)
    if "pfl" in frameworks and pfl_python != python:
        print(f"pfl worker: {pfl_python}", flush=True)

    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []

    def payload() -> dict[str, Any]:
        rows[:] = aggregate_runs(runs)
        add_ratios(rows)
        return {
            "benchmark": "flower_compare",
            "versions": versions,
            "python": python,
            "pfl_python": pfl_python if "pfl" in frameworks else None,
            "repeat": args.repeat,
            "config": {w: workload_spec(w, args) for w in args.workloads},
            "frameworks": frameworks,
            "skipped": skipped_rows,
            "rows": rows,
            "runs": runs,
            "targets": check_targets(rows),
        }

    def save() -> None:  # after every run, so a long comparison cut short keeps what it measured
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(payload(), indent=2) + "\n")

    def report(rep: int, w: str, f: str, row: dict[str, Any]) -> None:
        tag = f"[{rep + 1}/{args.repeat}] " if args.repeat > 1 else ""
        if "error" in row:
            print(f"{tag}{w:>13} {f:>17}: FAILED ({row['error']})", flush=True)
        else:
            print(
                f"{tag}{w:>13} {f:>17}: {row['s_per_round']:.3f} s/round (train {row['train_s_per_round']:.3f} s), "
                f"startup {row['startup_s']:.1f} s, peak RSS {row['peak_rss_mib']:.0f} MiB, "
                f"threads {row['torch_threads']}, rounds {[round(t, 3) for t in row['rounds_s']]}",
                flush=True,
            )

    for rep in range(args.repeat):
        # Rotate the order each repetition so that no framework always runs first or right after another.
        order = frameworks[rep % len(frameworks) :] + frameworks[: rep % len(frameworks)] if frameworks else []
        for w in args.workloads:
            spec = workload_spec(w, args)
            for f in order:
                rep_dir = logdir / f"rep{rep + 1}" if args.repeat > 1 else logdir
                rep_dir.mkdir(parents=True, exist_ok=True)
                row = run_one(interpreter[f], f, spec, rep_dir, args.timeout)
                row["rep"] = rep
                runs.append(row)
                report(rep, w, f, row)
                save()
    payload()  # fills `rows` (medians over repetitions)
    verdicts = check_targets(rows)
    if args.json:
        print(f"wrote {args.json}")
    if args.png:
        write_figure(args.png, rows)
    print()
    for v in verdicts:
        print(f"target {'PASS' if v['passed'] else 'MISS'}: {v['target']} ({v['value']})")
    headers = [
        "framework",
        "workload",
        "s/round",
        "ratio",
        "train s",
        "train ratio",
        "startup s",
        "peak RSS MiB",
        "peak PSS MiB",
        "test acc",
        "reps",
    ]
    table = [
        [
            r["framework"],
            r["workload"],
            r.get("s_per_round"),
            r.get("ratio_vs_plain"),
            r.get("train_s_per_round"),
            r.get("train_ratio_vs_plain"),
            r.get("startup_s"),
            r.get("peak_rss_mib"),
            r.get("peak_pss_mib"),
            r.get("test_acc"),
            r.get("repetitions"),
        ]
        if "error" not in r
        else [r["framework"], r["workload"], "FAILED", None, None, None, None, None, None, None, 0]
        for r in rows
    ]
    print(format_table(headers, table))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
