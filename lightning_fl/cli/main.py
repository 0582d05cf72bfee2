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

from lightning_fl.cli.config import register_configs, register_resolvers

CONFIG_MODULE = "lightning_fl.conf"
CONFIG_NAME = "config"
# Hydra's own command-line options that take a value (`--config-dir DIR` or `--config-dir=DIR`).
_VALUE_OPTIONS = {"--config-dir": "config_dir", "-cd": "config_dir", "--config-name": "config_name",
                  "-cn": "config_name", "--config-path": "config_path", "-cp": "config_path",
                  "--package": None, "-p": None, "--experimental-rerun": None, "--shell-completion": None,
                  "-sc": None}  # fmt: skip

# Resolvers the schemas use; registered at import so that jobs a launcher starts (submitit) have them too.
register_resolvers()


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


def _split_args(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Hydra's command line as (overrides, {"config_dir"|"config_name"|"config_path": value})."""
    overrides: list[str] = []
    options: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in _VALUE_OPTIONS:
            if not eq:  # the value is the next argument
                i += 1
                value = args[i] if i < len(args) else ""
            if _VALUE_OPTIONS[name]:
                options[_VALUE_OPTIONS[name]] = value
        elif not arg.startswith("-"):
            overrides.append(arg)
        i += 1
    return overrides, options


def _first_choice_overrides(overrides: list[str]) -> list[str]:
    """The overrides with each sweep replaced by its first value, hydra.* left out but hydra.searchpath."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    out = []
    for o in parsed:
        if o.key_or_group.startswith("hydra") and o.key_or_group != "hydra.searchpath":
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
    import os

    from hydra import compose, initialize_config_module

    try:
        overrides, options = _split_args(args)
        overrides = _first_choice_overrides(overrides)
        # --config-dir (and --config-path) add a directory to the search path, as hydra.searchpath does.
        extra = [options[k] for k in ("config_path", "config_dir") if k in options]
        for directory in extra:
            if not os.path.isdir(directory):
                raise FileNotFoundError(f"--config-dir: directory '{directory}' not found")
        if extra:
            searchpath = [f"file://{os.path.abspath(d)}" for d in extra]
            given = [o for o in overrides if o.lstrip("+~").startswith("hydra.searchpath=")]
            for o in given:
                searchpath = _searchpath_value(o) + searchpath
            overrides = [o for o in overrides if o not in given] + [f"hydra.searchpath=[{','.join(searchpath)}]"]
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            compose(config_name=options.get("config_name", CONFIG_NAME), overrides=overrides)
    except Exception as exc:  # noqa: BLE001 - every composition problem becomes one line
        _fail(_config_error_text(exc))


def _searchpath_value(override: str) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    value = OverridesParser.create().parse_override(override).value()
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _own_module_and_data(args: list[str]) -> list[str]:
    """``model._target_=my_pkg.MyModule`` (or ``data._target_=``) without a ``model=`` choice: the user's
    class with only the user's keys. The built-in default (``model: cnn``, with the classifier schema's
    fields) is dropped and every ``model.*`` override adds its key, so ``model.hidden=64`` needs no ``+``."""
    overrides, _ = _split_args(args)
    out = list(args)
    for group in ("model", "data"):
        keys = [o.split("=", 1)[0] for o in overrides]
        targets = {f"{group}._target_", f"+{group}._target_", f"++{group}._target_"}
        chosen = any(k.lstrip("~+") == group for k in keys)
        if chosen or not targets.intersection(keys):
            continue
        at = next(i for i, a in enumerate(out) if a.split("=", 1)[0] in targets)
        out = [("+" + a if a.startswith(f"{group}.") and a in overrides else a) for a in out]
        out.insert(at, f"~{group}")  # beside the other overrides: Hydra's parser wants them together
    return out


def train(cfg: DictConfig) -> float | None:
    """Build data, model, strategy and trainer from ``cfg`` and run fit (and test)."""
    import lightning as L
    from hydra.utils import instantiate

    from lightning_fl.callbacks import RoundProgressBar
    from lightning_fl.errors import FederatedConfigError

    # Lightning 2.6 on torch >= 2.10 warns about its own use of a torch API; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    _require_logger_extra(cfg.get("logger"))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)  # the built-in classifiers read in_shape/num_classes from cfg.data
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
    chosen = [c for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not cfg.trainer.get("enable_checkpointing", True):  # Lightning refuses a ModelCheckpoint then
        chosen = [c for c in chosen if not str(c.get("_target_", "")).endswith("ModelCheckpoint")]
    callbacks: list[Any] = [instantiate(c) for c in chosen]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(RoundProgressBar())
    trainer = instantiate(
        cfg.trainer,
        strategy=strategy,
        callbacks=callbacks,
        logger=_logger(cfg.get("logger")),
        default_root_dir=output_dir,
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=_resume_path(cfg.ckpt_path))
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
        if cfg.get("plots", True):
            _write_figures(output_dir)
    return metrics.get("val_acc")


def _write_figures(output_dir: str) -> None:
    """Curves of the run as PNGs in ``plots/`` (``lightning-fl-plot`` makes them later, or for sweeps)."""
    from pathlib import Path

    from lightning_fl.plotting import MatplotlibMissing, write_run_figures

    try:
        written = write_run_figures(Path(output_dir))
    except MatplotlibMissing:
        return  # an optional extra: the run itself is complete without figures
    except (OSError, ValueError) as error:  # no CSV logs (logger=null/tensorboard), nothing to draw
        print(f"lightning-fl: no figures: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
        return
    if written:
        print(f"lightning-fl: figures in {Path(written[0]).parent}", flush=True)


def _resume_path(ckpt_path: str | None) -> str | None:
    """``ckpt_path`` for ``Trainer.fit``: a directory (a run directory or its ``logs/checkpoints``) means its
    ``last.ckpt``, so resuming needs no quoting of names like ``epoch=3-step=740.ckpt``. ``last`` is
    Lightning's: the newest ``last*.ckpt`` of the checkpoint callback, i.e. of this run's directory (resume
    in place with ``hydra.run.dir=<run dir> ckpt_path=last``; with none yet, training starts afresh, as a
    restarted job wants)."""
    import os

    if ckpt_path is None or not os.path.isdir(ckpt_path):
        return ckpt_path
    for candidate in ("last.ckpt", os.path.join("logs", "checkpoints", "last.ckpt")):
        if os.path.isfile(os.path.join(ckpt_path, candidate)):
            return os.path.join(ckpt_path, candidate)
    raise FileNotFoundError(f"ckpt_path={ckpt_path}: the directory has no last.ckpt, nor logs/checkpoints/last.ckpt")


# The optional package each logger of the `logger` group needs, and the extra that installs it.
_LOGGER_EXTRAS = {
    "TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
    "MLFlowLogger": (("mlflow",), "mlflow"),
    "WandbLogger": (("wandb",), "wandb"),
}


def _require_logger_extra(cfg: Any) -> None:
    """A logger whose package is missing is a one-line hint naming the extra, before any work starts."""
    import importlib.util

    name = str(cfg.get("_target_", "")).rsplit(".", 1)[-1] if cfg is not None else ""
    modules, extra = _LOGGER_EXTRAS.get(name, ((), None))
    if modules and all(importlib.util.find_spec(m) is None for m in modules):
        choice = HydraConfig.get().runtime.choices.get("logger", name)
        raise ImportError(f"logger={choice} needs {modules[0]}: pip install 'lightning-fl[{extra}]'")


def _logger(cfg: Any) -> Any:
    """The `logger` group's choice (csv by default); `logger=null` logs nothing."""
    from hydra.utils import instantiate

    if cfg is None:
        return False
    _require_logger_extra(cfg)
    name = str(cfg.get("_target_", "")).rsplit(".", 1)[-1]
    if name == "MLFlowLogger" and str(cfg.get("tracking_uri") or "").startswith("file:"):
        # MLflow >= 3.7 refuses its file store unless asked; logger=mlflow asks for it (no database needed).
        import os

        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return instantiate(cfg)


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
            _fail(_instantiation_error_text(exc))
        raise


def _instantiation_error_text(exc: BaseException) -> str:
    """The real cause of a failed instantiation, e.g. ``model: TypeError: MyModule.__init__() got an
    unexpected keyword argument 'x'`` (Hydra's own text ends in a colon and hides it in ``__cause__``)."""
    import re

    from omegaconf.errors import OmegaConfBaseException

    from lightning_fl.errors import FederatedConfigError

    chain: list[BaseException] = []
    inner: BaseException | None = exc.__cause__
    while inner is not None and len(chain) < 20:
        chain.append(inner)
        inner = inner.__cause__
    for cause in chain:  # our own messages name the setting already
        if isinstance(cause, (FederatedConfigError, FileNotFoundError, ImportError, ValueError)):
            return str(cause)
    real = [c for c in chain if not isinstance(c, OmegaConfBaseException) and "Hydra" not in type(c).__name__]
    if not real:
        return _config_error_text(exc)
    match = re.search(r"full_key: (\S+)", str(exc))
    key = f"{match.group(1)}: " if match else ""
    return f"{key}{type(real[-1]).__name__}: {real[-1]}"


def main() -> None:
    import os

    # Like `python -m`: the current directory is importable, so `model._target_=my_pkg.MyModule` works
    # from the installed script too (popen children inherit it through PYTHONPATH).
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, os.environ.get("PYTHONPATH")) if p)
    sys.argv[1:] = _own_module_and_data(sys.argv[1:])
    register_configs()
    _check_overrides(sys.argv[1:])
    _hydra_entry()


if __name__ == "__main__":
    main()
