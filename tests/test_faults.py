"""Faults survived, nothing lost: killed workers, a replaced worker, killed jobs, exact reruns.

The cluster tests start a real ``dask scheduler`` and ``dask worker`` processes from the command
line on 127.0.0.1 and SIGKILL them while the job's pass 2 (the tourney) runs. "While pass 2 runs"
is observed, not timed: the kill happens once label parts appear in the run's staging folder and
before the job has published. The catalog has many small partitions so that pass 2 lasts seconds.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow.parquet as pq
import pytest

from fixtures import Catalog, cli_env, kill_tree, make_catalog, run_cli, scheduler_address, snapshot, tree_bytes
from pairwise_dask import io as pio
from pairwise_dask.storage import Location

N, D, K, PARTITION_ROWS = 10_000, 64, 24, 100
PARTS = N // PARTITION_ROWS
TIMEOUT = 240  # seconds: a bound on a hung run, never an assertion about speed


def _wait_for(cond: Callable[[], Any], what: str, timeout: float = TIMEOUT, every: float = 0.01) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError(f"gave up waiting for {what}")


def _staged_parts(out: Path) -> int:
    return sum(len(list((p / "labels").glob("part.*.parquet")))
               for p in out.glob(f"{pio.STAGING_PREFIX}*") if (p / "labels").is_dir())


class DaskProcesses:
    """A scheduler and workers started as ``dask`` CLI processes; every one is killed at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.file = folder / "scheduler.json"
        self.procs: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as fh:
            p = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]],
                                 stdout=fh, stderr=subprocess.STDOUT, env=cli_env(), cwd=self.folder,
                                 start_new_session=True)  # its own group: kill_tree gets all of it
        self.procs.append(p)
        return p

    def start_scheduler(self) -> str:
        self._start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(self.file)], "scheduler")
        return self.address

    @property
    def address(self) -> str:
        return scheduler_address(self.file)

    def start_worker(self) -> subprocess.Popen:
        # --no-nanny: the worker is this very process, so SIGKILL really removes it (a nanny
        # would restart it, which is the other test's replacement, done explicitly there)
        i = len(self.workers)
        p = self._start(["worker", "--scheduler-file", str(self.file), "--nthreads", "1", "--no-nanny",
                         "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}",
                         "--local-directory", str(self.folder / f"w{i}")], f"worker{i}")
        self.workers.append(p)
        return p

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout="60s") as c:
            c.wait_for_workers(n, timeout=60)

    def close(self) -> None:
        for p in reversed(self.procs):
            kill_tree(p)


@pytest.fixture
def dask_procs(tmp_path: Path) -> Iterator[DaskProcesses]:
    procs = DaskProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """Many small partitions: pass 2 is a few hundred tasks, long enough to be interrupted."""
    return make_catalog(tmp_path_factory.mktemp("big") / "data", n=N, d=D, k=K, noise=1.5)


def _job(cat: Catalog, out: Path, **cluster: Any) -> Path:
    return cat.job_file(out, method={"dims": 16}, cluster={"partition_rows": PARTITION_ROWS, **cluster})


def _start_run(job_file: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pairwise_dask.cli", "run", str(job_file), "--quiet", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), start_new_session=True)


def _finish(p: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = p.communicate(timeout=TIMEOUT)
    finally:
        kill_tree(p)
    return p.returncode, err.decode()


def _labels(out: Path) -> dict:
    t = pq.read_table(out / "labels")
    return dict(zip(t.column("id").to_pylist(), zip(*(t.column(c).to_pylist() for c in t.column_names[1:]))))


def _kill_during_tourney(big: Catalog, dask_procs: DaskProcesses, tmp_path: Path, addr: str,
                         after_kill: Any = None) -> None:
    """A clean run, then the same job with ``workers[0]`` SIGKILLed once pass 2 has written some
    parts (``after_kill`` runs next); the job must finish with byte-identical labels and model."""
    clean = tmp_path / "clean"
    rc, err = _finish(_start_run(_job(big, clean), "--scheduler", addr))
    assert rc == 0, err

    out = tmp_path / "faulty"
    run = _start_run(_job(big, out), "--scheduler", addr)
    try:
        _wait_for(lambda: _staged_parts(out) >= 3 or run.poll() is not None, "pass 2 to start")
        at_kill = _staged_parts(out)
        kill_tree(dask_procs.workers[0])  # SIGKILL, mid-tourney
        assert not (out / "summary.json").exists() and at_kill < PARTS, "the job ended before the kill"
        if after_kill is not None:
            after_kill()
    finally:
        rc, err = _finish(run)
    assert rc == 0, err
    assert _labels(out) == _labels(clean)
    assert tree_bytes(out, "labels", "model") == tree_bytes(clean, "labels", "model")


@pytest.mark.cluster
def test_worker_killed_during_tourney(big: Catalog, dask_procs: DaskProcesses, tmp_path: Path) -> None:
    addr = dask_procs.start_scheduler()
    dask_procs.start_worker()
    dask_procs.start_worker()
    dask_procs.wait_for_workers(2)
    _kill_during_tourney(big, dask_procs, tmp_path, addr)


@pytest.mark.cluster
def test_only_worker_dies_and_a_replacement_joins(big: Catalog, dask_procs: DaskProcesses, tmp_path: Path) -> None:
    addr = dask_procs.start_scheduler()
    dask_procs.start_worker()
    dask_procs.wait_for_workers(1)
    # the only worker: everything it held is gone until a replacement joins
    _kill_during_tourney(big, dask_procs, tmp_path, addr, after_kill=dask_procs.start_worker)


@pytest.mark.cluster
def test_worker_killed_while_it_holds_the_masks(big: Catalog, dask_procs: DaskProcesses, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Many pairs (top-t): the masks are fitted in chunks on the workers and stay there
    (``RemoteMasks``); a worker SIGKILLed in pass 2 takes its chunks and the joined spec with it,
    and the scheduler recomputes them from their lineage: the same labels and model."""
    import threading

    from pairwise_dask import job, steps, tourney
    from pairwise_dask.config import load_settings

    addr = dask_procs.start_scheduler()
    dask_procs.start_worker()
    dask_procs.start_worker()
    dask_procs.wait_for_workers(2)
    monkeypatch.setattr(steps, "PARALLEL_PAIRS", 10)  # 24 classes' pairs: chunks on the workers
    monkeypatch.setattr(tourney, "use_gather", lambda *a, **k: True)
    calls: list[dict] = []
    on_workers = steps._fit_on_workers
    monkeypatch.setattr(steps, "_fit_on_workers", lambda *a, **k: calls.append(k) or on_workers(*a, **k))

    def settings(out: Path):
        return load_settings(str(_job(big, out, scheduler=addr)), {"mode": "top-t", "top_t": 5, "refine": 0,
                                                                   "fit_on": "view", "rotate": "none"})

    clean, out = tmp_path / "clean", tmp_path / "faulty"
    job.run(settings(clean))
    failure: list[BaseException] = []

    def faulty() -> None:
        try:
            job.run(settings(out))
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            failure.append(e)

    t = threading.Thread(target=faulty)
    t.start()
    try:
        _wait_for(lambda: _staged_parts(out) >= 3 or not t.is_alive(), "pass 2 to start")
        at_kill = _staged_parts(out)
        kill_tree(dask_procs.workers[0])  # SIGKILL, mid-tourney: half the mask chunks are gone
        assert not (out / "summary.json").exists() and at_kill < PARTS, "the job ended before the kill"
    finally:
        t.join(TIMEOUT)
    assert not failure, failure
    assert len(calls) == 2 and all(k["keep_remote"] for k in calls)
    assert _labels(out) == _labels(clean)
    assert tree_bytes(out, "labels", "model") == tree_bytes(clean, "labels", "model")


# --- atomic commit: a job killed at any moment leaves the previous complete result or none ---

class _Killed(BaseException):
    """Stands for SIGKILL inside publish(): nothing after it runs, not even ``except`` cleanup."""


#: a file of each output folder, named as the job names it (other names are the user's, and refused)
FAKE = {"labels": "part.00000.parquet", "disagreements": "part.00000.parquet", "model": "masks.parquet"}


def _fake_result(folder: Path, tag: str) -> None:
    for entry, name in FAKE.items():
        (folder / entry).mkdir(parents=True)
        (folder / entry / name).write_text(f"{entry} {tag}")
    (folder / "summary.json").write_text(json.dumps({"fingerprint": "f", "tag": tag}))


def _state(out: Path) -> str:
    """'old', 'new' (complete results) or 'none'; fails on any mix that claims to be complete."""
    if not (out / "summary.json").exists():
        return "none"
    tag = json.loads((out / "summary.json").read_text())["tag"]
    for entry, name in FAKE.items():
        assert (out / entry / name).read_text() == f"{entry} {tag}", f"{entry} is not {tag}"
    return tag


@pytest.mark.parametrize("previous", [True, False], ids=["previous-result", "new-out"])
def test_publish_killed_at_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, previous: bool) -> None:
    """Interrupt publish() after each of its renames in turn: the folder holds the old result,
    the new one, or none (no summary.json), never a mix; the next run finishes the publish (its
    journal was written before the first rename) and clears what is left."""
    real_replace = os.replace
    steps = 0
    while True:
        out = tmp_path / f"out{steps}"
        out.mkdir()
        if previous:
            _fake_result(out, "old")
        commit = pio.Commit(str(out), fingerprint="f", overwrite=False)
        commit.check_target()
        _fake_result(commit.begin(), "new")
        calls = 0

        def replace(src: Any, dst: Any) -> None:
            nonlocal calls
            if calls == steps:
                raise _Killed()
            calls += 1
            real_replace(src, dst)

        monkeypatch.setattr(pio.os, "replace", replace)
        try:
            commit.publish()
            finished = True
        except _Killed:
            finished = False
        monkeypatch.setattr(pio.os, "replace", real_replace)
        state = _state(out)
        # summary.json goes first (old result → none) and comes back last (none → new result)
        assert state == ("new" if finished else "old" if previous and steps == 0 else "none"), (steps, state)
        if commit._lock.fd is not None:  # as the kernel does for a killed process (the file stays)
            os.close(commit._lock.fd)
            commit._lock.fd = None
        # the next run starts by finishing the decided publish (io.settle: every rename here comes
        # after the journal), then clears what else the killed one left
        nxt = pio.Commit(str(out), fingerprint="f", overwrite=False)
        nxt.check_target()
        assert _state(out) == "new", steps
        nxt.begin()
        assert [p.name for p in out.iterdir() if p.name.startswith((pio.STAGING_PREFIX, pio.TRASH_PREFIX))] == \
            [nxt.staging.name]
        nxt.abort()
        if finished:
            break
        steps += 1
    assert steps >= 4  # every rename was a kill point once


def test_publish_removes_the_outputs_this_command_does_not_write(tmp_path: Path) -> None:
    """``fit --overwrite`` into a folder holding a run publishes ``model/`` and ``summary.json``
    only: the run's ``labels/``, ``disagreements/`` and ``report.html`` must go too, or the folder
    would hold labels that its ``summary.json`` (the fit's) does not describe, from another job."""
    out = tmp_path / "out"
    _fake_result(out, "old")
    (out / "report.html").write_text("<html>old</html>")
    (out / "summary.json").write_text(json.dumps({"fingerprint": "f", "command": "run", "tag": "old"}))
    commit = pio.Commit(str(out), fingerprint="g", overwrite=True, command="fit")
    commit.check_target()
    staging = Path(commit.begin().path)
    (staging / "model").mkdir()
    (staging / "model" / "masks.parquet").write_text("model new")
    (staging / "summary.json").write_text(json.dumps({"fingerprint": "g", "command": "fit", "tag": "new"}))
    commit.publish()
    assert sorted(p.name for p in out.iterdir()) == ["model", "summary.json"]
    assert (out / "model" / "masks.parquet").read_text() == "model new"
    assert json.loads((out / "summary.json").read_text())["command"] == "fit"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    return make_catalog(tmp_path_factory.mktemp("small") / "data", n=4000, d=32, k=12, noise=1.5)


@pytest.fixture(scope="module")
def reference_out(small: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean run's complete result (the same job as the killed runs: its bytes are the truth)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    res = run_cli("run", str(_job(small, out, workers=1)), "--quiet", timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def reference(reference_out: Path) -> dict[str, bytes]:
    return tree_bytes(reference_out, "labels", "model", "disagreements")


MOMENTS: dict[str, Callable[[Path], bool]] = {
    "cluster up, pass 1": lambda out: any(out.glob(f"{pio.STAGING_PREFIX}*")),
    "pass 2 writing labels": lambda out: _staged_parts(out) >= 1,
    "outputs staged": lambda out: any(out.glob(f"{pio.STAGING_PREFIX}*/model")),
}


@pytest.mark.cluster
@pytest.mark.parametrize("previous", [True, False], ids=["previous-result", "new-out"])
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_cli_killed_leaves_previous_result_or_none(small: Catalog, reference: dict[str, bytes],
                                                   reference_out: Path, tmp_path: Path, moment: str,
                                                   previous: bool) -> None:
    """SIGKILL the whole CLI (its LocalCluster too) once ``moment`` is observed; then rerun."""
    out = tmp_path / "out"
    job = _job(small, out, workers=1)
    before = None
    if previous:  # the same job's complete result (its fingerprint matches: no --overwrite needed)
        shutil.copytree(reference_out, out)
        before = snapshot(out)
    run = _start_run(job)
    try:
        _wait_for(lambda: MOMENTS[moment](out) or run.poll() is not None, moment)
        alive = run.poll() is None
    finally:
        kill_tree(run)
    # the wide moments are always caught while the job runs; "outputs staged" lasts milliseconds
    # and may be missed, then the run completed and the checks below still hold
    assert alive or moment == "outputs staged", f"the job ended before {moment}"
    print(f"{moment}: killed while running: {alive}")  # shown with -s
    if (out / "summary.json").exists():  # a result is claimed: it must be complete and exact
        # (the previous result and this run's are the same job, hence the same bytes)
        assert tree_bytes(out, "labels", "model", "disagreements") == reference
        if previous and before is not None:
            assert {k: v for k, v in (snapshot(out) or {}).items() if not k.startswith(".")} == before
    else:  # none claimed: either the kill cut a publish short, and the next command finishes it
        # (io.settle, its first step), or no output entry may be visible
        if out.exists():
            pio.settle(Location.of(str(out)))
        if (out / "summary.json").exists():
            assert tree_bytes(out, "labels", "model", "disagreements") == reference
        else:
            assert not [p for p in (out.iterdir() if out.exists() else []) if not p.name.startswith(".")], \
                list(out.iterdir())
    # the rerun clears the leftovers and gives byte-identical outputs
    res = run_cli("run", str(job), "--quiet", timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    assert tree_bytes(out, "labels", "model", "disagreements") == reference
    assert not [p for p in out.iterdir() if p.name.startswith((pio.STAGING_PREFIX, pio.TRASH_PREFIX))]


@pytest.mark.cluster
def test_a_value_sent_once_survives_losing_its_worker() -> None:
    """``apply`` sends a saved model's masks and rotation to the workers once (``steps._send_once``),
    not by ``scatter``: the scheduler keeps the task's data, so when the worker holding it dies the
    value is made again on another worker (a scattered value would be lost with its worker)."""
    import logging

    import numpy as np
    from distributed import Client, LocalCluster

    from pairwise_dask.steps import _send_once

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as c:
        c.wait_for_workers(2)
        value = {"a": np.arange(1000.0)}
        fut = _send_once(c, value, "test")
        fut.result()
        (holder,) = c.who_has(fut)[fut.key]
        with pytest.raises(Exception):  # the worker dies before it can answer
            c.run(os._exit, 1, workers=[holder])
        _wait_for(lambda: holder not in c.scheduler_info()["workers"], "the worker's removal")
        again = fut.result(timeout=TIMEOUT)
        np.testing.assert_array_equal(again["a"], value["a"])
        assert c.who_has(fut)[fut.key] and holder not in c.who_has(fut)[fut.key]


@pytest.mark.cluster
def test_workers_out_of_memory_get_one_message(tmp_path: Path) -> None:
    """Workers that die for memory end in Dask's KilledWorker: the command line says what it means
    and what to change, in one line, and leaves no output (a traceback before)."""
    from catalogs import make_catalog as planted

    cat = planted(tmp_path / "data", n=20_000, d=256, row_group=5_000)
    out = tmp_path / "out"
    res = run_cli("run", "--items", cat["items"], "--classes", cat["classes"], "--views", "a=emb_a,b=emb_b",
                  "--out", str(out), "--workers", "1", "--memory-limit", "150MB", "--quiet", timeout=300)
    assert res.returncode == 1, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("pairwise-dask:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "Dask workers died" in errors[0] and "--memory-limit" in errors[0], errors[0]
    assert not out.exists()


@pytest.mark.cluster
def test_scheduler_lost_mid_run_gets_one_message(big: Catalog, dask_procs: DaskProcesses, tmp_path: Path) -> None:
    """The scheduler killed during pass 2: Dask cancels the futures ('scheduler-connection-lost'),
    which was a raw FutureCancelledError traceback; now one line that says what happened and that
    nothing was kept, exit code 1, and no output folder."""
    addr = dask_procs.start_scheduler()
    scheduler = dask_procs.procs[0]
    dask_procs.start_worker()
    dask_procs.wait_for_workers(1)
    out = tmp_path / "out"
    run = _start_run(_job(big, out), "--scheduler", addr)
    try:
        _wait_for(lambda: _staged_parts(out) >= 3 or run.poll() is not None, "pass 2 to start")
        assert run.poll() is None, "the job ended before the kill"
        kill_tree(scheduler)
    finally:
        rc, err = _finish(run)
    errors = [ln for ln in err.splitlines() if ln.startswith("pairwise-dask:")]
    # (Dask's client itself logs its failed reconnect, with a traceback, before giving up: not ours)
    assert rc == 1 and len(errors) == 1 and "FutureCancelledError" not in err, err
    assert err.rstrip().splitlines()[-1] == errors[0]
    assert "connection to the Dask scheduler was lost" in errors[0], errors[0]
    assert not (out / "summary.json").exists() and not (out / "labels").exists()


@pytest.mark.cluster
def test_every_worker_gone_mid_run_gives_up_after_worker_wait(big: Catalog, dask_procs: DaskProcesses,
                                                              tmp_path: Path) -> None:
    """The only worker SIGKILLed during pass 2 and none joining: the run used to wait for ever.
    With --worker-wait 3 it says that every worker left (on stderr, even with --quiet), gives up
    3 s later with one line (exit 1) and keeps nothing."""
    addr = dask_procs.start_scheduler()
    dask_procs.start_worker()
    dask_procs.wait_for_workers(1)
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "pairwise_dask.cli", "run", str(_job(big, out)),
                            "--scheduler", addr, "--worker-wait", "3", "--quiet"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), start_new_session=True)
    try:
        _wait_for(lambda: _staged_parts(out) >= 3 or run.poll() is not None, "pass 2 to start")
        assert run.poll() is None, "the job ended before the kill"
        kill_tree(dask_procs.workers[0])
        stdout, err = run.communicate(timeout=TIMEOUT)  # the bound on a hang, not a speed check
    finally:
        kill_tree(run)
    stdout, err = stdout.decode(), err.decode()
    errors = [ln for ln in err.splitlines() if ln.startswith("pairwise-dask:")]
    assert run.returncode == 1 and len(errors) == 1, err
    assert err.rstrip().splitlines()[-1] == errors[0]
    assert "every Dask worker left the scheduler" in errors[0] and "within 3 s" in errors[0], errors[0]
    assert "Traceback" not in err and "CancelledError" not in err, err
    # --quiet (a scheduled run) prints nothing else, but this on stderr (it printed nothing at all)
    assert f"Every Dask worker left the scheduler at {addr}: the run waits up to 3 s" in err, err
    assert stdout == "", stdout
    assert not (out / "summary.json").exists() and not (out / "labels").exists()
    assert not [p for p in out.iterdir() if p.name != ".pairwise-lock"] if out.exists() else True


def test_a_full_disk_gets_one_message(small: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    """An OSError mid-run (here the disk filling up as the review list is written) was a raw
    traceback: one line now, exit code 1, and the output folder as it was."""
    import errno

    from pairwise_dask import cli
    from pairwise_dask import steps

    out = tmp_path / "out"

    def full(tally: Any, folder: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "part.00000.parquet"))

    monkeypatch.setattr(steps, "write_disagreements", full)
    rc = cli.main(["run", str(_job(small, out, workers=1)), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err, err
    assert err.count("pairwise-dask: error:") == 1 and "No space left on device" in err, err
    assert "part.00000.parquet" in err and "the output folder was left as it was" in err, err
    assert not out.exists()


def test_out_of_memory_advice_names_the_cache_and_row_groups() -> None:
    from distributed.scheduler import KilledWorker

    from pairwise_dask.cli import killed_worker_message
    from pairwise_dask.config import Settings

    e = KilledWorker("read_parquet-1", "tcp://127.0.0.1:1", allowed_failures=2)
    s = Settings(items="i.parquet", classes="c.parquet", out="out", views=(("a", "emb_a"),), cache="on")
    on = killed_worker_message(e, s)
    assert "Dask workers died 3 times" in on and "--cache auto" in on and "row group" in on, on
    assert "--cache" not in killed_worker_message(e, s.replace(cache="auto"))


@pytest.mark.cluster
def test_a_second_run_into_the_same_out_is_refused_while_the_first_goes_on(
        small: Catalog, reference: dict[str, bytes], tmp_path: Path) -> None:
    """A scheduled run started while the previous one still writes the same OUT used to clear
    that run's staged outputs (its leftovers, to it): now it is refused in one line, naming the
    running one, and the first run ends with its complete, exact result."""
    out = tmp_path / "out"
    job = _job(small, out, workers=1)
    first = _start_run(job)
    try:
        _wait_for(lambda: MOMENTS["cluster up, pass 1"](out) or first.poll() is not None, "the first run to start")
        assert first.poll() is None, "the first run ended before the second started"
        second = run_cli("run", str(job), "--quiet", timeout=TIMEOUT)
        assert second.returncode == 2, second.stderr
        assert "is being written by another pairwise-dask run (pid" in second.stderr, second.stderr
        rc, err = _finish(first)
    finally:
        kill_tree(first)
    assert rc == 0, err
    assert tree_bytes(out, "labels", "model", "disagreements") == reference
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_only_file_errors_get_the_file_error_message() -> None:
    """Dask's comm errors and timeouts are OSErrors too: a lost scheduler must keep its own message,
    not be called a refused file operation."""
    import errno

    from distributed.comm.core import CommClosedError

    from pairwise_dask.cli import _file_error, lost_scheduler_message

    assert _file_error(OSError(errno.ENOSPC, "No space left on device", "/out/x"))
    assert not _file_error(CommClosedError("in <TCP>: Stream is closed"))
    assert not _file_error(TimeoutError("Timed out trying to connect"))
    assert not _file_error(OSError("Timed out during handshake"))  # no errno: a network message
    assert lost_scheduler_message(CommClosedError("closed")) is not None
