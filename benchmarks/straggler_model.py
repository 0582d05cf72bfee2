"""The straggler model of issue 4 and an event simulation of synchronous and SSP training under it.

Straggler conditions (``c`` = one worker's compute time for one step):

- ``none``: every step of every worker takes ``c``.
- ``transient``: at every step each worker independently, with probability 0.25, sleeps ``2c`` before
  computing, so that step takes ``3c`` (Ho et al., 2013). The draw for (seed, worker, step) is a fixed
  function of those three, so every strategy in a benchmark run meets the same stragglers.
- ``persistent``: the last worker sleeps ``c`` before every step: it is always 2x slower.

Simulation (communication taken as free): worker w starts step k when it finished step k - 1 and, for
SSP with bound s, when every worker has finished step k - s - 1 (the update a read of version >= k - s
needs). Synchronous training is s = 0: every step waits for the slowest worker's previous step.
Run as a script it prints the expected speed-up of SSP over synchronous training.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

CONDITIONS = ("none", "transient", "persistent")
STRAGGLE_PROBABILITY = 0.25
TRANSIENT_SLEEP = 2.0  # in units of the compute time


def extra_sleep(condition: str, worker: int, step: int, workers: int, compute: float, seed: int = 0) -> float:
    """Seconds worker ``worker`` sleeps before step ``step`` under ``condition``."""
    if condition == "none":
        return 0.0
    if condition == "transient":
        draw = random.Random(f"{seed}/{worker}/{step}").random()
        return TRANSIENT_SLEEP * compute if draw < STRAGGLE_PROBABILITY else 0.0
    if condition == "persistent":
        return compute if worker == workers - 1 else 0.0
    raise ValueError(f"unknown straggler condition {condition!r}; expected one of {CONDITIONS}")


def step_times(condition: str, workers: int, steps: int, compute: float = 1.0, seed: int = 0) -> list[list[float]]:
    """``times[w][k]``: how long worker w's step k takes (compute plus its sleep)."""
    return [[compute + extra_sleep(condition, w, k, workers, compute, seed) for k in range(steps)] for w in range(workers)]


def finish_time(times: Sequence[Sequence[float]], staleness: int) -> float:
    """When the last worker finishes its last step, SSP with bound ``staleness`` (0: synchronous)."""
    workers, steps = len(times), len(times[0])
    done = [[0.0] * steps for _ in range(workers)]
    for k in range(steps):
        gate = max(done[w][k - staleness - 1] for w in range(workers)) if k - staleness - 1 >= 0 else 0.0
        for w in range(workers):
            previous = done[w][k - 1] if k else 0.0
            done[w][k] = max(previous, gate) + times[w][k]
    return max(done[w][-1] for w in range(workers))


def speedup(condition: str, staleness: int, workers: int = 2, steps: int = 20_000, seed: int = 0) -> float:
    """Throughput of SSP over synchronous training under ``condition``, simulated."""
    times = step_times(condition, workers, steps, seed=seed)
    return finish_time(times, 0) / finish_time(times, staleness)


TABLE_STALENESS = (1, 3, 10, 100)
PLOT_STALENESS = (0, 1, 2, 3, 5, 10, 20, 50, 100)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Simulated SSP / synchronous throughput under the straggler model.")
    parser.add_argument("--png", type=Path, default=None, metavar="PATH", help="write the figure (needs matplotlib)")
    parser.add_argument("--steps", type=int, default=20_000, help="simulated steps per worker")
    args = parser.parse_args(argv)
    staleness = sorted(set(TABLE_STALENESS) | (set(PLOT_STALENESS) if args.png else set()))
    results = {c: {s: speedup(c, s, steps=args.steps) for s in staleness} for c in CONDITIONS}
    print(f"simulated throughput of SSP / synchronous, 2 workers, {args.steps:,} steps")
    print("condition    s=1     s=3     s=10    s=100")
    for condition in CONDITIONS:
        row = "  ".join(f"{results[condition][s]:.3f} " for s in TABLE_STALENESS)
        print(f"{condition:<11}  {row}")
    if args.png:
        from _common import save_figure  # here only: it pulls in torch, which the simulation does not need

        def draw(axes: list[Any]) -> None:
            for condition in CONDITIONS:
                axes[0].plot(PLOT_STALENESS, [results[condition][s] for s in PLOT_STALENESS], marker="o",
                             label=condition)  # fmt: skip
            axes[0].set_xscale("symlog", linthresh=1)
            axes[0].set(xlabel="staleness bound s (0: synchronous)", ylabel="SSP / sync throughput",
                        title=f"straggler model, 2 workers, {args.steps:,} steps (simulated)")  # fmt: skip

        save_figure(args.png, draw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
