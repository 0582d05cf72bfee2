"""Lightning's own launchers, with the strategy's trainer checks run before any process starts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from lightning.pytorch.strategies.launchers import (
    _MultiProcessingLauncher,
    _SubprocessScriptLauncher,
)

if TYPE_CHECKING:
    import lightning.pytorch as pl


class _PreflightMixin:
    _preflight: Callable[["pl.Trainer"], None]

    def launch(self, function: Callable, *args: Any, trainer: "pl.Trainer | None" = None, **kwargs: Any) -> Any:
        if trainer is not None:
            self._preflight(trainer)
        return super().launch(function, *args, trainer=trainer, **kwargs)  # type: ignore[misc]


class CheckedSubprocessScriptLauncher(_PreflightMixin, _SubprocessScriptLauncher):
    """popen launcher (also torchrun/SLURM, where processes exist already)."""

    def __init__(self, preflight: Callable[["pl.Trainer"], None], *args: Any) -> None:
        super().__init__(*args)
        self._preflight = preflight


class CheckedMultiProcessingLauncher(_PreflightMixin, _MultiProcessingLauncher):
    """spawn / fork launcher."""

    def __init__(self, preflight: Callable[["pl.Trainer"], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._preflight = preflight
