"""DP-FedAvg's mechanism: clipping, the noise (seeded and secure), and CentralDP's round arithmetic."""

import importlib.util
import math
import pickle

import pytest
import torch
from scipy import stats

from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.privacy import CentralDP, clip_update, gaussian_noise, global_norm, secure_standard_normal
from lightning_fl.federated.privacy.noise import secure_uniform

# CentralDP with noise builds an accountant: the optional extra lightning-fl[privacy].
needs_accounting = pytest.mark.skipif(importlib.util.find_spec("dp_accounting") is None, reason="needs dp-accounting")


def _std_tolerance(n: int) -> float:
    # The sample std of n normals has relative standard error ~ 1/sqrt(2n); allow 5 of those.
    return 5.0 / math.sqrt(2 * n)


# -- clipping ---------------------------------------------------------------------------------------


def test_clipped_updates_have_norm_at_most_the_clip_norm_and_short_ones_are_unchanged():
    g = torch.Generator().manual_seed(0)
    clip = 1.5
    for scale in (0.01, 0.1, 1.0, 10.0, 1e4):
        u = torch.randn(1000, generator=g) * scale / math.sqrt(1000)  # ‖u‖ ≈ scale
        clipped, norm = clip_update(u, clip)
        assert norm == pytest.approx(float(u.double().norm()), rel=1e-12)
        assert float(clipped.double().norm()) <= clip * (1 + 1e-6)
        if norm <= clip:
            assert torch.equal(clipped, u)
        else:  # the factor is exactly S/‖u‖: same direction, norm S
            assert torch.allclose(clipped, u * (clip / norm), rtol=0, atol=0)
            assert float(clipped.double().norm()) == pytest.approx(clip, rel=1e-6)


def test_clipping_a_list_of_tensors_uses_the_global_norm():
    parts = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]  # global norm 5
    assert global_norm(parts) == 5.0
    clipped, norm = clip_update(parts, 1.0)
    assert norm == 5.0
    assert torch.allclose(clipped[0], torch.tensor([0.6, 0.0]))
    assert torch.allclose(clipped[1], torch.tensor([[0.0], [0.8]]))
    assert parts[0][0] == 3.0  # the input is not modified


def test_a_non_finite_update_contributes_zeros_and_counts_as_clipped():
    u = torch.tensor([1.0, float("nan"), 2.0])
    clipped, norm = clip_update(u, 1.0)
    assert math.isnan(norm) and torch.equal(clipped, torch.zeros(3))
    dp = CentralDP(0.0, 1.0)
    clipped, under = dp.clip(torch.tensor([float("inf"), 0.0]))
    assert not under and torch.equal(clipped, torch.zeros(2))


# -- noise ------------------------------------------------------------------------------------------


def test_seeded_noise_has_the_requested_std_and_is_a_pure_function_of_seed_and_round():
    n, std = 200_000, 0.7
    a = gaussian_noise(n, std, seed=3, round_idx=5)
    assert a.dtype == torch.float32 and a.shape == (n,)
    assert float(a.double().std()) == pytest.approx(std, rel=_std_tolerance(n))
    assert abs(float(a.double().mean())) < 5 * std / math.sqrt(n)
    assert stats.kstest(a.double().numpy() / std, "norm").pvalue > 1e-3
    assert torch.equal(a, gaussian_noise(n, std, seed=3, round_idx=5))  # every rank draws this vector
    assert not torch.equal(a, gaussian_noise(n, std, seed=3, round_idx=6))
    assert not torch.equal(a, gaussian_noise(n, std, seed=4, round_idx=5))
    assert not torch.equal(a, gaussian_noise(n, std, seed=3, round_idx=5, purpose="count"))


def test_secure_noise_is_standard_normal_and_not_reproducible():
    u = secure_uniform(100_000)
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-6
    z = secure_standard_normal(100_001)
    assert z.dtype == torch.float64 and z.shape == (100_001,)
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-6  # fails by chance with probability 1e-6
    a = gaussian_noise(50_000, 2.0, seed=0, round_idx=0, secure=True)
    assert float(a.double().std()) == pytest.approx(2.0, rel=_std_tolerance(50_000))
    assert not torch.equal(a, gaussian_noise(50_000, 2.0, seed=0, round_idx=0, secure=True))


# -- CentralDP: the round -----------------------------------------------------------------------------


def test_with_no_noise_and_no_effective_clipping_the_result_is_the_uniform_mean():
    dp = CentralDP(noise_multiplier=0.0, clip_norm=1e6)
    dp.setup(num_clients=20, clients_per_round=4)
    g = torch.Generator().manual_seed(1)
    updates = [torch.randn(50, generator=g) for _ in range(4)]
    clipped = [dp.clip(u) for u in updates]
    assert all(under for _, under in clipped)
    total = torch.stack([c for c, _ in clipped]).sum(0)
    average = dp.finish(total, 4, 4, seed=0, round_idx=0)
    assert torch.allclose(average, torch.stack(updates).mean(0), atol=1e-6)
    assert dp.epsilon() == math.inf


def test_the_denominator_is_the_fixed_cohort_size_not_the_number_that_reported():
    dp = CentralDP(noise_multiplier=0.0, clip_norm=10.0)
    dp.setup(num_clients=20, clients_per_round=4)
    total = torch.full((3,), 6.0)  # only 3 of the 4 sampled clients were summed
    assert torch.allclose(dp.finish(total, 3, 3, seed=0, round_idx=0), torch.full((3,), 1.5))


@needs_accounting
def test_noise_of_the_averaged_update_has_std_z_s_over_m():
    z, clip, m, numel = 1.3, 0.25, 8, 200_000
    dp = CentralDP(noise_multiplier=z, clip_norm=clip)
    dp.setup(num_clients=100, clients_per_round=m)
    assert dp.noise_std == pytest.approx(z * clip)  # on the sum
    average = dp.finish(torch.zeros(numel), 0, m, seed=11, round_idx=2)
    assert float(average.double().std()) == pytest.approx(z * clip / m, rel=_std_tolerance(numel))
    assert abs(float(average.double().mean())) < 5 * z * clip / m / math.sqrt(numel)
    assert dp.metrics()["fl/dp_noise_std"] == pytest.approx(z * clip / m)
    # A fresh object (another rank, or a resumed run) adds the identical noise.
    other = CentralDP(noise_multiplier=z, clip_norm=clip)
    other.setup(num_clients=100, clients_per_round=m)
    assert torch.equal(average, other.finish(torch.zeros(numel), 0, m, seed=11, round_idx=2))


@needs_accounting
def test_noise_is_added_once_to_the_sum_and_a_broadcast_vector_is_used_as_given():
    dp = CentralDP(noise_multiplier=1.0, clip_norm=1.0)
    dp.setup(num_clients=10, clients_per_round=5)
    noise = dp.noise(4, seed=0, round_idx=0)
    assert noise.shape == (5,) and noise[4] == 0  # no count noise without adaptive clipping
    total = torch.arange(4.0, dtype=torch.float64)
    average = dp.finish(total, 5, 5, seed=123, round_idx=9, noise=noise)  # seed unused when noise is given
    assert average.dtype == torch.float64
    assert torch.allclose(average, (total + noise[:4].double()) / 5)
    with pytest.raises(FederatedConfigError, match="numel \\+ 1"):
        dp.finish(total, 5, 5, seed=0, round_idx=0, noise=noise[:4])


@needs_accounting
def test_noise_cohort_size_scales_the_noise_to_that_of_the_larger_cohort():
    z, clip, m, big, numel = 1.0, 1.0, 10, 100, 200_000
    dp = CentralDP(noise_multiplier=z, clip_norm=clip, noise_cohort_size=big)
    dp.setup(num_clients=1000, clients_per_round=m)
    assert dp.noise_std == pytest.approx(z * clip * m / big)  # on the sum of m clients
    average = dp.finish(torch.zeros(numel), 0, m, seed=0, round_idx=0)
    assert float(average.double().std()) == pytest.approx(z * clip / big, rel=_std_tolerance(numel))
    # ε is that of `big` clients per round out of 1000.
    plain = CentralDP(noise_multiplier=z, clip_norm=clip)
    plain.setup(num_clients=1000, clients_per_round=big)
    assert dp.epsilon(5) == plain.epsilon(5)
    with pytest.raises(FederatedConfigError, match="noise_cohort_size must be in \\[clients_per_round=10"):
        CentralDP(1.0, 1.0, noise_cohort_size=5).setup(1000, 10)


@needs_accounting
def test_secure_noise_gives_a_noised_average_of_the_right_std():
    dp = CentralDP(noise_multiplier=2.0, clip_norm=1.0, secure_noise=True)
    dp.setup(num_clients=10, clients_per_round=4)
    noise = dp.noise(100_000, seed=0, round_idx=0)  # rank 0 would broadcast this
    assert not torch.equal(noise, dp.noise(100_000, seed=0, round_idx=0))
    average = dp.finish(torch.zeros(100_000), 4, 4, seed=0, round_idx=0, noise=noise)
    assert float(average.double().std()) == pytest.approx(0.5, rel=_std_tolerance(100_000))


@needs_accounting
def test_a_set_up_central_dp_survives_pickling():
    dp = CentralDP(noise_multiplier=1.0, clip_norm=1.0, target_quantile=0.5, target_epsilon=5.0)
    dp.setup(num_clients=100, clients_per_round=20)
    dp.finish(torch.zeros(3), 10, 20, seed=0, round_idx=0)
    copy = pickle.loads(pickle.dumps(dp))
    assert copy.state_dict() == dp.state_dict()
    assert copy.epsilon() == dp.epsilon()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(noise_multiplier=-1, clip_norm=1.0), "CentralDP: noise_multiplier must be >= 0, got -1"),
        (dict(noise_multiplier=1.0, clip_norm=0), "CentralDP: clip_norm must be > 0, got 0"),
        (dict(noise_multiplier=1.0, clip_norm=-2.0), "CentralDP: clip_norm must be > 0, got -2.0"),
        (dict(noise_multiplier=1.0, clip_norm=1.0, delta=1.0), "CentralDP: delta must be in (0, 1), got 1.0"),
        (dict(noise_multiplier=1.0, clip_norm=1.0, delta=0), "CentralDP: delta must be in (0, 1), got 0"),
        (dict(noise_multiplier=1.0, clip_norm=1.0, target_epsilon=0), "CentralDP: target_epsilon must be > 0"),
        (dict(noise_multiplier=0.0, clip_norm=1.0, target_epsilon=1.0), "target_epsilon needs noise_multiplier > 0"),
        (dict(noise_multiplier=1.0, clip_norm=1.0, target_quantile=1.0), "target_quantile must be in (0, 1)"),
        (dict(noise_multiplier=1.0, clip_norm=1.0, clip_learning_rate=0), "clip_learning_rate must be > 0"),
        (dict(noise_multiplier=1.0, clip_norm=1.0, count_noise_multiplier=1.0), "set target_quantile too"),
        (
            dict(noise_multiplier=1.0, clip_norm=1.0, target_quantile=0.5, count_noise_multiplier=0.4),
            "count_noise_multiplier must be > noise_multiplier/2 = 0.5",
        ),
        (dict(noise_multiplier=1.0, clip_norm=1.0, noise_cohort_size=0), "noise_cohort_size must be an int >= 1"),
        (dict(noise_multiplier=1.0, clip_norm=1.0, secure_noise="yes"), "secure_noise must be true or false"),
        (dict(noise_multiplier=1.0, clip_norm=1.0, accounting="shuffle"), "accounting must be one of"),
        (dict(noise_multiplier=float("nan"), clip_norm=1.0), "noise_multiplier must be >= 0"),
    ],
)
@needs_accounting
def test_bad_settings_are_one_line_errors_naming_the_setting(kwargs, message):
    with pytest.raises(FederatedConfigError) as info:
        CentralDP(**kwargs)
    text = str(info.value)
    assert message in text and "\n" not in text
