"""The fitted state of a run (per view: merged moments and pair masks) and its Parquet form.

``model/`` lets a later run label new items without a statistics pass, and lets new items'
moments be added to the old ones exactly (moments add; see :mod:`pairwise_dask.moments`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import BadInputError
from .io import readable, write_table
from .storage import Location
from .masks import PairMasks, discriminant_values, pair_values, scatter_weights

#: Above this many weight entries (pairs × d) a loaded model keeps sparse (P, m) weights.
DENSE_LIMIT = 1 << 26
from .moments import QUANT_BITS, Moments
from .rotation import rotate_classes


@dataclass(frozen=True)
class FittedModel:
    """Class names and per view: prompts, merged moments and pair masks, plus fit parameters."""

    names: tuple[str, ...]
    classes: dict[str, np.ndarray]
    moments: dict[str, Moments]
    masks: dict[str, PairMasks]
    params: dict
    #: view -> (d, d) basis the moments and masks live in (rotate = pca); ``classes`` stay the prompts
    rotation: dict[str, np.ndarray] = field(default_factory=dict)


def _fsl(m: np.ndarray, t: pa.DataType) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(m).ravel(), t), m.shape[1])


def _concat_views(tables: list[pa.Table]) -> pa.Table:
    """Per-view tables stacked; views of different dimension (say 512-d images and 384-d texts)
    give fixed-size lists of different sizes, which become variable lists (:func:`load` reads both)."""
    if any(not t.schema.equals(tables[0].schema) for t in tables[1:]):
        def loosen(t: pa.Table) -> pa.Table:
            return t.cast(pa.schema([pa.field(f.name, pa.list_(f.type.value_type))
                                     if pa.types.is_fixed_size_list(f.type) else f for f in t.schema]))
        tables = [loosen(t) for t in tables]
    return pa.concat_tables(tables)


def masks_table(masks: dict[str, PairMasks], names: tuple[str, ...]) -> pa.Table:
    """``view, class_a, class_b, dims (list<int32>), n_a, n_b, fallback`` (the output contract)."""
    parts = []
    nm = pa.array(names, pa.string())
    for v, m in masks.items():
        offsets = pa.array(np.arange(0, m.dims.size + 1, m.dims.shape[1], dtype=np.int32))
        parts.append(pa.table({
            "view": pa.array([v] * len(m.pairs), pa.string()),
            "class_a": nm.take(pa.array(m.pairs[:, 0])),
            "class_b": nm.take(pa.array(m.pairs[:, 1])),
            "dims": pa.ListArray.from_arrays(offsets, pa.array(m.dims.ravel(), pa.int32())),
            "n_a": pa.array(m.n_a.astype(np.int64)),
            "n_b": pa.array(m.n_b.astype(np.int64)),
            "fallback": pa.array(m.fallback),
        }))
    return pa.concat_tables(parts)


def write_masks(masks: dict[str, PairMasks], names: tuple[str, ...], folder: Location) -> None:
    """The masks' part of a model folder: ``masks.parquet``, and ``anchors.parquet`` when the pair
    weights were built from class vectors other than the prompts (mix > 0)."""
    write_table(masks_table(masks, names), folder / "masks.parquet")
    anchors = {v: _fsl(m.anchors, pa.float32()) for v, m in masks.items() if m.anchors is not None}
    if anchors:
        write_table(pa.table({"name": pa.array(names, pa.string()), **anchors}), folder / "anchors.parquet")


def save(model: FittedModel, folder: "str | Path | Location", storage_options: dict | None = None, *,
         masks_written: bool = False) -> None:
    """Write ``masks.parquet``, ``moments.parquet``, ``classes.parquet`` and ``params.json`` (and
    ``anchors.parquet``, ``rotation.parquet`` when the model has them) into a new folder: the job
    writes into its staging folder and ``PairwiseLabeler.save`` beside its target, so no part of an
    older model is ever left among them.
    ``masks_written``: :func:`write_masks` already ran for this folder (on the worker holding the
    masks), so ``model.masks`` is not used."""
    folder = Location.of(folder, storage_options)
    folder.mkdir()
    if not masks_written:
        write_masks(model.masks, model.names, folder)
    rows = []
    for v, m in model.moments.items():
        g = len(m.n)
        rows.append(pa.table({"view": pa.array([v] * g, pa.string()), "set": pa.array(np.arange(g, dtype=np.int32)),
                              "n": pa.array(m.n.astype(np.int64)), "sum_q": _fsl(m.s1, pa.float64()),
                              "sumsq_q": _fsl(m.s2, pa.float64())}))
    write_table(_concat_views(rows), folder / "moments.parquet")
    cls = {"name": pa.array(model.names, pa.string())}
    for v, c in model.classes.items():
        cls[v] = _fsl(c, pa.float32())
    write_table(pa.table(cls), folder / "classes.parquet")
    if model.rotation:  # one row per basis vector (column of R) and view
        write_table(_concat_views([pa.table({"view": pa.array([v] * r.shape[1], pa.string()),
                                             "axis": pa.array(np.arange(r.shape[1], dtype=np.int32)),
                                             "vector": _fsl(np.ascontiguousarray(r.T), pa.float32())})
                                   for v, r in model.rotation.items()]), folder / "rotation.parquet")
    params = dict(model.params, quant_bits=QUANT_BITS, views=list(model.classes))
    (folder / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


def _read(loc: Location) -> pa.Table:
    with readable(str(loc), "is not a readable Parquet file", "The saved model is damaged: fit it again, or point "
                  "at an intact copy"), loc.open("rb") as f:
        return pq.read_table(f)


def thresholds_json(thresholds: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Per view, the per-class statistics filter (``cos_min``, ``diff_min`` after any quantile
    filter) as ``params.json`` records it."""
    return {v: {"cos": c.tolist(), "diff": d.tolist()} for v, (c, d) in thresholds.items()}


def thresholds_of(params: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A model's per-class statistics filters (:func:`thresholds_json` read back); empty when it
    was fitted without a quantile filter: an update must select its new items' sets as these did."""
    return {v: (np.asarray(t["cos"]), np.asarray(t["diff"])) for v, t in (params.get("thresholds") or {}).items()}


def model_fit_options(params: dict) -> dict:
    """The :func:`~pairwise_dask.masks.with_pairs` keywords of a saved model's fit (its params)."""
    return {"min_items": int(params.get("min_items", 1)), "mix": float(params.get("mix", 0.0)),
            "prior": float(params.get("prior", 0.0))}


def _model_folder(folder: "str | Path | Location", storage_options: dict | None) -> Location:
    from .config import MODEL_USAGE

    folder = Location.of(folder, storage_options)
    if not folder.exists():
        raise BadInputError("does not exist", file=str(folder), folder=True,
                            hint="Check the model path: the model/ folder a run, fit or update wrote")
    if not folder.is_dir():  # a job file or items given first: the arguments are swapped
        raise BadInputError("is a file, not a saved model's folder", file=str(folder),
                            hint=f"Give the model/ folder first, then the job file: {MODEL_USAGE}")
    missing = [f for f in ("params.json", "classes.parquet", "moments.parquet", "masks.parquet")
               if not (folder / f).exists()]
    if missing:
        inner = folder / "model"
        if (inner / "params.json").exists():  # the run's output folder rather than its model/
            raise BadInputError("is a run's output folder, not its model", file=str(folder),
                                hint=f"Point at the model inside it: {inner}")
        raise BadInputError(f"is not a saved model (no {', '.join(missing)})", file=str(folder),
                            hint="Point at the model/ folder a run, fit or update wrote")
    return folder


def read_params(folder: "str | Path | Location", storage_options: dict | None = None) -> dict:
    """A saved model's ``params.json`` alone (the settings it was fitted with), without its arrays."""
    return json.loads((_model_folder(folder, storage_options) / "params.json").read_text())


def load(folder: "str | Path | Location", storage_options: dict | None = None) -> FittedModel:
    """Read a ``model/`` folder written by :func:`save` (a local path or an fsspec URL)."""
    folder = _model_folder(folder, storage_options)
    params = json.loads((folder / "params.json").read_text())
    cls = _read(folder / "classes.parquet")
    names = tuple(cls.column("name").to_pylist())
    views = params["views"]
    classes = {v: np.asarray(cls.column(v).combine_chunks().flatten()).reshape(len(names), -1) for v in views}
    mt = _read(folder / "moments.parquet")
    mk = _read(folder / "masks.parquet")
    at = _read(folder / "anchors.parquet") if (folder / "anchors.parquet").exists() else None
    index = {n: i for i, n in enumerate(names)}
    rotation = {}
    if (folder / "rotation.parquet").exists():
        rt = _read(folder / "rotation.parquet")
        for v in views:
            sub = rt.filter(pc.equal(rt.column("view"), v))
            d = classes[v].shape[1]
            rotation[v] = np.ascontiguousarray(
                np.asarray(sub.column("vector").combine_chunks().flatten()).reshape(-1, d).T, dtype=np.float32)
    moments, masks = {}, {}
    for v in views:
        sub = mt.filter(pc.equal(mt.column("view"), v))
        d = rotation[v].shape[1] if v in rotation else classes[v].shape[1]  # rotate_dims: r axes of d
        moments[v] = Moments(np.asarray(sub.column("n")),
                             np.asarray(sub.column("sum_q").combine_chunks().flatten()).reshape(-1, d),
                             np.asarray(sub.column("sumsq_q").combine_chunks().flatten()).reshape(-1, d))
        s = mk.filter(pc.equal(mk.column("view"), v))
        pairs = np.stack([[index[a] for a in s.column("class_a").to_pylist()],
                          [index[b] for b in s.column("class_b").to_pylist()]], axis=1).astype(np.int32)
        dims = np.asarray(s.column("dims").combine_chunks().flatten()).reshape(len(pairs), -1).astype(np.int32)
        n_a, n_b, fb = np.asarray(s.column("n_a")), np.asarray(s.column("n_b")), np.asarray(s.column("fallback"))
        anchors = None  # the class vectors the weights were built from, when not the prompts (mix > 0)
        if at is not None and v in at.column_names:
            anchors = np.asarray(at.column(v).combine_chunks().flatten()).reshape(len(names), -1)
        prompts = rotate_classes(classes[v], rotation[v]) if v in rotation else classes[v]
        base = prompts if anchors is None else anchors
        decision, bias, separation = params.get("decision", "cosine"), None, None
        if decision == "discriminant":  # rebuilt from the saved moments: the same function, the same bits
            k = len(names)
            values, bias, separation = discriminant_values(moments[v], prompts, pairs, dims,
                                                           per_pair=len(moments[v].n) == k * k and k > 1,
                                                           min_items=int(params.get("min_items", 1)),
                                                           prior=float(params.get("prior", 0.0)))
        else:
            values = pair_values(base, pairs, dims)
        # many pairs (top-t over a large taxonomy) stay sparse; the tourney plays the settings' form
        weights = scatter_weights(dims, values, d) if len(pairs) * d <= DENSE_LIMIT else None
        masks[v] = PairMasks(len(names), pairs, dims, weights, n_a, n_b, fb, values=values, anchors=anchors,
                             bias=bias, decision=decision, separation=separation)
    return FittedModel(names, classes, moments, masks, params, rotation)
