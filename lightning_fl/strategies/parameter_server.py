"""Parameter-server training as a Lightning strategy (design: docs/parameter_server.md).

Every rank is a worker and the server of one contiguous bucket of the flattened parameters. A step:
Lightning runs forward and backward as usual; then, instead of ``optimizer.step()``, workers push their
gradients to the owners, each owner applies the user's optimizer to its bucket only (so optimizer state is
sharded, 1/S per rank), and workers pull the updated buckets.

- Synchronous (``staleness=None``): push is ``reduce_scatter_tensor``, pull ``all_gather_into_tensor``.
  The arithmetic is DDP's (mean gradient, element-wise optimizer), so the weights match DDP's.
- Bounded staleness (``staleness=s``): stale synchronous parallel. Each rank's server runs in a thread
  (:mod:`lightning_fl.strategies.ssp_server`) and workers run up to ``s`` steps ahead of the slowest.
"""

from __future__ import annotations

import contextlib
import copy
import queue
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Literal, Optional

import torch
import torch.distributed as dist
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.optim import Optimizer

from lightning_fl.errors import FederatedConfigError, check, is_int
from lightning_fl.model_state import FlatModelState, split_like
from lightning_fl.parameter_server.sharding import Segment, ShardLayout, shard_layout
from lightning_fl.parameter_server.staleness import ClockBook, needed_version
from lightning_fl.strategies.base import UnwrappedDDPStrategy
from lightning_fl.strategies.ssp_server import (
    GRAD,
    HEADER_SLOTS,
    PUSH_TAG,
    REPLY_TAG,
    STOP,
    BucketServer,
    decode_header,
    encode_header,
)

# Optimizers whose update of an element depends only on that element's gradient and state: running them
# on a flat bucket that cuts through tensors gives exactly the update they would make on whole tensors.
ELEMENTWISE_OPTIMIZERS: tuple[type[Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adagrad,
    torch.optim.RMSprop,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
)


class ParameterServerStrategy(UnwrappedDDPStrategy):
    """Parameters sharded across server ranks; workers push gradients and pull parameters.

    Args:
        staleness: ``None`` (default) for synchronous training; an integer ``s >= 0`` for stale synchronous
            parallel training, in which a worker may run ``s`` steps ahead of the slowest worker and no
            applied gradient is more than ``s`` updates old (``s = 0`` is synchronous, through the same
            machinery). Workers meet, with every update applied, at the end of each epoch, before
            validation and before checkpoints.
        scale_stale_gradients: with ``staleness``, weight a gradient ``τ`` updates old by ``1 / max(1, τ)``
            (Zhang et al., 2016).
        timeout: collective and message timeout (a ``timedelta`` or seconds).

    The remaining arguments are those of :class:`~lightning.pytorch.strategies.DDPStrategy`.
    """

    strategy_name = "parameter_server"

    def __init__(
        self,
        accelerator: Any = None,
        parallel_devices: Optional[list[torch.device]] = None,
        cluster_environment: Optional[ClusterEnvironment] = None,
        checkpoint_io: Optional[CheckpointIO] = None,
        precision_plugin: Optional[Precision] = None,
        process_group_backend: Optional[str] = None,
        timeout: Optional[timedelta | float] = default_pg_timeout,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        staleness: Optional[int] = None,
        scale_stale_gradients: bool = True,
        client_algorithm: None = None,
    ) -> None:
        # Accepted only to refuse it with a reason: a Hydra override or a copied FedAvg call may pass it.
        check(
            client_algorithm is None,
            f"client_algorithm={client_algorithm!r} is a federated setting (it changes clients' local training); "
            "the parameter server trains one model from every worker's gradients: use FedAvgStrategy for it",
        )
        check(
            staleness is None or (is_int(staleness) and staleness >= 0),
            f"staleness must be null (synchronous) or an integer >= 0, got {staleness!r}",
        )
        self.staleness = staleness
        self.scale_stale_gradients = bool(scale_stale_gradients)
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
        # Built in setup(), per process.
        self._params: list[torch.Tensor] = []
        self._layout: Optional[ShardLayout] = None
        self._segments: list[Segment] = []
        self._shard_params: list[torch.nn.Parameter] = []
        self._shard_optimizer: Optional[Optimizer] = None
        self._pending_optimizer_state: Optional[dict[str, Any]] = None
        self.bytes_pushed = 0  # bytes this rank sent pushing gradients, since fit started
        self.bytes_pulled = 0  # bytes this rank sent in the parameter all-gather (or replies, with staleness)
        self._logged = (0, 0)
        # Bounded-staleness state, per process.
        self.staleness_counts: Counter[int] = Counter()  # staleness -> gradients applied to this rank's bucket
        self._logged_staleness: Counter[int] = Counter()
        self._groups: tuple[Optional[dist.ProcessGroup], Optional[dist.ProcessGroup]] = (None, None)
        self._server: Optional[BucketServer] = None
        self._clock = 0  # this worker's steps, the same count as trainer.global_step
        self._versions: list[int] = []  # version of each bucket this worker last read
        self._flat_params_cpu = torch.empty(0)  # this worker's view of the whole model, bucket by bucket
        self._patched_loop: Any = None  # the epoch loop whose per-batch SIGTERM broadcast is replaced

    # ------------------------------------------------------------------ launch and setup
    def _preflight(self, trainer: Trainer) -> None:
        if trainer.state.fn not in (None, TrainerFn.FITTING):
            return
        name = type(self).strategy_name
        if trainer.accumulate_grad_batches != 1:
            raise FederatedConfigError(
                f"accumulate_grad_batches={trainer.accumulate_grad_batches} is not supported yet with "
                f"strategy='{name}'; use a larger batch size"
            )
        if trainer.gradient_clip_val:
            raise FederatedConfigError(
                f"gradient_clip_val is not supported yet with strategy='{name}': clipping belongs on the servers "
                "after aggregation (see docs/parameter_server.md); remove it or use strategy='ddp'"
            )

    def setup(self, trainer: Trainer) -> None:
        self._preflight(trainer)
        super().setup(trainer)
        if trainer.state.fn != TrainerFn.FITTING:
            return
        module = self.lightning_module
        assert module is not None
        name = type(self).strategy_name
        if not module.automatic_optimization:
            raise FederatedConfigError(f"manual optimization is not supported yet with strategy='{name}'")
        if len(self.optimizers) != 1:
            raise FederatedConfigError(f"strategy='{name}' needs exactly one optimizer, got {len(self.optimizers)}")
        optimizer = self.optimizers[0]
        if type(optimizer) not in ELEMENTWISE_OPTIMIZERS:
            supported = ", ".join(cls.__name__ for cls in ELEMENTWISE_OPTIMIZERS)
            raise FederatedConfigError(
                f"strategy='{name}' shards the optimizer over flat buckets, which is exact only for element-wise "
                f"optimizers ({supported}); got {type(optimizer).__name__}"
            )
        self._align_module_state(module)
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        self._layout = layout = shard_layout(
            [sum(p.numel() for p in group["params"]) for group in optimizer.param_groups], self.world_size
        )
        self._segments = layout.segments(self.global_rank)
        flat = self._pack_params()
        self._shard_params = [torch.nn.Parameter(flat[s.start : s.stop].clone()) for s in self._segments]
        self._shard_optimizer = None
        if self._segments:
            groups = [
                {**_hyperparameters(optimizer.param_groups[s.group]), "params": [p]}
                for s, p in zip(self._segments, self._shard_params)
            ]
            self._shard_optimizer = type(optimizer)(groups)  # type: ignore[call-arg]
        if self._pending_optimizer_state is not None:
            self._load_full_optimizer_state(self._pending_optimizer_state)
            self._pending_optimizer_state = None
        if self.staleness is not None:
            self._setup_bounded_staleness(trainer)

    def _setup_bounded_staleness(self, trainer: Trainer) -> None:
        self._server = None
        if self.world_size == 1:
            return
        # Push and reply messages get process groups of their own, so they never interleave with the
        # collectives Lightning runs in the default group (the default group may be NCCL; these are gloo).
        timeout = timedelta(seconds=self._timeout_seconds)
        self._groups = (
            dist.new_group(backend="gloo", timeout=timeout),
            dist.new_group(backend="gloo", timeout=timeout),
        )
        # Lightning broadcasts a SIGTERM flag over the default group on every batch, which would hold all
        # workers in lock step. Workers check their own flag instead; a rank that stops ends the others
        # through their message timeouts.
        self._patched_loop = epoch_loop = trainer.fit_loop.epoch_loop
        epoch_loop._broadcast_sigterm_tensor = lambda: _raise_if_sigterm(trainer)  # type: ignore[method-assign]

    @property
    def _timeout_seconds(self) -> float:
        return (self._timeout if self._timeout is not None else default_pg_timeout).total_seconds()

    def _align_module_state(self, module: LightningModule) -> None:
        """Start every rank from rank 0's parameters and buffers."""
        if self.world_size == 1:
            return
        state = FlatModelState(module)
        flat = state.pack()
        dist.broadcast(flat, src=0)
        state.unpack(flat)
        ints = state.pack_ints()
        if ints.numel():
            dist.broadcast(ints, src=0)
            state.unpack_ints(ints)

    # ------------------------------------------------------------------ the step
    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: Optional[LightningModule | torch.nn.Module] = None,
        **kwargs: Any,
    ) -> Any:
        # Lightning's precision plugin runs the closure (training_step, backward, clipping hooks) and then
        # calls optimizer.step(); that call is replaced by push / owner update / pull for this step only.
        # LR schedulers keep their own wrapper in the instance attribute, so it is restored afterwards.
        saved = optimizer.__dict__.get("step")

        def step(closure: Optional[Callable[[], Any]] = None, **_: Any) -> Any:
            loss = closure() if closure is not None else None
            if self.staleness is None:
                self._push_update_pull(optimizer)
            else:
                self._exchange(self._flat_grads(), final=self._is_last_step())
            optimizer._opt_called = True  # type: ignore[attr-defined]  # what the scheduler's wrapper records
            return loss

        optimizer.step = step  # type: ignore[method-assign]
        try:
            output = super().optimizer_step(optimizer, closure, model, **kwargs)
        finally:
            if saved is None:
                del optimizer.step
            else:
                optimizer.step = saved  # type: ignore[method-assign]
        self._log_traffic_at_epoch_end()
        return output

    def _log_traffic_at_epoch_end(self) -> None:
        """Log this epoch's pushed/pulled bytes once, on its last batch (a log call per step costs time)."""
        trainer = self.lightning_module.trainer  # type: ignore[union-attr]
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        pushed, pulled = self.bytes_pushed - self._logged[0], self.bytes_pulled - self._logged[1]
        self._logged = (self.bytes_pushed, self.bytes_pulled)
        module = self.lightning_module
        assert module is not None
        module.log("ps/push_bytes", float(pushed), on_step=False, on_epoch=True, batch_size=1)
        module.log("ps/pull_bytes", float(pulled), on_step=False, on_epoch=True, batch_size=1)
        epoch = self.staleness_counts - self._logged_staleness
        self._logged_staleness = Counter(self.staleness_counts)
        if self.staleness is not None and epoch:
            # Of the gradients applied to this rank's bucket in this epoch.
            mean = sum(tau * n for tau, n in epoch.items()) / sum(epoch.values())
            module.log("ps/staleness_mean", mean, on_step=False, on_epoch=True, batch_size=1)
            module.log("ps/staleness_max", float(max(epoch)), on_step=False, on_epoch=True, batch_size=1)

    def _flat_grads(self) -> torch.Tensor:
        assert self._layout is not None
        grads = torch.zeros(self._layout.padded_numel, dtype=torch.float32, device=self.root_device)
        for view, p in zip(split_like(grads, self._params), self._params):
            if p.grad is not None:
                view.copy_(p.grad.reshape(-1))
        return grads

    @torch.no_grad()
    def _push_update_pull(self, optimizer: Optimizer) -> None:
        layout = self._layout
        assert layout is not None
        world = self.world_size
        grads = self._flat_grads()
        lo, hi = layout.shard_range(self.global_rank)
        if world > 1:
            shard_grad = torch.empty(layout.shard_size, dtype=grads.dtype, device=grads.device)
            with _naming_failure("push (reduce-scatter of the gradients)"):
                dist.reduce_scatter_tensor(shard_grad, grads, op=dist.ReduceOp.SUM)
            shard_grad.div_(world)  # the mean over workers, as DDP takes it
            self.bytes_pushed += _reduce_scatter_bytes(grads, world, dist.get_backend())
        else:
            shard_grad = grads[lo:hi]
        updated = self._apply_to_bucket(shard_grad)
        if world > 1:
            full = torch.empty(layout.padded_numel, dtype=updated.dtype, device=updated.device)
            with _naming_failure("pull (all-gather of the parameters)"):
                dist.all_gather_into_tensor(full, updated)
            self.bytes_pulled += _all_gather_bytes(full, world)
        else:
            full = updated
        for view, p in zip(split_like(full, self._params), self._params):
            p.copy_(view.view_as(p))

    @torch.no_grad()
    def _apply_to_bucket(self, shard_grad: torch.Tensor) -> torch.Tensor:
        """The owner's update: the shard optimizer steps on this rank's bucket. Returns the new bucket."""
        assert self._layout is not None
        optimizer = self.optimizers[0]
        lo, _ = self._layout.shard_range(self.global_rank)
        shard_grad = shard_grad.to(self.root_device)
        if self._shard_optimizer is not None:
            for group, segment in zip(self._shard_optimizer.param_groups, self._segments):
                _copy_hyperparameters(optimizer.param_groups[segment.group], group)  # LR schedulers act here
            for param, segment in zip(self._shard_params, self._segments):
                param.grad = shard_grad[segment.start - lo : segment.stop - lo]
            self._shard_optimizer.step()
        updated = torch.zeros(self._layout.shard_size, dtype=torch.float32, device=self.root_device)
        for param, segment in zip(self._shard_params, self._segments):
            updated[segment.start - lo : segment.stop - lo] = param
        return updated

    # ------------------------------------------------------------------ bounded staleness
    def _is_last_step(self) -> bool:
        """Whether this step ends the epoch (or the fit): then workers wait for every update."""
        trainer = self.lightning_module.trainer  # type: ignore[union-attr]
        if trainer.fit_loop.epoch_loop._num_ready_batches_reached():
            return True
        return trainer.max_steps >= 0 and trainer.global_step + 1 >= trainer.max_steps

    @torch.no_grad()
    def _exchange(self, grads: Optional[torch.Tensor], final: bool) -> None:
        """Push ``grads`` (``None``: only stop) to every bucket's server and pull each bucket once its
        server has the version this worker needs: SSP's bound, or everything when ``final``."""
        layout = self._layout
        assert layout is not None and self.staleness is not None
        rank, world = self.global_rank, self.world_size
        server = self._server
        assert server is not None, "started in on_train_batch_start"
        clock = self._clock
        if grads is None:
            needed, flags = clock, STOP
        else:
            needed, flags = needed_version(clock, self.staleness, final), GRAD | (STOP if final else 0)
            grads = grads.cpu()
        push_group, reply_group = self._groups
        replies: dict[int, tuple[torch.Tensor, Any]] = {}
        for b in range(world):  # receives first, so no server ever waits on a worker to post one
            if b != rank:
                message = torch.empty(HEADER_SLOTS + layout.shard_size, dtype=torch.float32)
                replies[b] = (message, dist.irecv(message, src=b, group=reply_group, tag=REPLY_TAG))
        sends = []
        for b in range(world):
            lo, hi = layout.shard_range(b)
            payload = grads[lo:hi] if grads is not None else torch.zeros(layout.shard_size)
            message = torch.cat([encode_header(clock, self._versions[b], needed, flags), payload])
            if b == rank:
                server.inbox.put((rank, message))
            else:
                sends.append(dist.isend(message, dst=b, group=push_group, tag=PUSH_TAG))
                self.bytes_pushed += message.numel() * message.element_size()
        pulled = {rank: self._local_reply(server)}
        for b, (message, work) in replies.items():
            try:
                work.wait()
            except RuntimeError as err:
                raise RuntimeError(f"no reply from the parameter server on rank {b}: {err}") from err
            pulled[b] = message
        for work in sends:
            work.wait()
        flat = self._flat_params_cpu
        for b, message in pulled.items():
            lo, hi = layout.shard_range(b)
            self._versions[b] = decode_header(message)[0]
            flat[lo:hi] = message[HEADER_SLOTS:]
        for view, p in zip(split_like(flat, self._params), self._params):
            p.copy_(view.view_as(p))
        if grads is not None:
            self._clock += 1
        if flags & STOP:
            self._stop_server(server)

    def _local_reply(self, server: BucketServer) -> torch.Tensor:
        try:
            item = server.local_replies.get(timeout=self._timeout_seconds)
        except queue.Empty:
            item = TimeoutError(f"no reply within {self._timeout_seconds:.0f} s (strategy timeout)")
        if isinstance(item, BaseException):
            raise RuntimeError(f"parameter server on rank {self.global_rank} failed: {item}") from item
        return item[1]

    def _start_server(self) -> BucketServer:
        assert self._layout is not None and self.staleness is not None
        trainer = self.lightning_module.trainer  # type: ignore[union-attr]
        self._clock = trainer.global_step
        self._versions = [self._clock] * self.world_size  # every bucket is complete when a server starts
        self._flat_params_cpu = self._pack_params().cpu()
        lo, hi = self._layout.shard_range(self.global_rank)
        self._server = BucketServer(
            rank=self.global_rank,
            world_size=self.world_size,
            book=ClockBook(self.world_size, self.staleness, version=self._clock),
            params=self._flat_params_cpu[lo:hi].clone(),
            apply=lambda grad: self._apply_to_bucket(grad).cpu(),
            scale_stale=self.scale_stale_gradients,
            push_group=self._groups[0],
            reply_group=self._groups[1],
            timeout=self._timeout_seconds,
        ).start()
        return self._server

    def _stop_server(self, server: BucketServer) -> None:
        server.join()
        self._server = None
        self.bytes_pulled += server.bytes_replied
        self.staleness_counts.update(server.book.applied_staleness)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.staleness is not None and self._server is None and self._layout is not None:
            self._start_server()  # before the forward, so this step's read versions are known
        super().on_train_batch_start(batch, batch_idx)

    def flush(self) -> None:
        """Bring every bucket up to date on every worker (bounded staleness; a no-op otherwise).

        Runs where all workers are at the same step: before validation, checkpoints and the end of fit.
        """
        if self._server is not None:
            self._exchange(None, final=True)

    def on_validation_start(self) -> None:
        self.flush()
        super().on_validation_start()

    def on_train_end(self) -> None:
        self.flush()
        super().on_train_end()

    def lightning_module_state_dict(self) -> dict[str, Any]:
        self.flush()  # a checkpoint holds the model with every update, not this worker's stale view
        return super().lightning_module_state_dict()

    def destroy_own_groups(self) -> None:
        groups, self._groups = self._groups, (None, None)
        for group in groups:  # the push and reply groups of bounded staleness (base.teardown calls this)
            if group is not None and dist.is_initialized():
                dist.destroy_process_group(group)

    def teardown(self) -> None:
        self._server = None
        if self._patched_loop is not None:
            self._patched_loop.__dict__.pop("_broadcast_sigterm_tensor", None)  # Lightning's own again
            self._patched_loop = None
        super().teardown()

    def _pack_params(self) -> torch.Tensor:
        assert self._layout is not None
        flat = torch.zeros(self._layout.padded_numel, dtype=torch.float32, device=self.root_device)
        for view, p in zip(split_like(flat, self._params), self._params):
            view.copy_(p.detach().reshape(-1))
        return flat

    # ------------------------------------------------------------------ memory and checkpoints
    def optimizer_state_bytes(self) -> int:
        """Bytes of optimizer state held by this rank (its shard optimizer, plus the user's, normally empty)."""
        total = 0
        for opt in [self._shard_optimizer, *self.optimizers]:
            if opt is None:
                continue
            for state in opt.state.values():
                total += sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
        return total

    def optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        """The whole optimizer state in the user's optimizer format, gathered from every bucket."""
        if self._layout is None or optimizer is not self.optimizers[0]:
            return super().optimizer_state(optimizer)
        self.flush()
        flat_states = self._gather_flat_state()
        out = optimizer.state_dict()
        out["state"] = {}
        for index, (p, views) in enumerate(zip(self._params, _split_states(flat_states, self._params))):
            out["state"][index] = {key: view.view_as(p).clone() for key, view in views.items()}
            out["state"][index].update(self._scalar_state())
        return out

    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        states = checkpoint["optimizer_states"]
        if self._layout is None:
            self._pending_optimizer_state = states[0]
            return
        self._load_full_optimizer_state(states[0])

    def _load_full_optimizer_state(self, full: Mapping[str, Any]) -> None:
        """Slice a whole-model optimizer state (any world size wrote it) into this rank's bucket."""
        optimizer = self.optimizers[0]
        user_state = copy.deepcopy(dict(full))
        tensor_state = user_state.pop("state")
        # The user's optimizer keeps the param groups (learning rates, for the schedulers), not the state.
        optimizer.load_state_dict({**user_state, "state": {}})
        if self._shard_optimizer is None or not tensor_state:
            return
        first = tensor_state[0]
        keys = [k for k, v in first.items() if _is_elementwise(v, self._params[0])]
        flat = {
            key: torch.cat([tensor_state[i][key].reshape(-1).float() for i in range(len(self._params))]) for key in keys
        }
        for param, segment in zip(self._shard_params, self._segments):
            state: dict[str, Any] = {
                key: flat[key][segment.start : segment.stop].to(param.device).clone() for key in keys
            }
            for key, value in first.items():
                if key not in keys:  # scalar state (Adam's step): the same for every element
                    state[key] = value.clone() if isinstance(value, torch.Tensor) else value
            self._shard_optimizer.state[param] = state

    def _gather_flat_state(self) -> dict[str, torch.Tensor]:
        """Per state key (exp_avg, momentum_buffer, ...), the full flat vector over all buckets."""
        layout = self._layout
        assert layout is not None
        keys = self._tensor_state_keys()
        lo, _ = layout.shard_range(self.global_rank)
        out: dict[str, torch.Tensor] = {}
        for key in keys:
            local = torch.zeros(layout.shard_size, dtype=torch.float32, device=self.root_device)
            if self._shard_optimizer is not None:
                for param, segment in zip(self._shard_params, self._segments):
                    value = self._shard_optimizer.state.get(param, {}).get(key)
                    if value is not None:
                        local[segment.start - lo : segment.stop - lo] = value.reshape(-1)
            if self.world_size > 1:
                full = torch.empty(layout.padded_numel, dtype=local.dtype, device=local.device)
                dist.all_gather_into_tensor(full, local)
            else:
                full = local
            out[key] = full
        return out

    def _tensor_state_keys(self) -> list[str]:
        """Element-wise state keys, agreed on by all ranks (a rank with an empty bucket has none)."""
        keys: list[str] = []
        if self._shard_optimizer is not None:
            for param in self._shard_params:
                for key, value in self._shard_optimizer.state.get(param, {}).items():
                    if _is_elementwise(value, param) and key not in keys:
                        keys.append(key)
        if self.world_size > 1:
            gathered: list[list[str]] = [[] for _ in range(self.world_size)]
            dist.all_gather_object(gathered, keys)
            keys = sorted({k for ks in gathered for k in ks})
        return keys

    def _scalar_state(self) -> dict[str, Any]:
        """Non-element-wise state (Adam's step count): identical in every bucket, taken from this rank's."""
        if self._shard_optimizer is None or not self._shard_params:
            return {}
        param = self._shard_params[0]
        state = self._shard_optimizer.state.get(param, {})
        return {
            k: (v.clone() if isinstance(v, torch.Tensor) else v)
            for k, v in state.items()
            if not _is_elementwise(v, param)
        }


@contextlib.contextmanager
def _naming_failure(what: str) -> Iterator[None]:
    """Say which step of the parameter server failed when a peer dies or hangs (gloo's message does not)."""
    try:
        yield
    except RuntimeError as err:
        raise RuntimeError(f"parameter server {what} failed; another process died or timed out: {err}") from err


def _raise_if_sigterm(trainer: Trainer) -> None:
    if trainer.received_sigterm:
        raise SIGTERMException()


def _is_elementwise(value: Any, param: torch.Tensor) -> bool:
    """State with one entry per parameter element (exp_avg, momentum_buffer), not a scalar like ``step``."""
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape == param.shape


def _hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


def _copy_hyperparameters(source: dict[str, Any], target: dict[str, Any]) -> None:
    for key, value in source.items():
        if key != "params":
            target[key] = value


def _all_gather_bytes(full: torch.Tensor, world_size: int) -> int:
    """Bytes one rank sends in a ring all-gather into ``full``: (W − 1) / W of it."""
    return (world_size - 1) * full.numel() * full.element_size() // world_size


def _reduce_scatter_bytes(full: torch.Tensor, world_size: int, backend: str) -> int:
    """Bytes one rank sends reduce-scattering ``full``: (W − 1) / W of it in a ring (NCCL); gloo runs it as
    an all-reduce followed by a local slice, 2 (W − 1) / W (measured by benchmarks/communication.py)."""
    factor = 2 if backend == "gloo" else 1
    return factor * (world_size - 1) * full.numel() * full.element_size() // world_size


def _split_states(flat_states: dict[str, torch.Tensor], params: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    per_param: list[dict[str, torch.Tensor]] = [{} for _ in params]
    for key, flat in flat_states.items():
        for i, view in enumerate(split_like(flat, params)):
            per_param[i][key] = view
    return per_param
