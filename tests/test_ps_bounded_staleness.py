"""Issue 4, bounded-staleness mode: SSP bookkeeping against its definition, and two real processes."""

import os
import subprocess
import sys

import pytest
import torch

from fl_testing import launch_env
from lightning_fl import FederatedConfigError, ParameterServerStrategy
from lightning_fl.parameter_server.staleness import ClockBook, Push, combine, needed_version, staleness_weight

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "run_ps_ssp.py")
STALENESS = 2  # the bound the slow-worker run uses


# ---------------------------------------------------------------- bookkeeping (pure)
def _push(worker, clock, read_version, value=1.0):
    return Push(worker, clock, read_version, torch.full((3,), float(value)))


def test_an_update_waits_for_every_worker_of_its_clock():
    book = ClockBook(num_workers=2, staleness=1)
    book.add(_push(0, 0, 0, 1.0))
    book.add(_push(0, 1, 0, 5.0))  # worker 0 runs one step ahead
    assert book.pop_complete() is None  # clock 0 still lacks worker 1
    book.add(_push(1, 0, 0, 3.0))
    pushes = book.pop_complete()
    assert [p.worker for p in pushes] == [0, 1]
    assert torch.equal(combine(pushes, scale_stale=False), torch.full((3,), 2.0))
    book.advance()
    assert book.version == 1 and book.pop_complete() is None  # clock 1 lacks worker 1
    assert book.applied_staleness == {0: 2}


def test_a_push_staler_than_the_bound_is_refused_not_applied():
    book = ClockBook(num_workers=2, staleness=1)
    with pytest.raises(RuntimeError, match="staleness 2 outside"):
        book.add(_push(0, 2, 0))
    with pytest.raises(RuntimeError, match="twice"):
        book.add(_push(0, 0, 0))
        book.add(_push(0, 0, 0))


def test_workers_are_answered_once_their_version_exists():
    book = ClockBook(num_workers=2, staleness=1)
    book.wait(0, needed_version(0, staleness=1, final=False))  # version 0: at once
    book.wait(1, needed_version(0, staleness=1, final=True))  # version 1: after update 0
    assert book.due() == [0] and book.has_waiting()
    book.add(_push(0, 0, 0))
    book.add(_push(1, 0, 0))
    book.pop_complete()
    book.advance()
    assert book.due() == [1] and not book.has_waiting()


def test_needed_version_is_ssp_bound():
    # Before step c + 1 a worker needs every update up to clock c + 1 - s - 1.
    assert [needed_version(c, 3, final=False) for c in range(6)] == [0, 0, 0, 1, 2, 3]
    assert [needed_version(c, 0, final=False) for c in range(3)] == [1, 2, 3]  # s = 0: synchronous
    assert needed_version(4, 3, final=True) == 5


def test_stale_gradients_are_weighted_by_one_over_staleness():
    assert [staleness_weight(t) for t in range(5)] == [1.0, 1.0, 0.5, 1 / 3, 0.25]
    pushes = [_push(0, 4, 4, 2.0), _push(1, 4, 1, 6.0)]  # staleness 0 and 3
    assert torch.allclose(combine(pushes, scale_stale=True), torch.full((3,), (2.0 + 6.0 / 3) / 2))
    assert torch.allclose(combine(pushes, scale_stale=False), torch.full((3,), 4.0))


# ---------------------------------------------------------------- the serving loop, without the network
def _server_loop(world_size=2, version=5):
    import threading

    from lightning_fl.strategies.ssp_server import BucketServer

    applied = []

    def apply(grad):
        applied.append(grad.clone())
        return grad.clone()

    server = BucketServer(
        rank=0, world_size=world_size, book=ClockBook(world_size, 1, version=version), params=torch.zeros(3),
        apply=apply, scale_stale=False, push_group=None, reply_group=None, timeout=10,
    )  # fmt: skip
    replies = []
    server._reply = lambda worker: replies.append((worker, server.book.version))  # instead of a gloo send
    thread = threading.Thread(target=server._serve, daemon=True)
    thread.start()
    return server, thread, replies, applied


def _message(clock, read_version, needed, flags, value=0.0):
    from lightning_fl.strategies.ssp_server import encode_header

    return torch.cat([encode_header(clock, read_version, needed, flags), torch.full((3,), value)])


def test_the_server_applies_a_clock_once_complete_and_answers_at_the_ssp_bound():
    from lightning_fl.strategies.ssp_server import GRAD, STOP

    server, thread, replies, applied = _server_loop()
    server.inbox.put((0, _message(5, 5, needed_version(5, 1, False), GRAD, 2.0)))
    _wait_for(lambda: replies == [(0, 5)])  # s = 1: version 5 is recent enough, answered before any update
    server.inbox.put((1, _message(5, 5, needed_version(5, 1, False), GRAD, 4.0)))
    _wait_for(lambda: len(replies) == 2)
    assert replies[1] == (1, 6) and torch.equal(applied[0], torch.full((3,), 3.0))  # the mean, one update
    for worker in (0, 1):
        server.inbox.put((worker, _message(6, 6, 6, STOP)))
    thread.join(10)
    assert not thread.is_alive() and server.error is None


def test_a_stopped_worker_is_answered_only_once_every_worker_has_stopped():
    from lightning_fl.strategies.ssp_server import STOP

    server, thread, replies, _ = _server_loop()
    server.inbox.put((0, _message(5, 5, 5, STOP)))  # worker 0 flushes (validation) at step 5
    thread.join(0.3)
    assert replies == []  # held: the server has not yet read worker 1's last message of the epoch
    server.inbox.put((1, _message(5, 5, 5, STOP)))
    thread.join(10)
    assert sorted(replies) == [(0, 5), (1, 5)] and not thread.is_alive()


def test_workers_stopping_at_different_steps_is_an_error_not_a_hang():
    from lightning_fl.strategies.ssp_server import GRAD, STOP

    server, thread, replies, _ = _server_loop()
    server.inbox.put((0, _message(5, 5, 5, STOP)))
    server.inbox.put((1, _message(5, 5, 6, GRAD | STOP)))  # worker 1 stops after one more step
    thread.join(10)
    assert "workers stopped at different steps {0: 5, 1: 6}" in str(server.error)
    assert isinstance(server.local_replies.get(timeout=1), RuntimeError)  # the local worker is told


def _wait_for(condition, seconds=10.0):
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_bad_staleness_setting_is_a_one_line_error(value):
    with pytest.raises(FederatedConfigError, match="staleness must be"):
        ParameterServerStrategy(staleness=value)


def test_one_process_with_staleness_equals_the_synchronous_mode():
    # One worker is never stale: the server thread and its queues must reproduce the synchronous steps.
    import lightning as L

    from fl_testing import AdamModule, TinyData

    states = []
    for staleness in (None, 2):
        torch.manual_seed(1)
        module = AdamModule()
        trainer = L.Trainer(
            strategy=ParameterServerStrategy(staleness=staleness), accelerator="cpu", devices=1, max_epochs=2,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        trainer.fit(module, TinyData(batch_size=16))
        states.append({k: v.detach().clone() for k, v in module.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert trainer.strategy.staleness_counts == {0: trainer.global_step}


# ---------------------------------------------------------------- two processes
@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ssp") / "results.pt"
    env = launch_env()
    proc = subprocess.run([sys.executable, SCRIPT, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=False)


def _diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.distributed
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_staleness_zero_equals_the_synchronous_mode(results, optimizer):
    assert _diff(results[f"{optimizer}-None"], results[f"{optimizer}-0"]) <= 1e-6


@pytest.mark.distributed
def test_no_gradient_older_than_the_bound_is_applied_with_a_slow_worker(results):
    slow = results["slow"]
    steps = slow["global_step"]
    # Worker side, recorded by a callback just before each push: step c's gradient came from version v of
    # each bucket, so it is c - v updates old when applied.
    staleness = [[c - v for c, versions in slow["read_versions"][rank] for v in versions] for rank in (0, 1)]
    assert max(max(s) for s in staleness) <= STALENESS
    assert max(staleness[0]) == STALENESS  # the fast worker really ran ahead, as far as allowed
    # Server side: the staleness of every gradient each bucket applied.
    for counts in slow["staleness_counts"]:
        assert max(counts) <= STALENESS and counts.get(STALENESS, 0) > 0
        assert sum(counts.values()) == 2 * steps  # every gradient of both workers was applied, once
    assert slow["logged_staleness_max"] == STALENESS


@pytest.mark.distributed
def test_the_fast_worker_never_runs_more_than_staleness_steps_ahead(results):
    # From wall-clock times alone: fast rank 0 may start step c only after slow rank 1 pushed step c - s - 1.
    starts = dict(results["slow"]["starts"][0])
    pushes = dict(results["slow"]["pushes"][1])
    checked = 0
    for c, t in starts.items():
        if c - STALENESS - 1 in pushes:
            assert t >= pushes[c - STALENESS - 1]
            checked += 1
    assert checked >= 10
    # ... and it did use its lead: some step started before rank 1 had pushed the previous step.
    assert any(c - 1 in pushes and t < pushes[c - 1] for c, t in starts.items())


@pytest.mark.distributed
def test_every_rank_holds_the_whole_model_after_fit_and_it_learned(results):
    final = results["slow"]["final"]
    assert _diff(final[0], final[1]) == 0.0
    assert results["slow"]["val_acc"] > 0.9


@pytest.mark.distributed
def test_a_mid_epoch_checkpoint_holds_every_update(results):
    checkpoint = torch.load(results["ckpt"]["path"], weights_only=False)["state_dict"]
    for rank_state in results["ckpt"]["states_at_6"]:
        assert _diff(rank_state, {k: checkpoint[k] for k in rank_state}) == 0.0


@pytest.mark.distributed
@pytest.mark.parametrize(("staleness", "failure"), [(2, "exception"), (2, "sigkill"), (None, "sigkill")])
def test_a_failed_worker_and_server_ends_the_job_with_a_clear_error(tmp_path, staleness, failure):
    import json
    import time

    # Rank 1 is a worker and the server of bucket 1; it fails in the middle of its second epoch.
    # (The synchronous mode with an exception: tests/test_parameter_server.py.)
    options = {"parameter_server": {"staleness": staleness, "timeout": 30}, "rounds": 3}
    options.update({"module": {"crash_on_rank": 1}} if failure == "exception" else {"kill_rank": 1})
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "run_fedavg.py")
    env = launch_env()
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, script, str(tmp_path / "out.pt"), "2", "{}", json.dumps(options)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode != 0
    expected = {
        "exception": "simulated client crash on rank 1",
        "sigkill": "no reply from the parameter server on rank 1" if staleness is not None else "parameter server push",
    }[failure]
    assert expected in proc.stderr, proc.stderr[-3000:]
    # ... as one line written when the error happens, before any cleanup: Lightning's launcher kills the
    # surviving processes about 5 s after one dies, which can be before a traceback gets printed.
    assert any(line.startswith("[rank ") and "lightning_fl:" in line and expected in line
               for line in proc.stderr.splitlines()), proc.stderr[-3000:]  # fmt: skip
    assert time.monotonic() - start < 90  # the 30 s timeout at most, plus start-up; never a hang


@pytest.mark.distributed
def test_three_workers_with_validation_inside_epochs(tmp_path):
    # Three workers make a server hear the workers' stops one by one; validation twice per epoch makes
    # them stop (flush) while training is under way. staleness=0 must still equal the synchronous mode.
    from fl_testing import run_script

    base = {"module": {"batchnorm": False}, "rounds": 2, "trainer": {"val_check_interval": 0.5}}
    runs = {
        s: run_script(tmp_path, 3, {}, {**base, "parameter_server": {"staleness": s, "timeout": 60}})
        for s in (None, 0, 2)
    }
    assert _diff(runs[None]["state"], runs[0]["state"]) <= 1e-6
    for result in runs.values():
        assert result["rank_spread"] == 0.0  # every rank holds the same, complete model
        assert result["metrics"]["val_acc"] > 0.9
