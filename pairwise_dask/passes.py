"""What each of the job's two passes does to one partition: pure functions of a pandas partition
plus small shared state, and the merge of their per-partition results. No Dask here.

Pass 1 (:func:`statistics_partition`): read a block's embeddings, check them, base labels, moments
of every pair side's filtered set, id hashes for the duplicate check.
Pass 2 (:func:`label_partition`): base labels again, every pair decision as one product, the
bracket, margins, the final label, and the partition's rows of the disagreement report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrays import embedding_matrix, hash_ids, normalize_rows, to_arrow
from .base import base_labels
from .errors import BadInputError
from .masks import PairMasks
from .metrics import confusion
from .moments import Moments, filtered_moments, score_histograms
from .tourney import (gather_decisions, masked_margin, pair_decisions, play_bracket, play_bracket_gather,
                      play_pairs, play_round_robin, top_classes)


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
    masks: dict[str, PairMasks] = field(default_factory=dict)  # filled for pass 2
    check_ids: bool = False  # pass 2 carries id hashes when no pass 1 checked them (apply)
    thresholds: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # per view,
    # per class (cos_min, diff_min) from the quantile filters; empty: the scalars above

    @property
    def k(self) -> int:
        return len(self.names)

    @property
    def top_t_active(self) -> bool:
        """The top-t bracket over fewer than all classes: only pairs among each item's best t play."""
        return self.mode == "top-t" and self.top_t < self.k


@dataclass
class Block:
    """One partition as NumPy: ids (Arrow), id hashes, normalised views, annotation indices."""

    ids: pa.Array
    id_hash: np.ndarray
    views: dict[str, np.ndarray]
    annotation: pa.Array | None
    annotation_idx: np.ndarray | None  # int64, -1 where the annotation is null


def read_block(df: Any, spec: Spec) -> Block:
    """Check and convert a partition; every error names the column and the first bad row id."""
    ids = to_arrow(df[spec.id_col])
    if ids.null_count:
        i = int(np.flatnonzero(~np.asarray(ids.is_valid()))[0])
        prev = ids[i - 1].as_py() if i else None
        # a null has no id to name: point at its neighbour instead (row stays None: "a null")
        after = f" (the row after id {prev!r})" if prev is not None else " (the partition's first row)"
        raise BadInputError("holds a null id" + after, column=spec.id_col,
                            hint="Every item needs a unique, non-null id")
    id_np = ids.to_numpy(zero_copy_only=False)
    views = {}
    for v, col in spec.views:
        c = spec.classes[v]
        x = embedding_matrix(df[col], name=col, ids=id_np, dim=c.shape[1])
        views[v] = normalize_rows(x, name=col, ids=id_np)
    annotation = idx = None
    if spec.label_col:
        annotation = to_arrow(df[spec.label_col]).cast(pa.string())
        pos = pc.index_in(annotation, value_set=pa.array(spec.names, pa.string()))
        unknown = pc.and_(pc.is_null(pos), pc.is_valid(annotation))
        if pc.any(unknown).as_py():
            i = int(np.flatnonzero(np.asarray(unknown))[0])
            raise BadInputError(f"holds the annotation {annotation[i].as_py()!r}, which is not a class",
                                column=spec.label_col, row=id_np[i],
                                hint="Add the class to the classes file or map the annotation to one")
        idx = pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return Block(ids, hash_ids(ids), views, annotation, idx)


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
        pairs = {v: np.union1d(self.pairs[v], other.pairs[v]) for v in self.pairs}
        return Statistics(self.rows + other.rows,
                          {v: self.moments[v] + other.moments[v] for v in self.moments}, hashes, dup, pairs)


def _first_duplicate(sorted_hashes: np.ndarray) -> int | None:
    same = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
    return int(sorted_hashes[same[0]]) if len(same) else None


def statistics_partition(df: Any, spec: Spec) -> Statistics:
    """Pass 1 on one partition."""
    b = read_block(df, spec)
    mom, pairs = {}, {}
    for v, x in b.views.items():
        base = base_labels(x, spec.classes[v])
        cos_min, diff_min = spec.thresholds.get(v, (spec.cos_min, spec.diff_min))
        mom[v] = filtered_moments(x, base.scores, base.label, cos_min=cos_min,
                                  diff_min=diff_min, per_pair=spec.per_pair)
        if spec.top_t_active:
            pairs[v] = play_pairs(top_classes(base.scores, spec.top_t), spec.k)
    hashes = np.sort(b.id_hash)
    dup = _first_duplicate(hashes)
    if dup is not None:  # within one partition the offending id is at hand
        raise BadInputError("appears more than once", column=spec.id_col,
                            row=b.ids[int(np.flatnonzero(b.id_hash == np.uint64(dup))[0])].as_py(),
                            hint="Ids must be unique; drop or rename the duplicates")
    return Statistics(len(b.ids), mom, hashes, None, pairs)


@dataclass
class Histograms:
    """Pass 0 (only for quantile filters): per view, per class histograms of top-1 cosine and margin."""

    counts: dict[str, np.ndarray]

    def __add__(self, o: "Histograms") -> "Histograms":
        return Histograms({v: self.counts[v] + o.counts[v] for v in self.counts})


def histogram_partition(df: Any, spec: Spec) -> Histograms:
    """Pass 0 on one partition: the score histograms the quantile filters read their thresholds from."""
    b = read_block(df, spec)
    out = {}
    for v, x in b.views.items():
        base = base_labels(x, spec.classes[v])
        out[v] = score_histograms(base.top1, base.margin, base.label, spec.k)
    return Histograms(out)


def merge(parts: list[Any]) -> Any:
    """Merge any number of mergeable results (a node of the tree reduction)."""
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def ids_with_hash(df: Any, spec: Spec, h: int) -> list:
    """Ids of a partition whose hash is ``h`` (to name a duplicate found across partitions)."""
    ids = to_arrow(df[spec.id_col])
    hit = np.flatnonzero(hash_ids(ids) == np.uint64(h))
    return [ids[int(i)].as_py() for i in hit]


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


def label_partition(df: Any, spec: Spec) -> tuple[pa.Table, Tally]:
    """Pass 2 on one partition: the labels table (output contract) and its tally."""
    b = read_block(df, spec)
    n, k = len(b.ids), spec.k
    cols: dict[str, pa.Array] = {"id": b.ids}
    base_l, tour_l, margin_l, decide, scores = {}, {}, {}, {}, {}
    for v, x in b.views.items():
        masks = spec.masks[v]
        base = base_labels(x, spec.classes[v])
        pidx = masks.pair_index()
        scores[v] = base.scores
        if masks.weights is None:
            # sparse masks (many classes, top-t): gather each match's decision, no X Wᵀ over all pairs
            players = top_classes(base.scores, spec.top_t)
            res = play_bracket_gather(x, masks, pidx, b.id_hash, seed=spec.seed, players=players)
            label = res.label
            margin = np.abs(masked_margin(x, masks, res.final_pair, res.final_raw)) if n else np.zeros(0, np.float32)
            decide[v] = lambda r, p, x=x, masks=masks: gather_decisions(x[r], masks, p[:, None])[:, 0]
        elif spec.mode == "round-robin":
            d = pair_decisions(x, masks)
            decide[v] = lambda r, p, d=d: d[r, p]
            all_norms = _all_masked_margins(x, masks, d)
            label = play_round_robin(d, all_norms, masks.pairs, k)
            other = _runner_up(d, pidx, label, all_norms)
            p = pidx[label, other]
            margin = np.abs(all_norms[np.arange(n), p])
        else:
            d = pair_decisions(x, masks)
            decide[v] = lambda r, p, d=d: d[r, p]
            players = top_classes(base.scores, spec.top_t) if spec.top_t_active else None
            res = play_bracket(d, pidx, b.id_hash, seed=spec.seed, players=players)
            label = res.label
            margin = np.abs(masked_margin(x, masks, res.final_pair, res.final_raw)) if n else np.zeros(0, np.float32)
        base_l[v], tour_l[v], margin_l[v] = base.label, label, margin
        cols[f"base_{v}"] = _names(spec, base.label)
        cols[f"label_{v}"] = _names(spec, label)
        cols[f"margin_{v}"] = pa.array(margin.astype(np.float32))
    views = list(b.views)
    stack = np.stack([tour_l[v] for v in views])           # (V, n)
    margins = np.stack([margin_l[v] for v in views])       # (V, n)
    agree = (stack == stack[0]).all(axis=0)
    final = stack[np.argmax(margins, axis=0), np.arange(n)]  # the most confident view
    cols["final_label"] = _names(spec, final)
    cols["agree"] = pa.array(agree)
    if b.annotation is not None:
        cols["annotation"] = b.annotation
    table = pa.table(cols)

    # the disagreement report's rows of this partition
    ann = b.annotation_idx
    ann_differs = (ann >= 0) & (ann != final) if ann is not None else np.zeros(n, bool)
    flagged = ann_differs | ~agree
    current = np.where(ann_differs, ann if ann is not None else 0,
                       np.where(stack[0] != final, stack[0], stack[-1]))
    rows = np.flatnonzero(flagged)
    priority = np.zeros(len(rows))
    for v in views:
        priority += _pair_margin(b.views[v], spec.masks[v], decide[v], scores[v], rows, final[rows],
                                 current[rows])
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


def _pair_margin(x: np.ndarray, masks: PairMasks, decide: Any, scores: np.ndarray, rows: np.ndarray,
                 proposed: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Cosine margin of ``proposed`` over ``current`` on their pair's mask (0 where they are equal).

    ``decide(rows, pair_rows)`` gives ``x·w``. A pair without a mask (top-t fits only the pairs that
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
        res[fitted] = sign * masked_margin(x[rf], masks, pf, decide(rf, pf))
    out[ok] = res
    return out


def _all_masked_margins(x: np.ndarray, masks: PairMasks, d: np.ndarray) -> np.ndarray:
    """Cosine margins of every pair (round-robin needs them all): ``D / ‖x|M‖`` via one product."""
    mask = np.zeros((len(masks.pairs), x.shape[1]), np.float32)
    mask[np.arange(len(masks.pairs))[:, None], masks.dims] = 1.0
    norms = np.sqrt(np.maximum((x * x) @ mask.T, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, d / norms, 0.0).astype(np.float32)


def _runner_up(d: np.ndarray, pidx: np.ndarray, label: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """The class the winner beat by the least margin (its closest rival)."""
    n, k = len(label), pidx.shape[0]
    p = pidx[label[:, None], np.arange(k)[None, :]]  # (n, k), -1 on the winner itself
    m = np.abs(np.take_along_axis(margins, np.maximum(p, 0), axis=1))
    m[p < 0] = np.inf
    return np.argmin(m, axis=1)
