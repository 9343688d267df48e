"""The job driver: the commands and the frame they share. A run is two streaming passes, a tree
reduction, one broadcast, one commit.

    pass 1: per partition, moments of every pair side ──tree reduction──▶ merged moments
    client: moments ─▶ pair masks and weights (small)          ─▶ one task of the graph, sent once
    pass 2: per partition, labels + tally; each task writes its own labels part
    commit: disagreements sorted, model/, summary.json; staged, then renamed into place

Everything inside a pass is a pure function of one partition plus the broadcast state (see
:mod:`pairwise_dask.passes`), so results do not depend on partitioning, worker count or retries.
The passes themselves, on the cluster, are in :mod:`pairwise_dask.steps`; what ``summary.json``
says, in :mod:`pairwise_dask.summary`.
The commands are ``run`` (both passes), ``fit`` (pass 1 only, writes ``model/``), ``update``
(pass 1 on new items, moments added to a saved model's) and ``apply`` (pass 2 with a saved model).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
# Imported with the job rather than by pyarrow's first conversion in the middle of a run: pyarrow
# imports them from compiled code, where a Ctrl-C is swallowed or breaks the import (interrupts.py)
import pandas  # noqa: F401
import pyarrow.pandas_compat  # noqa: F401

from . import steps
from .config import Settings, check_model_method, with_model_method
from .errors import BadInputError
from .io import (ClassSet, Commit, ItemsInfo, duplicate_places, inspect_items, locate_id, locate_row, read_classes,
                 item_parts, write_json)
from .masks import PairMasks, pair_ids
from .model import FittedModel, load, save, thresholds_of
from .report import write_report
from .storage import Location
from .rotation import kept_axes
from .passes import DUPLICATE, played_form, Spec, partition_error
from .summary import frame, label_summary, mask_summary, method_of, params
from .cluster import connect
from .threads import one_thread
from .watch import WorkerWatch
from .words import count

#: Largest per-view moments of per-pair sets (diff_min > 0) the job accepts: k² × d × 16 bytes.
PER_PAIR_BYTES = 1 << 30
logger = logging.getLogger(__name__)
Echo = Callable[[str], None]


def _silent(_: str) -> None:
    pass


@dataclass
class Prepared:
    """What is known before any data is read: footers, classes, the shared per-partition state."""

    info: ItemsInfo
    classes: ClassSet
    spec: Spec


def prepare(s: Settings, classes: ClassSet | None = None) -> Prepared:
    """Check the items' footers and the classes against the settings (no cluster needed)."""
    info = inspect_items(s)
    classes = classes or read_classes(s)
    for v, col in s.views:
        if v not in classes.embeddings:
            raise BadInputError(f"the model has no view {v!r} (it has {', '.join(classes.embeddings)})",
                                column=col, hint="Use the view names the model was fitted with")
        d_items, d_cls = info.dims[v], classes.embeddings[v].shape[1]
        if d_items is not None and d_items != d_cls:
            raise BadInputError(f"has dimension {d_items} but the classes' {classes.columns[v]!r} has {d_cls}",
                                file=info.files[0], column=col,
                                hint="Items and class prompts of a view must come from the same model")
        problem = dims_problem(s, v, d_cls)
        if problem:
            option, what, hint = problem
            raise BadInputError(what, file=s.where(option), hint=hint)
        if s.per_pair_sets and classes.k ** 2 * d_cls * 16 > PER_PAIR_BYTES:
            # per-pair sets hold k² rows of float64 moments (two sums) in every task and reduction
            raise BadInputError(f"diff_min > 0 needs moments per ordered class pair: {classes.k}² × {d_cls} "
                                f"× 16 B = {classes.k ** 2 * d_cls * 16 / 2**30:.1f} GiB per view",
                                hint="Use diff_min = 0 (per-class moments) with this many classes")
    spec = Spec(id_col=s.id, label_col=s.label, views=s.views, names=classes.names,
                classes={v: classes.embeddings[v] for v in s.view_names}, cos_min=s.cos_min,
                diff_min=s.diff_min, per_pair=s.per_pair_sets, seed=s.seed, mode=s.mode, top_t=s.top_t,
                final=s.final, fuse=s.fuse, fit_on=s.fit_on, base_keep=s.base_keep)
    return Prepared(info, classes, spec)


Body = Callable[[Any, list, Location, dict], dict]


def _execute(s: Settings, prep: Prepared, body: Body, *, command: str, client: Any, echo: Echo,
             t_start: float) -> dict:
    """The frame every command shares: output check, cluster, partitions, staging, commit."""
    timings: dict[str, float] = {}
    commit = Commit(s.out, fingerprint=s.fingerprint(), overwrite=s.overwrite, storage_options=s.storage_options,
                    identity={"items": s.items, "classes": s.classes, "views": dict(s.views), "method": method_of(s)},
                    command=command)
    commit.check_target()
    timings["check"] = time.perf_counter() - t_start
    try:
        staging = commit.begin()
        # one BLAS thread here too while the run lasts: the driver's products, and workers inside
        # this process, round as the workers' do (threads.OneThreadBLAS pins those processes)
        with one_thread(), connect(s, client, echo) as c:
            echo(f"Dask dashboard: {c.dashboard_link}")
            parts = item_parts(s, prep.info)
            workers = len(c.scheduler_info(n_workers=-1).get("workers", {}))
            n_files = len(prep.info.files)
            echo(f"Read {prep.info.rows:,} items in {count(len(parts), 'partition')} from {count(n_files, 'file')}; "
                 f"{prep.classes.k} classes; views {', '.join(f'{v}={col}' for v, col in s.views)}; "
                 f"{count(workers, 'worker')}")
            # a cluster the job did not start can lose every worker mid-run: say so, and with
            # worker_wait > 0 give up after that long rather than wait for ever (the bad-input
            # rescan below included)
            watch = WorkerWatch(c, s.worker_wait, echo) if client is not None or s.scheduler else None
            with watch or contextlib.nullcontext():
                try:
                    summary = body(c, parts, staging, timings)
                    cluster = {"scheduler": s.scheduler or (c.scheduler.address if client is not None
                                                            else "LocalCluster"),
                               "workers": workers,
                               "workers_at_end": len(c.scheduler_info(n_workers=-1).get("workers", {}))}
                    summary = frame(s, prep, len(parts), cluster, timings, commit.run_id) | summary
                    t = time.perf_counter()
                    try:
                        write_report(staging, summary)
                        summary["report"] = "report.html"
                    except Exception as e:  # noqa: BLE001 - the page is a view; never lose the labels over it
                        logger.warning("report.html was not written: %s", e)
                        summary["report"] = f"not written: {type(e).__name__}: {e}"
                    timings["report"] = time.perf_counter() - t
                    timings["total"] = time.perf_counter() - t_start
                    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
                    write_json(summary, staging / "summary.json")
                    commit.publish()
                except BadInputError as e:
                    commit.abort()
                    raise _with_items_file(_first_bad_partition(c, s, prep.spec, parts, e, echo), s,
                                           prep.info) from None
                except BaseException as e:
                    commit.abort()
                    # what the run waited on was released for it (a Ctrl-C stays a Ctrl-C)
                    if watch is not None and watch.gave_up and not isinstance(e, KeyboardInterrupt):
                        raise watch.error() from None
                    raise
    except BaseException as e:
        # again, after our own LocalCluster is closed: a label task still writing its part when
        # the first abort ran (a failure elsewhere in the pass) cannot leave it behind now
        commit.abort()
        if commit.published:  # a Ctrl-C or SIGTERM held until the outputs were all in place
            e.published = str(s.out)  # type: ignore[attr-defined]
        raise
    return summary


def _first_bad_partition(c: Any, s: Settings, spec: Spec, parts: list, e: BadInputError,
                         echo: Echo) -> BadInputError:
    """The refusal of the catalog's first bad partition, in file and row group order.

    A pass stops at whichever partition's task fails first, which depends on the workers' timing:
    with bad rows in several partitions the error would name a different row from run to run. On
    the failure path only, every partition is checked again (read and checked, no rotation or
    tourney) and the first one's error is raised, with how many partitions hold bad input.
    """
    if e.column not in {s.id, s.label, *(col for _, col in s.views)} - {""}:
        return e  # not about the items' rows (a setting, a file, the classes): nothing to order
    echo("Bad input found: checking every partition to name the first bad row …")
    try:
        spec_f = steps.shared(spec)
        found = c.compute([steps.on_spec(partition_error, p, spec_f) for p in parts], sync=True)
    except Exception:  # noqa: BLE001 - the rescan is a courtesy; the pass's own error stands
        return e
    bad = [f for f in found if f is not None]
    if not bad:
        return e
    first = bad[0]
    if len(bad) > 1:
        return BadInputError(f"{first.what} (the first of {len(bad):,} partitions of {len(parts):,} "
                             "with bad rows)", file=first.file, column=first.column, row=first.row,
                             hint=first.hint)
    return first


def _with_items_file(e: BadInputError, s: Settings, info: ItemsInfo) -> BadInputError:
    """Name the items file behind a per-partition error (workers see blocks, not files)."""
    item_cols = {s.id, s.label, *(c for _, c in s.views)} - {""}
    if e.column == s.id and e.what == DUPLICATE and e.row is not None:  # found within one partition
        places = locate_id(info.files, s.id, e.row, s.storage_options)  # every copy, by file and row
        if places:
            return BadInputError(f"{e.what} {duplicate_places(places)}".strip(), file=places[0][0], column=e.column,
                                 row=e.row, hint=e.hint)
    if e.column not in item_cols or (e.file and e.file in info.files):
        return e
    file = locate_row(info.files, s.id, e.row, s.storage_options) or s.items
    return BadInputError(e.what, file=file, column=e.column, row=e.row, hint=e.hint)


def run(s: Settings, *, client: Any = None, progress: bool = False, echo: Echo = _silent) -> dict:
    """Run the whole job described by ``s``; return its summary (also in ``OUT/summary.json``).

    Raises :class:`BadInputError` for bad input, leaving the output folder as it was.
    """
    t_start = time.perf_counter()
    prep = prepare(s)

    def body(c: Any, parts: list, staging: Location, timings: dict) -> dict:
        spec, parts = steps.decoded_items(c, s, prep, parts, passes=_passes(s, True), progress=progress, echo=echo,
                                    timings=timings)
        t = time.perf_counter()
        spec = steps.quantile_thresholds_pass(c, s, spec, parts, progress=progress)
        spec0 = steps.base_spec(c, s, spec, parts, prep.info.rows, progress=progress)
        stats = steps.statistics_pass(c, s, spec0, parts, progress=progress)
        timings["statistics"] = time.perf_counter() - t
        t = time.perf_counter()
        # a large taxonomy's masks stay on the workers that fitted them (RemoteMasks)
        masks = steps.fit_pair_masks(s, spec, stats.moments, stats.pairs, client=c, keep_remote=True)
        timings["masks"] = time.perf_counter() - t
        t = time.perf_counter()
        stats, masks, thresholds = steps.refine_rounds(c, s, spec, parts, stats, masks, prep.info.rows,
                                                 progress=progress, keep_remote=True)
        if thresholds:
            timings["refine"] = time.perf_counter() - t
        t = time.perf_counter()
        spec_f = steps.shared(replace(spec, masks=masks))
        facts_f = steps.write_remote_masks(c, spec_f, staging / "model")
        facts: dict[str, PairMasks | steps.MaskFacts] = {}

        def write_model() -> None:
            facts.update(facts_f.result() if facts_f is not None else masks)
            model = FittedModel(prep.classes.names, prep.spec.classes, stats.moments,
                                masks if facts_f is None else {},
                                params(s, facts, stats.rows, spec, spec0.keep_margin, thresholds), spec.rotation)
            save(model, staging / "model", masks_written=facts_f is not None)

        # the client only waits while pass 2 runs on the workers: it writes the model meanwhile
        # (k = 1,000: 3 s of Parquet off the critical path); leaving the block waits for it, even
        # on an error
        with ThreadPoolExecutor(1, thread_name_prefix="pairwise-dask-model") as pool:
            saved = pool.submit(write_model)
            tally = steps.label_pass(c, s, spec, parts, staging / "labels", progress=progress, spec_f=spec_f)
            timings["tourney"] = time.perf_counter() - t
            t = time.perf_counter()
            steps.write_disagreements(tally, staging / "disagreements")
            saved.result()
        timings["write"] = time.perf_counter() - t
        return ({"command": "run"} | label_summary(s, prep.classes.names, tally, facts)
                | ({"refine_thresholds": thresholds} if thresholds else {}))

    return _execute(s, prep, body, command="run", client=client, echo=echo, t_start=t_start)


def fit(s: Settings, *, client: Any = None, progress: bool = False, echo: Echo = _silent,
        base_model: str | None = None) -> dict:
    """Statistics only: write ``OUT/model/`` and ``summary.json``, no labels.

    With ``base_model`` (a saved ``model/`` folder) this is *update*: the new items' moments are
    added to the model's (moments merge exactly) and the masks recomputed, without reading the
    old items: ``update(fit(A), B)`` equals ``fit(A ∪ B)`` for the methods ``jobs/nightly.toml``
    names (no refine, fit_on = view, rotate = none, no quantile filter). Otherwise what the model
    measured on A (a fused keep share, the PCA axes, per-class quantile thresholds) is kept for B:
    moments add up only over the same sets, in the same coordinates."""
    t_start = time.perf_counter()
    old = load(base_model, s.storage_options) if base_model else None
    if old is not None:
        _check_compatible(s, old, command="update")
    prep = prepare(s, _model_classes(old) if old is not None else None)

    def body(c: Any, parts: list, staging: Location, timings: dict) -> dict:
        # an update keeps the model's filter thresholds: moments only add up under the same sets
        # an update keeps the model's basis too: moments only add up in the same coordinates
        spec_r, parts = steps.decoded_items(c, s, prep, parts, passes=_passes(s, False), progress=progress, echo=echo,
                                      timings=timings, rotation=old.rotation if old is not None else None)
        t = time.perf_counter()
        spec = (replace(spec_r, thresholds=thresholds_of(old.params)) if old is not None and old.params.get("thresholds")
                else steps.quantile_thresholds_pass(c, s, spec_r, parts, progress=progress))
        spec0 = steps.base_spec(c, s, spec, parts, prep.info.rows, progress=progress,
                          model_params=old.params if old is not None else None)
        stats = steps.statistics_pass(c, s, spec0, parts, progress=progress)
        moments = stats.moments if old is None else {v: old.moments[v] + stats.moments[v] for v in stats.moments}
        items = stats.rows + (int(old.params.get("items", 0)) if old is not None else 0)
        timings["statistics"] = time.perf_counter() - t
        t = time.perf_counter()
        pairs = stats.pairs
        if old is not None and spec.top_t_active:  # pairs that could play in either batch
            pairs = {v: np.union1d(pairs[v], pair_ids(old.masks[v].pairs, spec.k)) for v in pairs}
        masks = steps.fit_pair_masks(s, spec, moments, pairs, client=c, keep_remote=True)
        thresholds: list = []
        if s.refine and s.fit_on != "annotation":
            stats, masks, thresholds = steps.refine_rounds(c, s, spec, parts, stats, masks, prep.info.rows,
                                                     progress=progress, keep_remote=True)
            moments = stats.moments
        facts_f = steps.write_remote_masks(c, steps.shared(replace(spec, masks=masks)), staging / "model")
        facts: dict[str, PairMasks | steps.MaskFacts] = facts_f.result() if facts_f is not None else dict(masks)
        timings["masks"] = time.perf_counter() - t
        save(FittedModel(prep.classes.names, prep.spec.classes, moments, masks if facts_f is None else {},
                         params(s, facts, items, spec, spec0.keep_margin, thresholds), spec.rotation),
             staging / "model", masks_written=facts_f is not None)
        return {"command": "update" if old is not None else "fit",
                **({"model": str(base_model)} if old is not None else {}),  # what it updated, as apply says
                "model_items": items,
                "per_view": {v: mask_summary(prep.classes.names, m) for v, m in facts.items()},
                "fallback_pairs": int(sum(int(m.fallback.sum()) for m in facts.values()))}

    return _execute(s, prep, body, command="update" if old is not None else "fit", client=client, echo=echo,
                    t_start=t_start)


def apply(s: Settings, model_dir: str, *, client: Any = None, progress: bool = False,
          echo: Echo = _silent) -> dict:
    """Label items with a saved model: the tourney pass only, no statistics."""
    t_start = time.perf_counter()
    _check_model_outside_out(model_dir, s.out)
    model = load(model_dir, s.storage_options)
    _check_compatible(s, model, command="apply")
    s = with_model_method(s, model.params, "apply")  # what the masks fix is the model's, and so recorded
    prep = prepare(s, _model_classes(model))
    spec = replace(steps.with_rotation(prep.spec, {v: model.rotation[v] for v in s.view_names if v in model.rotation}),
                   masks={v: model.masks[v] for v in s.view_names}, check_ids=True)
    spec = played_form(spec)

    def body(c: Any, parts: list, staging: Location, timings: dict) -> dict:
        played = steps.rotation_on_workers(c, spec)
        if spec.top_t_active:  # new items may need pairs the model lacks
            t = time.perf_counter()
            played = played_form(replace(played, masks=steps.complete_masks(c, played, model, parts,
                                                                             progress=progress)))
            timings["masks"] = time.perf_counter() - t
        t = time.perf_counter()
        tally = steps.label_pass(c, s, steps.masks_on_workers(c, played), parts, staging / "labels", progress=progress)
        timings["tourney"] = time.perf_counter() - t
        t = time.perf_counter()
        steps.write_disagreements(tally, staging / "disagreements")
        timings["write"] = time.perf_counter() - t
        return {"command": "apply", "model": str(model_dir)} | label_summary(s, prep.classes.names, tally,
                                                                               played.masks)

    return _execute(s, prep, body, command="apply", client=client, echo=echo, t_start=t_start)


def _passes(s: Settings, label: bool) -> int:
    """How many times ``run`` (``label``) or ``fit`` reads the items after the rotation pass."""
    refine = 0 if s.fit_on == "annotation" else s.refine
    return (int(s.cos_quantile > 0 or s.diff_quantile > 0) + int(s.fit_on == "fused") + 1 + 2 * refine
            + int(label))


def dims_problem(s: Any, view: str, d_cls: int) -> tuple[str, str, str] | None:
    """``(option, what, hint)`` when ``s``'s ``rotate_dims`` or ``dims`` (a count) exceeds what
    view ``view`` of dimension ``d_cls`` has, else None (the job's settings and PairwiseLabeler)."""
    if s.rotate == "pca" and s.rotate_dims >= 1 and s.rotate_dims > d_cls:
        return ("rotate_dims", f"rotate_dims = {s.rotate_dims:g} is larger than d = {d_cls}, the dimension of "
                f"view {view!r}", f"Set rotate_dims to at most {d_cls}, or to a fraction of d below 1 (e.g. 0.5)")
    # the statistics' dimension: the kept principal axes with rotate_dims, else d
    d_stats = kept_axes(d_cls, s.rotate_dims) if s.rotate == "pca" else d_cls
    if s.dims is not None and s.dims >= 1 and s.dims > d_stats:
        # an explicit m above d is a mistake (a wrong view or a copied job file), not a wish to
        # use every dimension: refuse it before any data is read
        what = f"d = {d_cls}" if d_stats == d_cls else f"the {d_stats} principal axes rotate_dims keeps"
        return ("dims", f"dims = {s.dims:g} is larger than {what}, the dimension of view {view!r}",
                f"Set dims to at most {d_stats}, or to a fraction of d below 1 (e.g. 0.25)")
    return None


def _model_classes(model: FittedModel) -> ClassSet:
    return ClassSet(model.names, dict(model.classes), {v: f"model:{v}" for v in model.classes})


def _check_model_outside_out(model_dir: str, out: str) -> None:
    """``apply``'s output (labels/, disagreements/) replaces its folder whole: a model inside it
    would be deleted by the publish, with ``--overwrite`` (without, the refusal named another job)."""
    def norm(p: str) -> str:
        return p.rstrip("/") if "://" in p else os.path.realpath(p)

    m, o = norm(str(model_dir)), norm(str(out))
    if m == o or m.startswith(o + "/"):
        raise BadInputError(f"holds the model being applied ({model_dir}); apply writes labels/ and disagreements/, "
                            "and publishing them replaces the folder's outputs, the model's included", file=str(out),
                            hint="Write the labels to another --out (the model stays where it is)")


def _check_compatible(s: Settings, model: FittedModel, *, command: str) -> None:
    """``update``: the model is not refined and has the settings' views and method but for the
    options :data:`~pairwise_dask.config.FREE_OF_MODEL` leaves free, every difference named at once.
    ``apply`` (which takes the model's method): the model has the settings' views."""
    if command == "update":
        check_model_method(s, {**model.params, "views": list(model.classes)}, command)
        return
    missing = [v for v in s.view_names if v not in model.classes]
    if missing:
        raise BadInputError(f"the model has no view(s) {', '.join(missing)} (it has {', '.join(model.classes)})",
                            hint="Use --views with the model's view names")
