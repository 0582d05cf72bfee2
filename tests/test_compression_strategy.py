"""Compressed updates inside FedAvgStrategy (issue 13, acceptance 1 and 5): each client uploads its
compressed update, the residual stays with the client for its next round, 1 and 2 processes agree and a
resume is exact. The compressors themselves are tested against hand computations in test_compression.py."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_robust_strategy import MODULE, SETTINGS, apply, round_zero_updates

from fl_testing import TinyData, fit_in_process, float_state, max_abs_diff, net_state, run_script, seeded_module
from lightning_fl import (
    CentralDP,
    FedAdam,
    FedAvgM,
    FedAvgStrategy,
    FederatedConfigError,
    FedNova,
    FedProx,
    Median,
    Quantize,
    Scaffold,
    SecureAggregation,
    TopK,
)
from lightning_fl.federated.compression import allreduce_bytes, client_generator, exchange_bytes
from lightning_fl.federated.sampling import sample_clients


def fit(rounds=1, **kwargs):
    module = seeded_module(**MODULE)
    trainer = fit_in_process(FedAvgStrategy(**SETTINGS, **kwargs), module, TinyData(), rounds)
    return float_state(module.net), trainer


def test_top_k_with_every_entry_is_fedavg():
    plain, _ = fit(rounds=2)
    for feedback in (True, False):
        got, _ = fit(rounds=2, compression=TopK(fraction=1.0, error_feedback=feedback))
        assert max_abs_diff(got, plain) <= 1e-6


@pytest.mark.parametrize(
    "parts",
    [dict(client_algorithm=Scaffold(), server_optimizer=FedAdam(lr=0.05)), dict(client_algorithm=FedNova(),
                                                                               server_optimizer=FedAvgM(lr=1.0, momentum=0.9))],
    ids=["scaffold+fedadam", "fednova+fedavgm"],
)
def test_composes_with_client_algorithms_and_server_optimizers(parts):
    """Compression sits between the client algorithm's update and the server optimizer: with every entry
    sent, the composed run is the uncompressed one; 8-bit stays within its quantization error of it."""
    plain, _ = fit(rounds=3, **parts)
    exact, _ = fit(rounds=3, compression=TopK(fraction=1.0), **parts)
    assert max_abs_diff(exact, plain) <= 1e-6
    quantized, _ = fit(rounds=3, compression=Quantize(bits=8), **parts)
    assert 0 < max_abs_diff(quantized, plain) <= 0.02


@pytest.mark.parametrize("compressor", [TopK(fraction=0.1), Quantize(bits=8, block_size=64)], ids=["topk", "q8"])
def test_the_round_sums_what_each_client_uploads(compressor):
    ids, sizes, updates, start = round_zero_updates()
    sampled = sample_clients(8, 6, SETTINGS["seed"], 0)
    w = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
    # Each client's upload decoded by hand, summed in the round's sampled order.
    decoded = {
        cid: compressor.decompress(compressor.compress(u, client_generator(SETTINGS["seed"], 0, cid)))
        for cid, u in zip(ids, updates)
    }
    order = sorted(range(len(ids)), key=lambda i: sampled.index(ids[i]))
    expected = sum(w[i] * decoded[ids[i]] for i in order)
    got, _ = fit(compression=compressor)
    assert max_abs_diff(got, apply(start, expected)) <= 1e-6


def test_error_feedback_keeps_the_unsent_part_with_the_client(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="r{epoch}",
                           auto_insert_metric_name=False)
    fit_in_process(FedAvgStrategy(**SETTINGS, compression=TopK(fraction=0.1), client_state_dir=str(tmp_path / "s")),
                   seeded_module(**MODULE), TinyData(), 1, callbacks=[ckpt], enable_checkpointing=True)
    ids, _sizes, updates, _start = round_zero_updates()
    for cid, u in zip(ids, updates):
        residual = torch.load(tmp_path / "r0.ckpt.client_state" / "compression_residual" / f"client_{cid}.pt")
        sent = TopK(fraction=0.1).decompress(TopK(fraction=0.1).compress(u))
        assert torch.allclose(residual, u - sent, atol=1e-7)  # residual = update − what was sent
        assert 0 < (sent != 0).sum() <= TopK(fraction=0.1).k(u.numel()) and residual.abs().sum() > 0


def test_resume_is_bit_exact_with_residuals(tmp_path):
    def strategy():
        return FedAvgStrategy(**SETTINGS, compression=Quantize(bits=4, block_size=32), client_algorithm=FedProx(0.1),
                              client_state_dir=str(tmp_path / "live"))

    straight = seeded_module(**MODULE)
    fit_in_process(strategy(), straight, TinyData(), 4)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="r{epoch}",
                           auto_insert_metric_name=False)
    fit_in_process(strategy(), seeded_module(**MODULE), TinyData(), 2, callbacks=[ckpt], enable_checkpointing=True)
    resumed = seeded_module(**MODULE)
    fit_in_process(strategy(), resumed, TinyData(), 4, ckpt_path=str(tmp_path / "r1.ckpt"))
    assert max_abs_diff(float_state(straight.net), float_state(resumed.net)) == 0.0


@pytest.mark.distributed
def test_two_processes_equal_one_and_count_the_bytes_they_send(tmp_path):
    parts = {"compression": ["TopK", {"fraction": 0.1}]}
    settings = dict(SETTINGS, client_state_dir=str(tmp_path / "state"))
    two = run_script(tmp_path, 2, settings, {"parts": parts, "module": MODULE, "rounds": 2})
    assert two["rank_spread"] == 0.0
    one, _ = fit(rounds=2, compression=TopK(fraction=0.1), client_state_dir=str(tmp_path / "state1"))
    assert max_abs_diff(net_state(two["state"]), one) <= 1e-6
    numel = sum(v.numel() for v in one.values())
    # One all-gather a round: per rank [counts | the round's 4 float32 sums (Σ w, rejected, clients, failed) |
    # slots records], slots = the most clients one rank trains (3 to 6 of the round's 6 on 2 ranks).
    sent = two["metrics"]["fl/comm_bytes"]
    assert sent in {exchange_bytes(s, TopK(0.1), numel, 2, bookkeeping_nbytes=16) for s in range(3, 7)}
    assert sent < allreduce_bytes(numel + 4, 2)  # less than the uncompressed round would send


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: TopK(fraction=0), r"TopK: fraction must be in \(0, 1\]"),
        (lambda: Quantize(bits=3), "Quantize: bits must be one of"),
        (lambda: FedAvgStrategy(compression="topk"), "compression must be None, Quantize"),
        (lambda: FedAvgStrategy(compression=TopK(0.1), secure_aggregation=SecureAggregation()), "secure_aggregation"),
        (lambda: FedAvgStrategy(compression=TopK(0.1), privacy=CentralDP(1.0, 1.0)), "privacy"),
        (lambda: FedAvgStrategy(compression=TopK(0.1), aggregator=Median()), "aggregator"),
    ],
)
def test_bad_settings_are_one_line_errors(make, message):
    with pytest.raises(FederatedConfigError, match=message) as info:
        make()
    assert "\n" not in str(info.value)
