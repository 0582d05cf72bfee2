"""Train TinyModule with the fedavg strategy and save the final global state (rank 0).

Run as a script so Lightning's popen launcher can start the other ranks by re-running it.
Usage: python run_fedavg.py OUT.pt DEVICES [json-encoded strategy kwargs] [json-encoded options]
"""

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lightning as L  # noqa: E402
import torch  # noqa: E402

import lightning_fl  # noqa: E402,F401
from fl_testing import TinyData, seeded_module  # noqa: E402


class KillRank(L.Callback):
    """SIGKILLs rank ``rank`` in the middle of its second epoch: no exception, no goodbye, as an OOM kill."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.current_epoch == 1 and batch_idx == 2:
            os.kill(os.getpid(), signal.SIGKILL)


class PerRankBatchData(TinyData):
    """Each process's own DataModule settings: silo ``r`` batches its data with ``batch_sizes[r]``."""

    def __init__(self, batch_sizes, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batch_sizes = batch_sizes

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.batch_size = self.batch_sizes[self.trainer.global_rank]


def main() -> None:
    out, devices = sys.argv[1], int(sys.argv[2])
    strategy_kwargs = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    module = seeded_module(**options.get("module", {}))
    if "batch_sizes" in options:
        data = PerRankBatchData(options["batch_sizes"], **options.get("data", {}))
    else:
        data = TinyData(**options.get("data", {}))
    # "per_rank": [{...}, {...}]: strategy settings that differ by process (LOCAL_RANK is set before launch
    # for the ranks popen starts; rank 0 has none yet).
    if options.get("per_rank"):
        strategy_kwargs.update(options["per_rank"][int(os.environ.get("LOCAL_RANK", "0"))])
    server = options.get("server")
    if server is not None:
        import functools

        strategy_kwargs["server_optimizer"] = functools.partial(torch.optim.SGD, **server)
    # "parts": {"client_algorithm": ["FedProx", {"mu": 0.1}], "server_optimizer": ["FedYogi", {...}]}
    for arg, (name, kwargs) in options.get("parts", {}).items():
        strategy_kwargs[arg] = getattr(lightning_fl, name)(**kwargs)
    # "by_name": use the registered name, e.g. Trainer(strategy="fedavg"), with its defaults;
    # "parameter_server": ParameterServerStrategy with the given kwargs instead of FedAvg.
    if "parameter_server" in options:
        strategy = lightning_fl.ParameterServerStrategy(**options["parameter_server"])
    else:
        strategy = options.get("by_name") or lightning_fl.FedAvgStrategy(**strategy_kwargs)
    callbacks = [KillRank(options["kill_rank"])] if "kill_rank" in options else []
    trainer = L.Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=devices,
        max_epochs=options.get("rounds", 3),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **options.get("trainer", {}),
    )
    try:
        trainer.fit(module, data)
    except lightning_fl.FederatedConfigError as err:
        if trainer.global_rank == 0:
            torch.save({"error": str(err)}, out)
        return
    # Every rank must hold the same global model: compare against rank 0's.
    state = {k: v.clone() for k, v in module.state_dict().items()}
    flat = torch.cat([v.double().flatten() for v in state.values()])
    gathered = [torch.zeros_like(flat) for _ in range(trainer.world_size)]
    if trainer.world_size > 1:
        torch.distributed.all_gather(gathered, flat)
    else:
        gathered = [flat]
    if trainer.global_rank == 0:
        spread = max(float((g - gathered[0]).abs().max()) for g in gathered)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        lrs = [trainer.optimizers[0].param_groups[0]["lr"]]
        torch.save({"state": state, "rank_spread": spread, "metrics": metrics, "lr": lrs,
                    "world_size": trainer.world_size,
                    "cluster_environment": type(trainer.strategy.cluster_environment).__name__}, out)
    # Leave together: a rank exiting while another is still in a collective can abort under torchrun.
    if trainer.world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
