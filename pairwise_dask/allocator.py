"""The workers' memory allocator: glibc thresholds that let NumPy's temporaries be reused.

Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (to hand freed memory back
to the OS). Setting any such threshold turns off glibc's *dynamic* mmap threshold, so from then on
every allocation over 128 KiB is a fresh ``mmap``: each temporary array of the statistics step, the
mask fit and the tourney (a few hundred KiB to tens of MiB) is page-faulted in and unmapped again,
every time. Measured on the 2-core benchmark machine: the mask fit of 56,000 pairs took 2.0 s in
a worker against 0.93 s in a plain process, and 1.2 s once the thresholds below were set; the 1M ×
768 × 2-view job went from 18.0 to 16.5 s, the k = 1,000 one from 53 to 37 s.

:func:`tune_malloc` raises the mmap and trim thresholds to :data:`THRESHOLD` in the calling
process: arrays below it come from the heap and are reused; larger ones (partition blocks) are
still mapped and returned on free, and at most :data:`THRESHOLD` of free heap is kept per arena.
:class:`TunedMalloc` applies it to every worker of a cluster, present and future. Elsewhere than
glibc (macOS, musl) it does nothing.

The price is free memory kept in the heap: the trim threshold only returns the free *top* of an
arena, and a fragmented heap keeps its free chunks below it. On a small worker this memory is
*unmanaged* to Dask, and counts in the process memory that Dask pauses a worker at (80 % of its
limit). A paused worker runs nothing, so nothing frees or reuses that memory, and Dask's only remedy
while paused is ``gc.collect``: 2 workers of 800 MB on a 300k × 384 × 2 catalog hung for ever, a
worker paused at 649 MiB with 75 MiB managed and 100 MiB free in its heap, until ``malloc_trim(0)``
returned 93 MiB and it resumed. (The rest of such a worker's unmanaged memory, 290–380 MiB, was
pages pyarrow's mimalloc pool kept after the reads, with no Arrow buffer allocated: those it
purges only on later allocations, which a paused worker does not make.) So on a worker with a
memory limit the plugin also runs :func:`trim_if_high` every :data:`TRIM_INTERVAL` seconds, beside
Dask's own memory monitor: while the worker is paused or its process memory is above the first of
Dask's spill/pause fractions of its limit, ``malloc_trim(0)`` hands every free heap page back to
the OS (about 10 ms; 0.1 s when it returns 600 MiB of a fragmented heap) and Arrow's pool releases
its unused pages. Below that, as on any worker sized for its data, nothing changes and the
speed-up stays.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

from distributed import WorkerPlugin
from distributed.core import Status

#: mallopt(3) parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Allocations below this come from the heap; also the free heap top kept before trimming. glibc
#: caps the mmap threshold at 32 MiB on 64-bit systems.
THRESHOLD = 32 << 20

#: whether :func:`tune_malloc` has set the thresholds in this process
tuned = False

#: seconds between two :func:`trim_if_high` checks on a worker (Dask's monitor runs every 0.1 s)
TRIM_INTERVAL = 0.5
#: name of that periodic callback in ``worker.periodic_callbacks``
TRIM_CALLBACK = "pairwise-dask-trim"


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def tune_malloc(threshold: int = THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds of this process to ``threshold`` bytes; ``False``
    (and nothing changed) where the C library is not glibc."""
    global tuned
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = _libc().mallopt
    except (OSError, AttributeError):
        return False
    # glibc returns 1 on success; musl's mallopt is a stub that returns 0
    tuned = bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
    return tuned


def malloc_trim() -> bool:
    """glibc's ``malloc_trim(0)``: every free page of every arena back to the OS; ``True`` if
    some memory was returned, ``False`` then and where there is no glibc."""
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False


def trim_limit(worker: Any) -> int | None:
    """Process memory above which :func:`trim_if_high` trims on ``worker``: the first of Dask's
    spill and pause fractions (then target) times its memory limit; ``None`` without a limit."""
    mm = getattr(worker, "memory_manager", None)
    limit = getattr(mm, "memory_limit", None)
    if not limit:
        return None
    fractions = [f for f in (getattr(mm, "memory_spill_fraction", False),
                             getattr(mm, "memory_pause_fraction", False),
                             getattr(mm, "memory_target_fraction", False)) if f]
    return int(min(fractions) * limit) if fractions else None


def release_arrow() -> None:
    """Pages Arrow's memory pool keeps after its buffers are freed, back to the OS (pyarrow's
    mimalloc purges them only on later allocations; a worker paused after a read makes none)."""
    pa = sys.modules.get("pyarrow")  # never imported for this
    if pa is not None:
        pa.default_memory_pool().release_unused()


def trim_if_high(worker: Any) -> bool:
    """``malloc_trim(0)`` and :func:`release_arrow` if ``worker`` is paused or its process memory
    is above :func:`trim_limit`: the freed memory the allocators keep can then never hold a worker
    paused. Returns whether it trimmed."""
    limit = trim_limit(worker)
    if limit is None:
        return False
    if worker.status != Status.paused and worker.monitor.get_process_memory() <= limit:
        return False
    malloc_trim()
    release_arrow()
    return True


class TunedMalloc(WorkerPlugin):
    """A worker plugin: :func:`tune_malloc` on every worker, including those that join later;
    on a worker with a memory limit also :func:`trim_if_high` every :data:`TRIM_INTERVAL` s."""

    name = "pairwise-dask-malloc"

    def setup(self, worker: Any) -> None:
        if not tune_malloc() or trim_limit(worker) is None:
            return
        from tornado.ioloop import PeriodicCallback

        old = worker.periodic_callbacks.pop(TRIM_CALLBACK, None)
        if old is not None:
            old.stop()
        pc = PeriodicCallback(lambda: trim_if_high(worker), TRIM_INTERVAL * 1000)
        worker.periodic_callbacks[TRIM_CALLBACK] = pc
        pc.start()

    def teardown(self, worker: Any) -> None:
        """Stops the trimming (the thresholds stay: they cannot be told from glibc's defaults)."""
        pc = worker.periodic_callbacks.pop(TRIM_CALLBACK, None)
        if pc is not None:
            pc.stop()


def tune_workers(client: Any) -> None:
    """Register :class:`TunedMalloc` with ``client``'s cluster (idempotent: one plugin by name)."""
    client.register_plugin(TunedMalloc(), name=TunedMalloc.name)
