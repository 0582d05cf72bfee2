"""The bounded-staleness parameter server's transport (design: docs/parameter_server.md).

Every rank serves one bucket from a background thread while its main thread (Lightning's loop) works.
Messages are gloo point-to-point sends in two process groups of their own, never the default group in
which Lightning runs its collectives:

- push group, worker -> server: ``[header | gradient slice]``. The header says which clock the gradient
  belongs to, which version it was computed from, which version the worker needs before its next step,
  and whether the worker stops for now (``STOP``: the epoch ends, or validation or a checkpoint follows).
- reply group, server -> worker: ``[version | parameter slice]``, sent once the needed version exists.

The co-located worker talks to its own server through queues (gloo cannot send to itself). A server
lives from a worker's first push until every worker has stopped; then all buckets hold every update,
which is the state validation, checkpoints and the next epoch start from.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Optional, Union

import torch
import torch.distributed as dist

from lightning_fl.parameter_server.staleness import ClockBook, Push, combine

GRAD = 1  # the message carries a gradient for its clock
STOP = 2  # the worker sends nothing more until every bucket is complete
PUSH_TAG, REPLY_TAG = 17, 18
HEADER_SLOTS = 8  # four int64 fields carried bit for bit in eight float32 slots


def encode_header(*fields: int) -> torch.Tensor:
    values = list(fields) + [0] * (4 - len(fields))
    return torch.tensor(values, dtype=torch.int64).view(torch.float32)


def decode_header(message: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(v) for v in message[:HEADER_SLOTS].contiguous().view(torch.int64).tolist())


Item = Union[tuple[int, torch.Tensor], BaseException]


class BucketServer:
    """Serves bucket ``rank`` until every worker has sent ``STOP``.

    Args:
        book: the bucket's SSP bookkeeping, starting at the current version.
        params: the bucket's current values (flat, padded to the shard size).
        apply: applies one mean gradient to the bucket (the shard optimizer step) and returns its new values.
        timeout: seconds without any message after which the server gives up and names the silent workers.
    """

    def __init__(
        self,
        *,
        rank: int,
        world_size: int,
        book: ClockBook,
        params: torch.Tensor,
        apply: Callable[[torch.Tensor], torch.Tensor],
        scale_stale: bool,
        push_group: Optional[dist.ProcessGroup],
        reply_group: Optional[dist.ProcessGroup],
        timeout: float,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.book = book
        self.params = params
        self._apply = apply
        self._scale_stale = scale_stale
        self._push_group, self._reply_group = push_group, reply_group
        self._timeout = timeout
        self.inbox: queue.Queue[Item] = queue.Queue()
        self.local_replies: queue.Queue[Item] = queue.Queue()
        self.bytes_replied = 0  # bytes sent to other ranks' workers
        self.error: Optional[BaseException] = None
        self._threads: list[threading.Thread] = []

    def start(self) -> "BucketServer":
        self._threads = [threading.Thread(target=self._serve, name=f"ps-server-{self.rank}", daemon=True)]
        if self.world_size > 1:
            self._threads.append(threading.Thread(target=self._receive, name=f"ps-recv-{self.rank}", daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self._threads:
            thread.join(self._timeout)
        if self.error is not None:
            raise RuntimeError(f"parameter server on rank {self.rank} failed: {self.error}") from self.error
        if any(thread.is_alive() for thread in self._threads):
            raise RuntimeError(f"parameter server on rank {self.rank} did not finish within {self._timeout:.0f} s")

    # ------------------------------------------------------------------ threads
    def _receive(self) -> None:
        """Move messages from the other ranks' workers into the inbox, until each of them has stopped."""
        size = HEADER_SLOTS + self.params.numel()
        remaining = self.world_size - 1
        try:
            while remaining:
                message = torch.empty(size, dtype=torch.float32)
                source = dist.recv(message, src=None, group=self._push_group, tag=PUSH_TAG)
                self.inbox.put((source, message))  # the groups span every rank in order: group rank = global rank
                if decode_header(message)[3] & STOP:
                    remaining -= 1
        except BaseException as err:  # noqa: B036 - handed to the serving thread, which reports it
            self.inbox.put(err)

    def _serve(self) -> None:
        stopped: dict[int, int] = {}  # worker -> the clock it stopped at
        # A stopped worker is answered only once every worker has stopped: its reply then also says that
        # this server has read the last message of the epoch from everyone, so the worker's next message
        # (next epoch, after validation) can only reach the next receiving thread, never this one.
        held: dict[int, int] = {}  # stopped worker -> the version it needs
        try:
            while len(stopped) < self.world_size or self.book.has_waiting():
                try:
                    item = self.inbox.get(timeout=self._timeout)
                except queue.Empty:
                    silent = sorted(set(range(self.world_size)) - set(stopped))
                    raise TimeoutError(
                        f"no message from worker(s) {silent} for {self._timeout:.0f} s (strategy timeout)"
                    ) from None
                if isinstance(item, BaseException):
                    raise item
                worker, message = item
                clock, read_version, needed, flags = decode_header(message)
                if flags & GRAD:
                    self.book.add(Push(worker, clock, read_version, message[HEADER_SLOTS:]))
                if flags & STOP:
                    stopped[worker] = clock + 1 if flags & GRAD else clock
                    held[worker] = needed
                    if len(stopped) == self.world_size:
                        if len(set(stopped.values())) > 1:
                            raise RuntimeError(
                                f"workers stopped at different steps {stopped}: every rank must run the same "
                                "number of training batches (did a callback stop one rank only?)"
                            )
                        for waiting, version in held.items():
                            self.book.wait(waiting, version)
                else:
                    self.book.wait(worker, needed)
                while (pushes := self.book.pop_complete()) is not None:
                    self.params = self._apply(combine(pushes, self._scale_stale))
                    self.book.advance()
                for worker in self.book.due():
                    self._reply(worker)
        except BaseException as err:  # noqa: B036 - reported to this rank's worker and re-raised by join()
            self.error = err
            self.local_replies.put(err)

    def _reply(self, worker: int) -> None:
        message = torch.cat([encode_header(self.book.version), self.params])
        if worker == self.rank:
            self.local_replies.put((self.rank, message))
            return
        dist.send(message, dst=worker, group=self._reply_group, tag=REPLY_TAG)
        self.bytes_replied += message.numel() * message.element_size()
