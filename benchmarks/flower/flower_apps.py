"""The workload on Flower's simulation engine (Message API: ServerApp + ClientApp, Ray backend).

Two ClientApps: ``plain_client`` trains with the same hand-written loop as the plain baseline;
``lightning_client`` builds a Lightning ``Trainer`` per round and calls ``fit`` (the pattern of Flower's
PyTorch Lightning example). The server samples the same clients as the other frameworks
(``lightning_fl.federated.sampling.sample_clients``) and tells each virtual node which client's data to train on
through the message's config, so the work per round is identical across frameworks.

Imported by name in Ray workers (the parent puts this folder on PYTHONPATH).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable
from typing import Optional

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from workloads import (
    RoundClock,
    Spec,
    evaluate,
    initial_net,
    load_test,
    load_train,
    make_module,
    partition_of,
    sampled,
    train_client,
)


def _client_setup(msg: Message) -> tuple[Spec, int, int]:
    STARTED[0] = time.time()
    cfg = msg.content["config"]
    spec = Spec.from_json(str(cfg["spec"]))
    # Ray sets OMP_NUM_THREADS from the actor's num_cpus; pin the count explicitly either way.
    torch.set_num_threads(int(spec.flower_cpus_per_client) or spec.threads)
    return spec, int(cfg["cid"]), int(cfg["server-round"]) - 1


def _reply(msg: Message, net: torch.nn.Module, num_examples: int) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(net.state_dict()),
            "metrics": MetricRecord(
                {"num-examples": num_examples, "threads": torch.get_num_threads(), "t-start": STARTED[0]}
            ),
        }
    )
    return Message(content=content, reply_to=msg)


plain_client = ClientApp()
STARTED = [0.0]  # wall time this actor's current client began (reported back for the startup figure)


@plain_client.train()
def plain_train(msg: Message, context: Context) -> Message:
    spec, cid, round_idx = _client_setup(msg)
    x, y = load_train(spec)
    idx = partition_of(spec).client(cid)
    net = initial_net(spec)
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    train_client(net, spec, x, y, idx, round_idx, cid)
    return _reply(msg, net, len(idx))


lightning_client = ClientApp()


@lightning_client.train()
def lightning_train(msg: Message, context: Context) -> Message:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    spec, cid, round_idx = _client_setup(msg)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    x, y = load_train(spec)
    idx = partition_of(spec).client(cid)
    module = make_module(spec.lr)
    module.net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    torch.manual_seed(spec.seed * 1_000_003 + round_idx * 10_007 + cid)  # the loader's shuffle
    loader = DataLoader(TensorDataset(x[idx], y[idx]), batch_size=spec.batch_size, shuffle=True)
    trainer = L.Trainer(
        max_epochs=spec.local_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        trainer.fit(module, train_dataloaders=loader)
    return _reply(msg, module.net, len(idx))


class TimedFedAvg(FedAvg):
    """Flower's FedAvg with lightning_fl's client sampling and round marks for the benchmark."""

    def __init__(self, spec: Spec, clock: RoundClock) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
        self.spec, self.clock = spec, clock

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.clock.round_begin()
        nodes = sorted(grid.get_node_ids())  # one virtual node per client: node k is client k
        messages = []
        for cid in sampled(self.spec, server_round - 1):
            cfg = ConfigRecord({"server-round": server_round, "cid": cid, "spec": self.spec.to_json()})
            record = RecordDict({"arrays": arrays, "config": cfg})
            messages.append(Message(content=record, message_type=MessageType.TRAIN, dst_node_id=nodes[cid]))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        replies = list(replies)
        errors = [m.error.reason for m in replies if m.has_error()]
        if errors:
            raise RuntimeError(f"Flower client failed: {errors[0]}")
        result = super().aggregate_train(server_round, replies)
        self.clock.threads = int(replies[0].content["metrics"]["threads"])
        self.clock.client_started(min(float(m.content["metrics"]["t-start"]) for m in replies))
        self.clock.round_trained()
        if not self.spec.evaluate:
            self.clock.round_end()
        return result


def run_flower(spec: Spec, clock: RoundClock, client: str) -> None:
    server = ServerApp()
    # The server process needs the test set only (and only with global evaluation): loading the
    # training set here as well would charge Flower memory it does not need.
    test = load_test(spec) if spec.evaluate else None
    eval_net = initial_net(spec)

    def global_eval(server_round: int, arrays: ArrayRecord) -> Optional[MetricRecord]:
        if server_round == 0:  # Flower also evaluates the initial model; the other frameworks do not
            return None
        assert test is not None
        eval_net.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate(eval_net, *test)
        clock.test_acc = acc
        clock.round_end()
        clock.final_weights(eval_net)  # cheap; the last round's value stays
        return MetricRecord({"loss": loss, "accuracy": acc})

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(spec, clock)
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial_net(spec).state_dict()),
            num_rounds=spec.total_rounds,
            evaluate_fn=global_eval if spec.evaluate else None,
        )

    cpus = spec.flower_cpus_per_client or float(spec.threads)
    run_simulation(
        server_app=server,
        client_app=plain_client if client == "plain" else lightning_client,
        num_supernodes=spec.num_clients,
        backend_config={
            "client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": spec.threads, "include_dashboard": False, "logging_level": "WARNING"},
        },
    )
    if len(clock.end) != spec.total_rounds:
        raise RuntimeError(f"Flower finished {len(clock.end)} of {spec.total_rounds} rounds (see its log above)")
