"""fsspec URLs for inputs and outputs: the whole job on ``memory://`` (an in-process cluster, since
a memory filesystem lives in one process), and the commit contract there."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from pairwise_dask import job
from pairwise_dask.config import load_settings
from pairwise_dask.errors import BadInputError
from pairwise_dask.storage import Location

from catalogs import make_catalog


@pytest.fixture
def threads_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as c:
        yield c


def test_job_reads_and_writes_memory_urls(threads_client, tmp_path):
    cat = make_catalog(tmp_path / "data", n=300)
    mem = fsspec.filesystem("memory")
    mem.put(cat["items"], "/pw-test/in/items.parquet")
    mem.put(cat["classes"], "/pw-test/in/classes.parquet")
    s = load_settings(None, {**cat, "items": "memory://pw-test/in/", "classes": "memory://pw-test/in/classes.parquet",
                             "out": "memory://pw-test/out", "storage_options": {}})
    # the folder form of items must not pick up classes.parquet: point items at a file instead
    s = s.replace(items="memory://pw-test/in/items.parquet")
    summary = job.run(s, client=threads_client)
    out = Location.of("memory://pw-test/out")
    assert sorted(p.name for p in out.iterdir()) == ["disagreements", "labels", "model", "report.html", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["run_id"] == summary["run_id"]
    with (out / "labels" / "part.00000.parquet").open() as f:
        assert pq.read_table(f).num_rows == 100  # row groups of 100
    # the same labels as a local run
    local = load_settings(None, {**cat, "out": str(tmp_path / "local")})
    job.run(local, client=threads_client)
    remote = pq.ParquetDataset("/pw-test/out/labels", filesystem=mem).read()
    assert remote.equals(pq.read_table(tmp_path / "local" / "labels"))
    # apply with a model on memory://
    summary = job.apply(s.replace(out="memory://pw-test/applied"), "memory://pw-test/out/model", client=threads_client)
    assert summary["labelled_items"] == 300
    # a different job into the same URL is refused, as locally
    with pytest.raises(BadInputError, match="different job"):
        job.run(s.replace(seed=5), client=threads_client)
    mem.rm("/pw-test", recursive=True)


def test_memory_urls_with_worker_processes_are_refused(client, tmp_path):
    """Worker processes each have their own memory:// file system: a run wrote its labels there
    and reported success, with no labels/ in the output this process sees."""
    cat = make_catalog(tmp_path / "data", n=100)
    mem = fsspec.filesystem("memory")
    s = load_settings(None, {**cat, "out": "memory://pw-test-procs/out"})
    for how in ({"client": client}, {}):  # the caller's process workers; our own LocalCluster
        with pytest.raises(BadInputError, match=r"file memory://pw-test-procs/out: is a memory:// URL, which only "
                                                r"this process sees"):
            job.run(s, **how)
        assert not mem.exists("/pw-test-procs/out")
    mem.put(cat["items"], "/pw-test-procs/in/items.parquet")
    with pytest.raises(BadInputError, match="memory://pw-test-procs/in/items.parquet: is a memory:// URL"):
        job.run(s.replace(items="memory://pw-test-procs/in/items.parquet", out=str(tmp_path / "o")), client=client)
    assert not (tmp_path / "o").exists()
    mem.rm("/pw-test-procs", recursive=True)


def test_storage_options_from_the_job_file_are_not_written(tmp_path):
    job_file = tmp_path / "job.toml"
    job_file.write_text('items = "a.parquet"\nclasses = "c.parquet"\nout = "o"\n[views]\na = "e"\n'
                        '[storage_options]\nkey = "SECRET"\n')
    s = load_settings(str(job_file))
    assert s.storage_options == {"key": "SECRET"}
    assert "SECRET" not in repr(s) and s.fingerprint() == s.replace(storage_options={}).fingerprint()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_local_row_group_read_keeps_no_file_mapping(tmp_path):
    """Local row groups are read through a memory map (no read-buffer copy); the columns must be
    copies and the map closed, or the file's pages would sit in the worker's RSS."""
    from pairwise_dask.io import read_row_group

    make_catalog(tmp_path, n=300, row_group=100)
    path = str(tmp_path / "items.parquet")
    want = pq.ParquetFile(path).read_row_group(1, columns=["id", "emb_a"])
    got = read_row_group(path, 1, ["id", "emb_a"])
    assert got.column("emb_a").equals(want.column("emb_a")) and got.column("id").to_pylist() == want.column("id").to_pylist()
    # once the read's own objects are gone (collected at once, barring a reference cycle, which a
    # busy full-suite run showed once): no mapping of the file is left behind
    import gc

    gc.collect()
    assert path not in Path("/proc/self/maps").read_text()


def test_abort_removes_the_staging_folder_and_what_begin_created(tmp_path):
    from pairwise_dask.io import STAGING_PREFIX, Commit

    out = tmp_path / "new" / "out"
    c = Commit(str(out), fingerprint="f", overwrite=False)
    c.check_target()
    staging = c.begin()
    (Path(staging.path) / "labels").mkdir()
    c.abort()
    assert not (tmp_path / "new").exists()  # begin made both folders; abort leaves nothing
    out.mkdir(parents=True)
    c = Commit(str(out), fingerprint="f", overwrite=False)
    c.begin()
    c.abort()
    assert out.is_dir() and not [p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_publish_makes_the_outputs_durable_before_and_after_summary_json(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename is on disk only once its folder is fsynced: without that, a power cut after a
    reported success can bring back a folder without the new outputs, or with a ``summary.json``
    whose outputs were lost. ``publish`` must fsync OUT once the outputs are in place (before
    ``summary.json`` is) and again once ``summary.json`` is."""
    from pairwise_dask.io import Commit

    out = tmp_path / "out"
    synced: list[tuple[bool, bool]] = []  # per fsync of OUT: (labels/ in place, summary.json in place)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st, want = os.fstat(fd), out.stat()
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            synced.append(((out / "labels").exists(), (out / "summary.json").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    c = Commit(str(out), fingerprint="f", overwrite=False)
    c.check_target()
    staging = Path(c.begin().path)
    (staging / "labels").mkdir()
    (staging / "labels" / "part.00000.parquet").write_bytes(b"labels")
    (staging / "summary.json").write_text(json.dumps({"fingerprint": "f"}))
    c.publish()
    assert (True, False) in synced and synced[-1] == (True, True), synced


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_folder_of_items_skips_hidden_and_underscore_entries(tmp_path: Path, where: str) -> None:
    """Writers leave work files beside a dataset's parts (Spark's ``_temporary/`` folder of
    unfinished parts, ``_``-prefixed and hidden files): reading them would label some items twice
    or read half-written files, so an items folder means its visible ``.parquet`` files only."""
    from pairwise_dask.io import parquet_files

    entries = ["part-0.parquet", "sub/part-1.parquet", "_temporary/0/part-2.parquet", "_part-3.parquet",
               ".part-4.parquet", "sub/.hidden/part-5.parquet", "notes.txt"]
    if where == "local":
        root = str(tmp_path / "items")
        for e in entries:
            (tmp_path / "items" / e).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "items" / e).write_bytes(b"PAR1")
    else:
        root = "memory://pw-files/items"
        for e in entries:
            fsspec.filesystem("memory").pipe(f"/pw-files/items/{e}", b"PAR1")
    try:
        found = parquet_files(root)
        assert [f[f.index("/items/") + len("/items/"):] for f in found] == ["part-0.parquet", "sub/part-1.parquet"]
    finally:
        if where == "memory":
            fsspec.filesystem("memory").rm("/pw-files", recursive=True)


def test_urls_in_a_job_file_are_kept_as_written(tmp_path: Path) -> None:
    """Relative paths in a job file resolve against its folder, but a URL is not a relative path:
    ``s3://bucket/items`` must reach fsspec as written, not as ``<job folder>/s3:/bucket/items``."""
    job_file = tmp_path / "jobs" / "job.toml"
    job_file.parent.mkdir()
    job_file.write_text('items = "s3://bucket/catalog/"\nclasses = "classes.parquet"\n'
                        'out = "memory://pw-out/run"\n[views]\na = "emb_a"\n')
    s = load_settings(str(job_file))
    assert s.items == "s3://bucket/catalog/" and s.out == "memory://pw-out/run"
    assert s.classes == str(tmp_path / "jobs" / "classes.parquet")


def test_an_object_store_without_its_package_gets_one_line(tmp_path, capsys):
    """s3://… without s3fs installed was two chained tracebacks ending in fsspec's ImportError;
    now one line naming the package (and the extra that installs it), exit code 2."""
    import importlib.util

    from catalogs import make_catalog
    from pairwise_dask import cli

    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here")
    cat = make_catalog(tmp_path / "data", n=50)
    rc = cli.main(["run", "--items", cat["items"], "--classes", cat["classes"], "--views", "a=emb_a,b=emb_b",
                   "--out", "s3://some-bucket/out", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("pairwise-dask: error: file s3://some-bucket/out: needs a file-system package"), err
    assert 'pip install s3fs (or pip install "pairwise-dask[s3]")' in err, err
