"""Train the same module with strategy='ddp' and strategy='parameter_server' in one launch; save results.

Usage: python run_ps.py OUT.pt DEVICES
Runs, in order and in the same processes: DDP+SGD, PS+SGD, DDP+Adam, PS+Adam (and a PS checkpoint/resume
check), so the popen launcher starts the other rank only once.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

import lightning_fl  # noqa: E402,F401
from fl_testing import AdamModule, TinyData, seeded_module  # noqa: E402


def make(kind):
    torch.manual_seed(1)
    return AdamModule() if kind == "adam" else seeded_module(momentum=0.9, gamma=0.5)


def fit(strategy, module, devices, epochs, **kwargs):
    trainer = L.Trainer(
        strategy=strategy, accelerator="cpu", devices=devices, max_epochs=epochs, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        enable_checkpointing=bool(kwargs.get("callbacks")), **{k: v for k, v in kwargs.items() if k != "ckpt_path"},
    )
    trainer.fit(module, TinyData(batch_size=16), ckpt_path=kwargs.get("ckpt_path"))
    return trainer


def main():
    out, devices = sys.argv[1], int(sys.argv[2])
    results = {}
    for kind in ("sgd", "adam"):
        for name in ("ddp", "parameter_server"):
            module = make(kind)
            trainer = fit(name, module, devices, epochs=2)
            results[f"{name}-{kind}"] = {k: v.detach().clone() for k, v in module.state_dict().items()}
            if name == "parameter_server":
                results[f"state_bytes-{kind}"] = trainer.strategy.optimizer_state_bytes()
                results[f"push_bytes-{kind}"] = trainer.strategy.bytes_pushed
                results[f"lr-{kind}"] = trainer.optimizers[0].param_groups[0]["lr"]
    # Resume: 2 epochs + checkpoint + 2 more must equal 4 straight.
    straight = make("adam")
    fit("parameter_server", straight, devices, epochs=4)
    ckpt_dir = os.path.join(os.path.dirname(out), "ps_ckpt")
    first = make("adam")
    fit("parameter_server", first, devices, epochs=2,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, every_n_epochs=1)])
    resumed = make("adam")
    fit("parameter_server", resumed, devices, epochs=4, ckpt_path=os.path.join(ckpt_dir, "last.ckpt"))
    results["resume-straight"] = {k: v.detach().clone() for k, v in straight.state_dict().items()}
    results["resume-resumed"] = {k: v.detach().clone() for k, v in resumed.state_dict().items()}
    results["ckpt"] = os.path.join(ckpt_dir, "last.ckpt")
    if torch.distributed.get_rank() == 0:
        torch.save(results, out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
