import copy
import functools

import pytest
import torch
from torch import nn

from lightning_fl.federated.aggregation import WeightedSum, all_finite, weighted_average
from lightning_fl.federated.server_update import ServerUpdate, pseudo_gradient
from lightning_fl.model_state import FlatModelState


def test_weighted_average_matches_the_fedavg_formula():
    a, b, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0]), torch.tensor([0.0, 10.0])
    got = weighted_average([a, b, c], [1, 3, 6])
    assert torch.allclose(got, (1 * a + 3 * b + 6 * c) / 10)
    with pytest.raises(ValueError):
        weighted_average([a], [0])


def test_streaming_sum_equals_the_formula_and_counts_rejections():
    vectors = [torch.randn(7) for _ in range(5)]
    weights = [3.0, 1.0, 4.0, 1.0, 5.0]
    acc = WeightedSum(7, dtype=torch.float64)
    for v, w in zip(vectors, weights):
        acc.add_parts_([v[:3], v[3:].view(2, 2)], w)
    acc.reject_()
    assert acc.rejected == 1 and acc.total_weight == sum(weights)
    assert torch.allclose(acc.average_(), weighted_average(vectors, weights).double())
    empty = WeightedSum(3)
    assert empty.average_() is None


def test_all_finite_detects_nan_and_inf():
    assert all_finite([torch.ones(3), torch.zeros(2, 2)])
    assert not all_finite([torch.ones(3), torch.tensor([1.0, float("nan")])])
    assert not all_finite([torch.tensor([float("inf")])])


def test_default_server_step_is_exact_averaging_and_sgd_lr1_matches_it():
    g = torch.tensor([1.0, 2.0, 3.0])
    avg = torch.tensor([0.1, 0.7, 2.9])
    plain = ServerUpdate()
    plain.bind(g)
    plain.step(avg)
    assert torch.equal(g, avg)
    g2 = torch.tensor([1.0, 2.0, 3.0])
    sgd = ServerUpdate(functools.partial(torch.optim.SGD, lr=1.0))
    sgd.bind(g2)
    sgd.step(avg)
    assert torch.allclose(g2, avg, atol=1e-7)


def test_fedavgm_follows_the_momentum_recursion():
    # FedAvgM (Hsu et al.): v <- beta * v + delta, theta <- theta - lr * v, with delta = theta - average
    beta, lr = 0.9, 0.5
    theta = torch.tensor([1.0, -1.0])
    server = ServerUpdate(functools.partial(torch.optim.SGD, lr=lr, momentum=beta))
    server.bind(theta)
    ref, v = theta.clone(), torch.zeros(2)
    for avg in (torch.tensor([0.5, 0.0]), torch.tensor([0.2, 0.4]), torch.tensor([0.0, 0.0])):
        delta = pseudo_gradient(ref, avg)
        v = beta * v + delta
        ref = ref - lr * v
        server.step(avg)
        assert torch.allclose(theta, ref, atol=1e-6)


def test_server_state_round_trips_through_state_dict():
    theta = torch.tensor([1.0, 2.0])
    server = ServerUpdate(functools.partial(torch.optim.Adam, lr=0.1))
    server.bind(theta)
    server.step(torch.tensor([0.0, 0.0]))
    state = copy.deepcopy(server.state_dict())  # as a checkpoint would serialize it
    theta_copy = theta.clone()
    restored = ServerUpdate(functools.partial(torch.optim.Adam, lr=0.1))
    restored.bind(theta_copy)
    restored.load_state_dict(state)
    server.step(torch.tensor([0.5, 0.5]))
    restored.step(torch.tensor([0.5, 0.5]))
    assert torch.equal(theta, theta_copy)


def test_flat_model_state_covers_float_buffers_and_keeps_int_buffers_apart():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    state = FlatModelState(net)
    assert state.numel == 3 * 4 + 4 + 4 + 4 + 4 + 4  # weight, bias, bn weight, bn bias, mean, var
    assert state.int_numel == 1
    flat = state.pack()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    state.unpack(flat)
    assert torch.equal(state.pack(), flat)
    out = torch.tensor([5])
    net[1].num_batches_tracked.fill_(3)
    state.max_ints_into(out)
    assert out.item() == 5
    net[1].num_batches_tracked.fill_(9)
    state.max_ints_into(out)
    assert out.item() == 9
