"""Shared fixtures: a real multi-process LocalCluster, a small catalog on disk."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from catalogs import make_catalog


@pytest.fixture(scope="session")
def client():
    """Two worker processes, one thread each: the real engine, shared by the tests of a session."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture
def catalog(tmp_path: Path) -> dict:
    return make_catalog(tmp_path / "data")
