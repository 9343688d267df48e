"""The packed embedding form (``fixed_size_binary`` of raw little-endian floats) reads like the list form."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pairwise_dask.arrays import embedding_matrix, normalize_rows
from pairwise_dask.errors import BadInputError


def _packed(m: np.ndarray) -> pa.Array:
    m = np.ascontiguousarray(m, dtype=m.dtype.newbyteorder("<"))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(m.shape[1] * m.dtype.itemsize), m.shape[0],
                                                [None, pa.py_buffer(m)])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_packed_equals_list_form(dtype):
    x = np.random.default_rng(0).standard_normal((50, 12)).astype(dtype)
    lst = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 12)
    want = embedding_matrix(lst, name="e", dim=12)
    got = embedding_matrix(_packed(x), name="e", dim=12)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    # a slice (a partition of a larger array) starts at its own offset
    np.testing.assert_array_equal(embedding_matrix(_packed(x).slice(7, 20), name="e", dim=12), want[7:27])
    np.testing.assert_array_equal(embedding_matrix(pa.chunked_array([_packed(x)]), name="e", dim=12), want)


def test_packed_float32_is_zero_copy_and_normalises():
    x = np.random.default_rng(1).standard_normal((10, 8)).astype(np.float32)
    arr = _packed(x)
    m = embedding_matrix(arr, name="e", dim=8)
    assert np.shares_memory(m, np.frombuffer(arr.buffers()[1], np.float32))
    np.testing.assert_allclose(np.linalg.norm(normalize_rows(m, name="e"), axis=1), 1, rtol=1e-6)


def test_packed_width_must_fit_the_dimension():
    x = np.zeros((3, 10), np.float32)
    with pytest.raises(BadInputError, match="does not pack"):
        embedding_matrix(_packed(x), name="e", dim=7)


def test_unmarked_float16_with_nan_names_the_dimension_as_a_cause() -> None:
    """Float32 bytes with classes of twice the dimension are read as float16 and come out as NaN:
    the message sent the user after values that were fine. It now names that cause too, and only
    for unmarked float16 reads (float32 read as float64 gives no NaN; marked columns are sure)."""
    x = np.random.default_rng(3).standard_normal((20, 64)).astype(np.float32)
    with pytest.raises(BadInputError, match=r"holds NaN or infinite values.*read as 128 float16 values to match the "
                                            r"classes' dimension; if it holds 64 float32 values"):
        embedding_matrix(_packed(x), name="e", dim=128)
    half = x.astype(np.float16)  # real float16 bytes, unmarked: read as before
    np.testing.assert_array_equal(embedding_matrix(_packed(half), name="e", dim=64), half.astype(np.float32))
    half[5, 3] = np.nan  # a real NaN: the same message, which names both causes
    with pytest.raises(BadInputError, match=r"row id '#5': holds NaN or infinite values"):
        embedding_matrix(_packed(half), name="e", dim=64)
    wide = x.astype(np.float64)
    wide[2, 1] = np.nan  # float64: left to the usual check of the rows (inverse_norms)
    assert np.isnan(embedding_matrix(_packed(wide), name="e", dim=64)[2, 1])


def test_packed_null_is_bad_input():
    arr = pa.array([b"\0" * 8, None], pa.binary(8))
    with pytest.raises(BadInputError, match="null embedding"):
        embedding_matrix(arr, name="e", dim=2)


def test_packed_without_a_dimension_is_float32() -> None:
    """A classes file has no items' dimension to go by (``dim`` unknown): its packed prompts are
    read as float32, ``fixed_size_binary[4·d]`` as the README documents, and give the same
    ``(k, d)`` matrix as the list form."""
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    got = embedding_matrix(_packed(x), name="e")
    assert got.shape == (3, 4)
    np.testing.assert_array_equal(got, x)
    from pairwise_dask.io import classes_from_table

    names = pa.array(["c0", "c1", "c2"])
    lst = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4)
    packed = classes_from_table(pa.table({"name": names, "emb_a": _packed(x)}), (("a", "emb_a"),))
    lists = classes_from_table(pa.table({"name": names, "emb_a": lst}), (("a", "emb_a"),))
    np.testing.assert_array_equal(packed.embeddings["a"], lists.embeddings["a"])
