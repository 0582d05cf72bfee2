"""Acceptance 2 and 3: the strategy equals an independent plain-PyTorch FedAvg loop, on 1 and 2 processes."""

import functools

import pytest
import torch
from torch import nn

from fl_testing import (
    SILO_SIZES,
    TinyData,
    fedavgm_server,
    fit_in_process,
    float_state,
    max_abs_diff,
    net_state,
    reference_fedavg,
    run_script,
    seeded_module,
    silo_dataset,
)
from lightning_fl import FedAvgStrategy
from lightning_fl.federated.partition import Partition, make_partition

# Unequal client sizes (Dirichlet), a per-round LR schedule, BatchNorm (float and integer buffers),
# drop_last (so some clients may be too small to train), several local epochs, partial participation.
SETTINGS = dict(num_clients=7, clients_per_round=4, local_epochs=2, partition="dirichlet", alpha=0.5, seed=3)
MODULE = dict(gamma=0.9)
DATA = dict(batch_size=8, drop_last=True)
ROUNDS = 3


def reference(**overrides):
    data = TinyData(**DATA)
    kwargs = dict(
        rounds=ROUNDS, local_epochs=2, batch_size=8, lr=0.1, partition="dirichlet", alpha=0.5, seed=3,
        num_clients=7, clients_per_round=4, gamma=0.9, drop_last=True,
    )
    kwargs.update(overrides)
    return reference_fedavg(seeded_module(**MODULE).net, data.train_set, **kwargs)


def test_partitions_in_this_setting_really_are_unequal():
    y = TinyData().train_set.tensors[1]
    sizes = make_partition("dirichlet", len(y), 7, 3, labels=y, alpha=0.5).sizes().tolist()
    assert len(set(sizes)) > 3, sizes


def test_one_process_matches_plain_pytorch_fedavg():
    module = seeded_module(**MODULE)
    fit_in_process(FedAvgStrategy(**SETTINGS), module, TinyData(**DATA), ROUNDS)
    ref = reference()
    assert max_abs_diff(float_state(module.net), float_state(ref)) <= 1e-5
    # integer buffers: BatchNorm's counter keeps the maximum over the round's clients
    assert module.net[1].num_batches_tracked == ref[1].num_batches_tracked


@pytest.mark.distributed
def test_two_processes_match_plain_pytorch_fedavg_and_one_process(tmp_path):
    two = run_script(tmp_path, 2, SETTINGS, {"module": MODULE, "data": DATA, "rounds": ROUNDS})
    assert two["world_size"] == 2
    assert two["rank_spread"] == 0.0  # every rank holds the same global model
    got = {k: v for k, v in net_state(two["state"]).items() if v.is_floating_point()}
    ref = reference()
    assert max_abs_diff(got, float_state(ref)) <= 1e-5
    one = seeded_module(**MODULE)
    fit_in_process(FedAvgStrategy(**SETTINGS), one, TinyData(**DATA), ROUNDS)
    assert max_abs_diff(got, float_state(one.net)) <= 1e-5
    assert two["lr"][0] == pytest.approx(0.1 * 0.9**ROUNDS)


def test_fedavgm_server_matches_hand_written_momentum():
    module = seeded_module(**MODULE)
    server = functools.partial(torch.optim.SGD, lr=0.7, momentum=0.9)
    fit_in_process(FedAvgStrategy(server_optimizer=server, **SETTINGS), module, TinyData(**DATA), ROUNDS)
    ref = reference(server_step=fedavgm_server(lr=0.7, momentum=0.9))
    assert max_abs_diff(float_state(module.net), float_state(ref)) <= 1e-5


@pytest.mark.distributed
def test_silo_mode_two_processes_each_with_its_own_data(tmp_path):
    result = run_script(
        tmp_path, 2, {"partition": "silo", "local_epochs": 2, "seed": 5},
        {"data": {"silo": True, "batch_size": 8, "drop_last": True}, "module": MODULE, "rounds": ROUNDS},
    )
    assert result["rank_spread"] == 0.0
    silos = [silo_dataset(r) for r in range(2)]
    x = torch.cat([s.tensors[0] for s in silos])
    y = torch.cat([s.tensors[1] for s in silos])
    parts = Partition.from_parts([torch.arange(SILO_SIZES[0]), SILO_SIZES[0] + torch.arange(SILO_SIZES[1])])
    # The silo's client id is its rank, and each silo's shuffles index its own data from 0.
    ref = reference_fedavg(
        seeded_module(**MODULE).net, torch.utils.data.TensorDataset(x, y), rounds=ROUNDS, num_clients=2,
        clients_per_round=2, local_epochs=2, batch_size=8, lr=0.1, seed=5, gamma=0.9, drop_last=True,
        partition_obj=parts,
    )
    got = {k: v for k, v in net_state(result["state"]).items() if v.is_floating_point()}
    assert max_abs_diff(got, float_state(ref)) <= 1e-5


def test_one_client_full_batch_one_local_epoch_is_centralized_gradient_descent():
    data = TinyData(n=64, batch_size=64)
    module = seeded_module()
    fit_in_process(FedAvgStrategy(num_clients=1, local_epochs=1), module, data, rounds=4)
    central = seeded_module().net
    opt = torch.optim.SGD(central.parameters(), lr=0.1)
    x, y = data.train_set.tensors
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(central(x), y).backward()
        opt.step()
    assert max_abs_diff(float_state(module.net), float_state(central)) <= 1e-5


def test_default_server_is_plain_averaging():
    plain, sgd1 = seeded_module(), seeded_module()
    fit_in_process(FedAvgStrategy(**SETTINGS), plain, TinyData(**DATA), 2)
    server = functools.partial(torch.optim.SGD, lr=1.0)
    fit_in_process(FedAvgStrategy(server_optimizer=server, **SETTINGS), sgd1, TinyData(**DATA), 2)
    assert max_abs_diff(float_state(plain.net), float_state(sgd1.net)) <= 1e-6
