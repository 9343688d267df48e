"""A scikit-learn / dask-ml style estimator over Dask DataFrames, for notebooks and pipelines.

    >>> import dask.dataframe as dd
    >>> from pairwise_dask import PairwiseLabeler
    >>> items = dd.read_parquet("items.parquet", dtype_backend="pyarrow")
    >>> labeler = PairwiseLabeler("classes.parquet", views={"a": "emb_a", "b": "emb_b"})
    >>> labels = labeler.fit(items).predict(items)        # lazy: a Dask DataFrame
    >>> labels.to_parquet("labels/", write_index=False)  # a run's labels/ columns; or .compute()
    >>> labeler.save("model/"); PairwiseLabeler.load("model/").predict(new_items)

``fit`` makes the job's statistics passes (per-partition moments, tree reductions, each computed
once: one with ``fit_on = "view", refine = 0, rotate = "none"``, seven with the defaults);
``partial_fit`` adds further items' moments exactly, in one pass; ``predict`` is
``map_partitions`` with an explicit ``meta``. Whatever Dask scheduler is active is used (an existing ``Client`` included).
``fit`` and ``partial_fit`` run under one BLAS thread, so a model is a run's bit for bit; the
frame ``predict`` returns is computed wherever Dask runs it (a distributed ``Client``'s worker
processes are set to one BLAS thread; in this process, compute it under
``threadpoolctl.threadpool_limits(1)`` for margins bit for bit a run's).
"""
from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import BadInputError
from .io import ClassSet, classes_from_table
from .masks import PairMasks, pair_ids, with_pairs
from .model import FittedModel, load, model_fit_options, save, thresholds_json, thresholds_of
from .moments import Moments
from .storage import Location
from .threads import one_thread, pin_workers
from .config import (FUSIONS, OPTIONS, WORKER_MALLOC, Settings, _coerce, check_model_method, check_views,
                     model_method)
from .passes import (played_form, Spec, Statistics, gram_partition, label_partition, pairs_partition, margin_bins, margin_histogram_partition,
                     margin_quantile, merge, statistics_partition)

#: The job's defaults (one source of truth: the settings object).
_D = Settings(items="", classes="", out="", views=())

__all__ = ["PairwiseLabeler"]


class PairwiseLabeler:
    """Pairwise cross-variance masks + seeded tourney, fitted on and applied to Dask DataFrames.

    Parameters
    ----------
    classes : path to a classes Parquet file, a ``pyarrow.Table`` or a ``pandas.DataFrame`` with
        ``name`` and one embedding column per view (or one shared ``embedding``).
    views : ``{view name: items embedding column}``.
    id : the items' id column. label : optional annotation column (adds it to the output).
    dims, seed, cos_min, diff_min, min_items, mode, top_t, final, fuse, mix, refine, keep, keep_sample, fit_on,
    base_keep, decision, prior, rotate, rotate_sample, rotate_dims : as in the job file's ``[method]`` (same defaults, same meaning).
    worker_malloc : as in ``[cluster]``: with ``"tuned"`` and an active distributed ``Client``, its workers
        get :class:`~pairwise_dask.allocator.TunedMalloc` when ``fit``, ``partial_fit`` or ``predict`` is called.
    """

    def __init__(self, classes: str | Path | pa.Table | pd.DataFrame, *, views: Mapping[str, str],
                 id: str = "id", label: str = "", dims: float | None = _D.dims, seed: int = 0,
                 cos_min: float = -1.0, diff_min: float = 0.0, min_items: int = 5, mode: str = _D.mode,
                 top_t: int = 16, final: str = _D.final, fuse: str = _D.fuse, mix: float = _D.mix,
                 refine: int = _D.refine, keep: float = _D.keep, fit_on: str = _D.fit_on, decision: str = _D.decision,
                 prior: float = _D.prior, rotate: str = _D.rotate, rotate_sample: int = _D.rotate_sample,
                 rotate_dims: float = _D.rotate_dims, keep_sample: int = _D.keep_sample,
                 base_keep: str = _D.base_keep, worker_malloc: str = _D.worker_malloc) -> None:
        if fuse not in FUSIONS:
            raise ValueError(f"fuse = {fuse!r} is not one of {', '.join(FUSIONS)}")
        if worker_malloc not in WORKER_MALLOC:
            raise ValueError(f"worker_malloc = {worker_malloc!r} is not one of {', '.join(WORKER_MALLOC)}")
        self.classes = classes
        self.views = dict(views)
        self.id, self.label = id, label
        self.dims, self.seed, self.cos_min, self.diff_min = dims, seed, cos_min, diff_min
        self.min_items, self.mode, self.top_t = min_items, mode, top_t
        self.final, self.mix, self.refine, self.keep, self.fit_on = final, mix, refine, keep, fit_on
        self.fuse, self.base_keep = fuse, base_keep
        self.decision, self.prior, self.rotate, self.rotate_sample = decision, prior, rotate, rotate_sample
        self.rotate_dims, self.keep_sample, self.worker_malloc = rotate_dims, keep_sample, worker_malloc
        for opt in OPTIONS:  # the job's own checks of every [method] option: a bad value must not label silently
            value = getattr(self, opt.name, None) if opt.section == "method" else None
            if value is not None:
                try:
                    _coerce(opt, value, "PairwiseLabeler")
                except BadInputError as e:
                    raise ValueError(f"{e.what}. {e.hint}" if e.hint else e.what) from None
        try:  # the job's checks of the views (none at all divided by zero in fit)
            if not self.views:
                raise BadInputError("no views given", hint='Name at least one: views={"a": "emb_a"}')
            check_views(tuple(self.views.items()), label=label, fit_on="", where=None)
        except BadInputError as e:
            raise ValueError(f"{e.what}. {e.hint}" if e.hint else e.what) from None
        self.rotation_: dict[str, np.ndarray] = {}  # rotate = pca: each view's basis, from fit()
        self.keep_margin_ = 0.0
        self.model_: FittedModel | None = None
        # load(): the model's classes file and its prompts as the model holds them
        self._loaded_classes: tuple[Any, ClassSet] | None = None

    def _tune_workers(self) -> None:
        """The workers of the active distributed ``Client``, if any, get one-thread BLAS
        (:class:`~pairwise_dask.threads.OneThreadBLAS`) and, with ``worker_malloc = "tuned"``,
        :class:`~pairwise_dask.allocator.TunedMalloc`, as the job's do."""
        from distributed import default_client

        from .allocator import tune_workers

        try:
            client = default_client()
        except ValueError:  # no Client: a local scheduler, the user's own process
            return
        pin_workers(client)
        if self.worker_malloc == "tuned":
            tune_workers(client)

    # --- fitting ---------------------------------------------------------------------------
    def _class_set(self) -> ClassSet:
        if self.model_ is not None:
            return ClassSet(self.model_.names, dict(self.model_.classes), {})
        c = self.classes
        loaded = self._loaded_classes
        if loaded is not None and c == loaded[0]:  # a loaded model's prompts, as update takes them (read
            return loaded[1]                       # and normalised again, their last bits could change)
        table = (pq.read_table(c) if isinstance(c, (str, Path)) else
                 pa.Table.from_pandas(c, preserve_index=False) if isinstance(c, pd.DataFrame) else c)
        return classes_from_table(table, tuple(self.views.items()), where=str(c) if isinstance(c, (str, Path)) else "classes")

    def _spec(self, classes: ClassSet, masks: Mapping[str, PairMasks] | None = None) -> Spec:
        from .steps import with_rotation

        # a model fitted by the job with a quantile filter (cos_quantile / diff_quantile) keeps its
        # per-class thresholds and per-pair sets: partial_fit must select the new items' sets as they did
        params = self.model_.params if self.model_ is not None else {}
        return with_rotation(Spec(id_col=self.id, label_col=self.label, views=tuple(self.views.items()), names=classes.names,
                    classes={v: classes.embeddings[v] for v in self.views}, cos_min=self.cos_min,
                    diff_min=self.diff_min, per_pair=bool(params.get("per_pair", self.diff_min > 0)), seed=self.seed,
                    mode=self.mode, top_t=self.top_t, masks=dict(masks or {}), final=self.final, fuse=self.fuse,
                    fit_on=self.fit_on, base_keep=self.base_keep, keep_margin=self.keep_margin_,
                    thresholds=thresholds_of(params)),
                             self.rotation_)

    def _keep_threshold(self, ddf: Any, spec: Spec, rows: int) -> float:
        """The margin above which the ``keep`` most confident items lie (exact histogram counts over
        the keep sample, as the job's)."""
        from dask import delayed

        from .steps import tree_reduce
        from .rotation import sample_below

        spec_d = delayed(spec, pure=True)
        parts = ddf.to_delayed()
        below = sample_below(rows, self.keep_sample)
        hist = tree_reduce([delayed(margin_histogram_partition)(p, spec_d, below) for p in parts], merge).compute()
        return margin_quantile(hist, 1.0 - self.keep, margin_bins(spec))

    def _rotation(self, ddf: Any, classes: ClassSet, rows: int) -> dict[str, np.ndarray]:
        """``rotate = pca``: every view's principal axes, from one pass of exact Grams (as the job)."""
        from dask import delayed

        from .steps import tree_reduce
        from .rotation import rotation_from_gram, sample_below, truncate

        self.rotation_ = {}
        spec_d = delayed(self._spec(classes), pure=True)
        below = sample_below(rows, self.rotate_sample)  # as the job's
        gram = tree_reduce([delayed(gram_partition)(p, spec_d, below) for p in ddf.to_delayed()], merge).compute()
        return {v: truncate(rotation_from_gram(gram.n[v], gram.s1[v], gram.g[v]), self.rotate_dims) for v in gram.n}

    def _statistics(self, ddf: Any, spec: Spec) -> Statistics:
        from dask import delayed

        from .steps import tree_reduce

        spec_d = delayed(spec, pure=True)  # one copy in the graph, not one per task
        parts = ddf.to_delayed()
        stats: Statistics = tree_reduce([delayed(statistics_partition)(p, spec_d) for p in parts], merge).compute()
        if stats.duplicate_hash is not None:
            raise BadInputError("holds a duplicated id (found across partitions)", column=self.id,
                                hint="Ids must be unique; run `pairwise-dask run` on the data to name it")
        return stats

    def _refit(self, classes: ClassSet, moments: dict[str, Moments], items: int,
               pair_ids: dict[str, np.ndarray] | None = None) -> "PairwiseLabeler":
        spec = self._spec(classes)
        masks = self._masks(spec, moments, spec.per_pair, pair_ids=pair_ids)
        return self._store(classes, spec, moments, masks, items)

    def _masks(self, spec: Spec, moments: Mapping[str, Moments], per_pair: bool,
               refined: bool = False, pair_ids: dict[str, np.ndarray] | None = None) -> dict[str, PairMasks]:
        """The job's mask fit (this labeler has its options): the first round of a refined fit stays
        cosine, and with the top-t bracket only the pairs some item can play (``pair_ids``, from
        the statistics pass) are fitted, sparse when the tourney gathers (it fitted all k(k−1)/2)."""
        from .steps import fit_pair_masks

        return fit_pair_masks(self, spec, moments, pair_ids, per_pair=per_pair, refined=refined)

    def _store(self, classes: ClassSet, spec: Spec, moments: Mapping[str, Moments], masks: dict[str, PairMasks],
               items: int) -> "PairwiseLabeler":
        params = {"dims": self.dims, "min_items": self.min_items, "cos_min": self.cos_min,
                  "diff_min": self.diff_min, "per_pair": spec.per_pair, "seed": self.seed, "mode": self.mode,
                  "top_t": self.top_t, "items": int(items), "m": {v: int(m.dims.shape[1]) for v, m in masks.items()},
                  "final": self.final, "fuse": self.fuse, "mix": self.mix, "refine": self.refine, "keep": self.keep,
                  "fit_on": self.fit_on, "base_keep": self.base_keep, "decision": self.decision, "prior": self.prior,
                  "rotate": self.rotate,
                  "rotate_sample": self.rotate_sample, "rotate_dims": self.rotate_dims,
                  "keep_sample": self.keep_sample, "base_keep_margin": self.keep_margin_}
        if spec.thresholds:  # a loaded job model's quantile filter, kept for the next partial_fit or update
            old = self.model_.params if self.model_ is not None else {}
            params |= {"thresholds": thresholds_json(spec.thresholds), "cos_quantile": old.get("cos_quantile", 0.0),
                       "diff_quantile": old.get("diff_quantile", 0.0)}
        self.model_ = FittedModel(classes.names, {v: classes.embeddings[v] for v in self.views}, dict(moments), masks,
                                  params, dict(self.rotation_))
        return self

    def _check_frame(self, ddf: Any, *, label: bool) -> None:
        """The columns the labeler reads are in ``ddf`` and it has partitions: a clear error now,
        instead of a KeyError from inside a task. Fitting with ``fit_on = "annotation"`` needs the
        annotation column (without one, the sets were the base labels', silently)."""
        if label and self.fit_on == "annotation" and not self.label:  # the job's check (config.check_views)
            check_views((), label="", fit_on="annotation", where=None, label_hint="Pass label=COLUMN")
        import dask.dataframe as dd

        if not isinstance(ddf, dd.DataFrame):
            # a path or a pandas frame was told "the Dask DataFrame has no partitions"
            raise TypeError(f"PairwiseLabeler takes a Dask DataFrame of items, not {type(ddf).__name__}: read them "
                            "with dask.dataframe.read_parquet(path, dtype_backend=\"pyarrow\")")
        try:
            n = ddf.npartitions
        except Exception:  # noqa: BLE001 - dask 2026.8 fails to count an empty selection (partitions[:0])
            n = 0
        if n == 0:
            raise BadInputError("the Dask DataFrame has no partitions", hint="Give it at least one partition of items")
        have = list(ddf.columns)
        need = [self.id, *self.views.values()] + ([self.label] if label and self.label else [])
        for c in need:
            if c not in have:
                index = " (it is the index: call reset_index() first)" if getattr(ddf.index, "name", None) == c else ""
                raise BadInputError(f"is missing{index}", column=c, hint=f"The frame has: {', '.join(map(str, have))}")

    def fit(self, ddf: Any) -> "PairwiseLabeler":
        """The pair masks of ``ddf``, from the job's passes over it, each computed once: the PCA
        Grams (``rotate = "pca"``), the fused keep threshold (``fit_on = "fused"``), the statistics,
        and two per refine round (7 with the defaults; 1 with ``fit_on = "view", refine = 0,
        rotate = "none"``); plus a row count when a sample needs it."""
        with one_thread():  # the basis, moments and masks round as a job's (see threads.py)
            return self._fit(ddf)

    def _fit(self, ddf: Any) -> "PairwiseLabeler":
        from .job import dims_problem

        self._check_frame(ddf, label=True)
        self._tune_workers()
        kept, self.model_ = self.model_, None
        classes = self._class_set()
        for v in self.views:  # the job's check, before any pass (dims was refused only after them)
            problem = dims_problem(self, v, classes.embeddings[v].shape[1])
            if problem:
                self.model_ = kept
                raise ValueError(f"{problem[1]}. {problem[2]}")
        # the samples' bounds depend on the row count: counted once (a pass unless Dask knows it)
        keeps = self.fit_on == "fused" or (self.refine > 0 and self.fit_on != "annotation")  # a keep threshold
        rows = len(ddf) if (self.rotate == "pca" and self.rotate_sample) or (keeps and self.keep_sample) else 0
        self.rotation_ = self._rotation(ddf, classes, rows) if self.rotate == "pca" else {}
        self.keep_margin_ = self._keep_threshold(ddf, self._spec(classes), rows) if self.fit_on == "fused" else 0.0
        stats = self._statistics(ddf, self._spec(classes))
        self._refit(classes, stats.moments, stats.rows, stats.pairs)
        for _ in range(0 if self.fit_on == "annotation" else self.refine):  # as steps.refine_rounds
            spec = replace(self._spec(classes), masks=self.model_.masks)
            spec = replace(spec, keep_margin=self._keep_threshold(ddf, spec, rows))
            round_ = self._statistics(ddf, spec)
            masks = self._masks(spec, round_.moments, False, refined=True, pair_ids=round_.pairs)
            self._store(classes, spec, round_.moments, masks, stats.rows)
        return self

    def partial_fit(self, ddf: Any) -> "PairwiseLabeler":
        """Add ``ddf``'s moments to the fitted ones (exact) and recompute the masks. ``ddf`` holds
        items the model has not seen (the model keeps no ids: items fitted before are counted
        twice); it needs the annotation column only when the model was fitted on the annotation."""
        if self.model_ is None:
            return self.fit(ddf)
        with one_thread():
            return self._partial_fit(ddf)

    def _partial_fit(self, ddf: Any) -> "PairwiseLabeler":
        # new items need no annotation (as for update) unless the model's sets are the annotation's
        self._check_frame(ddf, label=self.fit_on == "annotation")
        self._check_update()
        self._tune_workers()
        classes = self._class_set()
        spec = self._spec(classes)
        if self.label and self.label not in ddf.columns:
            spec = replace(spec, label_col="")
        stats = self._statistics(ddf, spec)
        moments = {v: self.model_.moments[v] + stats.moments[v] for v in self.views}
        pairs = stats.pairs
        if spec.top_t_active:  # as update: the pairs that could play in either batch
            pairs = {v: np.union1d(pairs[v], pair_ids(self.model_.masks[v].pairs, spec.k)) for v in pairs}
        return self._refit(classes, moments, int(self.model_.params.get("items", 0)) + stats.rows, pairs)

    def _check_update(self, command: str = "update", caller: str = "partial_fit") -> None:
        """What ``update`` refuses, refused here too: adding to a refined model's moments, or with
        views or method options other than the model's (every difference named at once; options
        this class lacks, such as the quantile filters, are the model's by construction). With
        ``command = "apply"``: what ``apply`` refuses (``predict`` plays the model's masks, so an
        option built into them, as ``load(…, dims=3)``, would be ignored silently)."""
        params = {**self.model_.params, "views": list(self.model_.classes)}
        fixed = {key.split(".", 1)[1]: v for key, v in model_method(params).items()}
        asked = SimpleNamespace(view_names=list(self.views), **{n: getattr(self, n, v) for n, v in fixed.items()})
        check_model_method(asked, params, command, caller=caller)

    # --- applying --------------------------------------------------------------------------
    def predict(self, ddf: Any) -> Any:
        """Labels of every item, lazily: a Dask DataFrame with the ``labels/`` columns."""
        import dask
        if self.model_ is None:
            raise RuntimeError("PairwiseLabeler is not fitted: call fit() or load() first")
        self._check_frame(ddf, label=False)
        self._check_update("apply", "predict")
        self._tune_workers()
        spec = played_form(self._spec(self._class_set(), self.model_.masks))
        if self.label and self.label not in ddf.columns:  # new items need no annotation: none in the output
            spec = replace(spec, label_col="")
        meta = _labels_meta(spec, ddf._meta[self.id].dtype)
        # the top-t bracket may need pairs the fit never met: each partition adds their masks from
        # the model's moments (the same masks wherever they are made: lazily, no extra pass)
        extra = ((self.model_.moments, model_fit_options(self.model_.params)) if spec.top_t_active else None)
        return ddf.map_partitions(_predict_partition, dask.delayed(spec, pure=True), dask.delayed(extra, pure=True),
                                  meta=meta, enforce_metadata=False, clear_divisions=True)

    def masks_table(self) -> pa.Table:
        """The fitted pair masks (``model/masks.parquet``'s columns)."""
        from .model import masks_table

        if self.model_ is None:
            raise RuntimeError("not fitted")
        return masks_table(self.model_.masks, self.model_.names)

    # --- persistence -----------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write the model folder (the same format as a run's ``model/``), whole or not at all.

        The model is written beside ``folder`` and renamed into its place, so a reader (a
        scheduled ``apply``) never finds a half-written model, nor parts of an older one. A folder
        that exists must hold a model (or nothing): anything else there is refused, not replaced.
        """
        if self.model_ is None:
            raise RuntimeError("not fitted")
        from .io import MODEL_FILES

        target = Location.of(folder)
        if target.exists():
            if not target.is_dir():
                raise ValueError(f"{target} is a file, not a model folder: choose another folder")
            foreign = sorted(p.name for p in target.iterdir() if p.name not in MODEL_FILES)
            if foreign:
                raise ValueError(f"{target} holds files that are not a saved model's ({', '.join(foreign[:5])}): "
                                 "save replaces the whole folder; choose an empty or new one")
        target.parent.mkdir()
        tag = uuid.uuid4().hex[:12]
        staging, old = target.parent / f".{target.name}.saving-{tag}", target.parent / f".{target.name}.old-{tag}"
        params = dict(self.model_.params, views_columns=self.views, id=self.id, label=self.label)
        try:
            save(replace(self.model_, params=params), staging)
        except BaseException:
            staging.rmtree()
            raise
        # two renames: a reader between them finds no model (a clear error), never a mix of two
        if target.exists():
            target.replace(old)
        staging.replace(target)
        target.parent.fsync_dir()
        old.rmtree()

    @classmethod
    def load(cls, folder: str | Path, *, views: Mapping[str, str] | None = None, **kw: Any) -> "PairwiseLabeler":
        """A fitted labeler from a model folder (a run's ``model/`` or :meth:`save`'s). ``views``
        and ``kw`` (the constructor's options) override the saved ones; the classes are the model's."""
        if "classes" in kw:  # was: "__init__() got multiple values for argument 'classes'"
            raise TypeError("PairwiseLabeler.load takes the classes from the model (its classes.parquet): drop "
                            "classes=, or fit a new PairwiseLabeler(classes, …) on all items")
        model = load(folder)
        p = dict(model.params)
        if "views_columns" not in p:  # a run's model/: its columns are in the run's summary.json
            p |= _run_columns(Location.of(folder).parent / "summary.json")
        views = dict(views or p.get("views_columns") or {v: v for v in model.classes})
        args = {"id": p.get("id", "id"), "label": p.get("label", ""), "dims": p["dims"], "seed": p["seed"],
                "cos_min": p["cos_min"], "diff_min": p["diff_min"], "min_items": p["min_items"],
                "mode": p.get("mode", "bracket"), "top_t": p.get("top_t", 16),
                # models written before these options existed were the article's method
                "final": p.get("final", "confident-view"), "fuse": p.get("fuse", "mean"), "mix": p.get("mix", 0.0),
                "refine": p.get("refine", 0), "keep": p.get("keep", 0.5), "fit_on": p.get("fit_on", "view"),
                "base_keep": p.get("base_keep", "margin"),
                "decision": p.get("decision", "cosine"), "prior": p.get("prior", 0.0),
                "rotate": "pca" if model.rotation else "none",
                "rotate_sample": p.get("rotate_sample", 0), "rotate_dims": p.get("rotate_dims", 0.0),
                "keep_sample": p.get("keep_sample", 0)} | kw
        # the model's classes file (the prompts, unrotated): a later fit() reads it (it read the folder)
        self = cls(str(Location.of(folder) / "classes.parquet"), views=views, **args)
        self.rotation_ = dict(model.rotation)
        self.keep_margin_ = float(p.get("base_keep_margin", 0.0))
        self.model_ = model
        self._loaded_classes = (self.classes, ClassSet(model.names, dict(model.classes), {}))
        return self


def _run_columns(summary: Location) -> dict:
    """``views_columns``, ``id`` and ``label`` as a run, fit or update recorded them in its
    ``summary.json`` (next to ``model/``); empty when there is none to read."""
    try:
        s = json.loads(summary.read_text())
    except (OSError, ValueError):
        return {}
    out: dict = {"views_columns": s["views"]} if isinstance(s.get("views"), dict) else {}
    items = s.get("items") if isinstance(s.get("items"), dict) else {}
    out |= {k: items[k] for k in ("id", "label") if isinstance(items.get(k), str)}
    return out


def _labels_meta(spec: Spec, id_dtype: Any) -> pd.DataFrame:
    from .arrays import to_arrow

    # the ids as the partitions give them (read through Arrow: a pandas string column is large_string)
    as_read = to_arrow(pd.Series([], dtype=id_dtype)).type
    cols: dict[str, Any] = {"id": pd.Series([], dtype=id_dtype if pa.types.is_null(as_read) else pd.ArrowDtype(as_read))}
    string, f32 = pd.ArrowDtype(pa.string()), pd.ArrowDtype(pa.float32())
    for v, _ in spec.views:
        cols[f"base_{v}"] = pd.Series([], dtype=string)
        cols[f"label_{v}"] = pd.Series([], dtype=string)
        cols[f"margin_{v}"] = pd.Series([], dtype=f32)
    cols["final_label"] = pd.Series([], dtype=string)
    cols["agree"] = pd.Series([], dtype=pd.ArrowDtype(pa.bool_()))
    if spec.label_col:
        cols["annotation"] = pd.Series([], dtype=string)
    return pd.DataFrame(cols)


def _predict_partition(df: pd.DataFrame, spec: Spec, extra: tuple | None = None) -> pd.DataFrame:
    if extra is not None:  # top-t: the masks of the pairs this partition's items can play
        moments, options = extra
        needed = pairs_partition(df, spec).pairs
        spec = replace(spec, masks={v: with_pairs(m, moments[v], spec.classes[v], needed[v], **options)
                                    for v, m in spec.masks.items()})
    table, _ = label_partition(df, spec)
    out = table.to_pandas(types_mapper=pd.ArrowDtype)
    out.index = df.index
    return out
