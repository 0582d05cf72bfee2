"""Fixed-point encoding of float updates into the ring Z_2^32, sized so that a sum never wraps.

Masks only cancel in modular arithmetic, so updates must become ring elements first. A value x in
[-R, R] is encoded as ``q = rnd(x · s) + L/2`` in ``[0, L]`` with ``L = even floor((2^32 - 1) / K)`` and
``s = L / (2R)``: the sum of at most K encodings is at most ``K · L < 2^32``, so once the masks have
cancelled (mod 2^32) the true integer sum is recovered exactly, never wrapped.

Resolution ``Δ = 1/s = 2R / L ≈ 2 R K / 2^32`` (K = 100, R = 1: Δ ≈ 4.7e-8). Error of one coordinate:
nearest rounding ``|e| ≤ Δ/2``; stochastic rounding ``|e| < Δ`` with ``E[e] = 0``. Error of a sum of n
encodings: ``≤ n Δ / 2`` (nearest), ``< n Δ`` (stochastic; standard deviation ``≤ √n Δ / 2``). Values
outside [-R, R] (and NaN/inf) are counted and clamped, never wrapped; the caller decides whether a count
above zero is an error.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lightning_fl.errors import check

RING_BITS = 32
RING = 1 << RING_BITS
RING_MASK = RING - 1
ROUNDINGS = ("stochastic", "nearest")


class FixedPoint:
    """The encoding of [-clip_range, clip_range] for sums of at most ``max_summands`` encodings (Bonawitz
    et al. 2017 assume inputs in Z_R with R large enough for the sum; this picks that R for floats)."""

    def __init__(self, clip_range: float, max_summands: int, rounding: str = "stochastic") -> None:
        check(math.isfinite(clip_range) and clip_range > 0, f"FixedPoint: clip_range must be > 0, got {clip_range!r}")
        check(rounding in ROUNDINGS, f"FixedPoint: rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        check(
            isinstance(max_summands, int) and 1 <= max_summands <= RING // 4,
            f"FixedPoint: max_summands must be an integer in [1, 2^30], got {max_summands!r}",
        )
        self.clip_range = float(clip_range)
        self.max_summands = max_summands
        self.rounding = rounding
        self.levels = ((RING - 1) // max_summands) // 2 * 2  # L: even, so the offset L/2 is an integer
        self.offset = self.levels // 2
        self.scale = self.levels / (2.0 * self.clip_range)
        assert max_summands * self.levels < RING  # the sum never wraps

    @property
    def resolution(self) -> float:
        """Δ: the value of one integer step."""
        return 1.0 / self.scale

    def error_bound(self, num_summed: int) -> float:
        """Largest possible |dequantized sum − true sum| of ``num_summed`` in-range vectors, per coordinate."""
        per_value = self.resolution / 2 if self.rounding == "nearest" else self.resolution
        return num_summed * per_value

    def quantize(self, values: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """``(q, out_of_range)``: int64 codes in ``[0, L]`` and how many values were outside [-R, R] or not
        finite (those are clamped to the range, NaN to 0, and must be reported by the caller)."""
        codes, out_of_range = self.encode(values, generator)
        return torch.from_numpy(codes.astype(np.int64)), out_of_range

    def encode(self, values: torch.Tensor, generator: torch.Generator | None = None) -> tuple[np.ndarray, int]:
        """What :meth:`quantize` returns, as a float64 numpy array of the integer codes: the caller casts it
        straight into its ring buffer (one pass instead of an int64 tensor and a second copy)."""
        x = values.detach().reshape(-1).to(device="cpu", dtype=torch.float64, copy=True)  # ours to modify
        low, high = torch.aminmax(x) if x.numel() else (torch.zeros(()), torch.zeros(()))
        out_of_range = 0
        if not (-self.clip_range <= low.item() and high.item() <= self.clip_range):  # also catches NaN/inf
            out_of_range = int((~(x.abs() <= self.clip_range)).sum())
            x = torch.nan_to_num(x, nan=0.0).clamp_(-self.clip_range, self.clip_range)
        y = x.mul_(self.scale).numpy()
        if self.rounding == "nearest":
            np.rint(y, out=y)  # half to even, as torch.round
        else:
            check(generator is not None, "FixedPoint: stochastic rounding needs a torch.Generator")
            # floor(y + u), u ~ U[0, 1): rounds up with probability frac(y), so E[q] = y. The uniforms come
            # from numpy's PCG64 seeded by one draw of the caller's generator (still a pure function of it):
            # half the time of torch.rand in float64, which was the largest part of a client's add().
            seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))
            y += np.random.Generator(np.random.PCG64(seed)).random(y.size)
            np.floor(y, out=y)
        # y·s may exceed L/2 by one ulp at x = ±R; the clip keeps the code in [0, L].
        np.clip(y, -self.offset, self.offset, out=y)
        y += self.offset
        return y, out_of_range

    def dequantize(self, total: torch.Tensor, num_summed: int) -> torch.Tensor:
        """The float64 sum of ``num_summed`` vectors from the integer sum of their codes."""
        check(0 <= num_summed <= self.max_summands, f"FixedPoint: num_summed must be in [0, {self.max_summands}]")
        return (total.to(torch.int64) - num_summed * self.offset).to(torch.float64) / self.scale

    def __repr__(self) -> str:
        return (
            f"FixedPoint(clip_range={self.clip_range}, max_summands={self.max_summands}, "
            f"rounding={self.rounding!r}, resolution={self.resolution:.3g})"
        )


def quantize(
    update: torch.Tensor,
    clip_range: float,
    num_clients: int,
    rounding: str = "stochastic",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """Encode one client's update for a sum of ``num_clients`` clients: ``(codes, out_of_range_count)``."""
    return FixedPoint(clip_range, num_clients, rounding).quantize(update, generator)


def dequantize(
    total: torch.Tensor, clip_range: float, num_clients: int, num_summed: int | None = None, rounding: str = "stochastic"
) -> torch.Tensor:
    """Decode the integer sum of ``num_summed`` (default ``num_clients``) codes made by :func:`quantize`."""
    fp = FixedPoint(clip_range, num_clients, rounding)
    return fp.dequantize(total, num_clients if num_summed is None else num_summed)
