"""Compressors, error feedback, wire format and exchange (lightning_fl.federated.compression).

Expected values are worked out by hand in the comments, or from the defining formulas written here
independently of the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.compression import (
    CompressedUploads,
    Quantize,
    TopK,
    allreduce_bytes,
    bytes_sent,
    client_generator,
    compress_with_feedback,
    exchange_bytes,
    record_nbytes,
)
from lightning_fl.federated.compression.quantize import pack_codes, unpack_codes
from lightning_fl.seeding import generator

CNN_PARAMS = 1_663_370  # the McMahan et al. CNN of examples/mnist_fedavg.py


def gen(*keys: object) -> torch.Generator:
    return generator(0, "test", *keys)


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Quantize(bits=3), "Quantize: bits must be one of 2, 4, 8, 16, got 3"),
        (lambda: Quantize(bits=True), "Quantize: bits must be one of 2, 4, 8, 16, got True"),
        (lambda: Quantize(bits=8.0), "Quantize: bits must be one of 2, 4, 8, 16, got 8.0"),
        (lambda: Quantize(block_size=0), "Quantize: block_size must be an integer >= 1, got 0"),
        (lambda: Quantize(error_feedback="yes"), "Quantize: error_feedback must be true or false, got 'yes'"),
        (lambda: TopK(0), "TopK: fraction must be in (0, 1], got 0"),
        (lambda: TopK(1.5), "TopK: fraction must be in (0, 1], got 1.5"),
        (lambda: TopK(-0.1), "TopK: fraction must be in (0, 1], got -0.1"),
        (lambda: TopK(True), "TopK: fraction must be in (0, 1], got True"),
        (lambda: TopK("0.1"), "TopK: fraction must be in (0, 1], got '0.1'"),
        (lambda: TopK(0.1, error_feedback=1), "TopK: error_feedback must be true or false, got 1"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_setting(make, message):
    with pytest.raises(FederatedConfigError) as info:
        make()
    assert str(info.value) == message


def test_configs_are_plain_picklable_values():
    import pickle

    for c in (Quantize(bits=4, block_size=64, error_feedback=False), TopK(0.01)):
        assert pickle.loads(pickle.dumps(c)) == c
    assert repr(TopK(0.01)) == "TopK(fraction=0.01, error_feedback=True)"
    assert Quantize(8) != Quantize(4)


# ----------------------------------------------------------------------------- sizes
def test_sizes_for_the_mcmahan_cnn_by_hand():
    # 8-bit, blocks of 1024: ceil(1663370 / 1024) = 1625 blocks of two float32, plus one byte per value.
    assert Quantize(8).compressed_nbytes(CNN_PARAMS) == 1625 * 8 + 1_663_370 == 1_676_370
    # 4-bit / 2-bit: half / quarter of a byte per value (1663370 is even and divisible by 2, not by 4).
    assert Quantize(4).compressed_nbytes(CNN_PARAMS) == 13_000 + 831_685
    assert Quantize(2).compressed_nbytes(CNN_PARAMS) == 13_000 + 415_843  # ceil(1663370 / 4)
    assert Quantize(16).compressed_nbytes(CNN_PARAMS) == 13_000 + 2 * 1_663_370
    # top-k: k = ceil(fraction * P) entries of int32 index + float32 value.
    assert TopK(0.1).k(CNN_PARAMS) == 166_337
    assert TopK(0.01).k(CNN_PARAMS) == 16_634  # 16633.7 rounded up
    assert TopK(0.001).k(CNN_PARAMS) == 1_664  # 1663.37 rounded up
    assert TopK(0.01).compressed_nbytes(CNN_PARAMS) == 16_634 * 8
    assert TopK(0.07).k(100) == 7  # the decimal 0.07, not its binary value 0.0700000000000000067
    assert TopK(1e-9).k(5) == 1
    assert Quantize(8).ratio(CNN_PARAMS) == pytest.approx(4 * 1_663_370 / 1_676_370)
    assert TopK(0.01).ratio(CNN_PARAMS) == pytest.approx(4 * 1_663_370 / 133_072)  # ≈ 50


def test_topk_indices_widen_to_int64_from_two_to_the_31():
    assert TopK(0.5).compressed_nbytes(2**31 - 1) == 2**30 * 8
    assert TopK(0.5).compressed_nbytes(2**31) == 2**30 * 12
    assert TopK.index_dtype(2**31) == torch.int64


# ----------------------------------------------------------------------------- quantization
def test_code_packing_by_hand():
    # 2 bits, low bits first: codes [0, 1, 3, 2] -> 0 + 1*4 + 3*16 + 2*64 = 180; a fifth code starts byte 2.
    packed = pack_codes(torch.tensor([0, 1, 3, 2, 3]), 2)
    assert packed.tolist() == [180, 3]
    assert unpack_codes(packed, 2, 5).tolist() == [0, 1, 3, 2, 3]
    # 4 bits: [5, 12, 15] -> 5 + 12*16 = 197, then 15.
    assert pack_codes(torch.tensor([5, 12, 15]), 4).tolist() == [197, 15]
    # 16 bits, offset by -32768, little-endian: 65535 -> 0x7FFF -> [0xFF, 0x7F]; 0 -> 0x8000 -> [0x00, 0x80].
    packed = pack_codes(torch.tensor([65535, 0, 32768]), 16)
    assert packed.tolist() == [0xFF, 0x7F, 0x00, 0x80, 0x00, 0x00]
    assert unpack_codes(packed, 16, 3).tolist() == [65535, 0, 32768]


def test_quantize_by_hand_on_a_small_block():
    # One block [0, 1, 3, 2.5] at 2 bits: lo = 0, hi = 3, L = 3 levels, step 1. 0, 1, 3 lie on the grid
    # and are sent exactly; 2.5 is code 2 or 3 with probability 1/2 each.
    q = Quantize(bits=2, block_size=4)
    x = torch.tensor([0.0, 1.0, 3.0, 2.5])
    ups = 0
    n = 400
    for i in range(n):
        payload = q.compress(x, gen("hand", i))
        assert payload.lo.tolist() == [0.0] and payload.step.tolist() == [1.0]
        codes = unpack_codes(payload.codes, 2, 4).tolist()
        assert codes[:3] == [0, 1, 3] and codes[3] in (2, 3)
        ups += codes[3] == 3
        assert q.decompress(payload)[:3].tolist() == [0.0, 1.0, 3.0]
    # Binomial(400, 1/2): sd 10; 5 sd either side.
    assert abs(ups - n / 2) <= 5 * math.sqrt(n / 4)


def test_quantize_blocks_and_a_constant_block():
    # Blocks of 2 at 2 bits: [-1, 1] has lo -1, step 2/3 and both ends on the grid; [10, 10] is constant
    # (step 0) and decodes exactly; the last block [7] is partial.
    q = Quantize(bits=2, block_size=2)
    x = torch.tensor([-1.0, 1.0, 10.0, 10.0, 7.0])
    payload = q.compress(x, gen("blocks"))
    assert payload.lo.tolist() == [-1.0, 10.0, 7.0]
    assert payload.step.tolist() == pytest.approx([2 / 3, 0.0, 0.0])
    assert unpack_codes(payload.codes, 2, 5).tolist() == [0, 3, 0, 0, 0]
    assert q.decompress(payload).tolist() == [-1.0, 1.0, 10.0, 10.0, 7.0]
    assert q.compressed_nbytes(5) == 3 * 8 + 2  # 5 codes of 2 bits in 2 bytes


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_quantization_error_is_within_one_step_of_its_block(bits):
    q = Quantize(bits=bits, block_size=100)
    g = gen("bound-data", bits)
    # Blocks of very different scales, a partial last block, and an offset (not centred at 0).
    x = torch.cat([torch.randn(300, generator=g) * s for s in (1e-4, 1.0, 1e3)] + [torch.rand(50, generator=g) + 5])
    payload = q.compress(x, gen("bound", bits))
    x_hat = q.decode(q.encode(payload), x.numel())
    block = torch.arange(x.numel()) // 100
    blocks = torch.cat([x, x[-1:].expand(50)]).view(-1, 100)
    step = (blocks.amax(1).double() - blocks.amin(1).double()) / (2**bits - 1)  # the formula, independently
    err = (x_hat.double() - x.double()).abs()
    # One step, plus float32 rounding of lo + q * step (a few ulps of the block's magnitude).
    slack = 4 * torch.finfo(torch.float32).eps * blocks.abs().amax(1).double()
    assert (err <= (step + slack)[block]).all()
    assert (err > 0.25 * step[block]).any()  # the bound is not vacuous: errors of a sizeable part of a step


@pytest.mark.parametrize("bits", [2, 8])
def test_quantization_is_unbiased_over_many_draws(bits):
    q = Quantize(bits=bits, block_size=16)
    x = torch.randn(64, generator=gen("unbiased-data")) * 3
    n = 1000
    total = torch.zeros(64, dtype=torch.float64)
    for i in range(n):
        total += q.decompress(q.compress(x, gen("unbiased", bits, i))).double()
    mean = total / n
    # Per coordinate the decoded value is lo + step * (floor(v) + Bernoulli(p)), p = v - floor(v):
    # standard deviation step * sqrt(p (1 - p)); the mean of n draws has sd that / sqrt(n).
    blocks = x.double().view(-1, 16)
    lo = blocks.amin(1, keepdim=True)
    step = (blocks.amax(1, keepdim=True) - lo) / (2**bits - 1)
    v = (blocks - lo) / step
    p = (v - v.floor()).view(-1)
    step = step.expand(-1, 16).reshape(-1)
    sd_of_mean = step * torch.sqrt(p * (1 - p) / n)
    # 5 sd, plus float32 rounding of lo + q * step (a few ulps of the block's magnitude).
    ulps = 4 * torch.finfo(torch.float32).eps * blocks.abs().amax(1, keepdim=True).expand(-1, 16).reshape(-1)
    tol = 5 * sd_of_mean + ulps
    assert ((mean - x.double()).abs() <= tol).all()
    # The test has power: rounding to the nearest level (biased) fails it.
    nearest = lo.view(-1, 1).expand(-1, 16).reshape(-1) + v.round().view(-1) * step
    assert ((nearest - x.double()).abs() > tol).sum() > 32


def test_quantize_needs_a_generator_and_finite_values():
    with pytest.raises(ValueError, match="Generator"):
        Quantize().compress(torch.ones(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        Quantize().compress(torch.tensor([1.0, float("nan")]), gen("nan"))
    with pytest.raises(ValueError, match="NaN or inf"):
        TopK(0.5).compress(torch.tensor([1.0, float("inf")]))


def test_quantize_draws_are_a_function_of_the_generator_seed():
    x = torch.randn(500, generator=gen("seeded"))
    a = Quantize(4).compress(x, client_generator(7, 3, 11))
    b = Quantize(4).compress(x, client_generator(7, 3, 11))
    c = Quantize(4).compress(x, client_generator(7, 3, 12))
    assert torch.equal(a.codes, b.codes) and not torch.equal(a.codes, c.codes)


# ----------------------------------------------------------------------------- top-k
def test_topk_picks_the_largest_magnitudes_lower_index_first_on_ties():
    x = torch.tensor([0.5, -3.0, 2.0, -2.0, 1.0])
    # k = ceil(0.4 * 5) = 2: |-3| first, then the tie |2| = |-2| goes to index 2.
    payload = TopK(0.4).compress(x)
    assert payload.indices.tolist() == [1, 2] and payload.values.tolist() == [-3.0, 2.0]
    assert payload.indices.dtype == torch.int32 and payload.values.dtype == torch.float32
    assert TopK(0.4).decompress(payload).tolist() == [0.0, -3.0, 2.0, 0.0, 0.0]
    # k = ceil(0.5 * 5) = 3: both of the tie.
    assert TopK(0.5).compress(x).indices.tolist() == [1, 2, 3]
    # All equal magnitudes: the first k indices.
    assert TopK(0.5).compress(torch.tensor([1.0, -1.0, 1.0, -1.0])).indices.tolist() == [0, 1]


def test_topk_selection_against_a_sort():
    x = torch.randn(10_000, generator=gen("topk-sort"))
    payload = TopK(0.03).compress(x)
    expected = torch.argsort(x.abs(), descending=True, stable=True)[:300].sort().values  # distinct magnitudes
    assert payload.indices.long().tolist() == expected.tolist()


def test_topk_refuses_indices_out_of_range():
    c = TopK(0.5)
    buffer = c.encode(c.compress(torch.arange(4.0)))
    buffer[:4] = torch.tensor([4], dtype=torch.int32).view(torch.uint8)  # first index := 4, P = 4
    with pytest.raises(ValueError, match="outside"):
        c.decode(buffer, 4)


def test_topk_fraction_one_decodes_to_exactly_the_input():
    x = torch.tensor([0.0, -0.0, 1e-45, -3.4e38, 1.0 / 3.0, float(torch.finfo(torch.float32).tiny)])
    x = torch.cat([x, torch.randn(1000, generator=gen("exact"))])
    c = TopK(1.0)
    y = c.decode(c.encode(c.compress(x)), x.numel())
    assert torch.equal(y.view(torch.int32), x.view(torch.int32))  # bit for bit, signed zero included


# ----------------------------------------------------------------------------- wire
@pytest.mark.parametrize("numel", [1, 7, 1025])
@pytest.mark.parametrize(
    "compressor", [Quantize(2, 8), Quantize(4, 8), Quantize(8, 8), Quantize(16, 8), TopK(0.3), TopK(1.0)]
)
def test_wire_buffers_have_the_promised_size_and_decode_to_the_payload(compressor, numel):
    x = torch.randn(numel, generator=gen("wire", numel))
    payload = compressor.compress(x, gen("wire-draws", numel))
    buffer = compressor.encode(payload)
    assert buffer.dtype == torch.uint8 and buffer.shape == (compressor.compressed_nbytes(numel),)
    assert torch.equal(compressor.decode(buffer, numel), compressor.decompress(payload))
    # A buffer at an odd offset of a larger one (as in a gathered buffer) decodes the same.
    shifted = torch.cat([torch.zeros(1, dtype=torch.uint8), buffer])[1:]
    assert torch.equal(compressor.decode(shifted, numel), compressor.decompress(payload))
    with pytest.raises(ValueError, match="bytes"):
        compressor.decode(buffer[:-1], numel)


# ----------------------------------------------------------------------------- error feedback
@pytest.mark.parametrize("compressor", [Quantize(bits=2, block_size=16), TopK(0.1)])
def test_residual_is_exactly_the_corrected_update_minus_what_was_sent(compressor):
    update = torch.randn(200, generator=gen("ef-u"))
    residual = torch.randn(200, generator=gen("ef-r")) * 0.1
    for previous in (None, residual):
        payload, new = compress_with_feedback(update, previous, compressor, gen("ef"))
        corrected = update if previous is None else update + previous
        sent = compressor.decode(compressor.encode(payload), 200)
        assert torch.equal(new, corrected - sent)
        assert new.abs().sum() > 0


def test_error_feedback_by_hand_with_top_1_of_2():
    # update [3, 1] every round, top-1 of 2 entries:
    # r1: corrected [3, 1] -> send [3, 0], residual [0, 1]
    # r2: corrected [3, 2] -> send [3, 0], residual [0, 2]
    # r3: corrected [3, 3] -> tie, lower index: send [3, 0], residual [0, 3]
    # r4: corrected [3, 4] -> send [0, 4], residual [3, 0]
    # r5: corrected [6, 1] -> send [6, 0], residual [0, 1]
    update = torch.tensor([3.0, 1.0])
    expected_sent = [[3, 0], [3, 0], [3, 0], [0, 4], [6, 0]]
    expected_residual = [[0, 1], [0, 2], [0, 3], [3, 0], [0, 1]]
    residual = None
    c = TopK(0.5)
    for sent, res in zip(expected_sent, expected_residual):
        payload, residual = compress_with_feedback(update, residual, c)
        assert c.decompress(payload).tolist() == sent
        assert residual.tolist() == res
    # Without error feedback the second coordinate is never sent.
    plain = TopK(0.5, error_feedback=False)
    for _ in range(5):
        payload, none = compress_with_feedback(update, None, plain)
        assert none is None and plain.decompress(payload).tolist() == [3, 0]


def test_error_feedback_loses_nothing_only_delays_it():
    # Σ sent + final residual = Σ updates (up to float32 rounding of the running sums).
    c = Quantize(bits=2, block_size=32)
    residual, sent_total, update_total = (
        None,
        torch.zeros(256, dtype=torch.float64),
        torch.zeros(256, dtype=torch.float64),
    )
    for t in range(20):
        update = torch.randn(256, generator=gen("telescope", t))
        payload, residual = compress_with_feedback(update, residual, c, gen("telescope-draws", t))
        sent_total += c.decompress(payload).double()
        update_total += update.double()
    assert torch.allclose(sent_total + residual.double(), update_total, atol=1e-4)


def test_without_error_feedback_a_residual_is_refused():
    with pytest.raises(ValueError, match="error_feedback=False"):
        compress_with_feedback(torch.ones(4), torch.zeros(4), TopK(0.5, error_feedback=False))


# ----------------------------------------------------------------------------- exchange
def _client_update(client: int, numel: int) -> torch.Tensor:
    return torch.randn(numel, generator=generator(0, "exchange-test", client))


def _uploads(compressor, clients, weights, numel):
    """Payloads as the clients would upload them (each with its own seeded draws)."""
    return {c: compressor.compress(_client_update(c, numel), client_generator(0, 0, c)) for c in clients}


def _reference_sum(compressor, payloads, weights, numel):
    """Σ wᵢ decompress(payloadᵢ) by ascending client key, from the payloads (no wire involved)."""
    total = torch.zeros(numel)
    for key in sorted(payloads):
        total.add_(compressor.decompress(payloads[key]), alpha=weights[key])
    return total


NUMEL = 1000
WEIGHTS = {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.15, 4: 0.25}
# Rank 0 trains clients 3, 0, 4 (in that order); rank 1 trains client 1 and rejects client 2.
SPLIT = {0: [3, 0, 4], 1: [1]}
COMPRESSORS = [Quantize(bits=4, block_size=64), TopK(0.05), TopK(1.0)]


def test_one_process_sum_is_the_weighted_sum_in_key_order():
    for compressor in COMPRESSORS:
        payloads = _uploads(compressor, [0, 1, 3, 4], WEIGHTS, NUMEL)
        uploads = CompressedUploads(compressor, NUMEL)
        for key in (3, 0, 4, 1):
            uploads.add(key, WEIGHTS[key], payloads[key])
        uploads.reject()
        result = uploads.exchange()
        assert torch.equal(result.values, _reference_sum(compressor, payloads, WEIGHTS, NUMEL))
        assert result.keys == (0, 1, 3, 4) and result.rejected == 1 and result.bytes_sent == 0
        assert result.total_weight == pytest.approx(0.7)
    # With TopK(1.0) the sum is that of the updates themselves.
    exact = _reference_sum(TopK(1.0), _uploads(TopK(1.0), [0, 1, 3, 4], WEIGHTS, NUMEL), WEIGHTS, NUMEL)
    direct = torch.zeros(NUMEL)
    for key in (0, 1, 3, 4):
        direct.add_(_client_update(key, NUMEL), alpha=WEIGHTS[key])
    assert torch.equal(exact, direct)


def test_more_uploads_than_slots_is_refused_before_any_collective():
    c = TopK(0.5)
    uploads = CompressedUploads(c, 4)
    for key in range(3):
        uploads.add(key, 0.5, c.compress(torch.ones(4)))
    with pytest.raises(ValueError, match="3 uploads on this rank but only 2 slots"):
        uploads.exchange(slots=2)


def test_duplicate_keys_are_refused():
    c = TopK(0.5)
    uploads = CompressedUploads(c, 4)
    uploads.add(1, 0.5, c.compress(torch.ones(4)))
    uploads.add(1, 0.5, c.compress(torch.ones(4)))
    with pytest.raises(ValueError, match="unique"):
        uploads.exchange()


def _exchange_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = {}
        for i, compressor in enumerate(COMPRESSORS):
            payloads = _uploads(compressor, SPLIT[rank], WEIGHTS, NUMEL)
            uploads = CompressedUploads(compressor, NUMEL)
            for key in SPLIT[rank]:
                uploads.add(key, WEIGHTS[key], payloads[key])
            if rank == 1:
                uploads.reject()
            results[i] = uploads.exchange()
            results[i, "each"] = [(key, weight, update) for key, weight, update in uploads.gather()]
        # A rank with no uploads at all, then a round where nobody uploads.
        lonely = CompressedUploads(COMPRESSORS[1], NUMEL)
        if rank == 0:
            lonely.add(2, 1.0, COMPRESSORS[1].compress(_client_update(2, NUMEL)))
        results["lonely"] = lonely.exchange()
        results["empty"] = CompressedUploads(COMPRESSORS[1], NUMEL).exchange()
        planned = CompressedUploads(COMPRESSORS[1], NUMEL)
        payloads = _uploads(COMPRESSORS[1], SPLIT[rank], WEIGHTS, NUMEL)
        for key in SPLIT[rank]:
            planned.add(key, WEIGHTS[key], payloads[key])
        sums = torch.tensor([0.5, 2.0, -1.0]) if rank == 0 else torch.tensor([10.0, 20.0, 30.0])
        results["planned"] = planned.exchange(slots=4, bookkeeping=sums)
        results["sums"] = sums
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_get_the_one_process_sum_bit_for_bit(tmp_path):
    # fork: the children inherit the imported modules (spawn would re-import torch and Lightning, ~10 s).
    mp.start_processes(
        _exchange_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for i, compressor in enumerate(COMPRESSORS):
        payloads = _uploads(compressor, [0, 1, 3, 4], WEIGHTS, NUMEL)
        single = CompressedUploads(compressor, NUMEL)
        for key in (0, 1, 3, 4):
            single.add(key, WEIGHTS[key], payloads[key])
        expected = _reference_sum(compressor, payloads, WEIGHTS, NUMEL)
        assert torch.equal(single.exchange().values, expected)
        for result in (r[i] for r in ranks):
            assert torch.equal(result.values, expected)
            assert result.keys == (0, 1, 3, 4) and result.rejected == 1
            assert result.total_weight == sum(WEIGHTS[k] for k in (0, 1, 3, 4))
            # Without slots: the counts (16 bytes), then blocks of counts + max(3, 1) = 3 records; W - 1 = 1.
            assert result.bytes_sent == 16 + 16 + 3 * record_nbytes(compressor, NUMEL)
            assert result.bytes_sent == exchange_bytes(3, compressor, NUMEL, 2, counts_first=True)
        for each in (r[i, "each"] for r in ranks):  # every client's decoded update, for robust rules
            assert [(key, weight) for key, weight, _ in each] == [(k, WEIGHTS[k]) for k in (0, 1, 3, 4)]
            for key, _, update in each:
                assert torch.equal(update, compressor.decompress(payloads[key]))
    for r in ranks:
        assert r["lonely"].keys == (2,) and r["lonely"].bytes_sent == 32 + record_nbytes(COMPRESSORS[1], NUMEL)
        assert torch.equal(
            r["lonely"].values, COMPRESSORS[1].decompress(COMPRESSORS[1].compress(_client_update(2, NUMEL)))
        )
        assert r["empty"].keys == () and r["empty"].bytes_sent == 32 and not r["empty"].values.any()
        # With slots known and the caller's sums along: one collective, the sums added over ranks.
        planned = r["planned"]
        assert torch.equal(planned.values, ranks[0][1].values) and planned.keys == (0, 1, 3, 4)
        assert planned.bytes_sent == 16 + 16 + 4 * record_nbytes(COMPRESSORS[1], NUMEL)
        assert planned.bytes_sent == exchange_bytes(4, COMPRESSORS[1], NUMEL, 2, bookkeeping_nbytes=12)
        assert r["sums"].tolist() == [0.5 + 10.0, 2.0 + 20.0, -1.0 + 30.0]


def test_byte_formulas_by_hand():
    assert bytes_sent(1000, 1) == 0 and bytes_sent(1000, 2) == 1000 and bytes_sent(1000, 4) == 3000
    assert allreduce_bytes(CNN_PARAMS + 2, 2) == 6_653_488  # docs/benchmarks.md, "formula" column
    assert allreduce_bytes(10, 4) == 60  # 2 * 3 / 4 * 40
    # record: 16-byte header + payload, padded to 8: 8-bit CNN 16 + 1676370 = 1676386 -> 1676392.
    assert record_nbytes(Quantize(8), CNN_PARAMS) == 1_676_392
    # 100 clients on 2 processes, 50 each: 16 + 50 records.
    assert exchange_bytes(50, Quantize(8), CNN_PARAMS, 2) == 16 + 50 * 1_676_392
    assert exchange_bytes(50, Quantize(8), CNN_PARAMS, 1) == 0
