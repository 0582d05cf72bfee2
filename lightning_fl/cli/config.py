"""Typed config schemas, registered with Hydra's ConfigStore.

Each dataclass mirrors one Python constructor field by field (``tests/test_cli_config.py`` checks this),
so ``strategy.local_epochs=5`` on the command line is ``FedAvgStrategy(local_epochs=5)`` in Python. The
YAML files in ``conf/`` pick values on top of these schemas; a typo in a key or a value of the wrong type
is an error at composition time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, SI


@dataclass
class FedAvgConfig:
    _target_: str = "lightning_fl.FedAvgStrategy"
    num_clients: Optional[int] = None
    clients_per_round: Optional[int] = None
    local_epochs: int = 1
    partition: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    seed: int = SI("${seed}")
    # None (plain averaging) or an optimizer factory: {_target_: torch.optim.SGD, _partial_: true, ...}
    server_optimizer: Optional[Any] = None
    skip_nonfinite_updates: bool = True
    process_group_backend: Optional[str] = None
    timeout: float = 1800.0
    start_method: str = "popen"


@dataclass
class ParameterServerConfig:
    _target_: str = "lightning_fl.ParameterServerStrategy"
    process_group_backend: Optional[str] = None
    timeout: float = 1800.0
    start_method: str = "popen"
    staleness: Optional[int] = None  # null: synchronous; s >= 0: stale synchronous parallel with bound s
    scale_stale_gradients: bool = True


@dataclass
class DigitsDataConfig:
    _target_: str = "lightning_fl.data.DigitsDataModule"
    batch_size: int = 10
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = SI("${seed}")


@dataclass
class MNISTDataConfig:
    _target_: str = "lightning_fl.data.MNISTDataModule"
    path: Optional[str] = None
    batch_size: int = 10
    download: bool = False
    root: str = "./data"
    train_subset: Optional[int] = None
    val_subset: Optional[int] = None


@dataclass
class ImageClassifierConfig:
    _target_: str = "lightning_fl.models.ImageClassifier"
    arch: str = "cnn"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    lr_decay: float = 1.0
    # in_shape and num_classes come from the data module at run time.


@dataclass
class TrainerConfig:
    """The subset of ``lightning.Trainer`` arguments the CLI exposes (``+trainer.x=...`` adds others)."""

    _target_: str = "lightning.pytorch.Trainer"
    max_epochs: int = 10
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    precision: Any = "32-true"
    gradient_clip_val: Optional[float] = None
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True
    enable_model_summary: bool = True
    num_sanity_val_steps: int = 0
    deterministic: Any = False


@dataclass
class RunConfig:
    strategy: Any = MISSING
    data: Any = MISSING
    model: Any = MISSING
    trainer: Any = MISSING
    seed: int = 0
    test: bool = True  # evaluate the final global model on the test split after training
    ckpt_path: Optional[str] = None  # resume training from this checkpoint
    summary_metrics: list[str] = field(default_factory=lambda: ["train_loss", "val_loss", "val_acc"])


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=RunConfig)
    cs.store(group="strategy", name="fedavg_schema", node=FedAvgConfig)
    cs.store(group="strategy", name="parameter_server_schema", node=ParameterServerConfig)
    cs.store(group="data", name="digits_schema", node=DigitsDataConfig)
    cs.store(group="data", name="mnist_schema", node=MNISTDataConfig)
    cs.store(group="model", name="classifier_schema", node=ImageClassifierConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
