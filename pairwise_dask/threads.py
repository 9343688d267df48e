"""The workers' BLAS threads: one per worker process, so that products round alike on every cluster.

A product's float rounding can depend on how many threads BLAS splits it over. Dask's nanny starts
every worker with ``OMP_NUM_THREADS=1`` (and the OpenBLAS and MKL equivalents), so a LocalCluster's
workers and ``dask worker``'s run BLAS on one thread; ``dask worker --no-nanny`` leaves BLAS on all
cores, and a sweep found such a cluster's ``model/rotation.parquet`` and margins differing in their
last bits from a LocalCluster's. :class:`OneThreadBLAS` sets BLAS to one thread in every worker
process, present and future, through ``threadpoolctl`` (setting the variables after BLAS is loaded
does nothing). Workers inside the caller's own process (``Client(processes=False)``) are left
alone, since the limit would outlive the job there; :func:`one_thread` covers them, and the
driver's own products, while a run lasts.
"""
from __future__ import annotations

import contextlib
import uuid
from typing import Any, Iterator

from distributed import WorkerPlugin

#: this process's token: a plugin set up in the process that registered it is not in a worker process
PROCESS = uuid.uuid4().hex


def one_thread_blas() -> None:
    """Limit every BLAS and OpenMP pool loaded in this process to one thread, for its lifetime."""
    import numpy  # noqa: F401 - threadpoolctl limits only the libraries loaded: NumPy's BLAS first
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # not as a context: the limit stays until the process ends


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """BLAS on one thread in this process while the block runs, then as it was: the driver's own
    products (the prompts' rotation, an estimator's basis) and tasks that workers inside this
    process run must round as a one-thread worker's do."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def blas_threads() -> int:
    """The threads NumPy's BLAS (the one of the job's products) may use in this process.

    Other BLAS libraries loaded later (SciPy's, when pandas or Dask import it) keep their own
    setting and do not matter here. NumPy's is told apart by its path (the wheel's ``numpy.libs``);
    where that does not tell, the most threads of any pool."""
    import os

    import numpy
    from threadpoolctl import threadpool_info

    pools = threadpool_info()
    home = os.path.dirname(os.path.abspath(numpy.__file__))
    own = [p for p in pools if os.path.abspath(p.get("filepath") or "").startswith((home + os.sep, home + ".libs"))]
    return max([1] + [int(p.get("num_threads") or 1) for p in own or pools])


class OneThreadBLAS(WorkerPlugin):
    """A worker plugin: :func:`one_thread_blas` in every worker process but the registering one."""

    name = "pairwise-dask-one-thread-blas"

    def __init__(self) -> None:
        self.process = PROCESS

    def setup(self, worker: Any) -> None:
        if self.process != PROCESS:  # a worker process of its own (else the caller's: leave it be)
            one_thread_blas()


def pin_workers(client: Any) -> None:
    """Register :class:`OneThreadBLAS` with ``client``'s cluster (idempotent: one plugin by name)."""
    client.register_plugin(OneThreadBLAS(), name=OneThreadBLAS.name)
