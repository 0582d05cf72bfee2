"""Secure aggregation, one process: quantization, Shamir, graphs, PRG, config errors, and whole rounds
(masks cancel, failed clients are recovered from shares, too few share-holders is an error)."""

from __future__ import annotations

import itertools
import math
import sys

import pytest
import torch

from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.secure import (
    ClipRangeError,
    DropoutRecoveryError,
    FixedPoint,
    SecAggRound,
    SecureAggregation,
    SecureAggregationError,
    cost_table,
    dequantize,
    keys,
    quantize,
    shamir,
)
from lightning_fl.federated.secure.graph import default_neighbors, neighbour_graph
from lightning_fl.federated.secure.prg import mask_vector


def uniform_bytes_pvalue(values: torch.Tensor) -> float:
    """Chi-square p-value that the little-endian bytes of uint32 ring elements are uniform over 0..255."""
    from scipy import stats  # here, not at import: spawned workers import this module too

    raw = values.to(torch.int64).to(torch.uint32).numpy().tobytes()
    counts = torch.bincount(torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.int64), minlength=256)
    return float(stats.chisquare(counts.numpy()).pvalue)


def updates_for(clients, numel, scale=0.9, seed=0):
    """Structured (far from uniform) updates: a ramp plus noise, inside [-scale, scale]."""
    out = {}
    for c in clients:
        g = torch.Generator().manual_seed(seed * 10_000 + c)
        ramp = torch.linspace(-0.5, 0.5, numel)
        out[c] = (ramp + 0.4 * (torch.rand(numel, generator=g) * 2 - 1)) * scale
    return out


# ----------------------------------------------------------------------------- quantization
@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_scale_leaves_room_for_the_sum_of_k_clients(k):
    fp = FixedPoint(clip_range=2.0, max_summands=k)
    levels = 2 * (((2**32 - 1) // k) // 2)  # the largest even L with K·L < 2^32
    assert fp.levels == levels and k * levels < 2**32 and k * (levels + 2) >= 2**32 - k
    assert fp.resolution == pytest.approx(4.0 / levels)
    # K clients at the extremes sum without wrapping
    for v in (2.0, -2.0):
        codes = sum(fp.quantize(torch.full((3,), v), torch.Generator())[0] for _ in range(k))
        assert codes.max() < 2**32
        assert torch.allclose(fp.dequantize(codes, k), torch.full((3,), k * v, dtype=torch.float64))


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_sum_error_is_within_the_documented_bound(rounding):
    k, numel = 50, 4000
    fp = FixedPoint(1.0, k, rounding)
    xs = [torch.rand(numel, generator=torch.Generator().manual_seed(i), dtype=torch.float64) * 2 - 1 for i in range(k)]
    codes = sum(fp.quantize(x, torch.Generator().manual_seed(100 + i))[0] for i, x in enumerate(xs))
    err = (fp.dequantize(codes, k) - sum(xs)).abs()
    per_value = fp.resolution / 2 if rounding == "nearest" else fp.resolution
    assert fp.error_bound(k) == pytest.approx(k * per_value)
    assert err.max() <= fp.error_bound(k)
    assert err.max() > 0  # it is a real quantization, not a float passthrough
    single = (fp.dequantize(fp.quantize(xs[0], torch.Generator())[0], 1) - xs[0]).abs()
    assert single.max() <= per_value


def test_stochastic_rounding_is_unbiased_and_nearest_is_not():
    fp = FixedPoint(1.0, 10, "stochastic")
    x = torch.full((200_000,), 0.3 * fp.resolution, dtype=torch.float64)
    q, _ = fp.quantize(x, torch.Generator().manual_seed(0))
    mean = fp.dequantize(q, 1).mean().item()
    assert abs(mean - 0.3 * fp.resolution) < 5 * 0.5 * fp.resolution / math.sqrt(x.numel())
    near = FixedPoint(1.0, 10, "nearest")
    assert near.dequantize(near.quantize(x)[0], 1).abs().max().item() == 0.0  # rounded away entirely


def test_out_of_range_values_are_counted_and_clamped_never_wrapped():
    x = torch.tensor([0.5, 1.5, -3.0, float("nan"), float("inf"), 1.0])
    codes, bad = quantize(x, clip_range=1.0, num_clients=4, rounding="nearest")
    fp = FixedPoint(1.0, 4, "nearest")
    assert bad == 4
    assert codes.tolist()[1] == fp.levels and codes.tolist()[2] == 0 and codes.tolist()[4] == fp.levels
    back = dequantize(codes, 1.0, 4, num_summed=1)
    assert back.tolist()[1:] == pytest.approx([1.0, -1.0, 0.0, 1.0, 1.0], abs=1e-6)


# ----------------------------------------------------------------------------- Shamir
def _is_probable_prime(n: int) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_the_field_is_prime_and_holds_any_32_byte_key():
    assert shamir.PRIME > 2**256 and _is_probable_prime(shamir.PRIME)
    assert not _is_probable_prime(shamir.PRIME + 2)  # the check itself can say no
    assert shamir.PRIME < 2 ** (8 * shamir.SHARE_BYTES)


def test_any_t_shares_reconstruct_and_t_minus_1_do_not():
    secret = int.from_bytes(bytes(range(32)), "little")
    xs = [3, 8, 11, 20, 21, 40]
    ys = shamir.split(secret, 3, xs)
    for subset in itertools.combinations(range(6), 3):
        assert shamir.reconstruct([(xs[i], ys[i]) for i in subset]) == secret
    for subset in itertools.combinations(range(6), 2):
        assert shamir.reconstruct([(xs[i], ys[i]) for i in subset]) != secret


def test_t_minus_1_shares_are_uniform_whatever_the_secret():
    """Exhaustively over GF(11), t = 3: the pair of shares at x = 1, 2 takes every value exactly once over
    all polynomials, for every secret; so two shares are consistent with any secret equally often."""
    p, t, xs = 11, 3, [1, 2]
    for secret in range(p):
        seen = []
        for coeffs in itertools.product(range(p), repeat=t - 1):
            draws = iter(coeffs)
            seen.append(tuple(shamir.split(secret, t, xs + [3], randbelow=lambda _n, d=draws: next(d), prime=p)[:2]))
        assert sorted(seen) == sorted(itertools.product(range(p), repeat=2))
    # while three shares pin the secret down: the map secret -> shares is injective
    draws = iter([4, 7])
    assert shamir.reconstruct(list(zip([1, 2, 3], shamir.split(5, 3, [1, 2, 3], lambda _n: next(draws), p))), p) == 5


def test_shares_at_zero_are_refused():
    with pytest.raises(FederatedConfigError):
        shamir.split(5, 2, [0, 1, 2])


# ----------------------------------------------------------------------------- graph, PRG, keys
@pytest.mark.parametrize("count,k", [(10, 4), (100, 14), (101, 6), (7, 6), (30, 5)])
def test_neighbour_graph_is_symmetric_regular_connected_and_seeded(count, k):
    ids = list(range(1000, 1000 + count))
    graph = neighbour_graph(ids, k, seed=3, round_idx=2)
    degree = min(count - 1, 2 * math.ceil(k / 2))
    assert all(len(graph[c]) == degree and c not in graph[c] for c in ids)
    assert all(c in graph[j] for c in ids for j in graph[c])
    seen, todo = {ids[0]}, [ids[0]]
    while todo:
        for j in graph[todo.pop()]:
            if j not in seen:
                seen.add(j)
                todo.append(j)
    assert seen == set(ids)
    assert neighbour_graph(list(reversed(ids)), k, 3, 2) == graph
    if degree < count - 1:
        assert neighbour_graph(ids, k, 3, 3) != graph


def test_default_neighbours_grow_logarithmically():
    assert [default_neighbors(n) for n in (2, 5, 10, 100, 1000)] == [1, 4, 8, 14, 20]


def test_masks_are_uniform_deterministic_per_key_and_distinct_across_keys():
    a = mask_vector(b"\x01" * 32, 50_000)
    assert a.dtype == torch.int64 and a.min() >= 0 and a.max() < 2**32
    assert torch.equal(a, mask_vector(b"\x01" * 32, 50_000))
    assert not torch.equal(a, mask_vector(b"\x02" * 32, 50_000))
    assert uniform_bytes_pvalue(a) > 1e-4


def test_both_ends_derive_the_same_pairwise_key_and_only_for_that_use():
    a, b = keys.generate_private_key(), keys.generate_private_key()
    k_ab = keys.agree(a, keys.public_bytes(b), "mask", 1, 0, 1)
    assert k_ab == keys.agree(b, keys.public_bytes(a), "mask", 1, 0, 1)
    assert k_ab != keys.agree(a, keys.public_bytes(b), "mask", 2, 0, 1)
    assert k_ab != keys.agree(a, keys.public_bytes(b), "share", 1, 0, 1)
    ct = keys.encrypt(k_ab, b"share", b"ctx")
    assert keys.decrypt(k_ab, ct, b"ctx") == b"share"
    with pytest.raises(Exception, match="InvalidTag|"):
        keys.decrypt(k_ab, ct, b"other")


def test_missing_extra_is_a_one_line_error_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(FederatedConfigError) as err:
        SecureAggregation()
    assert "lightning-fl[secure]" in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "kwargs,setting",
    [
        (dict(clip_range=0), "clip_range"),
        (dict(clip_range=-1.0), "clip_range"),
        (dict(clip_range=float("inf")), "clip_range"),
        (dict(neighbors=0), "neighbors"),
        (dict(neighbors=4, threshold=5), "threshold"),
        (dict(threshold=0), "threshold"),
        (dict(rounding="up"), "rounding"),
        (dict(on_overflow="wrap"), "on_overflow"),
        (dict(dropout_rate=1.0), "dropout_rate"),
        (dict(seed=1.5), "seed"),
        (dict(deterministic_keys=1), "deterministic_keys"),
        (dict(process_masks="yes"), "process_masks"),
        (dict(mask_same_process_pairs=None), "mask_same_process_pairs"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_setting(kwargs, setting):
    with pytest.raises(FederatedConfigError) as err:
        SecureAggregation(**kwargs)
    assert setting in str(err.value) and "\n" not in str(err.value)


def test_settings_that_do_not_fit_the_cohort_are_one_line_errors():
    with pytest.raises(FederatedConfigError, match="neighbors=10 exceeds"):
        SecureAggregation(neighbors=10).validate_cohort(10)
    with pytest.raises(FederatedConfigError, match="threshold=9 exceeds"):
        SecureAggregation(threshold=9).validate_cohort(10)  # default k = 8 for 10 clients
    with pytest.raises(FederatedConfigError, match="at least 2 clients"):
        SecureAggregation().validate_cohort(1)
    SecureAggregation(neighbors=9, threshold=9).validate_cohort(10)


def test_config_is_picklable_and_compares_by_settings():
    import pickle

    cfg = SecureAggregation(clip_range=0.5, neighbors=6, threshold=4, seed=7)
    assert pickle.loads(pickle.dumps(cfg)) == cfg and "clip_range=0.5" in repr(cfg)


# ----------------------------------------------------------------------------- whole rounds (world size 1)
def _round(cfg, clients, numel, round_idx=0):
    r = SecAggRound(cfg, round_idx, clients, {c: 0 for c in clients}, numel)
    r.setup()
    return r


@pytest.mark.parametrize("every_pair", [True, False])
@pytest.mark.parametrize("failed", [(), (13,), (13, 17)])
def test_the_sum_over_survivors_is_exact_within_the_quantization_bound(failed, every_pair):
    cfg = SecureAggregation(clip_range=1.0, neighbors=6, deterministic_keys=True, mask_same_process_pairs=every_pair)
    clients = list(range(10, 22))
    ups = updates_for(clients, 3000)
    r = _round(cfg, clients, 3000, round_idx=5)
    for c in clients:
        if c not in failed:
            r.add(c, ups[c], weight=c)
    res = r.finish()
    survivors = [c for c in clients if c not in failed]
    plain = sum(ups[c].double() for c in survivors)
    assert res.survivors == survivors and res.dropped == list(failed)
    assert res.weight == sum(survivors)
    assert (res.sum - plain).abs().max() <= res.error_bound
    assert res.error_bound == pytest.approx(len(survivors) * r.fixed_point.resolution)


def test_a_clients_masked_vector_is_uniform_and_uncorrelated_with_its_update():
    cfg = SecureAggregation(clip_range=1.0, neighbors=4, deterministic_keys=True, mask_same_process_pairs=True)
    clients = list(range(8))
    ups = updates_for(clients, 20_000)
    r = _round(cfg, clients, 20_000)
    masked = r.mask(3, ups[3])[:-2]
    plain_codes, _ = r.fixed_point.quantize(ups[3], torch.Generator())
    assert uniform_bytes_pvalue(masked) > 1e-4
    assert uniform_bytes_pvalue(plain_codes) < 1e-10  # the same test does see an unmasked update
    corr = torch.corrcoef(torch.stack([masked.double(), ups[3].double()]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(masked.numel())


def test_fewer_surviving_share_holders_than_the_threshold_is_a_clear_error():
    cfg = SecureAggregation(clip_range=1.0, neighbors=4, threshold=4, deterministic_keys=True, mask_same_process_pairs=True)
    clients = list(range(10))
    r = _round(cfg, clients, 100)
    u = 4
    v = r.graph[u][0]
    for c in clients:
        if c not in (u, v):
            r.add(c, torch.zeros(100))
    with pytest.raises(DropoutRecoveryError) as err:
        r.finish()
    msg = str(err.value)
    assert "\n" not in msg and "threshold=4" in msg and "3 of its 4 neighbours survived" in msg


def test_values_outside_the_clip_range_are_an_error_or_reported():
    clients = list(range(6))
    big = {c: torch.full((50,), 0.1) for c in clients}
    big[2][7] = 3.0
    r = _round(SecureAggregation(clip_range=1.0, deterministic_keys=True), clients, 50)
    for c in clients:
        r.add(c, big[c])
    assert r.local_out_of_range[2] == 1
    with pytest.raises(ClipRangeError, match=r"clip_range=1 is too small: 1 of 6 clients"):
        r.finish()
    r = _round(SecureAggregation(clip_range=1.0, on_overflow="clip", deterministic_keys=True), clients, 50)
    for c in clients:
        r.add(c, big[c])
    res = r.finish()
    assert res.overflowed_clients == 1
    assert res.sum[7].item() == pytest.approx(5 * 0.1 + 1.0, abs=res.error_bound)  # clamped to R, not wrapped


def test_simulated_failures_are_seeded_per_client_and_recovered():
    cfg = SecureAggregation(
        clip_range=1.0, neighbors=10, threshold=3, dropout_rate=0.2, seed=11, deterministic_keys=True,
        mask_same_process_pairs=True,
    )
    clients = list(range(40))
    a = SecAggRound(cfg, 2, clients, {c: 0 for c in clients}, 10)
    b = SecAggRound(cfg, 2, clients[::-1], {c: c % 3 for c in clients}, 10, rank=1, world_size=3)
    assert a.simulated_dropouts == b.simulated_dropouts and 3 <= len(a.simulated_dropouts) <= 20
    assert SecAggRound(cfg, 3, clients, [0] * 40, 10).simulated_dropouts != a.simulated_dropouts
    a.setup()
    ups = updates_for(clients, 10)
    added = [c for c in clients if a.add(c, ups[c])]
    assert set(added) == set(clients) - a.simulated_dropouts
    res = a.finish()
    assert res.dropped == sorted(a.simulated_dropouts)
    assert (res.sum - sum(ups[c].double() for c in added)).abs().max() <= res.error_bound


def test_cost_table_counts_k_neighbours_against_full_pairwise():
    rows = cost_table((10, 100, 1000), numel=1000)
    for row, k_expected in zip(rows, (8, 14, 20)):
        n = row["clients"]
        assert row["neighbors"] == k_expected
        assert row["masks"] == n * k_expected and row["masks_full_pairwise"] == n * (n - 1)
        assert row["mask_bytes"] == n * k_expected * 4 * 1002
    assert rows[2]["masks_full_pairwise"] / rows[2]["masks"] == pytest.approx(999 / 20)


def test_a_tampered_share_is_detected_not_turned_into_a_wrong_sum():
    cfg = SecureAggregation(clip_range=1.0, neighbors=4, threshold=2, deterministic_keys=True, mask_same_process_pairs=True)
    clients = list(range(8))
    r = _round(cfg, clients, 20)
    holder = min(j for j in r.graph[5])  # the first holder is one whose share recovery uses
    ct = bytearray(r._held[(5, holder)])
    ct[0] ^= 1
    r._held[(5, holder)] = bytes(ct)
    for c in clients:
        if c != 5:
            r.add(c, torch.zeros(20))
    with pytest.raises(SecureAggregationError, match="rebuild the wrong key"):
        r.finish()
