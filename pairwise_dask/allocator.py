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
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

from distributed import WorkerPlugin

#: mallopt(3) parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Allocations below this come from the heap; also the free heap top kept before trimming. glibc
#: caps the mmap threshold at 32 MiB on 64-bit systems.
THRESHOLD = 32 << 20

#: whether :func:`tune_malloc` has set the thresholds in this process
tuned = False


def tune_malloc(threshold: int = THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds of this process to ``threshold`` bytes; ``False``
    (and nothing changed) where the C library is not glibc."""
    global tuned
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # glibc returns 1 on success; musl's mallopt is a stub that returns 0
    tuned = bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
    return tuned


class TunedMalloc(WorkerPlugin):
    """A worker plugin: :func:`tune_malloc` on every worker, including those that join later."""

    name = "pairwise-dask-malloc"

    def setup(self, worker: Any) -> None:
        tune_malloc()


def tune_workers(client: Any) -> None:
    """Register :class:`TunedMalloc` with ``client``'s cluster (idempotent: one plugin by name)."""
    client.register_plugin(TunedMalloc(), name=TunedMalloc.name)
