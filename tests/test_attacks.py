"""Attack simulation: who is malicious (seeded, exact counts), what a malicious client sends, validation."""

from __future__ import annotations

import pickle
from statistics import NormalDist

import pytest
import torch

from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.attacks import (
    LabelFlip,
    ModelPoisoning,
    coordinate_mean_std,
    lie_z_max,
    malicious_clients,
    num_malicious,
)

T = torch.tensor


def test_num_malicious_rounds_half_up_on_the_decimal_fraction():
    assert num_malicious(10, 0.2) == 2
    assert num_malicious(10, 0.25) == 3  # 2.5 -> 3 (Python's round() would give 2)
    assert num_malicious(10, 0.24) == 2
    assert num_malicious(7, 0.3) == 2  # 2.1
    assert num_malicious(100, 0.29) == 29
    assert num_malicious(5, 0.0) == 0


def test_malicious_clients_exact_count_pure_function_and_order_free():
    sampled = [41, 7, 13, 99, 2, 58, 60, 3, 77, 18]
    bad = malicious_clients(5, 3, sampled, 0.2)
    assert len(bad) == 2 and bad <= set(sampled)
    assert malicious_clients(5, 3, list(reversed(sampled)), 0.2) == bad  # same set, any order
    assert malicious_clients(5, 3, sampled, 0.2) == bad  # no hidden state
    rounds = [malicious_clients(5, r, sampled, 0.2) for r in range(30)]
    assert len({frozenset(b) for b in rounds}) > 10  # changes with the round
    assert malicious_clients(6, 3, sampled, 0.2) != bad or malicious_clients(7, 3, sampled, 0.2) != bad
    assert malicious_clients(5, 3, sampled, 0.0) == set()


def test_malicious_clients_are_uniform_over_rounds():
    sampled = list(range(10))
    hits = torch.zeros(10)
    rounds = 3000
    for r in range(rounds):
        for c in malicious_clients(1, r, sampled, 0.3):
            hits[c] += 1
    # Each client is malicious with probability 3/10; binomial sd = sqrt(3000·0.3·0.7) ≈ 25 -> 5 sd = 126.
    assert (hits - 900).abs().max() < 126
    with pytest.raises(ValueError, match="repeated id"):
        malicious_clients(1, 0, [1, 1, 2], 0.3)


def test_sign_flip_and_scale():
    u = T([1.0, -2.0, 0.5])
    assert torch.equal(ModelPoisoning("sign_flip", 0.2).poison(u, 0, 0, 0), T([-1.0, 2.0, -0.5]))
    assert torch.equal(ModelPoisoning("sign_flip", 0.2, scale=3.0).poison(u, 0, 0, 0), T([-3.0, 6.0, -1.5]))
    assert torch.equal(ModelPoisoning("scale", 0.2).poison(u, 0, 0, 0), T([10.0, -20.0, 5.0]))  # default 10
    assert torch.equal(ModelPoisoning("scale", 0.2, scale=0.5).poison(u, 0, 0, 0), T([0.5, -1.0, 0.25]))


def test_gaussian_noise_is_seeded_per_seed_round_client_and_has_the_right_scale():
    attack = ModelPoisoning("gaussian", 0.2, std=3.0)
    u = torch.zeros(200_000)
    a = attack.poison(u, client_id=4, round_idx=2, seed=9)
    assert torch.equal(a, attack.poison(torch.ones(200_000), 4, 2, 9))  # the update itself is discarded
    assert not torch.equal(a, attack.poison(u, 5, 2, 9))
    assert not torch.equal(a, attack.poison(u, 4, 3, 9))
    assert not torch.equal(a, attack.poison(u, 4, 2, 10))
    assert a.dtype == u.dtype and a.shape == u.shape
    # mean 0 (sd of the mean 3/sqrt(2e5) ≈ 0.0067), sd 3 (sd of the estimate ≈ 3/sqrt(4e5) ≈ 0.005)
    assert abs(float(a.mean())) < 0.04 and abs(float(a.std()) - 3.0) < 0.03


def test_lie_z_max_matches_the_paper_formula():
    # s = floor(n/2 + 1) - m; z = Φ⁻¹((n - s)/n). n=10, m=2: s=4, Φ⁻¹(0.6). n=50, m=12: s=14, Φ⁻¹(0.72).
    assert lie_z_max(10, 2) == pytest.approx(NormalDist().inv_cdf(0.6), abs=1e-12)
    assert lie_z_max(10, 2) == pytest.approx(0.2533471, abs=1e-6)
    assert lie_z_max(50, 12) == pytest.approx(0.5828415, abs=1e-6)
    with pytest.raises(FederatedConfigError, match="no finite z"):
        lie_z_max(1, 0)


def test_little_is_enough_is_mean_minus_z_std():
    benign = T([[1.0, 0.0], [3.0, 0.0], [2.0, 6.0]])
    mean, std = coordinate_mean_std(benign)
    # population std: column 0 sqrt(2/3), column 1 sqrt(((−2)²·2 + 4²)/3) = sqrt(8)
    assert torch.allclose(mean, T([2.0, 2.0])) and torch.allclose(std, T([(2 / 3) ** 0.5, 8**0.5]))
    fixed = ModelPoisoning("little_is_enough", 0.2, z=1.5)
    assert fixed.needs_benign_statistics
    out = fixed.poison(torch.zeros(2), 0, 0, 0, benign_mean=T([2.0, 2.0]), benign_std=T([1.0, 4.0]))
    assert torch.equal(out, T([0.5, -4.0]))
    derived = ModelPoisoning("little_is_enough", 0.2)  # K = 10 -> f = 2 -> z = Φ⁻¹(0.6)
    out = derived.poison(torch.zeros(1), 0, 0, 0, benign_mean=T([1.0]), benign_std=T([2.0]), num_clients=10)
    assert out.item() == pytest.approx(1.0 - 2.0 * 0.2533471, abs=1e-6)
    with pytest.raises(ValueError, match="needs benign_mean and benign_std"):
        fixed.poison(torch.zeros(2), 0, 0, 0)
    with pytest.raises(ValueError, match="needs num_clients"):
        derived.poison(torch.zeros(1), 0, 0, 0, benign_mean=T([1.0]), benign_std=T([2.0]))


def test_label_flip():
    flip = LabelFlip(0.2, num_classes=10)
    assert torch.equal(flip.flip(T([0, 1, 2, 9])), T([9, 8, 7, 0]))
    assert flip.malicious(1, 0, range(10)) == malicious_clients(1, 0, range(10), 0.2)
    with pytest.raises(ValueError, match="labels must be in"):
        flip.flip(T([10]))


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: ModelPoisoning("flip", 0.2),
            "ModelPoisoning: kind must be one of sign_flip, scale, gaussian, little_is_enough, got 'flip'",
        ),
        (lambda: ModelPoisoning("scale", 1.0), "ModelPoisoning: fraction must be in [0, 1), got 1.0"),
        (lambda: ModelPoisoning("scale", 0.2, scale=0), "ModelPoisoning: scale must be a finite number > 0, got 0"),
        (lambda: ModelPoisoning("gaussian", 0.2, std=-1), "ModelPoisoning: std must be a finite number > 0, got -1"),
        (
            lambda: ModelPoisoning("little_is_enough", 0.2, z=float("nan")),
            "ModelPoisoning: z must be a finite number or None, got nan",
        ),
        (lambda: LabelFlip(-0.1, 10), "LabelFlip: fraction must be in [0, 1), got -0.1"),
        (lambda: LabelFlip(0.1, 1), "LabelFlip: num_classes must be an integer >= 2, got 1"),
        (lambda: malicious_clients(0, 0, [1], 1.5), "malicious_clients: fraction must be in [0, 1), got 1.5"),
    ],
)
def test_bad_settings_are_one_line_errors(make, message):
    with pytest.raises(FederatedConfigError) as info:
        make()
    assert str(info.value) == message


def test_configs_pickle_and_instantiate_from_hydra():
    from hydra.utils import instantiate

    for obj in (ModelPoisoning("gaussian", 0.2, std=2.0), LabelFlip(0.3, 10)):
        assert repr(pickle.loads(pickle.dumps(obj))) == repr(obj)
    made = instantiate(
        {
            "_target_": "lightning_fl.federated.attacks.ModelPoisoning",
            "kind": "sign_flip",
            "fraction": 0.2,
            "scale": 2.0,
        }
    )
    assert isinstance(made, ModelPoisoning) and made.scale == 2.0
