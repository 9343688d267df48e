"""Pair masks and pair weights from merged moments (METHOD.md §2–3): pure NumPy, no Dask."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .moments import Moments, cross_deviation_ratio, set_index


def all_pairs(k: int) -> np.ndarray:
    """Every unordered class pair ``(a, b)`` with ``a < b``, in lexicographic order: ``(P, 2)``."""
    a, b = np.triu_indices(k, 1)
    return np.stack([a, b], axis=1).astype(np.int32)


def pair_ids(pairs: np.ndarray, k: int) -> np.ndarray:
    """Pair ``(a, b)``, ``a < b``, as the int64 id ``a·k + b`` (sorting ids sorts pairs lexicographically)."""
    return pairs[:, 0].astype(np.int64) * k + pairs[:, 1]


def pairs_from_ids(ids: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pair_ids`: ``(P, 2)`` int32."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids // k, ids % k], axis=1).astype(np.int32)


#: m when the job does not say (METHOD.md: 100 of 768); capped at d only when it is the default.
DEFAULT_DIMS = 100


def resolve_dims(dims: float | None, d: int) -> int:
    """``m`` from an integer count or a fraction of ``d`` (``0 < dims < 1``); ``None``: the default.

    An explicit count larger than ``d`` is an error (raised as ``ValueError`` here; the job checks
    it first and reports it as bad input), never silently clamped.
    """
    if dims is None:
        return min(DEFAULT_DIMS, d)
    if 0 < dims < 1:
        return max(1, int(round(dims * d)))
    m = int(dims)
    if not 1 <= m <= d:
        raise ValueError(f"dims = {dims} is outside 1..{d} (d)")
    return m


#: Values per row block of :func:`top_dims` (a few float32/bool temporaries of this size fit L2).
TOP_BLOCK = 1 << 18


def top_dims(score: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` indices of largest score in each row (ties by lower index), ascending.

    ``O(d)`` per row (a partition, not a sort: the mask step of many pairs and the top-t bracket's
    choice of classes are dominated by it): keep every index at or above the m-th largest value;
    only a row with more ties at that value than places left resolves them by index (a running
    count, over those rows alone). Rows go in blocks that keep the temporaries in cache.
    """
    score = np.asarray(score)
    d = score.shape[-1]
    if m >= d:
        return np.broadcast_to(np.arange(d, dtype=np.int32), score.shape).copy()
    flat = score.reshape(-1, d)
    out = np.empty((len(flat), m), np.int32)
    step = max(1, TOP_BLOCK // d)
    for s in range(0, len(flat), step):
        f = flat[s:s + step]
        thr = np.partition(f, d - m, axis=1)[:, d - m:d - m + 1]  # the m-th largest of each row
        keep = f >= thr
        over = np.flatnonzero(keep.sum(axis=1) > m)  # ties at the threshold beyond the m places
        if len(over):
            fo, t = f[over], thr[over]
            above, tie = fo > t, fo == t
            keep[over] = above | (tie & (np.cumsum(tie, axis=1) <= m - above.sum(axis=1, keepdims=True)))
        # row-major flat positions: each row's m columns, ascending (4x faster than nonzero's pairs)
        pos = np.flatnonzero(keep).reshape(-1, m)
        pos -= (np.arange(len(keep), dtype=np.int64) * d)[:, None]
        out[s:s + step] = pos
    return out.reshape(score.shape[:-1] + (m,))


@dataclass(frozen=True)
class PairMasks:
    """Everything the tourney needs for one view.

    ``pairs`` ``(P, 2)``; ``dims`` ``(P, m)`` int32; ``weights`` ``(P, d)`` float32 with
    ``w_ab = ĉ_a|M − ĉ_b|M`` (each restricted to ``M_ab``, re-normalised; zero elsewhere), or
    ``None`` in the sparse form (many pairs: the tourney then gathers ``values`` per match instead of
    one ``X Wᵀ`` product); ``values`` ``(P, m)`` float32, ``w_ab`` on ``dims`` only;
    ``n_a``/``n_b`` the set sizes; ``fallback`` where a side had fewer than ``min_items`` items;
    ``anchors`` ``(k, d)`` the class vectors the weights were built from (the prompts, or the
    prompts mixed with the class means: :func:`prototypes`); ``None`` means the prompts.
    ``decision``: ``"cosine"`` (the above; margins are masked cosines) or ``"discriminant"``
    (:func:`discriminant_values`: ``w_ab`` and ``bias`` are a diagonal discriminant already in
    standard-deviation units, so ``x·w + bias`` is the margin itself); ``bias`` ``(P,)`` float32
    is added to every decision (``None``: 0). ``separation`` ``(P,)`` float32 (discriminant only):
    each pair's discriminant scale ``Δ`` before the margins were divided by it, i.e. how many
    within-class standard deviations apart the two sides lie (what ``fuse = "llr"`` weights by).
    """

    k: int
    pairs: np.ndarray
    dims: np.ndarray
    weights: np.ndarray | None
    n_a: np.ndarray
    n_b: np.ndarray
    fallback: np.ndarray
    values: np.ndarray | None = None
    anchors: np.ndarray | None = None
    bias: np.ndarray | None = None
    decision: str = "cosine"
    separation: np.ndarray | None = None

    def __sizeof__(self) -> int:
        # what Dask's memory accounting (and its "large graph" check) sees: sys.getsizeof's
        # fallback would count 112 bytes for 722 MB of masks at k = 1,000
        arrays = (self.pairs, self.dims, self.weights, self.n_a, self.n_b, self.fallback, self.values,
                  self.anchors, self.bias, self.separation)
        return sum(a.nbytes for a in arrays if a is not None) + 256

    def sparse_values(self) -> np.ndarray:
        """``w_p`` on ``dims[p]``: ``(P, m)`` float32 (taken from ``weights`` when not stored)."""
        if self.values is not None:
            return self.values
        return np.take_along_axis(self.weights, self.dims.astype(np.int64), axis=1)

    def pair_index(self) -> np.ndarray:
        """``(k, k)`` lookup: pair row of ``(a, b)`` (either order), ``-1`` elsewhere."""
        return pair_lookup(self.pairs, self.k)


def scatter_weights(dims: np.ndarray, values: np.ndarray, d: int) -> np.ndarray:
    """Dense ``(P, d)`` float32 weights: ``values`` ``(P, m)`` on each pair's ``dims``, zero elsewhere."""
    weights = np.zeros((len(dims), d), dtype=np.float32)
    np.put_along_axis(weights, dims.astype(np.int64), values, axis=1)
    return weights


def in_form(masks: PairMasks, d: int, *, dense: bool) -> PairMasks:
    """``masks`` with dense ``(P, d)`` weights (built from its values when it has none), or in the
    sparse form (the ``(P, m)`` values alone): the same numbers, in the form the tourney plays."""
    if dense == (masks.weights is not None):
        return masks
    if not dense:
        return replace(masks, values=masks.sparse_values(), weights=None)
    return replace(masks, weights=scatter_weights(masks.dims, masks.values, d))


def concat_masks(parts: list[PairMasks]) -> PairMasks:
    """The masks of several disjoint pair lists fitted from the same moments, as one (in order)."""
    first = parts[0]

    def cat(name: str) -> np.ndarray | None:
        return None if getattr(first, name) is None else np.concatenate([getattr(p, name) for p in parts])

    return PairMasks(first.k, cat("pairs"), cat("dims"), cat("weights"), cat("n_a"), cat("n_b"), cat("fallback"),
                     cat("values"), first.anchors, cat("bias"), first.decision, cat("separation"))


def pair_lookup(pairs: np.ndarray, k: int) -> np.ndarray:
    """``(k, k)`` int64 lookup: the row of ``(a, b)`` in ``pairs`` (either order); ``-1`` on the
    diagonal and for pairs not listed."""
    idx = np.full((k, k), -1, dtype=np.int64)
    p = np.arange(len(pairs))
    idx[pairs[:, 0], pairs[:, 1]] = p
    idx[pairs[:, 1], pairs[:, 0]] = p
    return idx


def pair_values(classes: np.ndarray, pairs: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """``w_ab`` on ``M_ab`` only, ``(P, m)`` float32: the two prompts restricted, re-normalised, subtracted."""
    # gathered straight to (P, m): never the (P, d) prompt rows of every pair
    ca = classes[pairs[:, 0, None], dims].astype(np.float64)
    cb = classes[pairs[:, 1, None], dims].astype(np.float64)
    for c in (ca, cb):  # a prompt that is zero on the whole mask stays zero (no 0/0)
        norm = np.linalg.norm(c, axis=1, keepdims=True)
        np.divide(c, norm, out=c, where=norm > 0)
    return (ca - cb).astype(np.float32)


def pair_weights(classes: np.ndarray, pairs: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """``w_ab`` per pair, dense ``(P, d)``: the difference of the two prompts restricted to ``M_ab``,
    each re-normalised, zero elsewhere."""
    return scatter_weights(dims, pair_values(classes, pairs, dims), classes.shape[1])


#: Pairs scored at once by :func:`fit_masks`: its float64 temporaries (a few × 256 × d) stay in a
#: core's L2 cache; with 4,096 they went to memory and the scoring of many pairs took 1.4× longer.
FIT_CHUNK = 256


def class_means(moments: Moments, k: int, per_pair: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per class: the L2-normalised mean of its set and the set size, from the merged moments.

    With per-pair sets (``k*k`` rows) side ``a``'s rows over all ``b`` are pooled: an item counts
    once per pair it qualified for, i.e. weighted by how many rivals it clearly beats.
    """
    n, s1 = moments.n.astype(np.float64), moments.s1
    if per_pair:
        n = n.reshape(k, k).sum(axis=1)
        s1 = s1.reshape(k, k, -1).sum(axis=1)
    norm = np.linalg.norm(s1, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(norm > 0, s1 / norm, 0.0)  # the scale (n, quanta) cancels in the direction
    return mean, n


def prototypes(classes: np.ndarray, moments: Moments, *, mix: float, per_pair: bool,
               min_items: int = 1) -> np.ndarray:
    """Transductive class vectors: ``normalise(ĉ + mix · μ̂)`` per class (``ĉ`` the prompt).

    The prompt is one embedded sentence; the mean of the items the statistics assigned to the class
    is where the class actually lies in this catalog. ``mix = 0`` is the prompt (the article);
    a class with fewer than ``min_items`` items keeps its prompt.
    """
    if mix <= 0:
        return classes
    mean, n = class_means(moments, classes.shape[0], per_pair)
    out = classes.astype(np.float64) + mix * np.where((n >= min_items)[:, None], mean, 0.0)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    # a mean that cancels its prompt (one rotated axis, rotate_dims = 1: both are ±1) keeps the prompt
    return np.where(norm > 0, out / np.where(norm > 0, norm, 1.0), classes).astype(np.float32)


#: Variance floor of the discriminant: each pair's pooled variance plus this share of its mean over
#: the dimensions (regularises near-constant dimensions and tiny sets; chosen on Debian half A among
#: 0, 0.1, 0.5, 1: differences ≤ 0.003, see benchmarks/experiments/discriminant.md).
DISC_SHRINK = 0.5


def discriminant_values(moments: Moments, classes: np.ndarray, pairs: np.ndarray, dims: np.ndarray, *,
                        per_pair: bool, min_items: int,
                        prior: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair, a diagonal (shared-variance) Gaussian discriminant on its mask: ``(P, m)`` weights
    on ``dims``, a ``(P,)`` bias and the ``(P,)`` separation ``Δ``, all float32; weights and bias
    are scaled to standard-deviation units.

    ``w = (μa − μb)/σ²`` on ``M_ab`` (``σ²`` the two sides' pooled variance + :data:`DISC_SHRINK` × its
    mean over the dimensions), ``bias = −w·(μa + μb)/2 + prior · log(n_a/n_b)``, both divided by
    the pair's discriminant scale ``Δ = sqrt(Σ_M (μa − μb)²/σ²)``: ``x·w + bias`` is the item's
    signed distance from the midpoint along the discriminant in within-class standard deviations,
    comparable across pairs and views (what round-robin, fusion and the review priority add up).
    ``Δ`` itself (0 for a pair whose sides do not differ on the mask) is returned as the third value.
    A side with fewer than ``min_items`` items is its prompt scaled to the median norm of the
    other sets' means, with their mean variance.
    """
    k, d = classes.shape
    a, b = pairs[:, 0], pairs[:, 1]
    ia, ib = set_index(a, b, k, per_pair), set_index(b, a, k, per_pair)
    mu, var = moments.mean_var()
    n = moments.n.astype(np.float64)
    ok = n >= max(min_items, 1)
    if not ok.all():
        typical = float(np.median(np.linalg.norm(mu[ok], axis=1))) if ok.any() else 1.0
        mean_var = var[ok].mean(axis=0) if ok.any() else np.full(d, 1.0 / d)
        cls = np.arange(len(n)) // k if per_pair else np.arange(len(n))  # the class of each set
        mu = np.where(ok[:, None], mu, classes[cls].astype(np.float64) * typical)
        var = np.where(ok[:, None], var, mean_var)
        n = np.where(ok, n, max(min_items, 1))
    vm = var.mean(axis=1)  # per set: its mean variance over all d dimensions
    m = dims.shape[1]
    w_out, bias_out = np.empty((len(pairs), m), np.float32), np.empty(len(pairs), np.float32)
    sep_out = np.empty(len(pairs), np.float32)
    # chunks of pairs: each pair's numbers are its own (bit for bit the same as one pass over all),
    # and the float64 temporaries stay (chunk, m) instead of (P, m) (k = 1,000, m = 384: ~86 MB each per fit task)
    for s in range(0, len(pairs), FIT_CHUNK):
        sl = slice(s, s + FIT_CHUNK)
        ja, jb, dm = ia[sl], ib[sl], dims[sl]
        ma, mb = mu[ja[:, None], dm], mu[jb[:, None], dm]          # (chunk, m) gathered, never (chunk, d)
        na, nb = n[ja][:, None], n[jb][:, None]
        pooled = (na * var[ja[:, None], dm] + nb * var[jb[:, None], dm]) / (na + nb)
        pooled = pooled + DISC_SHRINK * ((na[:, 0] * vm[ja] + nb[:, 0] * vm[jb]) / (na + nb)[:, 0])[:, None] + 1e-12
        diff = ma - mb
        w = diff / pooled
        bias = -(w * (ma + mb)).sum(axis=1) / 2.0
        if prior:
            bias = bias + prior * np.log(n[ja] / n[jb])
        separation = np.sqrt((w * diff).sum(axis=1))
        delta = np.where(separation > 0, separation, 1.0)
        w_out[sl] = w / delta[:, None]
        bias_out[sl] = bias / delta
        sep_out[sl] = separation
    return w_out, bias_out, sep_out


DECISIONS = ("cosine", "discriminant")


def fit_masks(moments: Moments, classes: np.ndarray, *, m: int, min_items: int, per_pair: bool,
              pairs: np.ndarray | None = None, dense: bool = True, mix: float = 0.0,
              decision: str = "cosine", prior: float = 0.0) -> PairMasks:
    """Score every dimension of every pair and keep the ``m`` most discriminative.

    ``pairs`` (default: all ``k(k−1)/2``) limits the fit to the pairs that can play (the top-t
    bracket); ``dense=False`` keeps only the ``(P, m)`` weight values, not ``(P, d)`` weights.
    A pair with fewer than ``min_items`` items on either side falls back to the ``m`` dimensions
    where the two (normalised) class prompts differ most: the only evidence left without data.
    The pair weights come from :func:`prototypes` (``mix = 0``: the prompts themselves), or with
    ``decision = "discriminant"`` from :func:`discriminant_values` (``mix`` unused, ``prior`` the
    weight of the log count ratio in its bias).
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision = {decision!r} is not one of {', '.join(DECISIONS)}")
    k, d = classes.shape
    pairs = all_pairs(k) if pairs is None else np.asarray(pairs, dtype=np.int32).reshape(-1, 2)
    a, b = pairs[:, 0], pairs[:, 1]
    ia, ib = set_index(a, b, k, per_pair), set_index(b, a, k, per_pair)
    mu, var = moments.mean_var()
    sd = np.sqrt(var)  # per set, once: a set is a side of up to k − 1 pairs
    n_a, n_b = moments.n[ia], moments.n[ib]
    fallback = (n_a < min_items) | (n_b < min_items)
    dims = np.zeros((len(pairs), m), np.int32)
    for s in range(0, len(pairs), FIT_CHUNK):  # chunks of pairs: memory independent of P
        sl = slice(s, s + FIT_CHUNK)
        ja, jb = ia[sl], ib[sl]
        score = cross_deviation_ratio(mu[ja], var[ja], mu[jb], var[jb], sd[ja], sd[jb])
        fb = fallback[sl]
        if fb.any():
            score[fb] = np.abs(classes[a[sl][fb]] - classes[b[sl][fb]])
        score[np.isnan(score)] = 0.0  # (±inf, perfect separation, ranks first as it is)
        dims[sl] = top_dims(score, m)
    bias = separation = None
    if decision == "discriminant":
        anchors = None
        values, bias, separation = discriminant_values(moments, classes, pairs, dims, per_pair=per_pair,
                                                       min_items=min_items, prior=prior)
    else:
        anchors = prototypes(classes, moments, mix=mix, per_pair=per_pair, min_items=min_items)
        values = pair_values(anchors, pairs, dims)
        anchors = None if mix <= 0 else anchors
    weights = scatter_weights(dims, values, d) if dense else None
    return PairMasks(k, pairs, dims, weights, n_a, n_b, fallback, values, anchors, bias, decision, separation)


def with_pairs(masks: PairMasks, moments: Moments, classes: np.ndarray, ids: np.ndarray, *, min_items: int,
               mix: float = 0.0, prior: float = 0.0) -> PairMasks:
    """``masks`` plus the masks of the pairs among ``ids`` (:func:`pair_ids`) it lacks, fitted from
    the ``moments`` it was fitted from, with its own width, form and decision (the other keywords
    as that fit's; per-pair sets when the moments have ``k²`` rows): a pair's mask depends on its
    two sides' moments alone, so these are exactly the masks a fit that had included the pairs
    would have made. ``masks`` itself when none is missing."""
    missing = np.setdiff1d(ids, pair_ids(masks.pairs, masks.k), assume_unique=True)
    if not len(missing):
        return masks
    k = masks.k
    extra = fit_masks(moments, classes, pairs=pairs_from_ids(missing, k), m=int(masks.dims.shape[1]),
                      min_items=min_items, per_pair=len(moments.n) == k * k and k > 1,
                      dense=masks.weights is not None, mix=mix, decision=masks.decision, prior=prior)
    return concat_masks([masks, extra])
