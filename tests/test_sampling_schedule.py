import collections

import pytest
import torch

from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.sampling import client_batches, num_client_steps, sample_clients, straggler_steps
from lightning_fl.federated.schedule import assign_longest_first, plan_round
from lightning_fl.seeding import derive_seed


def test_derive_seed_is_stable_and_key_sensitive():
    assert derive_seed(0, "sample", 3) == derive_seed(0, "sample", 3)
    assert len({derive_seed(0, "sample", r) for r in range(100)}) == 100
    assert derive_seed(0, "a") != derive_seed(1, "a")
    assert 0 <= derive_seed(123, "x") < 2**63


def test_sampling_is_without_replacement_seeded_and_uniform():
    draws = [sample_clients(50, 10, seed=7, round_idx=r) for r in range(2000)]
    assert all(len(set(d)) == 10 and all(0 <= c < 50 for c in d) for d in draws)
    assert sample_clients(50, 10, 7, 3) == draws[3]
    assert sample_clients(50, 10, 7, 4) != draws[3]
    counts = collections.Counter(c for d in draws for c in d)
    expected = 2000 * 10 / 50  # 400 per client
    chi2 = sum((counts[c] - expected) ** 2 / expected for c in range(50))
    assert chi2 < 100  # 49 degrees of freedom: the 99.99th percentile is about 95


def test_sampling_rejects_more_clients_than_exist():
    with pytest.raises(FederatedConfigError, match="clients_per_round"):
        sample_clients(5, 6, 0, 0)


@pytest.mark.parametrize("drop_last", [False, True])
def test_client_batches_visit_each_sample_once_per_local_epoch(drop_last):
    idx = torch.arange(100, 123)  # 23 samples
    steps = num_client_steps(23, 5, drop_last, local_epochs=3)
    assert steps == (12 if drop_last else 15)
    batches = client_batches(idx, 5, steps, drop_last=drop_last, seed=0, round_idx=2, client_id=4)
    assert len(batches) == steps
    per_epoch = len(batches) // 3
    for e in range(3):
        seen = [i for b in batches[e * per_epoch : (e + 1) * per_epoch] for i in b]
        assert len(seen) == len(set(seen))
        assert set(seen) <= set(idx.tolist())
        if not drop_last:
            assert sorted(seen) == idx.tolist()
    # each epoch has its own order
    assert batches[0] != batches[per_epoch]


@pytest.mark.parametrize("drop_last", [False, True])
def test_local_steps_cut_the_same_stream_of_shuffled_epochs(drop_last):
    idx = torch.arange(100, 123)  # 23 samples: 4 (drop_last) or 5 batches of 5 per epoch
    three_epochs = client_batches(idx, 5, num_client_steps(23, 5, drop_last, 3), drop_last, 0, 2, 4)
    for k in (1, 3, 7, 11):  # fewer and more than one epoch
        assert num_client_steps(23, 5, drop_last, local_epochs=3, local_steps=k) == k
        assert client_batches(idx, 5, k, drop_last, 0, 2, 4) == three_epochs[:k]
    assert num_client_steps(4, 5, True, local_steps=7) == 0  # no full batch: the client cannot train


def test_stragglers_do_a_seeded_random_share_of_their_work():
    steps, ids = [10] * 20, list(range(100, 120))
    out = straggler_steps(steps, ids, 0.25, seed=3, round_idx=1)
    assert out == straggler_steps(steps, ids, 0.25, seed=3, round_idx=1)  # a pure function
    shortened = [i for i, s in enumerate(out) if s != 10]
    assert 1 <= len(shortened) <= 5 and all(1 <= out[i] < 10 for i in shortened)
    assert straggler_steps(steps, ids, 0.0, 3, 1) == steps
    # over many rounds the work is uniform on [1, 10]
    counts = torch.zeros(11)
    for r in range(400):
        for s in straggler_steps(steps, ids, 1.0, seed=0, round_idx=r):
            counts[s] += 1
    assert counts[0] == 0 and (counts[1:] / counts[1:].sum() - 0.1).abs().max() < 0.02


def test_longest_first_balances_and_keeps_sampled_order():
    loads = [7, 3, 9, 1, 4, 4]
    owners = assign_longest_first(loads, 2)
    assert sorted(p for o in owners for p in o) == list(range(6))
    totals = [sum(loads[p] for p in o) for o in owners]
    assert max(totals) - min(totals) <= max(loads)
    assert max(totals) == 14  # optimum for these loads (28 / 2)
    assert all(o == sorted(o) for o in owners)


def test_plan_round_pads_every_rank_to_the_longest():
    ids, sizes, steps = [5, 2, 8], [50, 20, 35], [5, 2, 4]
    plans = [plan_round(0, ids, sizes, steps, world_size=2, rank=r) for r in range(2)]
    assert plans[0].num_steps == plans[1].num_steps == 6  # ranks hold {5} and {2, 8}: max(5, 6)
    assert {j.client_id for p in plans for j in p.jobs} == {5, 2, 8}
    busy = plans[1]
    assert [j.client_id for j in busy.jobs] == [2, 8]
    assert busy.starts_at[0].client_id == 2 and busy.ends_at[1].client_id == 2
    assert busy.starts_at[2].client_id == 8 and busy.ends_at[5].client_id == 8
    assert plans[0].local_steps == 5 and plans[0].round_samples == 105
