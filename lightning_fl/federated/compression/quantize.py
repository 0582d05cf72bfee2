"""Blockwise b-bit quantization with unbiased stochastic rounding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_fl.errors import check, is_int
from lightning_fl.federated.compression.base import (
    Compressor,
    as_bytes,
    check_buffer,
    flat_update,
    from_bytes,
)

SUPPORTED_BITS = (2, 4, 8, 16)


@dataclass(frozen=True)
class QuantizedPayload:
    """``numel`` codes of ``bits`` bits, packed, and per block of ``block_size`` values its ``lo`` and ``step``."""

    numel: int
    bits: int
    block_size: int
    lo: torch.Tensor  # float32 [num_blocks]
    step: torch.Tensor  # float32 [num_blocks]
    codes: torch.Tensor  # uint8 [ceil(numel * bits / 8)], packed


class Quantize(Compressor):
    """b-bit quantization of each block of ``block_size`` consecutive values, with stochastic rounding.

    For a block with minimum ``lo`` and maximum ``hi``, ``L = 2^b − 1`` levels apart by
    ``s = (hi − lo) / L``, a value ``x`` with ``v = (x − lo) / s`` is sent as the integer code

        q = ⌊v⌋ + 1  with probability v − ⌊v⌋,   q = ⌊v⌋  otherwise,

    and decoded as ``x̂ = lo + q · s``. Hence E[x̂] = x (unbiased) and |x̂ − x| < s, one step of its block
    (up to float32 rounding of ``lo + q · s``); the variance is s² p (1 − p) ≤ s² / 4 with p = v − ⌊v⌋.
    Stochastic rounding is that of Gupta et al. (2015), "Deep learning with limited numerical precision";
    quantized, unbiased updates as in QSGD (Alistarh et al. 2017), with a per-block min/max scale instead
    of QSGD's norm scale. A constant block has s = 0 and decodes exactly.

    Wire format (``compressed_nbytes(P) = 8 · ⌈P / block_size⌉ + ⌈P · b / 8⌉`` bytes):
    ``[lo: float32 × blocks | s: float32 × blocks | codes]``; codes are unsigned ``b``-bit integers,
    packed ``8 / b`` per byte from the low bits up for b < 8, one byte for b = 8, two bytes (little-endian,
    offset by −2¹⁵) for b = 16.

    The rounding draws come from the ``generator`` passed to ``compress`` (on the CPU, so they do not
    depend on the device): seed it from the run's seed, the round and the client.
    """

    stochastic = True

    def __init__(self, bits: int = 8, block_size: int = 1024, error_feedback: bool = True) -> None:
        check(
            is_int(bits) and bits in SUPPORTED_BITS,
            f"Quantize: bits must be one of {', '.join(map(str, SUPPORTED_BITS))}, got {bits!r}",
        )
        check(
            is_int(block_size) and block_size >= 1,
            f"Quantize: block_size must be an integer >= 1, got {block_size!r}",
        )
        super().__init__(error_feedback=error_feedback)
        self.bits = bits
        self.block_size = block_size

    def _settings(self) -> dict:
        return {"bits": self.bits, "block_size": self.block_size, "error_feedback": self.error_feedback}

    def num_blocks(self, numel: int) -> int:
        return -(-numel // self.block_size)

    def compressed_nbytes(self, numel: int) -> int:
        return 8 * self.num_blocks(numel) + -(-numel * self.bits // 8)

    def compress(self, update: torch.Tensor, generator: torch.Generator | None = None) -> QuantizedPayload:
        if generator is None:
            raise ValueError("Quantize.compress needs a torch.Generator: stochastic rounding draws random numbers")
        flat = flat_update(update, "Quantize").float()
        numel, size = flat.numel(), self.block_size
        blocks_n = self.num_blocks(numel)
        if numel == 0:
            empty = torch.zeros(0, dtype=torch.float32, device=flat.device)
            return QuantizedPayload(0, self.bits, size, empty, empty, torch.zeros(0, dtype=torch.uint8))
        pad = blocks_n * size - numel
        # Pad the last block with its own last value: it leaves that block's min and max unchanged.
        blocks = (torch.cat([flat, flat[-1:].expand(pad)]) if pad else flat).view(blocks_n, size)
        lo, hi = blocks.amin(dim=1), blocks.amax(dim=1)
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError("Quantize.compress: the update holds NaN or inf")
        levels = (1 << self.bits) - 1
        # In float64: hi − lo may overflow float32 for values near its largest.
        step = ((hi.double() - lo.double()) / levels).float()
        safe = torch.where(step > 0, step, torch.ones_like(step))
        v = torch.sub(blocks, lo[:, None]).div_(safe[:, None]).clamp_(0, levels).view(-1)[:numel]
        codes = v.floor()
        frac = v.sub_(codes)  # in [0, 1); 0 where v = levels, so no code exceeds levels
        draws = torch.rand(numel, generator=generator, dtype=torch.float32).to(frac.device)
        codes.add_(draws < frac)
        return QuantizedPayload(numel, self.bits, size, lo, step, pack_codes(codes, self.bits))

    def decompress(self, payload: QuantizedPayload) -> torch.Tensor:
        numel, size = payload.numel, payload.block_size
        codes = unpack_codes(payload.codes, payload.bits, numel).float()
        pad = -numel % size
        if pad:
            codes = torch.cat([codes, codes.new_zeros(pad)])
        out = codes.view(-1, size).mul_(payload.step[:, None]).add_(payload.lo[:, None])
        return out.view(-1)[:numel]

    def encode(self, payload: QuantizedPayload) -> torch.Tensor:
        return torch.cat([as_bytes(payload.lo), as_bytes(payload.step), payload.codes])

    def parse(self, buffer: torch.Tensor, numel: int) -> QuantizedPayload:
        check_buffer(buffer, self.compressed_nbytes(numel), "Quantize.parse")
        nb = self.num_blocks(numel)
        lo = from_bytes(buffer[: 4 * nb], torch.float32)
        step = from_bytes(buffer[4 * nb : 8 * nb], torch.float32)
        return QuantizedPayload(numel, self.bits, self.block_size, lo, step, buffer[8 * nb :])


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned ``bits``-bit integers (an integer tensor) as bytes; see :class:`Quantize` for the layout."""
    if bits == 8:
        return codes.to(torch.uint8)
    if bits == 16:
        return as_bytes((codes.to(torch.int32) - 32768).to(torch.int16))
    per_byte = 8 // bits
    pad = -codes.numel() % per_byte
    grouped = torch.cat([codes.to(torch.uint8), codes.new_zeros(pad, dtype=torch.uint8)]).view(-1, per_byte)
    packed = grouped[:, 0].clone()
    for j in range(1, per_byte):  # codes occupy disjoint bits: OR them in from the low bits up
        packed |= grouped[:, j] << (bits * j)
    return packed


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``numel`` codes as int32."""
    if bits == 8:
        return packed.to(torch.int32)
    if bits == 16:
        return from_bytes(packed, torch.int16).to(torch.int32) + 32768
    shifts = torch.arange(0, 8, bits, dtype=torch.int32, device=packed.device)
    codes = (packed.to(torch.int32)[:, None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:numel]
