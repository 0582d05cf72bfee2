"""Seeded attack simulation for robustness research: who is malicious, and what a malicious client sends.

Everything random is a pure function of the run's seed and what it is for (``lightning_fl.seeding``): the
malicious clients of round r depend on (seed, r, the round's sampled clients) only, and a Gaussian
attacker's noise on (seed, r, client). A run is therefore reproducible on any number of processes and
resumes without RNG state. See ``docs/robustness.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction

import torch

from lightning_fl.errors import check, is_int
from lightning_fl.seeding import generator

KINDS = ("sign_flip", "scale", "gaussian", "little_is_enough")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_fraction(owner: str, fraction: object) -> None:
    check(_is_real(fraction) and 0 <= fraction < 1, f"{owner}: fraction must be in [0, 1), got {fraction!r}")


def num_malicious(num_clients: int, fraction: float) -> int:
    """round(fraction · K), halves rounded up, on the decimal value of ``fraction`` (0.25 · 10 → 3)."""
    return math.floor(Fraction(str(float(fraction))) * num_clients + Fraction(1, 2))


def malicious_clients(seed: int, round_idx: int, sampled_client_ids: Iterable[int], fraction: float) -> set[int]:
    """Exactly ``num_malicious(K, fraction)`` of the round's K sampled clients, drawn uniformly.

    A pure function of (seed, round_idx) and the *set* of sampled ids (their order does not matter), so
    every process agrees without communicating.
    """
    _check_fraction("malicious_clients", fraction)
    ids = sorted(int(c) for c in sampled_client_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("malicious_clients: sampled_client_ids has a repeated id")
    n = num_malicious(len(ids), fraction)
    perm = torch.randperm(len(ids), generator=generator(seed, "malicious", round_idx))
    return {ids[i] for i in perm[:n].tolist()}


def lie_z_max(num_clients: int, num_malicious: int) -> float:
    """z of "A little is enough" (Baruch et al. 2019): s = ⌊n/2 + 1⌋ − m, z_max = Φ⁻¹((n − s) / n).

    The largest shift (in standard deviations) for which the m malicious updates still look closer to the
    benign mean than enough benign ones to sway a majority-based rule.
    """
    n, m = num_clients, num_malicious
    check(is_int(n) and n >= 1, f"lie_z_max: num_clients must be an integer >= 1, got {n!r}")
    check(is_int(m) and 0 <= m <= n, f"lie_z_max: num_malicious must be an integer in [0, {n}], got {m!r}")
    s = n // 2 + 1 - m
    p = (n - s) / n
    check(0 < p < 1, f"lie_z_max: no finite z for num_clients={n}, num_malicious={m} (Φ⁻¹({p:g}))")
    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


def coordinate_mean_std(updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise mean and (population) standard deviation of ``[K, P]`` benign updates, for the LIE attack."""
    x = updates.double()
    mean = x.mean(dim=0)
    std = ((x - mean) ** 2).mean(dim=0).sqrt()
    return mean.to(updates.dtype), std.to(updates.dtype)


class ModelPoisoning:
    """Model poisoning: the malicious share of each round's clients replaces its update u by

    - ``sign_flip``: −scale · u (default scale 1), a gradient-ascent attacker;
    - ``scale``: scale · u (default scale 10; "boosting", Bhagoji et al. 2019);
    - ``gaussian``: noise ~ N(0, std² I), drawn from (seed, round, client) (Blanchard et al. 2017's
      Gaussian Byzantine worker);
    - ``little_is_enough``: μ − z · σ coordinate-wise, μ and σ the mean and standard deviation of the
      benign updates (Baruch et al. 2019); z given, or z_max from the round's K and f (``lie_z_max``).

    ``fraction`` of the sampled clients is malicious each round (``malicious_clients``).
    """

    def __init__(
        self,
        kind: str,
        fraction: float,
        scale: float | None = None,
        std: float = 1.0,
        z: float | None = None,
    ) -> None:
        check(kind in KINDS, f"ModelPoisoning: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        _check_fraction("ModelPoisoning", fraction)
        check(
            scale is None or (_is_real(scale) and scale > 0),
            f"ModelPoisoning: scale must be a finite number > 0, got {scale!r}",
        )
        check(_is_real(std) and std > 0, f"ModelPoisoning: std must be a finite number > 0, got {std!r}")
        check(z is None or _is_real(z), f"ModelPoisoning: z must be a finite number or None, got {z!r}")
        self.kind = kind
        self.fraction = float(fraction)
        self.scale = float(scale) if scale is not None else (10.0 if kind == "scale" else 1.0)
        self.std = float(std)
        self.z = None if z is None else float(z)

    def malicious(self, seed: int, round_idx: int, sampled_client_ids: Iterable[int]) -> set[int]:
        return malicious_clients(seed, round_idx, sampled_client_ids, self.fraction)

    @property
    def needs_benign_statistics(self) -> bool:
        """True when ``poison`` needs the benign updates' coordinate-wise mean and std."""
        return self.kind == "little_is_enough"

    def poison(
        self,
        update: torch.Tensor,
        client_id: int,
        round_idx: int,
        seed: int,
        benign_mean: torch.Tensor | None = None,
        benign_std: torch.Tensor | None = None,
        num_clients: int | None = None,
    ) -> torch.Tensor:
        """The malicious replacement of ``update`` (a new tensor of the same shape, dtype and device).

        ``num_clients`` (the round's K) is needed only by ``little_is_enough`` without a fixed ``z``.
        """
        if self.kind == "sign_flip":
            return update * -self.scale
        if self.kind == "scale":
            return update * self.scale
        if self.kind == "gaussian":
            g = generator(seed, "attack-gaussian", round_idx, int(client_id))
            noise = torch.randn(update.shape, generator=g, dtype=torch.float64) * self.std
            return noise.to(dtype=update.dtype, device=update.device)
        if benign_mean is None or benign_std is None:
            raise ValueError("ModelPoisoning(kind='little_is_enough').poison needs benign_mean and benign_std")
        z = self.z
        if z is None:
            if num_clients is None:
                raise ValueError("ModelPoisoning(kind='little_is_enough', z=None).poison needs num_clients")
            z = lie_z_max(num_clients, num_malicious(num_clients, self.fraction))
        return (benign_mean.double() - z * benign_std.double()).to(dtype=update.dtype, device=update.device)

    def __repr__(self) -> str:
        return (
            f"ModelPoisoning(kind={self.kind!r}, fraction={self.fraction!r}, scale={self.scale!r}, "
            f"std={self.std!r}, z={self.z!r})"
        )


class LabelFlip:
    """Data poisoning by label flipping (e.g. Tolpegin et al. 2020): malicious clients train on
    y ↦ num_classes − 1 − y. ``fraction`` of each round's sampled clients is malicious.
    """

    def __init__(self, fraction: float, num_classes: int) -> None:
        _check_fraction("LabelFlip", fraction)
        check(
            is_int(num_classes) and num_classes >= 2,
            f"LabelFlip: num_classes must be an integer >= 2, got {num_classes!r}",
        )
        self.fraction = float(fraction)
        self.num_classes = num_classes

    def malicious(self, seed: int, round_idx: int, sampled_client_ids: Iterable[int]) -> set[int]:
        return malicious_clients(seed, round_idx, sampled_client_ids, self.fraction)

    def flip(self, labels: torch.Tensor) -> torch.Tensor:
        """num_classes − 1 − labels (a new tensor); labels outside [0, num_classes) are an error."""
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"LabelFlip: labels must be in [0, num_classes={self.num_classes})")
        return self.num_classes - 1 - labels

    def __repr__(self) -> str:
        return f"LabelFlip(fraction={self.fraction!r}, num_classes={self.num_classes!r})"
