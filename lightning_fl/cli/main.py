"""`lightning-fl` / `python -m lightning_fl`: compose the config with Hydra, build the objects, train.

    lightning-fl                                           # default job: FedAvg on digits, ~1 min on 2 cores
    lightning-fl strategy.num_clients=100 strategy.clients_per_round=10 trainer.devices=2
    lightning-fl data=mnist data.path=/data/mnist.npz model=mcmahan_cnn
    lightning-fl -m strategy.local_epochs=1,5 seed=0,1     # a sweep (Hydra multirun)

Bad settings end the run with one line on stderr (``lightning-fl: error: ...``) and exit status 2.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lightning_fl.cli.config import register_configs

CONFIG_MODULE = "lightning_fl.conf"
CONFIG_NAME = "config"


def _fail(message: str) -> NoReturn:
    first = " ".join(str(message).split())  # one line, whatever the exception text looked like
    print(f"lightning-fl: error: {first}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _config_error_text(exc: BaseException) -> str:
    """Hydra/OmegaConf errors as '<key>: <reason>' (they nest the useful part in __cause__)."""
    from omegaconf.errors import OmegaConfBaseException

    inner: BaseException = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    if isinstance(inner, OmegaConfBaseException):
        key = getattr(inner, "full_key", None)
        reason = str(inner).splitlines()[0] if str(inner) else type(inner).__name__
        return f"{key}: {reason}" if key else reason
    return str(exc).splitlines()[0]


def _first_choice_overrides(args: list[str]) -> list[str]:
    """The command-line overrides with each sweep replaced by its first value, hydra.* left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    out = []
    for o in parsed:
        if o.key_or_group.startswith("hydra"):
            continue
        if o.is_sweep_override():
            value = next(iter(o.sweep_string_iterator()))
            out.append(f"{o.get_key_element()}={value}")
        else:
            out.append(o.input_line or "")
    return out


def _check_overrides(args: list[str]) -> None:
    """Compose once up front so a typo or a wrong type is a one-line error, not a Hydra traceback."""
    if any(a in ("--help", "-h", "--hydra-help", "--info", "-i") or a.startswith("--cfg") for a in args):
        return
    from hydra import compose, initialize_config_module

    try:
        overrides = _first_choice_overrides(args)
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            compose(config_name=CONFIG_NAME, overrides=overrides)
    except Exception as exc:  # noqa: BLE001 - every composition problem becomes one line
        _fail(_config_error_text(exc))


def train(cfg: DictConfig) -> float | None:
    """Build data, model, strategy and trainer from ``cfg`` and run fit (and test)."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger

    from lightning_fl.callbacks import RoundProgressBar, RoundSummary
    from lightning_fl.errors import FederatedConfigError

    # Lightning 2.6 on torch >= 2.10 warns about its own use of a torch API; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, in_shape=list(datamodule.dims), num_classes=datamodule.num_classes)
    strategy_cfg = cfg.strategy
    if _is_multirun() and strategy_cfg.get("start_method") == "popen" and _more_than_one_device(cfg.trainer):
        # popen re-runs the command line for ranks > 0, which a Hydra sweep cannot do (see docs/design.md).
        print("lightning-fl: multirun with several devices: using the spawn launcher", file=sys.stderr)
        strategy_cfg = OmegaConf.merge(strategy_cfg, {"start_method": "spawn"})
    try:
        strategy = instantiate(strategy_cfg)
    except Exception as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        if isinstance(cause, FederatedConfigError):  # name the config key: strategy.<setting>
            raise FederatedConfigError(f"strategy.{cause}") from None
        raise
    output_dir = HydraConfig.get().runtime.output_dir
    callbacks: list[Any] = [RoundSummary(metrics=list(cfg.summary_metrics))]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(RoundProgressBar())
    trainer = instantiate(
        cfg.trainer,
        strategy=strategy,
        callbacks=callbacks,
        logger=CSVLogger(save_dir=output_dir, name="", version="logs"),  # beside Hydra's .hydra/
        default_root_dir=output_dir,
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val_acc", "val_loss")}
    if cfg.test:
        results = trainer.test(model, datamodule=datamodule, verbose=False)
        if results:
            metrics.update({k: float(v) for k, v in results[0].items()})
    if trainer.is_global_zero:
        # With the spawn launcher the loop's progress stays in the children; the logged round comes back.
        last_round = trainer.callback_metrics.get("fl/round")
        rounds = int(last_round) + 1 if last_round is not None else trainer.current_epoch
        unit = "rounds" if hasattr(strategy, "round_stats") else "epochs"
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        print(f"lightning-fl: done after {rounds} {unit}: {shown}; outputs in {output_dir}", flush=True)
    return metrics.get("val_acc")


def _is_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def _more_than_one_device(trainer_cfg: DictConfig) -> bool:
    devices = trainer_cfg.get("devices", 1)
    num_nodes = trainer_cfg.get("num_nodes", 1) or 1
    if isinstance(devices, int):
        return devices * num_nodes > 1
    if isinstance(devices, str):
        return devices not in ("1", "auto") or num_nodes > 1
    return len(devices) * num_nodes > 1


@hydra.main(config_path="pkg://lightning_fl.conf", config_name=CONFIG_NAME, version_base=None)
def _hydra_entry(cfg: DictConfig) -> float | None:
    from lightning_fl.errors import FederatedConfigError

    try:
        return train(cfg)
    except (FederatedConfigError, FileNotFoundError, ImportError) as exc:
        _fail(str(exc))
    except Exception as exc:
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(exc, OmegaConfBaseException) or "InstantiationException" in type(exc).__name__:
            cause = exc.__cause__
            if isinstance(cause, (FederatedConfigError, FileNotFoundError, ImportError, ValueError)):
                _fail(str(cause))
            _fail(_config_error_text(exc))
        raise


def main() -> None:
    register_configs()
    _check_overrides(sys.argv[1:])
    _hydra_entry()


if __name__ == "__main__":
    main()
