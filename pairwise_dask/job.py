"""The Dask orchestration: two streaming passes, a tree reduction, one broadcast, one commit.

    pass 1: per partition, moments of every pair side ──tree reduction──▶ merged moments
    client: moments ─▶ pair masks and weights (small)          ─▶ one task of the graph, sent once
    pass 2: per partition, labels + tally; each task writes its own labels part
    commit: disagreements sorted, model/, summary.json; staged, then renamed into place

Everything inside a pass is a pure function of one partition plus the broadcast state (see
:mod:`pairwise_dask.passes`), so results do not depend on partitioning, worker count or retries.
The commands are ``run`` (both passes), ``fit`` (pass 1 only, writes ``model/``), ``update``
(pass 1 on new items, moments added to a saved model's) and ``apply`` (pass 2 with a saved model).
"""
from __future__ import annotations

import contextlib
import logging
import platform
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import __version__
from .config import Settings, check_model_method, with_model_method
from .errors import BadInputError
from .io import (ClassSet, Commit, ItemsInfo, inspect_items, locate_row, read_classes, item_parts, write_json,
                 write_table)
from .masks import PairMasks, concat_masks, fit_masks, pair_ids, pairs_from_ids, resolve_dims, with_pairs
from .metrics import accuracy, macro_f1, weighted_f1
from .model import FittedModel, load, model_fit_options, save, thresholds_json, thresholds_of, write_masks
from .moments import Moments, quantile_thresholds
from .report import write_report
from .storage import Location
from .rotation import axes_of, kept_axes, rotate_classes, sample_below
from .passes import (played_form, Histograms, PairSet, RemoteMasks, pairs_partition, review_order, Spec, Statistics, Tally, gram_partition, histogram_partition,
                     ids_with_hash, label_partition, partition_error, margin_bins, margin_histogram_partition,
                     margin_quantile, merge, read_block, release_arrow_memory, rotate_block, statistics_partition,
                     with_remote)
from .tourney import gathers
from .cluster import connect
from .threads import one_thread
from .watch import WorkerWatch

SPLIT_EVERY = 8
#: the disagreement reasons in the order the summary lists them (the review list's: passes.review_order)
REASON_ORDER = ("annotation+views", "annotation", "views")
#: Largest per-view moments of per-pair sets (diff_min > 0) the job accepts: k² × d × 16 bytes.
PER_PAIR_BYTES = 1 << 30
logger = logging.getLogger(__name__)
Echo = Callable[[str], None]


def _silent(_: str) -> None:
    pass


def tree_reduce(tasks: list, combine: Callable[[list], Any], split_every: int = SPLIT_EVERY) -> Any:
    """Combine delayed results in a tree of fan-in ``split_every`` (order kept: deterministic)."""
    from dask import delayed

    if not tasks:
        raise ValueError("nothing to reduce")
    while len(tasks) > 1:
        tasks = [delayed(combine, pure=True)(tasks[i:i + split_every])
                 for i in range(0, len(tasks), split_every)]
    return tasks[0]


def _compute(client: Any, task: Any, label: str, show_progress: bool) -> Any:
    fut = client.compute(task)
    if show_progress:
        from distributed import progress

        print(f"  {label}", flush=True)
        progress(fut)
        print(flush=True)
    return fut.result()


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
        if s.rotate == "pca" and s.rotate_dims >= 1 and s.rotate_dims > d_cls:
            raise BadInputError(f"rotate_dims = {s.rotate_dims:g} is larger than d = {d_cls}, the dimension of "
                                f"view {v!r}", file=s.where("rotate_dims"),
                                hint=f"Set rotate_dims to at most {d_cls}, or to a fraction of d below 1 (e.g. 0.5)")
        # the statistics' dimension: the kept principal axes with rotate_dims, else d
        d_stats = kept_axes(d_cls, s.rotate_dims) if s.rotate == "pca" else d_cls
        if s.dims is not None and s.dims >= 1 and s.dims > d_stats:
            # an explicit m above d is a mistake (a wrong view or a copied job file), not a wish to
            # use every dimension: refuse it before any data is read
            what = f"d = {d_cls}" if d_stats == d_cls else f"the {d_stats} principal axes rotate_dims keeps"
            raise BadInputError(f"dims = {s.dims:g} is larger than {what}, the dimension of view {v!r}",
                                file=s.where("dims"),
                                hint=f"Set dims to at most {d_stats}, or to a fraction of d below 1 (e.g. 0.25)")
        if s.per_pair_sets and classes.k ** 2 * d_cls * 16 > PER_PAIR_BYTES:
            # per-pair sets hold k² rows of float64 moments (two sums) in every task and reduction
            raise BadInputError(f"diff_min > 0 needs moments per ordered class pair: {classes.k}² × {d_cls} "
                                f"× 16 B = {classes.k ** 2 * d_cls * 16 / 2**30:.1f} GiB per view",
                                hint="Use diff_min = 0 (per-class moments) with this many classes")
    spec = Spec(id_col=s.id, label_col=s.label, views=s.views, names=classes.names,
                classes={v: classes.embeddings[v] for v in s.view_names}, cos_min=s.cos_min,
                diff_min=s.diff_min, per_pair=s.per_pair_sets, seed=s.seed, mode=s.mode, top_t=s.top_t,
                final=s.final, fuse=s.fuse, fit_on=s.fit_on)
    return Prepared(info, classes, spec)


def _check_duplicates(c: Any, s: Settings, parts: list, spec_f: SpecRef, h: int | None) -> None:
    """Name the duplicated id behind a repeated hash (a true 64-bit collision is let through)."""
    if h is None:
        return
    found = c.compute([on_spec(ids_with_hash, p, spec_f, h, pure=False) for p in parts])
    ids = [i for f in found for i in f.result()]
    if len(set(ids)) < len(ids):
        raise BadInputError("appears more than once", file=s.items, column=s.id,
                            row=next(i for i in ids if ids.count(i) > 1),
                            hint="Ids must be unique; drop or rename the duplicates")


class SpecRef(NamedTuple):
    """A pass's shared spec, as :func:`on_spec` hands it to the pass's tasks."""

    stub: Any                  # the spec, without the masks left on the workers, as one graph task
    order: tuple[str, ...]     # the views of the spec's masks
    masks: dict[str, Any]      # view -> future of its masks on the workers (RemoteMasks); often empty
    rotation: Any = None       # the future of the spec's rotation on the workers (Spec.rotation_ref)


def shared(spec: Spec) -> SpecRef:
    """The pass's small shared state as a single task of its graph, which every partition uses.

    Not ``client.scatter``: a scattered value lives only on workers, and when the workers holding
    it die (the cluster's only worker, say) the scheduler cannot recreate it and the whole pass is
    cancelled. A graph task is sent once, stays with the scheduler and is recomputed on whichever
    worker needs it, so the job survives losing every worker as long as a new one joins.
    Its key is a fresh name, not a token: tokenising hashes every array of the spec, and each pass
    sends its own spec once either way. Masks left on the workers (:class:`RemoteMasks`) and a
    rotation already there (``Spec.rotation_ref``) stay out of it: :func:`on_spec` passes their
    futures beside it (recomputed from their lineage if lost).
    """
    from dask import delayed

    remote = {v: m.joined for v, m in spec.masks.items() if isinstance(m, RemoteMasks)}
    stub = replace(spec, masks={v: m for v, m in spec.masks.items() if v not in remote}) if remote else spec
    if spec.rotation_ref is not None:
        stub = replace(stub, rotation={}, rotation_ref=None)
    return SpecRef(delayed(stub, name=f"Spec-{uuid.uuid4().hex}", traverse=False), tuple(spec.masks), remote,
                   spec.rotation_ref)


def on_spec(fn: Callable[..., Any], first: Any, ref: SpecRef, *args: Any, pure: bool = True,
            dask_key_name: str | None = None) -> Any:
    """``delayed(fn)(first, spec, *args)`` for the spec ``ref`` stands for. Masks and a rotation
    left on the workers go beside the spec and the task itself puts them back in
    (:func:`with_remote`): a worker fetches each once for all of the pass's tasks it runs, and no
    spec holding them is ever built in one place and copied to the others."""
    from dask import delayed

    kw = {} if dask_key_name is None else {"dask_key_name": dask_key_name}
    if not ref.masks and ref.rotation is None:
        return delayed(fn, pure=pure)(first, ref.stub, *args, **kw)
    return delayed(with_remote, pure=pure)(fn, first, ref.stub, ref.order, ref.masks, ref.rotation, *args, **kw)


def quantile_thresholds_pass(c: Any, s: Settings, spec: Spec, parts: list, *, progress: bool) -> Spec:
    """Pass 0, only when a quantile filter is on: per-class thresholds from merged histograms.

    The effective threshold of a class is the larger of the absolute one and its quantile's.
    """
    if not (s.cos_quantile > 0 or s.diff_quantile > 0):
        return spec
    spec_f = shared(spec)
    root = tree_reduce([on_spec(histogram_partition, p, spec_f) for p in parts], merge)
    hist: Histograms = _compute(c, root, "quantile filters", progress)
    thresholds = {}
    for v, h in hist.counts.items():
        cos = np.maximum(s.cos_min, quantile_thresholds(h, s.cos_quantile, 0)) if s.cos_quantile else \
            np.full(spec.k, s.cos_min)
        diff = np.maximum(s.diff_min, quantile_thresholds(h, s.diff_quantile, 1)) if s.diff_quantile else \
            np.full(spec.k, s.diff_min)
        thresholds[v] = (cos, diff)
    return replace(spec, thresholds=thresholds)


def with_rotation(spec: Spec, rotation: dict[str, np.ndarray], ref: Any = None) -> Spec:
    """``spec`` reading items as ``x·R`` and holding the prompts in the same basis; ``ref``: a
    future of ``rotation`` on the workers, which the passes use instead of shipping the arrays."""
    if not rotation:
        return spec
    return replace(spec, rotation=dict(rotation), rotation_ref=ref, base_classes=dict(spec.classes),
                   classes={v: rotate_classes(c, rotation[v]) for v, c in spec.classes.items()})


def _send_once(c: Any, value: Any, what: str) -> Any:
    """A future of ``value`` (which the client holds) on the workers: sent once, as a task of its
    own whose data the scheduler keeps, so it is recomputed if its worker is lost (a scattered
    value would not be). Dask's "large graph" warning (past 10 MB) would tell the user to do what
    this does, so it is raised past this one send."""
    import dask
    from dask.sizeof import sizeof

    size = sizeof(value)
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": max(size * 2, 10 * 2**20)}):
        return c.submit(_same, value, key=f"{what}-{uuid.uuid4().hex}")


def _same(value: Any) -> Any:
    return value


def rotation_on_workers(c: Any, spec: Spec) -> Spec:
    """``spec`` with a rotation the client holds (a saved model's) sent to the workers once
    (:func:`_send_once`) instead of with every pass."""
    if not spec.rotation or spec.rotation_ref is not None:
        return spec
    return replace(spec, rotation_ref=_send_once(c, dict(spec.rotation), "rotation"))


def masks_on_workers(c: Any, spec: Spec) -> Spec:
    """``spec`` with the masks the client holds (a saved model's: 722 MB at k = 1,000) sent to
    the workers once (:func:`_send_once`) and used there like masks fitted there (:class:`RemoteMasks`)."""
    return replace(spec, masks={v: m if isinstance(m, RemoteMasks) else RemoteMasks(_send_once(c, m, "masks"), m.decision)
                                for v, m in spec.masks.items()})


def rotation_pass(c: Any, s: Settings, spec: Spec, parts: list, rows: int, *, progress: bool) -> Spec:
    """``rotate = pca``: one label-free pass of exact Grams (over ``rotate_sample`` items, a fixed
    sample by id hash, when the catalog is larger), then every view's principal axes."""
    if s.rotate != "pca":
        return spec
    from dask import delayed

    spec_f = shared(spec)
    below = sample_below(rows, s.rotate_sample)
    gram = tree_reduce([on_spec(gram_partition, p, spec_f, below) for p in parts], merge)
    # the axes are found on a worker and stay there for the passes (a (d, d) Gram and a (d, r)
    # basis per view: 134 + 64 MB at d = 4,096); the client fetches the basis once, for the prompts
    # and the model
    axes = c.compute(delayed(axes_of)(gram, s.rotate_dims))
    _await(c, [axes], "rotation: Grams", progress)
    return with_rotation(spec, axes.result(), ref=axes)


def decoded_items(c: Any, s: Settings, prep: Prepared, parts: list, *, passes: int, progress: bool, echo: Echo,
                  timings: dict, rotation: dict[str, np.ndarray] | None = None) -> tuple[Spec, list]:
    """The spec in its basis (``rotate``; an update passes its model's ``rotation``) and what the
    ``passes`` after the rotation read: the cached blocks (see :func:`cache_blocks`) or the partitions.

    With ``rotate = pca`` and the items cached, the raw blocks are kept first, the Grams come from
    them and each block is then rotated in worker memory: the catalog is read from storage once.
    Streaming, the rotation pass reads it once more and every pass that needs the rotated rows
    rotates what it reads (passes of base labels none, keep-threshold passes their sample only).
    """
    if rotation is not None or s.rotate != "pca":
        spec = rotation_on_workers(c, with_rotation(prep.spec, rotation or {}))
        return spec, cache_blocks(c, s, prep.info, spec, parts, passes=passes, progress=progress, echo=echo,
                                  timings=timings)
    blocks = cache_blocks(c, s, prep.info, prep.spec, parts, passes=passes + 1, progress=progress, echo=echo,
                          timings=timings)
    t = time.perf_counter()
    spec = rotation_pass(c, s, prep.spec, blocks, prep.info.rows, progress=progress)
    if blocks is not parts:
        blocks = _rotate_blocks(c, spec, blocks, progress=progress)
    timings["rotation"] = time.perf_counter() - t
    return spec, blocks


def _rotate_blocks(c: Any, spec: Spec, blocks: list, *, progress: bool) -> list:
    """Cached raw blocks turned into ``spec``'s basis; each raw block is released as soon as its
    rotated one exists (the caller's list is emptied), so memory holds about one copy."""
    from dask.base import tokenize

    spec_f = shared(spec)
    rotated = c.persist([on_spec(rotate_block, b, spec_f, dask_key_name=f"rotate-{tokenize(b.key, spec)}")
                         for b in blocks])
    blocks.clear()  # the only references to the raw futures: the scheduler frees each once used
    _await(c, rotated, "rotation: the kept blocks turned", progress)
    c.run(release_arrow_memory)  # the last raw blocks' pages (each rotate task freed the earlier ones)
    return rotated


def statistics_pass(c: Any, s: Settings, spec: Spec, parts: list, *, progress: bool,
                    label: str = "statistics") -> Statistics:
    """Pass 1: per-partition moments merged by a tree reduction; duplicate ids named."""
    spec_f = shared(spec)
    root = tree_reduce([on_spec(statistics_partition, p, spec_f) for p in parts], merge)
    stats: Statistics = _compute(c, root, label, progress)
    _check_duplicates(c, s, parts, spec_f, stats.duplicate_hash)
    return stats


def fit_pair_masks(s: Settings, spec: Spec, moments: dict[str, Moments],
                   pair_ids: dict[str, np.ndarray] | None = None, *,
                   per_pair: bool | None = None, refined: bool = False, client: Any = None,
                   keep_remote: bool = False) -> dict[str, PairMasks | RemoteMasks]:
    """Masks and weights of every view from merged moments (on the client; more than
    :data:`PARALLEL_PAIRS` pairs in chunks on the workers of ``client``, when given). With
    ``keep_remote`` those views' masks stay on the workers (:class:`RemoteMasks`, for the passes
    that follow and for :func:`_write_masks`, which writes them into the model there).

    With the top-t bracket only the pairs some item can play (``pair_ids``, from pass 1) are fitted;
    with many of them the weights stay sparse ``(P, m)`` and the tourney gathers per match instead
    of one ``(P, d)`` product. ``per_pair=False`` for refined moments (one class set per label).

    ``decision = "discriminant"`` applies to masks fitted from tourney labels (``refined``), from
    the annotation, or when there is no refine round; the first round of a refined run, fitted
    from the zero-shot labels, keeps the prompt-anchored cosine (a discriminant fitted to the
    zero-shot labels reproduces their errors: −0.014 final accuracy on Debian half A).
    """
    per_pair = spec.per_pair if per_pair is None else per_pair
    decision = s.decision if (refined or s.refine == 0 or s.fit_on == "annotation") else "cosine"
    masks, remote = {}, {}
    workers = len(client.scheduler_info().get("workers", {})) if client is not None else 0
    for v in spec.classes:
        k, dim = spec.classes[v].shape
        m = resolve_dims(s.dims, dim)
        pairs, dense = None, True
        if spec.top_t_active and pair_ids is not None and v in pair_ids:
            pairs = pairs_from_ids(pair_ids[v], k)
            dense = not gathers(k, dim, m, spec.top_t)
        kw = dict(m=m, min_items=s.min_items, per_pair=per_pair, dense=dense, mix=s.mix, decision=decision,
                  prior=s.prior)
        if pairs is not None and not dense and len(pairs) > PARALLEL_PAIRS and workers > 1:
            remote[v] = (moments[v], spec.classes[v], pairs, kw)  # one worker: no faster than here
        else:
            masks[v] = fit_masks(moments[v], spec.classes[v], pairs=pairs, **kw)
    if remote:
        masks.update(_fit_on_workers(client, remote, workers, keep_remote=keep_remote))
    return {v: masks[v] for v in spec.classes}


#: Above this many pairs (top-t over a large taxonomy) the masks are fitted in chunks on the workers.
PARALLEL_PAIRS = 100_000


def _fit_on_workers(c: Any, fits: dict[str, tuple], workers: int, *,
                    keep_remote: bool = False) -> dict[str, PairMasks | RemoteMasks]:
    """:func:`fit_masks` over chunks of each view's pairs as tasks, every view's in one graph (no
    idle worker between views), each view's joined in order: a pair's mask and weights depend on
    that pair and the (whole) moments only, so this equals one call per view.
    ``fits``: view -> (moments, classes, pairs, keyword arguments). ``keep_remote``: each view's
    chunks are joined on a worker and stay there, one future per view (recomputed from its lineage
    if a worker is lost)."""
    from dask import delayed

    tasks, counts = [], {}
    for v, (moments, classes, pairs, kw) in fits.items():
        chunks = np.array_split(pairs, 8 * workers)  # small enough that no worker is left alone at the end
        mom_f, cls_f = delayed(moments, pure=True, traverse=False), delayed(classes, pure=True, traverse=False)
        tasks += [delayed(fit_masks, pure=True)(mom_f, cls_f, pairs=ch, **kw) for ch in chunks]
        counts[v] = len(chunks)
    if keep_remote:
        # each view's chunks joined on a worker: the client holds one future per view, so the
        # chunks themselves are freed once joined (the joined masks keep their lineage)
        joined, i = {}, 0
        for v, n in counts.items():
            joined[v] = delayed(concat_masks, pure=True)(tasks[i:i + n])
            i += n
        futures = c.compute(list(joined.values()))
        _await(c, futures, "pair masks", False)  # the fit's own time: wait here, not in the next pass
        return {v: RemoteMasks(f, fits[v][3]["decision"]) for v, f in zip(joined, futures)}
    parts = c.compute(tasks, sync=True)
    out: dict[str, PairMasks | RemoteMasks] = {}
    i = 0
    for v, n in counts.items():
        out[v] = concat_masks(parts[i:i + n])
        i += n
    return out


def keep_threshold(c: Any, s: Settings, spec: Spec, parts: list, rows: int, *, progress: bool, label: str) -> float:
    """The margin above which the ``s.keep`` most confident items lie: one pass of exact histogram
    counts (final margins with ``spec.masks``; fused base margins without), over the items of the
    keep sample (``keep_sample``: a fixed sample by id hash past that many items; only they are
    rotated and played, so a streamed catalog's threshold pass costs little more than its read)."""
    spec_f = shared(spec)
    below = sample_below(rows, s.keep_sample)
    hist = _compute(c, tree_reduce([on_spec(margin_histogram_partition, p, spec_f, below)
                                    for p in parts], merge), label, progress)
    return margin_quantile(hist, 1.0 - s.keep, margin_bins(spec))


def base_spec(c: Any, s: Settings, spec: Spec, parts: list, rows: int, *, progress: bool,
              model_params: dict | None = None) -> Spec:
    """The first statistics pass's spec: with ``fit_on = fused`` its keep threshold, measured
    (or, when updating a model, the model's, so that old and new moments share one filter)."""
    if s.fit_on != "fused":
        return spec
    if model_params is not None and "base_keep_margin" in model_params:
        return replace(spec, keep_margin=float(model_params["base_keep_margin"]))
    return replace(spec, keep_margin=keep_threshold(c, s, spec, parts, rows, progress=progress,
                                                    label="fused base margins"))


def refine_rounds(c: Any, s: Settings, spec: Spec, parts: list, stats: Statistics,
                  masks: dict[str, PairMasks | RemoteMasks], rows: int, *, progress: bool,
                  keep_remote: bool = False) -> tuple[Statistics, dict[str, PairMasks | RemoteMasks], list]:
    """``s.refine`` rounds: label with the current masks, keep the ``keep`` most confident
    final labels, re-estimate the moments from them (one class set per label), refit the masks.
    With a refine round, ``masks`` is emptied in place once the round holds its own copy of the
    dict, so that the caller's reference does not keep masks left on the workers alive.

    Each round is two passes: a histogram of the final margins (its quantile is the keep
    threshold, exact under any partitioning), then the statistics of the kept items.
    """
    thresholds = []
    rounds = 0 if s.fit_on == "annotation" else s.refine  # refining would replace the annotation's sets
    for r in range(rounds):
        spec_r = replace(spec, masks=dict(masks), round=f"refine {r + 1}")
        masks.clear()  # the caller's too: see below
        thr = keep_threshold(c, s, spec_r, parts, rows, progress=progress,
                             label=f"refine {r + 1}/{s.refine}: margins")
        stats = statistics_pass(c, s, replace(spec_r, keep_margin=thr), parts, progress=progress,
                                label=f"refine {r + 1}/{s.refine}: statistics")
        # this round's masks are done with: dropping the last reference frees them on the workers
        # (RemoteMasks; 2.8 GB at k = 1,000 with dims = 0.5) before the next round's are fitted
        del spec_r
        masks = fit_pair_masks(s, spec, stats.moments, stats.pairs, per_pair=False, refined=True, client=c,
                               keep_remote=keep_remote)
        thresholds.append(thr)
    return stats, masks, thresholds


class MaskFacts(NamedTuple):
    """What the summary and the model's parameters need of a view's masks: fetched instead of the
    masks when those stay on the workers (k = 1,000: 3.6 MB instead of 361 MB per view)."""

    pairs: np.ndarray
    fallback: np.ndarray
    width: int


def _write_masks(folder: Location, spec: Spec) -> dict[str, MaskFacts]:
    """On a worker, with the masks left there put back into ``spec``: the model's masks files, and
    the facts the client needs of them.

    The task secedes from the worker's thread pool first, so the worker keeps labelling meanwhile
    (k = 1,000: 3-5 s of Parquet encoding, which would otherwise stall that worker's share).
    """
    from distributed import secede

    with contextlib.suppress(ValueError):  # not on a distributed worker (a local scheduler)
        secede()
    write_masks(spec.masks, spec.names, folder)
    return {v: MaskFacts(m.pairs, m.fallback, int(m.dims.shape[1])) for v, m in spec.masks.items()}


def _write_remote_masks(c: Any, spec_f: SpecRef, folder: Location) -> Any:
    """With masks left on the workers: a future of :func:`_write_masks` into the model ``folder``
    (so they never come to the client); ``None`` when the client holds every view's masks."""
    if not spec_f.masks:
        return None
    folder.mkdir()
    return c.compute(on_spec(_write_masks, folder, spec_f, pure=False))


def _label_and_write(df: Any, spec: Spec, path: Location) -> Tally:
    table, tally = label_partition(df, spec)
    write_table(table, path)
    return tally


def label_pass(c: Any, s: Settings, spec: Spec, parts: list, labels_dir: Location, *, progress: bool,
               spec_f: SpecRef | None = None) -> Tally:
    """Pass 2: every partition labelled; each task writes its own part of ``labels/``.
    ``spec_f``: the pass's :func:`shared` spec, when the caller made it (default: from ``spec``)."""
    labels_dir.mkdir()
    spec_f = shared(spec) if spec_f is None else spec_f
    tasks = [on_spec(_label_and_write, p, spec_f, labels_dir / f"part.{i:05d}.parquet")
             for i, p in enumerate(parts)]
    tally: Tally = _compute(c, tree_reduce(tasks, merge), "tourney and outputs", progress)
    if spec.check_ids:
        _check_duplicates(c, s, parts, spec_f, tally.duplicate_hash)
    return tally


def write_disagreements(tally: Tally, folder: Location) -> None:
    """The review list, most certain errors first (:func:`~pairwise_dask.passes.review_order`)."""
    dis = tally.disagreements
    dis = dis.take(review_order(dis))
    folder.mkdir()
    write_table(dis, folder / "part.00000.parquet")


Body = Callable[[Any, list, Location, dict], dict]


#: ``cache = auto`` keeps the decoded items in worker memory when they take at most this share of
#: the workers' summed memory limits (the rest is each pass's working memory and Dask's headroom).
CACHE_SHARE = 1 / 3


def decoded_bytes(info: ItemsInfo, spec: Spec) -> int:
    """Worker memory the decoded items take: float32 views, base scores, ids and hashes."""
    per_row = sum(c.shape[1] * 4 + spec.k * 4 + 12 for c in spec.classes.values()) + 64
    return int(info.rows) * per_row


def cache_blocks(c: Any, s: Settings, info: ItemsInfo, spec: Spec, parts: list, *, passes: int, progress: bool,
                 echo: Echo, timings: dict) -> list:
    """The partitions the remaining ``passes`` read: decoded once (in ``spec``'s basis: rotated
    with ``rotate = pca``) and kept in worker memory when that pays (``passes`` > 1) and fits
    (``s.cache``); else the partitions themselves, read again by every pass.

    The kept blocks are Dask futures with their lineage, so a lost worker's blocks are read again
    by whichever worker needs them. Large catalogs (over :data:`CACHE_SHARE` of the workers' memory
    limits) stream, as before: memory stays bounded by a few partitions per worker.
    """
    from dask.base import tokenize
    from dask.utils import format_bytes

    if s.cache == "off" or passes < 2:
        return parts
    need = decoded_bytes(info, spec)
    limits = [w.get("memory_limit") or 0 for w in c.scheduler_info().get("workers", {}).values()]
    room = sum(limits) if limits and all(limits) else 0
    if s.cache == "auto" and need > room * CACHE_SHARE:
        echo(f"Streaming the items in each of {passes} passes ({format_bytes(need)} decoded; cache = auto keeps "
             f"them only within a third of the workers' {format_bytes(room)})")
        return parts
    t = time.perf_counter()
    spec_f = shared(spec)
    blocks = c.persist([on_spec(read_block, p, spec_f, dask_key_name=f"decode-{tokenize(p.key, spec)}")
                        for p in parts])
    echo(f"Keeping the decoded items in worker memory ({format_bytes(need)}): read once for {passes} passes")
    _await(c, blocks, "read and check", progress)  # so that "read" times the reading
    timings["read"] = time.perf_counter() - t
    return blocks


def _await(c: Any, persisted: list, label: str, progress: bool) -> None:
    """Wait until ``persisted`` (the result of ``c.persist``) is in worker memory, with a bar."""
    if progress:
        from distributed import progress as show

        print(f"  {label}", flush=True)
        show(persisted)
        print(flush=True)
    else:
        from distributed import wait

        with c.as_current():  # wait() syncs through the current client: make it this job's
            wait(persisted)


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
            workers = len(c.scheduler_info().get("workers", {}))
            echo(f"Read {prep.info.rows:,} items in {len(parts)} partitions from {len(prep.info.files)} file(s); "
                 f"{prep.classes.k} classes; views {', '.join(f'{v}={col}' for v, col in s.views)}; "
                 f"{workers} workers")
            # a cluster the job did not start can lose every worker mid-run: say so, and with
            # worker_wait > 0 give up after that long rather than wait for ever
            watch = WorkerWatch(c, s.worker_wait, echo) if client is not None or s.scheduler else None
            try:
                with watch or contextlib.nullcontext():
                    summary = body(c, parts, staging, timings)
                cluster = {"scheduler": s.scheduler or (c.scheduler.address if client is not None else "LocalCluster"),
                           "workers": workers, "workers_at_end": len(c.scheduler_info().get("workers", {}))}
                summary = _frame(s, prep, len(parts), cluster, timings, commit.run_id) | summary
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
                raise _with_items_file(_first_bad_partition(c, s, prep.spec, parts, e, echo), s, prep.info) from None
            except BaseException:
                commit.abort()
                if watch is not None and watch.gave_up:  # what the run waited on was cancelled for it
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
        spec_f = shared(spec)
        found = c.compute([on_spec(partition_error, p, spec_f) for p in parts], sync=True)
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
    if e.column not in item_cols or (e.file and e.file in info.files):
        return e
    file = locate_row(info.files, s.id, e.row) or s.items
    return BadInputError(e.what, file=file, column=e.column, row=e.row, hint=e.hint)


def run(s: Settings, *, client: Any = None, progress: bool = False, echo: Echo = _silent) -> dict:
    """Run the whole job described by ``s``; return its summary (also in ``OUT/summary.json``).

    Raises :class:`BadInputError` for bad input, leaving the output folder as it was.
    """
    t_start = time.perf_counter()
    prep = prepare(s)

    def body(c: Any, parts: list, staging: Location, timings: dict) -> dict:
        spec, parts = decoded_items(c, s, prep, parts, passes=_passes(s, True), progress=progress, echo=echo,
                                    timings=timings)
        t = time.perf_counter()
        spec = quantile_thresholds_pass(c, s, spec, parts, progress=progress)
        spec0 = base_spec(c, s, spec, parts, prep.info.rows, progress=progress)
        stats = statistics_pass(c, s, spec0, parts, progress=progress)
        timings["statistics"] = time.perf_counter() - t
        t = time.perf_counter()
        # a large taxonomy's masks stay on the workers that fitted them (RemoteMasks)
        masks = fit_pair_masks(s, spec, stats.moments, stats.pairs, client=c, keep_remote=True)
        timings["masks"] = time.perf_counter() - t
        t = time.perf_counter()
        stats, masks, thresholds = refine_rounds(c, s, spec, parts, stats, masks, prep.info.rows,
                                                 progress=progress, keep_remote=True)
        if thresholds:
            timings["refine"] = time.perf_counter() - t
        t = time.perf_counter()
        spec_f = shared(replace(spec, masks=masks))
        facts_f = _write_remote_masks(c, spec_f, staging / "model")
        facts: dict[str, PairMasks | MaskFacts] = {}

        def write_model() -> None:
            facts.update(facts_f.result() if facts_f is not None else masks)
            model = FittedModel(prep.classes.names, prep.spec.classes, stats.moments,
                                masks if facts_f is None else {},
                                _params(s, facts, stats.rows, spec, spec0.keep_margin, thresholds), spec.rotation)
            save(model, staging / "model", masks_written=facts_f is not None)

        # the client only waits while pass 2 runs on the workers: it writes the model meanwhile
        # (k = 1,000: 3 s of Parquet off the critical path); leaving the block waits for it, even
        # on an error
        with ThreadPoolExecutor(1, thread_name_prefix="pairwise-dask-model") as pool:
            saved = pool.submit(write_model)
            tally = label_pass(c, s, spec, parts, staging / "labels", progress=progress, spec_f=spec_f)
            timings["tourney"] = time.perf_counter() - t
            t = time.perf_counter()
            write_disagreements(tally, staging / "disagreements")
            saved.result()
        timings["write"] = time.perf_counter() - t
        return ({"command": "run"} | _label_summary(s, prep.classes.names, tally, facts)
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
        spec_r, parts = decoded_items(c, s, prep, parts, passes=_passes(s, False), progress=progress, echo=echo,
                                      timings=timings, rotation=old.rotation if old is not None else None)
        t = time.perf_counter()
        spec = (replace(spec_r, thresholds=thresholds_of(old.params)) if old is not None and old.params.get("thresholds")
                else quantile_thresholds_pass(c, s, spec_r, parts, progress=progress))
        spec0 = base_spec(c, s, spec, parts, prep.info.rows, progress=progress,
                          model_params=old.params if old is not None else None)
        stats = statistics_pass(c, s, spec0, parts, progress=progress)
        moments = stats.moments if old is None else {v: old.moments[v] + stats.moments[v] for v in stats.moments}
        items = stats.rows + (int(old.params.get("items", 0)) if old is not None else 0)
        timings["statistics"] = time.perf_counter() - t
        t = time.perf_counter()
        pairs = stats.pairs
        if old is not None and spec.top_t_active:  # pairs that could play in either batch
            pairs = {v: np.union1d(pairs[v], pair_ids(old.masks[v].pairs, spec.k)) for v in pairs}
        masks = fit_pair_masks(s, spec, moments, pairs, client=c, keep_remote=True)
        thresholds: list = []
        if s.refine and s.fit_on != "annotation":
            stats, masks, thresholds = refine_rounds(c, s, spec, parts, stats, masks, prep.info.rows,
                                                     progress=progress, keep_remote=True)
            moments = stats.moments
        facts_f = _write_remote_masks(c, shared(replace(spec, masks=masks)), staging / "model")
        facts: dict[str, PairMasks | MaskFacts] = facts_f.result() if facts_f is not None else dict(masks)
        timings["masks"] = time.perf_counter() - t
        save(FittedModel(prep.classes.names, prep.spec.classes, moments, masks if facts_f is None else {},
                         _params(s, facts, items, spec, spec0.keep_margin, thresholds), spec.rotation),
             staging / "model", masks_written=facts_f is not None)
        return {"command": "update" if old is not None else "fit", "model_items": items,
                "per_view": {v: _mask_summary(prep.classes.names, m) for v, m in facts.items()},
                "fallback_pairs": int(sum(int(m.fallback.sum()) for m in facts.values()))}

    return _execute(s, prep, body, command="update" if old is not None else "fit", client=client, echo=echo,
                    t_start=t_start)


def apply(s: Settings, model_dir: str, *, client: Any = None, progress: bool = False,
          echo: Echo = _silent) -> dict:
    """Label items with a saved model: the tourney pass only, no statistics."""
    t_start = time.perf_counter()
    model = load(model_dir, s.storage_options)
    _check_compatible(s, model, command="apply")
    s = with_model_method(s, model.params, "apply")  # what the masks fix is the model's, and so recorded
    prep = prepare(s, _model_classes(model))
    spec = replace(with_rotation(prep.spec, {v: model.rotation[v] for v in s.view_names if v in model.rotation}),
                   masks={v: model.masks[v] for v in s.view_names}, check_ids=True)
    spec = played_form(spec)

    def body(c: Any, parts: list, staging: Location, timings: dict) -> dict:
        played = rotation_on_workers(c, spec)
        if spec.top_t_active:  # new items may need pairs the model lacks
            t = time.perf_counter()
            played = played_form(replace(played, masks=complete_masks(c, played, model, parts, progress=progress)))
            timings["masks"] = time.perf_counter() - t
        t = time.perf_counter()
        tally = label_pass(c, s, masks_on_workers(c, played), parts, staging / "labels", progress=progress)
        timings["tourney"] = time.perf_counter() - t
        t = time.perf_counter()
        write_disagreements(tally, staging / "disagreements")
        timings["write"] = time.perf_counter() - t
        return {"command": "apply", "model": str(model_dir)} | _label_summary(s, prep.classes.names, tally,
                                                                               played.masks)

    return _execute(s, prep, body, command="apply", client=client, echo=echo, t_start=t_start)


def complete_masks(c: Any, spec: Spec, model: FittedModel, parts: list, *, progress: bool) -> dict[str, PairMasks]:
    """The model's masks plus those of every pair the items can play in the top-t bracket that
    the model lacks (new items may rank classes in combinations its fit never saw), from the
    moments the model keeps (:func:`~pairwise_dask.masks.with_pairs`: the masks a fit that had met
    those pairs would have saved). One more pass over the items, on their base labels only."""
    no_masks = shared(replace(spec, masks={}))  # the base labels alone: the masks stay on the client
    needed: PairSet = _compute(c, tree_reduce([on_spec(pairs_partition, p, no_masks) for p in parts], merge),
                               "top-t: the pairs the items can play", progress)
    return {v: with_pairs(m, model.moments[v], spec.classes[v], needed.pairs[v], **model_fit_options(model.params))
            for v, m in spec.masks.items()}


def _passes(s: Settings, label: bool) -> int:
    """How many times ``run`` (``label``) or ``fit`` reads the items after the rotation pass."""
    refine = 0 if s.fit_on == "annotation" else s.refine
    return (int(s.cos_quantile > 0 or s.diff_quantile > 0) + int(s.fit_on == "fused") + 1 + 2 * refine
            + int(label))


def _model_classes(model: FittedModel) -> ClassSet:
    return ClassSet(model.names, dict(model.classes), {v: f"model:{v}" for v in model.classes})


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


# --- summaries -----------------------------------------------------------------------------

def _params(s: Settings, masks: dict[str, PairMasks] | dict[str, PairMasks | MaskFacts], items: int, spec: Spec,
            base_keep_margin: float = 0.0, thresholds: list | tuple = ()) -> dict:
    width = {v: m.width if isinstance(m, MaskFacts) else int(m.dims.shape[1]) for v, m in masks.items()}
    return {"thresholds": thresholds_json(spec.thresholds),
            "dims": s.dims, "m": width, "min_items": s.min_items,
            "cos_min": s.cos_min, "diff_min": s.diff_min, "cos_quantile": s.cos_quantile,
            "diff_quantile": s.diff_quantile, "per_pair": s.per_pair_sets, "seed": s.seed,
            "mode": s.mode, "top_t": s.top_t, "items": int(items), "final": s.final, "fuse": s.fuse, "mix": s.mix,
            "refine": s.refine, "keep": s.keep, "fit_on": s.fit_on, "decision": s.decision, "prior": s.prior,
            "rotate": s.rotate, "rotate_sample": s.rotate_sample, "rotate_dims": s.rotate_dims,
            "keep_sample": s.keep_sample,
            "base_keep_margin": base_keep_margin,
            "refine_thresholds": list(thresholds)}


def _mask_summary(names: tuple[str, ...], m: PairMasks | MaskFacts) -> dict:
    return {"pairs": int(len(m.pairs)),
            "fallback_pairs": [f"{names[a]} / {names[b]}" for a, b in m.pairs[m.fallback]]}


def _counts(names: tuple[str, ...], arr: np.ndarray) -> dict[str, int]:
    return {n: int(c) for n, c in zip(names, arr)}


def _label_summary(s: Settings, names: tuple[str, ...], tally: Tally,
                   masks: dict[str, PairMasks] | dict[str, PairMasks | MaskFacts]) -> dict:
    per_view = {}
    for v in s.view_names:
        pv: dict[str, Any] = {"base_counts": _counts(names, tally.base_counts[v]),
                              "tourney_counts": _counts(names, tally.label_counts[v]),
                              "changed": tally.changed[v]}
        if s.label:
            for kind in ("base", "tourney"):
                conf = tally.conf[f"annotation~{kind}:{v}"]
                pv[f"accuracy_{kind}"] = _figure(accuracy(conf))
                pv[f"macro_f1_{kind}"] = _figure(macro_f1(conf))
        per_view[v] = pv | _mask_summary(names, masks[v])
    agreement: dict[str, dict[str, float]] = {}
    for key, conf in tally.conf.items():
        if key.startswith(("base:", "tourney:")):
            kind, pair = key.split(":")
            agreement.setdefault(pair, {})[kind] = weighted_f1(conf)
    dis = tally.disagreements
    reasons = pc.value_counts(dis.column("reason")).to_pylist() if dis.num_rows else []
    # a fixed order (value_counts follows the rows'): the review list's, contradicted annotations first
    reasons.sort(key=lambda r: (REASON_ORDER.index(r["values"]) if r["values"] in REASON_ORDER else 9, r["values"]))
    out: dict[str, Any] = {
        "labelled_items": int(tally.rows),
        "per_view": per_view,
        "agreement_weighted_f1": agreement,
        "disagreements": {"rows": int(dis.num_rows), **{r["values"]: int(r["counts"]) for r in reasons}},
        "fallback_pairs": int(sum(int(m.fallback.sum()) for m in masks.values())),
    }
    if s.label:
        conf = tally.conf["annotation~final"]
        # the figures are over the annotated items only (a null annotation is not a verdict)
        out["final"] = {"accuracy": _figure(accuracy(conf)), "macro_f1": _figure(macro_f1(conf)),
                        "annotated_items": int(conf.sum())}
    return out


def _figure(x: float) -> float | None:
    """A figure over no items (every annotation null) is ``None``: ``null`` in summary.json."""
    return x if np.isfinite(x) else None


def method_of(s: Settings) -> dict:
    """The ``[method]`` options as ``summary.json`` records them."""
    return {"dims": s.dims, "min_items": s.min_items, "cos_min": s.cos_min, "diff_min": s.diff_min,
            "cos_quantile": s.cos_quantile, "diff_quantile": s.diff_quantile,
            "seed": s.seed, "mode": s.mode, "top_t": s.top_t, "final": s.final, "fuse": s.fuse, "mix": s.mix,
            "refine": s.refine, "keep": s.keep, "fit_on": s.fit_on, "decision": s.decision,
            "prior": s.prior, "rotate": s.rotate, "rotate_sample": s.rotate_sample,
            "rotate_dims": s.rotate_dims, "keep_sample": s.keep_sample}


def _frame(s: Settings, prep: Prepared, partitions: int, cluster: dict, timings: dict, run_id: str) -> dict:
    import dask
    import distributed

    return {
        "run_id": run_id,
        "fingerprint": s.fingerprint(),
        "version": __version__,
        "out": s.out,
        "items": {"path": s.items, "files": len(prep.info.files), "rows": int(prep.info.rows),
                  "partitions": partitions, "id": s.id, "label": s.label},
        "classes": {"path": s.classes, "names": list(prep.classes.names)},
        "views": dict(s.views),
        "method": method_of(s),
        "cluster": cluster,  # scheduler, workers at the start and at the end
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "versions": {"python": platform.python_version(), "dask": dask.__version__,
                     "distributed": distributed.__version__, "numpy": np.__version__, "pyarrow": pa.__version__},
    }
