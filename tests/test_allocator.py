"""worker_malloc: the job and the estimator tune glibc malloc on their workers, unless told not to."""
from __future__ import annotations

import logging
import platform

import dask.dataframe as dd
import pytest

from pairwise_dask import PairwiseLabeler, allocator, job
from pairwise_dask.allocator import TunedMalloc
from pairwise_dask.config import load_settings

from catalogs import make_catalog

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="mallopt thresholds are glibc's")


def _plugins(client) -> list[bool]:
    return list(client.run(lambda dask_worker: TunedMalloc.name in dask_worker.plugins).values())


def _tuned(client) -> list[bool]:
    return list(client.run(lambda: allocator.tuned).values())


def _unregister(client) -> None:
    """The session's workers, as if no job had run on them yet (the flag, once set, stays)."""
    if any(_plugins(client)):
        client.unregister_worker_plugin(TunedMalloc.name)
    assert not any(_plugins(client))


@glibc
def test_tune_malloc_sets_the_thresholds_here():
    assert allocator.tune_malloc() is True
    assert allocator.tuned


@glibc
def test_the_job_tunes_its_workers(client, tmp_path):
    _unregister(client)
    cat = make_catalog(tmp_path / "data", n=300)
    job.run(load_settings(None, {**cat, "out": str(tmp_path / "out"), "refine": 0}), client=client)
    assert all(_plugins(client)) and all(_tuned(client))


@glibc
def test_the_estimator_tunes_the_active_clients_workers(client, tmp_path):
    _unregister(client)
    cat = make_catalog(tmp_path / "data", n=300)
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    PairwiseLabeler(cat["classes"], views=dict(cat["views"]), refine=0, rotate="none").fit(items)
    assert all(_plugins(client))


def test_worker_malloc_dask_leaves_the_workers_alone(tmp_path):
    """Fresh workers (a plugin, once registered, stays with a cluster): untouched with ``dask``."""
    from distributed import Client, LocalCluster

    cat = make_catalog(tmp_path / "data", n=300)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as c:
        job.run(load_settings(None, {**cat, "out": str(tmp_path / "out"), "refine": 0,
                                     "worker_malloc": "dask"}), client=c)
        assert not any(_plugins(c)) and not any(_tuned(c))
    with pytest.raises(ValueError, match="worker_malloc"):
        PairwiseLabeler(cat["classes"], views=dict(cat["views"]), worker_malloc="off")
