"""FedAvg under `torchrun --max-restarts`: resumes by itself from the last round-end checkpoint.

Usage: torchrun --nproc-per-node 2 --max-restarts 1 run_elastic.py OUT.pt CKPT_DIR [kill]
With ``kill``, rank 1 SIGKILLs itself in the middle of round 3 of 5, in the first attempt only; torchrun
then restarts both processes and ``ckpt_path="last"`` picks up ``CKPT_DIR/last.ckpt`` (end of round 2).
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

import lightning_fl  # noqa: E402
from fl_testing import TinyData, seeded_module  # noqa: E402

ATTEMPT = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # set by torchrun: 0, then 1 after a restart


class KillInFirstAttempt(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if ATTEMPT == 0 and trainer.global_rank == 1 and trainer.current_epoch == 2 and batch_idx == 2:
            print("rank 1: SIGKILL in round 3", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    out, ckpt_dir = sys.argv[1], sys.argv[2]
    if ATTEMPT > 0 and os.environ.get("RANK") == "0":
        # torchrun's agent keeps its store, and the killed attempt's keys, across restarts: rank 1 then
        # reaches the rendezvous first and reads rank 0's key of the killed attempt (the case that failed).
        time.sleep(2)
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_epochs=1)]
    if "kill" in sys.argv[3:]:
        callbacks.append(KillInFirstAttempt())
    strategy = lightning_fl.FedAvgStrategy(num_clients=6, clients_per_round=4, partition="dirichlet", alpha=1.0,
                                           seed=7, server_optimizer=lightning_fl.FedAvgM(lr=1.0, momentum=0.9))
    module = seeded_module(gamma=0.9, momentum=0.5)
    trainer = L.Trainer(
        strategy=strategy, accelerator="cpu", devices=2, max_epochs=5, logger=False, callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, TinyData(), ckpt_path="last")  # none in the first attempt: starts afresh
    if trainer.global_rank == 0:
        torch.save({"state": module.state_dict(), "attempt": ATTEMPT, "epoch": trainer.current_epoch}, out)


if __name__ == "__main__":
    main()
