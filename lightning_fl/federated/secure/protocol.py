"""One round of secure aggregation, run by every process: setup, masking of each client, finish.

Protocol (Bonawitz et al. 2017, §4, with the SecAgg+ neighbour graph of Bell et al. 2020), mapped onto
the processes of a round. Every rank builds ``SecAggRound`` with the same round index, client ids and
client-to-rank assignment; rank r acts for the clients it owns.

1. ``setup()`` (AdvertiseKeys + ShareKeys): each client draws two X25519 key pairs, c (encrypts shares)
   and s (mask key agreement); one ``all_gather`` spreads the public keys. Each client Shamir-shares its
   s private key t-of-k among its graph neighbours, encrypting each share with ChaCha20-Poly1305 under a
   key agreed with the recipient's c key; one ``all_to_all`` delivers the ciphertexts to their owners'
   ranks. If processes hold several clients, each process also draws a key pair for process masks.
2. ``add(client, update)`` (MaskedInputCollection): quantize into Z_2^32 and add, for each neighbour j,
   +PRG(s_ij) if client < j else −PRG(s_ij), with s_ij = HKDF(X25519(s_i, s_j), round, pair); the
   masked vector is added into the process's running sum. A failed client is simply never added.
3. ``finish()`` (Unmasking): the process adds its process masks and all-reduces its running sum with one
   flag per client (added or not), so every rank knows the same survivors. If clients failed, each
   rank's surviving clients decrypt the shares they hold of the failed clients' s keys and one
   ``all_gather`` pools them; every rank rebuilds those keys, recomputes and removes the failed clients'
   masks with their surviving neighbours, and dequantizes. Fewer than t surviving share-holders is a
   ``DropoutRecoveryError`` on every rank before anything is returned.

All ranks make the same collectives in the same order whatever the failures: every branch depends only
on data every rank has (the graph, the assignment, the all-reduced flags).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from lightning_fl.errors import FederatedConfigError, check, is_int
from lightning_fl.federated.secure import keys, shamir
from lightning_fl.federated.secure.config import SecureAggregation
from lightning_fl.federated.secure.graph import neighbour_graph
from lightning_fl.federated.secure.prg import add_mask_
from lightning_fl.federated.secure.quantize import RING_MASK, FixedPoint
from lightning_fl.seeding import derive_seed, generator

SHARE_CIPHERTEXT_BYTES = shamir.SHARE_BYTES + keys.TAG_BYTES
PUBLIC_KEYS_PER_CLIENT = 2 * keys.KEY_BYTES


class SecureAggregationError(RuntimeError):
    """A round of secure aggregation could not produce a sum; nothing of the round may be applied."""


class DropoutRecoveryError(SecureAggregationError):
    """Too few surviving neighbours hold shares of a failed client's key to remove its masks."""


class ClipRangeError(FederatedConfigError):
    """Some update had values outside [-clip_range, clip_range] (with ``on_overflow="error"``)."""


@dataclass
class SecAggResult:
    """What ``finish()`` returns, identical on every rank."""

    sum: torch.Tensor  # float64 Σ over survivors of their (clamped) updates
    weight: int  # Σ over survivors of the integer weights passed to add()
    survivors: list[int]
    dropped: list[int]
    overflowed_clients: int  # survivors whose update had values outside [-R, R] (clamped)
    error_bound: float  # per-coordinate bound on |sum − true sum| for in-range updates
    bytes_sent: dict[str, int] = field(default_factory=dict)  # this rank, ring-collective model


class SecAggRound:
    """One round of SecAgg+ (Bell et al. 2020) among the clients of a round, as seen by one rank.

    Args:
        config: the :class:`SecureAggregation` settings.
        round_idx: the round (binds keys, masks, the graph and simulated failures to it).
        client_ids: the round's sampled clients (the same on every rank).
        owner_rank_of_client: the rank that trains each client: a mapping id -> rank, or a sequence
            aligned with ``client_ids``.
        numel: length of the flat update vectors.
        rank, world_size, group: this process and the torch.distributed group (world_size 1: no
            collectives at all).
        seed: overrides ``config.seed`` (e.g. the strategy's seed).
        device: where collective buffers live (``"cuda"`` for NCCL); the arithmetic runs on the CPU.
    """

    def __init__(
        self,
        config: SecureAggregation,
        round_idx: int,
        client_ids: Sequence[int],
        owner_rank_of_client: Mapping[int, int] | Sequence[int],
        numel: int,
        rank: int = 0,
        world_size: int = 1,
        group: Optional[Any] = None,
        seed: Optional[int] = None,
        device: torch.device | str | None = None,
    ) -> None:
        check(isinstance(config, SecureAggregation), "SecAggRound: config must be a SecureAggregation")
        check(is_int(numel) and numel >= 1, f"SecAggRound: numel must be an integer >= 1, got {numel!r}")
        check(is_int(world_size) and world_size >= 1 and is_int(rank) and 0 <= rank < world_size, "SecAggRound: bad rank")
        clients = sorted(int(c) for c in client_ids)
        check(len(set(clients)) == len(clients) and all(c >= 0 for c in clients), "SecAggRound: ids must be distinct >= 0")
        if isinstance(owner_rank_of_client, Mapping):
            owner = {int(c): int(owner_rank_of_client[c]) for c in client_ids}
        else:
            check(len(owner_rank_of_client) == len(client_ids), "SecAggRound: one owner rank per client id")
            owner = {int(c): int(r) for c, r in zip(client_ids, owner_rank_of_client)}
        check(all(0 <= r < world_size for r in owner.values()), "SecAggRound: owner ranks must be in [0, world_size)")
        self.config = config
        self.round_idx = int(round_idx)
        self.seed = config.seed if seed is None else int(seed)
        self.clients = clients
        self.owner = owner
        self.numel = numel
        self.rank, self.world_size, self.group = rank, world_size, group
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.slot = {c: i for i, c in enumerate(clients)}
        self.clients_of_rank = [[c for c in clients if owner[c] == r] for r in range(world_size)]
        self.local_clients = self.clients_of_rank[rank]
        count = len(clients)
        self.neighbors = config.neighbors_for(count)
        self.threshold = config.threshold_for(count)
        self.graph = neighbour_graph(clients, self.neighbors, self.seed, self.round_idx)
        self.fixed_point = FixedPoint(config.clip_range, count, config.rounding)
        self.max_weight = RING_MASK // count  # the Σ of weights must not wrap either
        self.simulated_dropouts = frozenset(c for c in clients if self._drops(c))
        auto = world_size > 1 and max(len(cs) for cs in self.clients_of_rank) > 1
        self.process_masks = auto if config.process_masks is None else (config.process_masks and world_size > 1)
        # [Σ codes | Σ weight | Σ overflow flag] in Z_2^32; uint32 numpy wraps modulo 2^32 by itself
        self.partial = np.zeros(numel + 2, dtype=np.uint32)
        self.added: set[int] = set()
        self.local_out_of_range: dict[int, int] = {}  # values clamped per local client (never leaves the rank)
        self.bytes_sent = {"public_keys": 0, "shares": 0, "sum": 0, "recovery": 0}
        self._mask_sk: dict[int, Any] = {}
        self._enc_sk: dict[int, Any] = {}
        self._mask_pk: dict[int, bytes] = {}
        self._enc_pk: dict[int, bytes] = {}
        self._process_sk: Any = None
        self._process_pk: list[bytes] = []
        self._held: dict[tuple[int, int], bytes] = {}  # (secret owner, local holder) -> encrypted share
        self._outgoing: torch.Tensor | None = None
        self._edge_lists: dict[tuple[int, int], list[tuple[int, int]]] | None = None
        self._state = "new"

    # ------------------------------------------------------------------ helpers
    def _drops(self, client: int) -> bool:
        if self.config.dropout_rate <= 0:
            return False
        draw = torch.rand(1, generator=generator(self.seed, "secagg-dropout", self.round_idx, client))
        return bool(draw.item() < self.config.dropout_rate)

    def _new_key(self, *what: object) -> Any:
        if self.config.deterministic_keys:
            return keys.generate_private_key((self.seed, "secagg-key", self.round_idx) + what)
        return keys.generate_private_key()

    def _randbelow(self, client: int) -> Any:
        if self.config.deterministic_keys:
            return random.Random(derive_seed(self.seed, "secagg-shamir", self.round_idx, client)).randrange
        return secrets.randbelow

    def _add_mask_(self, ring: np.ndarray, private_key: Any, peer_public: bytes, a: int, b: int, sign: int) -> None:
        key = keys.agree(private_key, peer_public, "mask", self.round_idx, min(a, b), max(a, b))
        add_mask_(ring, key, sign)

    def masked_pair(self, a: int, b: int) -> bool:
        """Whether clients a and b (neighbours) mask against each other: always across processes; inside
        one process only with ``mask_same_process_pairs`` (there the masks would cancel in the process)."""
        return self.config.mask_same_process_pairs or self.owner[a] != self.owner[b]

    def _share_key(self, private_key: Any, peer_public: bytes, owner: int, holder: int) -> bytes:
        return keys.agree(private_key, peer_public, "share", self.round_idx, owner, holder)

    def _aad(self, owner: int, holder: int) -> bytes:
        return repr(("secagg-share", self.round_idx, owner, holder)).encode()

    def _edges(self, src: int, dst: int) -> list[tuple[int, int]]:
        """(secret owner on rank src, holder on rank dst), in the order both ranks use."""
        if self._edge_lists is None:  # one pass over the graph: O(K·k), not O(W·K·k)
            self._edge_lists = {}
            for i in self.clients:
                for j in self.graph[i]:
                    self._edge_lists.setdefault((self.owner[i], self.owner[j]), []).append((i, j))
        return self._edge_lists.get((src, dst), [])

    def _all_gather(self, payload: bytes, size: int) -> list[bytes]:
        size = max(size, 1)
        mine = torch.zeros(size, dtype=torch.uint8)
        if payload:
            mine[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        out = [torch.empty(size, dtype=torch.uint8, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(out, mine.to(self.device), group=self.group)
        return [t.cpu().numpy().tobytes() for t in out]

    # ------------------------------------------------------------------ 1. setup
    def setup(self) -> None:
        """Key generation for this rank's clients, public-key exchange, share distribution."""
        check(self._state == "new", "SecAggRound: setup() runs once, first")
        for c in self.local_clients:
            self._enc_sk[c] = self._new_key(c, "c")
            self._mask_sk[c] = self._new_key(c, "s")
        if self.process_masks:
            self._process_sk = self._new_key("process", self.rank)
        self._exchange_public_keys()
        self._distribute_shares()
        self._state = "setup"

    def _exchange_public_keys(self) -> None:
        def block(r_clients: list[int], pk_process: bytes) -> bytes:
            return pk_process + b"".join(self._enc_pk[c] + self._mask_pk[c] for c in r_clients)

        for c in self.local_clients:
            self._enc_pk[c] = keys.public_bytes(self._enc_sk[c])
            self._mask_pk[c] = keys.public_bytes(self._mask_sk[c])
        own_process_pk = keys.public_bytes(self._process_sk) if self.process_masks else b""
        if self.world_size == 1:
            self._process_pk = [own_process_pk]
            return
        head = keys.KEY_BYTES if self.process_masks else 0
        size = head + PUBLIC_KEYS_PER_CLIENT * max(len(cs) for cs in self.clients_of_rank)
        blocks = self._all_gather(block(self.local_clients, own_process_pk), size)
        self.bytes_sent["public_keys"] = (self.world_size - 1) * size
        for r, raw in enumerate(blocks):
            self._process_pk.append(raw[:head])
            for n, c in enumerate(self.clients_of_rank[r]):
                at = head + n * PUBLIC_KEYS_PER_CLIENT
                self._enc_pk[c] = raw[at : at + keys.KEY_BYTES]
                self._mask_pk[c] = raw[at + keys.KEY_BYTES : at + PUBLIC_KEYS_PER_CLIENT]

    def _distribute_shares(self) -> None:
        outgoing: dict[tuple[int, int], bytes] = {}
        for i in self.local_clients:
            holders = self.graph[i]
            secret = shamir.from_bytes(keys.private_bytes(self._mask_sk[i]))
            values = shamir.split(secret, self.threshold, [j + 1 for j in holders], self._randbelow(i))
            for j, y in zip(holders, values):
                key = self._share_key(self._enc_sk[i], self._enc_pk[j], i, j)
                outgoing[(i, j)] = keys.encrypt(key, shamir.to_bytes(y), self._aad(i, j))
        for edge in self._edges(self.rank, self.rank):
            self._held[edge] = outgoing[edge]
        if self.world_size == 1:
            return
        send = [self._edges(self.rank, r) if r != self.rank else [] for r in range(self.world_size)]
        recv = [self._edges(r, self.rank) if r != self.rank else [] for r in range(self.world_size)]
        crossing = sum(len(self._edges(s, r)) for s in range(self.world_size) for r in range(self.world_size) if s != r)
        if crossing == 0:  # every rank computes the same count, so all skip together
            return
        payload = b"".join(outgoing[e] for edges in send for e in edges)
        inp = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else torch.zeros(0, dtype=torch.uint8)
        out = torch.empty(sum(len(e) for e in recv) * SHARE_CIPHERTEXT_BYTES, dtype=torch.uint8, device=self.device)
        dist.all_to_all_single(
            out,
            inp.to(self.device),
            output_split_sizes=[len(e) * SHARE_CIPHERTEXT_BYTES for e in recv],
            input_split_sizes=[len(e) * SHARE_CIPHERTEXT_BYTES for e in send],
            group=self.group,
        )
        self.bytes_sent["shares"] = len(payload)
        raw = out.cpu().numpy().tobytes()
        at = 0
        for edges in recv:
            for e in edges:
                self._held[e] = raw[at : at + SHARE_CIPHERTEXT_BYTES]
                at += SHARE_CIPHERTEXT_BYTES

    # ------------------------------------------------------------------ 2. masking
    def mask(self, client_id: int, update: torch.Tensor, weight: int = 1) -> torch.Tensor:
        """The masked ring vector (int64 in [0, 2^32), length numel + 2) of a local client:
        ``[codes of update | weight | 1 if some value was outside the range]`` plus its pairwise masks
        (with every neighbour when ``mask_same_process_pairs``, else with those on other processes)."""
        return torch.from_numpy(self._masked(client_id, update, weight).astype(np.int64))

    def _masked(self, client_id: int, update: torch.Tensor, weight: int) -> np.ndarray:
        check(self._state == "setup", "SecAggRound: mask()/add() need setup() first and come before finish()")
        check(client_id in self._mask_sk, f"SecAggRound: client {client_id} is not a client of rank {self.rank}")
        check(update.numel() == self.numel, f"SecAggRound: update has {update.numel()} values, expected {self.numel}")
        check(
            is_int(weight) and 0 <= weight <= self.max_weight,
            f"SecAggRound: weight must be an integer in [0, {self.max_weight}], got {weight!r}",
        )
        rng = generator(self.seed, "secagg-quantize", self.round_idx, client_id)
        codes, out_of_range = self.fixed_point.encode(update, rng)
        self.local_out_of_range[client_id] = out_of_range
        vec = np.empty(self.numel + 2, dtype=np.uint32)
        vec[: self.numel] = codes  # integral float64 in [0, L] ⊂ [0, 2^32): the cast is exact
        vec[self.numel :] = (weight, int(out_of_range > 0))
        for j in self.graph[client_id]:
            if self.masked_pair(client_id, j):
                self._add_mask_(vec, self._mask_sk[client_id], self._mask_pk[j], client_id, j, 1 if client_id < j else -1)
        return vec

    def add(self, client_id: int, update: torch.Tensor, weight: int = 1) -> bool:
        """Mask a finished client's update and add it into this rank's running sum. Returns False (and adds
        nothing) for a client the simulated ``dropout_rate`` fails; a client never added counts as failed."""
        check(client_id not in self.added, f"SecAggRound: client {client_id} was added twice")
        if client_id in self.simulated_dropouts:
            return False
        np.add(self.partial, self._masked(client_id, update, weight), out=self.partial)
        self.added.add(client_id)
        return True

    # ------------------------------------------------------------------ 3. finish
    def outgoing(self) -> torch.Tensor:
        """The exact int64 buffer this rank puts into the all-reduce: ``[masked running sum + process masks
        (numel + 2 ring elements) | one added-flag per client of the round (K values, public)]``."""
        check(self._state == "setup", "SecAggRound: outgoing() needs setup() and comes before finish()")
        if self._outgoing is None:
            masked = self.partial.copy()
            if self.process_masks:
                for q in range(self.world_size):
                    if q != self.rank:
                        sign = 1 if self.rank < q else -1
                        self._add_mask_(masked, self._process_sk, self._process_pk[q], self.rank, q, sign)
            flags = torch.zeros(len(self.clients), dtype=torch.int64)
            for c in self.added:
                flags[self.slot[c]] = 1
            self._outgoing = torch.cat([torch.from_numpy(masked.astype(np.int64)), flags])
        return self._outgoing

    def finish(self) -> SecAggResult:
        """All-reduce, recover failed clients, unmask and dequantize. Every rank must call it; every rank
        gets the same result or the same exception (then nothing of the round may be applied)."""
        buffer = self.outgoing()
        self._state = "finished"
        if self.world_size > 1:
            buffer = buffer.to(self.device)
            dist.all_reduce(buffer, group=self.group)
            self.bytes_sent["sum"] = 2 * (self.world_size - 1) * buffer.numel() * 8 // self.world_size
            buffer = buffer.cpu()
        total = buffer[: self.numel + 2].bitwise_and(RING_MASK).numpy().astype(np.uint32)
        flags = buffer[self.numel + 2 :].tolist()
        if any(f not in (0, 1) for f in flags):
            raise SecureAggregationError("secure aggregation: a client was added on more than one rank")
        survivors = [c for c in self.clients if flags[self.slot[c]] == 1]
        dropped = [c for c in self.clients if flags[self.slot[c]] == 0]
        if dropped:
            self._refuse_exposure(set(survivors))
            total = self._recover(total, set(survivors), dropped)
        total = torch.from_numpy(total.astype(np.int64))
        overflowed = int(total[self.numel + 1])
        if overflowed and self.config.on_overflow == "error":
            r = self.config.clip_range
            raise ClipRangeError(
                f"SecureAggregation: clip_range={r:g} is too small: {overflowed} of {len(survivors)} clients had "
                f"update values outside [-{r:g}, {r:g}] in round {self.round_idx}; the round was not applied"
            )
        return SecAggResult(
            sum=self.fixed_point.dequantize(total[: self.numel], len(survivors)),
            weight=int(total[self.numel]),
            survivors=survivors,
            dropped=dropped,
            overflowed_clients=overflowed,
            error_bound=self.fixed_point.error_bound(len(survivors)),
            bytes_sent=dict(self.bytes_sent),
        )

    def _refuse_exposure(self, survivors: set[int]) -> None:
        """Recovery publishes the failed clients' masks. Without process masks, the ranks whose surviving
        clients are linked by surviving masked pairs must still form one group; a group cut off from the
        others would have its partial sum revealed, so the round is refused instead (on every rank)."""
        if self.process_masks or self.world_size == 1:
            return
        group = {self.owner[c]: self.owner[c] for c in survivors}

        def root(r: int) -> int:
            while group[r] != r:
                group[r] = group[group[r]]
                r = group[r]
            return r

        for a in survivors:
            for b in self.graph[a]:
                if b in survivors and self.owner[a] != self.owner[b]:
                    group[root(self.owner[a])] = root(self.owner[b])
        components: dict[int, list[int]] = {}
        for r in sorted(group):
            components.setdefault(root(r), []).append(r)
        if len(components) > 1:
            cut = min(components.values(), key=len)
            raise SecureAggregationError(
                f"secure aggregation would reveal the partial sum of ranks {cut} in round {self.round_idx}: the "
                f"clients linking them to other ranks failed; the round was not applied (use process_masks=True "
                f"or more neighbors)"
            )

    def _recover(self, total: np.ndarray, survivors: set[int], dropped: list[int]) -> np.ndarray:
        chosen: dict[int, list[int]] = {}
        for u in dropped:
            holders = [j for j in self.graph[u] if j in survivors]
            if len(holders) < self.threshold:
                raise DropoutRecoveryError(
                    f"secure aggregation cannot recover failed client {u} in round {self.round_idx}: "
                    f"{len(holders)} of its {len(self.graph[u])} neighbours survived, threshold={self.threshold}; "
                    f"the round was not applied"
                )
            chosen[u] = holders[: self.threshold]  # t shares suffice; fewer bytes
        order = [(u, j) for u in dropped for j in chosen[u]]
        per_rank = [[e for e in order if self.owner[e[1]] == r] for r in range(self.world_size)]
        payload = b""
        for u, j in per_rank[self.rank]:  # this rank's surviving holders open their shares of u's key
            key = self._share_key(self._enc_sk[j], self._enc_pk[u], u, j)
            try:
                payload += keys.decrypt(key, self._held[(u, j)], self._aad(u, j))
            except Exception:  # a tampered share: send zeros, so every rank fails the key check together
                payload += bytes(shamir.SHARE_BYTES)
        if self.world_size == 1:
            blocks = [payload]
        else:
            size = shamir.SHARE_BYTES * max(len(e) for e in per_rank)
            blocks = self._all_gather(payload, size)
            self.bytes_sent["recovery"] = (self.world_size - 1) * max(size, 1)
        points: dict[int, list[tuple[int, int]]] = {u: [] for u in dropped}
        for r, edges in enumerate(per_rank):
            for n, (u, j) in enumerate(edges):
                raw = blocks[r][n * shamir.SHARE_BYTES : (n + 1) * shamir.SHARE_BYTES]
                points[u].append((j + 1, shamir.from_bytes(raw)))
        for u in dropped:
            secret = shamir.reconstruct(points[u])
            if secret >= 1 << (8 * keys.KEY_BYTES):
                raise SecureAggregationError(f"secure aggregation: shares of client {u} do not rebuild a key")
            sk = keys.private_key_from_bytes(secret.to_bytes(keys.KEY_BYTES, "little"))
            if keys.public_bytes(sk) != self._mask_pk[u]:
                raise SecureAggregationError(f"secure aggregation: shares of client {u} rebuild the wrong key")
            for v in self.graph[u]:
                if v in survivors and self.masked_pair(u, v):  # v added +m if v < u, −m otherwise: undo it
                    self._add_mask_(total, sk, self._mask_pk[v], u, v, -1 if v < u else 1)
        return total
