"""Stale synchronous parallel (SSP) bookkeeping for one parameter-server bucket (torch only, no I/O).

Clocks: worker w's step c (c = 0, 1, ...) pushes a gradient *for clock c*. The bucket's *version* is the
number of clock updates applied to it: update c is applied once every worker has pushed its clock-c
gradient, as one optimizer step on their mean, so version v holds updates 0 .. v-1.

SSP with bound s (Ho et al., NIPS 2013): before step c a worker must read a version >= c - s, i.e. one
holding every worker's updates up to clock c - s - 1. A worker can therefore be at most s steps ahead of
the slowest, and a gradient computed from version v and applied in update c has staleness c - v <= s.
With s = 0 every read waits for the previous update: synchronous training, step for step.

Stale gradients may be down-weighted by their staleness, as lr / max(1, staleness) in Zhang et al.,
"Staleness-aware Async-SGD" (IJCAI 2016).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

import torch

from lightning_fl.errors import check


@dataclass(frozen=True)
class Push:
    worker: int
    clock: int  # the step this gradient belongs to
    read_version: int  # version of the parameters the gradient was computed from
    grad: torch.Tensor

    @property
    def staleness(self) -> int:
        """Updates applied between the read and this gradient's own update."""
        return self.clock - self.read_version


def staleness_weight(staleness: int) -> float:
    """Zhang et al.'s down-weighting: 1 / max(1, staleness) (fresh and one-step-old gradients count fully)."""
    return 1.0 / max(1, staleness)


def combine(pushes: list[Push], scale_stale: bool) -> torch.Tensor:
    """The mean of one clock's gradients, in worker order (a fixed summation order, so s = 0 is reproducible)."""
    total = torch.zeros_like(pushes[0].grad)
    for push in sorted(pushes, key=lambda p: p.worker):
        if scale_stale and push.staleness > 1:
            total.add_(push.grad, alpha=staleness_weight(push.staleness))
        else:
            total.add_(push.grad)
    return total.div_(len(pushes))


class ClockBook:
    """What one bucket's server knows: its version, the gradients waiting for their clock to complete,
    and which workers wait for which version before they may take their next step."""

    def __init__(self, num_workers: int, staleness: int, version: int = 0) -> None:
        check(num_workers >= 1, f"num_workers must be >= 1, got {num_workers}")
        check(staleness >= 0, f"staleness must be >= 0, got {staleness}")
        self.num_workers = num_workers
        self.staleness = staleness
        self.version = version
        self.applied_staleness: Counter[int] = Counter()  # staleness -> number of gradients applied with it
        self._pending: dict[int, dict[int, Push]] = {}  # clock -> worker -> push
        self._waiting: dict[int, int] = {}  # worker -> version it needs

    def add(self, push: Push) -> None:
        """Record a gradient. A push that SSP forbids is a protocol bug, never silently applied."""
        if not 0 <= push.worker < self.num_workers:
            raise ValueError(f"push from unknown worker {push.worker}")
        if push.clock < self.version:
            raise RuntimeError(
                f"worker {push.worker} pushed clock {push.clock}, already applied (version {self.version})"
            )
        if not 0 <= push.staleness <= self.staleness:
            raise RuntimeError(
                f"worker {push.worker} pushed clock {push.clock} computed from version {push.read_version}: "
                f"staleness {push.staleness} outside [0, {self.staleness}]"
            )
        slot = self._pending.setdefault(push.clock, {})
        if push.worker in slot:
            raise RuntimeError(f"worker {push.worker} pushed clock {push.clock} twice")
        slot[push.worker] = push

    def pop_complete(self) -> Optional[list[Push]]:
        """The gradients of clock ``version`` once every worker has pushed one, else ``None``.

        The caller applies them and then calls :meth:`advance`.
        """
        slot = self._pending.get(self.version)
        if slot is None or len(slot) < self.num_workers:
            return None
        del self._pending[self.version]
        pushes = [slot[w] for w in sorted(slot)]
        self.applied_staleness.update(p.staleness for p in pushes)
        return pushes

    def advance(self) -> None:
        self.version += 1

    def wait(self, worker: int, needed_version: int) -> None:
        """``worker`` takes its next step only from a version >= ``needed_version``."""
        self._waiting[worker] = needed_version

    def has_waiting(self) -> bool:
        return bool(self._waiting)

    def due(self) -> list[int]:
        """Workers whose needed version is now available (each is answered once)."""
        ready = sorted(w for w, needed in self._waiting.items() if needed <= self.version)
        for w in ready:
            del self._waiting[w]
        return ready


def needed_version(clock: int, staleness: int, final: bool) -> int:
    """The version a worker must read after pushing its gradient for ``clock``, before its next step.

    SSP's bound (the next step's gradient may be at most ``staleness`` updates old), or, when ``final``
    (the epoch ends, a checkpoint or validation follows), every update up to and including ``clock``.
    """
    return clock + 1 if final else max(0, clock + 1 - staleness)
