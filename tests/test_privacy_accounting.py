"""Client-level accounting: ε against dp-accounting called directly, the 2S sensitivity, the budget."""

import builtins
import math
import sys

import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm

from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.privacy import CentralDP, ClientLevelAccountant, default_delta

dpa = pytest.importorskip("dp_accounting")
from dp_accounting.rdp import rdp_privacy_accountant as rdp  # noqa: E402


@pytest.mark.parametrize(("z", "n", "k", "rounds", "delta"), [(1.0, 100, 10, 50, 1e-3), (0.8, 1000, 100, 200, 1e-5)])
def test_epsilon_without_replacement_equals_the_library_with_replace_one_and_sensitivity_2s(z, n, k, rounds, delta):
    # Our std is z·S; replacing one client's clipped update moves the sum by up to 2S, so the library's
    # Gaussian (std / L2 sensitivity under REPLACE_ONE) gets z/2.
    direct = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    direct.compose(dpa.SampledWithoutReplacementDpEvent(n, k, dpa.GaussianDpEvent(z / 2)), count=rounds)
    accountant = ClientLevelAccountant(n, k, z, delta=delta)
    assert accountant.epsilon(rounds) == direct.get_epsilon(delta)
    accountant.step(rounds)
    assert accountant.epsilon() == direct.get_epsilon(delta)


def test_epsilon_is_the_same_when_the_library_state_cannot_be_read(monkeypatch):
    fast = ClientLevelAccountant(100, 10, 1.5, delta=1e-4)
    slow = ClientLevelAccountant(100, 10, 1.5, delta=1e-4)
    monkeypatch.setattr(slow, "_per_round", lambda: None)  # as if RdpAccountant._rdp were renamed
    assert slow.epsilon(30) == fast.epsilon(30)


def test_epsilon_poisson_equals_the_library_with_add_or_remove():
    z, n, k, rounds, delta = 1.1, 500, 25, 300, 1e-5
    direct = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)
    direct.compose(dpa.PoissonSampledDpEvent(k / n, dpa.GaussianDpEvent(z)), count=rounds)
    accountant = ClientLevelAccountant(n, k, z, delta=delta, sampling="poisson")
    assert accountant.epsilon(rounds) == direct.get_epsilon(delta)


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Balle & Wang (2018): the exact ε of a Gaussian mechanism with sensitivity/std = mu."""
    return brentq(lambda e: norm.cdf(mu / 2 - e / mu) - math.exp(e) * norm.cdf(-mu / 2 - e / mu) - delta, 0, 500)


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 1), (2.0, 10), (4.0, 100)])
def test_the_full_cohort_epsilon_bounds_the_exact_epsilon_for_sensitivity_2s(z, rounds):
    # With k = N every client is in every round: r rounds are one Gaussian mechanism with
    # sensitivity/std = √r · 2S/(zS). The RDP bound must lie above its exact ε (and not far above);
    # with sensitivity S instead of 2S it would fall below it, i.e. claim more privacy than there is.
    delta = 1e-5
    exact = _exact_gaussian_epsilon(2 * math.sqrt(rounds) / z, delta)
    ours = ClientLevelAccountant(10, 10, z, delta=delta).epsilon(rounds)
    assert exact <= ours <= 1.15 * exact
    half_sensitivity = ClientLevelAccountant(10, 10, 2 * z, delta=delta).epsilon(rounds)
    assert half_sensitivity < exact


def test_rounds_within_is_the_last_round_inside_the_target():
    accountant = ClientLevelAccountant(200, 20, 2.0, delta=1e-4)
    for target in (2.0, 8.0, 30.0):
        r = accountant.rounds_within(target)
        assert r >= 1
        assert accountant.epsilon(r) <= target < accountant.epsilon(r + 1)
    assert accountant.rounds_within(accountant.epsilon(1) / 2) == 0
    assert accountant.rounds_within(accountant.epsilon(7)) == 7


def test_default_delta_and_zero_noise():
    assert default_delta(1000) == pytest.approx(1000**-1.1)
    assert ClientLevelAccountant(1000, 10, 1.0).delta == pytest.approx(1000**-1.1)
    silent = ClientLevelAccountant(10, 2, 0.0)
    assert silent.epsilon(0) == 0.0 and silent.epsilon(1) == math.inf


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((10, 2, 1.0), dict(delta=1.0), "delta must be in (0, 1), got 1.0"),
        ((10, 2, 1.0), dict(delta=0.0), "delta must be in (0, 1), got 0.0"),
        ((10, 11, 1.0), {}, "clients_per_round must be an int in [1, num_clients=10], got 11"),
        ((10, 2, -0.5), {}, "noise_multiplier must be >= 0, got -0.5"),
        ((10, 2, 1.0), dict(sampling="shuffle"), "sampling must be one of"),
    ],
)
def test_bad_accountant_settings_are_one_line_errors(args, kwargs, message):
    with pytest.raises(FederatedConfigError, match=None) as info:
        ClientLevelAccountant(*args, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_state_dict_restores_the_rounds_and_refuses_changed_settings():
    accountant = ClientLevelAccountant(100, 10, 1.0)
    accountant.step(7)
    restored = ClientLevelAccountant(100, 10, 1.0)
    restored.load_state_dict(accountant.state_dict())
    assert restored.rounds == 7 and restored.epsilon() == accountant.epsilon()
    with pytest.raises(FederatedConfigError, match="noise_multiplier=1.0, this run has noise_multiplier=2.0"):
        ClientLevelAccountant(100, 10, 2.0).load_state_dict(accountant.state_dict())


def test_missing_extra_is_a_one_line_import_error_naming_it(monkeypatch):
    real_import = builtins.__import__

    def no_dp_accounting(name, *args, **kwargs):
        if name == "dp_accounting" or name.startswith("dp_accounting."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for name in [m for m in sys.modules if m == "dp_accounting" or m.startswith("dp_accounting.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", no_dp_accounting)
    for make in (lambda: CentralDP(noise_multiplier=1.0, clip_norm=1.0), lambda: ClientLevelAccountant(10, 2, 1.0)):
        with pytest.raises(ImportError) as info:
            make()
        assert str(info.value) == (
            "differential privacy needs the dp-accounting package: pip install 'lightning-fl[privacy]'"
        )
    CentralDP(noise_multiplier=0.0, clip_norm=1.0).setup(10, 2)  # clipping alone needs no accountant


def test_target_epsilon_stops_before_the_round_that_would_exceed_it():
    dp = CentralDP(noise_multiplier=2.0, clip_norm=1.0, target_epsilon=3.0, delta=1e-3)
    dp.setup(num_clients=100, clients_per_round=10)
    budget = dp.max_rounds()
    assert budget == ClientLevelAccountant(100, 10, 2.0, delta=1e-3).rounds_within(3.0) and budget >= 2
    for r in range(budget):
        assert dp.stop_reason() is None
        dp.finish(torch.zeros(2), 10, 10, seed=0, round_idx=r)
        assert dp.metrics()["fl/epsilon"] <= 3.0
    message = dp.stop_reason()
    assert message.startswith(f"CentralDP: stopping before round {budget + 1}: it would raise epsilon to ")
    assert "target_epsilon=3" in message and "\n" not in message
    assert dp.epsilon(budget + 1) > 3.0


def test_a_checkpoint_loaded_before_setup_is_applied_at_setup():
    dp = CentralDP(noise_multiplier=1.0, clip_norm=1.0, target_epsilon=50.0)
    dp.setup(num_clients=100, clients_per_round=10)
    for r in range(4):
        dp.finish(torch.zeros(2), 10, 10, seed=0, round_idx=r)
    resumed = CentralDP(noise_multiplier=1.0, clip_norm=1.0, target_epsilon=50.0)
    resumed.load_state_dict(dp.state_dict())
    resumed.setup(num_clients=100, clients_per_round=10)
    assert resumed.rounds_done == 4 and resumed.epsilon() == dp.epsilon()
