"""``pairwise-dask pack``: list embedding columns rewritten as packed fixed_size_binary, bit for
bit, keeping files, row groups and other columns; the job's outputs are the same on either."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures import damage_pages, fsl, make_catalog, run_cli
from pairwise_dask import job
from pairwise_dask.errors import BadInputError
from pairwise_dask.pack import pack_catalog, pack_column


def _rows(col: pa.ChunkedArray | pa.Array, dtype: type) -> np.ndarray:
    """A packed column's values back as an (n, d) array of ``dtype``."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return np.frombuffer(arr.buffers()[1], dtype=dtype).reshape(len(arr), -1)


@pytest.mark.parametrize("value_type,width,dtype", [(pa.float32(), 4, np.float32), (pa.float16(), 2, np.float16),
                                                    (pa.float64(), 4, np.float32)])
def test_values_are_copied_bit_for_bit(value_type: pa.DataType, width: int, dtype: type) -> None:
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(value_type.to_pandas_dtype())
    for col in (fsl(x, value_type), pa.array(list(x), pa.list_(value_type))):
        packed = pack_column(col, name="e")
        assert packed.type == pa.binary(5 * width)
        np.testing.assert_array_equal(_rows(packed, dtype), x.astype(dtype))  # float64: the job's float32


def test_bad_embeddings_name_the_file_column_and_row(tmp_path: Path) -> None:
    bad = pa.table({"id": ["x", "y", "z"], "e": pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float32()))})
    pq.write_table(bad, tmp_path / "items.parquet")
    with pytest.raises(BadInputError, match=r"items\.parquet, column 'e', row id 'y': holds a null embedding"):
        pack_catalog(str(tmp_path / "items.parquet"), str(tmp_path / "out"))
    mixed = pa.table({"id": ["x", "y"], "e": pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32()))})
    pq.write_table(mixed, tmp_path / "items.parquet")
    with pytest.raises(BadInputError, match=r"row id 'y': has embeddings of mixed lengths"):
        pack_catalog(str(tmp_path / "items.parquet"), str(tmp_path / "out"))
    with pytest.raises(BadInputError, match=r"column 'id': has type .*not a list of floats"):
        pack_catalog(str(tmp_path / "items.parquet"), str(tmp_path / "out"), columns=["id"])
    with pytest.raises(BadInputError, match=r"column 'nope': is not a column of this file"):
        pack_catalog(str(tmp_path / "items.parquet"), str(tmp_path / "out"), columns=["nope"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.parquet"]  # no output, no staging left


def test_a_folder_keeps_files_row_groups_and_other_columns(tmp_path: Path) -> None:
    cat = make_catalog(tmp_path / "data", n=50)
    src = tmp_path / "items"
    (src / "part=1").mkdir(parents=True)
    pq.write_table(cat.items.slice(0, 30), src / "part=1" / "a.parquet", row_group_size=7)
    pq.write_table(cat.items.slice(30), src / "b.parquet", row_group_size=20, compression="zstd")
    r = pack_catalog(str(src), str(tmp_path / "packed"))
    assert (r.files, r.rows, r.row_groups) == (2, 50, 5 + 1)
    assert r.columns == tuple(cat.view_cols)
    for rel in ("part=1/a.parquet", "b.parquet"):
        before, after = pq.ParquetFile(src / rel), pq.ParquetFile(tmp_path / "packed" / rel)
        assert [before.metadata.row_group(g).num_rows for g in range(before.metadata.num_row_groups)] == \
               [after.metadata.row_group(g).num_rows for g in range(after.metadata.num_row_groups)]
        assert after.metadata.row_group(0).column(0).compression == before.metadata.row_group(0).column(0).compression
        t0, t1 = before.read(), after.read()
        assert t1.column_names == t0.column_names
        for c in t0.column_names:
            if c in cat.view_cols:
                assert t1.schema.field(c).type == pa.binary(4 * 8)
                np.testing.assert_array_equal(_rows(t1.column(c), np.float32),
                                              np.stack(t0.column(c).to_numpy(zero_copy_only=False)))
            else:
                assert t1.column(c).equals(t0.column(c))


def test_a_relative_folder_packs(tmp_path: Path, monkeypatch) -> None:
    """Paths as typed in a shell: a relative catalog folder (its files are listed absolute) and a
    relative OUT (it crashed in Path.relative_to)."""
    cat = make_catalog(tmp_path / "data", n=20)
    (tmp_path / "items" / "sub").mkdir(parents=True)
    pq.write_table(cat.items, tmp_path / "items" / "sub" / "a.parquet")
    monkeypatch.chdir(tmp_path)
    r = pack_catalog("items", "packed")
    assert r.rows == 20 and (tmp_path / "packed" / "sub" / "a.parquet").is_file()


def test_out_is_replaced_only_with_overwrite_and_only_when_complete(tmp_path: Path) -> None:
    cat = make_catalog(tmp_path / "data", n=20)
    out = tmp_path / "packed"
    pack_catalog(str(cat.items_path), str(out))
    first = (out / cat.items_path.name).read_bytes()
    with pytest.raises(BadInputError, match="already exists.*--overwrite"):
        pack_catalog(str(cat.items_path), str(out))
    broken = tmp_path / "broken"
    broken.mkdir()
    two = cat.items.slice(0, 2)
    holed = pa.array([two.column("emb_a")[0].as_py(), None], two.schema.field("emb_a").type)
    pq.write_table(two.set_column(two.column_names.index("emb_a"), "emb_a", holed), broken / "z.parquet")
    pq.write_table(cat.items, broken / "a.parquet")  # packed first, then z.parquet fails
    with pytest.raises(BadInputError, match="null embedding"):
        pack_catalog(str(broken), str(out), columns=None, overwrite=True)
    assert (out / cat.items_path.name).read_bytes() == first  # the old OUT stands, nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "data", "packed"]
    pack_catalog(str(cat.items_path), str(out), overwrite=True, compression="none")
    assert pq.ParquetFile(out / cat.items_path.name).metadata.row_group(0).column(0).compression == "UNCOMPRESSED"
    with pytest.raises(BadInputError, match="inside the catalog"):
        pack_catalog(str(tmp_path / "data"), str(tmp_path / "data" / "packed"))


def test_the_job_gives_the_same_outputs_on_the_packed_catalog(tmp_path: Path, client) -> None:
    cat = make_catalog(tmp_path / "data", n=300, d=16, k=4, noise=1.5, row_group_size=64)
    pack_catalog(str(cat.items_path), str(tmp_path / "packed"))
    job.run(cat.settings(tmp_path / "lists", dims=0.5), client=client)
    job.run(cat.settings(tmp_path / "packed-out", dims=0.5, items=str(tmp_path / "packed")), client=client)
    for what in ("labels", "disagreements"):
        a, b = (pq.read_table(tmp_path / o / what).sort_by("id") for o in ("lists", "packed-out"))
        assert a.num_rows and a.equals(b), what
    masks = [pq.read_table(tmp_path / o / "model" / "masks.parquet") for o in ("lists", "packed-out")]
    assert masks[0].equals(masks[1])


def test_cli(tmp_path: Path) -> None:
    cat = make_catalog(tmp_path / "data", n=20)
    done = run_cli("pack", str(cat.items_path), str(tmp_path / "p"))
    assert done.returncode == 0, done.stderr
    assert "20 rows in 1 file (1 row group)" in done.stdout and "packed emb_a, emb_b" in done.stdout
    # a small catalog's sizes in a unit that shows them (it printed "0.00 GiB → 0.00 GiB")
    assert re.search(r"; \d+\.\d\d KiB → \d+\.\d\d KiB\n", done.stdout), done.stdout
    again = run_cli("pack", str(cat.items_path), str(tmp_path / "p"))
    assert again.returncode == 2 and "already exists. Choose another OUT or pass --overwrite" in again.stderr
    cut = tmp_path / "cut.parquet"  # a copy cut short: one line naming the file, not pyarrow's traceback
    cut.write_bytes(cat.items_path.read_bytes()[:3000])
    bad = run_cli("pack", str(cut), str(tmp_path / "q"))
    assert bad.returncode == 2 and bad.stderr.startswith(f"pairwise-dask: error: file {cut}: is not a readable "
                                                         "Parquet file"), bad.stderr
    assert len(bad.stderr.splitlines()) == 1 and not (tmp_path / "q").exists()
    damage_pages(cat.items_path, "emb_b")  # a sound footer over a damaged page: named too
    bad = run_cli("pack", str(cat.items_path), str(tmp_path / "q"))
    assert bad.returncode == 2 and "row group 0 cannot be read (" in bad.stderr, bad.stderr
    assert len(bad.stderr.splitlines()) == 1 and not (tmp_path / "q").exists()


def test_float16_classes_and_items_packed_read_as_float16(tmp_path: Path, client) -> None:
    """``fixed_size_binary[16]`` is 4 float32 or 8 float16 values. A classes file has no other
    dimension to go by, so a float16 one packed without a mark was read as float32, half the
    dimensions, and the items the same way: garbage without an error. ``pack`` marks each column
    with its float type, and the job reads the mark."""
    from pairwise_dask.arrays import PACKED_FLOAT_KEY
    from pairwise_dask.io import classes_from_table

    cat = make_catalog(tmp_path / "data", n=200, d=8, noise=1.2)
    half = {}
    for name, table in (("items", cat.items), ("classes", pq.read_table(cat.classes_path))):
        cols = [c for c in table.column_names if pa.types.is_fixed_size_list(table.schema.field(c).type)]
        for c in cols:
            x = np.stack(table.column(c).to_numpy(zero_copy_only=False)).astype(np.float16)
            table = table.set_column(table.column_names.index(c), c, fsl(x, pa.float16()))
        pq.write_table(table, tmp_path / f"{name}16.parquet")
        half[name] = tmp_path / f"{name}16.parquet"
        pack_catalog(str(half[name]), str(tmp_path / f"{name}16-packed"))
    packed_classes = pq.read_table(tmp_path / "classes16-packed" / "classes16.parquet")
    field = packed_classes.schema.field(cat.view_cols[0])
    assert field.type == pa.binary(16) and field.metadata[PACKED_FLOAT_KEY] == b"float16"
    got = classes_from_table(packed_classes, (("a", cat.view_cols[0]),))
    assert got.embeddings["a"].shape == (3, 8)  # k = 3 classes, d = 8
    lists = job.run(cat.settings(tmp_path / "lists", items=str(half["items"]), classes=str(half["classes"])),
                    client=client)
    packed = job.run(cat.settings(tmp_path / "packed", items=str(tmp_path / "items16-packed"),
                                  classes=str(tmp_path / "classes16-packed" / "classes16.parquet")), client=client)
    assert packed["final"] == lists["final"]
    a, b = (pq.read_table(tmp_path / o / "labels").sort_by("id") for o in ("lists", "packed"))
    assert a.equals(b)
    unmarked = packed_classes.replace_schema_metadata(None).cast(
        pa.schema([f.remove_metadata() for f in packed_classes.schema]))
    assert classes_from_table(unmarked, (("a", cat.view_cols[0]),)).embeddings["a"].shape == (3, 4)  # unmarked: float32


def test_a_marked_float_type_is_checked_against_the_classes() -> None:
    from pairwise_dask.arrays import embedding_matrix

    x = np.arange(16, dtype=np.float16).reshape(2, 8)
    col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), 2, [None, pa.py_buffer(x)])
    np.testing.assert_array_equal(embedding_matrix(col, name="e", packed_float="float16"), x.astype(np.float32))
    with pytest.raises(BadInputError, match=r"column 'e', row id '#0': has dimension 8 \(float16\), but the classes have 4"):
        embedding_matrix(col, name="e", dim=4, packed_float="float16")
    with pytest.raises(BadInputError, match="marked bfloat16, which it cannot hold"):
        embedding_matrix(col, name="e", packed_float="bfloat16")


def test_files_and_row_groups_without_rows_are_left_out(tmp_path: Path, client) -> None:
    """A zero-row file or row group holds no items and no width to pack a list column to; written
    as it was, its list schema would differ from the packed files' and the job would refuse the
    folder. Left out, the job reads the packed folder and gives the same labels."""
    cat = make_catalog(tmp_path / "data", n=60)
    src = tmp_path / "items"
    src.mkdir()
    pq.write_table(cat.items.slice(0, 0), src / "a-empty.parquet")
    with pq.ParquetWriter(src / "b.parquet", cat.items.schema) as w:
        w.write_table(cat.items.slice(0, 30))
        w.write_table(cat.items.slice(30, 0))
        w.write_table(cat.items.slice(30))
    r = pack_catalog(str(src), str(tmp_path / "packed"))
    assert (r.files, r.rows, r.row_groups) == (1, 60, 2)
    assert sorted(p.name for p in (tmp_path / "packed").iterdir()) == ["b.parquet"]
    job.run(cat.settings(tmp_path / "lists", items=str(src)), client=client)
    job.run(cat.settings(tmp_path / "out", items=str(tmp_path / "packed")), client=client)
    a, b = (pq.read_table(tmp_path / o / "labels").sort_by("id") for o in ("lists", "out"))
    assert a.equals(b)


def test_an_empty_file_written_by_pandas_is_left_out(tmp_path: Path) -> None:
    """pandas writes an empty frame's columns as type null: pack refused such a file
    ("has type null, not a list of floats"), or found no column to pack when it came first."""
    import pandas as pd

    cat = make_catalog(tmp_path / "data", n=60)
    src = tmp_path / "items"
    src.mkdir()
    pd.DataFrame(columns=cat.items.column_names).to_parquet(src / "a-empty.parquet")
    pq.write_table(cat.items, src / "b.parquet")
    r = pack_catalog(str(src), str(tmp_path / "packed"))
    assert (r.files, r.rows, r.columns) == (1, 60, ("emb_a", "emb_b"))
    assert sorted(p.name for p in (tmp_path / "packed").iterdir()) == ["b.parquet"]


def test_sizes_are_printed_in_a_unit_that_fits() -> None:
    from pairwise_dask.pack import _size

    assert [_size(n) for n in (0, 1023, 1024, 5 << 20, 3 << 30)] == ["0 B", "1,023 B", "1.00 KiB", "5.00 MiB",
                                                                     "3.00 GiB"]
