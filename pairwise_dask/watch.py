"""Watching a cluster the job did not start while a run lasts: when every worker has left.

Dask lets tasks wait for workers as long as it takes (an adaptive cluster starts its workers when
tasks arrive). For a scheduled run on a fixed cluster that means a run that never ends once the
last worker is gone. :class:`WorkerWatch` says so when it happens, and with ``worker_wait`` > 0
gives up after that many seconds without a worker: it releases the run's futures, the run stops,
and the job raises :class:`~pairwise_dask.errors.NoWorkersError` instead.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .errors import NoWorkersError, Notice

def _silent(_: str) -> None:
    pass


class WorkerWatch:
    """A thread that counts the scheduler's workers every ``every`` seconds while a run lasts.

    When the count falls to 0 after the run has had workers, it says so through ``echo``; with
    ``seconds`` > 0 and no worker back within that many seconds it releases every future of
    ``client`` made while it watches (those held before it started are left alone), so that
    whatever the run waits on raises. The run then raises :meth:`error`. A scheduler that cannot
    be asked is not counted as no workers: a lost scheduler is the run's own error.
    """

    def __init__(self, client: Any, seconds: float, echo: Callable[[str], None] = _silent, *,
                 every: float = 0.5) -> None:
        self.client, self.seconds, self.echo, self.every = client, seconds, echo, every
        self.gave_up = False
        self.workers_seen = 0
        self._before = set(client.futures)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pairwise-dask-worker-watch", daemon=True)

    def __enter__(self) -> "WorkerWatch":
        self.workers_seen = self._count() or 0
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)  # a question to a lost scheduler may hang: the thread is a daemon

    @property
    def address(self) -> str:
        return self.client.scheduler.address

    def error(self) -> NoWorkersError:
        """What the run raises once the watch has given up."""
        a = self.address
        return NoWorkersError(
            f"every Dask worker left the scheduler at {a} during the run and none joined within "
            f"{self.seconds:g} s ([cluster] worker_wait / --worker-wait); the output folder was left as it was. "
            f"Start workers with `dask worker {a}` and run the same command again (a run starts over), or "
            "set worker_wait = 0 to let a run wait for workers as long as it takes")

    def _count(self) -> int | None:
        # asked of the scheduler directly: Client.scheduler_info() would also replace the client's
        # cached identity, which the run reads its workers from, with this reply (no workers' records)
        try:  # n_workers = 0: the totals only
            info = self.client.sync(self.client.scheduler.identity, n_workers=0)
        except Exception:  # noqa: BLE001 - closing, or the scheduler is gone: not ours to report
            return None
        n = info.get("n_workers")  # (asked for no workers' records, a reply without it says nothing)
        return int(n) if n is not None else None

    def _loop(self) -> None:
        gone_since: float | None = None
        while not self._stop.wait(self.every):
            if self.gave_up:
                self._cancel()  # futures made after the first release (the driver went on)
                continue
            n = self._count()
            if n is None or self._stop.is_set():
                continue
            if n:
                self.workers_seen = max(self.workers_seen, n)
                if gone_since is not None:
                    self.echo(Notice(f"{n} Dask worker(s) joined the scheduler at {self.address}: the run goes on"))
                gone_since = None
                continue
            if not self.workers_seen:
                continue  # none yet (an adaptive cluster scaling up): cluster.wait_for_a_worker said so
            now = time.monotonic()
            if gone_since is None:
                gone_since = now
                wait = (f"the run waits up to {self.seconds:g} s for one to join" if self.seconds else
                        "the tasks wait for workers to join (--worker-wait N gives up after N s)")
                self.echo(Notice(f"Every Dask worker left the scheduler at {self.address}: {wait} "
                                 f"(start them with `dask worker {self.address}`)"))
            elif self.seconds and now - gone_since >= self.seconds:
                self.gave_up = True
                self._cancel()

    def _cancel(self) -> None:
        if not self._stop.is_set():  # never after the run: the futures then are the caller's
            self.client.loop.add_callback(self._release_run_keys)  # futures' states live on its loop

    def _release_run_keys(self) -> None:
        # Released as Client.close releases its keys: each waiter raises FutureCancelledError, and the
        # scheduler forgets the tasks, so a progress bar waiting on them stops too. (Client.cancel would
        # be the public way, but the scheduler's stimulus_cancel asserts on a cancelled key's dependents
        # that no client holds, as the pass's intermediate tasks are, and drops the client's stream.)
        # Keys the caller's client held before the run are not the run's to release. (list():
        # the driver's thread adds futures while this runs on the loop.)
        if self._stop.is_set():
            return
        for key in [k for k in list(self.client.futures) if k not in self._before]:
            self.client._release_key(key)
