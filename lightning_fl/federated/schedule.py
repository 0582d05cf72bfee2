"""Plan a round: which rank trains which sampled clients, and how many steps every rank runs.

Lightning's training loop makes a collective on every batch (a SIGTERM flag broadcast), so all ranks
must run the same number of batches per epoch. A round therefore lasts ``max`` over ranks of the rank's
client steps; a rank with less work runs padding steps that touch nothing. Clients are assigned
longest-first to the least-loaded rank (LPT), which keeps padding small; the assignment only decides
*where* a client trains, never *what* it trains on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClientJob:
    client_id: int
    num_samples: int  # the client's aggregation weight nᵢ
    num_steps: int
    first_step: int  # index of its first batch within the round on its rank


@dataclass(frozen=True)
class RoundPlan:
    round_idx: int
    jobs: tuple[ClientJob, ...]  # this rank's clients, in training order
    num_steps: int  # batches every rank runs in this round (>= 1)
    round_clients: int  # clients trained in the round, all ranks together
    round_samples: int  # Σ nᵢ over the round's clients, all ranks together
    round_client_ids: tuple[int, ...] = ()  # every client of the round, in sampled order
    round_owner_ranks: tuple[int, ...] = ()  # the rank that trains each of them
    starts_at: dict[int, ClientJob] = field(default_factory=dict, compare=False)
    ends_at: dict[int, ClientJob] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for job in self.jobs:
            if job.num_steps > 0:
                self.starts_at[job.first_step] = job
                self.ends_at[job.first_step + job.num_steps - 1] = job

    @property
    def local_steps(self) -> int:
        """Steps with real client work on this rank; the rest of ``num_steps`` is padding."""
        return sum(j.num_steps for j in self.jobs)

    @property
    def most_clients_per_rank(self) -> int:
        """The most clients any rank trains this round: the same number on every rank."""
        counts: dict[int, int] = {}
        for rank in self.round_owner_ranks:
            counts[rank] = counts.get(rank, 0) + 1
        return max(counts.values(), default=len(self.jobs))

    @property
    def idle_jobs(self) -> tuple[ClientJob, ...]:
        """Sampled clients too small for a single batch (``drop_last``): they return the global model."""
        return tuple(j for j in self.jobs if j.num_steps == 0)


def assign_longest_first(loads: Sequence[int], world_size: int) -> list[list[int]]:
    """Positions of ``loads`` per rank: longest job to the least-loaded rank, ties to the lower index.

    Each rank's positions are returned in ascending order, so clients keep their sampled order.
    """
    totals = [0] * world_size
    owners: list[list[int]] = [[] for _ in range(world_size)]
    for pos in sorted(range(len(loads)), key=lambda p: (-loads[p], p)):
        rank = min(range(world_size), key=lambda r: (totals[r], r))
        totals[rank] += loads[pos]
        owners[rank].append(pos)
    return [sorted(o) for o in owners]


def plan_round(
    round_idx: int,
    client_ids: Sequence[int],
    client_sizes: Sequence[int],
    client_steps: Sequence[int],
    world_size: int,
    rank: int,
    owners: Sequence[Sequence[int]] | None = None,
) -> RoundPlan:
    """This rank's share of a round. ``owners`` (positions per rank) defaults to longest-first."""
    if owners is None:
        owners = assign_longest_first(client_steps, world_size)
    rank_steps = [sum(client_steps[p] for p in positions) for positions in owners]
    owner_of = [0] * len(client_ids)
    for r, positions in enumerate(owners):
        for p in positions:
            owner_of[p] = r
    jobs = []
    step = 0
    for pos in owners[rank]:
        jobs.append(ClientJob(client_ids[pos], client_sizes[pos], client_steps[pos], step))
        step += client_steps[pos]
    return RoundPlan(
        round_idx=round_idx,
        jobs=tuple(jobs),
        num_steps=max(1, max(rank_steps)),
        round_clients=len(client_ids),
        round_samples=sum(client_sizes),
        round_client_ids=tuple(client_ids),
        round_owner_ranks=tuple(owner_of),
    )
