"""What the package's strategies share: DDP's machinery without DDP's wrapper, checked before launch."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional

from lightning.fabric.strategies import _StrategyRegistry
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DDPStrategy

from lightning_fl.errors import check
from lightning_fl.strategies.launchers import CheckedMultiProcessingLauncher, CheckedSubprocessScriptLauncher


class UnwrappedDDPStrategy(DDPStrategy):
    """A ``DDPStrategy`` that never wraps the model in ``DistributedDataParallel``.

    Subclasses keep every launcher (popen, spawn, fork), cluster environment (torchrun, SLURM, ...),
    backend choice and collective of DDP, decide themselves what crosses processes, and validate the
    trainer in :meth:`_preflight`, which runs before any process is started and again in ``setup``.
    ``timeout`` may be given in seconds. Each subclass is registered as ``<strategy_name>``,
    ``<strategy_name>_spawn`` and ``<strategy_name>_fork``, and so is each of its ``registered_presets``.
    """

    strategy_name = "unwrapped_ddp"

    def __init__(self, *, timeout: Optional[timedelta | float] = None, **kwargs: Any) -> None:
        if timeout is not None and not isinstance(timeout, timedelta):
            check(
                isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0,
                f"timeout must be a timedelta or seconds > 0, got {timeout!r}",
            )
            timeout = timedelta(seconds=float(timeout))
        super().__init__(timeout=timeout, **kwargs)

    def _preflight(self, trainer: Trainer) -> None:
        """Raise a one-line error for trainer settings the strategy cannot honour."""

    def _configure_launcher(self) -> None:
        assert self.cluster_environment is not None
        if self._start_method == "popen":
            self._launcher = CheckedSubprocessScriptLauncher(
                self._preflight, self.cluster_environment, self.num_processes, self.num_nodes
            )
        else:
            self._launcher = CheckedMultiProcessingLauncher(self._preflight, self, start_method=self._start_method)

    def configure_ddp(self) -> None:
        pass  # no DistributedDataParallel: the subclass decides what crosses processes, and when

    @classmethod
    def registered_presets(cls) -> dict[str, dict[str, Any]]:
        """Strategy names to register with their constructor arguments (each also ``_spawn``/``_fork``)."""
        return {cls.strategy_name: {}}

    @classmethod
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        for preset, init_params in cls.registered_presets().items():
            for suffix, start_method in (("", "popen"), ("_spawn", "spawn"), ("_fork", "fork")):
                name = f"{preset}{suffix}"
                if name not in strategy_registry:
                    strategy_registry.register(
                        name,
                        cls,
                        description=f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in init_params.items())}) "
                        f"with start_method='{start_method}'",
                        start_method=start_method,
                        **init_params,
                    )
