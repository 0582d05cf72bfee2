"""The fast path: a client's local steps inside one Lightning training step.

In the ordinary path every local step of every client is one Lightning training step, so Lightning's
per-step machinery (batch fetch and collate, hook dispatch, progress counters, logger bookkeeping, the
per-batch SIGTERM broadcast with several processes) is paid once per local batch. In the cross-device
regime (many clients with a few batches each) that machinery is a visible share of the round.

On the fast path the round's loader yields one item per client (the list of its collated batches), plus
padding items so every process runs the same number of Lightning steps. The strategy's
``optimizer_step`` then runs the client's local batches one after another, each through the sequence of
Lightning's automatic optimization (``training_step`` with the current sub-batch and the batch index the
ordinary path would have used, ``zero_grad``, ``backward``, the ``on_before_*``/``on_after_backward``
hooks, the client algorithm's gradient correction, gradient clipping, the optimizer). With the 32-bit or
bf16-mixed precision plugin and no profiler, ``local_steps.DirectSteps`` runs that sequence itself and
calls only the hooks someone overrides; otherwise each local batch goes through Lightning's own
``Strategy.optimizer_step``. Either way the weights are bit-identical to the ordinary path. Lightning's
step counters are advanced per local batch as well, so ``trainer.global_step`` (checkpoint names, the
loggers' x-axis) matches the ordinary path.

What cannot run once per client is anything that observes Lightning's per-batch loop itself: per-batch
hooks (``on_train_batch_start/end`` in callbacks or the module, ``optimizer_step``/``optimizer_zero_grad``
or batch-transfer overrides), per-step LR schedulers, per-step logging, manual optimization. When any is
present the fast path is not taken (with ``fast_path=None``, the default; the reason is logged once) or
refused (``fast_path=True``). Per-step logging can only be seen by running a step, so with
``fast_path=None`` the first round of a fit runs on the ordinary path and decides.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.attacks import ModelPoisoning
from lightning_fl.federated.sampling import client_batches
from lightning_fl.federated.schedule import ClientJob, RoundPlan
from lightning_fl.strategies.local_steps import DirectSteps, direct_blocker
from lightning_fl.strategies.round_data import identity_collate, make_fetch, worker_settings

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

    from lightning_fl.strategies.fedavg import FedAvgStrategy

log = logging.getLogger(__name__)

# Module hooks Lightning calls once per training batch (not once per optimizer step inside the closure).
_PER_BATCH_MODULE_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "optimizer_step",
    "optimizer_zero_grad",
    "on_before_batch_transfer",
    "transfer_batch_to_device",
    "on_after_batch_transfer",
)
_PER_BATCH_CALLBACK_HOOKS = ("on_train_batch_start", "on_train_batch_end")


# ---------------------------------------------------------------------------------------------- data
class ClientItemDataset(Dataset):
    """Item t of a round: the list of client t's collated local batches, or a one-batch padding item."""

    def __init__(
        self,
        dataset: Any,
        collate_fn: Callable[[Any], Any],
        items: Sequence[Optional[ClientJob]],
        partition: Any,
        silo: bool,
        batch_size: int,
        drop_last: bool,
        seed: int,
        round_idx: int,
        pad_index: int = 0,
    ) -> None:
        self.dataset, self.collate_fn = dataset, collate_fn
        self.items = list(items)
        self.partition, self.silo = partition, silo  # not a lambda: workers may need to pickle this
        self.batch_size, self.drop_last, self.seed, self.round_idx = batch_size, drop_last, seed, round_idx
        self.pad_index = pad_index
        self._fetch: Optional[Callable[[list[int]], Any]] = None  # built lazily: in the worker, if any

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, t: int) -> list[Any]:
        if self._fetch is None:
            self._fetch = make_fetch(self.dataset, self.collate_fn)
        job = self.items[t]
        if job is None:
            return [self._fetch([self.pad_index])]
        # The same batches, in the same order, as RoundBatchSampler yields for this client.
        batches = client_batches(
            self.partition.client(0 if self.silo else job.client_id), self.batch_size, job.num_steps, self.drop_last,
            self.seed, self.round_idx, job.client_id,
        )
        assert len(batches) == job.num_steps, "client batch count disagrees with the round plan"
        return [self._fetch(b) for b in batches]


class _Range(Sampler[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))


def round_items(plan: RoundPlan) -> list[Optional[ClientJob]]:
    """This rank's Lightning steps of the round: its clients with work, then padding (``None``).

    Every rank runs as many items as the rank with the most sampled clients (a pure function of the plan,
    the same everywhere), so the per-step collectives and the round's end line up across ranks.
    """
    length = max(1, plan.most_clients_per_rank)
    jobs: list[Optional[ClientJob]] = [j for j in plan.jobs if j.num_steps > 0]
    return jobs + [None] * (length - len(jobs))


def rebuild_item_loader(loader: DataLoader, dataset: ClientItemDataset) -> DataLoader:
    """A loader like the user's (workers, pinning) that yields one client item per step."""
    # Workers never persist: the item dataset is new every round.
    settings = worker_settings(loader, persistent_workers=False)
    return DataLoader(dataset, batch_size=None, sampler=_Range(len(dataset)), collate_fn=identity_collate, **settings)


# ---------------------------------------------------------------------------------------------- decision
def _callback_per_batch(callback: Callback) -> bool:
    """Whether a callback observes individual training batches (and so needs the ordinary path)."""
    if not any(is_overridden(h, callback, Callback) for h in _PER_BATCH_CALLBACK_HOOKS):
        return False
    module = type(callback).__module__
    ours = module.startswith("lightning.") or module.startswith("pytorch_lightning.") or module.startswith("lightning_fl.")
    if isinstance(callback, ProgressBar) and ours:
        return False  # a bar that advances once per client instead of once per batch: display only
    if type(callback) is ModelCheckpoint:
        # Saves at round ends unless told to save every n steps or every so many seconds.
        return bool(callback._every_n_train_steps) or callback._train_time_interval is not None
    return True


def static_blocker(strategy: FedAvgStrategy, trainer: Trainer) -> Optional[str]:
    """Why this fit cannot take the fast path, from its settings alone (``None``: it can)."""
    module = strategy.lightning_module
    assert module is not None
    if not module.automatic_optimization:
        return "the module uses manual optimization"
    if trainer.accumulate_grad_batches != 1:
        return f"accumulate_grad_batches={trainer.accumulate_grad_batches}"
    for config in strategy.lr_scheduler_configs:
        if config.interval == "step":
            return "an LR scheduler steps every batch (interval='step')"
    for hook in _PER_BATCH_MODULE_HOOKS:
        if is_overridden(hook, module):
            return f"the module overrides {hook}(), which runs once per training batch"
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if _callback_per_batch(callback):
            return f"callback {type(callback).__name__} runs on every training batch"
    if isinstance(strategy.attack, ModelPoisoning) and getattr(strategy.attack, "needs_benign_statistics", False):
        return "the attack needs per-step statistics"
    return None


def step_logging_blocker(trainer: Trainer) -> Optional[str]:
    """Per-step logging seen so far in this fit (``self.log(..., on_step=True)`` in any training hook)."""
    results = trainer.fit_loop.epoch_loop._results
    for result in results.values():
        meta = getattr(result, "meta", None)
        if meta is not None and meta.on_step:
            return f"'{meta.name}' is logged per step (on_step=True, in {meta.fx})"
    return None


# ---------------------------------------------------------------------------------------------- the path
class FastPath:
    """Decides per round whether the fast path runs, and runs a client's local steps when it does."""

    def __init__(self, mode: Optional[bool]) -> None:
        self.mode = mode
        self.active = False  # this round's loader yields client items
        self._probed = False
        self._off_reason: Optional[str] = None
        self._logged: set[str] = set()
        self._items: list[Optional[ClientJob]] = []
        self._item: Optional[list[Any]] = None
        self._item_idx = 0
        self._sub = 0
        self._checked_logging = False
        self._direct: Optional[DirectSteps] = None

    def reset(self) -> None:
        """A new fit: decide again."""
        self.active = False
        self._probed = False
        self._off_reason = None
        self._checked_logging = False
        self._direct = None

    def _not_taken(self, reason: str) -> None:
        self._off_reason = reason
        if reason not in self._logged:
            self._logged.add(reason)
            log.info("lightning_fl: fast path not taken: %s; clients step once per Lightning training step", reason)

    def decide(self, strategy: FedAvgStrategy, trainer: Trainer) -> bool:
        """Whether this round runs on the fast path (called when the round's loader is built)."""
        self.active = False
        if self.mode is False or self._off_reason is not None:
            return False
        reason = static_blocker(strategy, trainer)
        if reason is None:
            reason = step_logging_blocker(trainer)
        if reason is not None:
            if self.mode:
                raise FederatedConfigError(
                    f"fast_path=True, but {reason}: the fast path runs a client's local steps inside one Lightning "
                    "training step; remove that or use fast_path=None (automatic) / False"
                )
            self._not_taken(reason)
            return False
        if self.mode is None and not self._probed:
            # The first round runs per batch: per-step logging only shows once training_step has run.
            self._probed = True
            return False
        self.active = True
        if self._direct is None or self._direct.trainer is not trainer:
            indirect = direct_blocker(strategy, trainer)
            if indirect is None:
                self._direct = DirectSteps(strategy, trainer)
            elif indirect not in self._logged:
                self._logged.add(indirect)
                log.info("lightning_fl: fast path: %s, so each local step goes through Lightning's optimizer step", indirect)
        return True

    def loader(self, strategy: FedAvgStrategy, loader: DataLoader, partition: Any, batch_size: int, drop_last: bool) -> DataLoader:
        plan = strategy._plan
        assert plan is not None
        self._items = round_items(plan)
        dataset = ClientItemDataset(
            loader.dataset,
            loader.collate_fn,
            self._items,
            partition,
            strategy.is_silo,
            batch_size=batch_size,
            drop_last=drop_last,
            seed=strategy.seed,
            round_idx=plan.round_idx,
        )
        return rebuild_item_loader(loader, dataset)

    # ------------------------------------------------------------------ per Lightning step
    def on_train_batch_start(self, strategy: FedAvgStrategy, batch: Any, batch_idx: int) -> None:
        plan = strategy._plan
        assert plan is not None
        self._item, self._item_idx, self._sub = batch, batch_idx, 0
        if batch_idx == 0:
            trainer = strategy.lightning_module.trainer  # type: ignore[union-attr]
            self._round_start = trainer.global_step
            strategy._begin_round(plan)
        job = self._items[batch_idx]
        if job is not None:
            strategy._step = job.first_step
            strategy._begin_client(plan, job)
        strategy._padding = job is None

    def step_args(self, strategy: FedAvgStrategy, args: tuple) -> tuple:
        """``training_step``'s arguments for the current local batch: the sub-batch and its ordinary index."""
        assert self._item is not None
        batch = self._item[self._sub]
        # Epoch-level self.log(...) weighs values by the batch size Lightning reads off the current batch.
        trainer = strategy.lightning_module.trainer  # type: ignore[union-attr]
        results = trainer._results
        if results is not None:
            results.batch, results.batch_size = batch, None
        connector = trainer._logger_connector
        if self._sub and connector._first_loop_iter is True:
            # What Lightning's on_batch_start does at the second batch of an epoch: epoch-level values
            # logged from several hooks are reset only during the epoch's first batch, not its first item.
            connector._first_loop_iter = False
        return (batch, strategy._step, *args[2:]) if len(args) > 1 else (batch,)

    def optimizer_step(
        self, strategy: FedAvgStrategy, optimizer: Any, closure: Callable[[], Any], model: Any, **kwargs: Any
    ) -> Any:
        plan = strategy._plan
        assert plan is not None
        trainer = strategy.lightning_module.trainer  # type: ignore[union-attr]
        progress = trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step
        job = self._items[self._item_idx]
        steps = job.num_steps if job is not None else 1
        output = None
        for i in range(steps):
            self._sub = i
            if job is not None:
                strategy._step = job.first_step + i
                strategy._padding = strategy._client_failed  # a failed client's remaining steps are padding
            if i:
                self._advance(trainer, progress, 1)  # Lightning counted this item once; count each local step
            if self._direct is not None:
                result = self._direct.step(optimizer, strategy._step, keep_result=i == steps - 1, **kwargs)
            else:
                output = strategy._client_step(optimizer, closure, model, **kwargs)
        if not self._checked_logging:
            self._checked_logging = True
            reason = step_logging_blocker(trainer)
            if reason is not None and self.mode:
                raise FederatedConfigError(f"fast_path=True, but {reason}; use fast_path=None or False")
        if self._direct is not None:
            closure._result = result  # type: ignore[attr-defined]  # what Lightning's loop consumes after this step
        if job is not None:
            strategy._end_client(plan, job)
        if self._item_idx == len(self._items) - 1:
            # Every rank ends the round at its last item (the same Lightning step everywhere), with the
            # step count the ordinary path reaches: Lightning adds this step's 1 after this hook returns.
            self._advance(trainer, progress, self._round_start + plan.num_steps - 1 - trainer.global_step)
            strategy._step = plan.num_steps - 1
            strategy._end_round(plan)
            if self.mode is None:
                reason = step_logging_blocker(trainer)  # logging that began after the first round
                if reason is not None:
                    self._not_taken(reason)
        return output

    @staticmethod
    def _advance(trainer: Trainer, progress: Any, n: int) -> None:
        if n:
            progress.increment_by(n)
            trainer.fit_loop.epoch_loop._batches_that_stepped += n
