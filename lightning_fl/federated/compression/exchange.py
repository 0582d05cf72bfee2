"""Moving compressed client uploads between processes at the end of a round, and what that costs.

Compressed updates cannot be all-reduced: quantized codes of different clients have different scales,
and top-k indices differ per client. So every client's payload travels as it was uploaded: each rank
holds the uploads of the clients it trained (k_r of them, different per rank), the ranks all-gather
them, and every rank decodes every upload and forms Σ wᵢ · decode(payloadᵢ) in ascending key order.
The sum is then the same on every rank and for every number of processes, bit for bit.

A record is ``[key: int64 | weight: float64 | payload: compressed_nbytes(P) bytes | zero padding]``,
padded to a multiple of 8 bytes so that every field of every record in the gathered buffer is aligned.
Each rank contributes one block, ``[uploads: int64 | rejected: int64 | bookkeeping | slots × record]``,
and the round moves **one all-gather** of those blocks: ``slots`` is the most clients any rank trains in
the round, which the round plan already tells every rank, and ``bookkeeping`` is the caller's small
vector of sums (the round's total weight and client counts), summed over ranks after the gather instead
of in an all-reduce of its own. Each collective costs fixed framing on the wire (a few hundred bytes of
TCP/IP and gloo headers and acknowledgements on loopback), which dominates a small top-k payload, so one
collective instead of three is also what keeps the measured bytes near the logged ones.

Without ``slots`` (a caller that does not know the plan) a small all-gather of the counts comes first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

from lightning_fl.federated.compression.base import FLOAT32_BYTES, Compressor

HEADER_NBYTES = 16  # key (int64) and weight (float64)
COUNTS_NBYTES = 16  # [uploads, rejected] as int64, at the head of every rank's block


def record_nbytes(compressor: Compressor, numel: int) -> int:
    """Bytes of one upload on the wire: header, payload, padding to a multiple of 8."""
    return -(-(HEADER_NBYTES + compressor.compressed_nbytes(numel)) // 8) * 8


def bytes_sent(payload_bytes_per_rank: int, world_size: int) -> int:
    """Bytes one rank sends in an all-gather where every rank contributes ``payload_bytes_per_rank``.

    Assumes a ring all-gather, gloo's algorithm (and NCCL's): in each of W − 1 steps a rank passes one
    rank-sized block to its right neighbour, so it sends (W − 1) · payload bytes and receives as many.
    A ring all-reduce of the same B bytes per rank sends 2 (W − 1) / W · B (reduce-scatter then
    all-gather of 1/W blocks): gathering costs W / 2 times an all-reduce of an equally large buffer.
    """
    return max(world_size - 1, 0) * payload_bytes_per_rank


def _padded(nbytes: int) -> int:
    return -(-nbytes // 8) * 8


def block_nbytes(slots: int, compressor: Compressor, numel: int, bookkeeping_nbytes: int = 0) -> int:
    """Bytes of one rank's block: counts, the bookkeeping sums (padded to 8), ``slots`` records."""
    return COUNTS_NBYTES + _padded(bookkeeping_nbytes) + slots * record_nbytes(compressor, numel)


def exchange_bytes(
    slots: int,
    compressor: Compressor,
    numel: int,
    world_size: int,
    bookkeeping_nbytes: int = 0,
    counts_first: bool = False,
) -> int:
    """Bytes one rank sends in :meth:`CompressedUploads.exchange`: one all-gather of the blocks, after
    an all-gather of the counts when ``slots`` was not given (``counts_first``).

    Compare with the uncompressed round, :func:`allreduce_bytes` of P + the bookkeeping values.
    """
    if world_size <= 1:
        return 0
    sent = bytes_sent(block_nbytes(slots, compressor, numel, bookkeeping_nbytes), world_size)
    return sent + (bytes_sent(COUNTS_NBYTES, world_size) if counts_first else 0)


def allreduce_bytes(numel: int, world_size: int, element_size: int = FLOAT32_BYTES) -> int:
    """Bytes one rank sends in a ring all-reduce of ``numel`` values: 2 (W − 1) / W of the buffer."""
    return 2 * max(world_size - 1, 0) * numel * element_size // max(world_size, 1)


@dataclass(frozen=True)
class RoundSum:
    values: torch.Tensor  # Σ wᵢ · decode(payloadᵢ), float32 [P], summed in ascending key order
    total_weight: float  # Σ wᵢ over the uploads
    keys: tuple[int, ...]  # the uploads' keys, ascending
    rejected: int  # Σ over ranks of the rejections reported with reject()
    bytes_sent: int  # what this rank sent in the exchange (0 with one process)


class CompressedUploads:
    """One round's compressed client uploads on this rank, and their exchange at the round's end.

    ``add(key, weight, payload)`` after each client (the payload from ``compress_with_feedback``), then
    ``exchange()`` once on every rank. ``key`` orders the sum and must be unique in the round across all
    ranks: the client's position in the round's sample gives, with one process, FedAvg's own order.
    Memory: this rank's records, then the gathered ``W · max_r k_r`` records and one float32 vector.
    """

    def __init__(self, compressor: Compressor, numel: int, device: torch.device | None = None) -> None:
        self.compressor = compressor
        self.numel = numel
        self.device = torch.device("cpu") if device is None else device
        self.record_nbytes = record_nbytes(compressor, numel)
        self._records: list[torch.Tensor] = []
        self._rejected = 0

    def reset(self) -> None:
        self._records.clear()
        self._rejected = 0

    def __len__(self) -> int:
        return len(self._records)

    def add(self, key: int, weight: float, payload: Any) -> None:
        body = self.compressor.encode(payload)
        record = torch.zeros(self.record_nbytes, dtype=torch.uint8, device=self.device)
        record[:8] = torch.tensor([key], dtype=torch.int64).view(torch.uint8)
        record[8:16] = torch.tensor([weight], dtype=torch.float64).view(torch.uint8)
        record[HEADER_NBYTES : HEADER_NBYTES + body.numel()] = body
        self._records.append(record)

    def reject(self) -> None:
        """Count a client of this rank whose update was dropped (it uploads nothing)."""
        self._rejected += 1

    def exchange(
        self, group: Any = None, slots: Optional[int] = None, bookkeeping: Optional[torch.Tensor] = None
    ) -> RoundSum:
        """Collective: gather every rank's uploads and return their weighted sum (the same on every rank).

        ``slots``: the most uploads any rank can hold this round (known to every rank from the round plan);
        ``bookkeeping``: a small tensor summed over ranks in place, in the same collective.
        """
        gathered = self.gather(group, slots, bookkeeping)
        return RoundSum(
            values=gathered.weighted_sum(),
            total_weight=sum(gathered.weights),
            keys=gathered.keys,
            rejected=gathered.rejected,
            bytes_sent=gathered.bytes_sent,
        )

    def gather(
        self, group: Any = None, slots: Optional[int] = None, bookkeeping: Optional[torch.Tensor] = None
    ) -> GatheredUploads:
        """Collective: every rank's uploads, on every rank, in ascending key order (still encoded).

        For rules that need each client's update rather than their sum (robust aggregators). Arguments as
        for :meth:`exchange`."""
        world = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
        size = self.record_nbytes
        local = (
            torch.stack(self._records) if self._records else torch.zeros(0, size, dtype=torch.uint8, device=self.device)
        )
        if slots is not None and len(self._records) > slots:  # a caller's bug: refused before any collective
            raise ValueError(f"CompressedUploads: {len(self._records)} uploads on this rank but only {slots} slots")
        if world == 1:
            return GatheredUploads(self.compressor, self.numel, local, self._rejected, 0)
        sent = 0
        if slots is None:
            counts = _all_gather(torch.tensor([len(self._records)], dtype=torch.int64, device=self.device), world, group)
            slots = int(counts.max())
            sent += bytes_sent(COUNTS_NBYTES, world)
        extra = 0 if bookkeeping is None else bookkeeping.numel() * bookkeeping.element_size()
        block = torch.zeros(block_nbytes(slots, self.compressor, self.numel, extra), dtype=torch.uint8, device=self.device)
        block[:COUNTS_NBYTES] = torch.tensor([len(self._records), self._rejected], dtype=torch.int64).view(torch.uint8)
        if bookkeeping is not None:
            block[COUNTS_NBYTES : COUNTS_NBYTES + extra] = bookkeeping.detach().contiguous().view(-1).view(torch.uint8)
        start = COUNTS_NBYTES + _padded(extra)
        block[start : start + len(local) * size] = local.view(-1)
        gathered = _all_gather(block, world, group).view(world, -1)
        sent += bytes_sent(block.numel(), world)
        counts_rejected = gathered[:, :COUNTS_NBYTES].contiguous().view(torch.int64)  # [world, 2]
        counts = counts_rejected[:, 0].tolist()
        rejected = int(counts_rejected[:, 1].sum())
        if bookkeeping is not None:
            # Summed in rank order: the same result on every rank.
            parts = gathered[:, COUNTS_NBYTES : COUNTS_NBYTES + extra].contiguous().view(bookkeeping.dtype)
            total = parts[0].clone()
            for part in parts[1:]:
                total += part
            bookkeeping.copy_(total.view_as(bookkeeping))
        slots_of = gathered[:, start:].reshape(world, slots, size)
        records = torch.cat([slots_of[r, : counts[r]] for r in range(world)])
        return GatheredUploads(self.compressor, self.numel, records, rejected, sent)


class GatheredUploads:
    """The round's uploads from all ranks, sorted by key; decoded one at a time on demand."""

    def __init__(self, compressor: Compressor, numel: int, records: torch.Tensor, rejected: int, sent: int) -> None:
        keys = records[:, :8].contiguous().view(torch.int64).view(-1).tolist()
        if len(set(keys)) != len(keys):
            raise ValueError(f"CompressedUploads: keys must be unique in a round, got {sorted(keys)}")
        order = sorted(range(len(keys)), key=keys.__getitem__)
        weights = records[:, 8:HEADER_NBYTES].contiguous().view(torch.float64).view(-1).tolist()
        self.compressor = compressor
        self.numel = numel
        self.keys = tuple(keys[i] for i in order)
        self.weights = tuple(weights[i] for i in order)
        self.rejected = rejected
        self.bytes_sent = sent  # what this rank sent to gather them (0 with one process)
        self._records = records
        self._order = order
        self._body = slice(HEADER_NBYTES, HEADER_NBYTES + compressor.compressed_nbytes(numel))

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[tuple[int, float, torch.Tensor]]:
        """``(key, weight, decoded update)`` in ascending key order."""
        for key, weight, i in zip(self.keys, self.weights, self._order):
            yield key, weight, self.compressor.decode(self._records[i, self._body], self.numel)

    def weighted_sum(self) -> torch.Tensor:
        """Σ wᵢ · decode(payloadᵢ) in float32, added in ascending key order."""
        total = torch.zeros(self.numel, dtype=torch.float32, device=self._records.device)
        for _, weight, update in self:
            total.add_(update, alpha=weight)
        return total


def _all_gather(tensor: torch.Tensor, world: int, group: Any) -> torch.Tensor:
    out = torch.empty(world * tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    # torch >= 2.13 names it all_gather_single; all_gather_into_tensor is the older name of the same call.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, tensor, group=group)
    return out
