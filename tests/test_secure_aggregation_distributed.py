"""Secure aggregation across real gloo processes (world size 2 and 3, spawned inside the test).

Each rank captures the exact buffer it puts into the all-reduce. The test shows that buffer is uniform
over the ring and uncorrelated with the rank's true updates, that every rank ends with the same sum, equal
to the plain sum within the quantization bound and bit-identical to world size 1, with one and two failed
clients recovered from shares, and that too few share-holders is the same error on every rank (no hang).
"""

from __future__ import annotations

import math
import os
import socket
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_secure_aggregation import uniform_bytes_pvalue, updates_for

from lightning_fl.federated.secure import SecAggRound, SecureAggregation, SecureAggregationError
from lightning_fl.federated.secure.graph import neighbour_graph
from lightning_fl.federated.secure.protocol import SHARE_CIPHERTEXT_BYTES

NUMEL = 4000
CLIENTS = list(range(100, 112))
ROUND = 7
FAILED = 103


def owners(world_size: int) -> dict[int, int]:
    """Uneven on purpose: with 3 ranks, 6 + 4 + 2 clients."""
    if world_size == 1:
        return {c: 0 for c in CLIENTS}
    if world_size == 2:
        return {c: c % 2 for c in CLIENTS}
    return {c: 0 if i < 6 else 1 if i < 10 else 2 for i, c in enumerate(CLIENTS)}


def scenarios() -> list[tuple[str, dict, tuple[int, ...]]]:
    neighbour_6 = neighbour_graph(CLIENTS, 6, 0, ROUND)[FAILED][0]
    neighbour_4 = neighbour_graph(CLIENTS, 4, 0, ROUND)[FAILED][0]
    return [
        ("none", dict(neighbors=6), ()),  # OS-random keys: the sum cannot depend on them
        ("below_threshold", dict(neighbors=4, threshold=4, deterministic_keys=True), (FAILED, neighbour_4)),
        ("one_failed", dict(neighbors=6, deterministic_keys=True), (FAILED,)),
        ("two_failed", dict(neighbors=6, deterministic_keys=True), (FAILED, neighbour_6)),
        # every client runs its full protocol (masks inside a process too): the same sums
        ("two_failed_every_pair", dict(neighbors=6, deterministic_keys=True, mask_same_process_pairs=True), (FAILED, neighbour_6)),
    ]


def ring_arc() -> tuple[dict[int, int], tuple[int, int]]:
    """With 2 neighbours the graph is a ring: rank 0 trains 4 consecutive clients, rank 1 the rest, and
    the two clients just outside the arc (rank 0's only neighbours on another process) fail."""
    graph = neighbour_graph(CLIENTS, 2, 0, ROUND)
    ring = [CLIENTS[0]]
    while len(ring) < len(CLIENTS):
        ring.append(next(j for j in graph[ring[-1]] if j not in ring))
    arc = set(ring[1:5])
    return {c: 0 if c in arc else 1 for c in CLIENTS}, (ring[0], ring[5])


def exposure_scenarios() -> list[tuple[str, dict, tuple[int, ...]]]:
    _, failed = ring_arc()
    return [
        ("arc_client_masks_only", dict(neighbors=2, deterministic_keys=True, process_masks=False), failed),
        ("arc_process_masks", dict(neighbors=2, deterministic_keys=True), failed),
    ]


def run_scenarios(rank: int, world_size: int, group=None, exposure: bool = False) -> dict[str, dict]:
    ups = updates_for(CLIENTS, NUMEL)
    out = {}
    for name, settings, failed in exposure_scenarios() if exposure else scenarios():
        cfg = SecureAggregation(clip_range=1.0, **settings)
        owner = ring_arc()[0] if exposure else owners(world_size)
        r = SecAggRound(cfg, ROUND, CLIENTS, owner, NUMEL, rank=rank, world_size=world_size, group=group)
        r.setup()
        for c in r.local_clients:
            if c not in failed:
                r.add(c, ups[c], weight=c)
        sent = r.outgoing().clone()
        record = {"sent": sent, "local": r.local_clients, "graph": r.graph, "process_masks": r.process_masks}
        try:
            res = r.finish()
            record.update(sum=res.sum, weight=res.weight, dropped=res.dropped, bound=res.error_bound, bytes=res.bytes_sent)
        except SecureAggregationError as exc:
            record["error"] = str(exc)
        out[name] = record
    return out


def _worker(rank: int, port: int, outdir: str) -> None:
    """Three processes run the world-size-3 round; ranks 0 and 1 then run the world-size-2 round in a
    subgroup (one spawn for both: starting processes is the slow part)."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=3, timeout=timedelta(seconds=60)
    )
    try:
        pair = dist.new_group([0, 1])
        results = {3: run_scenarios(rank, 3)}
        if rank < 2:
            results[2] = run_scenarios(rank, 2, group=pair)
            results["exposure"] = run_scenarios(rank, 2, group=pair, exposure=True)
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> list[dict]:
    outdir = str(tmp_path_factory.mktemp("secagg"))
    ctx = mp.spawn(_worker, args=(_free_port(), outdir), nprocs=3, join=False)
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank hung")
    return [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=False) for r in range(3)]


@pytest.fixture(scope="module")
def single() -> dict[str, dict]:
    return run_scenarios(0, 1)


@pytest.mark.distributed
@pytest.mark.parametrize("world_size", [2, 3])
def test_processes_send_only_masked_buffers_and_all_get_the_exact_sum(world_size, spawned, single):
    ranks = [r[world_size] for r in spawned[:world_size]]
    ups = updates_for(CLIENTS, NUMEL)
    for name, _settings, failed in scenarios():
        one = single[name]
        if name == "below_threshold":
            assert "error" in one and "threshold=4" in one["error"]
            assert all(r[name].get("error") == one["error"] for r in ranks)  # same error everywhere, no hang
            continue
        survivors = [c for c in CLIENTS if c not in failed]
        plain = sum(ups[c].double() for c in survivors)
        for r in ranks:
            res = r[name]
            assert res["dropped"] == sorted(failed) and res["weight"] == sum(survivors)
            assert torch.equal(res["sum"], one["sum"])  # bit-identical to one process
            assert (res["sum"] - plain).abs().max() <= res["bound"]
        for rank, r in enumerate(ranks):
            rec = r[name]
            assert rec["process_masks"]
            masked = rec["sent"][: NUMEL + 2]
            flags = rec["sent"][NUMEL + 2 :]
            assert flags.tolist() == [int(c in rec["local"] and c not in failed) for c in CLIENTS]
            mine = [c for c in rec["local"] if c not in failed]
            truth = sum(ups[c].double() for c in mine)
            corr = torch.corrcoef(torch.stack([masked[:NUMEL].double(), truth]))[0, 1].item()
            assert abs(corr) < 5 / math.sqrt(NUMEL), (name, rank, corr)
            if name != "none":  # deterministic keys: a fixed outcome, not a 1-in-10^4 flake
                assert uniform_bytes_pvalue(masked) > 1e-4, (name, rank)
                bits = torch.stack([(masked >> b) & 1 for b in range(32)]).double().mean(dim=1)
                assert (bits - 0.5).abs().max() < 5 * 0.5 / math.sqrt(masked.numel())
            # the same test sees this rank's unmasked contribution at once
            plain_codes = sum(torch.round((ups[c].double() + 1.0) * 1e6).to(torch.int64) for c in mine)
            assert uniform_bytes_pvalue(plain_codes) < 1e-10
            # shares leave a rank only for holders on other ranks: 49 bytes per crossing graph edge
            crossing = sum(1 for i in rec["local"] for j in rec["graph"][i] if j not in rec["local"])
            assert rec["bytes"]["shares"] == crossing * SHARE_CIPHERTEXT_BYTES
    # skipping the masks that cancel inside a process changes nothing in the result
    assert torch.equal(ranks[0]["two_failed"]["sum"], ranks[0]["two_failed_every_pair"]["sum"])


@pytest.mark.distributed
def test_process_masks_keep_a_process_hidden_when_its_other_process_neighbours_fail(spawned):
    """Recovery publishes the failed clients' masks. If those were the only masks between rank 0's
    clients and other processes, rank 0's contribution minus the published masks would be its plaintext
    sum: without process masks the round is refused on every rank; with them (the default with several
    clients per process) the contribution stays uniform and the sum is exact."""
    owner, failed = ring_arc()
    ups = updates_for(CLIENTS, NUMEL)
    mine = [c for c in CLIENTS if owner[c] == 0]
    truth = sum(ups[c].double() for c in mine)
    ref = SecAggRound(SecureAggregation(neighbors=2, deterministic_keys=True), ROUND, CLIENTS, [0] * 12, NUMEL)
    ref.setup()  # deterministic keys: the same keys as the spawned ranks, so the same published masks
    published = np.zeros(NUMEL + 2, dtype=np.uint32)
    for u in failed:
        for v in ref.graph[u]:
            if v in mine:  # what v added for its pair with u, now computable by every process
                ref._add_mask_(published, ref._mask_sk[v], ref._mask_pk[u], v, u, 1 if v < u else -1)
    plain = sum(ups[c].double() for c in CLIENTS if c not in failed)
    for name, exposed in (("arc_client_masks_only", True), ("arc_process_masks", False)):
        rec = spawned[0]["exposure"][name]
        assert rec["process_masks"] is not exposed
        if exposed:
            assert all(r["exposure"][name].get("error") == rec["error"] for r in spawned[:2])
            assert "would reveal the partial sum of ranks [0]" in rec["error"]
        else:
            assert (rec["sum"] - plain).abs().max() <= rec["bound"]
        net = rec["sent"][: NUMEL + 2].numpy().astype(np.uint32) - published
        corr = torch.corrcoef(torch.stack([torch.from_numpy(net[:NUMEL].astype(np.float64)), truth]))[0, 1].item()
        if exposed:
            assert uniform_bytes_pvalue(torch.from_numpy(net.astype(np.int64))) < 1e-10 and corr > 0.99
        else:
            assert uniform_bytes_pvalue(torch.from_numpy(net.astype(np.int64))) > 1e-4 and abs(corr) < 5 / math.sqrt(NUMEL)
