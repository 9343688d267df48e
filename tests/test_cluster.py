"""A real cluster started from the command line: `dask scheduler` + two `dask worker` on loopback."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest

from catalogs import DEMO_JOB, REPO
from fixtures import scheduler_address

pytestmark = pytest.mark.cluster


def _dask_cli() -> list[str]:
    exe = shutil.which("dask")
    return [exe] if exe else [sys.executable, "-m", "dask"]


@contextlib.contextmanager
def _started_cluster(tmp_path: Path, *, nanny: bool = True, env: dict | None = None, workers: int = 2,
                     memory_limit: str = "2GiB") -> Iterator[str]:
    """Scheduler and single-threaded workers as separate OS processes; always torn down."""
    sched_file = tmp_path / "scheduler.json"
    env = {**(os.environ if env is None else env),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([*_dask_cli(), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        address = scheduler_address(sched_file)
        for i in range(workers):
            with open(tmp_path / f"worker-{i}.log", "wb") as log:  # read when a test fails
                procs.append(subprocess.Popen([*_dask_cli(), "worker", address, "--nthreads", "1", "--host",
                                               "127.0.0.1", "--no-dashboard", "--memory-limit", memory_limit,
                                               *([] if nanny else ["--no-nanny"])],
                                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            try:
                # SIGKILL for --no-nanny workers: without a nanny a worker whose scheduler is gone
                # keeps trying to reconnect and ignores SIGTERM for a long while
                os.killpg(p.pid, signal.SIGTERM if nanny else signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture
def cli_cluster(tmp_path: Path) -> Iterator[str]:
    with _started_cluster(tmp_path) as address:
        yield address


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


def test_no_nanny_workers_run_blas_on_one_thread_and_give_a_local_clusters_bytes(tmp_path: Path) -> None:
    """`dask worker --no-nanny` leaves BLAS on every core (a nanny sets OMP_NUM_THREADS=1 and the
    like), and products then round otherwise: on the demo data such a cluster's model had other
    mask dims, moments and rotation than a LocalCluster's. The job sets one thread on every worker
    process (threadpoolctl), so the outputs are the same bytes."""
    from distributed import Client

    from pairwise_dask.cluster import _by_value
    from pairwise_dask.threads import OneThreadBLAS, blas_threads

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                             "MKL_NUM_THREADS")}
    data = REPO / "jobs" / "demo-data"
    args = ["--items", str(data / "items.parquet"), "--classes", str(data / "classes.parquet"),
            "--views", "a=emb_a,b=emb_b", "--label", "label", "--partition-rows", "400", "--quiet"]
    with _started_cluster(tmp_path, nanny=False, env=env) as address:
        with Client(address, timeout="30s") as c:
            before = c.run(blas_threads)
        r = subprocess.run([sys.executable, "-m", "pairwise_dask.cli", "run", *args, "--out", str(tmp_path / "remote"),
                            "--scheduler", address], capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr
        assert "warning" not in r.stdout, r.stdout
        with Client(address, timeout="30s") as c:
            after = c.run(blas_threads)
            plugins = c.run(_by_value(lambda dask_worker: list(dask_worker.plugins)))
    assert all(OneThreadBLAS.name in p for p in plugins.values()), plugins
    if (os.cpu_count() or 1) > 1:  # else BLAS has one thread anyway and there was nothing to change
        assert all(n > 1 for n in before.values()), before
    assert set(after.values()) == {1}, after
    r = subprocess.run([sys.executable, "-m", "pairwise_dask.cli", "run", *args, "--out", str(tmp_path / "local")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    for part in ("labels", "disagreements", "model"):
        for f in sorted((tmp_path / "local" / part).rglob("*.parquet")):
            theirs = pq.read_table(tmp_path / "remote" / f.relative_to(tmp_path / "local"))
            assert pq.read_table(f).equals(theirs), f"{f.relative_to(tmp_path)} differs"


def test_workers_in_this_process_run_on_one_blas_thread_while_a_run_lasts(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers of a ``Client(processes=False)`` are this very process: a lasting one-thread limit
    would outlive the job there, so the run holds it while it lasts and sets BLAS back after."""
    from distributed import Client, LocalCluster
    from threadpoolctl import threadpool_limits

    from fixtures import make_catalog
    from pairwise_dask import job, steps
    from pairwise_dask.threads import blas_threads

    log = tmp_path / "blas-threads.txt"
    real = steps._label_and_write

    def counting(*args, **kwargs):  # runs in this process's worker threads (sent as a copy: a file)
        with open(log, "a") as f:
            f.write(f"{blas_threads()}\n")
        return real(*args, **kwargs)

    cat = make_catalog(tmp_path / "data")
    with threadpool_limits(limits=2), LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as c:
        if blas_threads() < 2:
            pytest.skip("this BLAS cannot use two threads here")
        monkeypatch.setattr(steps, "_label_and_write", counting)  # the name the tourney pass uses
        job.run(cat.settings(tmp_path / "out"), client=c)
        seen = log.read_text().split()
        assert seen and set(seen) == {"1"}, seen
        assert blas_threads() == 2  # set back
