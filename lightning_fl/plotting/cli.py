"""``lightning-fl-plot RUN_DIR [RUN_DIR ...] [--out DIR] [--metrics NAME ...]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from lightning_fl.plotting.figures import MatplotlibMissing, write_figures
from lightning_fl.plotting.logs import expand_run_dirs, run_root

PROG = "lightning-fl-plot"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Write PNG figures from lightning-fl run directories (several overlay on one figure; a Hydra "
        "multirun sweep directory gives one curve per job). Needs: pip install 'lightning-fl[plot]'.",
    )
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="a run or multirun sweep directory")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where the PNGs go (default: RUN_DIR/plots; required with several RUN_DIRs)")  # fmt: skip
    p.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                   help="only these metrics (e.g. val_acc train_loss; fl/eval/val_acc for the clients' bands)")  # fmt: skip
    args = p.parse_args(argv)
    if args.out is None:
        if len(args.run_dirs) > 1:
            p.error("several RUN_DIRs: pass --out DIR for the combined figures")
        args.out = run_root(args.run_dirs[0]) / "plots"
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        expand_run_dirs(args.run_dirs)  # a wrong path is reported before anything is drawn
        written = write_figures(args.run_dirs, args.out, args.metrics)
    except (MatplotlibMissing, FileNotFoundError, ValueError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    if not written:
        print(f"{PROG}: nothing to plot (no metrics logged) in {', '.join(map(str, args.run_dirs))}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
