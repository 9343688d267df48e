"""The passes of a run on the Dask cluster: what each pass computes from the partitions, and how
its results are merged and shared with the workers.

Each pass is a graph of one task per partition over a shared spec (:func:`shared`,
:func:`on_spec`), merged by a tree reduction (:func:`tree_reduce`); the per-partition NumPy work
stays in :mod:`pairwise_dask.passes`, which these call. The commands that chain them are in
:mod:`pairwise_dask.job`.
"""
from __future__ import annotations

import contextlib
import threading
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple

import numpy as np

from .config import Settings
from .errors import BadInputError
from .io import ItemsInfo, write_table
from .masks import PairMasks, concat_masks, fit_masks, pairs_from_ids, resolve_dims, with_pairs
from .model import FittedModel, model_fit_options, write_masks
from .moments import Moments, quantile_thresholds
from .storage import Location
from .rotation import axes_of, rotate_classes, sample_below
from .passes import (DUPLICATE, Histograms, PairSet, RemoteMasks, pairs_partition, review_order, Spec, Statistics, Tally,
                     gram_partition, histogram_partition, ids_with_hash, label_partition, margin_bins,
                     margin_histogram_partition, margin_quantile, merge, read_block, release_arrow_memory,
                     rotate_block, statistics_partition, with_remote)
from .tourney import gathers

if TYPE_CHECKING:
    from .job import Echo, Prepared

SPLIT_EVERY = 8


def tree_reduce(tasks: list, combine: Callable[[list], Any], split_every: int = SPLIT_EVERY) -> Any:
    """Combine delayed results in a tree of fan-in ``split_every`` (order kept: deterministic)."""
    from dask import delayed

    if not tasks:
        raise ValueError("nothing to reduce")
    while len(tasks) > 1:
        tasks = [delayed(combine, pure=True)(tasks[i:i + split_every])
                 for i in range(0, len(tasks), split_every)]
    return tasks[0]


#: Seconds a finished wait gives its progress bar to draw its last state.
BAR_GRACE = 5.0


def _draw(futures: Any) -> None:
    from distributed import progress

    try:
        progress(futures)
    except Exception:  # noqa: BLE001 - a bar is a view: the waiting is the caller's
        pass


@contextlib.contextmanager
def _bar(label: str, futures: Any, show: bool) -> Iterator[None]:
    """A progress bar for ``futures`` while the block waits on them. The bar is drawn from a thread
    of its own, so that the waiting is never the bar's: a bar set up after its futures were
    released (as :class:`~pairwise_dask.watch.WorkerWatch` releases a run's) waits on the
    scheduler for ever, while the futures themselves raise."""
    if not show:
        yield
        return
    print(f"  {label}", flush=True)
    t = threading.Thread(target=_draw, args=(futures,), name="pairwise-dask-progress", daemon=True)
    t.start()
    done = False
    try:
        yield
        done = True
    finally:
        t.join(BAR_GRACE if done else 0.5)
        print(flush=True)


def _compute(client: Any, task: Any, label: str, show_progress: bool) -> Any:
    fut = client.compute(task)
    with _bar(label, fut, show_progress):
        return fut.result()


def _check_duplicates(c: Any, s: Settings, parts: list, spec_f: SpecRef, h: int | None) -> None:
    """Name the duplicated id behind a repeated hash (a true 64-bit collision is let through)."""
    if h is None:
        return
    found = c.compute([on_spec(ids_with_hash, p, spec_f, h, pure=False) for p in parts])
    ids = [i for f in found for i in f.result()]
    if len(set(ids)) < len(ids):
        from .io import duplicate_places, locate_id, parquet_files

        row = next(i for i in ids if ids.count(i) > 1)
        # both copies, by file and row: the copy in another file is the one easily missed
        places = locate_id(parquet_files(s.items, s.storage_options), s.id, row, s.storage_options)
        raise BadInputError(" ".join(filter(None, [DUPLICATE, duplicate_places(places)])),
                            file=places[0][0] if places else s.items, column=s.id, row=row,
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
    workers = len(client.scheduler_info(n_workers=-1).get("workers", {})) if client is not None else 0
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


def write_remote_masks(c: Any, spec_f: SpecRef, folder: Location) -> Any:
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
    limits = [w.get("memory_limit") or 0 for w in c.scheduler_info(n_workers=-1).get("workers", {}).values()]
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
    from distributed import wait

    with _bar(label, persisted, progress), c.as_current():  # wait() syncs through the current client
        wait(persisted)


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
