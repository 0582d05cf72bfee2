"""Robust aggregation rules: hand-computed values on tiny inputs, config validation, and the multi-process
versions with real gloo processes (W = 2 and 3, uneven updates per rank, P not divisible by W) equal to
the single-process rule."""

from __future__ import annotations

import os
import pickle
import socket

import pytest
import torch
import torch.multiprocessing as mp

from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.robust import (
    InsufficientUpdatesError,
    Krum,
    Median,
    NormBound,
    TrimmedMean,
    coordinate_median,
    distributed_coordinatewise,
    distributed_krum,
    krum,
    krum_scores,
    norm_bound,
    num_trimmed,
    pairwise_sq_distances,
    trimmed_mean,
)

T = torch.tensor


# ---------------------------------------------------------------------------------------------- pure rules


def test_median_odd_and_even_counts():
    odd = T([[1.0, 9.0], [5.0, -2.0], [3.0, 4.0]])
    assert torch.equal(coordinate_median(odd), T([3.0, 4.0]))
    # Even K: middle values (2, 4) -> 3 and (-2, 4) -> 1; torch.median would give the lower ones.
    even = T([[1.0, 9.0], [4.0, -2.0], [2.0, 4.0], [100.0, -7.0]])
    assert torch.equal(coordinate_median(even), T([3.0, 1.0]))


def test_trimmed_mean_drops_the_extremes_of_each_coordinate():
    x = T([[1.0, 50.0], [2.0, -40.0], [3.0, 0.0], [4.0, 1.0], [100.0, 2.0]])
    # beta = 0.2, K = 5: drop 1 per side. Column 0: mean(2, 3, 4) = 3. Column 1: mean(0, 1, 2) = 1.
    assert torch.equal(trimmed_mean(x, 0.2), T([3.0, 1.0]))
    # beta = 0.1 trims floor(0.5) = 0: the plain mean.
    assert torch.allclose(trimmed_mean(x, 0.1), T([22.0, 2.6]))


def test_num_trimmed_uses_the_decimal_value_of_beta():
    assert num_trimmed(100, 0.29) == 29  # 0.29 * 100 == 28.999999999999996 in floating point
    assert num_trimmed(10, 0.3) == 3
    assert num_trimmed(7, 0.49) == 3
    assert num_trimmed(5, 0.0) == 0


# Five 2-D updates; squared distances by hand:
#   d01=2 d02=4 d03=100 d04=9 d12=2 d13=82 d14=17 d23=64 d24=13 d34=109
# f = 1, so each score sums the K - f - 2 = 2 nearest: s = [2+4, 2+2, 2+4, 64+82, 9+13] = [6, 4, 6, 146, 22].
KRUM_X = T([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [10.0, 0.0], [0.0, -3.0]])


def test_krum_scores_and_selection_by_hand():
    d = pairwise_sq_distances(KRUM_X)
    assert d[0, 1] == 2 and d[1, 3] == 82 and d[3, 4] == 109 and d[2, 2] == 0
    assert krum_scores(d, 1).tolist() == [6.0, 4.0, 6.0, 146.0, 22.0]
    assert torch.equal(krum(KRUM_X, 1), T([1.0, 1.0]))
    # multi = 2: update 1, then the tie 0/2 (score 6) goes to the earlier position 0.
    assert torch.equal(krum(KRUM_X, 1, multi=2), T([0.5, 0.5]))
    assert torch.allclose(krum(KRUM_X, 1, multi=3), T([1.0, 1.0 / 3.0]))


def test_krum_refuses_too_few_updates():
    with pytest.raises(InsufficientUpdatesError, match=r"num_malicious=2 needs more than 6 updates, got 6"):
        krum(torch.zeros(6, 3), 2)
    with pytest.raises(InsufficientUpdatesError, match="multi=5"):
        krum(KRUM_X, 1, multi=5)


def test_norm_bound():
    assert torch.equal(norm_bound(T([3.0, 4.0]), 2.5), T([1.5, 2.0]))
    assert torch.equal(norm_bound(T([3.0, 4.0]), 10.0), T([3.0, 4.0]))
    assert torch.equal(norm_bound(torch.zeros(3), 1.0), torch.zeros(3))
    nb = NormBound(2.5)
    assert nb.factor(5.0) == 0.5 and nb.factor(1.0) == 1.0
    assert torch.equal(nb.bound(T([0.0, 5.0])), T([0.0, 2.5]))


def test_columnwise_chunking_does_not_change_results(monkeypatch):
    import lightning_fl.federated.robust as robust

    x = torch.randn(6, 37, generator=torch.Generator().manual_seed(0))
    full = (coordinate_median(x), trimmed_mean(x, 0.2), krum(x, 1, multi=2))
    monkeypatch.setattr(robust, "CHUNK_ELEMENTS", 6 * 5)  # 5 columns per chunk
    chunked = (coordinate_median(x), trimmed_mean(x, 0.2), krum(x, 1, multi=2))
    for a, b in zip(full, chunked):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(full[0], chunked[0]) and torch.equal(full[1], chunked[1])


# ------------------------------------------------------------------------------------------ config objects


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TrimmedMean(0.7), "TrimmedMean: beta must be in [0, 0.5), got 0.7"),
        (lambda: TrimmedMean(0.5), "TrimmedMean: beta must be in [0, 0.5), got 0.5"),
        (lambda: TrimmedMean(-0.1), "TrimmedMean: beta must be in [0, 0.5), got -0.1"),
        (lambda: Krum(-1), "Krum: num_malicious must be an integer >= 0, got -1"),
        (lambda: Krum(1.5), "Krum: num_malicious must be an integer >= 0, got 1.5"),
        (lambda: Krum(True), "Krum: num_malicious must be an integer >= 0, got True"),
        (lambda: Krum(1, multi=0), "Krum: multi must be an integer >= 1, got 0"),
        (lambda: NormBound(0), "NormBound: max_norm must be a finite number > 0, got 0"),
        (lambda: NormBound(float("inf")), "NormBound: max_norm must be a finite number > 0, got inf"),
    ],
)
def test_bad_settings_are_one_line_errors(make, message):
    with pytest.raises(FederatedConfigError) as info:
        make()
    assert str(info.value) == message


def test_check_cohort():
    Krum(2).check_cohort(7)
    with pytest.raises(FederatedConfigError, match=r"^Krum: num_malicious=2 needs clients_per_round > .* = 6, got 6$"):
        Krum(2).check_cohort(6)
    with pytest.raises(FederatedConfigError, match=r"^Krum: multi must be <= clients_per_round - num_malicious = 8"):
        Krum(2, multi=9).check_cohort(10)
    TrimmedMean(0.2).check_cohort(5)
    TrimmedMean(0.0).check_cohort(1)
    with pytest.raises(FederatedConfigError, match=r"^TrimmedMean: beta=0.1 trims nothing with clients_per_round=5"):
        TrimmedMean(0.1).check_cohort(5)
    Median().check_cohort(1)
    assert Krum(2, multi=6).min_updates() == 8 and Krum(2).min_updates() == 7 and Median().min_updates() == 1


def test_holds_updates_pickle_and_hydra():
    from hydra.utils import instantiate

    assert Median.holds_updates and TrimmedMean(0.1).holds_updates and Krum(1).holds_updates
    assert NormBound(1.0).holds_updates is False
    for obj in (Median(), TrimmedMean(0.1), Krum(1, multi=3), NormBound(2.0)):
        assert repr(pickle.loads(pickle.dumps(obj))) == repr(obj)
    made = instantiate({"_target_": "lightning_fl.federated.robust.Krum", "num_malicious": 2, "multi": 3})
    assert isinstance(made, Krum) and (made.num_malicious, made.multi) == (2, 3)
    with pytest.raises(Exception, match="beta must be in"):
        instantiate({"_target_": "lightning_fl.federated.robust.TrimmedMean", "beta": 0.9})


def test_aggregate_in_one_process_orders_by_client_id():
    # Rows given in the order of ids [30, 10, 20, 50, 40] -> canonical order is rows [1, 2, 0, 4, 3].
    ids = [30, 10, 20, 50, 40]
    rows = KRUM_X[[2, 0, 1, 4, 3]]  # so that sorting by id gives back KRUM_X
    agg = Krum(1, multi=2)
    assert torch.equal(agg.aggregate(rows, ids), krum(KRUM_X, 1, multi=2))
    assert agg.last_selected == [10, 20]  # the tie (score 6) went to the smaller client id
    assert agg.last_stats.bytes_sent == 0
    assert torch.equal(Median().aggregate(rows, ids), coordinate_median(KRUM_X))
    assert torch.equal(TrimmedMean(0.2).aggregate(rows, ids), trimmed_mean(KRUM_X, 0.2))


def test_too_few_updates_at_aggregation_is_an_error_not_a_fallback():
    with pytest.raises(InsufficientUpdatesError, match="Krum: num_malicious=1 needs more than 4 updates, got 4"):
        Krum(1).aggregate(torch.zeros(4, 3), [0, 1, 2, 3])
    with pytest.raises(InsufficientUpdatesError, match="Median: no update"):
        Median().aggregate(torch.zeros(0, 3), [])
    with pytest.raises(ValueError, match="one client id per row"):
        Median().aggregate(torch.zeros(2, 3), [1])
    with pytest.raises(ValueError, match="client id occurs twice"):
        Median().aggregate(torch.zeros(2, 3), [1, 1])
    # TrimmedMean follows the K that arrived: 3 updates with beta 0.4 trim floor(1.2) = 1 per side.
    assert torch.equal(TrimmedMean(0.4).aggregate(T([[1.0], [7.0], [2.0]]), [0, 1, 2]), T([2.0]))


# ----------------------------------------------------------------------------------- gloo, W = 2 and W = 3

K, P = 9, 23  # P not divisible by 2 or 3
COUNTS = {2: [5, 4], 3: [0, 6, 3]}  # uneven, and a rank that holds no update


def _data():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(K, P, generator=g)
    x[3] = x[5]  # identical updates: Krum ties must still resolve the same way everywhere
    # Two outliers that look central on the first coordinates (rank 0's shard) and are far on the last ones:
    # Krum must see the distances summed over every shard to reject them.
    x[[0, 2], :12] = 0.0
    x[[0, 2], 12:] = 30.0
    ids = (torch.randperm(50, generator=g)[:K] + 100).tolist()
    return x, ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, ids = _data()
        start = sum(COUNTS[world][:rank])
        mine = slice(start, start + COUNTS[world][rank])
        local, local_ids = x[mine].clone(), ids[mine]
        median = Median()
        results = {
            "median": median.aggregate(local, local_ids),
            "median_bytes": torch.tensor(median.last_stats.bytes_sent),
            "median_chunked": distributed_coordinatewise(local, local_ids, "median", chunk_columns=2),
            "trimmed": TrimmedMean(0.25).aggregate(local, local_ids),
            "trimmed_chunked": distributed_coordinatewise(local, local_ids, "trimmed_mean", 0.25, chunk_columns=3),
        }
        k = Krum(2)
        results["krum"] = k.aggregate(local, local_ids)
        results["krum_selected"] = torch.tensor(k.last_selected)
        mk, sel = distributed_krum(local, local_ids, 2, multi=4, chunk_columns=4)
        results["multikrum"], results["multikrum_selected"] = mk, torch.tensor(sel)
        results["krum_bytes"] = torch.tensor(k.last_stats.bytes_sent)
        try:  # f = 4 needs K > 10: every rank must raise, none may wait for the others
            Krum(4).aggregate(local, local_ids)
            results["insufficient"] = torch.tensor(0)
        except InsufficientUpdatesError:
            results["insufficient"] = torch.tensor(1)
        dist.barrier()  # reached only if no rank is stuck in a collective
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _rows(client_ids: torch.Tensor) -> torch.Tensor:
    x, ids = _data()
    return torch.stack(sorted((x[ids.index(int(c))] for c in client_ids), key=lambda r: r.tolist()))


def _reference() -> dict[str, torch.Tensor]:
    x, ids = _data()
    order = sorted(range(K), key=ids.__getitem__)
    canon = x[order]
    sel = krum_scores(pairwise_sq_distances(canon), 2).argsort(stable=True)
    return {
        "median": coordinate_median(x),
        "trimmed": trimmed_mean(x, 0.25),
        "krum": krum(canon, 2),
        "multikrum": krum(canon, 2, multi=4),
        "krum_selected": torch.tensor([ids[order[int(sel[0])]]]),
        "multikrum_selected": torch.tensor(sorted(ids[order[int(i)]] for i in sel[:4])),
    }


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_rules_equal_the_single_process_rule(tmp_path, world):
    # fork: the children inherit the imported modules (spawn would re-import Lightning in each, ~10 s here)
    mp.start_processes(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, start_method="fork")
    x, ids = _data()
    ref = _reference()
    outliers = {ids[0], ids[2]}
    assert not outliers & set(ref["multikrum_selected"].tolist())
    # the one-process path of the same config objects (torch.distributed not initialised here)
    assert torch.equal(Median().aggregate(x, ids), ref["median"])
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for res in per_rank:
        for name in ("median", "median_chunked", "trimmed", "trimmed_chunked", "krum", "multikrum"):
            base = ref[name.replace("_chunked", "")]
            assert torch.allclose(res[name], base, atol=1e-6, rtol=0), name
            assert torch.equal(res[name], per_rank[0][name]), f"{name} differs between ranks"
        # Updates 3 and 5 are identical, so their scores are equal up to the Gram matrix's rounding: either
        # may be chosen, with the same aggregate. Compare the chosen updates, not their ids.
        for name in ("krum_selected", "multikrum_selected"):
            assert torch.equal(_rows(res[name]), _rows(ref[name])), name
            assert torch.equal(res[name], per_rank[0][name]), f"{name} differs between ranks"
        assert int(res["insufficient"]) == 1
    # Coordinate-wise rules only sort each column, so they are bit-identical to the one-process rule.
    assert torch.equal(per_rank[0]["median"], ref["median"])
    assert torch.equal(per_rank[0]["trimmed"], ref["trimmed"])
    # Bytes rank 1 sends to the others, float32, shard S = ceil(23 / W): its k updates' columns of the W - 1
    # other shards, then its aggregated shard to each of the W - 1 others: 4·(k + 1)·S·(W - 1); plus the
    # int64 metadata: 3 counts and max k_r ids to each other rank, 8·(3 + max k_r)·(W - 1).
    # W=2: k=4, S=12 -> 240 + 8·(3+5) = 304. W=3: k=6, S=8 -> 448 + 8·(3+6)·2 = 592.
    assert int(per_rank[1]["median_bytes"]) == {2: 304, 3: 592}[world]
    # Krum adds the W - 1 copies of its 9×9 float64 partial Gram matrix (648 bytes each) and pass 2.
    assert int(per_rank[1]["krum_bytes"]) >= {2: 304, 3: 592}[world] + 648 * (world - 1)
