"""What each of the job's two passes does to one partition: pure functions of a pandas partition
plus small shared state, and the merge of their per-partition results. No Dask here.

Pass 1 (:func:`statistics_partition`): read a block's embeddings, check them, base labels, moments
of every pair side's filtered set, id hashes for the duplicate check.
Pass 2 (:func:`label_partition`): base labels again, every pair decision as one product, the
bracket, margins, the final label, and the partition's rows of the disagreement report.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrays import checked_rows, embedding_matrix, hash_ids, packed_float_of, to_arrow
from .base import base_labels, chunked_matmul
from .errors import BadInputError
from .masks import PairMasks, in_form
from .metrics import confusion
from .moments import Moments, class_moments, filtered_moments, score_histograms
from .tourney import (class_scores, decide, fuse_margins, gather_decisions, gathers, masked_margin, pair_decisions,
                      pair_margins, play_bracket, play_bracket_gather, play_pairs, top_classes)

if TYPE_CHECKING:  # the rotation pass imports it when it runs
    from .rotation import Gram


@dataclass(frozen=True)
class RemoteMasks:
    """A view's masks left on the worker that joined its fitted chunks, as a reference the
    scheduler resolves (a Dask future). Only the client's copy of a spec holds one: each task of a
    pass gets the masks as an argument of its own and puts them back into its spec on the worker
    (:func:`with_masks`). So a large taxonomy's masks (722 MB at k = 1,000; 2.8 GB with
    ``dims = 0.5``) never go through the client, and a worker holds at most one copy of each."""

    joined: Any
    decision: str


def with_remote(fn: Callable[..., Any], first: Any, stub: "Spec", order: tuple[str, ...],
                masks: dict[str, PairMasks], rotation: dict[str, np.ndarray] | None, *args: Any) -> Any:
    """``fn(first, spec, *args)``, ``spec`` being ``stub`` with what stayed on the workers put back
    in: ``masks`` in the views' ``order``, and ``rotation`` unless None (pure; runs on a worker,
    by the task that needs the spec)."""
    spec = stub
    if masks:
        spec = replace(spec, masks={v: stub.masks[v] if v in stub.masks else masks[v] for v in order})
    if rotation is not None:
        spec = replace(spec, rotation=rotation)
    return fn(first, spec, *args)


@dataclass(frozen=True)
class Spec:
    """Shared, small state of both passes (broadcast once to the workers)."""

    id_col: str
    label_col: str
    views: tuple[tuple[str, str], ...]
    names: tuple[str, ...]
    classes: dict[str, np.ndarray]  # view -> (k, d) normalised prompts
    cos_min: float
    diff_min: float
    per_pair: bool
    seed: int = 0
    mode: str = "bracket"
    top_t: int = 16
    # filled for pass 2; on the client a view's may still be on the workers (RemoteMasks)
    masks: dict[str, "PairMasks | RemoteMasks"] = field(default_factory=dict)
    check_ids: bool = False  # pass 2 carries id hashes when no pass 1 checked them (apply)
    thresholds: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # per view,
    # per class (cos_min, diff_min) from the quantile filters; empty: the scalars above
    final: str = "fused"  # final label: "fused" (the mode played on the views' fused margins) | "confident-view"
    fuse: str = "llr"  # how views' pair margins fuse: "llr" (weighted by each pair's separation Δ) | "mean"
    fit_on: str = "view"  # pass 1's sets: "fused" | "view" (base labels) | "annotation" (where present)
    base_keep: str = "cosine"  # fit_on = fused: the base confidence kept (:func:`fused_base`)
    keep_margin: float = 0.0  # fused / refine: statistics keep items whose margin is at least this
    round: str = ""  # a refine round's name: its passes share one tourney per cached block
    rotation: dict[str, np.ndarray] = field(default_factory=dict)  # view -> (d, r): items are read
    # as x·R (rotate = pca; r = d unless rotate_dims); ``classes`` then holds the rotated prompts
    # and ``base_classes`` the prompts as given: base labels are cosines of the rows as read
    base_classes: dict[str, np.ndarray] = field(default_factory=dict)
    # the client's copy only: a future of ``rotation`` already on the workers (64 MB a view at
    # d = 4,096), which the passes fetch there instead of carrying it in every pass's graph
    rotation_ref: Any = field(default=None, compare=False, repr=False)

    @property
    def k(self) -> int:
        return len(self.names)

    @property
    def top_t_active(self) -> bool:
        """The top-t bracket over fewer than all classes: only pairs among each item's best t play."""
        return self.mode == "top-t" and self.top_t < self.k

    def gathers(self, view: str) -> bool:
        """The view's matches are gathered from sparse weights, not one product (:func:`gathers`)."""
        return gathers(self.k, self.classes[view].shape[1], int(self.masks[view].dims.shape[1]),
                       self.top_t if self.mode == "top-t" else None)


def played_form(spec: Spec) -> Spec:
    """``spec`` with every view's masks in the form its tourney plays (:meth:`Spec.gathers`), made
    once here rather than in every partition (a loaded model holds whichever form fits memory)."""
    return replace(spec, masks={v: in_form(m, spec.classes[v].shape[1], dense=not spec.gathers(v))
                                for v, m in spec.masks.items()})


@dataclass
class Block:
    """One partition as NumPy: ids (Arrow), id hashes, views, annotation indices.

    ``views`` hold the rows as read (float32, often a zero-copy view of the Arrow buffer; a row of
    extreme magnitude multiplied by a power of two, see :func:`~pairwise_dask.arrays.checked_rows`)
    and ``scale`` their checked inverse norms: every use either scales its result (cosines), applies
    the scale while quantising (moments) or does not need it (pair decisions and margins).

    When the job keeps blocks in worker memory between passes (``cache``), each view's base labels
    are computed once and remembered in ``bases`` (a pure function of the block and the prompts,
    which no pass changes).
    """

    ids: pa.Array
    id_hash: np.ndarray
    views: dict[str, np.ndarray]
    annotation: pa.Array | None
    annotation_idx: np.ndarray | None  # int64, -1 where the annotation is null
    scale: dict[str, np.ndarray] = field(default_factory=dict)
    rotated: bool = False  # views read as x·R (rotate = pca)
    bases: dict[str, Any] = field(default_factory=dict, repr=False)
    players: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # view -> top-t classes
    #: a cached block's last refine round: (spec.round, final labels, final margins), so that the
    #: round's two passes (margin histogram, then statistics) play the tourney once (past the
    #: keep sample the histogram pass plays only the sampled rows, the statistics pass every row)
    round: tuple | None = field(default=None, repr=False)

    def __sizeof__(self) -> int:
        # what Dask's memory accounting sees (its sizeof falls back to sys.getsizeof)
        arrays = [self.id_hash, self.annotation_idx, *self.views.values(), *self.scale.values(),
                  *(a for b in self.bases.values() for a in b), *self.players.values(), *(self.round or ())[1:]]
        return (sum(a.nbytes for a in arrays if a is not None) + self.ids.nbytes
                + (self.annotation.nbytes if self.annotation is not None else 0) + 256)


def block_of(part: Any, spec: Spec, *, rows: bool = True) -> Block:
    """A partition as a :class:`Block`: read and checked now, or already (a cached block).

    ``rows=False``: the pass reads only the base labels, which come from the rows as read, so a
    partition read from storage skips the rotation (a streamed catalog's costliest step).
    """
    if not isinstance(part, Block):
        return read_block(part, spec, rotate=rows)
    if part.rotated != bool(spec.rotation):  # a cached block decoded for another basis: a bug
        raise ValueError("a cached block's basis differs from the pass's (rotate)")
    return part


def final_of(b: Block, spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """The block's final labels and margins under ``spec.masks`` (played once per refine round)."""
    if spec.round and b.round is not None and b.round[0] == spec.round:
        return b.round[1], b.round[2]
    played = play_block(b, spec)
    if spec.round:
        b.round = (spec.round, played.final, played.final_margin)
    return played.final, played.final_margin


def base_of(b: Block, spec: Spec, view: str) -> Any:
    """The view's base labels of a block (computed once per block). A rotated block got them from
    its rows as read, before the rotation (:func:`_with_bases`)."""
    if view not in b.bases:
        if b.rotated:  # never: read_block and rotate_block fill them in
            raise ValueError("a rotated block without its base labels")
        b.bases[view] = base_labels(b.views[view], spec.classes[view], b.scale[view])
    return b.bases[view]


def players_of(b: Block, spec: Spec, view: str) -> np.ndarray:
    """The view's top-t players of a block, its ``t`` best classes by base cosine (computed once per
    block, like its base labels: the statistics pass and the tourney both need them)."""
    if view not in b.players:
        b.players[view] = top_classes(base_of(b, spec, view).scores, spec.top_t).astype(np.int32)  # half the bytes
    return b.players[view]


def _raw_bases(views: dict[str, np.ndarray], scale: dict[str, np.ndarray], spec: Spec) -> dict[str, Any]:
    """Base labels of the rows as read (before any rotation): the full-vector cosines of METHOD.md
    step 1, identical with or without ``rotate`` and whatever ``rotate_dims`` keeps."""
    return {v: base_labels(x, spec.base_classes[v], scale[v]) for v, x in views.items() if v in spec.rotation}


def release_arrow_memory() -> None:
    """Return the Arrow pool's freed pages to the OS. Raw blocks live in Arrow memory (zero-copy);
    once rotated copies replace them, the pool (mimalloc, jemalloc) would otherwise keep their pages
    and a worker's RSS would hold both copies of its items."""
    pa.default_memory_pool().release_unused()


def rotate_block(b: Block, spec: Spec) -> Block:
    """A cached raw block turned into ``spec``'s basis, bit for bit what :func:`read_block` makes
    of the same rows (the same fixed-row-block product); nothing computed on the raw rows is kept."""
    if b.rotated:
        raise ValueError("the block is already rotated")
    release_arrow_memory()  # the raw blocks rotated before this one are gone: hand back their pages
    bases = _raw_bases(b.views, b.scale, spec)
    views = {v: chunked_matmul(x, spec.rotation[v]) if v in spec.rotation else x for v, x in b.views.items()}
    return Block(b.ids, b.id_hash, views, b.annotation, b.annotation_idx, b.scale, bool(spec.rotation), bases)


def read_block(df: Any, spec: Spec, *, rotate: bool = True) -> Block:
    """Check and convert a partition; every error names the column and the first bad row id.

    ``rotate=False`` leaves the views as read (the block then serves its base labels only)."""
    ids = to_arrow(df[spec.id_col])
    if ids.null_count:
        i = int(np.flatnonzero(~np.asarray(ids.is_valid()))[0])
        prev = ids[i - 1].as_py() if i else None
        # a null has no id to name: point at its neighbour instead (row stays None: "a null")
        after = f" (the row after id {prev!r})" if prev is not None else " (the partition's first row)"
        raise BadInputError("holds a null id" + after, column=spec.id_col,
                            hint="Every item needs a unique, non-null id")
    id_np = ids.to_numpy(zero_copy_only=False)
    views, scale = {}, {}
    for v, col in spec.views:
        d = spec.rotation[v].shape[0] if v in spec.rotation else spec.classes[v].shape[1]
        marked = packed_float_of(df.schema.field(col)) if isinstance(df, pa.Table) else None
        x = embedding_matrix(df[col], name=col, ids=id_np, dim=d, packed_float=marked)
        # rows of extreme magnitude come back rescaled by a power of two (exact), so that the
        # float32 products downstream, which assume scale-invariance, neither overflow nor underflow
        views[v], scale[v] = checked_rows(x, name=col, ids=id_np)
    bases = _raw_bases(views, scale, spec)
    for v in spec.rotation if rotate else ():  # fixed row blocks: a row's rotated bits do not depend
        views[v] = chunked_matmul(views[v], spec.rotation[v])  # on its partition; scale stays as read
    annotation = idx = None
    if spec.label_col:
        annotation = to_arrow(df[spec.label_col]).cast(pa.string())
        pos = pc.index_in(annotation, value_set=pa.array(spec.names, pa.string()))
        unknown = pc.and_(pc.is_null(pos), pc.is_valid(annotation))
        if pc.any(unknown).as_py():
            i = int(np.flatnonzero(np.asarray(unknown))[0])
            # every distinct unknown value of the partition, not one per run: fix them all at once
            bad = pc.unique(annotation.filter(unknown)).to_pylist()
            more = (f"; {len(bad)} values of this partition are not classes: "
                    + ", ".join(repr(b) for b in bad[:8]) + (", …" if len(bad) > 8 else "")) if len(bad) > 1 else ""
            raise BadInputError(f"holds the annotation {annotation[i].as_py()!r}, which is not a class{more}"
                                + _like_a_class(bad, spec.names),
                                column=spec.label_col, row=id_np[i],
                                hint="Add the class to the classes file or map the annotation to one")
        idx = pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return Block(ids, hash_ids(ids), views, annotation, idx, scale, bool(spec.rotation) and rotate, bases)


def _like_a_class(values: list[str], names: tuple[str, ...]) -> str:
    """``" ('Games ' looks like the class 'games': …)"`` for the values that are a class name once
    spaces are stripped and case folded (the commonest reason an annotation is not a class)."""
    folded = {n.strip().casefold(): n for n in names}
    like = [(v, folded[v.strip().casefold()]) for v in values if v.strip().casefold() in folded]
    if not like:
        return ""
    return " (" + ", ".join(f"{v!r} looks like the class {n!r}" for v, n in like[:3]) + ": case or spaces differ)"


# --- pass 1 --------------------------------------------------------------------------------

@dataclass
class Statistics:
    """Pass 1's mergeable result: rows, per-view moments, sorted id hashes, a found duplicate, and
    (top-t only) per view the sorted ids of the pairs the bracket can play (merged as a set union)."""

    rows: int
    moments: dict[str, Moments]
    id_hashes: np.ndarray
    duplicate_hash: int | None = None
    pairs: dict[str, np.ndarray] = field(default_factory=dict)

    def __add__(self, other: "Statistics") -> "Statistics":
        hashes = np.concatenate([self.id_hashes, other.id_hashes])
        hashes.sort(kind="stable")
        dup = self.duplicate_hash if self.duplicate_hash is not None else other.duplicate_hash
        if dup is None:
            dup = _first_duplicate(hashes)
        pairs = {v: union_sorted(self.pairs[v], other.pairs[v]) for v in self.pairs}
        return Statistics(self.rows + other.rows,
                          {v: self.moments[v] + other.moments[v] for v in self.moments}, hashes, dup, pairs)


def union_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.union1d`` of two sorted unique arrays, by merging their runs: ``union1d`` hashes and
    sorts from scratch (0.2 s for two sets of ~450,000 pair ids; this takes a few milliseconds)."""
    c = np.concatenate([a, b])
    c.sort(kind="stable")  # timsort: two sorted runs merge in linear time
    return c[np.r_[True, c[1:] != c[:-1]]] if len(c) else c


def _first_duplicate(sorted_hashes: np.ndarray) -> int | None:
    same = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
    return int(sorted_hashes[same[0]]) if len(same) else None


def statistics_partition(df: Any, spec: Spec) -> Statistics:
    """Pass 1 on one partition.

    Without masks in ``spec``: the sets of METHOD.md §2 from each view's base labels
    (``fit_on = "view"``); from the views' fused base label, kept where its fused base margin is at
    least ``spec.keep_margin`` (``"fused"``); or from the annotation where there is one
    (``"annotation"``). With masks (a refine
    round): the sets are the previous round's final labels, kept where its final margin is at
    least ``spec.keep_margin``; every view uses the same (fused) labels, so the views teach
    each other.
    """
    b = block_of(df, spec)
    mom, pairs = {}, {}
    if spec.masks:
        final, final_margin = final_of(b, spec)
        keep = final_margin >= spec.keep_margin
        for v, x in b.views.items():
            mom[v] = class_moments(x, final, keep, spec.k, scale=b.scale[v])
            if spec.top_t_active:
                pairs[v] = play_pairs(players_of(b, spec, v), spec.k)
    else:
        bases = {v: base_of(b, spec, v) for v in b.views}
        keep = None
        if spec.fit_on == "fused":
            fused, margin = fused_base(bases, spec.base_keep)
            keep = margin >= spec.keep_margin
        for v, x in b.views.items():
            labels = fused if spec.fit_on == "fused" else bases[v].label
            if spec.fit_on == "annotation" and b.annotation_idx is not None:
                labels = np.where(b.annotation_idx >= 0, b.annotation_idx, labels).astype(np.int32)
            cos_min, diff_min = spec.thresholds.get(v, (spec.cos_min, spec.diff_min))
            mom[v] = filtered_moments(x, bases[v].scores, labels, cos_min=cos_min, diff_min=diff_min,
                                      per_pair=spec.per_pair, keep=keep, scale=b.scale[v])
            if spec.top_t_active:
                pairs[v] = play_pairs(players_of(b, spec, v), spec.k)
    hashes = np.sort(b.id_hash)
    dup = _first_duplicate(hashes)
    if dup is not None:  # within one partition the offending id is at hand
        raise BadInputError(DUPLICATE, column=spec.id_col,
                            row=b.ids[int(np.flatnonzero(b.id_hash == np.uint64(dup))[0])].as_py(),
                            hint="Ids must be unique; drop or rename the duplicates")
    return Statistics(len(b.ids), mom, hashes, None, pairs)


@dataclass
class PairSet:
    """Per view, the sorted ids of the pairs the top-t bracket can play (merged as a set union)."""

    pairs: dict[str, np.ndarray]

    def __add__(self, o: "PairSet") -> "PairSet":
        return PairSet({v: union_sorted(self.pairs[v], o.pairs[v]) for v in self.pairs})


def pairs_partition(df: Any, spec: Spec) -> PairSet:
    """The pairs a partition's items can play in the top-t bracket (their base classes only: no
    rotation, no moments). ``apply`` needs them to give a saved model the masks it lacks."""
    b = block_of(df, spec, rows=False)
    return PairSet({v: play_pairs(players_of(b, spec, v), spec.k) for v in b.views})


@dataclass
class Histograms:
    """Pass 0 (only for quantile filters): per view, per class histograms of top-1 cosine and margin."""

    counts: dict[str, np.ndarray]

    def __add__(self, o: "Histograms") -> "Histograms":
        return Histograms({v: self.counts[v] + o.counts[v] for v in self.counts})


def histogram_partition(df: Any, spec: Spec) -> Histograms:
    """Pass 0 on one partition: the score histograms the quantile filters read their thresholds from."""
    b = block_of(df, spec, rows=False)
    out = {}
    for v in b.views:
        base = base_of(b, spec, v)
        out[v] = score_histograms(base.top1, base.margin, base.label, spec.k)
    return Histograms(out)


def gram_partition(df: Any, spec: Spec, below: int | None = None) -> "Gram":
    """The rotation pass on one partition: per view the exact Gram of its items (label-free), or of
    those whose id hash is below ``below`` (:func:`rotation.sample_below`)."""
    from .rotation import Gram, block_gram

    b = block_of(df, spec)
    rows = slice(None) if below is None else np.flatnonzero(b.id_hash < np.uint64(below))
    parts = {v: block_gram(x[rows] * b.scale[v][rows, None]) for v, x in b.views.items()}
    return Gram({v: p[0] for v, p in parts.items()}, {v: p[1] for v, p in parts.items()},
                {v: p[2] for v, p in parts.items()})


def fused_base(bases: dict[str, Any], by: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """The views' fused base label (argmax of the mean cosine) and its confidence, in [0, 2] (the
    keep threshold's histogram bins): ``by = "margin"`` its lead over the runner-up (top-1 minus
    top-2); ``"cosine"`` 1 + its own mean cosine. A class that wins another section's items at
    round 0 wins them by a clear lead while they lie far from its prompt: by their own cosine they
    are kept after its prototypical members (``base_keep``; benchmarks/ACCURACY-notes.md)."""
    s = sum(b.scores for b in bases.values()) / len(bases)
    label = np.argmax(s, axis=1).astype(np.int32)
    if s.shape[1] < 2 or not len(s):
        return label, np.zeros(len(s), np.float32)
    part = np.partition(s, s.shape[1] - 2, axis=1)
    if by == "cosine":
        return label, (1.0 + part[:, -1]).astype(np.float32)
    return label, (part[:, -1] - part[:, -2]).astype(np.float32)


#: Bins of the final-margin histogram a refine round's keep threshold is read from: margins are
#: cosine margins in [0, 2]; 4,096 bins resolve 0.0005, counts are integers (exact under merge).
MARGIN_BINS = np.linspace(0.0, 2.0, 4097)
#: The same for discriminant margins (standard-deviation units): [0, 32], resolution 0.008.
DISC_MARGIN_BINS = np.linspace(0.0, 32.0, 4097)


def margin_bins(spec: "Spec") -> np.ndarray:
    """The bins of :func:`margin_histogram_partition` for this spec (by its masks' decision)."""
    disc = any(m.decision == "discriminant" for m in spec.masks.values())
    return DISC_MARGIN_BINS if disc else MARGIN_BINS


def rows_of(b: Block, rows: np.ndarray) -> Block:
    """The block's ``rows`` (indices) as a block of their own, base labels included."""
    take = pa.array(rows, pa.int64())
    return Block(b.ids.take(take), b.id_hash[rows], {v: x[rows] for v, x in b.views.items()},
                 None if b.annotation is None else b.annotation.take(take),
                 None if b.annotation_idx is None else b.annotation_idx[rows],
                 {v: sc[rows] for v, sc in b.scale.items()}, b.rotated,
                 {v: type(bl)(*(a[rows] for a in bl)) for v, bl in b.bases.items()})


def margin_histogram_partition(df: Any, spec: Spec, below: int | None = None) -> np.ndarray:
    """Counts of a partition's margins in :data:`MARGIN_BINS`, for a keep quantile: the final
    margins of the tourney with ``spec.masks`` (refine), or without masks the fused base margins
    (``fit_on = "fused"``).

    ``below`` (the keep sample, :func:`pairwise_dask.rotation.sample_below`): only the items whose
    id hash is below it count, and only they are rotated and played. Every row's margin is a
    function of that row alone, so the counts are those of the same rows in a whole-block play.
    """
    if below is None:
        b = block_of(df, spec, rows=bool(spec.masks))
    else:
        b = block_of(df, spec, rows=False)  # streamed: read as is; only the sample is rotated, below
        b = rows_of(b, np.flatnonzero(b.id_hash < np.uint64(below)))
        if spec.masks and spec.rotation and not b.rotated:
            b = rotate_block(b, spec)
    if not len(b.ids):
        return np.zeros(len(margin_bins(spec)) - 1, np.int64)
    if spec.masks:
        margin = final_of(b, spec)[1]
    else:
        margin = fused_base({v: base_of(b, spec, v) for v in b.views}, spec.base_keep)[1]
    bins = margin_bins(spec)
    return np.histogram(np.clip(margin, 0.0, bins[-1]), bins=bins)[0].astype(np.int64)


def margin_quantile(counts: np.ndarray, q: float, bins: np.ndarray = MARGIN_BINS) -> float:
    """The lower bin edge at which at least a share ``1 − q`` of the items lie at or above it
    (``bins``: the histogram's, :func:`margin_bins`)."""
    total = int(counts.sum())
    if total == 0 or q <= 0:
        return 0.0
    above = np.cumsum(counts[::-1])[::-1]  # items in bin i or higher
    ok = np.flatnonzero(above >= (1.0 - q) * total)
    return float(bins[ok[-1]]) if len(ok) else 0.0


def merge(parts: list[Any]) -> Any:
    """Merge any number of mergeable results (a node of the tree reduction)."""
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def ids_with_hash(df: Any, spec: Spec, h: int) -> list:
    """Ids of a partition whose hash is ``h`` (to name a duplicate found across partitions)."""
    if isinstance(df, Block):
        ids, hashes = df.ids, df.id_hash
    else:
        ids = to_arrow(df[spec.id_col])
        hashes = hash_ids(ids)
    hit = np.flatnonzero(hashes == np.uint64(h))
    return [ids[int(i)].as_py() for i in hit]


def partition_error(df: Any, spec: Spec) -> BadInputError | None:
    """:func:`read_block`'s refusal of a partition, or ``None``: the rescan that names the catalog's
    first bad partition, whichever partition's task happened to fail first in the pass."""
    try:
        read_block(df, spec, rotate=False)
    except BadInputError as e:
        return e
    return None


# --- pass 2 --------------------------------------------------------------------------------

@dataclass
class Tally:
    """Pass 2's mergeable counts: label distributions and the confusions behind every metric."""

    rows: int
    base_counts: dict[str, np.ndarray]
    label_counts: dict[str, np.ndarray]
    changed: dict[str, int]
    conf: dict[str, np.ndarray]  # "base:a~b", "tourney:a~b", "annotation~base:a", ... -> (k, k)
    disagreements: pa.Table
    id_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    duplicate_hash: int | None = None

    def __add__(self, o: "Tally") -> "Tally":
        add = lambda x, y: {k: x[k] + y[k] for k in x}  # noqa: E731
        hashes = np.sort(np.concatenate([self.id_hashes, o.id_hashes]), kind="stable")
        dup = self.duplicate_hash if self.duplicate_hash is not None else o.duplicate_hash
        return Tally(self.rows + o.rows, add(self.base_counts, o.base_counts),
                     add(self.label_counts, o.label_counts), add(self.changed, o.changed),
                     add(self.conf, o.conf), pa.concat_tables([self.disagreements, o.disagreements]),
                     hashes, dup if dup is not None else _first_duplicate(hashes))


def _names(spec: Spec, idx: np.ndarray) -> pa.Array:
    return pa.array(spec.names, pa.string()).take(pa.array(idx, pa.int32()))


@dataclass
class Played:
    """The tourney's result for one block: per view and fused (see :func:`play_block`)."""

    base: dict[str, Any]              # view -> BaseLabels
    label: dict[str, np.ndarray]      # view -> tourney label (n,)
    margin: dict[str, np.ndarray]     # view -> |margin| of the deciding match (n,)
    margin_of: dict[str, Any]         # view -> f(rows, pair rows): masked cosine margins
    fused_of: Callable[[np.ndarray], np.ndarray] | None  # rows -> (rows, P) the views' fused pair
    #                                   margins (None: not fusable); computed only for the rows asked for
    final: np.ndarray                 # (n,) final label
    final_margin: np.ndarray          # (n,) |margin| that decided the final label
    agree: np.ndarray                 # (n,) every view's tourney label equal


def play_block(b: Block, spec: Spec) -> Played:
    """Every view's tourney and the final label of one block (pure; used by pass 2 and refine).

    Dense masks: every pair's decision ``X Wᵀ`` per view. Round-robin, score and a fused final need
    every pair's margin for every row (for cosine decisions one more product, the masked norms);
    a bracket plays on the decisions' signs and takes one masked norm per row, its final match's,
    and the views' fused margins are then computed only for the rows asked for (the review list).
    With ``final = "fused"`` the mode is played again on the views' fused margins (``spec.fuse``). Sparse masks
    (many classes, top-t) gather each match's decision instead and, like views fitted on
    different pair sets, cannot be fused: the final label is then the most confident view's.
    """
    n = len(b.ids)
    views = list(b.views)
    first = spec.masks[views[0]]
    # top-t fits each view on the pairs its items can play: the views' pair sets differ, so no fusion
    # (decided by the settings, not by the data, so the dense and the gathering paths agree)
    fusable = (not spec.top_t_active and all(np.array_equal(spec.masks[v].pairs, first.pairs) for v in views))
    fuse_final = spec.final == "fused" and fusable and len(views) > 1
    # every pair's margin is needed for every row by round-robin, score and a fused final; a bracket
    # only needs its decisions' signs, then one masked norm per row for its final match's margin
    every_margin = fuse_final or spec.mode in ("round-robin", "score")
    base, label, margin, margin_of, decisions, pm = {}, {}, {}, {}, {}, {}
    for v, x in b.views.items():
        masks = spec.masks[v]
        pidx = masks.pair_index()
        base[v] = base_of(b, spec, v)
        if not spec.gathers(v):  # the form is the settings' (so a model's apply rounds as its run)
            masks = in_form(masks, x.shape[1], dense=True)  # (a no-op unless loaded sparse)
            d = pair_decisions(x, masks, b.scale[v])
            if every_margin or masks.decision == "discriminant":  # a discriminant's decisions are margins
                pm[v] = m = pair_margins(x, masks, d, out=d)
                label[v], margin[v] = decide(m, masks.pairs, pidx, b.id_hash, mode=spec.mode, seed=spec.seed,
                                             players=players_of(b, spec, v) if spec.top_t_active else None)
                margin_of[v] = lambda r, p, m=m: m[r, p]
                continue
            decisions[v] = d
            res = play_bracket(d, pidx, b.id_hash, seed=spec.seed,
                               players=players_of(b, spec, v) if spec.top_t_active else None)
            margin_of[v] = lambda r, p, x=x, masks=masks, d=d: masked_margin(x[r], masks, p, d[r, p])
        else:  # sparse: gather each match's decision, no X Wᵀ over all pairs
            res = play_bracket_gather(x, masks, pidx, b.id_hash, seed=spec.seed,
                                      players=players_of(b, spec, v), scale=b.scale[v])
            margin_of[v] = lambda r, p, x=x, masks=masks, sc=b.scale[v]: masked_margin(
                x[r], masks, p, gather_decisions(x[r], masks, p[:, None], sc[r])[:, 0])
        label[v] = res.label  # a bracket's margin: its final match's, one masked norm per row
        margin[v] = np.abs(masked_margin(x, masks, res.final_pair, res.final_raw)) if n else np.zeros(0, np.float32)
    fused_of: Callable[[np.ndarray], np.ndarray] | None = None
    if fusable:
        # llr needs every view's Δ: only discriminant masks have one (a cosine round fuses by the mean)
        seps = [spec.masks[v].separation for v in views]
        seps = seps if spec.fuse == "llr" and all(x is not None for x in seps) else None

        def fused_rows(rows: np.ndarray) -> np.ndarray:
            return fuse_margins([pm[v][rows] if v in pm else
                                 pair_margins(b.views[v][rows], spec.masks[v], decisions[v][rows])
                                 for v in views], seps)
        fused_of = fused_rows
    stack = np.stack([label[v] for v in views])        # (V, n)
    agree = (stack == stack[0]).all(axis=0)
    if fuse_final:  # (never top-t: its views are fitted on different pair sets, see fusable)
        final, final_margin = decide(fused_of(slice(None)), first.pairs, first.pair_index(), b.id_hash,
                                     mode=spec.mode, seed=spec.seed, players=None)
    else:  # the most confident view (also: fusion of one view is that view)
        margins = np.stack([margin[v] for v in views])
        best = np.argmax(margins, axis=0)
        final, final_margin = stack[best, np.arange(n)], margins[best, np.arange(n)]
    return Played(base, label, margin, margin_of, fused_of, final, final_margin, agree)


#: Weight of the proposed label's own score in the review priority (see :func:`review_priority`).
PROPOSED_WEIGHT = 0.5


def review_priority(fused: np.ndarray, pairs: np.ndarray, k: int, proposed: np.ndarray,
                    current: np.ndarray) -> np.ndarray:
    """How strongly the evidence contradicts ``current`` in favour of ``proposed`` (rows of
    ``fused``): ``−score(current) + ½·score(proposed)``, with :func:`class_scores` (a class's mean
    margin against the other ``k − 1``). 0 where ``proposed`` equals ``current``.

    Every pair decision about the current label counts, not only its match against the proposed
    one: an annotation beaten by most classes is a surer error than one that only just lost its
    final. The proposed label's score counts half: it is the tourney's winner, so its score is
    high for most rows and adds noise as well as evidence. Measured with 10% flipped annotations
    (precision@N; NumPy experiment, the job's statistics; weights 0, ¼, ½, 1 tried):
    Debian 0.635 / 0.665 / 0.649 / 0.571, synthetic 0.940 / 0.966 / 0.978 / 0.983 — ½ is the
    weight that is good on both (chosen on these two datasets; see ``benchmarks/ACCURACY.md``).
    """
    sc = class_scores(fused, pairs, k)
    r = np.arange(len(current))
    pr = PROPOSED_WEIGHT * sc[r, proposed] - sc[r, current]
    return np.where(proposed != current, pr, 0.0).astype(np.float64)


#: What a duplicated id's error says (the job adds where each copy is).
DUPLICATE = "appears more than once"


def review_order(dis: pa.Table) -> pa.Array:
    """Row order of a review list: every row whose annotation is contradicted (``reason``
    ``annotation`` or ``annotation+views``) first, each tier by ``priority`` descending, then by
    ``id`` ascending. The list is for reviewing the annotation: a row where only the views split,
    the annotation backed by the final label, never outranks one where it is contradicted.

    Equal priorities are common (exact duplicate embeddings): the id breaks those ties (a string
    by its UTF-8 bytes, an integer by value), so the order is a function of the rows alone, not of
    the order the partitions' rows were merged in (a stable sort kept that order).
    """
    cols: dict[str, pa.Array] = {}
    keys = []
    if "reason" in dis.column_names:
        cols["contradicted"] = pc.match_substring(dis.column("reason"), "annotation")
        keys.append(("contradicted", "descending"))
    cols["priority"] = dis.column("priority")
    keys.append(("priority", "descending"))
    if "id" in dis.column_names:
        cols["id"] = dis.column("id")
        keys.append(("id", "ascending"))
    return pc.sort_indices(pa.table(cols), keys)


def label_partition(df: Any, spec: Spec) -> tuple[pa.Table, Tally]:
    """Pass 2 on one partition: the labels table (output contract) and its tally."""
    b = block_of(df, spec)
    n, k = len(b.ids), spec.k
    played = play_block(b, spec)
    cols: dict[str, pa.Array] = {"id": b.ids}
    for v in b.views:
        cols[f"base_{v}"] = _names(spec, played.base[v].label)
        cols[f"label_{v}"] = _names(spec, played.label[v])
        cols[f"margin_{v}"] = pa.array(played.margin[v].astype(np.float32))
    views = list(b.views)
    base_l = {v: played.base[v].label for v in views}
    tour_l = played.label
    stack = np.stack([tour_l[v] for v in views])
    final, agree = played.final, played.agree
    cols["final_label"] = _names(spec, final)
    cols["agree"] = pa.array(agree)
    if b.annotation is not None:
        cols["annotation"] = b.annotation
    table = pa.table(cols)

    # the disagreement report's rows of this partition
    ann = b.annotation_idx
    ann_differs = (ann >= 0) & (ann != final) if ann is not None else np.zeros(n, bool)
    flagged = ann_differs | ~agree
    dissent = np.where(stack[0] != final, stack[0], stack[-1])  # a view's label ≠ final (if any)
    # The current label is the annotation where there is one, else the dissenting view's label; the
    # proposed one is the final label, or (annotation = final, views split) the dissenting view's.
    # Priority = evidence for proposed over current (the annotation where there is one). The review
    # list puts every contradicted annotation above every merely contested one (review_order): the
    # priority alone does not, as a contradicted annotation with a good score of its own can come
    # out negative (Debian, 10% flipped: 40% of them), below a contested row's.
    has_ann = (ann >= 0) if ann is not None else np.zeros(n, bool)
    current = np.where(has_ann, ann if ann is not None else 0, dissent)
    proposed = np.where(has_ann & ~ann_differs, dissent, final)
    rows = np.flatnonzero(flagged)
    if played.fused_of is not None:
        pairs = spec.masks[views[0]].pairs
        priority = review_priority(played.fused_of(rows), pairs, k, proposed[rows], current[rows])
    else:  # no common margin matrix (sparse or per-view top-t masks): mean pair margin over views
        priority = np.zeros(len(rows))
        for v in views:
            priority += _pair_margin(played.margin_of[v], spec.masks[v], played.base[v].scores, rows,
                                     proposed[rows], current[rows])
        priority /= len(views)
    reason = np.where(ann_differs[rows] & ~agree[rows], "annotation+views",
                      np.where(ann_differs[rows], "annotation", "views"))
    dis = table.take(pa.array(rows, pa.int64())).append_column("reason", pa.array(reason.astype(str), pa.string()))
    dis = dis.append_column("priority", pa.array(priority, pa.float64()))

    conf = {}
    for v1, v2 in combinations(views, 2):
        # v1's labels scored against v2's (the reference's orientation: image vs text truth)
        conf[f"base:{v1}~{v2}"] = confusion(base_l[v2], base_l[v1], k)
        conf[f"tourney:{v1}~{v2}"] = confusion(tour_l[v2], tour_l[v1], k)
    if ann is not None:
        has = ann >= 0
        for v in views:
            conf[f"annotation~base:{v}"] = confusion(ann[has], base_l[v][has], k)
            conf[f"annotation~tourney:{v}"] = confusion(ann[has], tour_l[v][has], k)
        conf["annotation~final"] = confusion(ann[has], final[has], k)
    tally = Tally(n, {v: np.bincount(base_l[v], minlength=k) for v in views},
                  {v: np.bincount(tour_l[v], minlength=k) for v in views},
                  {v: int((base_l[v] != tour_l[v]).sum()) for v in views}, conf, dis,
                  np.sort(b.id_hash) if spec.check_ids else np.zeros(0, np.uint64))
    if spec.check_ids:
        tally.duplicate_hash = _first_duplicate(tally.id_hashes)
    return table, tally


def _pair_margin(margin_of: Any, masks: PairMasks, scores: np.ndarray, rows: np.ndarray,
                 proposed: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Cosine margin of ``proposed`` over ``current`` on their pair's mask (0 where they are equal).

    ``margin_of(rows, pair_rows)`` gives the masked cosine margins. A pair without a mask (top-t fits only the pairs that
    can play; an annotation or the other view may name a class outside the item's top t) is
    scored by its full-vector cosine difference ``S_i,proposed − S_i,current`` instead.
    """
    out = np.zeros(len(rows))
    ok = proposed != current
    if not ok.any():
        return out
    r, a, c = rows[ok], proposed[ok], current[ok]
    p = masks.pair_index()[a, c]
    fitted = p >= 0
    res = scores[r, a].astype(np.float64) - scores[r, c]
    if fitted.any():
        rf, af, pf = r[fitted], a[fitted], p[fitted]
        sign = np.where(masks.pairs[pf, 0] == af, 1.0, -1.0)
        res[fitted] = sign * margin_of(rf, pf)
    out[ok] = res
    return out
