"""Typed config schemas, registered with Hydra's ConfigStore.

Each dataclass mirrors one Python constructor field by field (``tests/test_cli_config.py`` checks this),
so ``strategy.local_epochs=5`` on the command line is ``FedAvgStrategy(local_epochs=5)`` in Python. The
YAML files in ``conf/`` pick values on top of these schemas; a typo in a key or a value of the wrong type
is an error at composition time.

Keep this module's imports to Hydra, OmegaConf and the standard library: the Hydra plugin
(``hydra_plugins/lightning_fl_searchpath``) executes this file on its own in other people's Hydra apps,
where importing ``lightning_fl`` (torch, Lightning) just to compose a config would be a cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, SI, OmegaConf

# The strategy's seed follows the app's top-level `seed` when that is an integer, else the strategy's own
# default 0: Lightning+Hydra apps often have `seed: null`, or no seed at all.
STRATEGY_SEED = SI("${lightning_fl.seed:0}")


@dataclass
class FedAvgConfig:
    _target_: str = "lightning_fl.FedAvgStrategy"
    num_clients: Optional[int] = None
    clients_per_round: Optional[int] = None
    local_epochs: int = 1
    partition: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    seed: int = STRATEGY_SEED
    # None (local SGD) or {_target_: lightning_fl.FedProx, mu: ...} (group strategy/client_algorithm)
    client_algorithm: Optional[Any] = None
    # None (plain averaging) or an optimizer factory: {_target_: lightning_fl.FedAdam, ...} or
    # {_target_: torch.optim.SGD, _partial_: true, ...} (group strategy/server_optimizer)
    server_optimizer: Optional[Any] = None
    local_steps: Optional[int] = None
    stragglers: float = 0.0
    client_state_dir: Optional[str] = None
    # Each None or {_target_: lightning_fl.<Part>, ...}: groups strategy/privacy, strategy/aggregator,
    # strategy/attack, strategy/secure_aggregation, strategy/compression.
    privacy: Optional[Any] = None
    aggregator: Optional[Any] = None
    attack: Optional[Any] = None
    on_client_error: str = "skip"
    max_update_norm: Optional[float] = None
    min_clients: int = 1
    max_skipped_rounds: Optional[int] = None
    secure_aggregation: Optional[Any] = None
    compression: Optional[Any] = None
    skip_nonfinite_updates: bool = True
    # None: automatic (a client's local steps inside one Lightning step when nothing needs per-batch hooks)
    fast_path: Optional[bool] = None
    # Federated evaluation (0: off): held-out share per client, every N rounds, clients per evaluation.
    eval_fraction: float = 0.0
    eval_every: int = 1
    eval_clients: Optional[int] = None
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
    # The data module class's `dims` and `num_classes` (class attributes), unless set on the command line.
    in_shape: Any = SI("${lightning_fl.data_attr:dims}")
    num_classes: int = SI("${lightning_fl.data_attr:num_classes}")


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
    ckpt_path: Optional[str] = None  # resume from this checkpoint, a run directory (its last.ckpt), or "last"
    logger: Any = None  # group `logger`: csv, tensorboard, mlflow, wandb
    callbacks: Any = None  # group `callbacks`: {name: callback config}
    plots: bool = True  # write PNG figures into the run directory's plots/ when matplotlib is installed


def _seed_or(default: Any, *, _root_: Any) -> int:
    value = OmegaConf.select(_root_, "seed", default=None, throw_on_missing=False)
    return value if isinstance(value, int) and not isinstance(value, bool) else int(default)


def _data_attr(name: str, *, _root_: Any) -> Any:
    """A class attribute of the configured data module (``dims``, ``num_classes``), without building it."""
    from hydra.utils import get_class

    target = OmegaConf.select(_root_, "data._target_", default=None)
    if target is None:
        raise ValueError(f"model: there is no data._target_ to read '{name}' from; set it on the model")
    value = getattr(get_class(target), name, None)
    if value is None:
        setting = "model.in_shape=[C,H,W]" if name == "dims" else f"model.{name}=..."
        raise ValueError(f"model: the data module {target} has no class attribute '{name}'; set {setting}")
    return list(value) if isinstance(value, tuple) else value


def register_resolvers() -> None:
    """``${lightning_fl.seed:DEFAULT}`` and ``${lightning_fl.data_attr:NAME}`` (idempotent)."""
    OmegaConf.register_new_resolver("lightning_fl.seed", _seed_or, replace=True)
    OmegaConf.register_new_resolver("lightning_fl.data_attr", _data_attr, replace=True)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=RunConfig)
    cs.store(group="strategy", name="fedavg_schema", node=FedAvgConfig)
    cs.store(group="strategy", name="parameter_server_schema", node=ParameterServerConfig)
    cs.store(group="data", name="digits_schema", node=DigitsDataConfig)
    cs.store(group="data", name="mnist_schema", node=MNISTDataConfig)
    cs.store(group="model", name="classifier_schema", node=ImageClassifierConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
