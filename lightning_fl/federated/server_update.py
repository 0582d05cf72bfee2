"""The server's step: turn the clients' average into the next global model.

Following Reddi et al. (2021, "Adaptive Federated Optimization"), the server treats
Δ = θ_global − θ_average as a *pseudo-gradient* and applies an optimizer to θ_global:

- no server optimizer (the default): θ ← θ_average, plain FedAvg, exact;
- ``torch.optim.SGD(lr=1)``: the same up to rounding; with ``momentum=β`` it is FedAvgM (Hsu et al. 2019);
- ``FedAvgM``, ``FedAdagrad``, ``FedAdam``, ``FedYogi`` (``server_optimizers``): Reddi et al.'s Algorithm 2;
- any other ``torch.optim.Optimizer`` factory plugs in the same way, without touching the round loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

ServerOptimizerFactory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


def pseudo_gradient(global_params: torch.Tensor, average: torch.Tensor) -> torch.Tensor:
    """Δ = θ_global − θ_average (a descent direction for the server, like a gradient)."""
    return global_params - average


class ServerUpdate:
    """Applies the server step to a flat global-parameter vector, in place."""

    def __init__(self, optimizer_factory: ServerOptimizerFactory | None = None) -> None:
        self.optimizer_factory = optimizer_factory
        self._param: torch.Tensor | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    def bind(self, global_params: torch.Tensor) -> None:
        """Attach to the global vector (the optimizer updates it in place)."""
        self._param = global_params
        if self.optimizer_factory is not None:
            self._optimizer = self.optimizer_factory([global_params])
            if not isinstance(self._optimizer, torch.optim.Optimizer):
                raise TypeError(
                    f"server_optimizer must build a torch.optim.Optimizer, got {type(self._optimizer).__name__}"
                )

    def step(self, average: torch.Tensor) -> None:
        """Move the global vector given the clients' average model."""
        param = self._require_bound()
        with torch.no_grad():
            if self._optimizer is None:
                param.copy_(average)  # exact FedAvg, not global + (average − global)
                return
            self._optimizer_step(pseudo_gradient(param, average))

    def step_update(self, update: torch.Tensor) -> None:
        """Move the global vector given the clients' average change Δ (average − global)."""
        param = self._require_bound()
        with torch.no_grad():
            if self._optimizer is None:
                param.add_(update)
                return
            self._optimizer_step(-update)

    def _optimizer_step(self, grad: torch.Tensor) -> None:
        param = self._require_bound()
        assert self._optimizer is not None
        param.grad = grad
        self._optimizer.step()
        param.grad = None

    def _require_bound(self) -> torch.Tensor:
        if self._param is None:
            raise RuntimeError("ServerUpdate.step called before bind()")
        return self._param

    def state_dict(self) -> dict[str, Any]:
        return {} if self._optimizer is None else {"optimizer": self._optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._optimizer is not None and "optimizer" in state:
            self._optimizer.load_state_dict(state["optimizer"])
