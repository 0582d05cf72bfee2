"""A module's state seen as flat vectors: what the server averages and what clients start from.

Float parameters *and* float buffers (BatchNorm running statistics) are averaged. Integer buffers
(BatchNorm's ``num_batches_tracked``) have no meaningful mean: the server keeps their element-wise
maximum over the round's clients, so a step counter keeps counting like the longest-trained client.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FlatModelState:
    def __init__(self, module: nn.Module) -> None:
        params = list(module.parameters())
        buffers = list(module.buffers())
        self.float_tensors: list[torch.Tensor] = params + [b for b in buffers if b.is_floating_point()]
        self.int_tensors: list[torch.Tensor] = [b for b in buffers if not b.is_floating_point()]
        self.numel = sum(t.numel() for t in self.float_tensors)
        self.int_numel = sum(t.numel() for t in self.int_tensors)
        widest = torch.float64 if any(t.dtype == torch.float64 for t in self.float_tensors) else torch.float32
        self.dtype = widest
        self.device = self.float_tensors[0].device if self.float_tensors else torch.device("cpu")

    @property
    def nbytes(self) -> int:
        return self.numel * torch.finfo(self.dtype).bits // 8 + self.int_numel * 8

    def pack(self) -> torch.Tensor:
        """A new flat copy of the float state."""
        if not self.float_tensors:
            return torch.zeros(0, dtype=self.dtype, device=self.device)
        return torch.cat([t.detach().reshape(-1).to(self.dtype) for t in self.float_tensors])

    @torch.no_grad()
    def pack_into(self, out: torch.Tensor) -> torch.Tensor:
        """Copy the float state into ``out`` (a preallocated flat vector) and return it."""
        for t, view in zip(self.float_tensors, split_like(out, self.float_tensors)):
            view.copy_(t.reshape(-1))
        return out

    def pack_ints(self) -> torch.Tensor:
        if not self.int_tensors:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        return torch.cat([t.detach().reshape(-1).long() for t in self.int_tensors])

    @torch.no_grad()
    def unpack(self, flat: torch.Tensor) -> None:
        """Write ``flat`` into the module's float tensors."""
        for t, view in zip(self.float_tensors, split_like(flat, self.float_tensors)):
            t.copy_(view.view_as(t))

    @torch.no_grad()
    def unpack_ints(self, flat: torch.Tensor) -> None:
        for t, view in zip(self.int_tensors, split_like(flat, self.int_tensors)):
            t.copy_(view.view_as(t))

    @torch.no_grad()
    def max_ints_into(self, out: torch.Tensor) -> None:
        """``out = max(out, integer buffers)`` element-wise."""
        for t, view in zip(self.int_tensors, split_like(out, self.int_tensors)):
            torch.maximum(view, t.reshape(-1).long(), out=view)


def split_like(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Views of ``flat``, one per tensor in order, each with that tensor's number of elements."""
    return flat[: sum(t.numel() for t in tensors)].split([t.numel() for t in tensors])
