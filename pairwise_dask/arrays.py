"""Arrow columns to NumPy blocks, without per-row Python objects; normalisation; stable id hashes.

Pure functions: no Dask, no files. Every check raises :class:`BadInputError` naming the column and
the first offending row id, so a worker's failure reads the same as a client-side one.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from .errors import BadInputError

_FLOATS = (pa.float16(), pa.float32(), pa.float64())


def is_list_type(t: pa.DataType) -> bool:
    """A list, large list or fixed-size list (of anything)."""
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def is_float_list(t: pa.DataType) -> bool:
    """A list, large list or fixed-size list of floats: an embedding column in list form (the one
    ``pack`` rewrites and the read streams)."""
    return is_list_type(t) and pa.types.is_floating(t.value_type)


def to_arrow(column: object) -> pa.Array:
    """One contiguous Arrow array from a pandas Series (Arrow-backed or not) or an Arrow array."""
    if isinstance(column, pa.ChunkedArray):
        # one chunk (a row group read by pyarrow) is used as is: combine_chunks would copy it
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if isinstance(column, pa.Array):
        return column
    arr = getattr(column, "array", column)
    if hasattr(arr, "__arrow_array__"):
        out = arr.__arrow_array__()
        if isinstance(out, pa.ChunkedArray):
            return out.chunk(0) if out.num_chunks == 1 else out.combine_chunks()
        return out
    return pa.array(np.asarray(column), from_pandas=True)


def _row_id(ids: np.ndarray | None, i: int) -> object:
    if ids is None:
        return f"#{i}"
    v = ids[i]
    return v.item() if hasattr(v, "item") else v


def embedding_matrix(column: object, *, name: str, ids: np.ndarray | None = None,
                     dim: int | None = None, packed_float: str | None = None) -> np.ndarray:
    """A ``(n, d)`` float32 matrix from a list-typed embedding column.

    ``fixed_size_list<float>[d]`` is a zero-copy view of the Arrow values buffer; ``list<float>``
    is checked for equal lengths, then viewed the same way. float16 and float64 are cast to
    float32. A column of NumPy arrays (pandas' default reading) is accepted through a slow path.

    ``fixed_size_binary[w]`` is the *packed* form: each value is the embedding's ``d``
    little-endian floats, ``w / d`` bytes each (2: float16, 4: float32, 8: float64; ``d`` from
    ``dim``, float32 when ``dim`` is not given). Parquet stores it without per-value list levels,
    and it reads several times faster (see ``benchmarks/README.md``).
    """
    arr = to_arrow(column)
    t = arr.type
    if pa.types.is_fixed_size_binary(t):
        return _packed_matrix(arr, name=name, ids=ids, dim=dim, packed_float=packed_float)
    if pa.types.is_fixed_size_list(t):
        d = t.list_size
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        d = None
    elif t == pa.null() and len(arr) == 0:
        return np.zeros((0, dim or 0), np.float32)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        # a pandas column of NumPy arrays put into Dask (from_pandas) becomes strings under Dask's
        # default dataframe.convert-string: the embeddings are text now, and say so
        raise BadInputError(f"has type {t}, not a list of floats", column=name,
                            hint="If the frame came from pandas through Dask, Dask turned its arrays into "
                                 "strings: read the Parquet with dd.read_parquet(..., dtype_backend=\"pyarrow\"), "
                                 "or set dask.config.set({\"dataframe.convert-string\": False}) first")
    else:
        raise BadInputError(f"has type {t}, not a list of floats", column=name,
                            hint="Store each embedding as a fixed_size_list<float32>[d] "
                                 "(or list<float>) column")
    if arr.null_count:
        i = int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])
        raise BadInputError("holds a null embedding", column=name, row=_row_id(ids, i),
                            hint="Drop the row or supply its embedding")
    if not pa.types.is_fixed_size_list(t):
        offs = np.asarray(arr.offsets)
        lengths = np.diff(offs)
        if len(lengths) and (lengths != lengths[0]).any():
            bad = int(np.flatnonzero(lengths != lengths[0])[0])
            raise BadInputError(f"has embeddings of mixed lengths ({lengths[0]} and {lengths[bad]})",
                                column=name, row=_row_id(ids, bad),
                                hint="Every embedding of a view must have the same dimension")
        d = int(lengths[0]) if len(lengths) else (dim or 0)
    values = arr.flatten()  # respects slicing offsets
    if values.type not in _FLOATS:
        raise BadInputError(f"holds {values.type} values, not floats", column=name,
                            hint="Embeddings must be float16, float32 or float64")
    if values.null_count:
        i = int(np.flatnonzero(~np.asarray(values.is_valid()))[0]) // max(d, 1)
        raise BadInputError("holds a null value inside an embedding", column=name,
                            row=_row_id(ids, i), hint="Fix or drop the row")
    flat = values.to_numpy(zero_copy_only=False)
    if dim is not None and d != dim:
        # every row of the block is off, not one: say so (the first row's id only tells the job
        # which file to name)
        raise BadInputError(f"has dimension {d} in every row of its partition, but the classes have {dim}",
                            column=name, row=_row_id(ids, 0) if len(arr) else None,
                            hint="Items and classes of a view must come from the same model")
    return flat.astype(np.float32, copy=False).reshape(len(arr), d)


_PACKED = {2: np.dtype("<f2"), 4: np.dtype("<f4"), 8: np.dtype("<f8")}
#: Field metadata of a packed column naming its float type (``pairwise-dask pack`` writes it):
#: ``fixed_size_binary[16]`` is 4 float32 or 8 float16 values, which only the items' dimension,
#: when the items are lists, or this key tells apart.
PACKED_FLOAT_KEY = b"pairwise_dask.float"
_PACKED_FLOATS = {dt.name: size for size, dt in _PACKED.items()}  # "float16" -> 2, …


def packed_float_of(field: pa.Field) -> str | None:
    """A packed column's float type from its field metadata (:data:`PACKED_FLOAT_KEY`), or None."""
    value = (field.metadata or {}).get(PACKED_FLOAT_KEY)
    return value.decode() if value else None


def _packed_matrix(arr: pa.Array, *, name: str, ids: np.ndarray | None, dim: int | None,
                   packed_float: str | None = None) -> np.ndarray:
    """``(n, d)`` float32 from a ``fixed_size_binary`` column of packed little-endian floats:
    ``packed_float`` (the column's metadata) gives their type, else ``dim`` (the classes'
    dimension), else float32."""
    width = arr.type.byte_width
    if packed_float is not None:
        size = _PACKED_FLOATS.get(packed_float)
        if size is None or width % size:
            raise BadInputError(f"is fixed_size_binary[{width}] marked {packed_float}, which it cannot hold",
                                column=name, hint="Mark packed columns float16, float32 or float64 (pairwise-dask pack)")
        if dim and width // size != dim:
            raise BadInputError(f"has dimension {width // size} ({packed_float}), but the classes have {dim}",
                                column=name, row=_row_id(ids, 0) if len(arr) else None,
                                hint="Items and classes of a view must come from the same model")
        dim = width // size
    d = dim if dim else width // 4
    if d <= 0 or width % d or (width // d) not in _PACKED:
        raise BadInputError(f"is fixed_size_binary[{width}], which does not pack {dim or '?'} floats "
                            f"of 2, 4 or 8 bytes", column=name,
                            hint="Pack each embedding as d float16/float32/float64 values")
    if arr.null_count:
        i = int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])
        raise BadInputError("holds a null embedding", column=name, row=_row_id(ids, i),
                            hint="Drop the row or supply its embedding")
    n = len(arr)
    if n == 0:
        return np.zeros((0, d), np.float32)
    dt = _PACKED[width // d]
    flat = np.frombuffer(arr.buffers()[1], dtype=dt, count=n * d, offset=arr.offset * width)
    out = flat.astype(np.float32, copy=False).reshape(n, d)
    if packed_float is None and dt.itemsize == 2 and not np.isfinite(out).all():
        # unmarked bytes sized by the classes alone: float32 read as float16 (classes of twice the
        # items' dimension) comes out as NaN and infinities, so the message names both causes
        i = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise BadInputError("holds NaN or infinite values", column=name, row=_row_id(ids, i),
                            hint=f"Recompute or drop that embedding. The column is packed without a float type "
                                 f"mark and was read as {d} float16 values to match the classes' dimension; if "
                                 f"it holds {width // 4} float32 values, use classes of the items' model, or mark "
                                 "the column's float type (`pairwise-dask pack` does)")
    return out


#: float32's smallest normal: a float32 Σx² below it has lost precision (subnormal) or underflowed
_TINY32 = float(np.finfo(np.float32).tiny)
_MAX32 = float(np.finfo(np.float32).max)


def row_squares(x: np.ndarray, *, name: str, ids: np.ndarray | None = None, low: float = _TINY32,
                high: float = _MAX32) -> tuple[np.ndarray, np.ndarray]:
    """``Σ_j x_ij²`` per row (float64), checked, and the mask of the rows measured again in float64.

    One float32 pass measures every row (the common case ends there). A row whose float32 sum
    falls outside ``[low, high]`` (by default: overflowed to inf, or below float32's smallest normal,
    so subnormal with its precision lost, or 0) or is NaN (a NaN or an infinity in the row) is
    measured again in float64, which holds the squares of any float32 exactly. The decision is
    each row's own, so a row's value never depends on which other rows share its block. NaN/inf
    and all-zero rows are bad input, named by their row id.
    """
    sq32 = np.einsum("ij,ij->i", x, x)
    odd = ~((sq32 >= low) & (sq32 <= high))  # NaN fails both comparisons, so it is caught here too
    sq = sq32.astype(np.float64)
    if not odd.any():
        return sq, odd
    rows = np.flatnonzero(odd)
    sq[rows] = np.einsum("ij,ij->i", x[rows], x[rows], dtype=np.float64)
    bad = ~np.isfinite(sq[rows])
    if bad.any():
        i = int(rows[np.flatnonzero(bad)[0]])
        raise BadInputError("holds NaN or infinite values", column=name, row=_row_id(ids, i),
                            hint="Recompute or drop that embedding")
    zero = sq[rows] == 0
    if zero.any():
        i = int(rows[np.flatnonzero(zero)[0]])
        raise BadInputError("holds an all-zero embedding, which has no direction", column=name,
                            row=_row_id(ids, i), hint="Recompute or drop that embedding")
    return sq, odd


def inverse_norms(x: np.ndarray, *, name: str, ids: np.ndarray | None = None) -> np.ndarray:
    """``1 / ‖x_i‖`` per row (float32); NaN/inf and all-zero rows are bad input, never patched.

    The passes keep the rows as read and carry these factors: cosines scale by them, the pair
    decisions and masked margins do not need them at all (both sides share the row's norm), and
    the moments apply them while quantising, so no normalised copy of a block is ever made.
    Each row's factor is a function of that row alone (:func:`row_squares`).
    """
    sq, _ = row_squares(x, name=name, ids=ids)
    return (1.0 / np.sqrt(sq)).astype(np.float32)


#: The rows :func:`checked_rows` brings back to unit scale: float32 Σx² outside this band (norms
#: outside about [2.3e-10, 4.3e9]). Inside it float32 squares, masked sums of squares and products
#: with the pair weights keep far from overflow and from subnormals; the band is wider than any
#: embedding model's norms, so the common path never copies.
SAFE_SQUARES = (2.0 ** -64, 2.0 ** 64)


def checked_rows(x: np.ndarray, *, name: str, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, 1 / ‖rows_i‖)``: ``x`` checked (as :func:`inverse_norms`), each row of extreme
    magnitude multiplied by a power of two that brings its norm into ``[0.5, 1)``.

    The passes compute on the rows as read and count on scale-invariance (cosine decisions and
    masked margins carry no norm; the moments and the Gram apply the factors). That holds in
    float32 only while the squares neither overflow nor go subnormal: an item ×1e-25 had every
    cosine margin 0 (its masked norms underflowed), one ×1e20 its raw decisions as margins (they
    overflowed, to NaN after the mask product), and both other labels. A power of two changes
    no bit of a row's direction (it is exact), nor of anything computed from it that stays in
    range, so only rows that need it are touched (float32 Σx² outside :data:`SAFE_SQUARES`: a
    decision of the row alone, so partition-invariant), and their factors are measured as the
    common path measures, in float32. ``x`` itself is returned unless a row is rescaled; then a
    copy (``x`` may be a read-only view of Arrow memory).
    """
    sq, odd = row_squares(x, name=name, ids=ids, low=SAFE_SQUARES[0], high=SAFE_SQUARES[1])
    if odd.any():
        rows = np.flatnonzero(odd)
        _, e = np.frexp(np.sqrt(sq[rows]))  # ‖x‖ = f·2**e, f in [0.5, 1)
        x = x.copy()
        x[rows] = np.ldexp(x[rows], -e[:, None].astype(np.int32))
        sq[rows] = np.einsum("ij,ij->i", x[rows], x[rows])
    return x, (1.0 / np.sqrt(sq)).astype(np.float32)


def normalize_rows(x: np.ndarray, *, name: str, ids: np.ndarray | None = None) -> np.ndarray:
    """L2-normalised float32 rows (checked and brought into range as in :func:`checked_rows`)."""
    x, scale = checked_rows(x, name=name, ids=ids)
    return np.multiply(x, scale[:, None], dtype=np.float32)


# --- stable 64-bit hashes of ids (the bracket's randomness must not depend on row position) -----

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised (uint64 arithmetic wraps, as intended)."""
    return mix64_inplace(np.array(x, dtype=np.uint64))


def mix64_inplace(x: np.ndarray) -> np.ndarray:
    """:func:`mix64` of a uint64 array, overwriting it (one temporary, not six)."""
    t = np.empty_like(x)
    with np.errstate(over="ignore"):
        for shift, mult in ((30, _M1), (27, _M2)):
            np.right_shift(x, np.uint64(shift), out=t)
            x ^= t
            x *= mult
        np.right_shift(x, np.uint64(31), out=t)
        x ^= t
    return x


def hash_ids(column: object) -> np.ndarray:
    """A uint64 hash per id, a pure function of the id's value (not of its row or partition).

    Strings hash their UTF-8 bytes (polynomial hash over the Arrow buffers, finalised with
    splitmix64); integers hash their value.
    """
    arr = to_arrow(column)
    t = arr.type
    if pa.types.is_integer(t):
        return mix64(arr.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64) ^ _GOLD)
    if pa.types.is_large_string(t) or pa.types.is_string_view(t) or pa.types.is_large_binary(t):
        arr = arr.cast(pa.string() if "string" in str(t) else pa.binary())
        t = arr.type
    if not (pa.types.is_string(t) or pa.types.is_binary(t)):
        raise BadInputError(f"id column has type {t}", hint="Use string or integer ids")
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.uint64)
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4).astype(np.int64)
    data = (np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8))
    data = data[offs[0]:offs[-1]].astype(np.uint64)
    offs = offs - offs[0]
    lengths = np.diff(offs)
    pos = np.arange(len(data), dtype=np.int64) - np.repeat(offs[:-1], lengths)
    # byte j of a string is weighted by P**j, so equal strings give equal sums wherever they are
    powers = mix64(pos.astype(np.uint64) + _GOLD) | np.uint64(1)
    with np.errstate(over="ignore"):
        terms = (data + np.uint64(1)) * powers
    sums = np.zeros(n, np.uint64)
    nonempty = lengths > 0
    if len(terms):
        starts = offs[:-1][nonempty]
        sums[nonempty] = np.add.reduceat(terms, starts)
    with np.errstate(over="ignore"):
        return mix64(sums ^ mix64(lengths.astype(np.uint64)))
