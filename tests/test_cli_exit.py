"""How the command's process ends: its exit status and last words, whatever ends it."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures import REPO, cli_env, kill_tree


def test_leave_runs_the_exit_handlers_and_flushes_but_skips_the_interpreters_teardown() -> None:
    """pyarrow's native thread pools could abort the process in the interpreter's teardown, after
    the command had finished (SIGABRT, "terminate called without an active exception": 32 of 240
    runs under load of a command that read a damaged model file). ``leave`` ends the process
    without that teardown; what a normal exit does that matters must still happen."""
    script = textwrap.dedent("""
        import atexit, sys
        from pairwise_dask import cli

        class Torn:
            def __del__(self):
                print("torn down", flush=True)

        torn = Torn()  # a module global: only the interpreter's teardown would collect it
        atexit.register(lambda: print("atexit ran"))
        sys.stdout.write("buffered, no newline")
        sys.stderr.write("and on stderr")
        cli.leave(3)
        print("not reached")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert r.returncode == 3
    assert r.stdout == "buffered, no newlineatexit ran\n", r.stdout
    assert r.stderr == "and on stderr", r.stderr


@pytest.mark.parametrize("args, code, words", [
    (["--help"], 0, "usage: pairwise-dask"),
    (["run", "--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
])
def test_the_console_script_keeps_argparses_exit_status(args: list[str], code: int, words: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pairwise_dask.cli", *args], capture_output=True, text=True,
                       env=cli_env(), timeout=60)
    assert r.returncode == code
    assert words in r.stdout + r.stderr


@pytest.mark.cluster
def test_a_run_whose_reader_closes_stdout_ends_with_one_line(tmp_path: Path) -> None:
    """``pairwise-dask run … | head -2`` ended in a ``BrokenPipeError`` traceback (status 1). It
    now ends as a writer killed by SIGPIPE does (141), with one line on stderr saying whether the
    run had finished; a run stopped that way leaves nothing in its output folder."""
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "pairwise_dask.cli", "run", str(REPO / "jobs" / "demo.toml"),
                            "--out", str(out), "--workers", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    try:
        assert run.stdout is not None
        first = run.stdout.readline()  # the dashboard's link, printed before the run starts
        run.stdout.close()  # what `head -1` does next
        _, err = run.communicate(timeout=300)
    finally:
        kill_tree(run)
    assert first.startswith(b"Dask dashboard:"), first
    text = err.decode()
    assert run.returncode == 141, text
    assert "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    if "stopped" in last:
        assert last == "pairwise-dask: standard output was closed by its reader; stopped: the output folder " \
                       "was left as it was"
        assert not out.exists() or not list(out.iterdir())
    else:  # every message fitted in the pipe's buffer: only the summary found the reader gone
        assert last == f"pairwise-dask: standard output was closed by its reader; the run had finished: {out} " \
                       "holds its complete output"
        assert json.loads((out / "summary.json").read_text())["command"] == "run"
