"""fsspec URLs for inputs and outputs: the whole job on ``memory://`` (an in-process cluster, since
a memory filesystem lives in one process), and the commit contract there."""
from __future__ import annotations

import json
import logging
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
