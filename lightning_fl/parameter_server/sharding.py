"""Split a model's parameters into equal contiguous buckets, one per parameter server.

The parameters an optimizer holds are laid out as one flat vector, param group after param group, padded
to a multiple of the number of shards and cut into equal buckets: bucket r is ``[r·s, (r+1)·s)`` with
``s = ceil(P / S)``. A bucket may cut through a tensor or span two param groups; the pieces it holds of
each group are its *segments*, each optimized with that group's hyperparameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lightning_fl.errors import check


@dataclass(frozen=True)
class Segment:
    group: int  # optimizer param group the elements belong to
    start: int  # flat index of the first element
    stop: int  # flat index one past the last element

    @property
    def numel(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ShardLayout:
    group_ranges: tuple[tuple[int, int], ...]  # flat [start, stop) of each param group
    num_shards: int

    @property
    def numel(self) -> int:
        return self.group_ranges[-1][1] if self.group_ranges else 0

    @property
    def shard_size(self) -> int:
        return -(-self.numel // self.num_shards)

    @property
    def padded_numel(self) -> int:
        return self.shard_size * self.num_shards

    def shard_range(self, rank: int) -> tuple[int, int]:
        return rank * self.shard_size, (rank + 1) * self.shard_size

    def segments(self, rank: int) -> list[Segment]:
        """The real (non-padding) elements of bucket ``rank``, split at param-group boundaries."""
        lo, hi = self.shard_range(rank)
        out = []
        for g, (start, stop) in enumerate(self.group_ranges):
            a, b = max(lo, start), min(hi, stop)
            if a < b:
                out.append(Segment(g, a, b))
        return out


def shard_layout(group_numels: Sequence[int], num_shards: int) -> ShardLayout:
    check(num_shards >= 1, f"num_shards must be >= 1, got {num_shards}")
    ranges = []
    offset = 0
    for n in group_numels:
        ranges.append((offset, offset + int(n)))
        offset += int(n)
    return ShardLayout(tuple(ranges), num_shards)
