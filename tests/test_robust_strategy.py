"""Robust aggregation, attacks and failing clients inside FedAvgStrategy (issue 10, acceptance 1, 2 and 5).

The reference trains each sampled client of a round by hand (same documented draws as the strategy:
partition, sample, batch order, per-client seed), then applies the rule on the stacked updates in
client-id order, so every number below is computed independently of the strategy's pipeline.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from fl_testing import TinyData, fit_in_process, float_state, max_abs_diff, net_state, run_script, seeded_module
from lightning_fl import (
    FedAvgStrategy,
    FederatedConfigError,
    Krum,
    LabelFlip,
    Median,
    ModelPoisoning,
    NormBound,
    TrimmedMean,
)
from lightning_fl.federated.attacks import malicious_clients
from lightning_fl.federated.partition import make_partition
from lightning_fl.federated.robust import coordinate_median, krum, norm_bound, trimmed_mean
from lightning_fl.federated.sampling import client_batches, num_client_steps, sample_clients
from lightning_fl.federated.schedule import assign_longest_first
from lightning_fl.seeding import derive_seed

SETTINGS = dict(num_clients=8, clients_per_round=6, partition="dirichlet", alpha=1.0, seed=7)
MODULE = dict(batchnorm=False, lr=0.1)
BATCH = 8


def round_zero_updates(flip: set[int] = frozenset()) -> tuple[list[int], list[int], torch.Tensor, dict]:
    """Round 0 by hand: (client ids sorted, their sizes, stacked flat updates [K, P], the global state)."""
    net = seeded_module(**MODULE).net
    x, y = TinyData().train_set.tensors
    part = make_partition("dirichlet", len(y), 8, 7, labels=y, alpha=1.0)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    ids = sorted(sample_clients(8, 6, 7, 0))
    rows, sizes = [], []
    for cid in ids:
        net.load_state_dict(start)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        torch.manual_seed(derive_seed(7, "client-rng", 0, cid))
        idx = part.client(cid)
        for b in client_batches(idx, BATCH, num_client_steps(len(idx), BATCH, False), False, 7, 0, cid):
            opt.zero_grad()
            labels = 2 - y[b] if cid in flip else y[b]  # LabelFlip with 3 classes: c -> 2 - c
            nn.functional.cross_entropy(net(x[b]), labels).backward()
            opt.step()
        rows.append(torch.cat([(v - start[k]).flatten() for k, v in net.state_dict().items()]))
        sizes.append(len(idx))
    return ids, sizes, torch.stack(rows), start


def apply(start: dict, delta: torch.Tensor) -> dict:
    out, offset = {}, 0
    for k, v in start.items():
        out[k] = v + delta[offset : offset + v.numel()].view_as(v)
        offset += v.numel()
    return out


def fit(rounds=1, module=None, **kwargs):
    module = module or seeded_module(**MODULE)
    trainer = fit_in_process(FedAvgStrategy(**SETTINGS, **kwargs), module, TinyData(), rounds)
    return float_state(module.net), trainer


@pytest.mark.parametrize(
    "aggregator,rule",
    [
        (Median(), coordinate_median),
        (TrimmedMean(beta=0.2), lambda u: trimmed_mean(u, 0.2)),
        (Krum(num_malicious=1, multi=2), lambda u: krum(u, 1, multi=2)),
    ],
    ids=["median", "trimmed_mean", "multi_krum"],
)
def test_robust_aggregators_apply_their_rule_to_the_clients_updates(aggregator, rule):
    _ids, _sizes, updates, start = round_zero_updates()
    got, _ = fit(aggregator=aggregator)
    assert max_abs_diff(got, apply(start, rule(updates))) <= 1e-6


def test_norm_bound_clips_each_update_before_the_weighted_mean():
    _ids, sizes, updates, start = round_zero_updates()
    bounded = torch.stack([norm_bound(u, 0.05) for u in updates])
    w = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
    got, _ = fit(aggregator=NormBound(max_norm=0.05))
    assert max_abs_diff(got, apply(start, (w[:, None] * bounded).sum(0))) <= 1e-6


def test_model_poisoning_replaces_the_malicious_updates_seeded_per_round():
    ids, sizes, updates, start = round_zero_updates()
    bad = malicious_clients(7, 0, sample_clients(8, 6, 7, 0), 0.34)
    assert len(bad) == 2
    sign = torch.tensor([-3.0 if c in bad else 1.0 for c in ids])
    w = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
    got, trainer = fit(attack=ModelPoisoning("sign_flip", fraction=0.34, scale=3.0))
    assert max_abs_diff(got, apply(start, (w[:, None] * sign[:, None] * updates).sum(0))) <= 1e-6
    assert trainer.callback_metrics["fl/malicious_clients"].item() == 2
    # The same attack against the median: the two flipped updates are outvoted coordinate by coordinate.
    median, _ = fit(attack=ModelPoisoning("sign_flip", fraction=0.34, scale=3.0), aggregator=Median())
    assert max_abs_diff(median, apply(start, coordinate_median(sign[:, None] * updates))) <= 1e-6


def test_label_flip_trains_the_malicious_clients_on_flipped_labels():
    bad = malicious_clients(7, 0, sample_clients(8, 6, 7, 0), 0.5)
    _ids, sizes, updates, start = round_zero_updates(flip=bad)
    w = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
    got, _ = fit(attack=LabelFlip(fraction=0.5, num_classes=3))
    assert max_abs_diff(got, apply(start, (w[:, None] * updates).sum(0))) <= 1e-6


def test_absurd_updates_are_rejected_by_max_update_norm():
    ids, sizes, updates, start = round_zero_updates()
    bad = malicious_clients(7, 0, sample_clients(8, 6, 7, 0), 0.34)
    keep = torch.tensor([c not in bad for c in ids])
    w = torch.tensor(sizes, dtype=torch.float32) * keep
    got, trainer = fit(attack=ModelPoisoning("scale", fraction=0.34, scale=1e4), max_update_norm=10.0)
    assert max_abs_diff(got, apply(start, (w[:, None] / w.sum() * updates).sum(0))) <= 1e-6
    assert trainer.callback_metrics["fl/rejected_clients"].item() == 2


def failing_module(failing):
    return seeded_module(**MODULE, failing_clients=sorted(failing))


def test_a_raising_client_is_skipped_logged_and_counted(tmp_path, caplog):
    ids, sizes, updates, start = round_zero_updates()
    failing = {ids[0], ids[3]}
    keep = torch.tensor([c not in failing for c in ids])
    w = torch.tensor(sizes, dtype=torch.float32) * keep
    with caplog.at_level(logging.WARNING, logger="lightning_fl"):
        module = failing_module(failing)
        trainer = fit_in_process(FedAvgStrategy(**SETTINGS), module, TinyData(), 1, default_root_dir=str(tmp_path))
    assert max_abs_diff(float_state(module.net), apply(start, (w[:, None] / w.sum() * updates).sum(0))) <= 1e-6
    assert trainer.callback_metrics["fl/failed_clients"].item() == 2
    lines = [r.getMessage() for r in caplog.records if "failed and is skipped" in r.getMessage()]
    assert len(lines) == 2 and all("ValueError: simulated failure" in line for line in lines)
    assert {c for c in failing if any(f"client {c} failed" in line for line in lines)} == failing
    assert "Traceback" in (tmp_path / "client_errors.log").read_text()


def test_on_client_error_raise_fails_fast():
    with pytest.raises(ValueError, match="simulated failure"):
        fit_in_process(FedAvgStrategy(**SETTINGS, on_client_error="raise"), failing_module({0, 1, 2, 3, 4, 5, 6, 7}),
                       TinyData(), 1)


def test_too_few_survivors_keep_the_global_model_and_can_stop_training():
    start = float_state(seeded_module(**MODULE).net)
    module = failing_module(set(range(8)) - {sample_clients(8, 6, 7, 0)[0]})  # one survivor in round 0
    trainer = fit_in_process(FedAvgStrategy(**SETTINGS, min_clients=2, max_skipped_rounds=2), module, TinyData(), 5)
    assert max_abs_diff(float_state(module.net), start) == 0.0
    assert trainer.current_epoch == 2  # stopped after two rounds without enough survivors
    assert trainer.callback_metrics["fl/skipped_rounds"].item() == 2


@pytest.mark.distributed
def test_failing_clients_first_middle_last_on_two_processes_and_median(tmp_path):
    # Which clients sit first, in the middle and last on each process follows from the round plan.
    sampled = sample_clients(8, 6, 7, 0)
    y = TinyData().train_set.tensors[1]
    part = make_partition("dirichlet", len(y), 8, 7, labels=y, alpha=1.0)
    steps = [num_client_steps(len(part.client(c)), BATCH, False) for c in sampled]
    owners = assign_longest_first(steps, 2)
    per_rank = [[sampled[p] for p in positions] for positions in owners]
    assert min(len(r) for r in per_rank) == 3
    failing = {per_rank[0][0], per_rank[1][1], per_rank[1][-1]}
    options = {"module": dict(MODULE, failing_clients=sorted(failing)), "rounds": 1}
    two = run_script(tmp_path, 2, SETTINGS, options)
    assert two["rank_spread"] == 0.0 and two["metrics"]["fl/failed_clients"] == 3.0
    ids, sizes, updates, start = round_zero_updates()
    keep = torch.tensor([c not in failing for c in ids])
    w = torch.tensor(sizes, dtype=torch.float32) * keep
    assert max_abs_diff(net_state(two["state"]), apply(start, (w[:, None] / w.sum() * updates).sum(0))) <= 1e-6
    median = run_script(tmp_path, 2, SETTINGS, {"module": MODULE, "rounds": 1, "parts": {"aggregator": ["Median", {}]}})
    assert max_abs_diff(net_state(median["state"]), apply(start, coordinate_median(updates))) <= 1e-6


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: TrimmedMean(beta=0.5), r"beta must be in \[0, 0.5\)"),
        (lambda: FedAvgStrategy(on_client_error="ignore"), "on_client_error must be 'skip' or 'raise'"),
        (lambda: FedAvgStrategy(max_update_norm=0), "max_update_norm must be > 0"),
        (lambda: FedAvgStrategy(min_clients=0), "min_clients must be an integer >= 1"),
        (lambda: FedAvgStrategy(aggregator="median"), "aggregator must be None, Median"),
        (lambda: FedAvgStrategy(attack=ModelPoisoning("little_is_enough", 0.2)), "little_is_enough"),
    ],
)
def test_bad_settings_are_one_line_errors(make, message):
    with pytest.raises(FederatedConfigError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_krum_refuses_a_cohort_it_cannot_serve():
    with pytest.raises(FederatedConfigError, match="Krum"):
        fit(aggregator=Krum(num_malicious=2))  # K = 6 <= 2f + 2
