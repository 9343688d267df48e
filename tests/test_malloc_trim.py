"""The tuned allocator cannot hold a worker paused: a real `dask worker` with a memory limit whose
heap keeps freed memory (the tuned thresholds) is trimmed back below Dask's spill level and resumes.

Without the trimming callback (pairwise_dask.allocator.trim_if_high) the worker of this test stays
paused with a few hundred MiB of free heap for ever, as a worker of the 800 MB repro did."""
from __future__ import annotations

import platform
import time
from pathlib import Path

import pytest

from test_cluster import _started_cluster

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                 reason="mallopt thresholds and malloc_trim are glibc's")]

LIMIT = 1 << 30  # the worker's memory limit: spill (trim) at 70 %, pause at 80 %


def test_a_paused_worker_with_a_tuned_heap_is_trimmed_and_resumes(tmp_path: Path) -> None:
    from distributed import Client

    from pairwise_dask.allocator import TunedMalloc, tune_workers

    # defined here, not at module level: tests/ is not importable on the worker, and cloudpickle
    # sends local functions by value
    def _rss(dask_worker) -> tuple[int, str]:
        return dask_worker.monitor.get_process_memory(), dask_worker.status.name

    def _fragment_heap(extra: int) -> int:
        """In a worker thread: ``extra`` bytes of 1 MiB arrays, each followed by a small array that
        is kept, then the large ones freed. Below the tuned 32 MiB mmap threshold they came from the
        heap, and the kept small ones pin their free chunks below its top: no trim threshold returns
        them. Returns glibc's free heap bytes (``mallinfo2().fordblks``; a trim leaves it as is)."""
        import ctypes

        import numpy as np
        from distributed import get_worker

        class Mallinfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                       "usmblks", "fsmblks", "uordblks", "fordblks",
                                                       "keepcost")]

        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        mallinfo2.restype = Mallinfo2
        big, small = [], []
        for _ in range(extra >> 20):
            big.append(np.ones((1 << 20) // 8))
            small.append(np.ones(2048))
        del big
        get_worker()._test_heap_pins = small  # they outlive the task, as a worker's long-lived objects do
        return mallinfo2().fordblks

    # no nanny: its 95 % kill would end the test's worker instead of leaving it paused
    with _started_cluster(tmp_path, nanny=False, workers=1, memory_limit=str(LIMIT)) as address:
        with Client(address, timeout="30s") as c:
            tune_workers(c)
            assert all(c.run(lambda dask_worker: TunedMalloc.name in dask_worker.plugins).values())
            (rss0, _), = c.run(_rss).values()
            # up to 0.85 of the limit: above Dask's pause fraction (0.8) once freed, below 95 %
            extra = int(0.85 * LIMIT) - rss0
            free = c.submit(_fragment_heap, extra, pure=False).result(timeout=60)
            assert free > 0.8 * extra, "the freed arrays left the heap anyway: nothing to test here"
            deadline = time.time() + 10
            while time.time() < deadline:
                (rss, status), = c.run(_rss).values()
                if rss < 0.7 * LIMIT and status == "running":
                    break
                time.sleep(0.25)
            assert rss < 0.7 * LIMIT and status == "running", (
                f"worker still at {rss >> 20} MiB ({status}) of {LIMIT >> 20} MiB, "
                f"{free >> 20} MiB free in its heap")
            # and it runs tasks again
            assert c.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
