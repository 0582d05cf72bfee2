"""One short 2-process fit that ends without any cleanup of its own: the strategy must leave no process
group behind (a gloo group alive at interpreter exit can abort with "terminate called without an active
exception"). Usage: python run_clean_exit.py fedavg|ps|ssp [fail]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lightning as L  # noqa: E402

import lightning_fl  # noqa: E402
from fl_testing import AdamModule, TinyData, seeded_module  # noqa: E402


def main() -> None:
    kind = sys.argv[1]
    if kind == "fedavg":
        strategy, module = lightning_fl.FedAvgStrategy(num_clients=4, seed=3), seeded_module()
    else:
        strategy = lightning_fl.ParameterServerStrategy(staleness=1 if kind == "ssp" else None)
        module = AdamModule()
    trainer = L.Trainer(
        strategy=strategy, accelerator="cpu", devices=2, max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, TinyData(n=96, batch_size=16))
    print(f"rank {trainer.global_rank}: fit done", flush=True)


if __name__ == "__main__":
    main()
