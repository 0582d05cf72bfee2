"""FedAvg (McMahan et al. 2017) and its server-optimizer family as a Lightning strategy.

One Lightning epoch is one federated round. In a round:

1. every rank computes the same sample of ``clients_per_round`` clients and the same assignment of those
   clients to ranks (pure functions of the seed and the round, no communication);
2. each rank trains its clients one after another: a client starts from the global weights with cleared
   optimizer state and its own seeded RNG, and runs ``local_epochs`` shuffled passes over its partition;
3. after a client's last step its weights are folded into a running weighted sum (O(1) memory);
4. after the round's last step one all-reduce combines the ranks' sums, and the server update turns the
   average into the next global model, which every rank then holds.

Aggregation happens inside the last training step, so validation, checkpoints, early stopping, LR
schedulers and loggers all run per round on the global model. The class reuses ``DDPStrategy`` for
process launch, cluster environments and collectives (through ``UnwrappedDDPStrategy``), but does not wrap
the model in DistributedDataParallel: clients never synchronise gradients; setup() aligns the initial
weights across ranks instead.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal, Optional

import torch
import torch.distributed as dist
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from lightning_fl.federated.aggregation import WeightedSum, all_finite
from lightning_fl.errors import FederatedConfigError, check, is_int
from lightning_fl.model_state import FlatModelState, split_like
from lightning_fl.federated.partition import PARTITIONS, Partition, dataset_labels, make_partition
from lightning_fl.federated.sampling import num_client_batches, sample_clients
from lightning_fl.federated.schedule import ClientJob, RoundPlan, plan_round
from lightning_fl.seeding import derive_seed
from lightning_fl.federated.server_update import ServerOptimizerFactory, ServerUpdate
from lightning_fl.strategies.base import UnwrappedDDPStrategy
from lightning_fl.strategies.round_data import (
    RoundBatchSampler,
    loader_settings,
    rebuild_loader,
)

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "lightning_fl"
_DEFAULT_NUM_CLIENTS = 10


class FedAvgStrategy(UnwrappedDDPStrategy):
    """Federated averaging over simulated clients (many per process) or real silos (one per process).

    Args:
        num_clients: clients the training set is split into. Default: 10, or one per process with
            ``partition="silo"`` (where it must equal the world size).
        clients_per_round: clients sampled (uniformly, without replacement) each round. Default: all.
        local_epochs: full passes a client makes over its partition per round (shuffled each pass).
        partition: ``"iid"``, ``"dirichlet"`` (label skew, see ``alpha``), ``"shards"`` (McMahan et al.'s
            sort-and-shard split, see ``shards_per_client``) or ``"silo"`` (each process is one client
            and trains on its own DataModule's data as is; data never leaves the node).
        alpha: Dirichlet concentration for ``partition="dirichlet"``; smaller is more skewed.
        shards_per_client: shards per client for ``partition="shards"``.
        seed: seeds client sampling, partitions, client shuffles and each client's torch RNG.
        server_optimizer: ``None`` for plain averaging, or a factory ``params -> torch.optim.Optimizer``
            applied to the pseudo-gradient (global − average), e.g.
            ``functools.partial(torch.optim.SGD, lr=1.0, momentum=0.9)`` for FedAvgM.
        skip_nonfinite_updates: drop a client whose weights hold NaN/inf after training (reported as
            ``fl/rejected_clients``) instead of failing the run. The global model is never corrupted.
        timeout: collective timeout (a ``timedelta`` or seconds); a dead rank ends the job after this
            long instead of hanging.

    The remaining arguments are those of :class:`~lightning.pytorch.strategies.DDPStrategy`.
    """

    strategy_name = "fedavg"

    def __init__(
        self,
        num_clients: Optional[int] = None,
        clients_per_round: Optional[int] = None,
        local_epochs: int = 1,
        partition: str = "iid",
        alpha: float = 0.5,
        shards_per_client: int = 2,
        seed: int = 0,
        server_optimizer: Optional[ServerOptimizerFactory] = None,
        skip_nonfinite_updates: bool = True,
        accelerator: Any = None,
        parallel_devices: Optional[list[torch.device]] = None,
        cluster_environment: Optional[ClusterEnvironment] = None,
        checkpoint_io: Optional[CheckpointIO] = None,
        precision_plugin: Optional[Precision] = None,
        process_group_backend: Optional[str] = None,
        timeout: Optional[timedelta | float] = default_pg_timeout,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
    ) -> None:
        check(partition in PARTITIONS, f"partition must be one of {', '.join(PARTITIONS)}; got '{partition}'")
        if num_clients is not None:
            check(is_int(num_clients) and num_clients >= 1, f"num_clients must be an integer >= 1, got {num_clients}")
        if clients_per_round is not None:
            check(
                is_int(clients_per_round) and clients_per_round >= 1,
                f"clients_per_round must be an integer >= 1, got {clients_per_round}",
            )
            if partition != "silo":
                limit = num_clients if num_clients is not None else _DEFAULT_NUM_CLIENTS
                check(
                    clients_per_round <= limit,
                    f"clients_per_round={clients_per_round} exceeds num_clients={limit}",
                )
        check(is_int(local_epochs) and local_epochs >= 1, f"local_epochs must be an integer >= 1, got {local_epochs}")
        check(alpha > 0, f"alpha must be > 0, got {alpha}")
        check(
            is_int(shards_per_client) and shards_per_client >= 1,
            f"shards_per_client must be an integer >= 1, got {shards_per_client}",
        )
        check(is_int(seed), f"seed must be an integer, got {seed!r}")
        check(
            server_optimizer is None or callable(server_optimizer),
            "server_optimizer must be None or a callable that builds a torch.optim.Optimizer from parameters",
        )
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
            process_group_backend=process_group_backend,
            timeout=timeout,
            start_method=start_method,
        )
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.local_epochs = int(local_epochs)
        self.partition = partition
        self.alpha = float(alpha)
        self.shards_per_client = int(shards_per_client)
        self.seed = int(seed)
        self.skip_nonfinite_updates = skip_nonfinite_updates
        self.server = ServerUpdate(server_optimizer)

        # Built in setup(), per process (keeps the strategy picklable for spawn).
        self._model_state: Optional[FlatModelState] = None
        self._global: Optional[torch.Tensor] = None
        self._global_ints: Optional[torch.Tensor] = None
        self._sum: Optional[WeightedSum] = None
        self._int_max: Optional[torch.Tensor] = None
        self._partition_cache: Optional[tuple[int, int, Partition]] = None
        self._plan: Optional[RoundPlan] = None
        self._step = -1
        self._padding = False
        self._in_round = False
        self._pending_state: Optional[dict[str, Any]] = None
        self._checked_step_logging = False
        self._clients_started = 0
        self.round_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ settings
    @property
    def is_silo(self) -> bool:
        return self.partition == "silo"

    @property
    def total_clients(self) -> int:
        if self.is_silo:
            return self.world_size
        return self.num_clients if self.num_clients is not None else _DEFAULT_NUM_CLIENTS

    @property
    def sampled_per_round(self) -> int:
        return self.clients_per_round if self.clients_per_round is not None else self.total_clients

    @property
    def current_plan(self) -> Optional[RoundPlan]:
        """This rank's plan for the round in progress (``None`` before training starts)."""
        return self._plan

    @property
    def client_progress(self) -> Optional[tuple[int, int]]:
        """(clients started, clients assigned) on this rank in the current round, for progress bars."""
        if self._plan is None:
            return None
        return self._clients_started, len(self._plan.jobs)

    # ------------------------------------------------------------------ launch and setup
    def _preflight(self, trainer: Trainer) -> None:
        """Trainer settings that would break rounds; run before processes start and again in setup."""
        if trainer.state.fn not in (None, TrainerFn.FITTING):
            return
        name = type(self).strategy_name
        if trainer.accumulate_grad_batches != 1:
            raise FederatedConfigError(
                f"accumulate_grad_batches={trainer.accumulate_grad_batches} is not supported with "
                f"strategy='{name}': clients step on every batch; use a larger batch size instead"
            )
        if trainer.limit_train_batches != 1.0 or trainer.overfit_batches:  # type: ignore[attr-defined]
            raise FederatedConfigError(
                f"limit_train_batches/overfit_batches/fast_dev_run would cut rounds short with strategy='{name}'; "
                "shrink num_clients, clients_per_round or local_epochs instead"
            )
        if trainer.max_steps != -1:
            raise FederatedConfigError(
                f"max_steps={trainer.max_steps} would stop inside a round with strategy='{name}'; "
                "count training in rounds with max_epochs"
            )
        if trainer.val_check_interval != 1.0 or getattr(trainer, "_val_check_time_interval", None) is not None:
            raise FederatedConfigError(
                f"val_check_interval={trainer.val_check_interval} would validate a client's local model "
                f"mid-round with strategy='{name}'; validate per round with check_val_every_n_epoch"
            )
        processes = len(self.parallel_devices or [None]) * self.num_nodes
        if processes > 1:
            # Every process must run the module's training_step at least once per round: epoch-level
            # synced metrics (sync_dist=True, torchmetrics) make collectives that all ranks must join.
            if self.is_silo and self.clients_per_round not in (None, processes):
                raise FederatedConfigError(
                    f"partition='silo' trains every silo each round: clients_per_round={self.clients_per_round} "
                    f"must be unset or equal the {processes} processes"
                )
            if not self.is_silo and self.sampled_per_round < processes:
                raise FederatedConfigError(
                    f"clients_per_round={self.sampled_per_round} is smaller than the {processes} processes: "
                    "every process needs at least one client per round; use fewer devices or sample more clients"
                )
        if self._layer_sync is not None:
            raise FederatedConfigError(
                f"sync_batchnorm=True syncs BatchNorm across processes on every forward, but with "
                f"strategy='{name}' each process trains different clients; set sync_batchnorm=False"
            )

    def setup(self, trainer: Trainer) -> None:
        self._preflight(trainer)
        super().setup(trainer)
        if trainer.state.fn != TrainerFn.FITTING:
            return
        # Each round has its own client sample, so its own number of batches: rebuild the train
        # loader every epoch so that the loop's length, progress bar and validation point follow.
        trainer.reload_dataloaders_every_n_epochs = 1  # type: ignore[attr-defined]
        module = self.lightning_module
        assert module is not None
        self._model_state = state = FlatModelState(module)
        self._global = self._broadcast(state.pack())
        self._global_ints = self._broadcast(state.pack_ints())
        state.unpack(self._global)
        state.unpack_ints(self._global_ints)
        self._sum = WeightedSum(state.numel, dtype=state.dtype, device=self.root_device)
        self._int_max = torch.empty_like(self._global_ints)
        self.server.bind(self._global)
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None
        self._warn_about_step_schedulers()
        # Round statistics are identical on every rank by construction; no need to sync them.
        warnings.filterwarnings("ignore", message=r".*self\.log\('fl/.*sync_dist=True.*")

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.root_device)
        if self.world_size > 1 and tensor.numel():
            dist.broadcast(tensor, src=0)
        return tensor

    def _warn_about_step_schedulers(self) -> None:
        for config in self.lr_scheduler_configs:
            if config.interval == "step":
                rank_zero_warn(
                    "An LR scheduler with interval='step' advances on each process's local client steps, so "
                    "its schedule depends on the number of processes; interval='epoch' steps once per round."
                )

    # ------------------------------------------------------------------ data
    def process_dataloader(self, dataloader: object) -> object:
        module = self.lightning_module
        if module is None or module._trainer is None or not module.trainer.training:
            return dataloader  # validation/test/predict loaders are left as they are
        loader, batch_size, drop_last = loader_settings(dataloader)
        round_idx = module.trainer.current_epoch
        partition = self._client_partition(loader)
        self._plan = self._make_plan(round_idx, partition, batch_size, drop_last)
        sampler = RoundBatchSampler(
            self._plan,
            (lambda _client: partition.client(0)) if self.is_silo else partition.client,
            batch_size=batch_size,
            local_epochs=self.local_epochs,
            drop_last=drop_last,
            seed=self.seed,
        )
        return rebuild_loader(loader, sampler)

    def _client_partition(self, loader: DataLoader) -> Partition:
        """The partition of this rank's training set (cached; recomputed if the dataset changes)."""
        dataset = loader.dataset
        size = len(dataset)  # type: ignore[arg-type]
        cached = self._partition_cache
        if cached is not None and cached[0] == id(dataset) and cached[1] == size:
            return cached[2]
        if self.is_silo:
            if self.num_clients is not None and self.num_clients != self.world_size:
                raise FederatedConfigError(
                    f"partition='silo' has one client per process: num_clients={self.num_clients} must equal "
                    f"the world size {self.world_size} (or be left unset)"
                )
            if self.clients_per_round is not None and self.clients_per_round > self.world_size:
                raise FederatedConfigError(
                    f"clients_per_round={self.clients_per_round} exceeds the {self.world_size} silos (processes)"
                )
            if size == 0:
                raise FederatedConfigError(f"partition='silo': the training set of rank {self.global_rank} is empty")
            partition = Partition.from_parts([torch.arange(size)])
        else:
            labels = dataset_labels(dataset) if self.partition in ("dirichlet", "shards") else None
            partition = make_partition(
                self.partition,
                size,
                self.total_clients,
                self.seed,
                labels=labels,
                alpha=self.alpha,
                shards_per_client=self.shards_per_client,
            )
        self._partition_cache = (id(dataset), size, partition)
        return partition

    def _make_plan(self, round_idx: int, partition: Partition, batch_size: int, drop_last: bool) -> RoundPlan:
        sampled = sample_clients(self.total_clients, self.sampled_per_round, self.seed, round_idx)
        if self.is_silo:
            sizes_by_rank = self._silo_sizes(len(partition.indices))
            sizes = [sizes_by_rank[c] for c in sampled]
            owners = [[p for p, c in enumerate(sampled) if c == r] for r in range(self.world_size)]
        else:
            all_sizes = partition.sizes().tolist()
            sizes = [all_sizes[c] for c in sampled]
            owners = None
        steps = [num_client_batches(n, batch_size, self.local_epochs, drop_last) for n in sizes]
        plan = plan_round(round_idx, sampled, sizes, steps, self.world_size, self.global_rank, owners)
        if plan.local_steps == 0:
            # Deterministic on every rank, so all ranks stop here together instead of hanging later.
            raise FederatedConfigError(
                f"round {round_idx}: process {self.global_rank} got no client with a full batch (batch_size="
                f"{batch_size}, drop_last={drop_last}, client sizes {sizes}); lower the batch size or drop_last"
            )
        return plan

    def _silo_sizes(self, local_size: int) -> list[int]:
        if self.world_size == 1:
            return [local_size]
        sizes = [torch.zeros(1, dtype=torch.long, device=self.root_device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([local_size], dtype=torch.long, device=self.root_device))
        return [int(s.item()) for s in sizes]

    # ------------------------------------------------------------------ the round
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        plan = self._plan
        assert plan is not None and self._model_state is not None
        trainer = self.lightning_module.trainer  # type: ignore[union-attr]
        if plan.round_idx != trainer.current_epoch:
            raise RuntimeError(
                f"lightning_fl: round plan is for round {plan.round_idx} but epoch {trainer.current_epoch} is "
                "running; the train dataloader must be rebuilt every epoch (reload_dataloaders_every_n_epochs=1)"
            )
        self._step = batch_idx
        if batch_idx == 0:
            self._begin_round(plan)
        job = plan.starts_at.get(batch_idx)
        if job is not None:
            self._begin_client(plan, job)
        self._padding = batch_idx >= plan.local_steps

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        automatic = self.lightning_module.automatic_optimization  # type: ignore[union-attr]
        output: Any
        if self._padding:
            # Keeps this rank in step with busier ranks without touching the model. Lightning rejects a
            # None loss when world_size > 1, so automatic optimization gets a constant with no graph.
            output = torch.zeros((), device=self.root_device, requires_grad=True) if automatic else None
        else:
            output = super().training_step(*args, **kwargs)
        if not automatic:
            self._after_step()
        return output

    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: Optional[LightningModule | torch.nn.Module] = None,
        **kwargs: Any,
    ) -> Any:
        if self._padding:
            closure()  # Lightning requires the closure to run; the padding loss has no parameters
            output = None
        else:
            output = super().optimizer_step(optimizer, closure, model, **kwargs)
        if self.lightning_module.automatic_optimization:  # type: ignore[union-attr]
            self._after_step()
        return output

    def _after_step(self) -> None:
        plan = self._plan
        assert plan is not None
        if not self._checked_step_logging:
            self._check_step_logging()
        job = plan.ends_at.get(self._step)
        if job is not None:
            self._end_client(plan, job)
        if self._step == plan.num_steps - 1:
            self._end_round(plan)

    def _check_step_logging(self) -> None:
        """Fail fast on per-step synced logging: ranks run different numbers of real steps per round."""
        self._checked_step_logging = True
        trainer = self.lightning_module.trainer  # type: ignore[union-attr]
        if self.world_size == 1:
            return
        results = trainer._results
        for result in results.values() if results is not None else ():
            meta = getattr(result, "meta", None)
            if meta is not None and meta.on_step and meta.sync.should and meta.fx == "training_step":
                raise FederatedConfigError(
                    f"training_step logs '{meta.name}' with sync_dist=True on every step; with strategy="
                    f"'{type(self).strategy_name}' processes train different clients for different numbers of "
                    "steps, so per-step collectives cannot line up: log it with on_step=False or sync_dist=False"
                )

    def _begin_round(self, plan: RoundPlan) -> None:
        assert self._sum is not None and self._int_max is not None and self._global is not None
        self._in_round = True
        self._clients_started = len(plan.idle_jobs)
        self._sum.reset()
        self._int_max.copy_(self._global_ints)  # type: ignore[arg-type]
        for job in plan.idle_jobs:  # too small for one batch: contributes the global model unchanged
            self._sum.add_(self._global, job.num_samples / plan.round_samples)

    def _begin_client(self, plan: RoundPlan, job: ClientJob) -> None:
        state = self._model_state
        assert state is not None and self._global is not None and self._global_ints is not None
        self._clients_started += 1
        state.unpack(self._global)
        state.unpack_ints(self._global_ints)
        for optimizer in self.optimizers:
            optimizer.state.clear()  # a fresh optimizer per client; LRs keep following the schedulers
        # Each client's own RNG stream (dropout, augmentation): independent of which rank trains it.
        torch.manual_seed(derive_seed(self.seed, "client-rng", plan.round_idx, job.client_id))

    def _end_client(self, plan: RoundPlan, job: ClientJob) -> None:
        state = self._model_state
        assert state is not None and self._sum is not None and self._int_max is not None
        if not all_finite(state.float_tensors):
            if not self.skip_nonfinite_updates:
                raise FloatingPointError(
                    f"lightning_fl: client {job.client_id} produced NaN/inf weights in round {plan.round_idx}"
                )
            log.warning(
                "lightning_fl: round %d: client %d produced NaN/inf weights; its update is rejected",
                plan.round_idx,
                job.client_id,
            )
            self._sum.reject_()
            return
        self._sum.add_parts_(state.float_tensors, job.num_samples / plan.round_samples)
        state.max_ints_into(self._int_max)

    def _end_round(self, plan: RoundPlan) -> None:
        state = self._model_state
        total = self._sum
        assert state is not None and total is not None and self._global is not None
        comm_bytes = 0
        if self.world_size > 1:
            dist.all_reduce(total.buffer, op=dist.ReduceOp.SUM)
            comm_bytes += _ring_allreduce_bytes(total.buffer, self.world_size)
            if self._int_max is not None and self._int_max.numel():
                dist.all_reduce(self._int_max, op=dist.ReduceOp.MAX)
                comm_bytes += _ring_allreduce_bytes(self._int_max, self.world_size)
        rejected = total.rejected
        average = total.average_()
        if average is None:
            rank_zero_warn(
                f"lightning_fl: round {plan.round_idx}: every client update was rejected (NaN/inf); "
                "the global model is unchanged"
            )
        else:
            self.server.step(average)
            assert self._global_ints is not None and self._int_max is not None
            self._global_ints.copy_(self._int_max)
        state.unpack(self._global)
        state.unpack_ints(self._global_ints)  # type: ignore[arg-type]
        self._in_round = False
        self.round_stats = {
            "fl/round": float(plan.round_idx),
            "fl/clients": float(plan.round_clients - rejected),
            "fl/rejected_clients": float(rejected),
            "fl/samples": float(plan.round_samples),
            "fl/comm_bytes": float(comm_bytes),
            "fl/model_bytes": float(state.nbytes),
        }
        module = self.lightning_module
        assert module is not None
        for name, value in self.round_stats.items():
            module.log(name, value, on_step=False, on_epoch=True, batch_size=1, prog_bar=name == "fl/clients")

    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)
        if self._in_round and self._model_state is not None and self._global is not None:
            # Interrupted mid-round: leave the module holding the last global model, not a client's.
            self._model_state.unpack(self._global)
            if self._global_ints is not None:
                self._model_state.unpack_ints(self._global_ints)
            self._in_round = False

    # ------------------------------------------------------------------ checkpoints
    def lightning_module_state_dict(self) -> dict[str, Any]:
        state_dict = super().lightning_module_state_dict()
        if self._in_round and self._model_state is not None and self._global is not None:
            # Mid-round the module holds a client's local weights: checkpoint the global model instead.
            state_dict = _replace_float_state(self.lightning_module, state_dict, self._model_state, self._global)
        return state_dict

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Optional[Any] = None
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "version": 1,
            "strategy": type(self).strategy_name,
            "seed": self.seed,
            "mid_round": self._in_round,
            "server": self.server.state_dict(),
        }
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: Optional[bool] = None) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        state = checkpoint.get(CHECKPOINT_KEY)
        trainer = self.lightning_module.trainer if self.lightning_module is not None else None
        fitting = trainer is not None and trainer.state.fn == TrainerFn.FITTING
        if state is not None and fitting:
            if state.get("mid_round"):
                raise FederatedConfigError(
                    f"checkpoint '{checkpoint_path}' was saved in the middle of a round; its weights are the "
                    "last global model, but training can only resume from a checkpoint saved at a round end"
                )
            if state.get("seed") != self.seed:
                rank_zero_warn(
                    f"lightning_fl: resuming with seed={self.seed} from a run with seed={state.get('seed')}: "
                    "later rounds sample different clients than the original run would have"
                )
            if self._global is not None:
                self._restore(state)
            else:
                self._pending_state = state
        return checkpoint

    def _restore(self, state: dict[str, Any]) -> None:
        self.server.load_state_dict(state.get("server", {}))




def _ring_allreduce_bytes(tensor: torch.Tensor, world_size: int) -> int:
    """Bytes each rank sends in a ring all-reduce: 2 (W − 1) / W of the payload."""
    return 2 * (world_size - 1) * tensor.numel() * tensor.element_size() // world_size


def _replace_float_state(
    module: Optional[LightningModule],
    state_dict: dict[str, Any],
    model_state: FlatModelState,
    flat: torch.Tensor,
) -> dict[str, Any]:
    assert module is not None
    by_tensor = {id(t): name for name, t in module.state_dict(keep_vars=True).items()}
    out = dict(state_dict)
    for t, view in zip(model_state.float_tensors, split_like(flat, model_state.float_tensors)):
        name = by_tensor.get(id(t))
        if name is not None and name in out:
            out[name] = view.view_as(t).to(t.dtype).clone()
    return out
