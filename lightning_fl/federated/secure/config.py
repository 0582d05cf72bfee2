"""``SecureAggregation``: the settings of secure aggregation, as passed to ``FedAvgStrategy``."""

from __future__ import annotations

import math
from typing import Any, Optional

from lightning_fl.errors import check, is_int
from lightning_fl.federated.secure.graph import default_neighbors, default_threshold, graph_degree
from lightning_fl.federated.secure.keys import require_cryptography
from lightning_fl.federated.secure.quantize import ROUNDINGS

OVERFLOW_POLICIES = ("error", "clip")


class SecureAggregation:
    """Secure aggregation with pairwise masks over a sparse neighbour graph (SecAgg+, Bell et al. 2020,
    after Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine Learning").

    Each round, every client quantizes its update into Z_2^32, adds pairwise masks agreed (X25519 + HKDF +
    ChaCha20) with its graph neighbours, and Shamir-shares its mask key among them so that the masks of a
    client that fails after setup can be removed. What leaves a process is always masked.

    Args:
        clip_range: R; every update value must lie in [-R, R] (the fixed-point range).
        neighbors: k, the neighbour count of the SecAgg+ graph (rounded up to even). Default
            2⌈log2 K⌉ for K clients per round, or all of them when that is K − 1 or more.
        threshold: t, how many surviving neighbours must hold shares to recover a failed client.
            Default ⌈k/2⌉ + 1 (at most k). t − 1 colluding neighbours learn nothing about a key.
        rounding: ``"stochastic"`` (unbiased, |error| < Δ per value) or ``"nearest"`` (|error| ≤ Δ/2).
        on_overflow: ``"error"`` (default): a round in which some update had values outside [-R, R]
            raises on every process and changes nothing; ``"clip"``: such values are clamped to the
            range and the number of such clients is reported.
        dropout_rate: probability that a client fails after the keys are agreed (simulation, seeded).
        seed: seeds the graph, the simulated failures and stochastic rounding (not the keys).
        deterministic_keys: derive every key from ``seed`` instead of the OS CSPRNG. INSECURE (whoever
            knows the seed can unmask everything); for reproducible tests and simulations only.
        process_masks: add pairwise masks between processes on top of the client masks, so that a
            process's contribution stays masked even when its clients' masks cancel inside it.
            Default: on whenever some process holds more than one client of the round.
        mask_same_process_pairs: also mask between two neighbours trained by the same process. Those
            masks cancel inside the process and hide nothing from it, so by default they are skipped
            (same sums, same guarantee, less work); turn on to run each client's full protocol, e.g.
            to measure what a real deployment would compute.
    """

    def __init__(
        self,
        clip_range: float = 1.0,
        neighbors: Optional[int] = None,
        threshold: Optional[int] = None,
        rounding: str = "stochastic",
        on_overflow: str = "error",
        dropout_rate: float = 0.0,
        seed: int = 0,
        deterministic_keys: bool = False,
        process_masks: Optional[bool] = None,
        mask_same_process_pairs: bool = False,
    ) -> None:
        number = isinstance(clip_range, (int, float)) and not isinstance(clip_range, bool)
        check(
            number and math.isfinite(clip_range) and clip_range > 0,
            f"SecureAggregation: clip_range must be a number > 0, got {clip_range!r}",
        )
        check(
            neighbors is None or (is_int(neighbors) and neighbors >= 1),
            f"SecureAggregation: neighbors must be an integer >= 1 or None, got {neighbors!r}",
        )
        check(
            threshold is None or (is_int(threshold) and threshold >= 1),
            f"SecureAggregation: threshold must be an integer >= 1 or None, got {threshold!r}",
        )
        if neighbors is not None and threshold is not None:
            check(
                threshold <= neighbors,
                f"SecureAggregation: threshold={threshold} exceeds neighbors={neighbors} (shares held per client)",
            )
        check(rounding in ROUNDINGS, f"SecureAggregation: rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        check(
            on_overflow in OVERFLOW_POLICIES,
            f"SecureAggregation: on_overflow must be one of {', '.join(OVERFLOW_POLICIES)}, got {on_overflow!r}",
        )
        check(
            isinstance(dropout_rate, (int, float)) and not isinstance(dropout_rate, bool) and 0 <= dropout_rate < 1,
            f"SecureAggregation: dropout_rate must be in [0, 1), got {dropout_rate!r}",
        )
        check(is_int(seed), f"SecureAggregation: seed must be an integer, got {seed!r}")
        check(
            isinstance(deterministic_keys, bool),
            f"SecureAggregation: deterministic_keys must be true or false, got {deterministic_keys!r}",
        )
        check(
            process_masks is None or isinstance(process_masks, bool),
            f"SecureAggregation: process_masks must be true, false or None, got {process_masks!r}",
        )
        check(
            isinstance(mask_same_process_pairs, bool),
            f"SecureAggregation: mask_same_process_pairs must be true or false, got {mask_same_process_pairs!r}",
        )
        require_cryptography()
        self.clip_range = float(clip_range)
        self.neighbors = neighbors
        self.threshold = threshold
        self.rounding = rounding
        self.on_overflow = on_overflow
        self.dropout_rate = float(dropout_rate)
        self.seed = seed
        self.deterministic_keys = deterministic_keys
        self.process_masks = process_masks
        self.mask_same_process_pairs = mask_same_process_pairs

    def validate_cohort(self, clients_per_round: int) -> None:
        """One-line errors for settings that do not fit K clients per round (call it as soon as K is known)."""
        self.neighbors_for(clients_per_round)
        self.threshold_for(clients_per_round)

    def neighbors_for(self, clients_per_round: int) -> int:
        """k for a round of K clients: the setting, checked against K − 1, or the default."""
        k = clients_per_round
        check(is_int(k) and k >= 2, f"SecureAggregation: needs at least 2 clients per round, got {k!r}")
        if self.neighbors is None:
            return default_neighbors(k)
        check(
            self.neighbors <= k - 1,
            f"SecureAggregation: neighbors={self.neighbors} exceeds the other clients of a round ({k} per round)",
        )
        return self.neighbors

    def degree_for(self, clients_per_round: int) -> int:
        """How many neighbours each client really has (k rounded up to even, at most K − 1)."""
        return graph_degree(clients_per_round, self.neighbors_for(clients_per_round))

    def threshold_for(self, clients_per_round: int) -> int:
        """t for a round of K clients: the setting, or ⌈k/2⌉ + 1 capped at the graph degree."""
        degree = self.degree_for(clients_per_round)
        if self.threshold is None:
            return default_threshold(degree)
        check(
            self.threshold <= degree,
            f"SecureAggregation: threshold={self.threshold} exceeds the neighbours per client ({degree}) "
            f"with {clients_per_round} clients per round",
        )
        return self.threshold

    def _settings(self) -> dict[str, Any]:
        return dict(vars(self))

    def __repr__(self) -> str:
        return "SecureAggregation(" + ", ".join(f"{k}={v!r}" for k, v in self._settings().items()) + ")"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._settings() == self._settings()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._settings().items())))
