"""Compressed client updates with error feedback: the compressors, their wire format and the exchange.

- ``Quantize(bits, block_size, error_feedback)``: blockwise b-bit stochastic rounding, unbiased;
- ``TopK(fraction, error_feedback)``: the ⌈fraction · P⌉ largest-magnitude entries;
- ``compress_with_feedback``: error feedback around any compressor, with the residual kept by the caller;
- ``CompressedUploads``: a rank's uploads of a round, all-gathered and summed identically on every rank;
- ``bytes_sent`` / ``exchange_bytes`` / ``allreduce_bytes``: bytes one rank sends, by the ring algorithms.

Torch only (no Lightning, no Hydra). See docs/compression.md.
"""

from lightning_fl.federated.compression.base import Compressor
from lightning_fl.federated.compression.exchange import (
    CompressedUploads,
    GatheredUploads,
    RoundSum,
    allreduce_bytes,
    bytes_sent,
    exchange_bytes,
    record_nbytes,
)
from lightning_fl.federated.compression.feedback import client_generator, compress_with_feedback
from lightning_fl.federated.compression.quantize import Quantize, QuantizedPayload
from lightning_fl.federated.compression.topk import SparsePayload, TopK

__all__ = [
    "CompressedUploads",
    "Compressor",
    "GatheredUploads",
    "QuantizedPayload",
    "Quantize",
    "RoundSum",
    "SparsePayload",
    "TopK",
    "allreduce_bytes",
    "bytes_sent",
    "client_generator",
    "compress_with_feedback",
    "exchange_bytes",
    "record_nbytes",
]
