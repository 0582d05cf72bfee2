"""Adaptive clipping (Andrew et al. 2021): the geometric update, the noise split, convergence, state."""

import importlib.util
import math

import pytest
import torch

from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.privacy import AdaptiveClipState, CentralDP, update_noise_multiplier
from lightning_fl.federated.privacy.adaptive_clipping import noised_unclipped_fraction

# CentralDP with noise builds an accountant: the optional extra lightning-fl[privacy].
needs_accounting = pytest.mark.skipif(importlib.util.find_spec("dp_accounting") is None, reason="needs dp-accounting")


def test_one_geometric_step_by_hand():
    state = AdaptiveClipState(clip_norm=1.0, target_quantile=0.5, learning_rate=0.2)
    # 7 of 10 unclipped, no noise: b̃ = 0.7, C = exp(-0.2 * 0.2)
    assert noised_unclipped_fraction(7, 10, 0.0, 10) == pytest.approx(0.7)
    assert state.update(0.7) == pytest.approx(0.9607894391523232)
    # Then 1 of 10 unclipped: b̃ = 0.1, C = 0.96079 * exp(-0.2 * -0.4) = 0.96079 * 1.08329
    assert state.update(0.1) == pytest.approx(0.9607894391523232 * 1.0832870676749586)
    # Noise 1.5 on the count of 10 expected clients, 7 of 9 that reported under the clip:
    # b̃ = (7 - 4.5 + 1.5) / 10 + 0.5 = 0.9
    assert noised_unclipped_fraction(7, 9, 1.5, 10) == pytest.approx(0.9)


def test_the_update_noise_multiplier_leaves_the_total_at_z():
    # z = 1, σ_b = 5 (m = 100): z_Δ = (1 - 1/100)^(-1/2)
    assert update_noise_multiplier(1.0, 5.0) == pytest.approx(1 / math.sqrt(0.99))
    for z, sb in [(0.5, 1.0), (2.0, 1.5), (1.0, 0.6)]:
        zd = update_noise_multiplier(z, sb)
        assert (zd**-2 + (2 * sb) ** -2) ** -0.5 == pytest.approx(z)
        assert zd > z
    assert update_noise_multiplier(0.0, 0.0) == 0.0
    with pytest.raises(FederatedConfigError, match="count_noise_multiplier must be > noise_multiplier/2 = 1"):
        update_noise_multiplier(2.0, 1.0)


def test_the_split_composes_to_z_in_the_accounting_library():
    # Without sampling, releasing the sum (multiplier z_Δ) and the centred count (sensitivity 1/2 under
    # add-or-remove, std σ_b: multiplier 2σ_b) is two Gaussian mechanisms; their RDP adds up to that of z.
    dpa = pytest.importorskip("dp_accounting")
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    z, sigma_b = 1.2, 2.5
    split = rdp.RdpAccountant()
    split.compose(dpa.GaussianDpEvent(update_noise_multiplier(z, sigma_b)), count=50)
    split.compose(dpa.GaussianDpEvent(2 * sigma_b), count=50)
    whole = rdp.RdpAccountant()
    whole.compose(dpa.GaussianDpEvent(z), count=50)
    assert split.get_epsilon(1e-5) == pytest.approx(whole.get_epsilon(1e-5), rel=1e-9)


@pytest.mark.parametrize("quantile", [0.1, 0.5, 0.9])
def test_with_no_count_noise_the_clip_norm_converges_to_the_target_quantile(quantile):
    g = torch.Generator().manual_seed(0)
    norms = torch.exp(torch.randn(4000, generator=g, dtype=torch.float64))  # log-normal update norms
    state = AdaptiveClipState(clip_norm=0.05, target_quantile=quantile, learning_rate=0.2)
    for _ in range(400):
        under = float((norms <= state.clip_norm).sum())
        state.update(noised_unclipped_fraction(under, len(norms), 0.0, len(norms)))
    fraction = float((norms <= state.clip_norm).double().mean())
    assert fraction == pytest.approx(quantile, abs=0.01)
    assert state.clip_norm == pytest.approx(float(torch.quantile(norms, quantile)), rel=0.03)


@needs_accounting
def test_central_dp_moves_the_clip_norm_and_a_resumed_run_continues_exactly():
    def run(dp, rounds):
        for r in range(rounds.start, rounds.stop):
            g = torch.Generator().manual_seed(r)
            updates = [torch.randn(10, generator=g) * (1 + r) for _ in range(20)]
            pairs = [dp.clip(u) for u in updates]
            total = torch.stack([c for c, _ in pairs]).sum(0)
            last = dp.finish(total, sum(b for _, b in pairs), 20, seed=7, round_idx=r)
        return last

    def make():
        dp = CentralDP(noise_multiplier=1.0, clip_norm=0.1, target_quantile=0.5, count_noise_multiplier=2.0)
        dp.setup(num_clients=50, clients_per_round=20)
        return dp

    straight = make()
    run(straight, range(0, 1))
    # Every update (norm ~ √10) was clipped: b̃ = (0 - 10 + noise)/20 + 1/2 = noise/20.
    count_noise = float(make().noise(10, seed=7, round_idx=0)[10])
    assert straight.clip_norm == pytest.approx(0.1 * math.exp(-0.2 * (count_noise / 20 - 0.5)), rel=1e-6)
    expected = run(straight, range(1, 6))

    first = make()
    run(first, range(0, 3))
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    assert resumed.clip_norm == first.clip_norm and resumed.rounds_done == 3
    assert torch.equal(run(resumed, range(3, 6)), expected)
    assert resumed.state_dict() == straight.state_dict()


@needs_accounting
def test_count_noise_is_seeded_and_scaled_for_the_noise_cohort():
    dp = CentralDP(noise_multiplier=1.0, clip_norm=1.0, target_quantile=0.5, noise_cohort_size=200)
    dp.setup(num_clients=1000, clients_per_round=20)
    # σ_b defaults to 200/20 = 10 for the noise cohort, applied at std 10 * 20/200 = 1 to the real count.
    assert dp.update_noise_multiplier == pytest.approx(update_noise_multiplier(1.0, 10.0))
    counts = torch.stack([dp.noise(0, seed=1, round_idx=r)[0] for r in range(4000)]).double()
    assert float(counts.std()) == pytest.approx(1.0, rel=5 / math.sqrt(2 * 4000))
    assert torch.equal(dp.noise(3, seed=1, round_idx=0), dp.noise(3, seed=1, round_idx=0))
