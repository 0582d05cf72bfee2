"""Error feedback: what a client did not send is added to its next update."""

from __future__ import annotations

from typing import Any

import torch

from lightning_fl import seeding
from lightning_fl.federated.compression.base import Compressor, check_floating


def compress_with_feedback(
    update: torch.Tensor,
    residual: torch.Tensor | None,
    compressor: Compressor,
    generator: torch.Generator | None = None,
) -> tuple[Any, torch.Tensor | None]:
    """Compress ``update`` with error feedback; returns ``(payload, new_residual)``.

    With error feedback (Seide et al. 2014, "1-bit SGD"; Stich et al. 2018; Karimireddy et al. 2019,
    "Error feedback fixes SignSGD"):

        corrected    = update + residual          (residual = 0 the first time: ``None``)
        payload      = C(corrected)
        new_residual = corrected − decode(payload)

    so after T rounds Σ sent = Σ updates − residual_T: nothing is lost, only delayed. The new residual has
    the update's dtype and shape; the caller keeps it per client until that client's next round.

    Without (``compressor.error_feedback`` is false) the update is compressed as is, the new residual is
    ``None``, and passing a residual is an error (a stored residual would silently be dropped).
    """
    check_floating(update, type(compressor).__name__)
    if not compressor.error_feedback:
        if residual is not None:
            raise ValueError(f"{compressor!r} has error_feedback=False but a residual was passed")
        return compressor.compress(update, generator), None
    if residual is None:
        corrected = update.detach()
    else:
        if residual.shape != update.shape:
            raise ValueError(f"residual shape {tuple(residual.shape)} != update shape {tuple(update.shape)}")
        corrected = update.detach() + residual
    payload = compressor.compress(corrected, generator)
    sent = compressor.decompress(payload).view(corrected.shape).to(corrected.dtype)
    return payload, corrected - sent


def client_generator(seed: int, round_idx: int, client_id: int) -> torch.Generator:
    """The generator for a client's compression draws in a round: a pure function of the three, so the
    draws do not depend on which process compresses, and a resumed run repeats them."""
    return seeding.generator(seed, "compress", round_idx, client_id)
