"""Client-level differential privacy for FedAvg: clipping, noise, adaptive clipping, accounting.

Pure torch; the accountant imports ``dp_accounting`` lazily (``pip install 'lightning-fl[privacy]'``).
See ``docs/privacy.md``.
"""

from .accounting import ClientLevelAccountant, default_delta
from .adaptive_clipping import AdaptiveClipState, default_count_noise_std, update_noise_multiplier
from .central_dp import CentralDP
from .clipping import clip_update, global_norm
from .noise import gaussian_noise, secure_standard_normal

__all__ = [
    "AdaptiveClipState",
    "CentralDP",
    "ClientLevelAccountant",
    "clip_update",
    "default_count_noise_std",
    "default_delta",
    "gaussian_noise",
    "global_norm",
    "secure_standard_normal",
    "update_noise_multiplier",
]
