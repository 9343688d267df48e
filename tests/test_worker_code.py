"""A cluster the job did not start is checked before any work: its workers must run this very
pairwise-dask, and its address must answer as a Dask scheduler. Either mistake used to hang the
run with no message (a worker that cannot unpickle a task, a client waiting on a dashboard's port)."""
from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from fixtures import cli_env, kill_tree, scheduler_address
from pairwise_dask import cluster
from pairwise_dask.errors import BadInputError, NoWorkersError

PACKAGE = Path(cluster.__file__).parent


def _scheduler_and_worker(folder: Path, pythonpath: str | None) -> Iterator[str]:
    sf = folder / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(sf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(),
                              start_new_session=True)]
    try:
        address = scheduler_address(sf)
        env = cli_env() | ({"PYTHONPATH": pythonpath} if pythonpath else {})
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                       "--no-nanny", "--no-dashboard"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env=env, cwd=folder,  # `-m` puts the cwd first
                                      start_new_session=True))
        yield address
    finally:
        for p in procs:
            kill_tree(p)


def _connect(address: str) -> None:
    from pairwise_dask.config import load_settings

    s = load_settings(None, {"items": "x.parquet", "classes": "c.parquet", "out": "o", "views": (("a", "a"),),
                             "scheduler": address})
    with cluster.connect(s):
        pass


@pytest.mark.cluster
def test_workers_with_another_pairwise_dask_are_refused(tmp_path: Path) -> None:
    """A long-lived cluster keeps the code it started with; after an upgrade of the client only,
    the run must stop at once and say which worker runs what, not hang."""
    other = tmp_path / "other"
    shutil.copytree(PACKAGE, other / "pairwise_dask", ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "pairwise_dask" / "tourney.py", "a") as fh:
        fh.write("# an edit: another version of the code\n")
    for address in _scheduler_and_worker(tmp_path, str(other)):
        from distributed import Client

        with Client(address) as c:
            c.wait_for_workers(1, timeout=60)
            assert c.run(lambda: __import__("pairwise_dask").__file__).popitem()[1].startswith(str(other))
            with pytest.raises(BadInputError, match=r"1 of 1 Dask workers run another pairwise-dask than this client"
                                                    r".*in .*other/pairwise_dask.*restart them"):
                cluster.check_workers_code(c)
        with pytest.raises(BadInputError, match="another pairwise-dask"):  # and so does the job's connect
            _connect(address)


@pytest.mark.cluster
def test_workers_that_cannot_import_pairwise_dask_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken" / "pairwise_dask"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('not installed here')\n")
    for address in _scheduler_and_worker(tmp_path, str(broken.parent)):
        from distributed import Client

        with Client(address) as c:
            c.wait_for_workers(1, timeout=60)
            with pytest.raises(BadInputError, match="the Dask workers cannot import pairwise-dask.*Install the same"):
                cluster.check_workers_code(c)


@pytest.mark.cluster
def test_the_same_code_passes(tmp_path: Path) -> None:
    for address in _scheduler_and_worker(tmp_path, None):
        from distributed import Client

        with Client(address) as c:
            c.wait_for_workers(1, timeout=60)
            cluster.check_workers_code(c)
            (mine,) = set(c.run(lambda: __import__("pairwise_dask").__version__).values())
            assert mine == cluster.code_id()[0]


def test_an_address_that_is_not_a_dask_scheduler_is_refused_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTTP server (say the dashboard's port, 8787, instead of the scheduler's 8786) accepts the
    connection and never speaks Dask's protocol: distributed's Client waits forever there."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # Dask's handshake is a bad request: no log
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(cluster, "SCHEDULER_TIMEOUT", 2)
    raised: list[BaseException] = []

    def attempt() -> None:  # in a thread: a regression would hang here, not the whole suite
        try:
            _connect(f"tcp://127.0.0.1:{server.server_address[1]}")
        except BaseException as e:  # noqa: BLE001
            raised.append(e)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(60)
    server.shutdown()
    assert not t.is_alive(), "connecting to a non-Dask port did not give up"
    assert len(raised) == 1 and isinstance(raised[0], BadInputError), raised
    assert "not the dashboard's" in str(raised[0])
    assert ("no Dask scheduler answered" in str(raised[0]) and "within 2 s" in str(raised[0])) or \
        "is not a Dask scheduler" in str(raised[0]), str(raised[0])


def test_a_scheduler_without_workers_is_said_and_waited_for(tmp_path: Path) -> None:
    """A scheduler with no worker yet: the run used to print "0 workers" and wait in silence. Now it
    says so; by default the tasks wait (an adaptive cluster starts workers only when tasks arrive,
    so waiting before submitting any would never end); with worker_wait it waits that long for a
    worker, goes on when one joins, and gives up after."""
    from distributed import Client, LocalCluster

    from pairwise_dask import job
    from pairwise_dask.config import load_settings

    from catalogs import make_catalog

    cat = make_catalog(tmp_path / "data", n=200)

    def settings(address: str, wait: float, out: str = "o"):
        return load_settings(None, {**cat, "out": str(tmp_path / out), "scheduler": address, "worker_wait": wait})

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as lc:
        said: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(NoWorkersError, match=r"no worker joined the Dask scheduler at .* within 2 s.*dask worker"):
            with cluster.connect(settings(lc.scheduler_address, 2), echo=said.append):
                pass
        assert time.monotonic() - t0 < 30
        assert any("has no workers yet; waiting up to 2 s" in m for m in said), said
        threading.Timer(1.0, lc.scale, args=(1,)).start()  # a worker joins while the job waits
        said.clear()
        with cluster.connect(settings(lc.scheduler_address, 120), echo=said.append) as c:
            assert len(c.scheduler_info()["workers"]) == 1
        assert any("waiting up to 120 s" in m for m in said), said
    # the default: an adaptive cluster with no worker runs the job (its tasks bring the workers)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as lc, Client(lc) as c:
        lc.adapt(minimum=0, maximum=1)
        said = []
        summary = job.run(settings(lc.scheduler_address, 0, "adaptive"), client=c, echo=said.append)
        assert summary["labelled_items"] == 200
        assert any("has no workers yet: the tasks wait for some to join" in m for m in said), said


def test_a_quiet_run_still_says_the_scheduler_has_no_worker(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--quiet is for scheduled runs, whose log must still show why nothing happens: the notice
    goes to stderr whatever the flags (it was dropped, and the run waited in silence). Giving up
    is the cluster's state, not bad input: exit 1, as when every worker leaves mid-run (it was 2)."""
    from distributed import LocalCluster

    from catalogs import make_catalog
    from pairwise_dask import cli

    cat = make_catalog(tmp_path / "data", n=200)
    out = tmp_path / "out"
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as lc:
        rc = cli.main(["run", "--items", cat["items"], "--classes", cat["classes"], "--views",
                       ",".join(f"{v}={c}" for v, c in cat["views"]), "--label", cat["label"], "--out", str(out),
                       "--scheduler", lc.scheduler_address, "--worker-wait", "1", "--quiet"])
    got = capsys.readouterr()
    assert rc == 1, got.err
    assert got.out == ""
    lines = got.err.strip().splitlines()
    assert lines[0].startswith(f"The scheduler at {lc.scheduler_address} has no workers yet; waiting up to 1 s"), lines
    assert lines[-1].startswith("pairwise-dask: error: no worker joined the Dask scheduler"), lines
    assert not out.exists() or not [p for p in out.iterdir() if p.name != ".pairwise-lock"]
