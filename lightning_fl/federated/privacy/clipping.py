"""Per-client L2 clipping of a model update (DP-FedAvg, McMahan et al. 2018).

Clipping bounds how far one client can move the sum of updates: after ``clip_update`` every contribution
has L2 norm at most ``clip_norm``, which is the sensitivity the Gaussian noise is calibrated to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import torch

Update = TypeVar("Update", torch.Tensor, Sequence[torch.Tensor])


def global_norm(update: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """‖u‖₂ over all entries, as if the tensors were concatenated (accumulated in float64)."""
    parts = [update] if isinstance(update, torch.Tensor) else list(update)
    if not parts:
        return 0.0
    squares = torch.stack([torch.linalg.vector_norm(p.detach(), dtype=torch.float64) ** 2 for p in parts])
    return math.sqrt(float(squares.sum()))


def clip_factor(norm: float, clip_norm: float) -> float:
    """min(1, S / ‖u‖); 0 for a non-finite norm, so even a diverged client's contribution stays bounded."""
    if not math.isfinite(norm):
        return 0.0
    return 1.0 if norm <= clip_norm else clip_norm / norm


def clip_update(update: Update, clip_norm: float) -> tuple[Update, float]:
    """``(u · min(1, S/‖u‖), ‖u‖)`` for a tensor or a sequence of tensors (one model's parameters).

    The input is not modified. An update with a non-finite entry is replaced by zeros (its norm is
    reported as it is: ``inf`` or ``nan``). The result's norm is ≤ S up to float rounding of the
    scaling (relative 1e-7 in float32).
    """
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    norm = global_norm(update)
    factor = clip_factor(norm, clip_norm)

    def scale(t: torch.Tensor) -> torch.Tensor:
        # NaN * 0 is NaN, hence zeros_like for the rejected case.
        return torch.zeros_like(t) if factor == 0.0 else t.detach() * factor

    if isinstance(update, torch.Tensor):
        return scale(update), norm
    return [scale(p) for p in update], norm
