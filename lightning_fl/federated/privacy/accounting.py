"""Client-level (ε, δ) accounting of DP-FedAvg rounds with Google's ``dp-accounting`` RDP accountant.

One round releases Σᵢ clip(Δᵢ) + N(0, (z·S)² I) over a cohort of k of the N clients. Two models of the
cohort (``sampling``):

- ``"without_replacement"`` (default, what ``sample_clients`` does): k distinct clients uniformly, a
  fixed number per round. dp-accounting's ``SampledWithoutReplacementDpEvent`` (Wang, Balle &
  Kasiviswanathan 2019, Theorem 27) holds only under the *replace-one* neighbouring relation (N is
  public, one client's data is swapped for another's). Replacing one client's clipped update moves the sum
  by up to ‖u − u'‖ ≤ 2S, so the mechanism's noise-to-sensitivity ratio is z·S / 2S = z/2. The RDP code
  of dp-accounting 0.6 uses ``GaussianDpEvent.noise_multiplier`` as exactly that ratio (std / L2
  sensitivity) under REPLACE_ONE, although the event's docstring defines it as std / per-record bound;
  see google/differential-privacy issue #378. We therefore pass z/2, after checking at run time
  which convention the installed version follows (``_replace_one_divisor``), so a fix of that issue
  upstream cannot silently double-count or halve the sensitivity.
- ``"poisson"``: each client joins independently with probability q = k/N, under add-or-remove-one
  (sensitivity S, multiplier z): ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``. This is the common
  reporting convention of the DP-FL literature (McMahan et al. 2018) but only an approximation for our
  fixed-size sampler; its ε is not a guarantee for the sampler that actually ran.

Default δ = N^(-1.1): below 1/N, so the "fails with probability δ" event exposes fewer than one client in
expectation, and it shrinks with the population (a common rule of thumb; any δ in (0, 1) may be set).
"""

from __future__ import annotations

import math
from typing import Any

from lightning_fl.errors import check, is_int

SAMPLING_MODELS = ("without_replacement", "poisson")
INSTALL_HINT = "pip install 'lightning-fl[privacy]'"
# Doubling search stops here: with so little privacy spent per round, "unlimited" for any real run.
MAX_ROUNDS = 1 << 40


def import_dp_accounting() -> Any:
    """The ``dp_accounting`` module, or a one-line ImportError naming the extra to install."""
    try:
        import dp_accounting
        from dp_accounting.rdp import rdp_privacy_accountant  # noqa: F401 (the accountant we use)
    except ImportError as err:
        raise ImportError(f"differential privacy needs the dp-accounting package: {INSTALL_HINT}") from err
    return dp_accounting


def default_delta(num_clients: int) -> float:
    """δ = N^(-1.1)."""
    return float(num_clients) ** -1.1


_DIVISOR: float | None = None


def _replace_one_divisor(dpa: Any) -> float:
    """By what to divide z for ``SampledWithoutReplacementDpEvent`` under REPLACE_ONE: 2 or 1.

    Probed once on the installed library with a full cohort (q = 1, where the event is a plain Gaussian
    mechanism): if its RDP equals the add-or-remove Gaussian's with the same multiplier, the library
    reads the multiplier as std / sensitivity and we must pass z/2; if it equals the one with half the
    multiplier, the library already accounts for the 2S sensitivity and we pass z.
    """
    global _DIVISOR
    if _DIVISOR is None:
        from dp_accounting.rdp import rdp_privacy_accountant as rdp

        relation = dpa.NeighboringRelation

        def eps(event: Any, rel: Any) -> float:
            acc = rdp.RdpAccountant(orders=[2.0], neighboring_relation=rel)
            acc.compose(event)
            return acc.get_epsilon(1e-5)

        full = eps(dpa.SampledWithoutReplacementDpEvent(2, 2, dpa.GaussianDpEvent(1.0)), relation.REPLACE_ONE)
        if math.isclose(full, eps(dpa.GaussianDpEvent(1.0), relation.ADD_OR_REMOVE_ONE), rel_tol=1e-9):
            _DIVISOR = 2.0
        elif math.isclose(full, eps(dpa.GaussianDpEvent(0.5), relation.ADD_OR_REMOVE_ONE), rel_tol=1e-9):
            _DIVISOR = 1.0
        else:
            raise RuntimeError(
                "the installed dp-accounting uses an unknown sensitivity convention for "
                "SampledWithoutReplacementDpEvent under REPLACE_ONE; refusing to report ε"
            )
    return _DIVISOR


class ClientLevelAccountant:
    """(ε, δ) of r identical DP-FedAvg rounds, from dp-accounting's RDP accountant (Mironov 2017).

    Per round: a cohort of ``clients_per_round`` = k of ``num_clients`` = N clients, then the Gaussian
    mechanism with noise std z·S on the sum of updates clipped to S (z = ``noise_multiplier``; with
    adaptive clipping the effective z of Andrew et al. 2021, which covers the noised count as well).

    - ``sampling="without_replacement"``: ``SampledWithoutReplacementDpEvent(N, k, GaussianDpEvent(z/2))``,
      REPLACE_ONE (sensitivity 2S; see the module docstring);
    - ``sampling="poisson"``: ``PoissonSampledDpEvent(k/N, GaussianDpEvent(z))``, ADD_OR_REMOVE_ONE
      (an approximation for the fixed-size sampler).

    ε(r) = min over RDP orders α of the RDP→(ε, δ) conversion of r·RDP₁(α) (composition adds RDP).
    ``rounds`` counts the rounds composed so far (``step``) and is what ``state_dict`` saves.
    """

    def __init__(
        self,
        num_clients: int,
        clients_per_round: int,
        noise_multiplier: float,
        delta: float | None = None,
        sampling: str = "without_replacement",
    ) -> None:
        name = "ClientLevelAccountant"
        check(is_int(num_clients) and num_clients >= 1, f"{name}: num_clients must be an int >= 1, got {num_clients}")
        check(
            is_int(clients_per_round) and 1 <= clients_per_round <= num_clients,
            f"{name}: clients_per_round must be an int in [1, num_clients={num_clients}], got {clients_per_round}",
        )
        check(
            _is_number(noise_multiplier) and noise_multiplier >= 0 and math.isfinite(noise_multiplier),
            f"{name}: noise_multiplier must be >= 0, got {noise_multiplier}",
        )
        if delta is None:
            delta = default_delta(num_clients)
        check(_is_number(delta) and 0 < delta < 1, f"{name}: delta must be in (0, 1), got {delta}")
        check(sampling in SAMPLING_MODELS, f"{name}: sampling must be one of {SAMPLING_MODELS}, got {sampling!r}")
        self.num_clients = int(num_clients)
        self.clients_per_round = int(clients_per_round)
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.sampling = sampling
        self.rounds = 0
        if self.noise_multiplier > 0:
            import_dp_accounting()  # fail now, with the one-line hint, not at the first round
        self._orders: Any = None
        self._rdp_one_round: Any = None

    # -- the library's view of one round ------------------------------------------------------------

    @property
    def _dpa(self) -> Any:
        # Looked up, not stored: a module would make the accountant unpicklable (spawn launcher).
        return import_dp_accounting() if self.noise_multiplier > 0 else None

    def _relation(self) -> Any:
        rel = import_dp_accounting().NeighboringRelation
        return rel.REPLACE_ONE if self.sampling == "without_replacement" else rel.ADD_OR_REMOVE_ONE

    def dp_event(self) -> Any:
        """The ``DpEvent`` of one round, as composed by the accountant (needs ``noise_multiplier > 0``)."""
        dpa = self._dpa
        if dpa is None:
            raise ValueError("ClientLevelAccountant: noise_multiplier is 0, no finite ε to account")
        if self.sampling == "without_replacement":
            gaussian = dpa.GaussianDpEvent(self.noise_multiplier / _replace_one_divisor(dpa))
            return dpa.SampledWithoutReplacementDpEvent(self.num_clients, self.clients_per_round, gaussian)
        q = self.clients_per_round / self.num_clients
        return dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(self.noise_multiplier))

    def make_library_accountant(self) -> Any:
        """A fresh ``dp_accounting.rdp.RdpAccountant`` with this accountant's neighbouring relation."""
        from dp_accounting.rdp import rdp_privacy_accountant as rdp

        return rdp.RdpAccountant(neighboring_relation=self._relation())

    def _per_round(self) -> tuple[Any, Any] | None:
        # The subsampled-Gaussian RDP takes ~0.3 s to compute; compute it once and scale by r, which is
        # what RdpAccountant.compose(event, count=r) does (its state is `count * rdp`). That state is
        # private: if a library version renames it, fall back to composing afresh on every call.
        if self._rdp_one_round is None:
            acc = self.make_library_accountant()
            acc.compose(self.dp_event())
            orders, rdp_one = getattr(acc, "_orders", None), getattr(acc, "_rdp", None)
            if orders is None or rdp_one is None:
                return None
            self._orders, self._rdp_one_round = orders, rdp_one.copy()
        return self._orders, self._rdp_one_round

    # -- public API ---------------------------------------------------------------------------------

    def epsilon(self, rounds: int | None = None) -> float:
        """ε after ``rounds`` rounds (default: the rounds composed so far) at this accountant's δ."""
        r = self.rounds if rounds is None else rounds
        check(is_int(r) and r >= 0, f"ClientLevelAccountant: rounds must be an int >= 0, got {r}")
        if r == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        from dp_accounting.rdp import rdp_privacy_accountant as rdp

        cached = self._per_round()
        if cached is None:
            acc = self.make_library_accountant()
            acc.compose(self.dp_event(), count=r)
            return float(acc.get_epsilon(self.delta))
        orders, rdp_one = cached
        return float(rdp.compute_epsilon(orders, r * rdp_one, self.delta)[0])

    def rounds_within(self, target_epsilon: float) -> int:
        """The largest r with ε(r) ≤ ``target_epsilon`` (0 if even one round exceeds it; capped at 2⁴⁰)."""
        check(
            _is_number(target_epsilon) and target_epsilon > 0,
            f"ClientLevelAccountant: target_epsilon must be > 0, got {target_epsilon}",
        )
        if self.epsilon(1) > target_epsilon:
            return 0
        ok, bad = 1, 2  # ε(ok) ≤ target; find bad with ε(bad) > target by doubling, then bisect
        while bad <= MAX_ROUNDS and self.epsilon(bad) <= target_epsilon:
            ok, bad = bad, 2 * bad
        if bad > MAX_ROUNDS:  # ok == MAX_ROUNDS passed
            return MAX_ROUNDS
        return self._bisect(ok, bad, target_epsilon)

    def _bisect(self, ok: int, bad: int, target: float) -> int:
        while bad - ok > 1:
            mid = (ok + bad) // 2
            if self.epsilon(mid) <= target:
                ok = mid
            else:
                bad = mid
        return ok

    def step(self, rounds: int = 1) -> None:
        """Record ``rounds`` more finished rounds."""
        self.rounds += rounds

    def _settings(self) -> dict[str, Any]:
        return {
            "num_clients": self.num_clients,
            "clients_per_round": self.clients_per_round,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "sampling": self.sampling,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, **self._settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the rounds composed; the settings must be the ones the checkpoint was accounted with."""
        for key, value in self._settings().items():
            if key in state:
                check(
                    state[key] == value,
                    f"privacy accounting: the checkpoint was accounted with {key}={state[key]}, "
                    f"this run has {key}={value}; ε across changed settings is not accounted",
                )
        self.rounds = int(state["rounds"])


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
