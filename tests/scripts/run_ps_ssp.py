"""Bounded-staleness parameter server, 2 processes in one launch; rank 0 saves what the tests check.

Usage: python run_ps_ssp.py OUT.pt
1. staleness=0 vs the synchronous mode, SGD (momentum, LR schedule) and Adam: final weights.
2. staleness=2 with rank 1 slowed down (a sleep in every training step): per step and rank, the clock
   times (batch start, just before the push), the version of each bucket the gradient was computed from,
   the server's staleness counts, and validation accuracy; the final parameters of both ranks.
3. staleness=1 with a checkpoint every 3 steps and validation twice per epoch: the checkpoint's parameters
   against both ranks' parameters at that step (BatchNorm statistics stay per worker, as in DDP).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402

import lightning_fl  # noqa: E402,F401
from fl_testing import AdamModule, TinyData, TinyModule, float_state  # noqa: E402
from lightning_fl import ParameterServerStrategy  # noqa: E402

SLOW_SECONDS = 0.03


def parameters(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


class SlowOnRank1(TinyModule):
    def training_step(self, batch, batch_idx):
        if self.global_rank == 1:
            time.sleep(SLOW_SECONDS)
        return super().training_step(batch, batch_idx)


class Recorder(Callback):
    """What each worker did, from outside the strategy: clock times and the versions it computed from."""

    def __init__(self):
        self.starts, self.pushes, self.read_versions, self.states = [], [], [], {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append((trainer.global_step, time.monotonic()))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        # Runs after backward, before the push: the versions are those this step's gradient came from.
        self.pushes.append((trainer.global_step, time.monotonic()))
        self.read_versions.append((trainer.global_step, list(trainer.strategy._versions)))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.states[trainer.global_step] = parameters(pl_module)  # every rank, after the strategy's flush


def fit(module, staleness, epochs, callbacks=(), **kwargs):
    strategy = ParameterServerStrategy(staleness=staleness, timeout=60)
    trainer = L.Trainer(
        strategy=strategy, accelerator="cpu", devices=2, max_epochs=epochs, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), callbacks=list(callbacks),
        **kwargs,
    )  # fmt: skip
    trainer.fit(module, TinyData(batch_size=16))
    return trainer


def gather(obj):
    out = [None, None]
    dist.all_gather_object(out, obj)
    return out


def main():
    out = sys.argv[1]
    results = {}
    for kind in ("sgd", "adam"):
        for staleness in (None, 0):
            torch.manual_seed(1)
            module = AdamModule() if kind == "adam" else TinyModule(momentum=0.9, gamma=0.5)
            fit(module, staleness, epochs=2)
            results[f"{kind}-{staleness}"] = float_state(module)

    torch.manual_seed(1)
    slow = SlowOnRank1(momentum=0.9)
    recorder = Recorder()
    trainer = fit(slow, 2, epochs=3, callbacks=[recorder])
    results["slow"] = {
        "starts": gather(recorder.starts),
        "pushes": gather(recorder.pushes),
        "read_versions": gather(recorder.read_versions),
        "staleness_counts": gather(dict(trainer.strategy.staleness_counts)),
        "final": gather(parameters(slow)),
        "val_acc": float(trainer.callback_metrics["val_acc"]),
        "logged_staleness_max": float(trainer.callback_metrics["ps/staleness_max"]),
        "global_step": trainer.global_step,
    }

    torch.manual_seed(1)
    module = SlowOnRank1(momentum=0.9)
    ckpt_dir = os.path.join(os.path.dirname(out), "ssp_ckpt")
    recorder = Recorder()
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="{step}", every_n_train_steps=3, save_top_k=-1)
    fit(module, 1, epochs=1, callbacks=[recorder, checkpoint], val_check_interval=0.5)
    results["ckpt"] = {"path": os.path.join(ckpt_dir, "step=6.ckpt"), "states_at_6": gather(recorder.states[6])}

    if dist.get_rank() == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
