"""SIGTERM (what ``timeout``, SLURM's walltime and a pod's deletion send) unwinds a run like Ctrl-C:
the staged outputs are removed, the cluster closes, and the exit status says so."""
from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from fixtures import Catalog, kill_tree, run_cli, snapshot, tree_bytes
from pairwise_dask import io as pio
from test_faults import MOMENTS, TIMEOUT, _job, _start_run, _wait_for, reference, reference_out, small  # noqa: F401


@pytest.mark.cluster
@pytest.mark.parametrize("previous", [True, False], ids=["previous-result", "new-out"])
def test_sigterm_removes_the_staged_outputs(small: Catalog, reference: dict[str, bytes],  # noqa: F811
                                            reference_out: Path, tmp_path: Path, previous: bool) -> None:  # noqa: F811
    out = tmp_path / "out"
    job = _job(small, out, workers=1)
    before = None
    if previous:
        shutil.copytree(reference_out, out)
        before = snapshot(out)
    run = _start_run(job)
    try:
        _wait_for(lambda: MOMENTS["pass 2 writing labels"](out) or run.poll() is not None, "pass 2")
        assert run.poll() is None, "the job ended before pass 2 was seen"
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=TIMEOUT)
    finally:
        kill_tree(run)
    assert run.returncode == 128 + signal.SIGTERM, err
    assert "terminated (SIGTERM); the output folder was left as it was" in err.decode()
    if previous:  # the previous complete result stands, and nothing of this run is left beside it
        assert snapshot(out) == before
    else:
        assert not out.exists() or not list(out.iterdir()), list(out.iterdir())
    assert not [p for p in (out.iterdir() if out.exists() else []) if p.name.startswith(pio.STAGING_PREFIX)]
    res = run_cli("run", str(job), "--quiet", "--overwrite", timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    assert tree_bytes(out, "labels", "model", "disagreements") == reference


@pytest.mark.cluster
def test_ctrl_c_at_a_terminal_gives_one_line(small: Catalog, reference_out: Path, tmp_path: Path) -> None:  # noqa: F811
    """A terminal's Ctrl-C goes to the whole process group, the LocalCluster's workers included:
    each printed its own KeyboardInterrupt traceback before the run's line. They ignore it now
    (cluster.CtrlCToTheDriver); the run stops them, and the folder is as it was."""
    import os

    out = tmp_path / "out"
    shutil.copytree(reference_out, out)
    before = snapshot(out)
    run = _start_run(_job(small, out, workers=1))  # its own session: a process group, as at a terminal
    try:
        _wait_for(lambda: MOMENTS["pass 2 writing labels"](out) or run.poll() is not None, "pass 2")
        assert run.poll() is None, "the job ended before pass 2 was seen"
        os.killpg(run.pid, signal.SIGINT)
        _, err = run.communicate(timeout=TIMEOUT)
    finally:
        kill_tree(run)
    text = err.decode()
    assert run.returncode == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert text.strip().splitlines()[-1] == "pairwise-dask: interrupted; the output folder was left as it was"
    assert snapshot(out) == before


@pytest.mark.cluster
def test_ctrl_c_after_the_summary_is_ignored(small: Catalog, reference: dict[str, bytes],  # noqa: F811
                                             tmp_path: Path) -> None:
    """Once the summary is printed the outputs are complete; the interpreter's shutdown still takes
    about half a second, and a Ctrl-C in it ended the process with a signal's status (-2) and no word.
    It is ignored now: the command succeeded."""
    import os
    import subprocess
    import sys

    from fixtures import cli_env

    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "pairwise_dask.cli", "run", str(_job(small, out, workers=1))],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), start_new_session=True)
    try:
        assert run.stdout is not None
        for line in run.stdout:  # the summary's last line
            if line.decode().lstrip().startswith("outputs"):
                os.killpg(run.pid, signal.SIGINT)
                break
        _, err = run.communicate(timeout=TIMEOUT)
    finally:
        kill_tree(run)
    assert run.returncode == 0, err.decode()
    assert "Traceback" not in err.decode(), err.decode()
    assert tree_bytes(out, "labels", "model", "disagreements") == reference
