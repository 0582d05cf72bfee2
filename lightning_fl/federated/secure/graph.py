"""SecAgg+ neighbour graphs (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead"): each client masks with, and secret-shares its key among, k ≈ O(log K) neighbours instead of
all K − 1 clients, so a round costs O(K log K) instead of O(K²).

The graph is a Harary (circulant) graph on a random relabelling of the round's clients: place the clients
on a ring in a seeded random order and connect each to the ⌈k/2⌉ nearest on either side. It is symmetric
and regular, connected, and the order is a pure function of (seed, round), never of the processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lightning_fl.errors import check
from lightning_fl.seeding import generator


def default_neighbors(num_clients: int) -> int:
    """k = 2 ⌈log2 K⌉, or every other client when that is at least K − 1."""
    if num_clients <= 1:
        return 0
    return min(num_clients - 1, 2 * math.ceil(math.log2(num_clients)))


def graph_degree(num_clients: int, neighbors: int) -> int:
    """The degree the graph really has: ``neighbors`` rounded up to even, capped at K − 1 (complete)."""
    return min(num_clients - 1, 2 * math.ceil(neighbors / 2))


def neighbour_graph(client_ids: Sequence[int], neighbors: int, seed: int, round_idx: int) -> dict[int, tuple[int, ...]]:
    """Each client's neighbours (sorted). Same answer whatever the order of ``client_ids``."""
    clients = sorted(client_ids)
    count = len(clients)
    check(len(set(clients)) == count, "neighbour_graph: client ids must be distinct")
    check(0 <= neighbors <= max(count - 1, 0), f"neighbour_graph: neighbors must be in [0, {count - 1}]")
    if graph_degree(count, neighbors) >= count - 1:
        return {c: tuple(d for d in clients if d != c) for c in clients}
    order = torch.randperm(count, generator=generator(seed, "secagg-graph", round_idx)).tolist()
    ring = [clients[i] for i in order]
    half = math.ceil(neighbors / 2)
    graph = {}
    for pos, c in enumerate(ring):
        near = {ring[(pos + d) % count] for d in range(1, half + 1)} | {ring[(pos - d) % count] for d in range(1, half + 1)}
        graph[c] = tuple(sorted(near))
    return graph


def default_threshold(degree: int) -> int:
    """t = ⌈k/2⌉ + 1 shares (at most k): a majority of the neighbours, so t − 1 colluders learn nothing."""
    return min(degree, math.ceil(degree / 2) + 1)
