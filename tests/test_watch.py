"""WorkerWatch on a real (in-process) Dask cluster whose workers are closed and started again.

The whole run, with a ``dask worker`` SIGKILLed mid-run, is in ``test_faults.py``; these check the
watch's own promises quickly: what it says, that 0 never gives up, that it releases only the
futures made while it watched, and that the waiter raises.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import pytest
from distributed import Client, LocalCluster
from distributed.client import FutureCancelledError

from pairwise_dask.errors import NoWorkersError
from pairwise_dask.watch import WorkerWatch

TIMEOUT = 60  # a bound on a hang, not a speed check


def _until(cond: Callable[[], Any], what: str) -> None:
    end = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def cluster() -> Any:
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as c:
        yield lc, c


def test_all_workers_gone_then_one_back_is_said_and_zero_never_gives_up(cluster: Any) -> None:
    lc, c = cluster
    said: list[str] = []
    with WorkerWatch(c, 0, said.append, every=0.05) as w:
        fut = c.submit(lambda: 1)
        assert fut.result(timeout=TIMEOUT) == 1
        lc.scale(0)
        _until(lambda: any("Every Dask worker left" in m for m in said), "the watch to say so")
        assert "the tasks wait for workers to join" in said[-1], said
        late = c.submit(lambda: 2, pure=False)
        time.sleep(0.5)  # far beyond `every`: a watch with 0 seconds must not give up
        lc.scale(1)
        assert late.result(timeout=TIMEOUT) == 2
        _until(lambda: any("joined the scheduler" in m for m in said), "the watch to see the new worker")
    assert not w.gave_up


def test_gives_up_after_its_seconds_and_releases_only_the_runs_futures(cluster: Any) -> None:
    lc, c = cluster
    before = c.submit(lambda: "the caller's", pure=False)
    assert before.result(timeout=TIMEOUT) == "the caller's"
    said: list[str] = []
    with WorkerWatch(c, 0.3, said.append, every=0.05) as w:
        lc.scale(0)
        _until(lambda: not c.scheduler_info(n_workers=0)["n_workers"], "the workers to leave")
        waiting = c.submit(lambda: 3, pure=False)
        with pytest.raises(FutureCancelledError):
            waiting.result(timeout=TIMEOUT)
        assert w.gave_up
        made_later = c.submit(lambda: 4, pure=False)  # a driver that went on is stopped too
        with pytest.raises(FutureCancelledError):
            made_later.result(timeout=TIMEOUT)
    assert "the run waits up to 0.3 s" in said[0], said
    assert not before.cancelled() and before.key in c.futures
    err = w.error()
    assert isinstance(err, NoWorkersError)
    assert f"scheduler at {c.scheduler.address}" in str(err) and "within 0.3 s" in str(err)


def test_a_progress_bar_over_released_futures_does_not_hold_the_run(cluster: Any) -> None:
    """A bar set up after its futures were released (the watch gives up by releasing them) waits
    on the scheduler for ever: it used to be drawn in the thread that waits, and the run hung
    there. Now the wait is the future's own, and it raises."""
    import threading

    from dask import delayed

    from pairwise_dask import steps

    lc, c = cluster
    real = c.compute

    def released_at_once(task: Any, **kw: Any) -> Any:
        fut = real(task, **kw)
        c._release_key(fut.key)  # as WorkerWatch does, before the bar can see the key
        return fut

    c.compute = released_at_once  # type: ignore[method-assign]
    raised: list[BaseException] = []

    def waits() -> None:
        try:
            steps._compute(c, delayed(sum, pure=False)([1, 2]), "a pass", True)
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            raised.append(e)

    t = threading.Thread(target=waits, daemon=True)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive(), "the wait hung in its progress bar"
    assert raised and isinstance(raised[0], FutureCancelledError), raised
