"""FedAvg (McMahan et al. 2017) and its family as one Lightning strategy composed of pluggable parts.

One Lightning epoch is one federated round. In a round:

1. every rank computes the same sample of ``clients_per_round`` clients and the same assignment of those
   clients to ranks (pure functions of the seed and the round, no communication);
2. each rank trains its clients one after another: a client starts from the global weights with cleared
   optimizer state and its own seeded RNG, and runs ``local_epochs`` shuffled passes over its partition;
3. after a client's last step its weights (or, when a part needs it, its change from the global model) are
   folded into a running weighted sum (O(1) memory);
4. after the round's last step one all-reduce combines the ranks' sums, and the server update turns the
   average into the next global model, which every rank then holds.

The parts (``client_algorithm``: FedProx, SCAFFOLD, FedNova; ``server_optimizer``: FedAvgM, FedAdam, ...)
hold the math (``lightning_fl.federated``); this class only calls them at the moments of the round.

Aggregation happens inside the last training step, so validation, checkpoints, early stopping, LR
schedulers and loggers all run per round on the global model. The class reuses ``DDPStrategy`` for
process launch, cluster environments and collectives (through ``UnwrappedDDPStrategy``), but does not wrap
the model in DistributedDataParallel: clients never synchronise gradients; setup() aligns the initial
weights across ranks instead.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.distributed as dist
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from lightning_fl.errors import FederatedConfigError, check, is_int
from lightning_fl.federated.aggregation import WeightedSum, all_finite
from lightning_fl.federated.attacks import LabelFlip, ModelPoisoning
from lightning_fl.federated.client_algorithms import (
    AlgorithmContext,
    ClientAlgorithm,
    FedNova,
    FedProx,
    Scaffold,
    TrainingSetup,
)
from lightning_fl.federated.client_state import ClientStateStore
from lightning_fl.federated.compression import (
    CompressedUploads,
    Quantize,
    RoundSum,
    TopK,
    allreduce_bytes,
    client_generator,
    compress_with_feedback,
)
from lightning_fl.federated.evaluation import eval_sample, is_eval_round, split_partition
from lightning_fl.federated.partition import PARTITIONS, Partition, dataset_labels, make_partition
from lightning_fl.federated.privacy.central_dp import CentralDP
from lightning_fl.federated.robust import InsufficientUpdatesError, Krum, Median, NormBound, TrimmedMean
from lightning_fl.federated.sampling import num_client_steps, sample_clients, straggler_steps
from lightning_fl.federated.schedule import ClientJob, RoundPlan, plan_round
from lightning_fl.federated.secure import SecAggRound, SecureAggregation, SecureAggregationError
from lightning_fl.federated.server_optimizers import FedAdagrad, FedAdam, FedAvgM, FedYogi
from lightning_fl.federated.server_update import ServerOptimizerFactory, ServerUpdate
from lightning_fl.model_state import FlatModelState, split_like
from lightning_fl.seeding import derive_seed, seed_torch
from lightning_fl.strategies.base import UnwrappedDDPStrategy
from lightning_fl.strategies.fast_path import FastPath
from lightning_fl.strategies.federated_eval import CLIENT_METRICS_FILENAME, append_rows, evaluate_clients, gather_table
from lightning_fl.strategies.round_data import (
    RoundBatchSampler,
    loader_settings,
    rebuild_loader,
)

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "lightning_fl"
AGGREGATORS = (Median, TrimmedMean, Krum, NormBound)
ON_CLIENT_ERROR = ("skip", "raise")
_DEFAULT_NUM_CLIENTS = 10


class FedAvgStrategy(UnwrappedDDPStrategy):
    """Federated averaging over simulated clients (many per process) or real silos (one per process).

    Args:
        num_clients: clients the training set is split into. Default: 10, or one per process with
            ``partition="silo"`` (where it must equal the world size).
        clients_per_round: clients sampled (uniformly, without replacement) each round. Default: all.
        local_epochs: full passes a client makes over its partition per round (shuffled each pass).
        local_steps: a fixed number of local steps (batches) per client and round instead of
            ``local_epochs``; it takes precedence when set. Steps run through reshuffled epochs as needed.
        partition: ``"iid"``, ``"dirichlet"`` (label skew, see ``alpha``), ``"shards"`` (McMahan et al.'s
            sort-and-shard split, see ``shards_per_client``) or ``"silo"`` (each process is one client
            and trains on its own DataModule's data as is; data never leaves the node).
        alpha: Dirichlet concentration for ``partition="dirichlet"``; smaller is more skewed.
        shards_per_client: shards per client for ``partition="shards"``.
        seed: seeds client sampling, partitions, client shuffles and each client's torch RNG.
        client_algorithm: ``None`` (plain local SGD), ``FedProx(mu)``, ``Scaffold(server_lr)`` or
            ``FedNova()`` (``lightning_fl.federated.client_algorithms``).
        server_optimizer: ``None`` for plain averaging, or a factory ``params -> torch.optim.Optimizer``
            applied to the pseudo-gradient (global − average): ``FedAvgM``, ``FedAdagrad``, ``FedAdam``,
            ``FedYogi`` (Reddi et al. 2021) or any torch optimizer, e.g.
            ``functools.partial(torch.optim.SGD, lr=1.0, momentum=0.9)``.
        stragglers: share of each round's clients that do a uniformly random part of their local steps
            (at least one), as in FedProx's system-heterogeneity experiments.
        client_state_dir: where per-client state (SCAFFOLD's control variates) is kept during a fit.
            Default: ``<default_root_dir>/client_state``. With several nodes it must be a shared file system.
        privacy: ``CentralDP(noise_multiplier, clip_norm, ...)``: client-level differential privacy
            (DP-FedAvg): clipped updates, uniform weights, a fixed denominator, Gaussian noise once per
            round, ε accounted and logged as ``fl/epsilon`` (needs ``lightning-fl[privacy]``).
        aggregator: ``None`` (the weighted mean, streamed), ``Median()``, ``TrimmedMean(beta)``,
            ``Krum(num_malicious, multi)`` (these hold the round's updates, sharded over the processes)
            or ``NormBound(max_norm)`` (``lightning_fl.federated.robust``).
        attack: simulated attackers for robustness research: ``ModelPoisoning(kind, fraction, ...)`` or
            ``LabelFlip(fraction, num_classes)`` (``lightning_fl.federated.attacks``); seeded per round.
        on_client_error: ``"skip"``: a client whose ``training_step`` raises is left out of the round
            (logged with its id, counted as ``fl/failed_clients``); ``"raise"``: the run fails.
        max_update_norm: reject (and count) a client whose update (weights − global) is longer than this.
        min_clients: a round in which fewer clients survive keeps the previous global model.
        max_skipped_rounds: stop training after this many consecutive rounds below ``min_clients``.
        secure_aggregation: ``SecureAggregation(clip_range, neighbors, threshold, ...)``: every update is
            quantized and pairwise-masked (SecAgg+ over X25519 keys), so what leaves a process is masked;
            failed clients are recovered from Shamir shares (needs ``lightning-fl[secure]``).
        compression: ``Quantize(bits)`` or ``TopK(fraction)`` (``lightning_fl.federated.compression``): each
            client uploads its compressed update (error feedback: the residual stays with the client, on
            disk, for its next round); uploads are all-gathered and decoded on every process.
        skip_nonfinite_updates: drop a client whose weights hold NaN/inf after training (reported as
            ``fl/rejected_clients``) instead of failing the run. The global model is never corrupted.
        eval_fraction: federated evaluation (off at 0): every client keeps this seeded share of its own
            partition (at least one sample when it has two) out of training, and the user's
            ``validation_step`` evaluates the global model on it per client; logged as
            ``fl/eval/<metric>/<mean|min|p10|median|p90|max|std>`` and written per client to
            ``<log_dir>/client_metrics.csv``. Silos hold out a share of their own training set likewise.
        eval_every: evaluate after every N-th round (and always after the last one).
        eval_clients: how many clients (a seeded sample per evaluation round) are evaluated. Default: all.
        fast_path: run each client's local steps inside one Lightning training step (same results, far less
            per-step overhead with many small clients; see ``lightning_fl.strategies.fast_path``). ``None``
            (default): automatic, taken unless something observes Lightning's per-batch loop (per-batch
            callbacks or module hooks, per-step logging or LR schedulers, manual optimization), the reason
            logged once; the first round of a fit runs per batch to see what it logs. ``True``: from the first
            round, an error where it cannot be taken. ``False``: never.
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
        client_algorithm: Optional[ClientAlgorithm] = None,
        server_optimizer: Optional[ServerOptimizerFactory] = None,
        local_steps: Optional[int] = None,
        stragglers: float = 0.0,
        client_state_dir: Optional[str] = None,
        privacy: Optional[CentralDP] = None,
        aggregator: Optional[Any] = None,
        attack: Optional[ModelPoisoning | LabelFlip] = None,
        on_client_error: str = "skip",
        max_update_norm: Optional[float] = None,
        min_clients: int = 1,
        max_skipped_rounds: Optional[int] = None,
        secure_aggregation: Optional[SecureAggregation] = None,
        compression: Optional[Quantize | TopK] = None,
        skip_nonfinite_updates: bool = True,
        fast_path: Optional[bool] = None,
        eval_fraction: float = 0.0,
        eval_every: int = 1,
        eval_clients: Optional[int] = None,
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
        if local_steps is not None:
            check(is_int(local_steps) and local_steps >= 1, f"local_steps must be an integer >= 1, got {local_steps}")
        check(
            isinstance(stragglers, (int, float)) and not isinstance(stragglers, bool) and 0.0 <= stragglers <= 1.0,
            f"stragglers must be a share of clients in [0, 1], got {stragglers}",
        )
        check(
            client_algorithm is None or isinstance(client_algorithm, ClientAlgorithm),
            "client_algorithm must be None, FedProx(...), Scaffold(...) or FedNova(), got "
            f"{type(client_algorithm).__name__}",
        )
        check(alpha > 0, f"alpha must be > 0, got {alpha}")
        check(
            is_int(shards_per_client) and shards_per_client >= 1,
            f"shards_per_client must be an integer >= 1, got {shards_per_client}",
        )
        check(is_int(seed), f"seed must be an integer, got {seed!r}")
        check(
            privacy is None or isinstance(privacy, CentralDP),
            f"privacy must be None or CentralDP(...), got {type(privacy).__name__}",
        )
        check(
            aggregator is None or isinstance(aggregator, AGGREGATORS),
            "aggregator must be None, Median(), TrimmedMean(beta), Krum(num_malicious) or NormBound(max_norm), "
            f"got {type(aggregator).__name__}",
        )
        check(
            attack is None or isinstance(attack, (ModelPoisoning, LabelFlip)),
            f"attack must be None, ModelPoisoning(...) or LabelFlip(...), got {type(attack).__name__}",
        )
        check(on_client_error in ON_CLIENT_ERROR, f"on_client_error must be 'skip' or 'raise', got {on_client_error!r}")
        if max_update_norm is not None:
            check(
                isinstance(max_update_norm, (int, float)) and max_update_norm > 0,
                f"max_update_norm must be > 0, got {max_update_norm}",
            )
        check(is_int(min_clients) and min_clients >= 1, f"min_clients must be an integer >= 1, got {min_clients}")
        if max_skipped_rounds is not None:
            check(
                is_int(max_skipped_rounds) and max_skipped_rounds >= 1,
                f"max_skipped_rounds must be an integer >= 1, got {max_skipped_rounds}",
            )
        check(
            secure_aggregation is None or isinstance(secure_aggregation, SecureAggregation),
            f"secure_aggregation must be None or SecureAggregation(...), got {type(secure_aggregation).__name__}",
        )
        check(
            compression is None or isinstance(compression, (Quantize, TopK)),
            f"compression must be None, Quantize(bits) or TopK(fraction), got {type(compression).__name__}",
        )
        check(
            isinstance(eval_fraction, (int, float)) and not isinstance(eval_fraction, bool) and 0.0 <= eval_fraction < 1.0,
            f"eval_fraction must be a share in [0, 1) (0 turns federated evaluation off), got {eval_fraction}",
        )
        check(is_int(eval_every) and eval_every >= 1, f"eval_every must be an integer >= 1, got {eval_every}")
        if eval_clients is not None:
            check(is_int(eval_clients) and eval_clients >= 1, f"eval_clients must be an integer >= 1, got {eval_clients}")
        _check_composition(client_algorithm, privacy, aggregator, attack, secure_aggregation, compression)
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
        self.local_steps = None if local_steps is None else int(local_steps)
        self.stragglers = float(stragglers)
        # A private copy: registered names share one instance, and the algorithm keeps per-fit state.
        self.client_algorithm = copy.deepcopy(client_algorithm)
        self.client_state_dir = client_state_dir
        self.privacy = copy.deepcopy(privacy)
        self.aggregator = copy.deepcopy(aggregator)  # it records the last round's selection and bytes
        self.attack = attack
        self.on_client_error = on_client_error
        self.max_update_norm = None if max_update_norm is None else float(max_update_norm)
        self.min_clients = int(min_clients)
        self.max_skipped_rounds = max_skipped_rounds
        self.secure_aggregation = secure_aggregation
        self._secagg: Optional[SecAggRound] = None
        self._secagg_dropped = 0
        self.compression = compression
        self._uploads: Optional[CompressedUploads] = None
        self._exchange_bytes = 0
        self.partition = partition
        self.alpha = float(alpha)
        self.shards_per_client = int(shards_per_client)
        self.seed = int(seed)
        self.skip_nonfinite_updates = skip_nonfinite_updates
        check(fast_path in (None, True, False), f"fast_path must be None (automatic), True or False, got {fast_path!r}")
        self.fast_path = fast_path
        self._fast = FastPath(fast_path)
        self.eval_fraction = float(eval_fraction)
        self.eval_every = int(eval_every)
        self.eval_clients = None if eval_clients is None else int(eval_clients)
        self.server = ServerUpdate(server_optimizer)

        # Built in setup(), per process (keeps the strategy picklable for spawn).
        self._model_state: Optional[FlatModelState] = None
        self._global: Optional[torch.Tensor] = None
        self._global_ints: Optional[torch.Tensor] = None
        self._sum: Optional[WeightedSum] = None
        self._update: Optional[torch.Tensor] = None  # scratch for a client's change, when a part needs it
        self._held: Optional[torch.Tensor] = None  # this rank's updates of the round, for holding aggregators
        self._held_ids: list[int] = []
        self._job: Optional[ClientJob] = None
        self._client_failed = False
        self._malicious: set[int] = set()
        self._skipped_in_a_row = 0
        self._stores: dict[str, ClientStateStore] = {}
        self._client_state_root: Optional[Path] = None
        self._int_max: Optional[torch.Tensor] = None
        self._partition_cache: Optional[tuple[int, int, Partition]] = None
        self._held_out: Optional[Partition] = None  # federated evaluation's share of each client's data
        self._train_source: Optional[tuple[Any, Any, int]] = None  # (dataset, collate_fn, batch size)
        self._plan: Optional[RoundPlan] = None
        self._step = -1
        self._padding = False
        self._in_round = False
        self._pending_state: Optional[dict[str, Any]] = None
        self._checked_step_logging = False
        self._clients_started = 0
        self.round_stats: dict[str, float] = {}

    @classmethod
    def registered_presets(cls) -> dict[str, dict[str, Any]]:
        # Defaults of each part are the ones its class documents (the papers' values).
        return {
            "fedavg": {},
            "fedprox": {"client_algorithm": FedProx()},
            "scaffold": {"client_algorithm": Scaffold()},
            "fednova": {"client_algorithm": FedNova()},
            "fedavgm": {"server_optimizer": FedAvgM()},
            "fedadagrad": {"server_optimizer": FedAdagrad()},
            "fedadam": {"server_optimizer": FedAdam()},
            "fedyogi": {"server_optimizer": FedYogi()},
        }

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
    def current_client_id(self) -> Optional[int]:
        """The client this process is training right now (``None`` outside a client's steps)."""
        return self._job.client_id if self._job is not None and self._in_round else None

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
        self._int_max = torch.empty_like(self._global_ints)
        self.server.bind(self._global)
        self._stores = {}
        self._client_state_root = None
        algorithm = self.client_algorithm
        if algorithm is not None:
            algorithm.check_training(
                TrainingSetup(self.optimizers, module.automatic_optimization, str(trainer.precision))
            )
            params = list(module.parameters())
            algorithm.setup(
                AlgorithmContext(
                    params=params,
                    global_flat=self._global,
                    param_numel=sum(p.numel() for p in params),
                    num_clients=self.total_clients,
                    open_store=self._open_store,
                )
            )
        if self.privacy is not None:
            self.privacy.setup(self.total_clients, self.sampled_per_round)
            if self.privacy.max_rounds() == 0:
                raise FederatedConfigError(f"privacy: {self.privacy.stop_reason()}")
        if self.aggregator is not None:
            self.aggregator.check_cohort(self.sampled_per_round)
        if self.secure_aggregation is not None:
            self.secure_aggregation.validate_cohort(self.sampled_per_round)
        # One buffer, one all-reduce per round: [Σ w·x | Σ w | rejected | the parts' own sums]. A holding
        # aggregator combines the updates themselves, so the buffer then carries only the counts.
        extra = {"clients": 1, "failed": 1}
        if algorithm is not None:
            extra.update(algorithm.sums())
        if self.privacy is not None:
            extra["privacy/unclipped"] = 1
        self._sum = WeightedSum(
            0 if self._sums_elsewhere else state.numel, dtype=state.dtype, device=self.root_device, extra=extra
        )
        self._update = torch.empty_like(self._global) if self._sums_updates else None
        self._skipped_in_a_row = 0
        self._uploads = None
        if self.compression is not None:
            self._uploads = CompressedUploads(self.compression, state.numel, device=self.root_device)
            if self.compression.error_feedback:
                self._open_store("compression_residual", state.numel)
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None
        self._warn_about_step_schedulers()
        if self.eval_fraction > 0 and not is_overridden("validation_step", module):
            raise FederatedConfigError(
                f"eval_fraction={self.eval_fraction}: federated evaluation runs the module's validation_step, and "
                f"{type(module).__name__} has none; define it or set eval_fraction=0"
            )
        self._fast.reset()
        # Round statistics are identical on every rank by construction; no need to sync them.
        warnings.filterwarnings("ignore", message=r".*self\.log\('fl/.*sync_dist=True.*")

    @property
    def _sums_updates(self) -> bool:
        """Whether clients contribute their change (weights − global) rather than their weights."""
        algorithm = self.client_algorithm
        return (
            (algorithm is not None and algorithm.needs_update)
            or self.privacy is not None
            or self.aggregator is not None
            or isinstance(self.attack, ModelPoisoning)
            or self.max_update_norm is not None
            or self.secure_aggregation is not None
            or self.compression is not None
        )

    @property
    def _holds_updates(self) -> bool:
        return bool(getattr(self.aggregator, "holds_updates", False))

    @property
    def _sums_elsewhere(self) -> bool:
        """The update sum is not in the round buffer: a robust aggregator or secure aggregation combines it."""
        return self._holds_updates or self.secure_aggregation is not None or self.compression is not None

    def _open_store(self, name: str, numel: int) -> ClientStateStore:
        """A per-client store under this fit's own directory (created by rank 0, shared by all ranks)."""
        if self._client_state_root is None:
            trainer = self.lightning_module.trainer  # type: ignore[union-attr]
            base = self.client_state_dir or os.path.join(trainer.default_root_dir, "client_state")
            path = None
            if self.is_global_zero:
                os.makedirs(base, exist_ok=True)
                path = tempfile.mkdtemp(prefix="run-", dir=base)
            self._client_state_root = Path(self.broadcast(path))
        assert self._model_state is not None
        store = ClientStateStore(self._client_state_root / name, numel, dtype=self._model_state.dtype)
        self._stores[name] = store
        return store

    def on_train_start(self) -> None:
        super().on_train_start()
        self._check_processes_agree()

    def _check_processes_agree(self) -> None:
        """Before the first step: every process must plan the same round length from the same settings.

        Plans are computed per process without communication; processes that disagree would block in the
        round's collectives until the timeout. One small all-gather turns that into the same error on all.
        """
        plan = self._plan
        if self.world_size == 1 or plan is None:
            return
        cached = self._partition_cache
        facts = {  # settings first: the first difference found is the one named
            "seed": self.seed,
            "num_clients": self.total_clients,
            "clients_per_round": self.sampled_per_round,
            "local_epochs": self.local_epochs,
            "local_steps": -1 if self.local_steps is None else self.local_steps,
            "stragglers (x1e6)": round(self.stragglers * 1e6),
            # Federated evaluation's collectives follow these too.
            "eval_fraction (x1e6)": round(self.eval_fraction * 1e6),
            "eval_every": self.eval_every,
            "eval_clients": -1 if self.eval_clients is None else self.eval_clients,
            # Every process partitions the same training set; silos each have their own.
            "training set size": -1 if self.is_silo or cached is None else cached[1],
            "round length (steps)": plan.num_steps,
        }
        mine = torch.tensor(list(facts.values()), dtype=torch.long, device=self.root_device)
        gathered = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        for i, name in enumerate(facts):
            values = [int(g[i]) for g in gathered]
            if len(set(values)) > 1:
                raise FederatedConfigError(
                    f"processes disagree on {name}: {', '.join(f'process {r}: {v}' for r, v in enumerate(values))}; "
                    f"with strategy='{type(self).strategy_name}' every process needs the same settings and data "
                    "(each silo's own data with partition='silo'), or the round's collectives would never line up"
                )

    def on_train_end(self) -> None:
        super().on_train_end()
        # Every rank finished writing before the last round's all-reduce; checkpoints hold snapshots.
        root = self._client_state_root
        if root is not None and self.is_global_zero:
            shutil.rmtree(root, ignore_errors=True)
            try:
                root.parent.rmdir()  # the base directory, if no other run uses it
            except OSError:
                pass
        self._client_state_root = None

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
        self._train_source = (loader.dataset, loader.collate_fn, batch_size)
        self._plan = self._make_plan(round_idx, partition, batch_size, drop_last)
        if self._fast.decide(self, module.trainer):
            return self._fast.loader(self, loader, partition, batch_size, drop_last)
        sampler = RoundBatchSampler(
            self._plan,
            (lambda _client: partition.client(0)) if self.is_silo else partition.client,
            batch_size=batch_size,
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
        if self.eval_fraction > 0:
            # Held out before anything trains: the training partition never contains these samples.
            ids = [self.global_rank] if self.is_silo else None
            partition, self._held_out = split_partition(partition, self.eval_fraction, self.seed, ids)
            if self.is_silo and len(partition.indices) == 0:
                raise FederatedConfigError(f"eval_fraction={self.eval_fraction} leaves rank {self.global_rank} nothing to train on")
        self._partition_cache = (id(dataset), size, partition)
        return partition

    def _make_plan(self, round_idx: int, partition: Partition, batch_size: int, drop_last: bool) -> RoundPlan:
        sampled = sample_clients(self.total_clients, self.sampled_per_round, self.seed, round_idx)
        if self.is_silo:
            # Each silo batches its own data: its size, batch size and drop_last come from its process.
            facts = self._silo_loader_facts(len(partition.indices), batch_size, drop_last)
            sizes = [facts[c][0] for c in sampled]
            steps = [self._client_steps(*facts[c]) for c in sampled]
            owners = [[p for p, c in enumerate(sampled) if c == r] for r in range(self.world_size)]
        else:
            all_sizes = partition.sizes().tolist()
            sizes = [all_sizes[c] for c in sampled]
            steps = [self._client_steps(n, batch_size, drop_last) for n in sizes]
            owners = None
        if self.stragglers:
            steps = straggler_steps(steps, sampled, self.stragglers, self.seed, round_idx)
        plan = plan_round(round_idx, sampled, sizes, steps, self.world_size, self.global_rank, owners)
        if plan.local_steps == 0:
            # Deterministic on every rank, so all ranks stop here together instead of hanging later.
            raise FederatedConfigError(
                f"round {round_idx}: process {self.global_rank} got no client with a full batch (batch_size="
                f"{batch_size}, drop_last={drop_last}, client sizes {sizes}); lower the batch size or drop_last"
            )
        return plan

    def _client_steps(self, num_samples: int, batch_size: int, drop_last: bool) -> int:
        return num_client_steps(num_samples, batch_size, drop_last, self.local_epochs, self.local_steps)

    def _silo_loader_facts(self, local_size: int, batch_size: int, drop_last: bool) -> list[tuple[int, int, bool]]:
        """(samples, batch size, drop_last) of every silo, gathered from the processes that own them."""
        mine = torch.tensor([local_size, batch_size, int(drop_last)], dtype=torch.long, device=self.root_device)
        if self.world_size == 1:
            gathered = [mine]
        else:
            gathered = [torch.zeros_like(mine) for _ in range(self.world_size)]
            dist.all_gather(gathered, mine)
        return [(int(f[0]), int(f[1]), bool(f[2])) for f in gathered]

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
        if self._fast.active:
            self._fast.on_train_batch_start(self, batch, batch_idx)
            return
        self._step = batch_idx
        if batch_idx == 0:
            self._begin_round(plan)
        job = plan.starts_at.get(batch_idx)
        if job is not None:
            self._begin_client(plan, job)
        # A failed client's remaining steps are padding too: the round keeps its length on every rank.
        self._padding = batch_idx >= plan.local_steps or self._client_failed

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        automatic = self.lightning_module.automatic_optimization  # type: ignore[union-attr]
        if self._fast.active:
            args = self._fast.step_args(self, args)
        output: Any = None
        if not self._padding:
            if isinstance(self.attack, LabelFlip) and self._job is not None and self._job.client_id in self._malicious:
                args = (_flip_labels(args[0], self.attack),) + tuple(args[1:])
            try:
                output = super().training_step(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any error of the user's step fails only this client
                if self.on_client_error == "raise":
                    raise
                self._fail_client(error)
        if self._padding:
            # Keeps this rank in step with busier ranks without touching the model. Lightning rejects a
            # None loss when world_size > 1, so automatic optimization gets a constant with no graph.
            output = torch.zeros((), device=self.root_device, requires_grad=True) if automatic else None
        if not automatic:
            self._after_step()
        return output

    def _fail_client(self, error: BaseException) -> None:
        """Leave the current client out of the round: log it, pad its remaining steps, never aggregate it."""
        import traceback

        job, plan = self._job, self._plan
        assert job is not None and plan is not None
        self._client_failed = self._padding = True
        path = os.path.join(self._files_dir(), "client_errors.log")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"round {plan.round_idx} client {job.client_id} (rank {self.global_rank}):\n")
                f.write("".join(traceback.format_exception(error)) + "\n")
        except OSError:
            path = "(not written)"
        log.warning(
            "lightning_fl: round %d: client %d failed and is skipped: %s: %s (traceback in %s)",
            plan.round_idx, job.client_id, type(error).__name__, " ".join(str(error).split()), path,
        )

    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: Optional[LightningModule | torch.nn.Module] = None,
        **kwargs: Any,
    ) -> Any:
        if self._fast.active:  # all of a client's local steps, each through _client_step
            return self._fast.optimizer_step(self, optimizer, closure, model, **kwargs)
        output = self._client_step(optimizer, closure, model, **kwargs)
        if self.lightning_module.automatic_optimization:  # type: ignore[union-attr]
            self._after_step()
        return output

    def _client_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: Optional[LightningModule | torch.nn.Module] = None,
        **kwargs: Any,
    ) -> Any:
        """One local step (or padding step) of the current client, through Lightning's own optimizer step."""
        algorithm = self.client_algorithm
        if self._padding:
            closure()  # Lightning requires the closure to run; the padding loss has no parameters
            return None
        if algorithm is not None and algorithm.hooks_steps:
            output = super().optimizer_step(optimizer, self._corrected(closure, algorithm), model, **kwargs)
            algorithm.after_step(optimizer)
            return output
        return super().optimizer_step(optimizer, closure, model, **kwargs)

    def _corrected(self, closure: Callable[[], Any], algorithm: ClientAlgorithm) -> Callable[[], Any]:
        """The closure, then the algorithm's gradient correction: after backward, before clipping.

        The precision plugin calls this closure first and clips (and, under 16-mixed, unscales) after it,
        so a correction added here is part of what clipping and the optimizer see. Under manual
        optimization backward already ran and the closure does nothing.
        """

        def run() -> Any:
            result = closure()
            algorithm.correct_gradients(self._loss_scale())
            return result

        return run

    def _loss_scale(self) -> Optional[torch.Tensor]:
        scaler = getattr(self.precision_plugin, "scaler", None)
        if scaler is None or not scaler.is_enabled():
            return None
        return scaler._get_scale_async()  # a tensor: no host sync per step

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
        self._malicious = set()
        if self.attack is not None:
            self._malicious = self.attack.malicious(self.seed, plan.round_idx, plan.round_client_ids)
        if self._holds_updates:
            # The only per-round memory that grows with clients: this rank's k_r updates (see docs/robustness.md).
            rows = len(plan.jobs)
            if self._held is None or self._held.shape[0] < rows:
                self._held = torch.empty(rows, self._global.numel(), dtype=self._global.dtype, device=self._global.device)
            self._held_ids = []
        if self.secure_aggregation is not None:
            self._secagg = SecAggRound(
                self.secure_aggregation, plan.round_idx, plan.round_client_ids, plan.round_owner_ranks,
                numel=self._global.numel(), rank=self.global_rank, world_size=self.world_size,
                seed=self.seed, device=self.root_device,
            )
            self._secagg.setup()  # key exchange and shares: collectives every rank makes at its round's start
        if self._uploads is not None:
            self._uploads.reset()
        for job in plan.idle_jobs:  # too small for one batch: contributes the global model unchanged
            self._accept(job.client_id, None, job.num_samples / plan.round_samples)

    def _begin_client(self, plan: RoundPlan, job: ClientJob) -> None:
        state = self._model_state
        assert state is not None and self._global is not None and self._global_ints is not None
        self._clients_started += 1
        self._job = job
        self._client_failed = False
        state.unpack(self._global)
        state.unpack_ints(self._global_ints)
        for optimizer in self.optimizers:
            optimizer.state.clear()  # a fresh optimizer per client; LRs keep following the schedulers
        # Each client's own RNG stream (dropout, augmentation): independent of which rank trains it.
        seed_torch(derive_seed(self.seed, "client-rng", plan.round_idx, job.client_id))
        if self.client_algorithm is not None:
            self.client_algorithm.client_start(job.client_id)

    def _end_client(self, plan: RoundPlan, job: ClientJob) -> None:
        state = self._model_state
        assert state is not None and self._sum is not None and self._int_max is not None
        if self._client_failed:
            self._sum.extra["failed"] += 1
            return
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
        weight = job.num_samples / plan.round_samples
        if not self._sums_updates:
            self._sum.add_parts_(state.float_tensors, weight)
            self._sum.extra["clients"] += 1
            state.max_ints_into(self._int_max)
            return
        assert self._update is not None and self._global is not None
        update = state.pack_into(self._update).sub_(self._global)
        if isinstance(self.attack, ModelPoisoning) and job.client_id in self._malicious:
            update = self.attack.poison(update, job.client_id, plan.round_idx, self.seed)  # what it sends
        if self.max_update_norm is not None and float(update.norm()) > self.max_update_norm:
            log.warning(
                "lightning_fl: round %d: client %d's update has norm %.4g > max_update_norm=%g; it is rejected",
                plan.round_idx, job.client_id, float(update.norm()), self.max_update_norm,
            )
            self._sum.reject_()
            return
        self._accept(job.client_id, update, weight)
        state.max_ints_into(self._int_max)

    def _accept(self, client_id: int, update: Optional[torch.Tensor], weight: float) -> None:
        """Fold one client's contribution into the round. ``update`` None: the global model unchanged."""
        total = self._sum
        assert total is not None and self._global is not None
        if not self._sums_updates:
            total.extra["clients"] += 1
            total.add_(self._global, weight)
            return
        if update is None:  # an idle client did no step: nothing for its algorithm to record
            update = torch.zeros_like(self._global)
        elif self.client_algorithm is not None:
            self.client_algorithm.client_update(client_id, update, weight, total.extra)
        if isinstance(self.aggregator, NormBound):
            update = self.aggregator.bound(update)
        if self.privacy is not None:
            update, unclipped = self.privacy.clip(update)
            total.extra["privacy/unclipped"] += float(unclipped)
            weight = 1.0  # uniform weights: one client's influence is bounded by the clip norm
        if self._uploads is not None:
            plan = self._plan
            assert plan is not None
            store = self._stores.get("compression_residual")
            payload, residual = compress_with_feedback(
                update, None if store is None else store.load(client_id, self._global.device), self.compression,
                client_generator(self.seed, plan.round_idx, client_id),
            )
            if store is not None and residual is not None:
                store.save(client_id, residual)
            # The key orders the decoded sum: the client's place in the round's sample, whatever the rank.
            self._uploads.add(plan.round_client_ids.index(client_id), weight, payload)
            total.add_weight_(weight)  # Σ w for the parts that read it (FedNova's τ_eff)
        elif self._secagg is not None:
            # Integer weights inside the masked sum: samples (or 1 under DP); the update is pre-weighted.
            plan = self._plan
            assert plan is not None
            units = 1 if self.privacy is not None else round(weight * plan.round_samples)
            scaled = update if self.privacy is not None else update * weight
            if not self._secagg.add(client_id, scaled, weight=units):
                total.extra["failed"] += 1  # a simulated dropout: recovered at finish()
                return
        elif self._holds_updates:
            assert self._held is not None
            self._held[len(self._held_ids)].copy_(update)
            self._held_ids.append(client_id)
            total.add_weight_(weight)
        else:
            total.add_(update, weight)
        total.extra["clients"] += 1

    def _end_round(self, plan: RoundPlan) -> None:
        state = self._model_state
        total = self._sum
        assert state is not None and total is not None and self._global is not None
        comm_bytes = 0
        uploads = None
        if self._uploads is not None:
            # One collective: the compressed uploads carry the round's bookkeeping sums with them.
            uploads = self._uploads.exchange(slots=plan.most_clients_per_rank, bookkeeping=total.buffer)
            comm_bytes += uploads.bytes_sent
        if self.world_size > 1:
            if uploads is None:
                dist.all_reduce(total.buffer, op=dist.ReduceOp.SUM)
                comm_bytes += _ring_allreduce_bytes(total.buffer, self.world_size)
            if self._int_max is not None and self._int_max.numel():
                dist.all_reduce(self._int_max, op=dist.ReduceOp.MAX)
                comm_bytes += _ring_allreduce_bytes(self._int_max, self.world_size)
        rejected, failed = total.rejected, int(total.extra["failed"])
        accepted = int(total.extra["clients"])
        total_weight = total.total_weight
        self._exchange_bytes = 0
        average, skipped = self._round_average(plan, total, accepted, uploads)
        comm_bytes += self._exchange_bytes  # the masked sum, when it travels apart
        if average is not None:
            self._server_step(average, total_weight)
            assert self._global_ints is not None and self._int_max is not None
            self._global_ints.copy_(self._int_max)
        state.unpack(self._global)
        state.unpack_ints(self._global_ints)  # type: ignore[arg-type]
        self._in_round = False
        self.round_stats = {
            "fl/round": float(plan.round_idx),
            "fl/clients": float(accepted),
            "fl/rejected_clients": float(rejected),
            "fl/failed_clients": float(failed),
            "fl/samples": float(plan.round_samples),
            "fl/comm_bytes": float(comm_bytes),
            "fl/model_bytes": float(state.nbytes),
        }
        if self._malicious:
            self.round_stats["fl/malicious_clients"] = float(len(self._malicious))
        if self.secure_aggregation is not None:
            self.round_stats["fl/secagg_recovered_clients"] = float(self._secagg_dropped)
        if self.privacy is not None:
            self.round_stats.update(self.privacy.metrics())
        self._after_round(plan, skipped)
        if self._stores:
            self.round_stats["fl/client_state_bytes"] = float(sum(s.disk_bytes() for s in self._stores.values()))
        if self._held_out is not None:
            max_epochs = self.lightning_module.trainer.max_epochs  # type: ignore[union-attr]
            last = max_epochs - 1 if max_epochs is not None and max_epochs > 0 else None
            if is_eval_round(plan.round_idx, self.eval_every, last):
                self.round_stats.update(self._federated_evaluation(plan.round_idx))
        module = self.lightning_module
        assert module is not None
        for name, value in self.round_stats.items():
            module.log(name, value, on_step=False, on_epoch=True, batch_size=1, prog_bar=name == "fl/clients")

    def _round_average(
        self, plan: RoundPlan, total: WeightedSum, accepted: int, uploads: Optional[RoundSum] = None
    ) -> tuple[Optional[torch.Tensor], bool]:
        """The round's average (of weights or of changes) from the all-reduced sums, or ``None`` to keep the
        global model; every rank reaches the same decision from the same sums."""
        reason = None
        summed: Optional[torch.Tensor] = total.values
        if uploads is not None:
            if uploads.total_weight > 0 and accepted >= self.min_clients:
                return uploads.values.to(self._global.dtype).div_(uploads.total_weight), False  # type: ignore[union-attr]
        if self._secagg is not None:
            secagg, self._secagg = self._secagg, None
            try:  # every rank gets the same result or the same error
                result = secagg.finish()
            except (SecureAggregationError, FederatedConfigError) as error:
                rank_zero_warn(f"lightning_fl: round {plan.round_idx}: {' '.join(str(error).split())}; the global model is unchanged")
                return None, True
            summed = result.sum.to(self._global.dtype)  # type: ignore[union-attr]
            self._secagg_dropped = len(result.dropped)
            self._exchange_bytes = sum(result.bytes_sent.values())
            if self.privacy is None and result.weight > 0:
                return summed.mul_(plan.round_samples / result.weight), False
        if accepted < self.min_clients:
            reason = f"{accepted} client(s) survived, fewer than min_clients={self.min_clients}"
        elif self.privacy is not None:  # even a round without survivors is noised and counted
            secure = self.privacy.secure_noise and self.world_size > 1
            noise = self._broadcast(self.privacy.noise(summed.numel(), self.seed, plan.round_idx)) if secure else None
            average = self.privacy.finish(
                summed, float(total.extra["privacy/unclipped"]), accepted, self.seed, plan.round_idx, noise=noise
            )
            return average, False
        elif self._holds_updates:
            assert self._held is not None
            try:
                return self.aggregator.aggregate(self._held[: len(self._held_ids)], self._held_ids), False
            except InsufficientUpdatesError as error:
                reason = " ".join(str(error).split())
        else:
            average = total.average_()
            if average is not None:
                return average, False
            reason = "every client update was rejected or failed"
        rank_zero_warn(f"lightning_fl: round {plan.round_idx}: {reason}; the global model is unchanged")
        return None, True

    def _after_round(self, plan: RoundPlan, skipped: bool) -> None:
        """Log the round and decide whether training goes on (privacy budget, rounds without survivors)."""
        self.round_stats["fl/skipped_rounds"] = float(self._skipped_in_a_row + 1 if skipped else 0)
        self._skipped_in_a_row = self._skipped_in_a_row + 1 if skipped else 0
        trainer = self.lightning_module.trainer  # type: ignore[union-attr]
        stop = None
        if self.max_skipped_rounds is not None and self._skipped_in_a_row >= self.max_skipped_rounds:
            stop = f"{self._skipped_in_a_row} rounds in a row kept the global model (max_skipped_rounds={self.max_skipped_rounds})"
        elif self.privacy is not None:
            stop = self.privacy.stop_reason()
        if stop is not None:
            rank_zero_warn(f"lightning_fl: stopping after round {plan.round_idx + 1}: {stop}")
            trainer.should_stop = True  # the epoch (round) ends normally first

    def _files_dir(self) -> str:
        """Where the strategy writes files beside the logs (client errors, per-client metrics). Not
        ``trainer.log_dir``: it broadcasts, and the callers run on one process only."""
        trainer = self.lightning_module.trainer  # type: ignore[union-attr]
        return getattr(trainer.logger, "log_dir", None) or trainer.default_root_dir

    def _federated_evaluation(self, round_idx: int) -> dict[str, float]:
        """Evaluate the new global model on the sampled clients' held-out data; every process gets the same
        statistics. Clients are spread over processes by their place in the sample (silos: their own)."""
        held, source = self._held_out, self._train_source
        assert held is not None and source is not None
        client_ids = eval_sample(self.total_clients, self.eval_clients, self.seed, round_idx)
        if self.is_silo:
            mine = [(c, held.client(0)) for c in client_ids if c == self.global_rank]
        else:
            mine = [(c, held.client(c)) for k, c in enumerate(client_ids) if k % self.world_size == self.global_rank]
        dataset, collate_fn, batch_size = source
        # The central val loader's batch size when there is one (evaluation batches are usually larger);
        # per-client values do not depend on it (batch-size-weighted means, metrics over all samples).
        val = self.lightning_module.trainer.val_dataloaders  # type: ignore[union-attr]
        val = val[0] if isinstance(val, (list, tuple)) and val else val
        batch_size = getattr(val, "batch_size", None) or batch_size
        local = evaluate_clients(self, mine, dataset, collate_fn, batch_size)
        table = gather_table(local, client_ids, self.world_size, self.root_device)
        if self.is_global_zero:
            try:
                append_rows(os.path.join(self._files_dir(), CLIENT_METRICS_FILENAME), table.rows(round_idx))
            except OSError as error:
                rank_zero_warn(f"lightning_fl: could not write {CLIENT_METRICS_FILENAME}: {error}")
        stats = table.stats()
        stats["fl/eval_clients"] = float((table.samples > 0).sum())
        stats["fl/comm_bytes"] = self.round_stats.get("fl/comm_bytes", 0.0) + table.bytes_sent
        return stats

    def _server_step(self, average: torch.Tensor, total_weight: float) -> None:
        """Hand the round's average (of weights, or of changes) through the algorithm to the server optimizer."""
        algorithm = self.client_algorithm
        assert self._sum is not None and self._global is not None
        if not self._sums_updates and (algorithm is None or not algorithm.rewrites_average):
            self.server.step(average)  # plain FedAvg copies the average exactly
            return
        update = average if self._sums_updates else average.sub_(self._global)
        if algorithm is not None:
            algorithm.server_update(update, self._sum.extra, total_weight)
        self.server.step_update(update)

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
        algorithm = self.client_algorithm
        checkpoint[CHECKPOINT_KEY] = {
            "version": 1,
            "strategy": type(self).strategy_name,
            "seed": self.seed,
            "mid_round": self._in_round,
            "server": self.server.state_dict(),
            "num_clients": self.total_clients,
            "client_algorithm": None if algorithm is None else algorithm.name,
            "client_algorithm_state": {} if algorithm is None else algorithm.state_dict(),
            "client_state": sorted(self._stores),
            "privacy": None if self.privacy is None else self.privacy.state_dict(),
        }
        if self._stores and self.is_global_zero:
            # Written before the checkpoint file, so a checkpoint that exists always has its client state.
            for name, store in self._stores.items():
                store.snapshot(_client_state_snapshot(filepath) / name)
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def remove_checkpoint(self, filepath: _PATH) -> None:
        super().remove_checkpoint(filepath)
        snapshot = _client_state_snapshot(filepath)
        if self.is_global_zero and snapshot.is_dir():
            shutil.rmtree(snapshot, ignore_errors=True)

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
            saved_clients = state.get("num_clients")  # absent in checkpoints written before it was recorded
            if saved_clients is not None and saved_clients != self.total_clients:
                raise FederatedConfigError(
                    f"checkpoint '{checkpoint_path}' was trained with num_clients={saved_clients}, this run has "
                    f"num_clients={self.total_clients}; resume with the same number of clients"
                )
            trained_with = state.get("client_algorithm")
            running = None if self.client_algorithm is None else self.client_algorithm.name
            if trained_with != running:
                raise FederatedConfigError(
                    f"checkpoint '{checkpoint_path}' was trained with client_algorithm={trained_with}, this run "
                    f"uses client_algorithm={running}; resume with the same client algorithm"
                )
            if state.get("client_state"):
                snapshot = _client_state_snapshot(checkpoint_path)
                if not snapshot.is_dir():
                    raise FederatedConfigError(
                        f"checkpoint '{checkpoint_path}' needs its per-client state directory '{snapshot}' "
                        f"({', '.join(state['client_state'])}), which is missing; copy it beside the checkpoint"
                    )
                state = dict(state, client_state_snapshot=str(snapshot))
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
        if self.client_algorithm is not None:
            self.client_algorithm.load_state_dict(state.get("client_algorithm_state", {}))
        if self.privacy is not None:
            if state.get("privacy") is None:
                raise FederatedConfigError(
                    "this run has privacy=CentralDP but the checkpoint was trained without it: its rounds were "
                    "not accounted, so epsilon would be wrong; resume without privacy or start a new run"
                )
            self.privacy.load_state_dict(state["privacy"])
        snapshot = state.get("client_state_snapshot")
        if snapshot is not None:
            if self.is_global_zero:
                for name, store in self._stores.items():
                    store.restore(Path(snapshot) / name)
            self.barrier("lightning_fl.restore_client_state")  # no rank reads a client before it is back



def _check_composition(
    algorithm: Optional[ClientAlgorithm],
    privacy: Optional[CentralDP],
    aggregator: Any,
    attack: Any,
    secure: Any = None,
    compression: Any = None,
) -> None:
    """Combinations of parts that cannot serve each other, refused with the reason."""
    if compression is not None:
        for name, part, why in (
            ("secure_aggregation", secure, "masks can only be summed, and compressed uploads are decoded one by one"),
            ("privacy", privacy, "error feedback would carry unclipped, unnoised residuals between rounds"),
            ("aggregator", aggregator if getattr(aggregator, "holds_updates", False) else None,
             "robust rules over decoded uploads are not wired yet"),
        ):
            if part is not None:
                raise FederatedConfigError(f"compression={compression!r} cannot be combined with {name}={part!r}: {why}")
    if secure is not None and algorithm is not None and type(algorithm) in (Scaffold, FedNova):
        raise FederatedConfigError(
            f"secure_aggregation masks the model updates, but client_algorithm={algorithm.name} also sends per-process "
            "sums it would leave unmasked (control variates or step counts); use FedProx or no client algorithm"
        )
    if secure is not None and getattr(aggregator, "holds_updates", False):
        raise FederatedConfigError(
            f"secure_aggregation reveals only the sum of the updates; aggregator={aggregator!r} needs each update: "
            "use one or the other (NormBound composes with it)"
        )
    if privacy is not None and algorithm is not None and type(algorithm) in (Scaffold, FedNova):
        raise FederatedConfigError(
            f"privacy=CentralDP bounds each client's model update, but client_algorithm={algorithm.name} also sends "
            "what privacy does not cover (control variates or step counts); use FedProx or no client algorithm"
        )
    if privacy is not None and getattr(aggregator, "holds_updates", False):
        raise FederatedConfigError(
            f"privacy=CentralDP noises a sum of clipped updates; aggregator={aggregator!r} is not a sum: use one or "
            "the other (NormBound composes with privacy)"
        )
    if isinstance(attack, ModelPoisoning) and attack.needs_benign_statistics:
        raise FederatedConfigError(
            f"attack={attack!r}: the 'little_is_enough' attack needs the benign updates' statistics across "
            "processes, which the strategy does not gather yet; use sign_flip, scale or gaussian"
        )


def _flip_labels(batch: Any, attack: LabelFlip) -> Any:
    """The batch with its labels flipped: ``(x, y, ...)`` or a dict with a 'label'/'labels'/'y'/'target' key."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return type(batch)([batch[0], attack.flip(batch[1]), *batch[2:]])
    if isinstance(batch, dict):
        for key in ("label", "labels", "y", "target", "targets"):
            if isinstance(batch.get(key), torch.Tensor):
                return {**batch, key: attack.flip(batch[key])}
    raise FederatedConfigError(
        "attack=LabelFlip needs batches of the form (inputs, labels, ...) or dicts with a 'label', 'labels', 'y' "
        f"or 'target' tensor; got {type(batch).__name__}"
    )


def _client_state_snapshot(checkpoint_path: _PATH) -> Path:
    """The directory beside a checkpoint that holds its per-client state (SCAFFOLD's c_i)."""
    return Path(f"{os.fspath(checkpoint_path)}.client_state")


def _ring_allreduce_bytes(tensor: torch.Tensor, world_size: int) -> int:
    """Bytes each rank sends in a ring all-reduce of ``tensor``: 2 (W − 1) / W of the payload."""
    return allreduce_bytes(tensor.numel(), world_size, tensor.element_size())


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
