"""Bad input ends the run with one clear message and leaves the output folder exactly as it was.

Every case of issue 6's list runs the real job in-process on a shared one-worker cluster (the
per-partition checks run on a worker process, as in production) twice: into an OUT that does not
exist, and into an OUT holding a previous complete result (with ``overwrite``, so that only the bad
input can stop the run). A representative subset also runs the command line as a subprocess, for
the exit code and the single line on stderr.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pytest
import pyarrow.parquet as pq

from fixtures import (Catalog, damage_pages, fsl, make_catalog, matrix, replace_column, run_cli, snapshot,
                      var_list)
from pairwise_dask import cluster as job_cluster
from pairwise_dask import job
from pairwise_dask.config import load_settings
from pairwise_dask.errors import COMMAND_LINE, BadInputError


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """One worker process, one thread: real pickling across processes, started once per module."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as c:
        c.run(job_cluster._quiet_bad_input_logs)
        yield c


@pytest.fixture(scope="module")
def previous_result(tmp_path_factory: pytest.TempPathFactory, client: Any) -> Path:
    """A complete result of another job, copied into OUT by the tests that need one."""
    folder = tmp_path_factory.mktemp("previous")
    cat = make_catalog(folder / "data", seed=42)
    out = folder / "out"
    job.run(cat.settings(out, refine=0), client=client)  # refine = 0: a model `update` can extend
    assert (out / "summary.json").exists()
    return out


# --- the cases: each edits a good catalog and returns settings overrides -------------------

Edit = Callable[[Catalog], dict[str, Any] | None]


@dataclass(frozen=True)
class Case:
    name: str
    edit: Edit
    file: str           # "items", "classes", "job" or "out": which path the message must name
    column: str | None  # the column the message must name
    row: Any            # the first offending row id (None: the error is about the whole column/file)
    what: str           # a phrase of the message


def _edit_view(col: str, change: Callable[[np.ndarray], None]) -> Edit:
    def edit(cat: Catalog) -> None:
        x = matrix(cat.items, col)
        change(x)
        cat.write_items(replace_column(cat.items, col, fsl(x)))
    return edit


def _set(x: np.ndarray, i: int, j: int | slice, v: float) -> None:
    x[i, j] = v


def _missing(cat: Catalog) -> None:
    cat.write_items(cat.items.drop_columns(["emb_b"]))


def _non_list(cat: Catalog) -> None:
    cat.write_items(replace_column(cat.items, "emb_b", pa.array(np.ones(cat.items.num_rows))))


def _mixed(cat: Catalog) -> None:
    rows = list(matrix(cat.items, "emb_b"))
    rows[11] = rows[11][:5]
    cat.write_items(replace_column(cat.items, "emb_b", var_list(rows)))


def _dim_fixed(cat: Catalog) -> None:
    cat.write_items(replace_column(cat.items, "emb_b", fsl(matrix(cat.items, "emb_b")[:, :6])))


def _dim_list(cat: Catalog) -> None:  # list<float> of equal lengths: only a worker can see d
    cat.write_items(replace_column(cat.items, "emb_b", var_list(list(matrix(cat.items, "emb_b")[:, :6]))))


def _dim_packed(marked: bool) -> Edit:
    """Packed float32 embeddings of the wrong width (6 marked, 5 unmarked): the width is in the schema."""
    def edit(cat: Catalog) -> None:
        from pairwise_dask.pack import pack_column
        from pairwise_dask.arrays import PACKED_FLOAT_KEY

        packed = pack_column(fsl(matrix(cat.items, "emb_b")[:, :6 if marked else 5]), name="emb_b")
        table = replace_column(cat.items, "emb_b", packed)
        if marked:
            i = table.column_names.index("emb_b")
            table = table.cast(table.schema.set(i, table.field(i).with_metadata({PACKED_FLOAT_KEY: "float32"})))
        cat.write_items(table)
    return edit


def _duplicate(i: int, j: int, partition_rows: int) -> Edit:
    def edit(cat: Catalog) -> dict[str, Any]:
        ids = cat.items.column("id").to_pylist()
        ids[j] = ids[i]
        cat.write_items(replace_column(cat.items, "id", pa.array(ids)))
        return {"partition_rows": partition_rows}
    return edit


def _null_id(cat: Catalog) -> None:
    ids = cat.items.column("id").to_pylist()
    ids[13] = None
    cat.write_items(replace_column(cat.items, "id", pa.array(ids, pa.string())))


def _empty(cat: Catalog) -> None:
    cat.write_items(cat.items.slice(0, 0))


def _null_inside(cat: Catalog) -> None:
    rows = [list(r) for r in matrix(cat.items, "emb_b")]
    rows[21][3] = None
    cat.write_items(replace_column(cat.items, "emb_b", pa.array(rows, pa.list_(pa.float32()))))


def _int_values(cat: Catalog) -> None:
    rows = [[int(v * 100) for v in r] for r in matrix(cat.items, "emb_b")]
    cat.write_items(replace_column(cat.items, "emb_b", pa.array(rows, pa.list_(pa.int32()))))


def _null_class_name(cat: Catalog) -> None:
    names = cat.classes.column("name").to_pylist()
    names[2] = None
    cat.write_classes(replace_column(cat.classes, "name", pa.array(names, pa.string())))


def _csv_items(cat: Catalog) -> None:
    cat.items_path.write_text("id,emb_a,emb_b\nit-0,0.1,0.2\n")


def _one_class(cat: Catalog) -> None:
    cat.write_classes(cat.classes.slice(0, 1))


def _duplicate_class(cat: Catalog) -> None:
    cat.write_classes(replace_column(cat.classes, "name", pa.array(["class0", "class1", "class0"])))


def _class_views(cat: Catalog) -> None:
    cat.write_classes(cat.classes.rename_columns(["name", "img", "txt"]))


def _class_nan(cat: Catalog) -> None:
    c = matrix(cat.classes, "emb_a")
    c[1, 0] = np.nan
    cat.write_classes(replace_column(cat.classes, "emb_a", fsl(c)))


def _class_dim(cat: Catalog) -> None:
    cat.write_classes(replace_column(cat.classes, "emb_a", fsl(matrix(cat.classes, "emb_a")[:, :5])))


def _unknown_annotation(cat: Catalog) -> None:
    labels = cat.items.column("label").to_pylist()
    labels[17] = "no such class"
    labels[30] = labels[40] = "another"  # the error lists the partition's distinct unknown values
    cat.write_items(replace_column(cat.items, "label", pa.array(labels)))


def _miscased_annotation(cat: Catalog) -> None:
    labels = cat.items.column("label").to_pylist()
    labels[17] = "CLASS1 "
    cat.write_items(replace_column(cat.items, "label", pa.array(labels)))


def _float_ids(cat: Catalog) -> None:
    cat.write_items(replace_column(cat.items, "id", pa.array(np.arange(cat.items.num_rows) + 0.5)))


CASES = [
    Case("missing column", _missing, "items", "emb_b", None, "is missing"),
    Case("non-list column", _non_list, "items", "emb_b", None, "not a list of floats"),
    Case("mixed lengths", _mixed, "items", "emb_b", "it-00011", "mixed lengths (8 and 5)"),
    Case("dimension != classes (fixed)", _dim_fixed, "items", "emb_b", None, "dimension 6"),
    # the first row and the footer's value count give a list column's dimension: refused up front
    Case("dimension != classes (list)", _dim_list, "items", "emb_b", None, "has dimension 6 but the classes"),
    Case("dimension != classes (packed)", _dim_packed(True), "items", "emb_b", None,
         "has dimension 6 but the classes"),
    Case("dimension != classes (packed, unmarked)", _dim_packed(False), "items", "emb_b", None,
         "fixed_size_binary[20], which cannot hold the classes' 8 floats (as float32 it holds 5 values)"),
    Case("NaN", _edit_view("emb_a", lambda x: _set(x, 5, 2, np.nan)), "items", "emb_a", "it-00005", "NaN"),
    Case("NaN found in the quantile pass", lambda cat: (_edit_view("emb_a", lambda x: _set(x, 33, 1, np.nan))(cat),
                                                        {"cos_quantile": 0.2})[1], "items", "emb_a", "it-00033", "NaN"),
    Case("+inf", _edit_view("emb_b", lambda x: _set(x, 7, 0, np.inf)), "items", "emb_b", "it-00007", "infinite"),
    Case("-inf", _edit_view("emb_a", lambda x: _set(x, 40, 3, -np.inf)), "items", "emb_a", "it-00040", "infinite"),
    Case("all-zero vector", _edit_view("emb_b", lambda x: _set(x, 9, slice(None), 0.0)), "items", "emb_b",
         "it-00009", "all-zero"),
    Case("duplicate id within a partition", _duplicate(3, 20, 0), "items", "id", "it-00003", "more than once"),
    Case("duplicate id across partitions", _duplicate(3, 50, 10), "items", "id", "it-00003", "more than once"),
    Case("null id", _null_id, "items", "id", None, "null id (the row after id 'it-00012')"),
    Case("float ids", _float_ids, "items", "id", None, "strings or integers"),
    Case("empty catalog", _empty, "items", None, None, "empty catalog"),
    Case("annotation column missing", lambda cat: {"label": "Label"}, "items", "Label", None, "is missing"),
    Case("annotation not a class", _unknown_annotation, "items", "label", "it-00017",
         "2 values of this partition are not classes: 'no such class', 'another'"),
    Case("annotation differs from a class in case", _miscased_annotation, "items", "label", "it-00017",
         "'CLASS1 ' looks like the class 'class1': case or spaces differ"),
    Case("items not Parquet (a CSV)", _csv_items, "items", None, None, "is not a readable Parquet file"),
    Case("null inside an embedding", _null_inside, "items", "emb_b", "it-00021", "null value inside an embedding"),
    Case("integer embeddings", _int_values, "items", "emb_b", None, "holds int32, not floats"),
    Case("null class name", _null_class_name, "classes", "name", None, "null class name"),
    Case("no views", lambda cat: {"views": ()}, "job", None, None, "no views given"),
    Case("view name not an identifier", lambda cat: {"views": (("a b", "emb_a"),)}, "job", None, None,
         "view name 'a b' is not a plain identifier"),
    Case("fit_on annotation without one", lambda cat: {"fit_on": "annotation", "label": ""}, "job", None, None,
         "fit_on = annotation needs the annotation column"),
    Case("one class", _one_class, "classes", None, None, "at least two"),
    Case("duplicate class names", _duplicate_class, "classes", "name", None, "'class0' appears twice"),
    Case("class views != item views", _class_views, "classes", None, None, "no embedding column for view 'a'"),
    Case("class prompt NaN", _class_nan, "classes", "emb_a", "class1", "NaN"),
    Case("class dimension != items", _class_dim, "items", "emb_a", None, "has 5"),
    Case("view named twice", lambda cat: {"views": (("a", "emb_a"), ("a", "emb_b"))}, "job", None, None,
         "view 'a' is named twice"),
    Case("column used by two views", lambda cat: {"views": (("a", "emb_a"), ("b", "emb_a"))}, "job", None,
         None, "used by two views"),
    Case("dims > d", lambda cat: {"dims": 9}, "job", None, None, "dims = 9 is larger than d = 8"),
]


def _expected_file(case: Case, cat: Catalog, out: Path) -> str:
    return {"items": str(cat.items_path), "classes": str(cat.classes_path), "job": COMMAND_LINE,
            "out": str(out)}[case.file]


def _check_message(e: BadInputError, case: Case, cat: Catalog, out: Path) -> None:
    msg = str(e)
    assert "\n" not in msg, msg  # one message, one line
    assert e.file == _expected_file(case, cat, out), msg
    assert msg.startswith(e.file if e.file == COMMAND_LINE else f"file {e.file}")
    assert e.column == case.column, msg
    if case.column:
        assert repr(case.column) in msg
    assert e.row == case.row, msg
    if case.row is not None:
        assert repr(case.row) in msg
    assert case.what in msg, msg
    assert e.hint, f"no advice on what to do: {msg}"


@pytest.mark.parametrize("previous", [False, True], ids=["new-out", "previous-result"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_leaves_out_as_it_was(case: Case, previous: bool, tmp_path: Path, client: Any,
                                        previous_result: Path) -> None:
    cat = make_catalog(tmp_path / "data")
    out = tmp_path / "out"
    if previous:
        shutil.copytree(previous_result, out)
    before = snapshot(out)
    overrides = case.edit(cat) or {}
    with pytest.raises(BadInputError) as info:
        # overwrite: only the bad input may stop the run, the previous result must survive anyway
        job.run(cat.settings(out, **overrides, overwrite=previous), client=client)
    _check_message(info.value, case, cat, out)
    assert snapshot(out) == before


@pytest.mark.parametrize("what", ["missing", "empty folder", "types differ", "id types differ", "out is a file"])
def test_paths_that_are_not_a_catalog_or_an_output_folder(what: str, tmp_path: Path) -> None:
    """Errors about whole paths name the path (or the file that differs) and leave nothing behind."""
    cat = make_catalog(tmp_path / "data")
    out, items = tmp_path / "out", str(cat.items_path)
    phrase, file = "", items
    if what == "missing":
        items = file = str(tmp_path / "nowhere.parquet")
        phrase = "does not exist"
    elif what == "empty folder":
        (tmp_path / "empty").mkdir()
        items = file = str(tmp_path / "empty")
        phrase = "holds no Parquet files"
    elif what == "types differ":
        folder = tmp_path / "two"
        folder.mkdir()
        shutil.copy(cat.items_path, folder / "a.parquet")
        rows = list(matrix(cat.items, "emb_a").astype(np.float64))
        pq.write_table(replace_column(cat.items, "emb_a", pa.array(rows, pa.list_(pa.float64()))), folder / "b.parquet")
        items, file = str(folder), str(folder / "b.parquet")
        phrase = "has type list<element: double> here but fixed_size_list"
    elif what == "id types differ":  # int64 ids in one file, int32 in the next: once a raw ArrowInvalid
        cat = make_catalog(tmp_path / "int-ids", int_ids=True)
        folder = tmp_path / "two"
        folder.mkdir()
        pq.write_table(cat.items.slice(0, 30), folder / "a.parquet")
        b = cat.items.slice(30)
        pq.write_table(b.set_column(0, "id", b.column("id").cast(pa.int32())), folder / "b.parquet")
        items, file = str(folder), str(folder / "b.parquet")
        phrase = "has type int32 here but int64"
    else:
        out.write_text("not a folder")
        file, phrase = str(out), "exists and is not a folder"
    before = snapshot(tmp_path)
    with pytest.raises(BadInputError, match=re.escape(phrase)) as info:
        job.run(cat.settings(out, items=items))
    assert info.value.file == file and info.value.hint
    # a folder is called one ("file /path/empty: holds no Parquet files" read as if it were a file)
    assert str(info.value).startswith(f"{'folder' if what == 'empty folder' else 'file'} {file}")
    assert snapshot(tmp_path) == before


def test_a_null_id_names_the_file_of_a_folder_that_holds_it(tmp_path: Path, client: Any) -> None:
    """A worker sees a partition, not a file, so the job looks a null id up in the items' files to
    name the one to fix: in a folder of several files, the file holding the null id (here the
    second), not the first one read."""
    cat = make_catalog(tmp_path / "data")
    ids = cat.items.column("id").to_pylist()
    ids[43] = None
    table = replace_column(cat.items, "id", pa.array(ids, pa.string()))
    folder = tmp_path / "items"
    folder.mkdir()
    pq.write_table(table.slice(0, 30), folder / "a.parquet")
    pq.write_table(table.slice(30), folder / "b.parquet")
    out = tmp_path / "out"
    with pytest.raises(BadInputError, match=re.escape("null id (the row after id 'it-00042')")) as info:
        job.run(cat.settings(out, items=str(folder)), client=client)
    assert info.value.file == str(folder / "b.parquet") and info.value.column == "id"
    assert str(info.value).startswith(f"file {folder / 'b.parquet'}, column 'id': ")
    assert not out.exists()


def test_a_column_missing_from_a_later_file_is_named(tmp_path: Path, client: Any) -> None:
    """The columns are checked against the first file's footer before any work; a later file that
    lacks one (here the annotation) is found by the worker reading it, and named with its columns
    (it was a KeyError from pyarrow)."""
    cat = make_catalog(tmp_path / "data")
    folder = tmp_path / "items"
    folder.mkdir()
    pq.write_table(cat.items.slice(0, 30), folder / "a.parquet")
    pq.write_table(cat.items.slice(30).drop_columns(["label"]), folder / "b.parquet")
    out = tmp_path / "out"
    with pytest.raises(BadInputError, match="is not a column of this file") as info:
        job.run(cat.settings(out, items=str(folder)), client=client)
    assert info.value.file == str(folder / "b.parquet") and info.value.column == "label"
    assert "this one has id, " in str(info.value)
    assert not out.exists()


def test_the_id_column_as_the_annotation_is_a_bad_annotation_not_a_crash(tmp_path: Path, client: Any) -> None:
    """label = id asks for the id column twice; it is read once (as pyarrow does) and its values
    are then refused as annotations, naming the first row."""
    cat = make_catalog(tmp_path / "data")
    with pytest.raises(BadInputError, match=r"column 'id', row id 'it-00000': holds the annotation 'it-00000'"):
        job.run(cat.settings(tmp_path / "out", label="id"), client=client)


def test_nonexistent_parents_of_out_are_not_left_behind(tmp_path: Path, client: Any) -> None:
    cat = make_catalog(tmp_path / "data")
    _edit_view("emb_a", lambda x: _set(x, 5, 2, np.nan))(cat)
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(BadInputError, match="NaN"):
        job.run(cat.settings(out), client=client)
    assert not (tmp_path / "a").exists()


def test_existing_empty_out_is_kept(tmp_path: Path, client: Any) -> None:
    cat = make_catalog(tmp_path / "data")
    _null_id(cat)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BadInputError, match="null id"):
        job.run(cat.settings(out), client=client)
    assert out.is_dir() and not any(out.iterdir())


@pytest.mark.parametrize("previous", [False, True], ids=["new-out", "previous-result"])
def test_apply_finds_bad_input_in_its_only_pass(tmp_path: Path, client: Any, previous_result: Path,
                                                 previous: bool) -> None:
    """``apply`` has no statistics pass: NaN and duplicates are caught while labelling, and the
    label parts already written to the staging folder must vanish with it."""
    cat = make_catalog(tmp_path / "data")
    out = tmp_path / "out"
    if previous:
        shutil.copytree(previous_result, out)
    before = snapshot(out)
    for edit, what, row in [(_duplicate(3, 50, 10), "more than once", "it-00003"),
                            (_edit_view("emb_b", lambda x: _set(x, 55, 1, np.nan)), "NaN", "it-00055")]:
        new = make_catalog(tmp_path / f"new-{what[:4]}", seed=1)
        overrides = edit(new) or {}
        with pytest.raises(BadInputError, match=what) as info:
            job.apply(new.settings(out, **overrides, overwrite=previous), str(previous_result / "model"),
                      client=client)
        assert info.value.row == row and info.value.file == str(new.items_path)
        assert snapshot(out) == before


def test_out_holding_a_different_job(tmp_path: Path, client: Any, previous_result: Path) -> None:
    cat = make_catalog(tmp_path / "data")
    out = tmp_path / "out"
    shutil.copytree(previous_result, out)
    before = snapshot(out)
    with pytest.raises(BadInputError) as info:
        job.run(cat.settings(out), client=client)
    prev = previous_result.parent / "data"  # the other job's catalog; it also ran refine = 0
    assert str(info.value) == (f"folder {out}: already holds the output of a different job (items: "
                               f"{prev / 'items.parquet'} → {cat.items_path}; classes: {prev / 'classes.parquet'} → "
                               f"{cat.classes_path}; refine: 0 → 2). "
                               "Choose another --out, or pass --overwrite to replace it")
    assert snapshot(out) == before
    job.run(cat.settings(out, overwrite=True), client=client)  # and --overwrite replaces it
    assert snapshot(out) != before


def test_out_holding_foreign_files(tmp_path: Path) -> None:
    cat = make_catalog(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(BadInputError, match="not a pairwise-dask output"):
        job.run(cat.settings(out))  # refused before any cluster starts
    assert snapshot(out) == before


def test_files_of_the_users_inside_an_output_folder_are_never_replaced(tmp_path: Path, client: Any,
                                                                        previous_result: Path) -> None:
    """A run replaces labels/, disagreements/ and model/ whole: --overwrite deleted a file the user
    had put in labels/, though the hint promised only pairwise-dask's own entries are replaced."""
    cat = make_catalog(tmp_path / "data")
    out = tmp_path / "out"
    shutil.copytree(previous_result, out)
    (out / "labels" / "mine.txt").write_text("mine")
    (out / "model" / "notes.md").write_text("mine")
    (out / "labels" / ".DS_Store").write_text("a file browser's")  # hidden: not the user's work
    before = snapshot(out)
    for overwrite in (False, True):
        with pytest.raises(BadInputError, match=r"holds files pairwise-dask did not write inside its own output "
                                                r"folders \(labels/mine.txt, model/notes.md\)"):
            job.run(cat.settings(out, overwrite=overwrite), client=client)
        assert snapshot(out) == before
    (out / "labels" / "mine.txt").unlink()
    (out / "model" / "notes.md").unlink()
    job.run(cat.settings(out, overwrite=True), client=client)  # what is left is ours: replaced
    assert (out / "summary.json").exists() and not (out / "labels" / ".DS_Store").exists()


# --- the job file ---------------------------------------------------------------------------

JOB_CASES = [
    # (name, job file edits, phrase of the message, phrase of the hint)
    ("typo in a key", {"method": {"dimz": 4}}, "unknown key 'method.dimz'", "Did you mean 'method.dims'?"),
    ("typo in a section", {"raw": "[metod]\nseed = 1\n"}, "unknown key 'metod'", "Did you mean 'method'?"),
    ("typo at top level", {"top": {"overwrit": True}}, "unknown key 'overwrit'", "Did you mean 'overwrite'?"),
    ("wrong type", {"method": {"seed": "zero"}}, "method.seed = 'zero' is not int", "seed"),
    ("wrong type (bool)", {"top": {"overwrite": "yes"}}, "overwrite = 'yes' is not bool", "overwrite"),
    ("dims 0", {"method": {"dims": 0}}, "method.dims = 0.0 must be a whole number", "dims"),
    ("dims negative", {"method": {"dims": -3}}, "method.dims = -3.0 must be", "dims"),
    ("dims not whole", {"method": {"dims": 2.5}}, "method.dims = 2.5 must be a whole number", "dims"),
    ("cos_min > 1", {"method": {"cos_min": 1.5}}, "method.cos_min = 1.5 must be ≤ 1.0", "cos_min"),
    ("diff_min < 0", {"method": {"diff_min": -0.1}}, "method.diff_min = -0.1 must be ≥ 0.0", "diff_min"),
    ("cos_quantile > 1", {"method": {"cos_quantile": 1.5}}, "method.cos_quantile = 1.5 must be ≤ 1.0",
     "cos_quantile"),
    ("diff_quantile < 0", {"method": {"diff_quantile": -0.2}}, "method.diff_quantile = -0.2 must be ≥ 0.0",
     "diff_quantile"),
    ("min_items 0", {"method": {"min_items": 0}}, "method.min_items = 0 must be ≥ 1", "min_items"),
    ("unknown mode", {"method": {"mode": "brackett"}}, "method.mode = 'brackett' must be one of", "mode"),
    ("negative partition_rows", {"cluster": {"partition_rows": -1}}, "must be ≥ 0", "partition_rows"),
    ("memory_limit not a size", {"cluster": {"memory_limit": "lots"}}, "cluster.memory_limit = 'lots' is not a size",
     "memory_limit"),
    ("view named twice (TOML)", {"raw": "[views]\na = \"emb_b\"\n"}, "is not valid TOML", "at that line"),
]


@pytest.mark.parametrize("edits,what,hint", [c[1:] for c in JOB_CASES], ids=[c[0] for c in JOB_CASES])
def test_job_file_errors(tmp_path: Path, edits: dict, what: str, hint: str | None) -> None:
    cat = make_catalog(tmp_path / "data")
    out = tmp_path / "out"
    path = cat.job_file(out, **edits)
    with pytest.raises(BadInputError) as info:
        load_settings(str(path))
    msg = str(info.value)
    assert info.value.file == str(path) and msg.startswith(f"file {path}: ")
    assert what in msg, msg
    if hint:
        assert hint in (info.value.hint or ""), msg
    assert not out.exists()


def test_a_flags_bad_value_is_the_command_lines_not_the_job_files(tmp_path: Path) -> None:
    cat = make_catalog(tmp_path / "data")
    path = cat.job_file(tmp_path / "out")
    for flag, what in [({"memory_limit": "4 lots"}, "cluster.memory_limit = '4 lots'"),
                       ({"seed": -1}, "method.seed = -1 must be ≥ 0")]:
        with pytest.raises(BadInputError, match="^the command line: " + re.escape(what)) as info:
            load_settings(str(path), flag)
        assert info.value.file == COMMAND_LINE
    for ok in ("4GiB", "500 MB", "0.4", "auto"):
        assert load_settings(str(path), {"memory_limit": ok}).memory_limit == ok


def test_an_unreachable_scheduler_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    """No traceback, no output folder: the address, what happened and what to do."""
    monkeypatch.setattr(job_cluster, "SCHEDULER_TIMEOUT", 1)
    cat = make_catalog(tmp_path / "data")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BadInputError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}") as info:
        job.run(cat.settings(tmp_path / "out", scheduler=f"tcp://127.0.0.1:{port}"))
    assert "cluster/README.md" in info.value.hint
    assert not (tmp_path / "out").exists()


def test_dims_default_is_capped_at_d_and_explicit_dims_up_to_d_run(tmp_path: Path, client: Any) -> None:
    """The default m = 100 becomes d when d is smaller; an explicit dims ≤ d or a fraction run."""
    cat = make_catalog(tmp_path / "data")
    for i, dims in enumerate([None, 8, 0.5]):
        summary = job.run(cat.settings(tmp_path / f"out{i}", dims=dims), client=client)
        assert summary["labelled_items"] == 60


# --- the command line: exit code 2 and one line on stderr ----------------------------------

def _cli_case(tmp_path: Path, name: str) -> tuple[list[str], Path, str]:
    cat = make_catalog(tmp_path / "data")
    out = tmp_path / "out"
    if name == "unknown key":
        return [str(cat.job_file(out, method={"dimz": 4}))], out, "unknown key 'method.dimz'. Did you mean 'method.dims'?"
    if name == "wrong type":
        return [str(cat.job_file(out, method={"dims": "many"}))], out, "method.dims = 'many' is not float"
    if name == "dims > d":
        return [str(cat.job_file(out, method={"dims": 64}))], out, "dims = 64 is larger than d = 8"
    if name == "missing column":
        _missing(cat)
        return [str(cat.job_file(out))], out, "column 'emb_b': is missing"
    if name == "empty catalog":
        _empty(cat)
        return [str(cat.job_file(out))], out, "holds no rows (empty catalog)"
    if name == "NaN":  # found on a worker process of the CLI's own LocalCluster
        _edit_view("emb_a", lambda x: _set(x, 5, 2, np.nan))(cat)
        return [str(cat.job_file(out))], out, "column 'emb_a', row id 'it-00005': holds NaN"
    if name == "duplicate across partitions":
        _duplicate(3, 50, 10)(cat)
        return ([str(cat.job_file(out, cluster={"partition_rows": 10}))], out,
                "column 'id', row id 'it-00003': appears more than once")
    if name == "out inside a file":  # refused before the cluster starts, not a NotADirectoryError traceback
        (tmp_path / "afile").write_text("not a folder")
        out = tmp_path / "afile" / "sub"
        return [str(cat.job_file(out))], out, f"cannot be created: {tmp_path / 'afile'} is a file, not a folder"
    if name == "out not writable":  # /proc takes no new folders, even from root
        out = Path("/proc/pairwise-dask-test-out")
        return [str(cat.job_file(out))], out, "cannot be written"
    if name == "damaged pages":  # the footer reads, a data page does not: found on a worker
        damage_pages(cat.items_path, "emb_a")
        return [str(cat.job_file(out))], out, "row group 0 cannot be read ("
    if name == "truncated classes":
        data = cat.classes_path.read_bytes()
        cat.classes_path.write_bytes(data[: len(data) // 2])
        return [str(cat.job_file(out))], out, "is not a readable Parquet file"
    raise KeyError(name)


CLI_CASES = ["unknown key", "wrong type", "dims > d", "missing column", "empty catalog", "NaN",
             "duplicate across partitions", "out inside a file", "out not writable", "truncated classes", "damaged pages"]


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_exit_code_and_single_message(tmp_path: Path, name: str) -> None:
    args, out, phrase = _cli_case(tmp_path, name)
    res = run_cli("run", *args, "--quiet")
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr  # no traceback, no worker log
    # the catalog's files are "file …", an output folder (made or not) "folder …"
    kind = "folder" if name in ("out inside a file", "out not writable") else "file"
    assert lines[0].startswith(f"pairwise-dask: error: {kind} ") and phrase in lines[0], lines[0]
    assert res.stdout == ""
    assert not out.exists()


def test_an_out_that_fails_halfway_leaves_no_folder_behind(tmp_path: Path) -> None:
    """The folders a run makes for --out go again when the last one cannot be made (a name over
    the file system's limit): mkdir made `new` before failing, and it was left behind."""
    cat = make_catalog(tmp_path / "data")
    out = tmp_path / "new" / ("z" * 300)
    res = run_cli("run", str(cat.job_file(out)), "--quiet")
    assert res.returncode == 2 and "cannot be written" in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
    assert not (tmp_path / "new").exists()


def test_cli_refuses_a_different_run_without_overwrite(tmp_path: Path, previous_result: Path) -> None:
    cat = make_catalog(tmp_path / "data")
    out = tmp_path / "out"
    shutil.copytree(previous_result, out)
    before = snapshot(out)
    res = run_cli("run", str(cat.job_file(out)), "--quiet")
    assert res.returncode == 2
    prev = previous_result.parent / "data"
    assert res.stderr.strip() == (f"pairwise-dask: error: folder {out}: already holds the output of a different "
                                  f"job (items: {prev / 'items.parquet'} → {cat.items_path}; classes: "
                                  f"{prev / 'classes.parquet'} → {cat.classes_path}; refine: 0 → 2). "
                                  "Choose another --out, or pass --overwrite to replace it")
    assert snapshot(out) == before


@pytest.mark.parametrize("cache", ["off", "on"])
def test_checks_need_no_extra_pass(cache: str, tmp_path: Path, client: Any) -> None:
    """NaN, zero vectors and duplicate ids are checked inside the passes the job makes anyway:
    a clean run reads every partition exactly twice (once with the decoded items kept in worker
    memory) and never runs the duplicate lookup (that only runs, on the id column alone, once a
    duplicate hash has been seen)."""
    from collections import Counter

    from dask.utils import key_split
    from distributed import get_task_stream

    cat = make_catalog(tmp_path / "data", row_group_size=20)
    with get_task_stream(client) as ts:
        # the article's two passes: refine rounds (2 each), the fused keep share and the rotation
        # are method passes, not checks
        summary = job.run(cat.settings(tmp_path / "out", refine=0, fit_on="view", rotate="none", cache=cache),
                          client=client)
    tasks = Counter(key_split(t["key"]) for t in ts.data)
    parts = summary["items"]["partitions"]
    assert parts == 3
    assert tasks["read_parquet"] == (2 if cache == "off" else 1) * parts
    assert tasks["decode"] == (0 if cache == "off" else parts)
    assert tasks["statistics_partition"] == parts and tasks["label_and_write"] == parts
    assert "ids_with_hash" not in tasks


@pytest.mark.parametrize("command", ["fit", "update"])
def test_fit_and_update_refuse_bad_input_the_same_way(command: str, tmp_path: Path, client: Any,
                                                      previous_result: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(previous_result, out)
    before = snapshot(out)
    for edit, what, row in [(_duplicate(3, 50, 10), "more than once", "it-00003"),
                            (_edit_view("emb_a", lambda x: _set(x, 44, 0, np.inf)), "infinite", "it-00044")]:
        cat = make_catalog(tmp_path / f"data-{what[:4]}", seed=3)
        s = cat.settings(out, **(edit(cat) or {}), overwrite=True, refine=0)
        base = str(previous_result / "model") if command == "update" else None
        with pytest.raises(BadInputError, match=what) as info:
            job.fit(s, client=client, base_model=base)
        assert info.value.row == row and info.value.file == str(cat.items_path)
        assert snapshot(out) == before


def test_apply_with_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    r = run_cli("apply", str(tmp_path / "m"), "--items", str(tmp_path / "none.parquet"), "--views", "a=emb_a",
                "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "is not a saved model (no params.json" in r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("damaged", ["moments.parquet", "classes.parquet"])
def test_apply_with_a_damaged_model_file(tmp_path: Path, previous_result: Path, damaged: str) -> None:
    """A model file cut short was an ArrowInvalid traceback from the model's load."""
    model = tmp_path / "model"
    shutil.copytree(previous_result / "model", model)
    data = (model / damaged).read_bytes()
    (model / damaged).write_bytes(data[: len(data) // 2])
    cat = make_catalog(tmp_path / "data")
    r = run_cli("apply", str(model), "--items", str(cat.items_path), "--views", "a=emb_a,b=emb_b",
                "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and f"file {model / damaged}: is not a readable Parquet file" in r.stderr, r.stderr
    assert "fit it again" in r.stderr and r.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_the_refusal_names_what_differs() -> None:
    from pairwise_dask.io import _differences

    now = {"items": "i.parquet", "classes": "c.parquet", "views": {"a": "emb_a"},
           "method": {"keep": 0.4, "rotate_dims": 0.0, "keep_sample": 131072, "seed": 0}}
    old = {"items": {"path": "i.parquet"}, "classes": {"path": "c.parquet"}, "views": {"a": "emb_a"},
           "method": {"keep": 0.5, "seed": 0}, "version": "0.0.9"}
    # options the old run did not record count at their value before they existed (rotate_dims 0)
    assert _differences(old, now) == "keep: 0.5 → 0.4; keep_sample: 0 → 131072"
    assert _differences(old, now, most=1) == "keep: 0.5 → 0.4; and 1 more"
    same = {**old, "method": {"keep": 0.4, "seed": 0, "keep_sample": 131072}}
    assert _differences(same, now) == "written by pairwise-dask 0.0.9"  # same options: another release
    from pairwise_dask import __version__
    assert _differences({**same, "version": __version__}, now) == ""  # e.g. another label column
    assert _differences({}, {"method": {"seed": 1}}) == "seed: (not set) → 1"


def _bad_rows_in_three_partitions(folder: Path) -> Catalog:
    """120 items in 6 row groups of 20, bad rows in partitions 1 (inf), 3 (annotation), 5 (NaN)."""
    cat = make_catalog(folder, n=120, row_group_size=20)
    x = matrix(cat.items, "emb_a")
    x[25, 0], x[105, 1] = np.inf, np.nan
    labels = cat.items.column("label").to_pylist()
    labels[65] = "no such class"
    table = replace_column(replace_column(cat.items, "emb_a", fsl(x)), "label", pa.array(labels))
    cat.write_items(table, row_group_size=20)
    return cat


def test_bad_rows_in_several_partitions_name_the_first_partitions_row(tmp_path: Path, client: Any) -> None:
    """Which partition's task fails first depends on the workers' timing; the message must not:
    it names the first bad partition's row and says how many partitions hold bad rows."""
    cat = _bad_rows_in_three_partitions(tmp_path / "data")
    s = cat.settings(tmp_path / "out")
    with pytest.raises(BadInputError) as info:
        job.run(s, client=client)
    e = info.value
    assert (e.column, e.row, e.file) == ("emb_a", "it-00025", str(cat.items_path)), str(e)
    assert "infinite" in str(e) and "(the first of 3 partitions of 6 with bad rows)" in str(e), str(e)
    assert not (tmp_path / "out").exists()

    # the pass's own error named the last partition's row (as a faster worker can make it): the
    # rescan still names the first partition's, whatever the pass happened to see
    from pairwise_dask.io import item_parts

    prep = job.prepare(s)
    last = BadInputError("holds NaN or infinite values", column="emb_a", row="it-00105", hint="fix it")
    first = job._first_bad_partition(client, s, prep.spec, item_parts(s, prep.info), last, lambda _: None)
    assert (first.column, first.row) == ("emb_a", "it-00025")
    # an error that is not about a row of the items is left as it is
    setting = BadInputError("dims = 9 is larger than d = 8", hint="lower it")
    assert job._first_bad_partition(client, s, prep.spec, [], setting, lambda _: None) is setting

# --- arguments in the wrong place: one line that says what the path is and what to give --------

def _cli_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """The CLI's one error line (in-process: these are refused before any cluster starts)."""
    from pairwise_dask import cli

    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pairwise-dask: error: "), err
    return err


def _fake_model(folder: Path, views: list[str]) -> Path:
    """A folder that passes for a saved model until its arrays are read."""
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"views": views}))
    for f in ("classes.parquet", "moments.parquet", "masks.parquet"):
        (folder / f).write_bytes(b"")
    return folder


def test_a_parquet_file_or_utf16_text_as_the_job_file(tmp_path: Path, capsys) -> None:
    """`run part-0.parquet` (or an unquoted --items glob whose second file lands in the job's
    place) and a UTF-16 job file were UnicodeDecodeError tracebacks with exit status 1."""
    cat = make_catalog(tmp_path / "data")
    err = _cli_error(capsys, "run", str(cat.items_path))
    assert f"{cat.items_path}: is a Parquet file, not a TOML job file" in err
    assert f"--items {cat.items_path}" in err and "quote a glob" in err
    job_file = cat.job_file(tmp_path / "out")
    utf16 = tmp_path / "utf16.toml"
    utf16.write_bytes(job_file.read_text().encode("utf-16"))
    assert "is UTF-16 text; a TOML job file is UTF-8" in _cli_error(capsys, "run", str(utf16))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x00\x9c\xffjunk")
    assert "is not a TOML job file (not UTF-8 text" in _cli_error(capsys, "run", str(binary))
    bom = tmp_path / "bom.toml"  # a UTF-8 byte order mark (some editors write one) is fine
    bom.write_bytes(b"\xef\xbb\xbf" + job_file.read_bytes())
    assert load_settings(str(bom)).items == str(cat.items_path)


def test_a_folder_as_the_job_file_or_swapped_model_arguments(tmp_path: Path, capsys) -> None:
    """A folder as the job file was "the system refused a file operation … Is a directory … Free
    space or fix the permissions"; so was `apply JOB MODEL` (the job and the model swapped)."""
    cat = make_catalog(tmp_path / "data")
    err = _cli_error(capsys, "run", str(cat.folder))
    assert f"folder {cat.folder}: is a folder, not a job file" in err and f"--items {cat.folder}" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is a folder, not a job file. Give a TOML job file" in _cli_error(capsys, "run", str(empty))
    model = _fake_model(tmp_path / "run" / "model", ["a", "b"])
    job_file = cat.job_file(tmp_path / "out")
    for command in ("apply", "update"):
        err = _cli_error(capsys, command, str(job_file), str(model), "--out", str(tmp_path / "x"))
        assert f"folder {model}: is a saved model's folder, not a job file" in err
        assert "take the model folder first, then the job file: pairwise-dask apply MODEL [JOB]" in err
    # with --storage-options the model is read first: the job file in its place is named
    err = _cli_error(capsys, "apply", str(job_file), str(model), "--out", str(tmp_path / "x"),
                     "--storage-options", '{"anon": true}')
    assert f"file {job_file}: is a file, not a saved model's folder. Give the model/ folder first" in err
    assert not (tmp_path / "x").exists()


def test_a_model_path_that_does_not_exist_or_is_the_runs_folder(tmp_path: Path, capsys) -> None:
    """Both said "is not a saved model (no params.json, …)"."""
    cat = make_catalog(tmp_path / "data")
    args = ["--items", str(cat.items_path), "--views", "a=emb_a,b=emb_b", "--out", str(tmp_path / "x")]
    err = _cli_error(capsys, "apply", str(tmp_path / "nothere" / "model"), *args)
    assert f"{tmp_path / 'nothere' / 'model'}: does not exist. Check the model path" in err
    model = _fake_model(tmp_path / "run" / "model", ["a", "b"])
    err = _cli_error(capsys, "update", str(model.parent), *args)
    assert f"folder {model.parent}: is a run's output folder, not its model. Point at the model inside it: {model}" in err

def test_apply_without_views_names_the_models_views(tmp_path: Path, capsys) -> None:
    """The hint suggested the demo's `--views a=emb_a,b=emb_b` whatever the model's views."""
    cat = make_catalog(tmp_path / "data")
    model = _fake_model(tmp_path / "run" / "model", ["image", "text"])
    args = ["--items", str(cat.items_path), "--out", str(tmp_path / "x")]
    err = _cli_error(capsys, "apply", str(model), *args)
    assert "no views given. Pass the model's views: --views image=COLUMN,text=COLUMN" in err
    # the run's summary.json beside the model names the columns it read
    (model.parent / "summary.json").write_text(json.dumps({"views": {"image": "img_emb", "text": "txt_emb"}}))
    assert "Pass the model's views: --views image=img_emb,text=txt_emb" in _cli_error(capsys, "update", str(model), *args)


def test_apply_without_views_names_the_columns_an_estimators_model_recorded(tmp_path: Path, capsys) -> None:
    """``PairwiseLabeler.save`` records the items' columns in ``params.json`` (``views_columns``;
    it writes no summary.json), but the hint still said ``--views image=COLUMN,text=COLUMN``."""
    cat = make_catalog(tmp_path / "data")
    model = _fake_model(tmp_path / "saved", ["image", "text"])
    (model / "params.json").write_text(json.dumps({"views": ["image", "text"],
                                                   "views_columns": {"image": "img_emb", "text": "txt_emb"}}))
    args = ["--items", str(cat.items_path), "--out", str(tmp_path / "x")]
    assert "Pass the model's views: --views image=img_emb,text=txt_emb" in _cli_error(capsys, "apply", str(model), *args)


def test_a_dimension_mismatch_is_found_before_the_cluster_starts(tmp_path: Path) -> None:
    """List and packed columns of another model's dimension were found only on the workers, after
    the cluster had started, and blamed on the first row of every partition ("the first of 8
    partitions of 8 with bad rows"); the footers (and a list column's first row) tell it up front."""
    for name, edit in [("list", _dim_list), ("packed", _dim_packed(True)), ("unmarked", _dim_packed(False))]:
        cat = make_catalog(tmp_path / name)
        edit(cat)
        with pytest.raises(BadInputError) as info:
            job.prepare(cat.settings(tmp_path / "out"))  # no cluster, no items read
        assert (info.value.column, info.value.row, info.value.file) == ("emb_b", None, str(cat.items_path))


def test_a_list_dimension_mismatch_in_a_later_file_says_every_row_is_off(tmp_path: Path, client: Any) -> None:
    """Only the first file is checked up front; a later file of list<float> rows all of another
    dimension is found on a worker, and the message says every row is off rather than blaming one."""
    cat = make_catalog(tmp_path / "data")
    folder = tmp_path / "items"
    folder.mkdir()
    a, b = cat.items.slice(0, 30), cat.items.slice(30)
    pq.write_table(replace_column(a, "emb_b", var_list(list(matrix(a, "emb_b")))), folder / "a.parquet")
    pq.write_table(replace_column(b, "emb_b", var_list(list(matrix(b, "emb_b")[:, :6]))), folder / "b.parquet")
    with pytest.raises(BadInputError) as info:
        job.run(cat.settings(tmp_path / "out", items=str(folder)), client=client)
    assert info.value.file == str(folder / "b.parquet") and info.value.column == "emb_b"
    assert "has dimension 6 in every row of its partition, but the classes have 8" in str(info.value)


def test_a_missing_id_column_suggests_the_flag_and_a_likely_column(tmp_path: Path) -> None:
    """It listed the file's columns but not --id, nor which of them looked like the ids."""
    cat = make_catalog(tmp_path / "data")
    cat.write_items(cat.items.rename_columns(["item_id" if c == "id" else c for c in cat.items.column_names]))
    with pytest.raises(BadInputError) as info:
        job.prepare(cat.settings(tmp_path / "out"))
    msg = str(info.value)
    assert "column 'id': is missing. Did you mean 'item_id'? Name the column with --id COLUMN" in msg, msg
    assert "The file has: item_id, emb_a, emb_b, label" in msg
    with pytest.raises(BadInputError, match=r"Name the column with --label COLUMN"):
        job.prepare(cat.settings(tmp_path / "out", id="item_id", label="Label"))
    assert job.prepare(cat.settings(tmp_path / "out", id="item_id")).info.rows == 60


def test_an_empty_file_written_by_pandas_is_left_out(tmp_path: Path, client: Any) -> None:
    """pandas writes an empty frame's columns as type null: such a file among the inputs was
    refused ("has type null here but fixed_size_list…"), where an empty pyarrow file was read."""
    import pandas as pd

    cat = make_catalog(tmp_path / "data")
    folder = tmp_path / "items"
    folder.mkdir()
    pd.DataFrame(columns=cat.items.column_names).to_parquet(folder / "a-empty.parquet")
    pq.write_table(cat.items, folder / "b.parquet")
    summary = job.run(cat.settings(tmp_path / "out", items=str(folder)), client=client)
    assert summary["labelled_items"] == 60
    job.run(cat.settings(tmp_path / "ref"), client=client)
    labels = [pq.read_table(tmp_path / o / "labels").sort_by("id") for o in ("out", "ref")]
    assert labels[0].equals(labels[1])
    # a catalog of empty files only is still an empty catalog
    shutil.move(folder / "b.parquet", tmp_path / "b.parquet")
    with pytest.raises(BadInputError, match="holds no rows"):
        job.prepare(cat.settings(tmp_path / "out2", items=str(folder)))


def test_classes_without_a_views_column_list_theirs_and_the_flag_names_one(tmp_path: Path) -> None:
    """The message did not list the classes file's columns, and its hint named [class_columns],
    which only a job file had: --class-columns now names them from the command line too."""
    from pairwise_dask import cli

    cat = make_catalog(tmp_path / "data")
    _class_views(cat)  # columns name, img, txt
    argv = ["run", "--items", str(cat.items_path), "--classes", str(cat.classes_path), "--views", "a=emb_a,b=emb_b",
            "--out", str(tmp_path / "out")]
    with pytest.raises(BadInputError) as info:
        job.prepare(load_settings(None, cli._overrides(cli.build_parser().parse_args(argv))))
    assert "(looked for 'emb_a', 'a', 'embedding'; it has name, img, txt)" in str(info.value)
    assert info.value.hint.startswith("Name the view's column with --class-columns a=COLUMN (or a [class_columns]")
    ns = cli.build_parser().parse_args(argv + ["--class-columns", "a=img,b=txt"])
    s = load_settings(None, cli._overrides(ns))
    assert s.class_columns == (("a", "img"), ("b", "txt")) and s.where("class_columns") == COMMAND_LINE
    assert job.prepare(s).classes.columns == {"a": "img", "b": "txt"}


def test_a_duplicate_id_across_two_files_names_both(tmp_path: Path, client: Any) -> None:
    """It named only the file of the first copy; the second copy, in another file, is the one to find."""
    cat = make_catalog(tmp_path / "data")
    folder = tmp_path / "items"
    folder.mkdir()
    ids = cat.items.column("id").to_pylist()
    ids[50] = ids[3]
    table = replace_column(cat.items, "id", pa.array(ids))
    pq.write_table(table.slice(0, 30), folder / "a.parquet")
    pq.write_table(table.slice(30), folder / "b.parquet")
    with pytest.raises(BadInputError) as info:
        job.run(cat.settings(tmp_path / "out", items=str(folder)), client=client)
    e = info.value
    assert (e.file, e.column, e.row) == (str(folder / "a.parquet"), "id", "it-00003"), str(e)
    assert f"appears more than once (row 3, and row 20 of {folder / 'b.parquet'}; rows counted from 0)" in str(e)
    # one file, two partitions: the rows
    cat.write_items(table, row_group_size=10)
    with pytest.raises(BadInputError, match=r"appears more than once \(rows 3 and 50, counted from 0\)") as info:
        job.run(cat.settings(tmp_path / "out"), client=client)
    assert info.value.file == str(cat.items_path)
    # one partition holding both copies: the rows too (it named the file only)
    cat.write_items(table, row_group_size=100)
    with pytest.raises(BadInputError, match=r"appears more than once \(rows 3 and 50, counted from 0\)") as info:
        job.run(cat.settings(tmp_path / "out"), client=client)
    assert info.value.file == str(cat.items_path)
