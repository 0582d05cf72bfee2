"""Server optimizers of the FedOpt family, written as Reddi et al. 2021 state them.

"Adaptive Federated Optimization" (Reddi et al., ICLR 2021), Algorithm 2. With Δ the round's average
client change (average − global):

    m ← β1·m + (1 − β1)·Δ
    FedAdagrad: v ← v + Δ², with m = Δ (β1 = 0: its constructor takes no betas)
    FedAdam:    v ← β2·v + (1 − β2)·Δ²
    FedYogi:    v ← v − (1 − β2)·Δ²·sign(v − Δ²)
    global ← global + lr · m / (√v + τ)

No bias correction (``torch.optim.Adam`` has one, which is why it is only FedAdam-*style*), and v starts at
τ² (the paper requires v₋₁ ≥ τ²; starting exactly there keeps the first step's denominator at 2τ for
Δ = 0 and bounded otherwise). FedAvgM (Hsu et al. 2019) is server SGD with momentum: v ← β·v + Δ,
global ← global + lr·v, which is ``torch.optim.SGD`` on the pseudo-gradient −Δ.

Every class here is a factory ``params -> torch.optim.Optimizer``: the strategy hands it the flat global
vector and sets ``grad = global − average`` (the pseudo-gradient, −Δ) before each ``step()``; so any other
``torch.optim`` optimizer plugs in the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from lightning_fl.errors import check


def _check_lr(owner: str, lr: float) -> None:
    check(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0, f"{owner}: lr must be > 0, got {lr}")


def _check_tau(owner: str, tau: float) -> None:
    check(isinstance(tau, (int, float)) and tau > 0, f"{owner}: tau must be > 0, got {tau}")


def _check_beta(owner: str, name: str, beta: float) -> None:
    check(isinstance(beta, (int, float)) and 0.0 <= beta < 1.0, f"{owner}: {name} must be in [0, 1), got {beta}")


class AdaptiveServerOptimizer(torch.optim.Optimizer):
    """Reddi et al.'s adaptive server step on a pseudo-gradient g = −Δ (``rule``: adagrad, adam or yogi)."""

    RULES = ("adagrad", "adam", "yogi")

    def __init__(
        self, params: Iterable[torch.Tensor], rule: str, lr: float, beta1: float, beta2: float, tau: float
    ) -> None:
        check(rule in self.RULES, f"rule must be one of {', '.join(self.RULES)}, got {rule!r}")
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, tau=tau))
        self.rule = rule

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, beta1, beta2, tau = group["lr"], group["beta1"], group["beta2"], group["tau"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                delta = -p.grad  # the round's average change
                state = self.state[p]
                if not state:
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.full_like(p, tau * tau)
                m, v = state["m"], state["v"]
                square = delta * delta
                if self.rule == "adagrad":
                    m.copy_(delta)
                    v.add_(square)
                else:
                    m.mul_(beta1).add_(delta, alpha=1.0 - beta1)
                    if self.rule == "adam":
                        v.mul_(beta2).add_(square, alpha=1.0 - beta2)
                    else:
                        v.sub_(square * torch.sign(v - square), alpha=1.0 - beta2)
                p.addcdiv_(m, v.sqrt().add_(tau), value=lr)


class FedAvgM:
    """FedAvgM (Hsu et al. 2019): server momentum, v ← β·v + Δ, global ← global + lr·v."""

    def __init__(self, lr: float = 1.0, momentum: float = 0.9) -> None:
        _check_lr("FedAvgM", lr)
        _check_beta("FedAvgM", "momentum", momentum)
        self.lr, self.momentum = float(lr), float(momentum)

    def __call__(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)

    def __repr__(self) -> str:
        return f"FedAvgM(lr={self.lr}, momentum={self.momentum})"


class FedAdagrad:
    """FedAdagrad (Reddi et al. 2021, Alg. 2): m = Δ, v ← v + Δ², global ← global + lr·m/(√v + τ)."""

    def __init__(self, lr: float = 0.1, tau: float = 1e-3) -> None:
        _check_lr("FedAdagrad", lr)
        _check_tau("FedAdagrad", tau)
        self.lr, self.tau = float(lr), float(tau)

    def __call__(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        return AdaptiveServerOptimizer(params, "adagrad", self.lr, 0.0, 0.0, self.tau)

    def __repr__(self) -> str:
        return f"FedAdagrad(lr={self.lr}, tau={self.tau})"


class _BetasServer:
    rule = ""

    def __init__(self, lr: float = 0.01, betas: tuple[float, float] | list[float] = (0.9, 0.99), tau: float = 1e-3):
        name = type(self).__name__
        _check_lr(name, lr)
        check(len(tuple(betas)) == 2, f"{name}: betas must be two numbers (beta1, beta2), got {betas!r}")
        _check_beta(name, "betas[0]", betas[0])
        _check_beta(name, "betas[1]", betas[1])
        _check_tau(name, tau)
        self.lr, self.betas, self.tau = float(lr), (float(betas[0]), float(betas[1])), float(tau)

    def __call__(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        return AdaptiveServerOptimizer(params, self.rule, self.lr, self.betas[0], self.betas[1], self.tau)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr}, betas={self.betas}, tau={self.tau})"


class FedAdam(_BetasServer):
    """FedAdam (Reddi et al. 2021, Alg. 2): v ← β2·v + (1 − β2)·Δ², no bias correction."""

    rule = "adam"


class FedYogi(_BetasServer):
    """FedYogi (Reddi et al. 2021, Alg. 2): v ← v − (1 − β2)·Δ²·sign(v − Δ²), no bias correction."""

    rule = "yogi"
