"""The project's training script: a common Lightning + Hydra layout, with no federated code in it.

    python train.py                                        # ordinary training
    python train.py +trainer/strategy=fedavg               # the same module, federated (lightning_fl's config)
"""

from __future__ import annotations

import hydra
import lightning as L
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    data = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    trainer.fit(model, datamodule=data)
    acc = float(trainer.callback_metrics["val/acc"])
    if trainer.is_global_zero:
        print(f"train.py: {type(trainer.strategy).__name__} after {cfg.trainer.max_epochs} epochs: val/acc={acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
