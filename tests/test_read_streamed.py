"""A row group's list embedding columns, streamed in batches into one block each (io.read_row_group),
read bit for bit as pyarrow reads them whole, and fall back to the whole read where the lists are
not regular, so the embedding checks still name the row."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pairwise_dask.arrays import embedding_matrix
from pairwise_dask.errors import BadInputError
from pairwise_dask.io import read_lists_streamed, read_row_group

COLS = ["id", "emb", "label", "other"]


def _write(path: Path, emb: pa.Array, n: int, *, row_group_size: int, compression: str = "snappy") -> str:
    rng = np.random.default_rng(1)
    t = pa.table({"id": [f"it-{i:05d}" for i in range(n)], "emb": emb,
                  "label": pa.array([f"c{i % 3}" for i in range(n)]),
                  "other": pa.array(rng.standard_normal((n, 2)).astype(np.float32).tolist(),
                                    pa.list_(pa.float32()))})
    pq.write_table(t, path, row_group_size=row_group_size, compression=compression)
    return str(path)


def _whole(path: str, group: int) -> pa.Table:
    return pq.ParquetFile(path).read_row_group(group, columns=COLS)


@pytest.mark.parametrize("kind,dtype", [("list", np.float32), ("fixed", np.float16), ("large", np.float64),
                                        ("fixed", np.float32)])
@pytest.mark.parametrize("compression", ["snappy", "none"])
def test_streamed_read_is_bit_for_bit_the_whole_read(tmp_path, kind, dtype, compression):
    n, d = 1000, 24
    x = np.random.default_rng(0).standard_normal((n, d)).astype(dtype)
    x[5, 3] = np.nan  # any bit pattern survives
    flat = pa.array(x.ravel())
    emb = {"list": lambda: pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), flat),
           "large": lambda: pa.LargeListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int64)), flat),
           "fixed": lambda: pa.FixedSizeListArray.from_arrays(flat, d)}[kind]()
    # 3 row groups (400, 400, 200 rows), each streamed in batches of 64 rows (the floor) of
    # which the last is partial
    path = _write(tmp_path / "items.parquet", emb, n, row_group_size=400, compression=compression)
    for g in range(3):
        got = read_row_group(path, g, COLS, batch_bytes=1)
        want = _whole(path, g)
        assert got.column_names == COLS
        assert got.num_rows == want.num_rows
        assert pa.types.is_fixed_size_list(got.schema.field("emb").type)
        # the list column is one block, not the batches' chunks
        assert got.column("emb").num_chunks == 1
        # the stored values' bits, in their own width (not after the float32 cast)
        a = got.column("emb").chunk(0).flatten().to_numpy()
        b = want.column("emb").combine_chunks().flatten().to_numpy()
        assert a.dtype == b.dtype == dtype
        uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
        np.testing.assert_array_equal(a.view(uint), b.view(uint))
        assert got.schema.field("emb").type.value_field == want.schema.field("emb").type.value_field
        assert got.column("id").to_pylist() == want.column("id").to_pylist()
        assert got.column("label").to_pylist() == want.column("label").to_pylist()
        assert got.schema.field("label").type == pa.large_string()
        np.testing.assert_array_equal(embedding_matrix(got.column("other"), name="other"),
                                      embedding_matrix(want.column("other"), name="other"))
    # the streamed path really ran (it returns a table), at the default batch size too
    pf = pq.ParquetFile(path)
    assert read_lists_streamed(pf, 0, COLS, 1) is not None
    assert read_lists_streamed(pf, 0, COLS, 12 << 20) is not None


def _irregular(n: int, d: int, bad_row: int, how: str) -> pa.Array:
    rows = np.random.default_rng(2).standard_normal((n, d)).astype(np.float32).tolist()
    if how == "null":
        rows[bad_row] = None
    elif how == "null value":
        rows[bad_row][1] = None
    elif how == "short":
        rows[bad_row] = rows[bad_row][:-1]
    elif how == "all later rows short":
        rows[bad_row:] = [r[:-1] for r in rows[bad_row:]]
    return pa.array(rows, pa.list_(pa.float32()))


@pytest.mark.parametrize("how,bad,message", [("null", 300, "holds a null embedding"),
                                             ("null value", 300, "holds a null value inside an embedding"),
                                             ("short", 300, "mixed lengths (8 and 7)"),
                                             # every batch regular, but of another length than the first
                                             ("all later rows short", 320, "mixed lengths (8 and 7)")])
def test_irregular_lists_fall_back_to_the_whole_read(tmp_path, how, bad, message):
    """An irregularity in a later batch (of 400 rows in batches of 64) makes the streamed read give
    up; the row group is then read whole, as stored, and its check names the row."""
    path = _write(tmp_path / "items.parquet", _irregular(400, 8, bad, how), 400, row_group_size=400)
    pf = pq.ParquetFile(path)
    assert read_lists_streamed(pf, 0, COLS, 1) is None
    t = read_row_group(path, 0, COLS, batch_bytes=1)
    assert pa.types.is_list(t.schema.field("emb").type)  # as stored: the whole read
    ids = np.asarray(t.column("id").to_pylist(), dtype=object)
    with pytest.raises(BadInputError, match=rf"row id 'it-00{bad}': (has|holds)") as info:
        embedding_matrix(t.column("emb"), name="emb", ids=ids)
    assert message in str(info.value)


def test_no_list_columns_or_no_rows_read_whole(tmp_path):
    path = str(tmp_path / "items.parquet")
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "emb": pa.array([], pa.list_(pa.float32()))}), path)
    pf = pq.ParquetFile(path)
    assert pf.metadata.num_row_groups == 1 and pf.metadata.row_group(0).num_rows == 0
    assert read_lists_streamed(pf, 0, ["id", "emb"], 1) is None
    assert read_row_group(path, 0, ["id", "emb"]).num_rows == 0
    packed = str(tmp_path / "packed.parquet")
    pq.write_table(pa.table({"id": ["a"], "emb": pa.array([b"\0" * 8], pa.binary(8))}), packed)
    assert read_lists_streamed(pq.ParquetFile(packed), 0, ["id", "emb"], 1) is None


def test_only_the_named_lists_are_streamed_and_the_schema_is_kept(tmp_path):
    """pack streams only the columns it packs: another list column keeps its stored type, and every
    field's metadata and the schema's (pandas') metadata are those of the whole read."""
    n, d = 300, 6
    x = np.random.default_rng(3).standard_normal((n, d)).astype(np.float32)
    t = pa.table({"id": [f"it-{i:05d}" for i in range(n)],
                  "emb": pa.array(x.tolist(), pa.list_(pa.float32())),
                  # values that first appear in later batches: each batch has its own dictionary
                  "label": pa.array([f"c{i // 50}" for i in range(n)]).dictionary_encode(),
                  "other": pa.array(x[:, :2].tolist(), pa.list_(pa.float32()))})
    t = t.replace_schema_metadata({b"pandas": b"{}"})
    t = t.cast(t.schema.set(1, t.schema.field("emb").with_metadata({b"k": b"v"})))
    path = str(tmp_path / "items.parquet")
    pq.write_table(t, path, row_group_size=n)
    pf = pq.ParquetFile(path)
    got = read_lists_streamed(pf, 0, COLS, 1, only={"emb"})
    want = pf.read_row_group(0, columns=COLS)
    assert got.schema.metadata == want.schema.metadata
    assert got.schema.field("emb").metadata == {b"k": b"v"}
    assert got.schema.field("other").type == want.schema.field("other").type == pa.list_(pa.float32())
    assert got.column("label").type == want.column("label").type  # dictionary, batches' dictionaries unified
    assert got.column("label").to_pylist() == want.column("label").to_pylist()
    assert got.column("other").to_pylist() == want.column("other").to_pylist()
    assert read_lists_streamed(pf, 0, COLS, 1, only={"id"}) is None  # nothing to stream


def test_empty_lists_and_dotted_names(tmp_path):
    """Lists of no values fall back to the whole read (Arrow has no fixed-size list of 0), so the
    dimension check reports them; a column name with dots is found in the footer all the same."""
    path = str(tmp_path / "e.parquet")
    pq.write_table(pa.table({"id": ["a", "b"], "my.emb": pa.array([[], []], pa.list_(pa.float32()))}), path)
    t = read_row_group(path, 0, ["id", "my.emb"])
    with pytest.raises(BadInputError, match="has dimension 0 in every row of its partition, but the classes have 4"):
        embedding_matrix(t.column("my.emb"), name="my.emb", dim=4)
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    pq.write_table(pa.table({"id": [str(i) for i in range(40)], "my.emb": pa.array(x.tolist(), pa.list_(pa.float32()))}),
                   path)
    got = read_lists_streamed(pq.ParquetFile(path), 0, ["id", "my.emb"], 1)
    np.testing.assert_array_equal(embedding_matrix(got.column("my.emb"), name="e"), x)


def test_a_column_asked_twice_is_read_once_and_huge_columns_stay_chunked(tmp_path, monkeypatch):
    """Columns named twice (label = id) come once, as pyarrow's whole read gives them; a non-list
    column whose batches cannot be concatenated (over 2 GiB of strings: pyarrow raises
    ArrowInvalid, simulated here) stays a chunked column instead of failing the read."""
    n, d = 300, 4
    x = np.random.default_rng(4).standard_normal((n, d)).astype(np.float32)
    path = str(tmp_path / "items.parquet")
    pq.write_table(pa.table({"id": [f"it-{i:05d}" for i in range(n)],
                             "emb": pa.array(x.tolist(), pa.list_(pa.float32()))}), path)
    t = read_row_group(path, 0, ["id", "emb", "id"], batch_bytes=1)
    assert t.column_names == pq.ParquetFile(path).read_row_group(0, columns=["id", "emb", "id"]).column_names

    def overflow(_chunks):
        raise pa.ArrowInvalid("offset overflow while concatenating arrays")

    monkeypatch.setattr(pa, "concat_arrays", overflow)
    got = read_lists_streamed(pq.ParquetFile(path), 0, ["id", "emb"], 1)
    assert got.column("id").num_chunks > 1
    assert got.column("id").to_pylist() == [f"it-{i:05d}" for i in range(n)]
    np.testing.assert_array_equal(embedding_matrix(got.column("emb"), name="emb"), x)
