"""``CentralDP``: client-level differential privacy for FedAvg, the part the strategy calls.

DP-FedAvg (McMahan, Ramage, Talwar & Zhang 2018, "Learning Differentially Private Recurrent Language
Models"), with optional adaptive clipping (Andrew et al. 2021). Moments of a round, for the strategy:

1. once, on every process: ``setup(num_clients, clients_per_round)``;
2. before a round: ``stop_reason()`` (a message when the round would exceed ``target_epsilon``);
3. at each client's end: ``clipped, under = dp.clip(update)`` with ``update`` = client − global; add
   ``clipped`` with weight 1 (uniform) to the sum and ``under`` (0/1) to a count;
4. after the all-reduce (SUM) of ``[Σ clipped | Σ under | clients summed]``:
   ``average = dp.finish(sum, count, clients, seed, round_idx)`` on every process (seeded noise), or with
   ``secure_noise=True``: ``noise = dp.noise(numel, seed, round_idx)`` on rank 0, broadcast, then
   ``dp.finish(..., noise=noise)`` everywhere;
5. log ``dp.metrics()``; checkpoint ``dp.state_dict()``.

No torch.distributed here: the strategy owns the collectives.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lightning_fl.errors import check, is_int

from .accounting import SAMPLING_MODELS, ClientLevelAccountant, default_delta, import_dp_accounting
from .adaptive_clipping import (
    AdaptiveClipState,
    default_count_noise_std,
    noised_unclipped_fraction,
    update_noise_multiplier,
)
from .clipping import clip_update
from .noise import gaussian_noise


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class CentralDP:
    """Client-level (ε, δ)-DP for FedAvg: clip, sum with uniform weights, add Gaussian noise once.

    Per round, with m = ``clients_per_round`` (fixed-size sampling: the expected and actual cohort), clip
    norm S and noise multiplier z (McMahan et al. 2018, DP-FedAvg with the fixed-denominator estimator):

        Δ̄ = ( Σᵢ Δᵢ · min(1, S / ‖Δᵢ‖)  +  N(0, (z·S)² I) ) / m

    Uniform weights and the fixed denominator m (not Σ weights, not the number of clients that
    reported) make one client's influence on Δ̄ at most S/m whatever the others do: that bound is
    what the noise is calibrated to. ``noise_cohort_size`` = M ≥ m scales the noise std by m/M
    (pfl-research's ``noise_scale = cohort_size / noise_cohort_size``) so the noise on Δ̄ is that of a
    cohort of M, z·S/M; ε is then accounted for M clients per round, valid only for a deployment that
    really samples M.

    Adaptive clipping (``target_quantile`` set): S follows the γ-quantile of update norms by
    S ← S · exp(−η (b̃ − γ)) from the noised unclipped fraction b̃ (Andrew et al. 2021); the update
    noise uses z_Δ = (z⁻² − (2σ_b)⁻²)^(-1/2) so that update and count together cost exactly z
    (σ_b = ``count_noise_multiplier``, the std of the count's noise, default m/20 as in the paper).

    ε is reported for ``delta`` (default N^(-1.1)) by :class:`ClientLevelAccountant`.
    """

    def __init__(
        self,
        noise_multiplier: float,
        clip_norm: float,
        delta: float | None = None,
        target_epsilon: float | None = None,
        target_quantile: float | None = None,
        clip_learning_rate: float = 0.2,
        count_noise_multiplier: float | None = None,
        noise_cohort_size: int | None = None,
        secure_noise: bool = False,
        accounting: str = "without_replacement",
    ) -> None:
        n = "CentralDP"
        check(
            _number(noise_multiplier) and noise_multiplier >= 0,
            f"{n}: noise_multiplier must be >= 0, got {noise_multiplier}",
        )
        check(_number(clip_norm) and clip_norm > 0, f"{n}: clip_norm must be > 0, got {clip_norm}")
        check(delta is None or (_number(delta) and 0 < delta < 1), f"{n}: delta must be in (0, 1), got {delta}")
        check(
            target_epsilon is None or (_number(target_epsilon) and target_epsilon > 0),
            f"{n}: target_epsilon must be > 0, got {target_epsilon}",
        )
        check(
            target_epsilon is None or noise_multiplier > 0,
            f"{n}: target_epsilon needs noise_multiplier > 0 (with no noise ε is infinite after one round)",
        )
        check(
            target_quantile is None or (_number(target_quantile) and 0 < target_quantile < 1),
            f"{n}: target_quantile must be in (0, 1), got {target_quantile}",
        )
        check(
            _number(clip_learning_rate) and clip_learning_rate > 0,
            f"{n}: clip_learning_rate must be > 0, got {clip_learning_rate}",
        )
        check(
            count_noise_multiplier is None or (_number(count_noise_multiplier) and count_noise_multiplier >= 0),
            f"{n}: count_noise_multiplier must be >= 0, got {count_noise_multiplier}",
        )
        check(
            count_noise_multiplier is None or target_quantile is not None,
            f"{n}: count_noise_multiplier is for adaptive clipping; set target_quantile too",
        )
        check(
            noise_cohort_size is None or (is_int(noise_cohort_size) and noise_cohort_size >= 1),
            f"{n}: noise_cohort_size must be an int >= 1, got {noise_cohort_size}",
        )
        check(isinstance(secure_noise, bool), f"{n}: secure_noise must be true or false, got {secure_noise!r}")
        check(accounting in SAMPLING_MODELS, f"{n}: accounting must be one of {SAMPLING_MODELS}, got {accounting!r}")
        if target_quantile is not None and count_noise_multiplier is not None:
            update_noise_multiplier(noise_multiplier, count_noise_multiplier)  # raises if σ_b ≤ z/2
        if noise_multiplier > 0:
            import_dp_accounting()  # a one-line error before any process starts, not at round one

        self.noise_multiplier = float(noise_multiplier)
        self.initial_clip_norm = float(clip_norm)
        self.delta = None if delta is None else float(delta)
        self.target_epsilon = None if target_epsilon is None else float(target_epsilon)
        self.target_quantile = None if target_quantile is None else float(target_quantile)
        self.clip_learning_rate = float(clip_learning_rate)
        self.count_noise_multiplier = None if count_noise_multiplier is None else float(count_noise_multiplier)
        self.noise_cohort_size = noise_cohort_size
        self.secure_noise = secure_noise
        self.accounting = accounting

        self._clip_norm = float(clip_norm)
        self._adaptive = (
            None if target_quantile is None else AdaptiveClipState(clip_norm, target_quantile, clip_learning_rate)
        )
        self._num_clients: int | None = None
        self._m: int | None = None
        self._noise_scale = 1.0
        self._count_std = 0.0
        self._z_update = self.noise_multiplier
        self._accountant: ClientLevelAccountant | None = None
        self._rounds_budget: int | None = None
        self._pending_state: dict[str, Any] | None = None
        self._last: dict[str, float] = {}

    def __repr__(self) -> str:
        return (
            f"CentralDP(noise_multiplier={self.noise_multiplier}, clip_norm={self.initial_clip_norm}, "
            f"delta={self.delta}, target_epsilon={self.target_epsilon}, target_quantile={self.target_quantile}, "
            f"accounting={self.accounting!r})"
        )

    # -- setup ---------------------------------------------------------------------------------------

    def setup(self, num_clients: int, clients_per_round: int) -> None:
        """Bind to the population (N) and cohort (m); call once on every process before round one."""
        n = "CentralDP"
        check(is_int(num_clients) and num_clients >= 1, f"{n}: num_clients must be an int >= 1, got {num_clients}")
        check(
            is_int(clients_per_round) and 1 <= clients_per_round <= num_clients,
            f"{n}: clients_per_round must be in [1, num_clients={num_clients}], got {clients_per_round}",
        )
        cohort = clients_per_round if self.noise_cohort_size is None else self.noise_cohort_size
        check(
            clients_per_round <= cohort <= num_clients,
            f"{n}: noise_cohort_size must be in [clients_per_round={clients_per_round}, "
            f"num_clients={num_clients}], got {self.noise_cohort_size}",
        )
        self._num_clients, self._m = num_clients, clients_per_round
        self._noise_scale = clients_per_round / cohort
        if self._adaptive is not None:
            sigma_b, source = self.count_noise_multiplier, ""
            if sigma_b is None:
                sigma_b = default_count_noise_std(cohort) if self.noise_multiplier > 0 else 0.0
                source = f" (the default: {cohort} clients per round / 20; set count_noise_multiplier)"
            self._z_update = update_noise_multiplier(self.noise_multiplier, sigma_b, source)
            self._count_std = sigma_b * self._noise_scale
        delta = default_delta(num_clients) if self.delta is None else self.delta
        self._accountant = ClientLevelAccountant(num_clients, cohort, self.noise_multiplier, delta, self.accounting)
        self._rounds_budget = None
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.load_state_dict(state)

    def _bound(self) -> tuple[int, ClientLevelAccountant]:
        if self._m is None or self._accountant is None:
            raise RuntimeError("CentralDP.setup(num_clients, clients_per_round) must be called first")
        return self._m, self._accountant

    # -- the round -----------------------------------------------------------------------------------

    @property
    def clip_norm(self) -> float:
        """The clip norm S of the current round (it moves between rounds with adaptive clipping)."""
        return self._adaptive.clip_norm if self._adaptive is not None else self._clip_norm

    @property
    def update_noise_multiplier(self) -> float:
        """z_Δ: z itself, or the reduced multiplier of adaptive clipping (after ``setup``)."""
        return self._z_update

    @property
    def noise_std(self) -> float:
        """Std of the noise added to the round's *sum*: z_Δ · S · m / M."""
        return self._z_update * self.clip_norm * self._noise_scale

    @property
    def resolved_delta(self) -> float:
        return self._bound()[1].delta

    def clip(self, update: Any) -> tuple[Any, bool]:
        """``(update · min(1, S/‖update‖), ‖update‖ ≤ S)`` for a tensor or a list of tensors."""
        clipped, norm = clip_update(update, self.clip_norm)
        return clipped, bool(norm <= self.clip_norm)

    def noise(self, numel: int, seed: int, round_idx: int) -> torch.Tensor:
        """The round's noise, float32, length ``numel + 1``: [noise of the sum | noise of the count].

        Seeded (a function of ``(seed, round_idx)``), or from ``os.urandom`` with ``secure_noise``: then
        draw it on one process and broadcast it. The count's entry is 0 without adaptive clipping.
        """
        self._bound()
        update_noise = self._draw(numel, self.noise_std, seed, round_idx, "update")
        count_noise = self._draw(1, self._count_std, seed, round_idx, "count")
        return torch.cat([update_noise, count_noise])

    def _draw(self, numel: int, std: float, seed: int, round_idx: int, purpose: str) -> torch.Tensor:
        if std == 0.0:
            return torch.zeros(numel, dtype=torch.float32)
        return gaussian_noise(numel, std, seed, round_idx, secure=self.secure_noise, purpose=purpose)

    def finish(
        self,
        sum_of_clipped: torch.Tensor,
        count_under_clip_sum: float,
        num_clients_sampled: int,
        seed: int,
        round_idx: int,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The round's noised average update (Σ clipped + noise) / m, then the adaptive clip step.

        ``sum_of_clipped`` and ``count_under_clip_sum`` are the all-reduced sums over every process;
        ``num_clients_sampled`` the clients in that sum. Returns a new tensor shaped, typed and placed
        like ``sum_of_clipped``; the new global model is global + average (or a server-optimizer step
        with pseudo-gradient −average). Counts one round in the accountant.
        """
        m, accountant = self._bound()
        numel = sum_of_clipped.numel()
        if noise is None:
            noise = self.noise(numel, seed, round_idx)
        check(
            noise.numel() == numel + 1,
            f"CentralDP: noise must have numel + 1 = {numel + 1} values, got {noise.numel()}",
        )
        update_noise = noise[:numel].to(device=sum_of_clipped.device, dtype=sum_of_clipped.dtype)
        average = (sum_of_clipped + update_noise.view_as(sum_of_clipped)) / m
        metrics = {"fl/dp_clip_norm": self.clip_norm, "fl/dp_noise_std": self.noise_std / m}
        if self._adaptive is not None:
            fraction = noised_unclipped_fraction(
                float(count_under_clip_sum), num_clients_sampled, float(noise[numel]), m
            )
            self._adaptive.update(fraction)
            metrics["fl/dp_unclipped_fraction"] = fraction
        accountant.step()
        metrics["fl/epsilon"] = accountant.epsilon()
        self._last = metrics
        return average

    # -- budget, metrics, checkpoints ----------------------------------------------------------------

    def epsilon(self, rounds: int | None = None) -> float:
        """ε at the resolved δ after ``rounds`` rounds (default: the rounds finished so far)."""
        return self._bound()[1].epsilon(rounds)

    @property
    def rounds_done(self) -> int:
        return self._bound()[1].rounds

    def max_rounds(self) -> int | None:
        """The most rounds with ε ≤ ``target_epsilon``, or ``None`` without a target."""
        _, accountant = self._bound()
        if self.target_epsilon is None:
            return None
        if self._rounds_budget is None:
            self._rounds_budget = accountant.rounds_within(self.target_epsilon)
        return self._rounds_budget

    def stop_reason(self) -> str | None:
        """A one-line message when the next round would push ε above ``target_epsilon``, else ``None``."""
        budget = self.max_rounds()
        done = self.rounds_done
        if budget is None or done < budget:
            return None
        return (
            f"CentralDP: stopping before round {done + 1}: it would raise epsilon to {self.epsilon(done + 1):.4g} > "
            f"target_epsilon={self.target_epsilon:g} (delta={self.resolved_delta:.3g}); epsilon after {done} "
            f"rounds is {self.epsilon(done):.4g}"
        )

    def metrics(self) -> dict[str, float]:
        """The last round's ``fl/epsilon``, ``fl/dp_clip_norm`` (used in it), ``fl/dp_noise_std`` (on the
        average update) and, with adaptive clipping, ``fl/dp_unclipped_fraction`` (noised)."""
        return dict(self._last)

    def state_dict(self) -> dict[str, Any]:
        _, accountant = self._bound()
        return {"clip_norm": self.clip_norm, "accountant": accountant.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the clip norm and the rounds accounted (deferred until ``setup`` if called before)."""
        if self._accountant is None:
            self._pending_state = dict(state)
            return
        self._accountant.load_state_dict(state["accountant"])
        if self._adaptive is not None:
            self._adaptive.load_state_dict({"clip_norm": state["clip_norm"]})
        self._rounds_budget = None
