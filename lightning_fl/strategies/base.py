"""What the package's strategies share: DDP's machinery without DDP's wrapper, checked before launch."""

from __future__ import annotations

import atexit
import logging
import sys
from datetime import timedelta
from typing import Any, Optional

import torch.distributed as dist
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.strategies import _StrategyRegistry
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch.distributed.constants import default_pg_timeout

from lightning_fl.errors import FederatedConfigError, check
from lightning_fl.strategies.checkpoint_io import (
    CHECKPOINT_KEY,
    AtomicCheckpointIO,
    check_model_state,
    check_strategy_entry,
    read_error,
)
from lightning_fl.strategies.elastic_store import agent_store_in_use, attempt_store
from lightning_fl.strategies.launchers import CheckedMultiProcessingLauncher, CheckedSubprocessScriptLauncher

log = logging.getLogger(__name__)


class UnwrappedDDPStrategy(DDPStrategy):
    """A ``DDPStrategy`` that never wraps the model in ``DistributedDataParallel``.

    Subclasses keep every launcher (popen, spawn, fork), cluster environment (torchrun, SLURM, ...),
    backend choice and collective of DDP, decide themselves what crosses processes, and validate the
    trainer in :meth:`_preflight`, which runs before any process is started and again in ``setup``.
    ``timeout`` may be given in seconds. Each subclass is registered as ``<strategy_name>``,
    ``<strategy_name>_spawn`` and ``<strategy_name>_fork``, and so is each of its ``registered_presets``.

    Checkpoints go through :class:`~lightning_fl.strategies.checkpoint_io.AtomicCheckpointIO` unless the user
    gives a ``checkpoint_io``, carry a ``lightning_fl`` entry naming the strategy, and are checked on load
    (readable, same model, and when resuming a fit, same strategy) with one-line errors naming the file.
    Process groups the strategy created are destroyed when fit ends (see :meth:`teardown`).
    """

    strategy_name = "unwrapped_ddp"
    _created_default_group = False
    _failed = False

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

    # ------------------------------------------------------------------ process groups
    def setup_environment(self) -> None:
        created = dist.is_available() and not dist.is_initialized()
        super().setup_environment()
        if created and dist.is_initialized():
            self._created_default_group = True
            # Lightning registers this only for NCCL; a gloo group still alive when the interpreter exits
            # can abort the process ("terminate called without an active exception") after a good fit.
            _destroy_default_group_at_exit()
        self._failed = False

    def setup_distributed(self) -> None:
        # Under torchrun the default group would rendezvous on the agent's store, which keeps the keys of a
        # killed attempt, so a restart may connect to dead peers (see elastic_store). Lightning's own call
        # below then finds the group initialized and only sets the ranks.
        if agent_store_in_use() and dist.is_available() and not dist.is_initialized():
            self.set_world_ranks()
            timeout = self._timeout or default_pg_timeout
            dist.init_process_group(
                self._get_process_group_backend(), store=attempt_store(self.global_rank, self.world_size, timeout),
                rank=self.global_rank, world_size=self.world_size, timeout=timeout,
                device_id=self.root_device if self.root_device.type != "cpu" else None,
            )
        super().setup_distributed()

    def on_exception(self, exception: BaseException) -> None:
        # Said now, before the cleanup: when one process dies, Lightning's launcher kills the others within
        # about 5 s, which can be before this process's traceback is printed (cleanup may wait on peers).
        if self.world_size > 1 and not isinstance(exception, KeyboardInterrupt):
            message = " ".join(str(exception).split())
            sys.stderr.write(f"[rank {self.global_rank}] lightning_fl: {type(exception).__name__}: {message}\n")
            sys.stderr.flush()
        super().on_exception(exception)
        self._failed = True

    def destroy_own_groups(self) -> None:
        """Destroy the process groups the subclass created for itself (not the default group)."""

    def teardown(self) -> None:
        """End of fit, on success and on error: our own groups go now. The default group, where our
        ``setup_environment`` created it, goes now after an error (without a barrier: a peer may be dead,
        and closing our side ends its pending collectives at once), else at process exit, because
        ``trainer.test`` after ``fit`` and the user's own collectives still use it (recreating it in the same
        process would reuse the rendezvous keys of the old one)."""
        try:
            self.destroy_own_groups()
        finally:
            if self._failed and self._created_default_group:
                _destroy_default_group()
                self._created_default_group = False
            super().teardown()

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_io(self) -> CheckpointIO:
        if self._checkpoint_io is None:
            self._checkpoint_io = AtomicCheckpointIO()
        elif isinstance(self._checkpoint_io, _WrappingCheckpointIO):  # its setter keeps a base the user gave
            self._checkpoint_io.checkpoint_io = AtomicCheckpointIO()
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, io: Optional[CheckpointIO]) -> None:
        self._checkpoint_io = io

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Optional[Any] = None
    ) -> None:
        # Subclasses put their own state in the entry first; every checkpoint at least names its strategy.
        checkpoint.setdefault(CHECKPOINT_KEY, {"version": 1, "strategy": type(self).strategy_name})
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: Optional[bool] = None) -> dict[str, Any]:
        try:
            checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        except (FileNotFoundError, FederatedConfigError):
            raise
        except Exception as err:  # noqa: BLE001 - torch.load fails in many ways on a damaged file
            raise read_error(checkpoint_path, err) from err
        module = self.lightning_module
        if module is not None:
            check_model_state(checkpoint_path, checkpoint, module, strict=module.strict_loading)
            if self.resuming_fit:
                check_strategy_entry(checkpoint_path, checkpoint, type(self).strategy_name)
        return checkpoint

    @property
    def resuming_fit(self) -> bool:
        """Whether a checkpoint loaded now resumes training (rather than weights for validate/test/predict)."""
        module = self.lightning_module
        trainer = module._trainer if module is not None else None
        return trainer is not None and trainer.state.fn == TrainerFn.FITTING

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


_exit_hook_registered = False


def _destroy_default_group() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as err:  # noqa: BLE001 - cleanup on the way out must not mask the real error
            log.debug("lightning_fl: destroying the default process group failed: %s", err)


def _destroy_default_group_at_exit() -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        _exit_hook_registered = True
        atexit.register(_destroy_default_group)
