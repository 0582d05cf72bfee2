"""Secure aggregation (Bonawitz et al. 2017; SecAgg+, Bell et al. 2020) over torch.distributed.

``SecureAggregation`` is the config the strategy takes; ``SecAggRound`` runs one round on one rank
(``setup`` → ``add`` per finished client → ``finish``). The pieces: ``quantize`` (fixed point in
Z_2^32), ``keys`` (X25519, HKDF, ChaCha20-Poly1305), ``prg`` (ChaCha20 masks), ``shamir``, ``graph``
(neighbour graphs) and ``cost`` (what a round costs). See docs/secure_aggregation.md.
"""

from lightning_fl.federated.secure.config import SecureAggregation
from lightning_fl.federated.secure.cost import cost_table, format_cost_table, round_cost
from lightning_fl.federated.secure.protocol import (
    ClipRangeError,
    DropoutRecoveryError,
    SecAggResult,
    SecAggRound,
    SecureAggregationError,
)
from lightning_fl.federated.secure.quantize import FixedPoint, dequantize, quantize

__all__ = [
    "ClipRangeError",
    "DropoutRecoveryError",
    "FixedPoint",
    "SecAggResult",
    "SecAggRound",
    "SecureAggregation",
    "SecureAggregationError",
    "cost_table",
    "dequantize",
    "format_cost_table",
    "quantize",
    "round_cost",
]
