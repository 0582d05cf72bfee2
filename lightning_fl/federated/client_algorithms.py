"""Client algorithms: what a client does differently from plain local SGD, and what the server does with it.

A client algorithm is a set of hooks the strategy calls at fixed moments of a round; the math lives here
and needs only torch:

=========================  ==========================================================================
``setup(context)``         once per fit: the module's parameters, the global vector, a client-state store
``client_start(c)``        before client c's first step (the module holds the global weights)
``correct_gradients(s)``   after each backward, before gradient clipping and the optimizer step
                           (``s`` is the mixed-precision loss scale: gradients are still scaled then)
``after_step(opt)``        after each optimizer step that really ran
``client_update(c, u)``    after client c's last step: ``u`` is its flat change (weights − global),
                           which the hook may rewrite in place, and it may add into its own sums
``server_update(avg)``     after the round's sums were combined across processes: rewrite the average
                           change before the server optimizer applies it
=========================  ==========================================================================

The flat vector's first ``param_numel`` entries are the module's parameters in ``module.parameters()``
order (``FlatModelState``); float buffers (BatchNorm statistics) follow and are averaged as in FedAvg.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from lightning_fl.errors import FederatedConfigError, check
from lightning_fl.model_state import split_like


@dataclass
class AlgorithmContext:
    """What the strategy gives a client algorithm when training starts."""

    params: Sequence[torch.Tensor]  # the module's parameters, live
    global_flat: torch.Tensor  # the global model (parameters first), updated in place each round
    param_numel: int
    num_clients: int
    # Opens (or creates) a per-client store of flat vectors of a given size, kept outside RAM.
    open_store: Callable[[str, int], Any]

    def global_param_views(self) -> list[torch.Tensor]:
        return [v.view_as(p) for v, p in zip(split_like(self.global_flat, self.params), self.params)]


@dataclass(frozen=True)
class TrainingSetup:
    """How the module trains, for algorithms to accept or refuse at setup."""

    optimizers: Sequence[torch.optim.Optimizer]
    automatic_optimization: bool
    precision: str  # Lightning's precision flag, e.g. "32-true", "bf16-mixed", "16-mixed"


class ClientAlgorithm:
    """Plain local SGD (FedAvg's client); subclasses override the hooks they need."""

    #: True when ``client_update`` needs the client's change vector (the strategy then sums changes).
    needs_update = False
    #: True when ``server_update`` rewrites the average (else the plain average is applied as is).
    rewrites_average = False
    #: True when ``correct_gradients`` / ``after_step`` do something.
    hooks_steps = False
    #: Precisions under which the algorithm is exact; others are refused at setup.
    precisions: tuple[str, ...] = ("32-true", "64-true", "bf16-mixed", "16-mixed")

    @property
    def name(self) -> str:
        return type(self).__name__

    def check_training(self, setup: TrainingSetup) -> None:
        """Raise a one-line ``FederatedConfigError`` if the module trains in a way the algorithm cannot follow."""
        precision = str(setup.precision)
        if precision not in self.precisions:
            raise FederatedConfigError(
                f"client_algorithm={self.name} supports precision {', '.join(self.precisions)}; got '{precision}'"
            )

    def sums(self) -> dict[str, int]:
        """Extra per-round sums (name -> numel) carried in the round's single all-reduce."""
        return {}

    def setup(self, context: AlgorithmContext) -> None:
        pass

    def client_start(self, client_id: int) -> None:
        pass

    def correct_gradients(self, scale: Optional[torch.Tensor]) -> None:
        pass

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def client_update(self, client_id: int, update: torch.Tensor, weight: float, sums: dict[str, torch.Tensor]) -> None:
        pass

    def server_update(self, average: torch.Tensor, sums: dict[str, torch.Tensor], total_weight: float) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{self.name}()"


def _grads_and(params: Sequence[torch.Tensor], others: Sequence[torch.Tensor]) -> tuple[list, list, list]:
    """Parameters that received a gradient this step, their gradients, and the matching ``others``."""
    ps, gs, os_ = [], [], []
    for p, o in zip(params, others):
        if p.grad is not None:
            ps.append(p)
            gs.append(p.grad)
            os_.append(o)
    return ps, gs, os_


def _add_scaled_(grads: list[torch.Tensor], terms: list[torch.Tensor], factor: float, scale: Optional[torch.Tensor]):
    """grads += factor · scale · terms (scale: the loss scale under 16-mixed, gradients still scaled)."""
    if not grads:
        return
    if scale is None:
        torch._foreach_add_(grads, terms, alpha=factor)
    else:
        torch._foreach_add_(grads, torch._foreach_mul(terms, scale * factor))


def _sgd_optimizers(owner: str, setup: TrainingSetup) -> list[torch.optim.SGD]:
    out = []
    for opt in setup.optimizers:
        raw = getattr(opt, "optimizer", opt)  # LightningOptimizer wraps the torch one
        if not isinstance(raw, torch.optim.SGD):
            raise FederatedConfigError(
                f"client_algorithm={owner} needs torch.optim.SGD as the client optimizer (its update rule assumes "
                f"plain gradient steps); configure_optimizers returned {type(raw).__name__}"
            )
        out.append(raw)
    return out


class FedProx(ClientAlgorithm):
    """FedProx (Li et al. 2020): each local step minimizes F_k(w) + μ/2‖w − w_global‖².

    The proximal gradient μ(w − w_global) is added to the loss gradient right after backward, so gradient
    clipping and the optimizer see the full objective's gradient. Under 16-mixed it is multiplied by the
    loss scale, since the gradients are still scaled at that point. μ = 0 is FedAvg.
    """

    hooks_steps = True

    def __init__(self, mu: float = 0.01) -> None:
        check(isinstance(mu, (int, float)) and not isinstance(mu, bool) and mu >= 0, f"FedProx: mu must be >= 0, got {mu}")
        self.mu = float(mu)
        self._params: Sequence[torch.Tensor] = ()
        self._global: list[torch.Tensor] = []

    def setup(self, context: AlgorithmContext) -> None:
        self._params = context.params
        self._global = context.global_param_views()
        self._neg_anchor: list[torch.Tensor] = []

    def client_start(self, client_id: int) -> None:
        # −μ·w_global, once per client (the global model does not move during local steps), so each step
        # adds μ·w and this instead of building w − w_global: two passes over the model instead of three.
        if self.mu != 0.0:
            self._neg_anchor = torch._foreach_mul(list(self._global), -self.mu)

    def correct_gradients(self, scale: Optional[torch.Tensor]) -> None:
        if self.mu == 0.0:
            return
        params, grads, anchors = _grads_and(self._params, self._neg_anchor)
        if not grads:
            return
        if scale is None:
            torch._foreach_add_(grads, [p.detach() for p in params], alpha=self.mu)
            torch._foreach_add_(grads, anchors)
        else:  # 16-mixed: gradients are still scaled
            terms = torch._foreach_add([p.detach() for p in params], anchors, alpha=1.0 / self.mu)
            _add_scaled_(grads, terms, self.mu, scale)

    def __repr__(self) -> str:
        return f"FedProx(mu={self.mu})"


class Scaffold(ClientAlgorithm):
    """SCAFFOLD (Karimireddy et al. 2020), Algorithm 1 with option II.

    Local steps use g − c_i + c. After K local steps a client sets
    c_i⁺ = c_i − c + (x − y_i)/(K·η_l); the server applies x ← x + η_g·mean(y_i − x) and
    c ← c + (|S|/N)·mean(c_i⁺ − c_i), i.e. c ← c + Σ(c_i⁺ − c_i)/N.

    K·η_l is the total weight the local steps gave the (corrected) gradients, so that (x − y_i)/(K·η_l) is
    their weighted mean. With plain SGD that is Σ_k η_k over the steps that updated the parameter, which
    makes per-group learning rates and LR schedulers exact. With heavy-ball momentum ρ (SGD's
    ``momentum``; the paper's algorithm has none) step k moves the weights by η_k·buf_k with
    buf_k = Σ_{j≤k} ρ^{k−j} g_j, which carries gradients of total weight η_k·(1 − ρ^{k+1})/(1 − ρ); so
    K·η_l = Σ_k η_k·(1 − ρ^{k+1})/(1 − ρ) per parameter (FedNova's a_i·η for a constant η), and c_i⁺ is
    again a weighted mean of the client's gradients. Weight decay is part of the gradient. Other
    optimizers, dampening and Nesterov are refused.

    Control variates c_i persist across rounds in a client-state store on disk (one file per client that
    ever trained), never all in RAM. The server average of y_i − x uses the strategy's client weights
    (samples), as FedAvg does; for equal-sized clients that is the paper's plain mean.
    """

    needs_update = True
    rewrites_average = True
    hooks_steps = True
    precisions = ("32-true", "64-true", "bf16-mixed")  # 16-mixed may skip steps, breaking Σ η_k

    def __init__(self, server_lr: float = 1.0) -> None:
        check(
            isinstance(server_lr, (int, float)) and not isinstance(server_lr, bool) and server_lr > 0,
            f"Scaffold: server_lr must be > 0, got {server_lr}",
        )
        self.server_lr = float(server_lr)
        self._params: Sequence[torch.Tensor] = ()
        self._index: dict[int, int] = {}
        self._param_numel = 0
        self._num_clients = 1
        self._c: Optional[torch.Tensor] = None  # server control variate (parameters only)
        self._c_i: Optional[torch.Tensor] = None  # the current client's variate
        self._correction: Optional[torch.Tensor] = None  # c − c_i
        self._correction_views: list[torch.Tensor] = []
        self._step_weights: list[float] = []  # per parameter: Σ_k η_k (1 − ρ^{k+1})/(1 − ρ)
        self._steps: list[int] = []
        self._store: Any = None

    def check_training(self, setup: TrainingSetup) -> None:
        super().check_training(setup)
        for opt in _sgd_optimizers(self.name, setup):
            for group in opt.param_groups:
                if group.get("nesterov", False) or group.get("dampening", 0):
                    raise FederatedConfigError(
                        "client_algorithm=Scaffold supports SGD with or without heavy-ball momentum, not Nesterov or "
                        f"dampening (its control-variate update needs each step's weight); got nesterov="
                        f"{group.get('nesterov')}, dampening={group.get('dampening')}"
                    )

    def sums(self) -> dict[str, int]:
        return {"scaffold/delta_c": self._param_numel}

    def setup(self, context: AlgorithmContext) -> None:
        self._params = context.params
        self._index = {id(p): i for i, p in enumerate(context.params)}
        self._param_numel = context.param_numel
        self._num_clients = context.num_clients
        flat = context.global_flat
        # A new fit starts from zero variates; a checkpoint's c is loaded after setup.
        self._c = torch.zeros(self._param_numel, dtype=flat.dtype, device=flat.device)
        self._c_i = torch.zeros_like(self._c)
        self._correction = torch.zeros_like(self._c)
        self._correction_views = [v.view_as(p) for v, p in zip(split_like(self._correction, self._params), self._params)]
        self._store = context.open_store("scaffold_c", self._param_numel)

    def client_start(self, client_id: int) -> None:
        assert self._c is not None and self._c_i is not None and self._correction is not None
        stored = self._store.load(client_id)
        if stored is None:
            self._c_i.zero_()
        else:
            self._c_i.copy_(stored)
        torch.sub(self._c, self._c_i, out=self._correction)
        self._step_weights = [0.0] * len(self._params)
        self._steps = [0] * len(self._params)

    def correct_gradients(self, scale: Optional[torch.Tensor]) -> None:
        _, grads, corrections = _grads_and(self._params, self._correction_views)
        _add_scaled_(grads, corrections, 1.0, scale)

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            lr, rho = float(group["lr"]), float(group.get("momentum", 0.0))
            for p in group["params"]:
                i = self._index.get(id(p))
                if i is None or p.grad is None:  # SGD skips a parameter without gradient entirely
                    continue
                k = self._steps[i]
                self._step_weights[i] += lr if rho == 0.0 else lr * (1.0 - rho ** (k + 1)) / (1.0 - rho)
                self._steps[i] = k + 1

    def client_update(self, client_id: int, update: torch.Tensor, weight: float, sums: dict[str, torch.Tensor]) -> None:
        assert self._c is not None and self._c_i is not None
        # c_i⁺ = c_i − c + (x − y_i)/(K·η_l) = c_i − c − update/(K·η_l) per parameter; a parameter no step
        # touched keeps its c_i.
        delta_c = sums["scaffold/delta_c"]
        new_c_i = self._c_i.clone()
        for view_u, view_new, view_c, weight_sum in zip(
            split_like(update, self._params), split_like(new_c_i, self._params), split_like(self._c, self._params),
            self._step_weights,
        ):
            if weight_sum > 0:
                view_new.sub_(view_c).sub_(view_u, alpha=1.0 / weight_sum)
        delta_c.add_(new_c_i).sub_(self._c_i)
        self._store.save(client_id, new_c_i)

    def server_update(self, average: torch.Tensor, sums: dict[str, torch.Tensor], total_weight: float) -> None:
        assert self._c is not None
        self._c.add_(sums["scaffold/delta_c"], alpha=1.0 / self._num_clients)
        if self.server_lr != 1.0:
            average.mul_(self.server_lr)

    def state_dict(self) -> dict[str, Any]:
        return {} if self._c is None else {"c": self._c.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "c" in state:
            assert self._c is not None, "load_state_dict before setup"
            self._c.copy_(state["c"])

    def __repr__(self) -> str:
        return f"Scaffold(server_lr={self.server_lr})"


def fednova_a(steps: int, momentum: float = 0.0) -> float:
    """FedNova's a_i for τ local SGD steps with momentum ρ (Wang et al. 2020): ‖a_i‖₁.

    Plain SGD: a = τ. Momentum ρ: a = [τ − ρ(1 − ρ^τ)/(1 − ρ)] / (1 − ρ).
    """
    if momentum == 0.0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1.0 - rho**steps) / (1.0 - rho)) / (1.0 - rho)


class FedNova(ClientAlgorithm):
    """FedNova (Wang et al. 2020): normalized averaging for clients that did different amounts of work.

    d_i = (x − y_i)/a_i, x ← x − τ_eff·Σ p_i d_i with τ_eff = Σ p_i a_i, where a_i counts client i's local
    SGD steps (weighted for momentum, see :func:`fednova_a`) and p_i are the strategy's client weights.
    Applies to the parameters; float buffers (BatchNorm statistics) are averaged as in FedAvg. Equal local
    work reduces it to FedAvg.
    """

    needs_update = True
    rewrites_average = True
    hooks_steps = True
    precisions = ("32-true", "64-true", "bf16-mixed")  # 16-mixed may skip steps, breaking the step count

    def __init__(self) -> None:
        self._param_numel = 0
        self._momentum = 0.0
        self._steps = 0

    def check_training(self, setup: TrainingSetup) -> None:
        super().check_training(setup)
        optimizers = _sgd_optimizers(self.name, setup)
        if len(optimizers) != 1:
            raise FederatedConfigError(
                f"client_algorithm=FedNova counts one optimizer's local steps; configure_optimizers returned "
                f"{len(optimizers)} optimizers"
            )
        groups = optimizers[0].param_groups
        momenta = {float(g.get("momentum", 0.0)) for g in groups}
        if len(momenta) != 1 or any(g.get("nesterov", False) or g.get("dampening", 0) for g in groups):
            raise FederatedConfigError(
                "client_algorithm=FedNova needs one momentum for all parameter groups, without Nesterov or "
                f"dampening (a_i is defined for heavy-ball SGD); got momenta {sorted(momenta)}"
            )
        self._momentum = momenta.pop()

    def sums(self) -> dict[str, int]:
        return {"fednova/tau_eff": 1}

    def setup(self, context: AlgorithmContext) -> None:
        self._param_numel = context.param_numel

    def client_start(self, client_id: int) -> None:
        self._steps = 0

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._steps += 1

    def client_update(self, client_id: int, update: torch.Tensor, weight: float, sums: dict[str, torch.Tensor]) -> None:
        a = fednova_a(self._steps, self._momentum)
        if a > 0:
            update[: self._param_numel].div_(a)
        sums["fednova/tau_eff"].add_(weight * a)

    def server_update(self, average: torch.Tensor, sums: dict[str, torch.Tensor], total_weight: float) -> None:
        tau_eff = float(sums["fednova/tau_eff"]) / total_weight
        average[: self._param_numel].mul_(tau_eff)

    def __repr__(self) -> str:
        return "FedNova()"


__all__ = [
    "AlgorithmContext",
    "ClientAlgorithm",
    "FedNova",
    "FedProx",
    "Scaffold",
    "TrainingSetup",
    "fednova_a",
]
