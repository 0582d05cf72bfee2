"""Secure aggregation inside FedAvgStrategy (issue 9, acceptance 4): the masked round equals plain FedAvg
within the documented quantization bound, failed clients are recovered from shares, too few share-holders
leave the global model unchanged, and 1 and 2 processes agree. What a process puts into the all-reduce is
shown to be uniform and uncorrelated with its updates in tests/test_secure_aggregation_distributed.py."""

from __future__ import annotations

import pytest

from fl_testing import TinyData, fit_in_process, float_state, max_abs_diff, net_state, run_script, seeded_module
from lightning_fl import CentralDP, FedAvgStrategy, FederatedConfigError, FedNova, FedProx, Median, Scaffold
from lightning_fl.federated.sampling import sample_clients
from lightning_fl.federated.secure import FixedPoint, SecureAggregation

pytest.importorskip("cryptography", reason="needs the secure extra: pip install 'lightning-fl[secure]'")

SETTINGS = dict(num_clients=8, clients_per_round=6, partition="dirichlet", alpha=1.0, seed=3)
MODULE = dict(batchnorm=False, lr=0.1)
RANGE = 0.5


def fit(rounds=2, module=None, **kwargs):
    module = module or seeded_module(**MODULE)
    trainer = fit_in_process(FedAvgStrategy(**SETTINGS, **kwargs), module, TinyData(), rounds)
    return float_state(module.net), trainer


def bound(rounds: int) -> float:
    # Per coordinate and round: the sum of K quantized (pre-weighted) updates is off by < K·Δ; the
    # weighted mean divides by Σ w = 1, and rounds add up (the next round starts from the perturbed model,
    # whose effect on a few SGD steps of a small model stays of the same order).
    return rounds * FixedPoint(RANGE, SETTINGS["clients_per_round"]).error_bound(SETTINGS["clients_per_round"]) * 10


def test_the_masked_sum_is_fedavg_within_the_quantization_bound():
    secure, trainer = fit(secure_aggregation=SecureAggregation(clip_range=RANGE, seed=0))
    plain, _ = fit()
    diff = max_abs_diff(secure, plain)
    assert 0 < diff <= bound(2), diff  # not bit-identical (quantized), but within the bound
    assert trainer.callback_metrics["fl/secagg_recovered_clients"].item() == 0


def test_failed_clients_are_recovered_from_shares():
    for failing in ({sample_clients(8, 6, 3, 0)[0]}, set(sample_clients(8, 6, 3, 0)[1:3])):
        module = seeded_module(**MODULE, failing_clients=sorted(failing))
        secure, trainer = fit(rounds=1, module=module, secure_aggregation=SecureAggregation(clip_range=RANGE))
        plain, _ = fit(rounds=1, module=seeded_module(**MODULE, failing_clients=sorted(failing)))
        assert trainer.callback_metrics["fl/secagg_recovered_clients"].item() == len(failing)
        assert max_abs_diff(secure, plain) <= bound(1)


def test_too_few_share_holders_leave_the_global_model_unchanged():
    start = float_state(seeded_module(**MODULE).net)
    sampled = sample_clients(8, 6, 3, 0)
    module = seeded_module(**MODULE, failing_clients=sampled[1:])  # one survivor: no failed key can be rebuilt
    config = SecureAggregation(clip_range=RANGE, neighbors=2, threshold=2)
    with pytest.warns(UserWarning, match="the global model is unchanged"):
        got, trainer = fit(rounds=1, module=module, secure_aggregation=config)
    assert max_abs_diff(got, start) == 0.0
    assert trainer.callback_metrics["fl/skipped_rounds"].item() == 1


def test_updates_outside_the_clip_range_are_reported_not_wrapped():
    start = float_state(seeded_module(**MODULE).net)
    with pytest.warns(UserWarning, match="clip_range=1e-06 is too small"):
        got, _ = fit(rounds=1, secure_aggregation=SecureAggregation(clip_range=1e-6))
    assert max_abs_diff(got, start) == 0.0


def test_composes_with_fedprox_and_central_dp():
    dp = dict(noise_multiplier=0.5, clip_norm=0.2)
    secure, _ = fit(client_algorithm=FedProx(mu=0.1), privacy=CentralDP(**dp),
                    secure_aggregation=SecureAggregation(clip_range=RANGE))
    plain, _ = fit(client_algorithm=FedProx(mu=0.1), privacy=CentralDP(**dp))
    assert max_abs_diff(secure, plain) <= bound(2) * 10  # the same seeded noise, added after the masked sum


@pytest.mark.distributed
def test_two_processes_equal_one(tmp_path):
    parts = {"secure_aggregation": ["SecureAggregation", {"clip_range": RANGE}]}
    two = run_script(tmp_path, 2, SETTINGS, {"parts": parts, "module": MODULE, "rounds": 2})
    assert two["rank_spread"] == 0.0
    one, _ = fit(secure_aggregation=SecureAggregation(clip_range=RANGE))
    assert max_abs_diff(net_state(two["state"]), one) <= 1e-6


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(client_algorithm=Scaffold()), "client_algorithm=Scaffold also sends per-process sums"),
        (dict(client_algorithm=FedNova()), "client_algorithm=FedNova also sends"),
        (dict(aggregator=Median()), "needs each update"),
    ],
)
def test_parts_it_cannot_serve_are_refused(kwargs, message):
    with pytest.raises(FederatedConfigError, match=message):
        FedAvgStrategy(secure_aggregation=SecureAggregation(), **kwargs)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(FederatedConfigError, match="clip_range") as info:
        SecureAggregation(clip_range=0)
    assert "\n" not in str(info.value)
    with pytest.raises(FederatedConfigError, match="neighbors"):
        fit(rounds=1, secure_aggregation=SecureAggregation(neighbors=10))  # more than the cohort of 6
