"""Byzantine-robust aggregation of client updates: the rules, their multi-process versions, and config objects.

An *update* is a client's weights minus the round's global weights, flattened to P values. The rules:

- coordinate-wise median (Yin et al. 2018) and trimmed mean (ibid.): order statistics of each coordinate;
- Krum / Multi-Krum (Blanchard et al. 2017): pick the updates closest to their neighbours;
- norm bounding (Sun et al. 2019): shrink each update to norm ≤ M, then the ordinary weighted mean.

The first three need all K updates of a round at once. ``aggregate`` is called by every process at round end
with the updates it holds (k_r of them, possibly none) and spreads the work over the processes: coordinates
are sharded across ranks with all-to-all exchanges in column chunks, each rank reduces its shard, and one
all-gather gives every rank the whole aggregate. Updates are put in a canonical order (by client id), so the
result is the single-process rule's, whatever the number of processes. See ``docs/robustness.md``.

Robust rules are *unweighted*: every update counts once, whatever its client's number of samples (a
weight is a claim the server cannot check, and would let one client outvote the others).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import torch
import torch.distributed as dist

from lightning_fl.errors import check, is_int

# Elements (K × columns) of one exchanged/sorted chunk: bounds the temporary memory of every rule to a few
# times this many values, whatever P. 2**22 floats = 16 MiB.
CHUNK_ELEMENTS = 1 << 22


class InsufficientUpdatesError(RuntimeError):
    """Fewer updates reached the aggregation than the rule needs (e.g. clients were rejected).

    Raised on every process at once (the counts are exchanged first), so no process waits for the others.
    The caller decides what to do with the round; keeping the previous global model is the safe choice.
    """


# --------------------------------------------------------------------------------------------------------
# Pure rules on a stacked [K, P] tensor (rows in the order that breaks ties)
# --------------------------------------------------------------------------------------------------------


def num_trimmed(num_updates: int, beta: float) -> int:
    """⌊β·K⌋, computed on the decimal value of β (so β = 0.29, K = 100 trims 29, not 28 by float rounding)."""
    return math.floor(Fraction(str(float(beta))) * num_updates)


def _median_columns(x: torch.Tensor) -> torch.Tensor:
    k = x.shape[0]
    s = x.sort(dim=0).values
    if k % 2:
        return s[k // 2].clone()
    # Even K: the mean of the two middle values (torch.median would return the lower one).
    return ((s[k // 2 - 1].double() + s[k // 2].double()) / 2).to(x.dtype)


def _trimmed_columns(x: torch.Tensor, trim: int) -> torch.Tensor:
    k = x.shape[0]
    s = x.sort(dim=0).values
    return s[trim : k - trim].double().mean(dim=0).to(x.dtype)


def _columnwise(x: torch.Tensor, rule: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a per-column rule in column chunks, so the sort's temporaries stay ~CHUNK_ELEMENTS."""
    k, p = x.shape
    out = x.new_empty(p)
    step = max(1, CHUNK_ELEMENTS // max(k, 1))
    for lo in range(0, p, step):
        out[lo : lo + step] = rule(x[:, lo : lo + step])
    return out


def coordinate_median(updates: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median of ``[K, P]`` updates; for even K the mean of the two middle values."""
    _check_stack(updates)
    return _columnwise(updates, _median_columns)


def trimmed_mean(updates: torch.Tensor, beta: float) -> torch.Tensor:
    """Coordinate-wise mean after dropping the ⌊β·K⌋ largest and ⌊β·K⌋ smallest values of each coordinate."""
    _check_stack(updates)
    trim = num_trimmed(updates.shape[0], beta)
    if updates.shape[0] - 2 * trim < 1:
        raise InsufficientUpdatesError(f"TrimmedMean: beta={beta} leaves no value of {updates.shape[0]} updates")
    return _columnwise(updates, lambda x: _trimmed_columns(x, trim))


def _gram_from_diag(gram: torch.Tensor) -> torch.Tensor:
    """Squared distances ‖uᵢ − uⱼ‖² = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ from a float64 Gram matrix (zero diagonal)."""
    diag = gram.diagonal()
    d = (diag[:, None] + diag[None, :] - 2 * gram).clamp_min_(0)
    d.fill_diagonal_(0)
    return d


def _accumulate_gram(gram: torch.Tensor, x: torch.Tensor) -> None:
    # float64 so that the Gram trick's cancellation stays far below the distances between real updates.
    xd = x.double()
    gram.addmm_(xd, xd.T)


def pairwise_sq_distances(updates: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` float64 matrix of ‖uᵢ − uⱼ‖² (computed by column chunks, O(K²) extra memory)."""
    _check_stack(updates)
    k, p = updates.shape
    gram = torch.zeros(k, k, dtype=torch.float64, device=updates.device)
    step = max(1, CHUNK_ELEMENTS // max(k, 1))
    for lo in range(0, p, step):
        _accumulate_gram(gram, updates[:, lo : lo + step])
    return _gram_from_diag(gram)


def krum_scores(sq_distances: torch.Tensor, num_malicious: int) -> torch.Tensor:
    """score(i) = Σ of the K − f − 2 smallest ‖uᵢ − uⱼ‖², j ≠ i (Blanchard et al. 2017)."""
    k = sq_distances.shape[0]
    if k <= 2 * num_malicious + 2:
        raise InsufficientUpdatesError(
            f"Krum: num_malicious={num_malicious} needs more than {2 * num_malicious + 2} updates, got {k}"
        )
    d = sq_distances.double().clone()
    d.fill_diagonal_(math.inf)
    return d.sort(dim=1).values[:, : k - num_malicious - 2].sum(dim=1)


def krum_select(scores: torch.Tensor, multi: int = 1) -> list[int]:
    """Positions of the ``multi`` lowest scores, ties broken by position; returned in increasing position."""
    order = torch.sort(scores, stable=True).indices[:multi]
    return sorted(order.tolist())


def krum(updates: torch.Tensor, num_malicious: int, multi: int = 1) -> torch.Tensor:
    """Krum (multi = 1: the lowest-score update) or Multi-Krum (the mean of the ``multi`` lowest-score ones)."""
    _check_multi(updates.shape[0], num_malicious, multi)
    chosen = krum_select(krum_scores(pairwise_sq_distances(updates), num_malicious), multi)
    return _mean_rows(updates, chosen)


def _mean_rows(x: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    out = x.new_empty(x.shape[1])
    idx = torch.as_tensor(list(rows), dtype=torch.long, device=x.device)
    step = max(1, CHUNK_ELEMENTS // max(len(rows), 1))
    for lo in range(0, x.shape[1], step):
        out[lo : lo + step] = x[:, lo : lo + step].index_select(0, idx).double().mean(dim=0).to(x.dtype)
    return out


def bound_factor(norm: float, max_norm: float) -> float:
    """min(1, M / ‖u‖): the factor that brings an update's norm down to at most M (1 for a zero update)."""
    return 1.0 if norm <= max_norm else max_norm / norm


def norm_bound(update: torch.Tensor, max_norm: float) -> torch.Tensor:
    """u · min(1, M / ‖u‖) (Sun et al. 2019); a new tensor, the input is left alone."""
    return update * bound_factor(float(torch.linalg.vector_norm(update.double())), max_norm)


def _check_stack(updates: torch.Tensor) -> None:
    if updates.dim() != 2:
        raise ValueError(f"updates must be a [K, P] tensor, got shape {tuple(updates.shape)}")
    if updates.shape[0] == 0:
        raise InsufficientUpdatesError("no update to aggregate (K = 0)")


def _check_multi(k: int, num_malicious: int, multi: int) -> None:
    if k <= 2 * num_malicious + 2:
        raise InsufficientUpdatesError(
            f"Krum: num_malicious={num_malicious} needs more than {2 * num_malicious + 2} updates, got {k}"
        )
    if multi > k - num_malicious:
        raise InsufficientUpdatesError(
            f"Krum: multi={multi} needs at least multi + num_malicious = {multi + num_malicious} updates, got {k}"
        )


# --------------------------------------------------------------------------------------------------------
# Multi-process versions: every rank calls together with the updates it holds
# --------------------------------------------------------------------------------------------------------


def _world(group: object | None) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise RuntimeError("a process group was given but torch.distributed is not initialised")
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


class _Round:
    """Who holds which update: counts per rank and the canonical (client-id) order of all K updates."""

    def __init__(
        self, local: torch.Tensor, client_ids: Sequence[int], group: object | None, world: int, stats: CommStats
    ) -> None:
        k = local.shape[0] if local.dim() == 2 else -1
        ids = [int(c) for c in client_ids]
        # Local mistakes travel in the count exchange, so that every rank raises together instead of one rank
        # raising while the others wait in the next collective.
        bad = local.dim() != 2 or len(ids) != k
        # On the updates' device: NCCL only moves CUDA tensors.
        head = torch.tensor(
            [max(k, 0), local.shape[-1] if local.dim() else 0, int(bad)], dtype=torch.long, device=local.device
        )
        if world > 1:
            heads = [torch.empty_like(head) for _ in range(world)]
            dist.all_gather(heads, head, group=group)
            stats.add(head.numel() * 8 * (world - 1))
        else:
            heads = [head]
        failed = [r for r, h in enumerate(heads) if h[2]]
        if failed:
            raise ValueError(f"aggregate: ranks {failed} passed updates that are not [k, P] with one client id per row")
        numels = {int(h[1]) for h in heads if h[0] > 0} or {int(heads[0][1])}
        if len(numels) > 1:
            raise ValueError(f"aggregate: ranks passed updates of different sizes {sorted(numels)}")
        self.counts = [int(h[0]) for h in heads]
        self.numel = numels.pop()
        self.total = sum(self.counts)
        if world > 1:
            kmax = max(max(self.counts), 1)
            padded = torch.full((kmax,), -1, dtype=torch.long, device=local.device)
            padded[: len(ids)] = torch.tensor(ids, dtype=torch.long, device=local.device)
            gathered = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(gathered, padded, group=group)
            stats.add(kmax * 8 * (world - 1))
            self.ids = [i for r, g in enumerate(gathered) for i in g[: self.counts[r]].tolist()]
        else:
            self.ids = ids
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("aggregate: a client id occurs twice in the round's updates")
        # Rows arrive rank-major (rank 0's rows, then rank 1's, ...); canonical position -> arrival position.
        self.order = sorted(range(self.total), key=self.ids.__getitem__)


def _exchange(
    local: torch.Tensor,
    counts: list[int],
    numel: int,
    world: int,
    rank: int,
    group: object | None,
    columns: int,
    stats: CommStats,
):
    """Yield (start, width, x) for each chunk of this rank's coordinate shard: x is ``[K, ≥ width]``, rows
    rank-major (rank 0's rows in its order, then rank 1's, ...), columns start..start+width of the shard.

    Shard r covers coordinates [r·S, (r+1)·S) ∩ [0, P) with S = ⌈P/W⌉. One all-to-all per chunk moves column
    block [start, start + columns) of every shard to its owner; columns past P (P not divisible by W) are zero
    padding. Temporaries: the send and receive buffers, ≤ (k_r·W + K)·columns values.
    """
    k = local.shape[0]
    shard = -(-numel // world)
    total = sum(counts)
    for start in range(0, shard, columns):
        cols = min(columns, shard - start)
        send = local.new_zeros(world, k, cols)
        for s in range(world):
            lo, hi = s * shard + start, min(s * shard + start + cols, numel)
            if hi > lo:
                send[s, :, : hi - lo] = local[:, lo:hi]
        recv = local.new_empty(total, cols)
        # Split sizes count rows (dim 0): k rows to every rank, counts[q] rows from rank q.
        dist.all_to_all_single(recv, send.view(world * k, cols), counts, [k] * world, group=group)
        stats.add(k * cols * (world - 1) * local.element_size())
        lo = rank * shard + start
        yield start, max(min(lo + cols, numel) - lo, 0), recv


def _chunk_columns(rows: int, shard: int, chunk_columns: int | None) -> int:
    cols = chunk_columns if chunk_columns is not None else max(1, CHUNK_ELEMENTS // max(rows, 1))
    return max(1, min(cols, shard))


def _gather_shards(shard_values: torch.Tensor, numel: int, world: int, group: object | None) -> torch.Tensor:
    full = shard_values.new_empty(world, shard_values.shape[0])
    dist.all_gather(list(full.unbind(0)), shard_values, group=group)
    return full.reshape(-1)[:numel]  # a view: the < W padding values are not worth a copy of P


class CommStats:
    """What one ``aggregate`` call handed to collectives for the other processes: bytes and number of calls."""

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.collectives = 0

    def add(self, nbytes: int) -> None:
        self.bytes_sent += int(nbytes)
        self.collectives += 1


def distributed_coordinatewise(
    local_updates: torch.Tensor,
    client_ids: Sequence[int],
    rule: str,
    beta: float = 0.0,
    group: object | None = None,
    chunk_columns: int | None = None,
    stats: CommStats | None = None,
) -> torch.Tensor:
    """Coordinate-wise median (``rule="median"``) or trimmed mean (``"trimmed_mean"``) of all ranks' updates.

    Every rank of ``group`` calls this together; all return the same ``[P]`` vector, equal to the
    single-process rule on the K = Σ k_r updates. With one process (or torch.distributed not initialised)
    it is the pure rule on ``local_updates``.
    """
    world, rank = _world(group)
    stats = stats if stats is not None else CommStats()
    info = _Round(local_updates, client_ids, group, world, stats)
    if info.total == 0:
        raise InsufficientUpdatesError(f"{_rule_name(rule)}: no update reached the aggregation")
    if rule == "median":
        column_rule: Callable[[torch.Tensor], torch.Tensor] = _median_columns
    elif rule == "trimmed_mean":
        trim = num_trimmed(info.total, beta)
        column_rule = lambda x: _trimmed_columns(x, trim)  # noqa: E731
    else:
        raise ValueError(f"unknown coordinate-wise rule {rule!r}")
    # Coordinate-wise rules sort each column, so the row order does not change a single bit of the result.
    if world == 1:
        return _columnwise(local_updates, column_rule)
    shard = -(-info.numel // world)
    columns = _chunk_columns(info.total, shard, chunk_columns)
    out = local_updates.new_zeros(shard)
    itemsize = local_updates.element_size()
    for start, width, recv in _exchange(local_updates, info.counts, info.numel, world, rank, group, columns, stats):
        if width:
            out[start : start + width] = column_rule(recv[:, :width])
    stats.add(shard * (world - 1) * itemsize)
    return _gather_shards(out, info.numel, world, group)


def distributed_krum(
    local_updates: torch.Tensor,
    client_ids: Sequence[int],
    num_malicious: int,
    multi: int = 1,
    group: object | None = None,
    chunk_columns: int | None = None,
    stats: CommStats | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Krum / Multi-Krum over all ranks' updates, rows in increasing client id; returns (aggregate, chosen ids).

    Pass 1: each rank receives its coordinate shard of all K updates chunk by chunk and accumulates a partial
    Gram matrix; the W partial K×K matrices are all-gathered and summed in rank order (the same bits on every
    rank, so every rank selects the same updates). Pass 2 moves only the m chosen updates' shards and averages
    them shard-wise; one all-gather assembles the result.
    """
    world, rank = _world(group)
    stats = stats if stats is not None else CommStats()
    info = _Round(local_updates, client_ids, group, world, stats)
    _check_multi(info.total, num_malicious, multi)
    arrival = torch.as_tensor(info.order, dtype=torch.long)  # canonical position -> arrival row
    if world == 1:
        dist_arrival = pairwise_sq_distances(local_updates)
    else:
        shard = -(-info.numel // world)
        columns = _chunk_columns(info.total, shard, chunk_columns)
        gram = torch.zeros(info.total, info.total, dtype=torch.float64, device=local_updates.device)
        for _, width, recv in _exchange(local_updates, info.counts, info.numel, world, rank, group, columns, stats):
            if width:
                _accumulate_gram(gram, recv[:, :width])
        parts = torch.empty(world, info.total, info.total, dtype=torch.float64, device=gram.device)
        dist.all_gather(list(parts.unbind(0)), gram, group=group)
        stats.add(info.total**2 * 8 * (world - 1))
        total_gram = parts[0].clone()
        for r in range(1, world):  # a fixed summation order: identical on every rank
            total_gram += parts[r]
        dist_arrival = _gram_from_diag(total_gram)
    sq = dist_arrival.index_select(0, arrival.to(dist_arrival.device)).index_select(1, arrival.to(dist_arrival.device))
    chosen = krum_select(krum_scores(sq, num_malicious), multi)  # canonical positions, increasing
    chosen_ids = [info.ids[info.order[p]] for p in chosen]
    if world == 1:
        return _mean_rows(local_updates, [info.order[p] for p in chosen]), chosen_ids
    # Pass 2: each rank sends its chosen rows in increasing client id; rows then arrive rank-major.
    first = [sum(info.counts[:r]) for r in range(world)]
    chosen_arrival = sorted(info.order[p] for p in chosen)
    sel_counts = [sum(1 for a in chosen_arrival if first[r] <= a < first[r] + info.counts[r]) for r in range(world)]
    mine = [a - first[rank] for a in chosen_arrival if first[rank] <= a < first[rank] + info.counts[rank]]
    selected = local_updates.index_select(0, torch.as_tensor(mine, dtype=torch.long, device=local_updates.device))
    # Averaging in increasing client id, like the single-process rule, keeps the sum's rounding identical.
    by_id = sorted(range(len(chosen_arrival)), key=lambda i: info.ids[chosen_arrival[i]])
    shard = -(-info.numel // world)
    columns = _chunk_columns(len(chosen), shard, chunk_columns)
    out = local_updates.new_zeros(shard)
    idx = torch.as_tensor(by_id, dtype=torch.long, device=local_updates.device)
    itemsize = local_updates.element_size()
    for start, width, recv in _exchange(selected, sel_counts, info.numel, world, rank, group, columns, stats):
        if width:
            out[start : start + width] = recv[:, :width].index_select(0, idx).double().mean(dim=0).to(out.dtype)
    stats.add(shard * (world - 1) * itemsize)
    return _gather_shards(out, info.numel, world, group), chosen_ids


def _rule_name(rule: str) -> str:
    return {"median": "Median", "trimmed_mean": "TrimmedMean"}.get(rule, rule)


# --------------------------------------------------------------------------------------------------------
# Config objects: FedAvgStrategy(aggregator=...)
# --------------------------------------------------------------------------------------------------------


class _HoldingAggregator:
    """Base of the rules that need every update of the round (``holds_updates = True``)."""

    holds_updates = True
    #: what the last ``aggregate`` call sent to other processes (bytes, collectives), per process
    last_stats: CommStats

    def check_cohort(self, clients_per_round: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def min_updates(self) -> int:
        """The fewest updates ``aggregate`` accepts; fewer raise :class:`InsufficientUpdatesError`."""
        return 1

    def __repr__(self) -> str:
        # Settings only: what the last round selected or sent is run state, not configuration.
        run_state = ("last_stats", "last_selected")
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k not in run_state)
        return f"{type(self).__name__}({args})"


class Median(_HoldingAggregator):
    """Coordinate-wise median (Yin et al. 2018, "Byzantine-robust distributed learning: towards optimal
    statistical rates"): aggᵢ = median_k u_{k,i}; for an even number of updates, the mean of the two middle
    values. Unweighted (every update counts once). Serves any K ≥ 1 update.
    """

    def __init__(self) -> None:
        self.last_stats = CommStats()

    def check_cohort(self, clients_per_round: int) -> None:
        check(clients_per_round >= 1, f"Median: needs clients_per_round >= 1, got {clients_per_round}")

    def aggregate(self, local_updates: torch.Tensor, client_ids: Sequence[int], group: object | None = None):
        """Called by every rank at round end with its ``[k_r, P]`` updates (k_r may be 0); returns ``[P]``."""
        self.last_stats = CommStats()
        return distributed_coordinatewise(local_updates, client_ids, "median", group=group, stats=self.last_stats)


class TrimmedMean(_HoldingAggregator):
    """Coordinate-wise β-trimmed mean (Yin et al. 2018): per coordinate, drop the b = ⌊β·K⌋ largest and
    the b smallest of the K values and average the K − 2b others. Unweighted. β ∈ [0, 0.5) so that at
    least one value is left; β = 0 is the unweighted mean. K is the number of updates that arrived, so
    rejected clients lower b (never below 0).
    """

    def __init__(self, beta: float) -> None:
        check(
            isinstance(beta, (int, float)) and not isinstance(beta, bool) and 0 <= beta < 0.5,
            f"TrimmedMean: beta must be in [0, 0.5), got {beta!r}",
        )
        self.beta = float(beta)
        self.last_stats = CommStats()

    def check_cohort(self, clients_per_round: int) -> None:
        k = clients_per_round
        b = num_trimmed(k, self.beta)
        check(k - 2 * b >= 1, f"TrimmedMean: beta={self.beta} trims all {k} clients_per_round")
        check(
            self.beta == 0 or b >= 1,
            f"TrimmedMean: beta={self.beta} trims nothing with clients_per_round={k} "
            f"(floor(beta*K)=0); raise beta to at least {1 / k:.3g} or use beta=0 for the plain mean",
        )

    def aggregate(self, local_updates: torch.Tensor, client_ids: Sequence[int], group: object | None = None):
        """Called by every rank at round end with its ``[k_r, P]`` updates (k_r may be 0); returns ``[P]``."""
        self.last_stats = CommStats()
        return distributed_coordinatewise(
            local_updates, client_ids, "trimmed_mean", beta=self.beta, group=group, stats=self.last_stats
        )


class Krum(_HoldingAggregator):
    """Krum and Multi-Krum (Blanchard et al. 2017, "Machine learning with adversaries: Byzantine tolerant
    gradient descent"). With f = ``num_malicious``: score(i) = Σ_{j ∈ N(i)} ‖uᵢ − uⱼ‖², N(i) the K − f − 2
    updates nearest to uᵢ; Krum returns the lowest-score update, Multi-Krum (``multi`` = m > 1) the mean of
    the m lowest-score ones. Ties go to the smaller client id. Unweighted. Needs K > 2f + 2 and m ≤ K − f.
    """

    def __init__(self, num_malicious: int, multi: int = 1) -> None:
        check(
            is_int(num_malicious) and num_malicious >= 0,
            f"Krum: num_malicious must be an integer >= 0, got {num_malicious!r}",
        )
        check(is_int(multi) and multi >= 1, f"Krum: multi must be an integer >= 1, got {multi!r}")
        self.num_malicious = num_malicious
        self.multi = multi
        self.last_stats = CommStats()
        #: client ids the last ``aggregate`` call selected
        self.last_selected: list[int] = []

    def min_updates(self) -> int:
        return max(2 * self.num_malicious + 3, self.multi + self.num_malicious)

    def check_cohort(self, clients_per_round: int) -> None:
        k, f = clients_per_round, self.num_malicious
        check(
            k > 2 * f + 2,
            f"Krum: num_malicious={f} needs clients_per_round > 2*num_malicious + 2 = {2 * f + 2}, got {k}",
        )
        check(
            self.multi <= k - f,
            f"Krum: multi must be <= clients_per_round - num_malicious = {k - f}, got {self.multi}",
        )

    def aggregate(self, local_updates: torch.Tensor, client_ids: Sequence[int], group: object | None = None):
        """Called by every rank at round end with its ``[k_r, P]`` updates (k_r may be 0); returns ``[P]``."""
        self.last_stats = CommStats()
        out, self.last_selected = distributed_krum(
            local_updates, client_ids, self.num_malicious, self.multi, group=group, stats=self.last_stats
        )
        return out


class NormBound:
    """Norm bounding (Sun et al. 2019, "Can you really backdoor federated learning?"): each update becomes
    u · min(1, M / ‖u‖) before the ordinary (weighted) mean. A per-update transform: nothing is held, so
    ``holds_updates = False`` and the strategy keeps its streaming sum.
    """

    holds_updates = False

    def __init__(self, max_norm: float) -> None:
        check(
            isinstance(max_norm, (int, float)) and not isinstance(max_norm, bool) and 0 < max_norm < math.inf,
            f"NormBound: max_norm must be a finite number > 0, got {max_norm!r}",
        )
        self.max_norm = float(max_norm)

    def check_cohort(self, clients_per_round: int) -> None:
        check(clients_per_round >= 1, f"NormBound: needs clients_per_round >= 1, got {clients_per_round}")

    def factor(self, norm: float) -> float:
        """min(1, M / ‖u‖), for a caller that has the norm already (e.g. of an update kept as parts)."""
        return bound_factor(norm, self.max_norm)

    def bound(self, update: torch.Tensor) -> torch.Tensor:
        """The bounded update (a new tensor)."""
        return norm_bound(update, self.max_norm)

    def __repr__(self) -> str:
        return f"NormBound(max_norm={self.max_norm!r})"
