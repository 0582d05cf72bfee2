"""Aggregation of client models: the FedAvg weighted mean, as a formula and as a streaming sum.

``weighted_average`` is the textbook formula (it holds every client vector; use it for references and
tests). ``WeightedSum`` is what the strategies run: clients are folded in one at a time, so a process
holds one accumulator whatever the number of clients, and ranks combine their partial sums with a single
all-reduce of the buffer (weights and the count of rejected updates travel in the same buffer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def weighted_average(vectors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """θ = Σ wᵢ θᵢ / Σ wᵢ."""
    if len(vectors) != len(weights) or not vectors:
        raise ValueError("weighted_average needs one weight per vector and at least one vector")
    w = torch.as_tensor(weights, dtype=torch.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    stacked = torch.stack([v.double() for v in vectors])
    return (torch.tensordot(w, stacked, dims=1) / w.sum()).to(vectors[0].dtype)


class WeightedSum:
    """Running Σ wᵢ θᵢ and Σ wᵢ over flat client vectors, in one communicable buffer.

    Layout of ``buffer``: ``[Σ wᵢ θᵢ (numel values) | Σ wᵢ | number of rejected updates | extra sums]``.
    ``extra`` names further sums that travel in the same all-reduce (a client algorithm's, for example).
    """

    def __init__(
        self,
        numel: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
        extra: dict[str, int] | None = None,
    ) -> None:
        self.numel = numel
        sizes = dict(extra or {})
        self.buffer = torch.zeros(numel + 2 + sum(sizes.values()), dtype=dtype, device=device)
        self.extra: dict[str, torch.Tensor] = {}
        offset = numel + 2
        for name, size in sizes.items():
            self.extra[name] = self.buffer[offset : offset + size]
            offset += size

    def reset(self) -> None:
        self.buffer.zero_()

    @property
    def values(self) -> torch.Tensor:
        return self.buffer[: self.numel]

    @property
    def total_weight(self) -> float:
        return float(self.buffer[self.numel])

    @property
    def rejected(self) -> int:
        return int(self.buffer[self.numel + 1])

    def add_(self, vector: torch.Tensor, weight: float) -> None:
        self.values.add_(vector, alpha=weight)
        self.buffer[self.numel] += weight

    def add_weight_(self, weight: float) -> None:
        """Count a client's weight whose vector is combined elsewhere (a robust aggregator holds it)."""
        self.buffer[self.numel] += weight

    def add_parts_(self, parts: Sequence[torch.Tensor], weight: float) -> None:
        """Like :meth:`add_` for a vector given as tensors in order (a model's parameters), without packing."""
        for view, t in zip(self.values.split([t.numel() for t in parts]), parts):
            view.add_(t.detach().reshape(-1), alpha=weight)
        self.buffer[self.numel] += weight

    def reject_(self) -> None:
        self.buffer[self.numel + 1] += 1

    def average_(self) -> torch.Tensor | None:
        """Divide in place and return the weighted mean, or ``None`` when no update was accepted."""
        total = self.total_weight
        if total <= 0:
            return None
        return self.values.div_(total)


def all_finite(parts: Sequence[torch.Tensor]) -> bool:
    """True when no tensor holds NaN or ±inf (one reduction per tensor, one host sync)."""
    if not parts:
        return True
    return bool(torch.isfinite(torch.stack([t.detach().float().sum() for t in parts])).all())
