"""What a round of secure aggregation costs, as counts (pure Python; no keys are made).

SecAgg+ (k neighbours) against full pairwise masking (Bonawitz et al. 2017, k = K − 1): per round every
client expands one ChaCha20 mask per neighbour, so K·k masks instead of K·(K − 1), and the same K·k
encrypted shares travel at setup. Used by the benchmarks to print the table of docs/secure_aggregation.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

from lightning_fl.federated.secure.graph import default_neighbors, default_threshold, graph_degree
from lightning_fl.federated.secure.keys import KEY_BYTES, TAG_BYTES
from lightning_fl.federated.secure.shamir import SHARE_BYTES


def round_cost(clients: int, numel: int, neighbors: Optional[int] = None, dropped: int = 0) -> dict[str, int]:
    """Counts for one round of K = ``clients`` with vectors of ``numel`` values and ``dropped`` failures."""
    k = graph_degree(clients, default_neighbors(clients) if neighbors is None else neighbors)
    t = default_threshold(k)
    ring_bytes = 4 * (numel + 2)
    return {
        "clients": clients,
        "neighbors": k,
        "threshold": t,
        "masks": clients * k,  # mask expansions by clients (each pair's mask is expanded by both ends)
        "masks_full_pairwise": clients * (clients - 1),
        "mask_bytes": clients * k * ring_bytes,  # keystream generated
        "mask_bytes_full_pairwise": clients * (clients - 1) * ring_bytes,
        "key_agreements": 2 * clients * k,  # one for the mask, one for the share's encryption key
        "public_key_bytes": clients * 2 * KEY_BYTES,
        "share_bytes": clients * k * (SHARE_BYTES + TAG_BYTES),  # encrypted shares, at most this crosses
        "share_bytes_full_pairwise": clients * (clients - 1) * (SHARE_BYTES + TAG_BYTES),
        "recovery_share_bytes": dropped * t * SHARE_BYTES,
        "recovery_masks": dropped * k,  # recomputed on every rank
    }


def cost_table(
    cohort_sizes: Iterable[int] = (10, 100, 1000), numel: int = 1, neighbors: Optional[int] = None
) -> list[dict[str, int]]:
    """``round_cost`` for each K (default neighbours 2⌈log2 K⌉ unless ``neighbors`` is given)."""
    return [round_cost(k, numel, neighbors) for k in cohort_sizes]


def format_cost_table(rows: list[dict[str, int]]) -> str:
    """A Markdown table: masks and share bytes per round, SecAgg+ against full pairwise."""
    lines = [
        "| clients K | neighbours k | threshold t | masks K·k | masks K(K−1) | ratio | shares (bytes) | shares full (bytes) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["masks_full_pairwise"] / max(r["masks"], 1)
        lines.append(
            f"| {r['clients']} | {r['neighbors']} | {r['threshold']} | {r['masks']:,} | {r['masks_full_pairwise']:,} "
            f"| {ratio:.1f}× | {r['share_bytes']:,} | {r['share_bytes_full_pairwise']:,} |"
        )
    return "\n".join(lines)
