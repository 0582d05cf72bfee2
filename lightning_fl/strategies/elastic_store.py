"""A rendezvous store of its own for each torchrun attempt.

torchrun's agent hosts one TCPStore for the whole job and, with ``TORCHELASTIC_USE_AGENT_STORE=True``
(the default since torch 2.5), every worker's ``init_process_group`` uses it under the same key prefix in
every attempt: the agent creates the server once and keeps it across restarts, so the workers of a restarted
attempt find the keys of the attempt that died. Gloo publishes each rank's listening address under a fixed
key (``default_pg/0//cpu//0/<rank>``); a restarted rank that reads its peer's key before the peer has
rewritten it may connect to the dead process's address (refused), or both ranks wait to be connected to
(gloo's listening side has no timeout): the restart fails or hangs. ``TORCHELASTIC_RESTART_COUNT`` is no
safe prefix: each agent counts its own restarts, so on several nodes the counts can differ.

So, as torch does with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, rank 0 hosts a fresh store for the attempt,
and publishes its port with a random token through the agent's store. A stale publication names a server
that is gone (torchrun starts an attempt's workers only after every worker of the last one has exited) or
one without that token, so the other ranks read the key again until they reach the live one.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from datetime import timedelta

import torch.distributed as dist

_KEY = "lightning_fl/attempt_store"
_TOKEN = "lightning_fl/token"
_setups = 0  # fits set up in this process: each gets its own key, consistent across ranks


def agent_store_in_use() -> bool:
    """Whether this process is a torchrun worker told to rendezvous on the agent's long-lived store."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and "MASTER_PORT" in os.environ


def attempt_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """A store that only this attempt's processes have written to (rank 0 hosts it, at ``MASTER_ADDR``)."""
    global _setups
    host, agent_port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    key = f"{_KEY}/{_setups}"
    _setups += 1
    agent = dist.TCPStore(host, agent_port, world_size, is_master=False, timeout=timeout)
    if rank == 0:
        token = secrets.token_hex(16)
        # Port 0: the OS picks a free port; it listens on every interface, like the agent's own server.
        server = dist.TCPStore(host, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        server.set(_TOKEN, token)
        agent.set(key, f"{server.port} {token}")
        return server
    start = time.monotonic()
    while True:
        port, token = agent.get(key).decode().split()  # waits until some attempt has published
        try:
            # A stale key names a server that is gone: the connection is refused at once (a TCPStore client
            # would retry until its timeout). A live server of another attempt, or no store at all, fails
            # the token check. 2 s is ample for a live one; only after 20 s of failures is it given 10 s (a
            # slow network), since a long probe of a stale key also delays reaching the rewritten one.
            probe = 2.0 if time.monotonic() - start < 20 else 10.0
            socket.create_connection((host, int(port)), timeout=probe).close()
            client = dist.TCPStore(host, int(port), world_size, is_master=False, timeout=timedelta(seconds=probe))
            if client.get(_TOKEN).decode() == token:
                client.set_timeout(timeout)
                return client
        except (OSError, RuntimeError):  # refused or timed out; DistNetworkError and DistStoreError
            pass
        if time.monotonic() - start > timeout.total_seconds():
            raise TimeoutError(f"rank {rank}: rank 0 published no live store under {key!r} within {timeout}")
        time.sleep(0.05)
