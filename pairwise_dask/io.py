"""Parquet in and out, and the atomic commit of a run's outputs. The only module touching files.

Reading keeps embeddings in Arrow (``dtype_backend="pyarrow"``) so a partition's block is a view
of Arrow buffers (see :mod:`pairwise_dask.arrays`). Writing is deterministic (same table, same
bytes) and every run's outputs are staged inside the output folder and renamed into place only
when all of them are written; ``summary.json`` is renamed last and marks a complete result.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any, Collection, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .arrays import embedding_matrix, is_float_list, is_list_type, normalize_rows, packed_float_of
from .config import BEFORE_OPTION, Settings
from .errors import BadInputError
from .storage import Location, is_url

STAGING_PREFIX = ".pairwise-staging-"
TRASH_PREFIX = ".pairwise-trash-"
OUTPUT_ENTRIES = ("labels", "disagreements", "model", "report.html", "summary.json")
#: what :func:`pairwise_dask.model.save` writes into ``model/``
MODEL_FILES = frozenset({"params.json", "classes.parquet", "moments.parquet", "masks.parquet", "anchors.parquet",
                         "rotation.parquet"})


def _is_packed(t: pa.DataType) -> bool:
    """``fixed_size_binary``: embeddings packed as raw little-endian floats (see arrays.embedding_matrix)."""
    return pa.types.is_fixed_size_binary(t)


def parquet_files(path: str, storage_options: dict | None = None) -> list[str]:
    """The Parquet files of a path or URL: a file, a folder (recursively) or a glob, sorted."""
    loc = Location.of(path, storage_options)
    if any(ch in path for ch in "*?["):
        files = loc.glob(loc.path)
    elif loc.is_dir():
        files = loc.files((".parquet", ".parq", ".pq"))
    elif loc.exists():
        files = [loc]
    else:
        raise BadInputError("does not exist", file=path, hint="Check the items/classes path")
    if not files:
        raise BadInputError("holds no Parquet files", file=path,
                            hint="Point at a .parquet file, a folder of them, or a glob")
    return [f.url for f in files]


def _parquet_file(f: str, storage_options: dict | None, *, memory_map: bool = False) -> pq.ParquetFile:
    if is_url(f):
        return pq.ParquetFile(Location.of(f, storage_options).open("rb"))
    return pq.ParquetFile(f, memory_map=memory_map)


#: what to do about an unreadable items file (also ``pack``'s input)
ITEMS_HINT = ("Convert it to Parquet first, e.g. pandas.read_csv(...).to_parquet(...) with each embedding as a "
              "list of floats; or point at the Parquet files only (a folder or a glob such as 'items/*.parquet')")
CLASSES_HINT = ("Point --classes at a Parquet file with a `name` column and an embedding column per view; "
                "`pairwise-dask classes` writes one from class names")
#: what to do about a Parquet file whose footer reads but whose data does not
DAMAGED_HINT = ("The file is damaged (cut short or overwritten) or its storage failed while reading: "
                "rewrite it from its source, or leave it out of the catalog")


@contextlib.contextmanager
def readable(file: str, what: str = "cannot be read", hint: str = DAMAGED_HINT) -> Iterator[None]:
    """Reading Parquet data under a sound footer: pyarrow's errors for damaged pages (or a storage
    failing mid-read) become a :class:`BadInputError` naming the file, ``what`` and pyarrow's words."""
    try:
        yield
    except (OSError, pa.ArrowException) as e:
        raise BadInputError(f"{what} ({e})", file=file, hint=hint) from None


def open_parquet(f: str, storage_options: dict | None = None, *, hint: str = ITEMS_HINT) -> pq.ParquetFile:
    """A Parquet file's reader; a file that is not Parquet, or is cut short, is a :class:`BadInputError`."""
    try:
        return _parquet_file(f, storage_options)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for broken files
        raise BadInputError(f"is not a readable Parquet file ({e})", file=f, hint=hint) from None


@dataclass(frozen=True)
class ItemsInfo:
    """What the Parquet footers say about the items, before any data is read."""

    files: tuple[str, ...]
    rows: int
    row_groups: int
    dims: dict[str, int | None]  # per view; None for list<float> (checked when read)


def _read_as(t: pa.DataType) -> pa.DataType:
    """A column's type as :func:`read_row_group` gives it (strings become large_string)."""
    return pa.large_string() if pa.types.is_string(t) else t


def inspect_items(s: Settings) -> ItemsInfo:
    """Check the items' schema and size from the footers: missing or non-list columns, empty catalogs,
    and each view's dimension where the footers (or the first file's first row) tell it."""
    files = parquet_files(s.items, s.storage_options)
    metas = [(f, open_parquet(f, s.storage_options).metadata) for f in files]
    rows = sum(m.num_rows for _, m in metas)
    if rows == 0:
        raise BadInputError("holds no rows (empty catalog)", file=s.items,
                            hint="Point the job at a catalog with items")
    # a file without rows holds no items: it is not read, and its schema is not compared (pandas
    # writes an empty frame's columns as type null, which no other file of the catalog has)
    metas = [(f, m) for f, m in metas if m.num_rows]
    files = [f for f, _ in metas]
    schema = None
    groups = 0
    for f, meta in metas:
        groups += meta.num_row_groups
        fs = meta.schema.to_arrow_schema()
        if schema is None:
            schema = fs
        for col in [c for _, c in s.views] + [s.id]:  # (string ids are read as large_string either way)
            if col in fs.names and col in schema.names and \
                    _read_as(fs.field(col).type) != _read_as(schema.field(col).type):
                raise BadInputError(f"has type {fs.field(col).type} here but {schema.field(col).type} "
                                    f"in {files[0]}", file=f, column=col,
                                    hint="All files of a catalog must share one schema" +
                                         (": write the ids with one type (say int64 or string) in every file"
                                          if col == s.id else ""))
    assert schema is not None
    if s.id in schema.names:
        t_id = schema.field(s.id).type
        if not (pa.types.is_integer(t_id) or pa.types.is_string(t_id) or pa.types.is_large_string(t_id)
                or pa.types.is_binary(t_id) or pa.types.is_large_binary(t_id)):
            # caught here from the footer, not later on a worker with no file to name
            raise BadInputError(f"has type {t_id}; ids must be strings or integers", file=files[0],
                                column=s.id, hint="Cast the id column to string or int64")
    need = [s.id] + [c for _, c in s.views] + ([s.label] if s.label else [])
    for col in need:
        if col not in schema.names:
            raise BadInputError("is missing", file=files[0], column=col, hint=_missing_hint(s, col, schema.names))
    dims: dict[str, int | None] = {}
    for v, col in s.views:
        field = schema.field(col)
        t = field.type
        if _is_packed(t):
            dims[v] = _packed_dims(s, v, col, field, files[0])
            continue
        if not is_list_type(t):
            raise BadInputError(f"has type {t}, not a list of floats", file=files[0], column=col,
                                hint="Store each embedding as fixed_size_list<float32>[d] or list<float>")
        if not pa.types.is_floating(t.value_type):
            raise BadInputError(f"holds {t.value_type}, not floats", file=files[0], column=col,
                                hint="Embeddings must be float16, float32 or float64")
        dims[v] = t.list_size if pa.types.is_fixed_size_list(t) else \
            _list_length(files[0], col, metas[0][1], s.storage_options)
    return ItemsInfo(tuple(files), rows, groups, dims)


def _missing_hint(s: Settings, col: str, names: list[str]) -> str:
    """What to do about a missing items column: the flag (or job file key) that names it, and the
    file's column that it most likely is."""
    near = [n for n in names if n.lower() == col.lower()]
    if not near and col == s.id:  # ids are often item_id, sku_id, productId, …
        near = [n for n in names if n.lower().endswith("id") or n.lower() in ("key", "uid", "uuid")]
    flag = ("--id COLUMN (or `id = ...` in the job file)" if col == s.id else
            "--label COLUMN (or `label = ...`)" if col == s.label else "--views NAME=COLUMN (or [views])")
    return ((f"Did you mean {near[0]!r}? " if near else "") + f"Name the column with {flag}. "
            f"The file has: {', '.join(names)}")


def _classes_dim(s: Settings, view: str, item_col: str) -> int | None:
    """The classes' dimension for ``view`` from their footer (fixed_size_list), or None. The
    column is the one :func:`classes_from_table` takes; anything amiss is left to it."""
    try:
        schema = open_parquet(parquet_files(s.classes, s.storage_options)[0], s.storage_options).schema_arrow
        explicit = dict(s.class_columns)
        candidates = [explicit[view]] if view in explicit else [item_col, view, "embedding"]
        col = next((c for c in candidates if c in schema.names), None)
        t = schema.field(col).type if col else None
        return t.list_size if t is not None and pa.types.is_fixed_size_list(t) else None
    except Exception:  # noqa: BLE001 - read_classes reports a bad classes file
        return None


def _packed_dims(s: Settings, view: str, col: str, field: pa.Field, file: str) -> int | None:
    """A packed column's dimension from its schema: its width over its marked float size; unmarked,
    the width must hold the classes' d floats of 2, 4 or 8 bytes. Checked here, before the cluster
    starts (it was found on a worker, and blamed on one row of every partition)."""
    from .arrays import _PACKED_FLOATS

    width = field.type.byte_width
    marked = packed_float_of(field)
    if marked is not None:
        size = _PACKED_FLOATS.get(marked)
        return width // size if size and width % size == 0 else None  # a bad mark: the read names it
    d = _classes_dim(s, view, col)
    if d and (width % d or width // d not in (2, 4, 8)):
        raise BadInputError(f"is fixed_size_binary[{width}], which cannot hold the classes' {d} floats (as "
                            f"float32 it holds {width / 4:g} values)", file=file, column=col,
                            hint="Items and classes of a view must come from the same model")
    return d


def _list_length(file: str, col: str, meta: pq.FileMetaData, storage_options: dict | None) -> int | None:
    """The length of every list of a ``list<float>`` column of ``file``, when its first row and the
    footer's value count agree on one (rows × length values); else None (checked when read)."""
    leaves = [meta.row_group(g).column(i) for g in range(meta.num_row_groups)
              for i in range(meta.num_columns)]
    values = sum(c.num_values for c in leaves
                 if c.path_in_schema.startswith(col + ".") and c.path_in_schema[len(col) + 1:] in _LIST_LEAVES)
    try:
        pf = _parquet_file(file, storage_options)
        first = next(pf.iter_batches(batch_size=1, columns=[col], use_threads=False)).column(0)
    except (OSError, StopIteration, pa.ArrowException):
        return None  # damaged pages: the read names them
    if first.null_count:
        return None
    n = len(first[0].values)
    return n if n and values == n * meta.num_rows else None


#: Bytes of embedding values per batch when a row group's list columns are streamed
#: (:func:`read_row_group`): 4,096 rows of 768 float32. Measured on the 1M x 768 x 2-view snappy
#: catalog, one process reading all 16 row groups: 2,048 rows 15.2 s, 4,096 12.0-12.6 s, 8,192
#: 13.6-14.0 s, whole row groups 21.6 s.
STREAM_BATCH_BYTES = 12 << 20


def read_row_group(path: str, group: int, columns: list[str], storage_options: dict | None = None, *,
                   batch_bytes: int = STREAM_BATCH_BYTES) -> pa.Table:
    """One Parquet row group's columns as an Arrow table: the job's unit of work (one partition).

    Read straight with pyarrow: no pandas conversion, each column one chunk, so the embedding
    blocks are views of the read buffers (see :func:`pairwise_dask.arrays.to_arrow`).

    A local file is memory-mapped: pages are decoded straight from the page cache instead of being
    copied into a read buffer first, which halves the fresh memory a read touches (1M × 768 × 2
    views, all 16 row groups kept: 4.1-7.4 s → 1.7-3.1 s). The decoded columns are copies and the
    map is closed on return, so no file page stays in the worker's RSS, which Dask's memory
    limits watch (measured: RssFile unchanged after the reads).

    A row group with list embedding columns is read in batches of about ``batch_bytes`` of values,
    each list column copied into one preallocated block (see :func:`read_lists_streamed`); one
    without them, or whose lists are not all of one length without nulls, is read whole, so the
    checks of :func:`pairwise_dask.arrays.embedding_matrix` see the data as stored.
    """
    pf = _parquet_file(path, storage_options, memory_map=True)
    try:
        names = set(pf.schema_arrow.names)
        for c in columns:  # the first file's columns were checked; a later file may lack one
            if c not in names:
                raise BadInputError("is not a column of this file", file=path, column=c,
                                    hint="Every file of the catalog needs the id, view and label columns; "
                                         f"this one has {', '.join(pf.schema_arrow.names)}")
        with readable(path, f"row group {group} cannot be read"):
            t = read_lists_streamed(pf, group, columns, batch_bytes)
            if t is None:
                t = pf.read_row_group(group, columns=columns, use_threads=False)
    finally:
        pf.close()
    # strings as large_string, as the Dask DataFrame path gives them: the same output schema
    # whichever path read the partition
    schema = pa.schema([f.with_type(_read_as(f.type)) for f in t.schema])
    return t.cast(schema) if schema != t.schema else t


#: how a list column's leaf is named below it in a Parquet footer (Arrow's writer, legacy writers)
_LIST_LEAVES = ("list.element", "list.item", "element", "item", "array", "bag.array_element")


def read_lists_streamed(pf: pq.ParquetFile, group: int, columns: list[str], batch_bytes: int, *,
                         only: Collection[str] | None = None) -> pa.Table | None:
    """The row group with its list-of-float columns (those in ``only``, when given) as
    ``fixed_size_list`` columns over one contiguous values block each, bit for bit the stored
    values; every other column, field and the schema's metadata as the whole read gives them. None
    when there is no such column, no row, or a list is null, holds a null or differs in length (the
    caller then reads the row group whole and the embedding checks name the row).

    Why: pyarrow decodes a whole row group's list column into buffers it grows as it goes; every
    growth is a fresh allocation the kernel zeroes and a copy (47% of the read's CPU time in
    ``clear_page_erms``, measured with perf). Small batches reuse the same few buffers, and each
    column's block is allocated once at its final size: 21.6 → 12.0-12.6 CPU-seconds for the
    1M × 768 × 2-view snappy catalog read in one process.
    """
    schema = pf.schema_arrow
    columns = list(dict.fromkeys(columns))  # a name asked for twice (label = id) once, as pyarrow reads it
    lists = [c for c in columns if is_float_list(schema.field(c).type) and (only is None or c in only)]
    meta = pf.metadata.row_group(group)
    n = meta.num_rows
    if not lists or n == 0:
        return None
    # values per row from the footer (the leaf column's value count), to size the batches
    # (the leaf of list column c is c.list.element, c.list.item, c.element, … but not c.x.list.element)
    leaves = [(meta.column(i).path_in_schema, meta.column(i).num_values) for i in range(meta.num_columns)]
    per_row = max(1, max((v for c in lists for p, v in leaves
                          if p.startswith(c + ".") and p[len(c) + 1:] in _LIST_LEAVES), default=n) // n)
    batch_rows = max(64, batch_bytes // (4 * per_row))
    blocks: dict[str, np.ndarray] = {}
    dims: dict[str, int] = {}
    others: dict[str, list[pa.Array]] = {c: [] for c in columns if c not in lists}
    at = 0
    for b in pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns, use_threads=False):
        m = b.num_rows
        for c in lists:
            col = b.column(c)
            if col.null_count:
                return None
            if pa.types.is_fixed_size_list(col.type):
                d = col.type.list_size
            else:
                lengths = np.diff(np.asarray(col.offsets))
                d = int(lengths[0]) if m else dims.get(c, 0)
                if m and (lengths != d).any():
                    return None
            if dims.setdefault(c, d) != d or d == 0:  # no fixed-size list of 0 values in Arrow
                return None
            values = col.flatten()
            if values.null_count:
                return None
            if c not in blocks:
                blocks[c] = np.empty(n * d, values.type.to_pandas_dtype())
            blocks[c][at * d:(at + m) * d] = values.to_numpy()
        for c in others:
            others[c].append(b.column(c))
        at += m
    if at != n:
        return None
    arrays, fields = [], []
    for c in columns:
        f = schema.field(c)
        if c in blocks:
            # the stored value field (name, nullability, metadata) over the block
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(blocks[c]),
                                                            type=pa.list_(f.type.value_field, dims[c])))
            fields.append(pa.field(c, arrays[-1].type, f.nullable, f.metadata))
        else:
            chunks = others[c]
            try:
                arrays.append(chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks))
            except pa.ArrowInvalid:  # over 2 GiB of strings or bytes: chunked, as the whole read gives it
                arrays.append(pa.chunked_array(chunks, f.type))
            fields.append(f)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


def item_parts(s: Settings, info: ItemsInfo) -> list:
    """The items as a list of delayed partitions, each a table (or DataFrame) of the needed columns.

    By default one task per Parquet row group, read with :func:`read_row_group` (the fastest path
    measured: ``benchmarks/README.md``); with ``partition_rows`` set, the Dask DataFrame of
    :func:`read_items` repartitioned to that size.
    """
    from dask import delayed
    from dask.base import tokenize

    if s.partition_rows:
        return read_items(s, info).to_delayed()
    cols = [s.id] + [c for _, c in s.views] + ([s.label] if s.label else [])
    opts = s.storage_options or None
    parts = []
    for f in info.files:
        for g in range(_parquet_file(f, opts).metadata.num_row_groups):
            # the same key in both passes (a pure read), named for what it is in task streams
            parts.append(delayed(read_row_group, pure=True)(f, g, cols, opts,
                                                            dask_key_name=f"read_parquet-{tokenize(f, g, cols)}"))
    return parts


def read_items(s: Settings, info: ItemsInfo):
    """The items as a Dask DataFrame with Arrow-backed columns (embeddings stay Arrow lists)."""
    import dask.dataframe as dd

    cols = [s.id] + [c for _, c in s.views] + ([s.label] if s.label else [])
    ddf = dd.read_parquet(list(info.files), columns=cols, dtype_backend="pyarrow",
                          split_row_groups=True, index=False, storage_options=s.storage_options or None)
    if s.partition_rows:
        nparts = max(1, -(-info.rows // s.partition_rows))
        if nparts != ddf.npartitions:
            ddf = ddf.repartition(npartitions=nparts)
    return ddf


@dataclass(frozen=True)
class _ViewsOnly:
    views: tuple[tuple[str, str], ...]
    class_columns: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ClassSet:
    """Class names and, per view, their L2-normalised prompt embeddings ``(k, d)`` float32."""

    names: tuple[str, ...]
    embeddings: dict[str, np.ndarray]
    columns: dict[str, str]

    @property
    def k(self) -> int:
        return len(self.names)


def read_classes(s: Settings) -> ClassSet:
    """Read and check the classes file: ≥ 2 unique names, one embedding per view (or shared)."""
    files = parquet_files(s.classes, s.storage_options)
    tables = []
    for f in files:
        pf = open_parquet(f, s.storage_options, hint=CLASSES_HINT)
        with readable(f):
            tables.append(pf.read())
    table = pa.concat_tables(tables)
    return classes_from_table(table, s.views, s.class_columns, where=s.classes)


def classes_from_table(table: pa.Table, views: tuple[tuple[str, str], ...],
                       class_columns: tuple[tuple[str, str], ...] = (), *, where: str = "classes") -> ClassSet:
    """Check a classes table (``name`` + embedding columns) and normalise its prompts per view."""
    s = _ViewsOnly(views, class_columns)
    if "name" not in table.column_names:
        raise BadInputError("is missing", file=where, column="name",
                            hint=f"The classes file needs a `name` column; it has {', '.join(table.column_names)}")
    names_col = table.column("name")
    if names_col.null_count:
        raise BadInputError("holds a null class name", file=where, column="name",
                            hint="Give every class a name (it is the label written to the outputs)")
    names = [str(n) for n in names_col.to_pylist()]
    if len(names) < 2:
        raise BadInputError(f"holds {len(names)} class(es); the tourney needs at least two",
                            file=where, hint="Add classes")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise BadInputError(f"class name {n!r} appears twice", file=where, column="name",
                                hint="Class names must be unique")
        seen.add(n)
    explicit = dict(s.class_columns)
    emb: dict[str, np.ndarray] = {}
    cols: dict[str, str] = {}
    for view, item_col in s.views:
        candidates = [explicit[view]] if view in explicit else [item_col, view, "embedding"]
        col = next((c for c in candidates if c in table.column_names), None)
        if col is None:
            raise BadInputError(f"has no embedding column for view {view!r} (looked for "
                                f"{', '.join(repr(c) for c in candidates)}; it has "
                                f"{', '.join(table.column_names)})", file=where,
                                hint=f"Name the view's column with --class-columns {view}=COLUMN (or a "
                                     "[class_columns] table in the job file), or name a column after the view "
                                     "or the items' column, or provide one shared `embedding`")
        try:
            x = embedding_matrix(table.column(col), name=col, ids=np.asarray(names, dtype=object),
                                 packed_float=packed_float_of(table.schema.field(col)))
            emb[view] = normalize_rows(x, name=col, ids=np.asarray(names, dtype=object))
        except BadInputError as e:  # the array checks know the column and class, not the file
            raise e.at(file=where) from None
        cols[view] = col
    # one canonical class order, by name: class indices seed the bracket's draw, break exact ties and
    # order the sums of pair margins, so the file's row order must not change any label or margin
    order = sorted(range(len(names)), key=names.__getitem__)
    return ClassSet(tuple(names[i] for i in order), {v: e[order] for v, e in emb.items()}, cols)


def locate_row(files: tuple[str, ...] | list[str], id_col: str, row: object,
               storage_options: dict | None = None) -> str | None:
    """The first file holding the id ``row`` (or, for ``row=None``, a null id). Error path only.

    Workers see partitions, not files; when a per-partition check fails, this one read of the id
    column lets the message name the file to fix.
    """
    if len(files) == 1:
        return files[0]
    places = locate_id(files, id_col, row, storage_options, first=True)
    return places[0][0] if places else None


def locate_id(files: tuple[str, ...] | list[str], id_col: str, value: object,
              storage_options: dict | None = None, *, first: bool = False) -> list[tuple[str, int]]:
    """Every (file, row number from 0) whose id is ``value`` (``None``: a null id), in file order;
    with ``first``, only the first file's. Error path only: it reads the id column of the files,
    to name every copy of a duplicated id."""
    import pyarrow.compute as pc

    found: list[tuple[str, int]] = []
    for f in files:
        try:
            pf = _parquet_file(f, storage_options)
            if not pf.metadata.num_rows or id_col not in pf.schema_arrow.names:
                continue
            ids = pf.read(columns=[id_col]).column(id_col)
            hit = pc.is_null(ids) if value is None else pc.fill_null(pc.equal(ids, pa.scalar(value, ids.type)), False)
            hits = pc.indices_nonzero(hit)
        except (OSError, pa.ArrowException):  # unreadable, or an id of another type: not here
            continue
        found += [(f, int(i)) for i in hits.to_pylist()]
        if first and found:
            break
    return found


def duplicate_places(places: list[tuple[str, int]]) -> str:
    """``"(rows 3 and 50)"`` within one file, ``"(row 3, and row 50 of /x/b.parquet)"`` across files."""
    if len(places) < 2:
        return ""
    first = places[0][0]
    if all(f == first for f, _ in places):
        return f"(rows {', '.join(str(i) for _, i in places[:-1])} and {places[-1][1]}, counted from 0)"
    rest = ", ".join(f"row {i}" + ("" if f == first else f" of {f}") for f, i in places[1:4])
    more = f" and {len(places) - 4} more" if len(places) > 4 else ""
    return f"(row {places[0][1]}, and {rest}{more}; rows counted from 0)"


# --- writing -------------------------------------------------------------------------------

def write_table(table: pa.Table, path: "str | os.PathLike | Location") -> None:
    """Deterministic Parquet write (same table → same bytes), to a local path or a Location."""
    if isinstance(path, Location) and not path.local:
        with path.open("wb") as f:
            pq.write_table(table, f, compression="zstd", row_group_size=1 << 20)
    else:
        pq.write_table(table, os.fspath(path), compression="zstd", row_group_size=1 << 20)


def json_text(obj: Any) -> str:
    """Strict JSON (NaN and infinities, which JSON lacks, as ``null``); NumPy values as Python's."""
    return json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)


def _finite(o: Any) -> Any:
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def write_json(obj: Any, path: "str | os.PathLike | Location") -> None:
    Location.of(path).write_text(json_text(obj) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _differences(old: dict, identity: dict, most: int = 3) -> str:
    """How this job differs from the one whose ``summary.json`` is ``old``: ``"keep: 0.5 → 0.4"``,
    at most ``most`` items; else the other release that wrote it, if another did ("" if neither:
    the difference is in something summary.json does not record, such as the id or label column)."""
    # an option the old run did not record had the value of the method before it existed
    was = {**BEFORE_OPTION, "items": (old.get("items") or {}).get("path"),
           "classes": (old.get("classes") or {}).get("path"), "views": old.get("views"), **(old.get("method") or {})}
    now = {k: v for k, v in identity.items() if k != "method"} | identity.get("method", {})
    unset = "(not set)"
    diffs = [f"{k}: {was.get(k, unset)} → {v}" for k, v in now.items() if was.get(k, unset) != v]
    if diffs:
        return "; ".join(diffs[:most]) + (f"; and {len(diffs) - most} more" if len(diffs) > most else "")
    from . import __version__

    release = old.get("version")
    return f"written by pairwise-dask {release}" if release and release != __version__ else ""


#: the note publish() leaves in its trash folder: the staging folder and the entries it moves in
JOURNAL = "publishing.json"


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done: their handlers then run at its end, once the
    block's renames are all made. (Python handlers, not a signal mask: a mask holds a signal for
    one thread only, and the Dask client's threads would take it.) In the main thread only, where
    handlers can be set; elsewhere a no-op."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    held = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(got):
            signal.raise_signal(s)  # now the handler the block held it from


def _write_durably(where: Location, text: str) -> None:
    """Write ``text`` and, locally, flush it to the disk before going on."""
    if not where.local:
        where.write_text(text)
        return
    with open(where.path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _moved_in(trash: Location, entry: str) -> Location:
    """The mark an object store's move of ``entry`` into ``out`` leaves once its copy is whole."""
    return trash / f"moved-in.{entry}"


def _move_in(src: Location, dst: Location, mark: Location) -> None:
    """A staged entry into ``out``: locally one atomic rename. On an object store a move is a copy
    and a delete, and a run killed during the delete left a partial source that the next roll
    forward took for a move still to make (it then replaced the whole copy by the partial source):
    so the copy is marked whole before its source is deleted."""
    if src.local:
        src.replace(dst)
        return
    src.copy_to(dst)  # (a copy a kill cut short is in the trash by now: _roll_forward moved it there)
    _write_durably(mark, "")
    src.rmtree()


def _roll_forward(out: Location, staging: Location, trash: Location, staged: list[str]) -> None:
    """Move ``staging``'s entries into ``out`` and the previous ones into ``trash``, ``summary.json``
    away first and into place last; from any state a killed run of this same function left."""
    summary = out / "summary.json"

    def in_place(e: str) -> bool:  # the new entry is whole in out already
        return not (staging / e).exists() or _moved_in(trash, e).exists()

    if (staging / "summary.json").exists():  # else the new one is in place already
        if summary.exists():
            summary.replace(trash / "summary.json")
            trash.fsync_dir()
        for e in OUTPUT_ENTRIES:
            if e == "summary.json" or (e in staged and in_place(e)):
                continue
            if (out / e).exists():  # the previous entry, or a copy of the new one a kill cut short
                (trash / e).rmtree()  # (what a killed move of it left there: trash, but not to nest into)
                (out / e).replace(trash / e)
        for e in staged:
            if not in_place(e):
                _move_in(staging / e, out / e, _moved_in(trash, e))
        out.fsync_dir()
        (staging / "summary.json").replace(summary)
        out.fsync_dir()
    trash.rmtree()
    staging.rmtree()


def settle(out: Location) -> list[str]:
    """Finish every publish into ``out`` that a killed run left half done (its journal says which
    staging folder it was moving in); return those staging folders' names."""
    done = []
    for trash in [p for p in out.iterdir() if p.name.startswith(TRASH_PREFIX)]:
        note = trash / JOURNAL
        if not note.exists():
            continue  # killed before deciding: the previous result is untouched; begin() clears it
        try:
            journal = json.loads(note.read_text())
            staging, entries = out / str(journal["staging"]), [str(e) for e in journal["entries"]]
        except (ValueError, KeyError, TypeError):
            continue  # never written whole (it is made durable before the first rename): undecided
        if staging.exists():
            _roll_forward(out, staging, trash, entries)
            done.append(staging.name)
        else:  # the publish was done; only its trash was still being removed
            trash.rmtree()
    return done


#: the lock file of an output folder a run is writing (hidden: not an output entry)
LOCK = ".pairwise-lock"


class OutLock:
    """An exclusive lock on a local output folder while a run writes it, so that two runs (a
    scheduled one still going when the next starts) never clear or publish over each other.

    ``flock(2)``: the kernel releases it when its process dies, so a killed run leaves no stale
    lock. Where there is no such lock (object stores, Windows, a file system without locks) the
    run goes on unlocked, as before.
    """

    def __init__(self, out: Location, run_id: str) -> None:
        self.out, self.run_id = out, run_id
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (a no-op when held); refuse when another live run holds it."""
        if self.fd is not None or not self.out.local:
            return
        try:
            import fcntl
        except ImportError:
            return
        path = (self.out / LOCK).path
        while True:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = ""
                with contextlib.suppress(OSError):
                    holder = open(path, encoding="utf-8").read().strip()
                raise BadInputError("is being written by another pairwise-dask run"
                                    + (f" ({holder})" if holder else ""), file=str(self.out),
                                    hint="Wait for that run to end, or choose another --out") from None
            except OSError:  # no locks on this file system: go on unlocked
                os.close(fd)
                return
            try:  # the file may have been released and removed between open and flock: take it anew
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        import socket
        import time

        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, run {self.run_id}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink((self.out / LOCK).path)  # while still held: a waiting open() then sees a new file
        os.close(self.fd)
        self.fd = None


class Commit:
    """Stage a run's outputs inside ``out`` and publish them only when all are written.

    Publishing renames several entries, so it is journaled: a note of the staged entries is written
    to the run's trash folder before the first rename, and from then on the new result is decided.
    ``summary.json`` is moved away first and renamed into place last, so the folder holds a complete
    result exactly when it has a ``summary.json``. A run killed between the renames leaves the
    folder without one; the next command on the folder finishes that publish from the note
    (:func:`settle`) before it looks at the folder. So a run killed at any moment leaves, for every
    later reader, either the previous complete result or its own (never a mix, and never the previous
    result lost with nothing in its place). SIGINT and SIGTERM wait until the renames are done.
    Locally every step is an atomic rename; on object stores (fsspec URLs) a rename is a copy, and
    readers must likewise trust only a folder with ``summary.json``.
    """

    def __init__(self, out: "str | Location", *, fingerprint: str, overwrite: bool,
                 storage_options: dict | None = None, identity: dict | None = None, command: str = "run") -> None:
        self.out = Location.of(out, storage_options)
        self.command = command  # run, fit, update, apply: a rerun replaces only its own command's output
        self.fingerprint = fingerprint
        self.identity = identity or {}  # items, classes, views, method: to say how another job differs
        self.overwrite = overwrite
        self.run_id = uuid.uuid4().hex[:12]
        self.staging = self.out / f"{STAGING_PREFIX}{self.run_id}"
        self._created: list[Location] = []  # folders begin() made (abort removes them, deepest first)
        self._journal: Location | None = None  # set once publish() has decided the new result
        self.published = False  # the new result is in place (publish or abort finished it)
        self._lock = OutLock(self.out, self.run_id)

    def check_target(self) -> None:
        """Refuse an output folder holding something else, unless ``overwrite`` (after finishing
        the publish of a run killed while renaming its outputs into place: :func:`settle`)."""
        if not self.out.exists():
            return
        if not self.out.is_dir():
            raise BadInputError("exists and is not a folder", file=str(self.out), hint="Choose another --out")
        try:
            self._check_target()
        except BaseException:
            self._lock.release()
            raise

    def _check_target(self) -> None:
        try:
            self._lock.acquire()  # before settle: a live run's publish is its own to finish
            settle(self.out)
        except OSError as e:
            raise BadInputError(f"cannot be written ({e.strerror or e})", file=str(self.out), folder=True,
                                hint="Choose a folder you may write to for --out") from None
        entries = [p.name for p in self.out.iterdir()
                   if not p.name.startswith((STAGING_PREFIX, TRASH_PREFIX)) and p.name != LOCK]
        foreign = [e for e in entries if e not in OUTPUT_ENTRIES]
        if foreign and not self.overwrite:
            raise BadInputError(f"holds files that are not a pairwise-dask output ({', '.join(sorted(foreign)[:5])})",
                                file=str(self.out), hint="Choose an empty or new --out, or pass --overwrite "
                                "(only pairwise-dask's own entries are ever replaced)")
        inside = self._foreign_inside()
        if inside:  # replacing our folders whole would delete them, --overwrite or not
            raise BadInputError("holds files pairwise-dask did not write inside its own output folders "
                                f"({', '.join(inside[:5])}); a run replaces those folders whole",
                                file=str(self.out), hint="Move those files elsewhere, or choose another --out")
        summary = self.out / "summary.json"
        if summary.exists() and not self.overwrite:
            try:
                old = json.loads(summary.read_text())
            except (OSError, ValueError):
                old = {}
            if isinstance(old, dict) and old.get("fingerprint") == self.fingerprint \
                    and old.get("command", self.command) != self.command:
                # same settings, another command: fit after run would drop the labels and review list
                raise BadInputError(f"already holds the output of `{old['command']}`, which `{self.command}` "
                                    "would replace", file=str(self.out),
                                    hint="Choose another --out, or pass --overwrite to replace it")
            if not isinstance(old, dict) or old.get("fingerprint") != self.fingerprint:
                what = _differences(old if isinstance(old, dict) else {}, self.identity)
                raise BadInputError("already holds the output of a different job" + (f" ({what})" if what else ""),
                                    file=str(self.out),
                                    hint="Choose another --out, or pass --overwrite to replace it")

    def _foreign_inside(self) -> list[str]:
        """Entries of ``labels/``, ``disagreements/`` and ``model/`` that no pairwise-dask command
        writes (hidden ones aside: a file browser's own)."""
        found = []
        for folder in ("labels", "disagreements", "model"):
            where = self.out / folder
            if not where.is_dir():
                continue
            for p in where.iterdir():
                ours = p.name in MODEL_FILES if folder == "model" else re.fullmatch(r"part\.\d+\.parquet", p.name)
                if not ours and not p.name.startswith("."):
                    found.append(f"{folder}/{p.name}")
        return sorted(found)

    def begin(self) -> Location:
        """Create the staging folder (and clear what killed runs left behind). Called before any
        work, so an output folder that cannot be written costs nothing."""
        missing = []
        p = self.out
        while not p.exists() and p.parent.path != p.path:
            missing.append(p)
            p = p.parent
        if p.local and p is not self.out and not p.is_dir():
            raise BadInputError(f"cannot be created: {p} is a file, not a folder", file=str(self.out), folder=True,
                                hint="Choose another --out")
        self._created = missing  # deepest first; set before mkdir, which may make some and then fail
        try:
            self.out.mkdir()
            self._lock.acquire()
            settle(self.out)  # a half-done publish is finished, never cleared away with the leftovers
            for p in self.out.iterdir():
                if p.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                    p.rmtree()
            self.staging.mkdir()
        except OSError as e:
            self.abort()
            raise BadInputError(f"cannot be written ({e.strerror or e})", file=str(self.out), folder=True,
                                hint="Choose a folder you may write to for --out") from None
        return self.staging

    def publish(self) -> None:
        """Rename every staged entry into place, ``summary.json`` last (journaled: see the class)."""
        trash = self.out / f"{TRASH_PREFIX}{self.run_id}"
        staged = [e for e in OUTPUT_ENTRIES if e != "summary.json" and (self.staging / e).exists()]
        with signals_deferred():  # a Ctrl-C or SIGTERM now would stop between two renames
            trash.mkdir()
            _write_durably(trash / JOURNAL, json.dumps({"staging": self.staging.name, "entries": staged}))
            trash.fsync_dir()
            self._journal = trash
            _roll_forward(self.out, self.staging, trash, staged)
            self.published = True
        self._lock.release()

    def abort(self) -> None:
        """Remove this run's staging folder and any folder :meth:`begin` created (if empty).

        A folder that existed before the run stays, even empty: a failed run leaves ``out`` as it
        was, no more and no less. Once :meth:`publish` has written its journal the new result is
        decided, and abort finishes the publish instead (``published`` then says so).
        """
        if self._journal is not None:
            if not self.published:
                with contextlib.suppress(OSError):  # else the next command's settle() finishes it
                    _roll_forward(self.out, self.staging, self._journal, json.loads(
                        (self._journal / JOURNAL).read_text())["entries"])
                    self.published = True
            self._lock.release()
            return
        try:
            self.staging.rmtree()
        except OSError:  # a read-only or vanished output folder: nothing of ours to remove there
            pass
        self._lock.release()  # before the folders begin() made are removed: the lock file is in OUT
        for p in self._created:
            try:
                if not p.exists():  # never made: mkdir failed at it or below it
                    continue
                p.rmdir()
            except OSError:
                break
