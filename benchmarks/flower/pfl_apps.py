"""The workload on pfl-research (Apple's simulator, ``pfl`` 0.6, PyTorch backend).

Runs only in pfl's own virtualenv (``setup_pfl_env.sh``); pfl is never a dependency of lightning_fl and this
module is imported only by a ``pfl`` worker. What runs is pfl's stock single-process simulation:
``FederatedAveraging().run(...)`` with a ``SimulatedBackend`` over a ``FederatedDataset``, a
``PyTorchModel`` (local ``torch.optim.SGD`` at the shared learning rate, central SGD with lr 1.0, i.e. the
averaged model difference is added to the global model), ``WeightByDatapoints`` (the sample-size-weighted
average, like the other frameworks), and ``CentralEvaluationCallback`` on the test set after every round.

Same work as the plain loop: the user sampler hands out exactly the clients
``lightning_fl.federated.sampling.sample_clients`` draws for each round, and a client's dataset holds its
partition in lightning_fl's per-epoch batch order (``epoch_permutation``), so pfl's in-order batching of
B = 10 gives the plain loop's batches. The model starts from the same seeded McMahanCNN weights.

Timing marks use pfl's own extension points: ``get_next_central_contexts`` (round begins) and
``process_aggregated_statistics`` (round trained: aggregation done and the model updated) of a
``FederatedAveraging`` subclass that only adds the marks, and a callback after the central evaluation (round
end); the central evaluation skips pfl's evaluation of the initial model before training, as the other
frameworks do not evaluate it. pfl evaluates every trained user before and after local training in the rounds where
``iteration % evaluation_frequency == 0``; iteration 0 is always one of them, so the benchmark's warm-up
round pays that, and ``evaluation_frequency`` is set past the last round so that no measured round does.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Optional

import torch
import torch.nn.functional as F
from pfl.aggregate.simulate import SimulatedBackend
from pfl.aggregate.weighting import WeightByDatapoints
from pfl.algorithm.base import NNAlgorithmParams
from pfl.algorithm.federated_averaging import FederatedAveraging
from pfl.callback.base import TrainingProcessCallback
from pfl.callback.central_evaluation import CentralEvaluationCallback
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.hyperparam.base import NNEvalHyperParams, NNTrainHyperParams
from pfl.metrics import Metrics, Weighted
from pfl.model.pytorch import PyTorchModel
from torch import Tensor, nn
from workloads import EVAL_BATCH, RoundClock, Spec, initial_net, load_test, load_train, partition_of, sampled

from lightning_fl.federated.sampling import epoch_permutation

ACC_NAME = "Central val | accuracy"


class PflCNN(nn.Module):
    """McMahanCNN with the two methods pfl's ``PyTorchModel`` calls: ``loss`` and ``metrics``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        self.train()
        return F.cross_entropy(self.net(x), y)

    @torch.no_grad()
    def metrics(self, x: Tensor, y: Tensor) -> dict[str, Weighted]:
        self.eval()
        logits = self.net(x)
        n = len(y)
        return {
            "loss": Weighted(float(F.cross_entropy(logits, y, reduction="sum")), n),
            "accuracy": Weighted(int((logits.argmax(1) == y).sum()), n),
        }


class EpochOrderDataset(Dataset):
    """A client's data (``x[idx]``, ``y[idx]``) whose e-th pass is in lightning_fl's e-th epoch order.

    With E = 1 this is an ordinary ``Dataset`` over the permuted tensors; for E > 1 each call of ``iter``
    (pfl calls it once per local epoch) re-orders by the next epoch's permutation, as the plain loop does.
    """

    def __init__(self, spec: Spec, x: Tensor, y: Tensor, idx: Tensor, round_idx: int, client: int) -> None:
        self._spec, self._x, self._y, self._idx = spec, x, y, idx
        self._round, self._client, self._epoch = round_idx, client, 0
        super().__init__(self._ordered(0), user_id=f"{round_idx}:{client}")

    def _ordered(self, epoch: int) -> tuple[Tensor, Tensor]:
        s = self._spec
        order = self._idx[epoch_permutation(len(self._idx), s.seed, self._round, self._client, epoch)]
        return self._x[order], self._y[order]

    def iter(self, batch_size: Optional[int]):  # noqa: A003 - pfl's name
        # Only training passes (batch size B) count as epochs: in its evaluation rounds pfl also iterates the
        # user's data (with the evaluation batch size) before and after training, in any order.
        if batch_size == self._spec.batch_size:
            if self._epoch > 0:  # a later local epoch: the next permutation (the batch cache is rebuilt)
                self._raw_data, self._batches = self._ordered(self._epoch), {}
            self._epoch += 1
        yield from super().iter(batch_size)


class AfterRoundsEvaluation(CentralEvaluationCallback):
    """pfl's central evaluation (its ``_eval``) after every round, the first included, and not of the initial
    model before training: pfl evaluates that one instead of the first round's result, the other frameworks
    evaluate only after rounds (Flower's round-0 evaluation is skipped too)."""

    def on_train_begin(self, *, model: Any) -> Metrics:
        return Metrics()

    def after_central_iteration(self, aggregate_metrics: Any, model: Any, *, central_iteration: int) -> Any:
        return self._eval(model)


def run_pfl(spec: Spec, clock: RoundClock) -> None:
    logging.getLogger("pfl").setLevel(logging.WARNING)
    x, y = load_train(spec)
    partition = partition_of(spec)

    # The sampler yields (round, client) in the order the other frameworks train them; pfl asks it for
    # exactly `train_cohort_size` users per central iteration (one worker, no overshoot).
    schedule = ((r, c) for r in itertools.count() for c in sampled(spec, r))

    def sample_user() -> tuple[int, int]:
        return next(schedule)

    def make_dataset(user: tuple[int, int]) -> Dataset:
        r, c = user
        clock.client_started()
        idx = partition.client(c)
        if spec.local_epochs == 1:
            order = idx[epoch_permutation(len(idx), spec.seed, r, c, 0)]
            return Dataset((x[order], y[order]), user_id=f"{r}:{c}")
        return EpochOrderDataset(spec, x, y, idx, r, c)

    train_data = FederatedDataset(make_dataset, sample_user)

    net = PflCNN(initial_net(spec))
    model = PyTorchModel(
        model=net,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
    )

    class MarkedFedAvg(FederatedAveraging):
        """pfl's FedAvg, unchanged, with the benchmark's round marks."""

        def get_next_central_contexts(self, model: Any, iteration: int, algorithm_params: Any, *args: Any) -> Any:
            if iteration < algorithm_params.central_num_iterations:
                clock.round_begin()
            return super().get_next_central_contexts(model, iteration, algorithm_params, *args)

        def process_aggregated_statistics(self, *args: Any, **kwargs: Any) -> Any:
            result = super().process_aggregated_statistics(*args, **kwargs)
            clock.round_trained()
            return result

    class RoundEnd(TrainingProcessCallback):
        def after_central_iteration(self, aggregate_metrics: Any, model: Any, *, central_iteration: int) -> Any:
            if spec.evaluate:
                clock.test_acc = float(aggregate_metrics.to_simple_dict()[ACC_NAME])
            clock.round_end()
            return False, Metrics()

    callbacks: list[TrainingProcessCallback] = []
    if spec.evaluate:
        xte, yte = load_test(spec)
        callbacks.append(AfterRoundsEvaluation(Dataset((xte, yte)), NNEvalHyperParams(local_batch_size=EVAL_BATCH)))
    callbacks.append(RoundEnd())

    MarkedFedAvg().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=spec.total_rounds,
            evaluation_frequency=spec.total_rounds + 1,  # per-user evaluation only in iteration 0 (warm-up)
            train_cohort_size=spec.per_round,
            val_cohort_size=None,
        ),
        backend=SimulatedBackend(training_data=train_data, val_data=train_data, postprocessors=[WeightByDatapoints()]),
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=spec.lr, local_num_epochs=spec.local_epochs, local_batch_size=spec.batch_size
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=EVAL_BATCH),
        callbacks=callbacks,
        send_metrics_to_platform=False,
    )
    clock.threads = torch.get_num_threads()
    clock.final_weights(net.net)
