"""A real cluster started from the command line: `dask scheduler` + two `dask worker` on loopback."""
from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from catalogs import DEMO_JOB, REPO

pytestmark = pytest.mark.cluster


def _dask_cli() -> list[str]:
    exe = shutil.which("dask")
    return [exe] if exe else [sys.executable, "-m", "dask"]


@pytest.fixture
def cli_cluster(tmp_path):
    """Scheduler and two single-threaded workers as separate OS processes; always torn down."""
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([*_dask_cli(), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), "scheduler did not start"
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([*_dask_cli(), "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                           "--no-dashboard", "--memory-limit", "2GiB"],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def test_cli_run_against_command_line_cluster(cli_cluster, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "pairwise_dask.cli", "run", str(DEMO_JOB), "--out", str(out),
                        "--scheduler", cli_cluster, "--partition-rows", "400"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cluster"] == {"scheduler": cli_cluster, "workers": 2, "workers_at_end": 2}
    assert "done in" in r.stdout and "Dask dashboard" in r.stdout
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        from distributed import Client

        with Client(cli_cluster, timeout="30s") as c:  # the job's malloc plugin stays on `dask worker`s
            tuned = c.run(lambda: importlib.import_module("pairwise_dask.allocator").tuned)
        assert len(tuned) == 2 and all(tuned.values())
    # same labels as the default LocalCluster run
    local = tmp_path / "local"
    r = subprocess.run([sys.executable, "-m", "pairwise_dask.cli", "run", str(DEMO_JOB), "--out", str(local),
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((local / "summary.json").read_text())["cluster"]["scheduler"] == "LocalCluster"
    assert pq.read_table(out / "labels").equals(pq.read_table(local / "labels"))


def test_a_given_client_is_named_in_the_summary_and_report(tmp_path: Path, client) -> None:
    """``run(settings, client=c)`` runs on the caller's cluster: the summary and the report name
    that scheduler (they said "LocalCluster"), and the workers at the start and at the end."""
    from fixtures import make_catalog
    from pairwise_dask import job

    cat = make_catalog(tmp_path / "data")
    summary = job.run(cat.settings(tmp_path / "out"), client=client)
    address = client.scheduler.address
    assert summary["cluster"] == {"scheduler": address, "workers": 2, "workers_at_end": 2}
    assert f"cluster: {address}, 2 workers" in (tmp_path / "out" / "report.html").read_text()


def test_workers_without_a_one_thread_blas_setting_get_a_warning(monkeypatch) -> None:
    """`dask worker --no-nanny` leaves BLAS on several threads (a nanny sets OMP_NUM_THREADS=1 and
    the like): products can then round otherwise than on one-thread workers, and a sweep found
    outputs that differed in their last bits from a LocalCluster's. The run says so."""
    from distributed import Client, LocalCluster

    from pairwise_dask.cluster import warn_threaded_blas

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    said: list[str] = []
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as lc, Client(lc) as c:
        warn_threaded_blas(c, said.append)  # in-process workers: this process's environment
        assert len(said) == 1 and "OMP_NUM_THREADS=1" in said[0] and "1 of 1 Dask workers" in said[0]
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
        warn_threaded_blas(c, said.append)
        assert len(said) == 1
