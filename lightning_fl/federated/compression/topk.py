"""Top-k sparsification: send the k largest-magnitude entries of the update."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from lightning_fl.errors import check
from lightning_fl.federated.compression.base import (
    Compressor,
    as_bytes,
    check_buffer,
    flat_update,
    from_bytes,
)

INT32_LIMIT = 2**31


@dataclass(frozen=True)
class SparsePayload:
    """``values[j]`` is entry ``indices[j]`` of a vector of ``numel`` values; every other entry is 0."""

    numel: int
    indices: torch.Tensor  # int32 (int64 when numel >= 2^31), ascending
    values: torch.Tensor  # float32


class TopK(Compressor):
    """Keep the ``k = ⌈fraction · P⌉`` entries of largest magnitude, zero the rest.

    ``C(x)_i = x_i`` if i ∈ S, else 0, where S holds the indices of the k largest ``|x_i|``; among equal
    magnitudes the lower index is taken first, so the choice is deterministic. The compressor is biased
    (E[C(x)] ≠ x) but contractive, ‖x − C(x)‖² ≤ (1 − k/P) ‖x‖², which is what error feedback needs
    (Stich et al. 2018, "Sparsified SGD with memory"; Aji & Heafield 2017 for top-k in distributed SGD).
    ``fraction=1.0`` sends every entry and decodes to exactly the input (for float32 input).

    ``fraction`` is read as the decimal it is written as: ``TopK(0.07)`` keeps ⌈7 P / 100⌉ entries, not one
    more because the binary value of 0.07 is slightly above it.

    Wire format (``compressed_nbytes(P) = k · (4 + 4)`` bytes; ``k · (8 + 4)`` when P ≥ 2³¹):
    ``[indices: int32 × k, ascending | values: float32 × k]``.
    """

    def __init__(self, fraction: float, error_feedback: bool = True) -> None:
        ok = isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction <= 1
        check(ok, f"TopK: fraction must be in (0, 1], got {fraction!r}")
        super().__init__(error_feedback=error_feedback)
        self.fraction = float(fraction)

    def _settings(self) -> dict:
        return {"fraction": self.fraction, "error_feedback": self.error_feedback}

    def k(self, numel: int) -> int:
        """Entries kept out of ``numel``: ⌈fraction · numel⌉ (at least 1 for a non-empty update)."""
        return math.ceil(Fraction(repr(self.fraction)) * numel)

    @staticmethod
    def index_dtype(numel: int) -> torch.dtype:
        return torch.int32 if numel < INT32_LIMIT else torch.int64

    def compressed_nbytes(self, numel: int) -> int:
        index_bytes = 4 if self.index_dtype(numel) == torch.int32 else 8
        return self.k(numel) * (index_bytes + 4)

    def compress(self, update: torch.Tensor, generator: torch.Generator | None = None) -> SparsePayload:
        flat = flat_update(update, "TopK")
        numel, k = flat.numel(), self.k(flat.numel())
        if not bool(torch.isfinite(flat).all()):
            raise ValueError("TopK.compress: the update holds NaN or inf")
        if k == numel:
            indices = torch.arange(numel, device=flat.device)
        else:
            magnitude = flat.abs()
            threshold = torch.topk(magnitude, k, sorted=False).values.min()
            above = torch.nonzero(magnitude > threshold).squeeze(1)
            # torch.topk breaks ties arbitrarily: take the entries at the threshold by ascending index.
            ties = torch.nonzero(magnitude == threshold).squeeze(1)[: k - above.numel()]
            indices = torch.cat([above, ties]).sort().values
        values = flat[indices].to(torch.float32)
        return SparsePayload(numel, indices.to(self.index_dtype(numel)), values)

    def decompress(self, payload: SparsePayload) -> torch.Tensor:
        indices = payload.indices.long()
        # A malformed upload must fail here with a clear error, not scatter out of bounds.
        if indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) < payload.numel):
            raise ValueError(f"TopK.decompress: indices outside [0, {payload.numel})")
        out = torch.zeros(payload.numel, dtype=torch.float32, device=payload.values.device)
        out[indices] = payload.values
        return out

    def encode(self, payload: SparsePayload) -> torch.Tensor:
        return torch.cat([as_bytes(payload.indices), as_bytes(payload.values)])

    def parse(self, buffer: torch.Tensor, numel: int) -> SparsePayload:
        check_buffer(buffer, self.compressed_nbytes(numel), "TopK.parse")
        k = self.k(numel)
        dtype = self.index_dtype(numel)
        split = k * (4 if dtype == torch.int32 else 8)
        return SparsePayload(numel, from_bytes(buffer[:split], dtype), from_bytes(buffer[split:], torch.float32))
