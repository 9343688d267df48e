"""Publishing a run's outputs is several renames: a run killed between any two of them must leave,
for every later command and reader, the previous complete result or its own, never a mix and never
the previous result lost with nothing in its place (``io.Commit``'s journal and ``io.settle``)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from pairwise_dask import io as pio
from pairwise_dask.storage import Location

OLD = {"labels/part.00000.parquet": "old labels", "disagreements/part.00000.parquet": "old review",
       "model/params.json": "old model", "report.html": "old report"}
NEW = {"labels/part.00000.parquet": "new labels", "labels/part.00001.parquet": "new labels 2",
       "model/params.json": "new model", "disagreements/part.00000.parquet": "new review"}  # no report


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no abort, no clean-up)."""


def _die(c: pio.Commit) -> None:
    """What the kernel does for a killed run: its lock is gone, its lock file stays."""
    if c._lock.fd is not None:
        os.close(c._lock.fd)
        c._lock.fd = None


def _write(root: Path, files: dict[str, str], fingerprint: str) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "summary.json").write_text(json.dumps({"fingerprint": fingerprint, "command": "run"}))


def _visible(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)}


def _staged(out: Path, *, previous: bool) -> pio.Commit:
    if previous:
        _write(out, OLD, "old")
    c = pio.Commit(str(out), fingerprint="new", overwrite=True)
    c.check_target()
    _write(Path(c.begin().path), NEW, "new")
    return c


def _complete(files: dict[str, str], fingerprint: str) -> dict[str, str]:
    return files | {"summary.json": json.dumps({"fingerprint": fingerprint, "command": "run"})}


def _renames(tmp_path: Path) -> int:
    """How many renames one publish over a previous result makes."""
    c = _staged(tmp_path / "count", previous=True)
    calls = []
    real = Location.replace

    def counting(self: Location, target: Location) -> None:
        calls.append(self.name)
        real(self, target)

    Location.replace = counting  # type: ignore[method-assign]
    try:
        c.publish()
    finally:
        Location.replace = real  # type: ignore[method-assign]
    return len(calls)


@pytest.mark.parametrize("previous", [True, False], ids=["over-a-previous-result", "into-a-new-folder"])
def test_a_publish_killed_between_any_two_renames_is_finished_by_the_next_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, previous: bool) -> None:
    n = _renames(tmp_path)
    assert n >= 6  # summary away, 4 old entries away, new ones in, summary in
    real = Location.replace
    for k in range(n + 1):  # killed before the k-th rename (k = n: after the last, before clean-up)
        out = tmp_path / f"out-{k}"
        c = _staged(out, previous=previous)
        done = []

        def dying(self: Location, target: Location, k: int = k, done: list = done) -> None:
            if len(done) == k:
                raise Killed()
            done.append(1)
            real(self, target)

        monkeypatch.setattr(Location, "replace", dying)
        with pytest.raises(Killed):
            c.publish()
            raise Killed()  # k = n: the renames all made, the kill lands before the clean-up
        _die(c)
        monkeypatch.setattr(Location, "replace", real)
        # the previous result may be gone from view, but it is never the only copy that is lost:
        # the next command (here its first step, check_target) finishes the decided publish
        nxt = pio.Commit(str(out), fingerprint="other", overwrite=True)
        nxt.check_target()
        assert _visible(out) == _complete(NEW, "new"), k
        assert not [p for p in out.iterdir() if p.name.startswith(pio.TRASH_PREFIX)], k


def test_an_error_during_the_renames_is_finished_by_abort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception between renames (here a Ctrl-C the signal mask did not hold: another thread's
    main) reaches ``abort``, which completes the decided publish and says so (``published``)."""
    real = Location.replace
    out = tmp_path / "out"
    c = _staged(out, previous=True)
    calls = []

    def interrupted(self: Location, target: Location) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt()
        real(self, target)

    monkeypatch.setattr(Location, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        c.publish()
    monkeypatch.setattr(Location, "replace", real)
    assert not c.published
    c.abort()
    assert c.published and _visible(out) == _complete(NEW, "new")
    assert sorted(p.name for p in out.iterdir()) == sorted(["labels", "disagreements", "model", "summary.json"])


def test_sigterm_during_the_renames_waits_for_the_last_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (or Ctrl-C) arriving mid-publish is held until every rename is made; its handler
    then runs, with the new result complete."""
    real = Location.replace
    out = tmp_path / "out"
    c = _staged(out, previous=True)
    seen: list[dict[str, str]] = []

    class Term(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        seen.append(_visible(out))
        raise Term()

    def signalled(self: Location, target: Location) -> None:
        if self.name == "summary.json" and "staging" not in self.parent.name:  # the first rename
            os.kill(os.getpid(), signal.SIGTERM)
        real(self, target)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        monkeypatch.setattr(Location, "replace", signalled)
        with pytest.raises(Term):
            c.publish()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert c.published and seen == [_complete(NEW, "new")]


def test_a_publish_killed_before_its_journal_is_whole_leaves_the_previous_result(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    c = _staged(out, previous=True)

    def killed(where: Location, text: str) -> None:
        Path(where.path).write_text(text[: len(text) // 2])  # half written, as a power cut may leave it
        raise Killed()

    monkeypatch.setattr(pio, "_write_durably", killed)
    with pytest.raises(Killed):
        c.publish()
    _die(c)
    monkeypatch.undo()
    nxt = pio.Commit(str(out), fingerprint="old", overwrite=False)
    nxt.check_target()  # the same job: accepted
    assert _visible(out) == _complete(OLD, "old")
    nxt.begin()  # clears the killed run's staging folder and its trash (which holds no journal)
    assert [p.name for p in out.iterdir() if p.name.startswith((pio.TRASH_PREFIX, pio.STAGING_PREFIX))] == \
        [nxt.staging.name]
    nxt.abort()
    assert _visible(out) == _complete(OLD, "old") and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_second_run_on_a_folder_being_written_is_refused(tmp_path: Path) -> None:
    """Two runs on one OUT (a scheduled run still going when the next starts) would clear each
    other's staged outputs: the second is refused, naming the first; once that ends, it may go."""
    out = tmp_path / "out"
    first = _staged(out, previous=True)
    second = pio.Commit(str(out), fingerprint="new", overwrite=True)
    with pytest.raises(pio.BadInputError, match=r"is being written by another pairwise-dask run \(pid \d+"):
        second.check_target()
    fresh = pio.Commit(str(tmp_path / "new"), fingerprint="x", overwrite=False)
    fresh.check_target()  # no folder yet: begin() takes the lock
    fresh.begin()
    with pytest.raises(pio.BadInputError, match="being written by another"):
        pio.Commit(str(tmp_path / "new"), fingerprint="x", overwrite=False).begin()
    fresh.abort()
    assert not (tmp_path / "new").exists()  # the lock file went with the folder begin() made
    first.publish()
    assert not (out / pio.LOCK).exists()
    second.check_target()
    second.begin()
    second.abort()
    assert _visible(out) == _complete(NEW, "new")


def test_a_killed_runs_lock_does_not_outlive_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "out"
    code = ("import sys, time; from pairwise_dask.io import Commit; "
            f"c = Commit({str(out)!r}, fingerprint='f', overwrite=False); c.check_target(); c.begin(); "
            "print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "locked"
        with pytest.raises(pio.BadInputError, match=f"pid {p.pid} on "):
            pio.Commit(str(out), fingerprint="f", overwrite=False).check_target()
    finally:
        p.kill()
        p.wait()
    assert (out / pio.LOCK).exists()  # left behind, but no longer locked
    c = pio.Commit(str(out), fingerprint="f", overwrite=False)
    c.check_target()
    c.begin()  # and clears the killed run's staging folder
    assert [p.name for p in out.iterdir() if p.name.startswith(pio.STAGING_PREFIX)] == [c.staging.name]
    c.abort()


# --- on an object store a move is a copy and a delete: a kill can land inside either ----------------

def _mem_write(root: str, files: dict[str, str], fingerprint: str) -> None:
    for rel, text in files.items():
        (Location.of(root) / rel).parent.mkdir()
        (Location.of(root) / rel).write_text(text)
    (Location.of(root) / "summary.json").write_text(json.dumps({"fingerprint": fingerprint, "command": "run"}))


def _mem_visible(root: str) -> dict[str, str]:
    import fsspec

    fs = fsspec.filesystem("memory")
    base = fs._strip_protocol(root).rstrip("/") + "/"
    return {p[len(base):]: fs.cat_file(p).decode() for p in sorted(fs.find(base))
            if not any(part.startswith(".") for part in p[len(base):].split("/"))}


def _mem_staged(root: str, *, previous: bool) -> pio.Commit:
    if previous:
        _mem_write(root, OLD, "old")
    c = pio.Commit(root, fingerprint="new", overwrite=True)
    c.check_target()
    _mem_write(str(c.begin()), NEW, "new")
    return c


@pytest.mark.parametrize("previous", [True, False], ids=["over-a-previous-result", "into-a-new-folder"])
def test_an_object_store_publish_killed_inside_any_copy_or_delete_is_finished_by_the_next_command(
        monkeypatch: pytest.MonkeyPatch, previous: bool) -> None:
    """A move on an object store copies every file, then deletes every source. A kill among the
    deletes of a staged folder left its partial source, which the next command moved in over the
    whole copy: a published result with files missing. Killed before each single file operation
    of a publish (copies, deletes, folders made or removed, files opened for writing), the next
    command must find the previous complete result when the kill came before the journal, and the
    complete new result after it."""
    import uuid

    from fsspec.implementations.memory import MemoryFileSystem

    # copies, deletes, folders, and every file opened for writing (the journal, the marks)
    ops = ("cp_file", "rm_file", "pipe_file", "_open", "rmdir", "mkdir", "makedirs")
    real = {op: getattr(MemoryFileSystem, op) for op in ops}
    counted: list[str] = []

    def changes(op: str, a: tuple, k: dict) -> bool:
        mode = k.get("mode", a[1] if len(a) > 1 else "rb")
        return op != "_open" or any(m in mode for m in "wax")

    def counting(op: str):
        def f(self, *a, **k):
            if changes(op, a, k):
                counted.append(f"{op} {a[0] if a else ''}")
            return real[op](self, *a, **k)
        return f

    c = _mem_staged(f"memory://count-{uuid.uuid4().hex}/out", previous=previous)
    for op in ops:
        monkeypatch.setattr(MemoryFileSystem, op, counting(op))
    c.publish()
    n = len(counted)
    kinds = [c.split()[0] for c in counted]
    assert kinds.count("rm_file") >= 4 and kinds.count("cp_file") >= 4, counted
    # the journal is opened before any move: a kill up to there leaves the previous result (or none)
    journal = next(i for i, c in enumerate(counted) if c.startswith("_open") and c.endswith(pio.JOURNAL))
    assert all(not c.startswith(("cp_file", "rm_file")) for c in counted[:journal]), counted
    for k in range(n + 1):
        root = f"memory://kill-{uuid.uuid4().hex}/out"
        for op in ops:
            monkeypatch.setattr(MemoryFileSystem, op, real[op])
        c = _mem_staged(root, previous=previous)
        done: list[int] = []

        def dying(op: str, k: int = k, done: list = done):
            def f(self, *a, **kw):
                if changes(op, a, kw):
                    if len(done) == k:
                        raise Killed()
                    done.append(1)
                return real[op](self, *a, **kw)
            return f

        for op in ops:
            monkeypatch.setattr(MemoryFileSystem, op, dying(op))
        with pytest.raises(Killed):
            c.publish()
            raise Killed()  # k = n: every operation made, the kill lands after them
        for op in ops:
            monkeypatch.setattr(MemoryFileSystem, op, real[op])
        nxt = pio.Commit(root, fingerprint="other", overwrite=True)
        nxt.check_target()
        before = _complete(OLD, "old") if previous else {}
        assert _mem_visible(root) == (before if k <= journal else _complete(NEW, "new")), \
            (k, counted[k] if k < n else "after")
        nxt.begin()  # a trash folder whose note a kill deleted first is a leftover, cleared here
        assert not [p for p in Location.of(root).iterdir() if p.name.startswith(pio.TRASH_PREFIX)], k
        nxt.abort()
