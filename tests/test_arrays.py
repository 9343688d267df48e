"""Arrow to NumPy without per-row objects, and stable id hashes."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pairwise_dask.arrays import checked_rows, embedding_matrix, hash_ids, inverse_norms, normalize_rows
from pairwise_dask.errors import BadInputError


def test_fixed_size_list_is_a_zero_copy_view():
    vals = np.arange(12, dtype=np.float32)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(vals), 3)
    m = embedding_matrix(arr, name="e")
    assert m.shape == (4, 3) and np.shares_memory(m, np.asarray(arr.values))
    assert np.array_equal(embedding_matrix(arr.slice(1, 2), name="e"), vals[3:9].reshape(2, 3))


def test_list_float16_and_float64_become_float32():
    arr = pa.array([[1, 2], [3, 4]], pa.list_(pa.float16()))
    assert embedding_matrix(arr, name="e").dtype == np.float32
    with pytest.raises(BadInputError, match="mixed lengths"):
        embedding_matrix(pa.array([[1.0, 2.0], [3.0]]), name="e", ids=np.array(["x", "y"]))


def test_normalize_rejects_bad_vectors_naming_the_row():
    with pytest.raises(BadInputError, match="row id 'b'.*NaN"):
        normalize_rows(np.array([[1, 0], [np.nan, 1]], np.float32), name="e", ids=np.array(["a", "b"]))
    with pytest.raises(BadInputError, match="all-zero"):
        normalize_rows(np.array([[0, 0]], np.float32), name="e")
    assert np.allclose(normalize_rows(np.array([[3, 4]], np.float32), name="e"), [[0.6, 0.8]])


def test_hash_ids_is_value_based():
    a = pa.array(["x", "yy", "", "zzz", "x"])
    h = hash_ids(a)
    assert h[0] == h[4] and len(set(h.tolist())) == 4
    assert np.array_equal(hash_ids(a.slice(3)), h[3:])
    assert np.array_equal(hash_ids(pa.array(["x", "yy"], pa.large_string())), h[:2])


@pytest.mark.parametrize("t", [pa.list_(pa.float32()), pa.list_(pa.float32(), 2)], ids=["list", "fixed_size_list"])
def test_a_null_embedding_is_named_as_one(t: pa.DataType) -> None:
    """A row without an embedding is its own mistake, with its own fix (drop the row or embed it):
    it must be reported as a null embedding at that row, not as a length mismatch or a crash."""
    arr = pa.array([[1.0, 2.0], None, [3.0, 4.0]], t)
    with pytest.raises(BadInputError) as info:
        embedding_matrix(arr, name="e", ids=np.array(["a", "b", "c"]))
    assert str(info.value) == "column 'e', row id 'b': holds a null embedding. Drop the row or supply its embedding"


def test_an_integer_row_id_of_zero_is_still_named() -> None:
    """Integer ids often start at 0; the message must still point at that row ("row id 0"),
    like any other id, not drop the row because 0 is falsy."""
    with pytest.raises(BadInputError) as info:
        normalize_rows(np.array([[np.nan, 1], [1, 0]], np.float32), name="e", ids=np.array([0, 1]))
    assert info.value.row == 0
    assert str(info.value).startswith("column 'e', row id 0: holds NaN")


def test_a_rows_inverse_norm_is_its_own_whatever_shares_its_block() -> None:
    """A row whose float32 Σx² overflows (×1e20), underflows (×1e-25) or goes subnormal (×3e-21)
    is measured in float64; that decision is the row's own. It was the block's: one such row sent
    every row of its partition to float64, so the other rows' factors (and cosines, moments and
    labels) depended on which rows shared their partition, and a subnormal sum was kept as is."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 64)).astype(np.float32)
    odd = x[:3] * np.array([[1e20], [1e-25], [3e-21]], np.float32)
    assert np.isinf(np.einsum("ij,ij->i", odd, odd)[0]) and np.einsum("ij,ij->i", odd, odd)[1] == 0
    assert 0 < np.einsum("ij,ij->i", odd, odd)[2] < np.finfo(np.float32).tiny
    plain = inverse_norms(x, name="e")
    mixed = inverse_norms(np.concatenate([x[:100], odd, x[100:]]), name="e")
    assert np.array_equal(np.concatenate([mixed[:100], mixed[103:]]), plain)
    alone = np.concatenate([inverse_norms(odd[i:i + 1], name="e") for i in range(3)])
    assert np.array_equal(mixed[100:103], alone)
    exact = 1 / np.linalg.norm(odd.astype(np.float64), axis=1)
    assert np.allclose(alone, exact, rtol=1e-6, atol=0)


def test_checked_rows_bring_only_extreme_rows_to_unit_scale_by_a_power_of_two() -> None:
    """Rows in range are returned as they are (no copy, the factors of inverse_norms); a row whose
    squares overflow or underflow in float32 is multiplied by a power of two (its direction kept bit
    for bit) to a norm in [0.5, 1), and its factor is that row's."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 32)).astype(np.float32)
    same, scale = checked_rows(x, name="e")
    assert same is x and np.array_equal(scale, inverse_norms(x, name="e"))
    y = x.copy()
    y[[4, 9]] *= np.array([[1e20], [1e-25]], np.float32)
    got, scale = checked_rows(y, name="e")
    assert got is not y and np.array_equal(np.delete(got, [4, 9], axis=0), np.delete(y, [4, 9], axis=0))
    for i in (4, 9):
        k = np.round(np.log2(np.abs(got[i]).max() / np.abs(y[i]).max()))
        assert np.array_equal(got[i], np.ldexp(y[i], int(k)))
        assert 0.5 <= np.linalg.norm(got[i].astype(np.float64)) < 1
        assert np.isclose(scale[i], 1 / np.linalg.norm(got[i].astype(np.float64)), rtol=1e-6)
    assert np.allclose(normalize_rows(y, name="e"), normalize_rows(x, name="e"), rtol=0, atol=1e-6)
