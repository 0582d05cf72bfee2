"""Callbacks that make federated rounds visible."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar


class RoundSummary(Callback):
    """Prints one line per round (rank 0): round, clients, samples, chosen metrics, seconds, bytes.

    With a strategy that has no rounds (e.g. ``parameter_server``) the line is per epoch.

    ``metrics``: the logged names to show. ``None`` shows ``train_loss``, ``val_loss`` and ``val_acc``, or,
    when the module logs none of those (``train/loss``, ``val/acc``, ...), every metric it logs (the
    strategy's own ``fl/*`` and ``ps/*`` statistics and per-step ``*_step`` values aside).
    """

    DEFAULT_METRICS = ("train_loss", "val_loss", "val_acc")

    def __init__(
        self,
        metrics: Optional[Sequence[str]] = None,
        print_fn: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.metrics = tuple(metrics) if metrics is not None else None
        self.print_fn = print_fn
        self._start = 0.0
        self.lines: list[str] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        seconds = time.perf_counter() - self._start
        metrics = trainer.callback_metrics
        federated = hasattr(trainer.strategy, "round_stats")
        stats: dict[str, float] = getattr(trainer.strategy, "round_stats", {}) or {}
        parts = [f"{'round' if federated else 'epoch'} {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        if stats:
            parts.append(f"clients {int(stats['fl/clients'])} ({int(stats['fl/samples'])} samples)")
            if stats.get("fl/rejected_clients"):
                parts.append(f"rejected {int(stats['fl/rejected_clients'])}")
        parts += [f"{name} {float(metrics[name]):.4f}" for name in self._names(metrics)]
        parts += self._client_spread(stats)
        parts.append(f"{seconds:.2f} s")
        if stats:
            parts.append(f"comm {stats['fl/comm_bytes'] / 1e6:.2f} MB/rank")
        line = " | ".join(parts)
        self.lines.append(line)
        self._emit(trainer, line)

    def _client_spread(self, stats: dict[str, float]) -> list[str]:
        """Federated evaluation's view: per metric, the clients' sample-weighted mean and the worst tenth
        (the 10th percentile, or the 90th for a loss, where higher is worse)."""
        evaluated = list(dict.fromkeys(k[len("fl/eval/") : -len("/mean")] for k in stats if k.startswith("fl/eval/") and k.endswith("/mean")))
        if self.metrics is not None:
            evaluated = [n for n in evaluated if n in self.metrics]
        elif any(n in self.DEFAULT_METRICS for n in evaluated):
            evaluated = [n for n in evaluated if n in self.DEFAULT_METRICS]
        out = []
        for name in evaluated:
            worst = "p90" if "loss" in name.lower() else "p10"
            out.append(
                f"clients {name} {stats[f'fl/eval/{name}/mean']:.4f} (worst 10% {stats[f'fl/eval/{name}/{worst}']:.4f})"
            )
        return out

    def _names(self, metrics: dict[str, Any]) -> list[str]:
        if self.metrics is not None:
            return [n for n in self.metrics if n in metrics]
        usual = [n for n in self.DEFAULT_METRICS if n in metrics]
        if usual:
            return usual
        own = ("fl/", "ps/", "epoch", "step")
        return sorted(
            n
            for n, v in metrics.items()
            if not n.startswith(own) and not n.endswith("_step") and getattr(v, "numel", lambda: 1)() == 1
        )

    def _emit(self, trainer: Trainer, line: str) -> None:
        if self.print_fn is not None:
            self.print_fn(line)
        elif trainer.progress_bar_callback is not None:
            trainer.progress_bar_callback.print(line)  # does not tear the progress bar
        else:
            print(line, flush=True)


class RoundProgressBar(TQDMProgressBar):
    """TQDM progress bar that counts rounds ("Round 3/10") and this process's clients ("client 2/5")."""

    def on_train_epoch_start(self, trainer: Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Round {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        progress = getattr(trainer.strategy, "client_progress", None)
        if progress is not None and trainer.training:
            items["client"] = f"{progress[0]}/{progress[1]}"
        return items
