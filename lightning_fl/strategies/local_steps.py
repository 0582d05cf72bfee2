"""A client's local steps on the fast path, without Lightning's per-step hook dispatch.

Lightning runs every optimizer step through its hook dispatchers (``trainer.call``): each of about ten
hooks is called on every callback and on the module, each call inside a profiler context, whether or not
anyone implements the hook. With a small model that dispatch is a few percent of a step, paid once per
local batch. ``DirectSteps`` runs the sequence of Lightning's automatic optimization itself, in its order:

    training_step → on_before_zero_grad → optimizer_zero_grad → on_before_backward → backward →
    on_after_backward → (the client algorithm's gradient correction) → on_before_optimizer_step →
    configure_gradient_clipping → optimizer.step

calling each hook only on the callbacks and the module that override it (a hook nobody overrides is
Lightning's no-op), with the module's ``_current_fx_name`` set as Lightning sets it so ``self.log`` in a
hook keeps working. The arithmetic is the same calls in the same order, so the weights are bit-identical
to Lightning's closure (``tests/test_fast_path.py``).

It is used only where that sequence is known to be Lightning's: the 32-bit precision plugin or mixed
precision without a gradient scaler (bf16-mixed), and no profiler (a profiler wants Lightning's per-hook
records). Otherwise the fast path keeps calling Lightning's own optimizer step per local batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loops.optimization.automatic import Closure, ClosureResult
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

    from lightning_fl.strategies.fedavg import FedAvgStrategy

_NONE_IN_DISTRIBUTED = (
    "Skipping the `training_step` by returning None in distributed training is not supported. It is recommended "
    "that you rewrite your training logic to avoid having to skip the step in the first place."
)


def direct_blocker(strategy: FedAvgStrategy, trainer: Trainer) -> Optional[str]:
    """Why local steps must go through Lightning's own optimizer step (``None``: they can run directly)."""
    precision = strategy.precision_plugin
    if type(precision) is MixedPrecision:
        if precision.scaler is not None:
            return "16-mixed scales the loss with a GradScaler"
    elif type(precision) is not Precision:
        return f"precision plugin {type(precision).__name__}"
    if not isinstance(trainer.profiler, PassThroughProfiler):
        return f"profiler {type(trainer.profiler).__name__} records Lightning's hook calls"
    return None


class HookCalls:
    """Calls a hook on the callbacks and the module that override it, as ``trainer.call`` would."""

    def __init__(self, trainer: Trainer, module: LightningModule) -> None:
        self.trainer, self.module = trainer, module
        self._resolved: dict[str, tuple[tuple[Callable[..., Any], ...], Optional[Callable[..., Any]]]] = {}

    def _resolve(self, name: str) -> tuple[tuple[Callable[..., Any], ...], Optional[Callable[..., Any]]]:
        callbacks = tuple(
            getattr(cb, name) for cb in self.trainer.callbacks if is_overridden(name, cb, Callback)  # type: ignore[attr-defined]
        )
        own = getattr(self.module, name) if is_overridden(name, self.module) else None
        self._resolved[name] = (callbacks, own)
        return callbacks, own

    def __call__(self, name: str, *args: Any) -> None:
        callbacks, own = self._resolved.get(name) or self._resolve(name)
        if not callbacks and own is None:
            return
        module = self.module
        previous, module._current_fx_name = module._current_fx_name, name
        try:
            for fn in callbacks:  # callbacks first, then the module: Lightning's order
                fn(self.trainer, module, *args)
            if own is not None:
                own(*args)
        finally:
            module._current_fx_name = previous

    def module_hook(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """A module hook Lightning always calls (its default does the work: zero_grad, backward, clipping)."""
        module = self.module
        previous, module._current_fx_name = module._current_fx_name, name
        try:
            return getattr(module, name)(*args, **kwargs)
        finally:
            module._current_fx_name = previous


class DirectSteps:
    """One fit's direct local steps; ``step`` runs one local batch of the current client."""

    def __init__(self, strategy: FedAvgStrategy, trainer: Trainer) -> None:
        module = strategy.lightning_module
        assert module is not None
        self.strategy, self.trainer, self.module = strategy, trainer, module
        self.hooks = HookCalls(trainer, module)
        # With neither a clipping value nor an override, Lightning's clipping call does nothing.
        self._clips = bool(trainer.gradient_clip_val) or is_overridden("configure_gradient_clipping", module)
        # Lightning passes batch_idx only to a training_step that takes it.
        self._takes_batch_idx = is_param_in_hook_signature(module.training_step, "batch_idx", min_args=2)
        self._zero_grad_progress = trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.zero_grad

    def step(
        self, optimizer: torch.optim.Optimizer, batch_idx: int, keep_result: bool = False, **kwargs: Any
    ) -> Optional[ClosureResult]:
        """One local step (or padding step). ``keep_result``: return its ``ClosureResult``, as Lightning's
        closure would hold it (only the client's last step's is read, by Lightning's loop)."""
        strategy = self.strategy
        algorithm = strategy.client_algorithm
        corrects = algorithm is not None and algorithm.hooks_steps and not strategy._padding
        results: list[Optional[ClosureResult]] = []

        def closure() -> Optional[torch.Tensor]:
            loss, result = self._forward_backward(optimizer, batch_idx, keep_result)
            if corrects:
                algorithm.correct_gradients(strategy._loss_scale())  # type: ignore[union-attr]
            results.append(result)
            return loss

        if strategy._padding:
            closure()  # as on Lightning's path: the padding loss has no parameters, so no optimizer step
            return results[-1]

        def closure_then_clip() -> Optional[torch.Tensor]:
            loss = closure()
            # Precision._after_closure: the hook sees the gradients the optimizer will use, then clipping.
            self.hooks("on_before_optimizer_step", optimizer)
            if self._clips:
                self.hooks.module_hook(
                    "configure_gradient_clipping",
                    optimizer,
                    gradient_clip_val=self.trainer.gradient_clip_val,
                    gradient_clip_algorithm=self.trainer.gradient_clip_algorithm,
                )
            return loss

        optimizer.step(closure=closure_then_clip, **kwargs)
        if corrects:
            algorithm.after_step(optimizer)  # type: ignore[union-attr]
        return results[-1]

    @torch.enable_grad()
    def _forward_backward(
        self, optimizer: torch.optim.Optimizer, batch_idx: int, keep_result: bool
    ) -> tuple[Optional[torch.Tensor], Optional[ClosureResult]]:
        """Lightning's ``Closure``: training_step, zero_grad with its hooks, backward with its hooks.
        Returns the detached loss and, with ``keep_result``, the ``ClosureResult``."""
        strategy, trainer, module, hooks = self.strategy, self.trainer, self.module, self.hooks
        previous, module._current_fx_name = module._current_fx_name, "training_step"
        try:
            # The fast path puts the current local batch and its index in place of these arguments.
            output = strategy.training_step(None, batch_idx) if self._takes_batch_idx else strategy.training_step(None)
        finally:
            module._current_fx_name = previous
        strategy.post_training_step()
        if output is None and trainer.world_size > 1:
            raise RuntimeError(_NONE_IN_DISTRIBUTED)
        result: Optional[ClosureResult] = None
        if isinstance(output, torch.Tensor) and not keep_result:
            loss = output  # what Lightning would backpropagate (it divides by accumulate_grad_batches = 1)
        else:  # Lightning's own reading of the output: a dict's "loss", None, or its error
            result = ClosureResult.from_training_step_output(output, 1)
            loss = result.closure_loss
        if loss is None:
            Closure.warning_cache.warn("`training_step` returned `None`. If this was on purpose, ignore this warning...")

        progress = self._zero_grad_progress
        progress.increment_ready()
        hooks("on_before_zero_grad", optimizer)
        progress.increment_started()
        hooks.module_hook("optimizer_zero_grad", trainer.current_epoch, batch_idx, optimizer)
        progress.increment_completed()

        if loss is not None:  # Strategy.backward with the precision plugin's pre/post_backward
            strategy.pre_backward(loss)
            hooks("on_before_backward", loss)
            hooks.module_hook("backward", loss)
            loss = loss.detach()
            hooks("on_after_backward")
            strategy.post_backward(loss)
        return loss, result
