"""Adaptive clipping: the clip norm tracks a quantile of the update norms (Andrew et al. 2021).

Andrew, Thakkar, McMahan & Ramaswamy, "Differentially Private Learning with Adaptive Clipping"
(NeurIPS 2021), Algorithm 1 with the geometric update:

- client i reports bᵢ = 1[‖Δᵢ‖ ≤ C] alongside its clipped update;
- the server releases the count with Gaussian noise of std σ_b and estimates the unclipped fraction

      b̃ = (Σᵢ (bᵢ − ½) + N(0, σ_b²)) / m + ½          (m: the expected clients per round)

  (centring bᵢ halves the count's add/remove sensitivity; with a full cohort of m clients it equals
  (Σ bᵢ + noise) / m);
- C ← C · exp(−η_C (b̃ − γ)), γ the target quantile, η_C the clip learning rate.

Privacy (the paper's Theorem 1): releasing the update sum with noise multiplier z_Δ and the count with
std σ_b is, per round, the Gaussian mechanism on the joint query with noise multiplier

      z = (z_Δ⁻² + (2σ_b)⁻²)^(-1/2),   so for a budget z:   z_Δ = (z⁻² − (2σ_b)⁻²)^(-1/2),

which needs σ_b > z/2. The paper's default is σ_b = m/20 (std 0.05 on the fraction b̃).
"""

from __future__ import annotations

import math
from typing import Any

from lightning_fl.errors import check


def default_count_noise_std(expected_clients_per_round: float) -> float:
    """σ_b = m / 20, the setting of Andrew et al. (2021)."""
    return expected_clients_per_round / 20.0


def update_noise_multiplier(noise_multiplier: float, count_noise_std: float, source: str = "") -> float:
    """z_Δ = (z⁻² − (2σ_b)⁻²)^(-1/2): the update's multiplier that leaves the round's total at z.

    ``z = 0`` (no privacy) gives 0. Raises ``FederatedConfigError`` when σ_b ≤ z/2 (the count alone
    would spend the whole budget); ``source`` ends that message (where σ_b came from).
    """
    z, sb = float(noise_multiplier), float(count_noise_std)
    if z == 0.0:
        return 0.0
    check(
        2.0 * sb > z,
        f"CentralDP: count_noise_multiplier must be > noise_multiplier/2 = {z / 2:g} for adaptive clipping, "
        f"got {sb:g}{source}",
    )
    return (z**-2 - (2.0 * sb) ** -2) ** -0.5


def noised_unclipped_fraction(
    count_under_clip: float, num_clients: int, count_noise: float, expected_clients_per_round: float
) -> float:
    """b̃ = (Σ bᵢ − n/2 + noise) / m + ½ for n clients of whom ``count_under_clip`` were not clipped."""
    return (count_under_clip - num_clients / 2.0 + count_noise) / expected_clients_per_round + 0.5


class AdaptiveClipState:
    """The clip norm C of geometric adaptive clipping and its update C ← C · exp(−η_C (b̃ − γ)).

    Andrew et al. (2021), "Differentially Private Learning with Adaptive Clipping". The state that must
    survive a resume is C alone (``state_dict``).
    """

    def __init__(self, clip_norm: float, target_quantile: float, learning_rate: float) -> None:
        check(clip_norm > 0 and math.isfinite(clip_norm), f"CentralDP: clip_norm must be > 0, got {clip_norm}")
        check(0 < target_quantile < 1, f"CentralDP: target_quantile must be in (0, 1), got {target_quantile}")
        check(
            learning_rate > 0 and math.isfinite(learning_rate),
            f"CentralDP: clip_learning_rate must be > 0, got {learning_rate}",
        )
        self.clip_norm = float(clip_norm)
        self.target_quantile = float(target_quantile)
        self.learning_rate = float(learning_rate)

    def update(self, unclipped_fraction: float) -> float:
        """One geometric step from the (noised) unclipped fraction b̃; returns the new clip norm."""
        self.clip_norm *= math.exp(-self.learning_rate * (unclipped_fraction - self.target_quantile))
        return self.clip_norm

    def state_dict(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip_norm = float(state["clip_norm"])
