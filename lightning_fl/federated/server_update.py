"""The server's step: turn the clients' average into the next global model.

Following Reddi et al. (2021, "Adaptive Federated Optimization"), the server treats
Δ = θ_global − θ_average as a *pseudo-gradient* and applies an optimizer to θ_global:

- no server optimizer (the default): θ ← θ_average, plain FedAvg, exact;
- ``torch.optim.SGD(lr=1)``: the same up to rounding; with ``momentum=β`` it is FedAvgM (Hsu et al. 2019);
- ``torch.optim.Adam`` / ``Adagrad``: FedAdam / FedAdagrad-style adaptive servers.

Any ``torch.optim.Optimizer`` factory plugs in here without touching the round loop.
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
        param = self._param
        if param is None:
            raise RuntimeError("ServerUpdate.step called before bind()")
        with torch.no_grad():
            if self._optimizer is None:
                param.copy_(average)
                return
            param.grad = pseudo_gradient(param, average)
            self._optimizer.step()
            param.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {} if self._optimizer is None else {"optimizer": self._optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._optimizer is not None and "optimizer" in state:
            self._optimizer.load_state_dict(state["optimizer"])
