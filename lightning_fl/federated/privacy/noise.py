"""Gaussian noise for the round's sum: seeded (simulation) or from the OS's secure random source.

Seeded noise is a pure function of ``(seed, purpose, round)`` through ``lightning_fl.seeding``: every
process draws the identical vector without communicating and a resumed run draws what the uninterrupted
run drew. Anyone who knows the seed can subtract it, so seeded noise is for research runs only.

Secure noise (``secure=True``) reads ``os.urandom`` (the operating system's CSPRNG), turns 53 random bits
into a uniform in (0, 1) and two uniforms into two standard normals by the Box–Muller transform

    r = sqrt(-2 ln u₁),  z₀ = r cos(2π u₂),  z₁ = r sin(2π u₂),

in float64. It is not reproducible, so exactly one process must draw it and broadcast it.

Floating-point caveat (Mironov 2012, "On Significance of the Least Significant Bits for Differential
Privacy"): the proof of the Gaussian mechanism assumes real-valued noise. Floating-point noise has gaps
and an uneven grid, and ``x + noise`` rounded to float32 can reveal information about ``x`` that the
real-valued analysis says is hidden. A secure source fixes predictability of the noise, not this. A
remedy (snapping, or a discrete Gaussian added in integer arithmetic, Canonne, Kamath & Steinke 2020) is
not implemented here.
"""

from __future__ import annotations

import math
import os

import torch

from lightning_fl.seeding import generator

_BITS53 = (1 << 53) - 1


def secure_uniform(n: int) -> torch.Tensor:
    """``n`` float64 uniforms in the open interval (0, 1) from ``os.urandom`` (53 random bits each)."""
    if n <= 0:
        return torch.zeros(0, dtype=torch.float64)
    words = torch.frombuffer(bytearray(os.urandom(8 * n)), dtype=torch.int64)
    bits = torch.bitwise_and(torch.bitwise_right_shift(words, 11), _BITS53)
    # (k + 1/2) / 2^53 is never 0 or 1, so ln(u) is always finite.
    return (bits.double() + 0.5) * 2.0**-53


def secure_standard_normal(n: int) -> torch.Tensor:
    """``n`` float64 standard normals: Box–Muller on uniforms from :func:`secure_uniform`."""
    pairs = (n + 1) // 2
    u = secure_uniform(2 * pairs).view(2, pairs)
    radius = torch.sqrt(-2.0 * torch.log(u[0]))
    angle = (2.0 * math.pi) * u[1]
    return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:n]


def gaussian_noise(
    numel: int,
    std: float,
    seed: int,
    round_idx: int,
    secure: bool = False,
    purpose: str = "update",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``numel`` i.i.d. N(0, std²) values on the CPU.

    ``secure=False``: drawn from ``generator(seed, "dp-noise", purpose, round_idx)``, identical on every
    process. ``secure=True``: from ``os.urandom`` (``seed`` and ``round_idx`` unused); draw on one process
    and broadcast. ``purpose`` separates independent streams of the same round (the update's noise and the
    adaptive-clipping count's noise).
    """
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    if not (std >= 0 and math.isfinite(std)):
        raise ValueError(f"std must be finite and >= 0, got {std}")
    if secure:
        return (secure_standard_normal(numel) * std).to(dtype)
    g = generator(seed, "dp-noise", purpose, round_idx)
    return torch.randn(numel, generator=g, dtype=dtype).mul_(std)
