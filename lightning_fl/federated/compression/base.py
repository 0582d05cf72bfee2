"""What every compressor provides, and the byte helpers they share.

A compressor turns a flat update of P values into a *payload* (tensors of the scheme) and back, and
writes a payload as a flat ``uint8`` buffer whose length depends only on P and the settings
(``compressed_nbytes``), so that ranks can all-gather buffers without ragged shapes. Byte order inside a
buffer is the machine's (little-endian on every platform torch supports for distributed training).
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_fl.errors import check

FLOAT32_BYTES = 4


class Compressor:
    """Base class of the compression configs (``Quantize``, ``TopK``).

    Subclasses implement ``compressed_nbytes``, ``compress``, ``decompress``, ``encode`` and ``parse``.
    ``stochastic`` compressors need a ``torch.Generator`` for ``compress``.
    """

    stochastic = False

    def __init__(self, error_feedback: bool = True) -> None:
        name = type(self).__name__
        check(isinstance(error_feedback, bool), f"{name}: error_feedback must be true or false, got {error_feedback!r}")
        self.error_feedback = error_feedback

    # --- to implement
    def compressed_nbytes(self, numel: int) -> int:
        raise NotImplementedError

    def compress(self, update: torch.Tensor, generator: torch.Generator | None = None) -> Any:
        raise NotImplementedError

    def decompress(self, payload: Any) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, payload: Any) -> torch.Tensor:
        raise NotImplementedError

    def parse(self, buffer: torch.Tensor, numel: int) -> Any:
        raise NotImplementedError

    # --- shared
    def decode(self, buffer: torch.Tensor, numel: int) -> torch.Tensor:
        """The float32 vector of ``numel`` values a wire buffer stands for."""
        return self.decompress(self.parse(buffer, numel))

    def ratio(self, numel: int) -> float:
        """How many times smaller than the same update as float32: 4 P / compressed_nbytes(P)."""
        return FLOAT32_BYTES * numel / self.compressed_nbytes(numel)

    def _settings(self) -> dict[str, Any]:
        return dict(vars(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._settings() == self._settings()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self._settings().items()))))


def check_buffer(buffer: torch.Tensor, expected: int, name: str) -> None:
    if buffer.dtype != torch.uint8 or buffer.dim() != 1 or buffer.numel() != expected:
        raise ValueError(
            f"{name}: expected a flat uint8 buffer of {expected} bytes, got {tuple(buffer.shape)} {buffer.dtype}"
        )


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a contiguous 1-D tensor, as a flat uint8 view."""
    return t.contiguous().view(torch.uint8)


def from_bytes(buffer: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret a flat uint8 slice as ``dtype``; copies first when the slice is not aligned for it."""
    try:
        return buffer.view(dtype)
    except RuntimeError:  # a slice at an offset that is not a multiple of the element size
        return buffer.clone().view(dtype)


def flat_update(update: torch.Tensor, name: str) -> torch.Tensor:
    check_floating(update, name)
    return update.detach().reshape(-1)


def check_floating(update: torch.Tensor, name: str) -> None:
    if not isinstance(update, torch.Tensor) or not update.is_floating_point():
        raise TypeError(f"{name}: the update must be a floating-point tensor, got {type(update).__name__}")
