"""The statistics step's sufficient statistics (METHOD.md §2): pure NumPy, no Dask.

Moments of a set of items are ``(n, Σx, Σx²)`` per dimension. They are accumulated in float64 on
*quantised* values: every ``x`` is rounded to a multiple of ``2**-QUANT_BITS`` and every ``x²`` too.
All partial sums are then integers times a power of two that float64 holds exactly (for up to
``EXACT_ITEMS`` items per set), so the sums are exact whatever the order of addition: per-partition
moments merged in any tree equal the single-pass numbers bit for bit, and so do the masks and
labels built from them. The rounding (≤ 2**-27 per value, below float32's own resolution for
typical embedding entries) changes no statistic that matters.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUANT_BITS = 26
_Q = float(2 ** QUANT_BITS)
#: Sums stay exact while every |partial sum| < 2**53 quanta, i.e. for up to 2**27 items per set.
EXACT_ITEMS = 2 ** (53 - QUANT_BITS)


#: Rows per block of :func:`filtered_moments`: bounds its float64 temporaries (2 × rows × d × 8 B)
#: whatever the partition size; the sums are exact, so blocking changes no bit.
MOMENT_ROWS = 8192


_HALF_Q32 = np.float32(2.0 ** (QUANT_BITS // 2))


def quantize_f32(z: np.ndarray, q: np.ndarray, scale: np.ndarray | None = None) -> None:
    """The quanta of the rows ``x`` held in the float32 buffer ``z``, in place: ``q ← rint(x·2**26)``
    and ``z ← x·2**13``, so that :func:`square_quanta` gives ``rint(x²·2**26)`` next. With
    ``scale`` (per-row inverse norms) the quanta are those of the normalised rows.

    All in float32, so no float64 buffer is written: ``x·2**26`` is an exponent shift (exact), and a
    float32 of magnitude ≥ 2**23 is already whole, so ``q`` is the exact quantum of ``x``; scaling by
    a power of two commutes with float32 rounding, so ``rint(z·z) = rint(fl(x·x)·2**26)``, float32's
    ``x²`` quantised (relative error 2**-24), a deterministic function of ``x`` alone, which is all the
    order-free sums need. Each quantum is a whole number held exactly in float32 (below 2**24 every
    integer is, above it every float32 is one), so their float64 sums are exact.
    """
    if scale is not None:  # the normalised row first
        np.multiply(z, scale[:, None], out=z)
    np.multiply(z, _HALF_Q32, out=z)
    np.multiply(z, _HALF_Q32, out=q)
    np.rint(q, out=q)


def square_quanta(z: np.ndarray, q: np.ndarray) -> None:
    """``q ← rint(x²·2**26)`` from ``z = x·2**13`` left by :func:`quantize_f32`."""
    np.multiply(z, z, out=q)
    np.rint(q, out=q)


def quantize_into(x: np.ndarray, out: np.ndarray, tmp: np.ndarray, z: np.ndarray,
                  scale: np.ndarray | None = None) -> None:
    """``out[:, :d]`` and ``out[:, d:]``: the quanta of ``x`` and of ``x²`` (:func:`quantize_f32`)
    as float64, for a product; ``tmp`` and ``z`` are float32 work buffers of ``x``'s shape."""
    d = x.shape[1]
    z[...] = x
    quantize_f32(z, tmp, scale)
    out[:, :d] = tmp
    square_quanta(z, tmp)
    out[:, d:] = tmp


def quantize(x: np.ndarray, scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Integer-valued float64 quanta of ``x`` and of ``x²`` (both in units of 2**-QUANT_BITS);
    of the rows ``x · scale`` when ``scale`` is given."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty((x.shape[0], 2 * x.shape[1]))
    quantize_into(x, out, np.empty(x.shape, np.float32), np.empty(x.shape, np.float32), scale)
    return out[:, :x.shape[1]], out[:, x.shape[1]:]


@dataclass(frozen=True)
class Moments:
    """Moments of ``g`` item sets over ``d`` dimensions, in quanta (see module docstring).

    ``n`` is ``(g,)``; ``s1`` and ``s2`` are ``(g, d)`` float64 sums of quantised ``x`` and ``x²``.
    Adding two ``Moments`` merges them exactly.
    """

    n: np.ndarray
    s1: np.ndarray
    s2: np.ndarray

    @classmethod
    def zeros(cls, g: int, d: int) -> "Moments":
        return cls(np.zeros(g, np.int64), np.zeros((g, d)), np.zeros((g, d)))

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.n + other.n, self.s1 + other.s1, self.s2 + other.s2)

    @property
    def shape(self) -> tuple[int, int]:
        return self.s1.shape

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        """Per set and dimension: mean and (population) variance, clamped at 0; NaN for empty sets."""
        with np.errstate(invalid="ignore", divide="ignore"):
            n = self.n[:, None].astype(np.float64)
            mu = self.s1 / n / _Q
            var = np.maximum(self.s2 / n / _Q - mu * mu, 0.0)
        return mu, var


#: Rows quantised at once (:func:`set_moments`, :func:`class_moments`): the blocks' buffers stay
#: in a core's L2 cache, so the quantisation passes never go to main memory (128 measured fastest
#: of 64-512 for d = 768).
QUANT_ROWS = 128


def set_moments(x: np.ndarray, membership: np.ndarray, *, quantized: tuple[np.ndarray, np.ndarray] | None = None,
                scale: np.ndarray | None = None) -> Moments:
    """Moments of the item sets given by a ``(n, g)`` 0/1 membership matrix, as GEMMs.

    ``indicatorᵀ @ [Xq | Xq²]`` in float64: exact (see module docstring). ``x`` is quantised
    :data:`QUANT_ROWS` rows at a time into one reused ``(rows, 2d)`` buffer, each block's product
    added to the sums (exact integers, so the blocking changes no bit). ``scale``: per-row inverse
    norms of raw rows ``x`` (see :func:`quantize_f32`).
    """
    n, d = x.shape
    # a contiguous (g, n) indicator: BLAS on the transposed view was 10× slower here (k = 13)
    ind_t = np.ascontiguousarray(membership.T, dtype=np.float64)
    counts = membership.sum(axis=0, dtype=np.int64)
    if quantized is not None:
        return Moments(counts, ind_t @ quantized[0], ind_t @ quantized[1])
    acc = np.zeros((ind_t.shape[0], 2 * d))
    buf = np.empty((QUANT_ROWS, 2 * d))
    tmp = np.empty((QUANT_ROWS, d), np.float32)
    z = np.empty((QUANT_ROWS, d), np.float32)
    x = np.asarray(x, dtype=np.float32)
    # rows in no set add nothing: skip them (a kept share, refine's keep = 0.5, halves the work);
    # the sums are exact integers, so which rows are summed together changes no bit
    live = np.flatnonzero(ind_t.any(axis=0))
    if len(live) == n:
        live = None
    m = n if live is None else len(live)
    for s in range(0, m, QUANT_ROWS):
        r = min(QUANT_ROWS, m - s)
        sel = slice(s, s + r) if live is None else live[s:s + r]
        quantize_into(x[sel], buf[:r], tmp[:r], z[:r], None if scale is None else scale[sel])
        acc += ind_t[:, sel] @ buf[:r]
    return Moments(counts, acc[:, :d].copy(), acc[:, d:].copy())


def class_moments(x: np.ndarray, labels: np.ndarray, keep: np.ndarray, k: int,
                  *, scale: np.ndarray | None = None) -> Moments:
    """Moments of the k per-class sets ``{i : labels_i = c, keep_i}``: ``onehotᵀ @ [Xq | Xq²]``.

    Computed as that product without its multiplications by zero: the kept rows sorted by label,
    each class's run quantised :data:`QUANT_ROWS` rows at a time (in cache) and summed in float64.
    The quanta are whole numbers already held exactly in float32 (see :func:`quantize_f32`), so
    the float64 sums are exact and equal :func:`set_moments` with a one-hot membership bit for bit,
    at a fraction of its cost (a one-hot GEMM spends k − 1 of every k multiplications on zeros and
    needs the quanta converted to float64 first).
    """
    rows = np.flatnonzero(keep)
    lab = labels[rows]
    order = np.argsort(lab, kind="stable")
    rows, lab = rows[order], lab[order]
    bounds = np.searchsorted(lab, np.arange(k + 1))
    d = x.shape[1]
    s1, s2 = np.zeros((k, d)), np.zeros((k, d))
    x = np.asarray(x, dtype=np.float32)
    block = np.empty((QUANT_ROWS, d), np.float32)
    q = np.empty((QUANT_ROWS, d), np.float32)
    for c in np.flatnonzero(np.diff(bounds)):  # a loop over the classes present, not over items
        for s in range(bounds[c], bounds[c + 1], QUANT_ROWS):
            r = rows[s:min(s + QUANT_ROWS, bounds[c + 1])]
            z, qz = block[:len(r)], q[:len(r)]
            np.take(x, r, axis=0, out=z)
            quantize_f32(z, qz, None if scale is None else scale[r])
            s1[c] += np.add.reduce(qz, axis=0, dtype=np.float64)
            square_quanta(z, qz)
            s2[c] += np.add.reduce(qz, axis=0, dtype=np.float64)
    return Moments(np.diff(bounds).astype(np.int64), s1, s2)


def cross_variance(mu_a: np.ndarray, var_a: np.ndarray, mu_b: np.ndarray, var_b: np.ndarray) -> np.ndarray:
    """``Σ_{x∈A} Σ_{y∈B} (x−y)² / (2 n_A n_B)`` in its exact O(d) moment form, ``((μa − μb)² + σa² +
    σb²) / 2``, computed in place in one new array (the mask step scores every dimension of up to
    millions of pairs)."""
    r = np.asarray(np.subtract(mu_a, mu_b, dtype=np.result_type(mu_a, var_a, mu_b, var_b, 2.0)))
    r *= r
    r += var_a
    r += var_b
    r /= 2.0
    return r


def cross_deviation_ratio(mu_a: np.ndarray, var_a: np.ndarray, mu_b: np.ndarray, var_b: np.ndarray,
                          sd_a: np.ndarray | None = None, sd_b: np.ndarray | None = None) -> np.ndarray:
    """The article's score ``r_j = sqrt(xv_j / (σ_A σ_B))`` (≥ 1; large = discriminative).

    A dimension where either side has zero spread gets ``+inf`` if the means differ (perfectly
    separating) and 1 if they do not. ``sd_a``/``sd_b``: ``sqrt(var_a)``/``sqrt(var_b)`` when the
    caller has them (a set's appear in many pairs: taken once per set, not once per pair).
    """
    r = cross_variance(mu_a, var_a, mu_b, var_b)
    if sd_a is not None and sd_b is not None:
        denom = sd_a * sd_b
    else:
        denom = np.sqrt(var_a)
        denom *= np.sqrt(var_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        r /= denom
        np.sqrt(r, out=r)
    degenerate = denom <= 0
    if degenerate.any():
        r = np.where(degenerate, np.where(mu_a != mu_b, np.inf, 1.0), r)
    return r


def set_index(a: np.ndarray | int, b: np.ndarray | int, k: int, per_pair: bool) -> np.ndarray | int:
    """Row of a :class:`Moments` holding side ``a`` of pair ``(a, b)``.

    With ``per_pair=False`` (``diff_min = 0``) the set of side ``a`` depends on ``a`` alone, so the
    moments are per class (``k`` rows); otherwise there is one set per ordered pair (``k*k`` rows).
    """
    return a * k + b if per_pair else a


def filtered_moments(x: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, cos_min: float | np.ndarray,
                     diff_min: float | np.ndarray, per_pair: bool, keep: np.ndarray | None = None,
                     scale: np.ndarray | None = None) -> Moments:
    """The statistics step for one block: moments of every pair side's filtered set.

    Side ``a`` of pair ``(a, b)`` is ``{i : labels_i = a, S_ia ≥ cos_min, S_ia − S_ib ≥ diff_min}``
    (and ``keep_i``, when given: a further filter decided by the caller).
    ``cos_min`` and ``diff_min`` are scalars or per-class ``(k,)`` thresholds (quantile filters).
    Computed on blocks of :data:`MOMENT_ROWS` rows (bounded memory; exact, so the same numbers).
    """
    n, k = scores.shape
    if n > MOMENT_ROWS:
        out = None
        for s in range(0, n, MOMENT_ROWS):
            sl = slice(s, s + MOMENT_ROWS)
            part = filtered_moments(x[sl], scores[sl], labels[sl], cos_min=cos_min, diff_min=diff_min,
                                    per_pair=per_pair, keep=None if keep is None else keep[sl],
                                    scale=None if scale is None else scale[sl])
            out = part if out is None else out + part
        return out
    rows = np.arange(n)
    top = scores[rows, labels] if n else np.zeros(0, np.float32)
    cos_min = np.asarray(cos_min, dtype=np.float64)
    diff_min = np.asarray(diff_min, dtype=np.float64)
    keep = (top >= (cos_min[labels] if cos_min.ndim else cos_min)) & (True if keep is None else keep)
    if not per_pair:
        return class_moments(x, labels, keep, k, scale=scale)
    member = np.zeros((n, k * k), dtype=np.float64)
    diff = top[:, None] - scores  # (n, k): S_ia − S_ib for the item's own a
    ok = keep[:, None] & (diff >= (diff_min[labels][:, None] if diff_min.ndim else diff_min))
    ok[rows, labels] = False  # no pair (a, a)
    r, b = np.nonzero(ok)
    member[r, labels[r] * k + b] = 1.0
    return set_moments(x, member, scale=scale)


#: Histogram bins of the quantile filters: top-1 cosine on [-1, 1], top-1 − top-2 margin on [0, 2].
HIST_BINS = 4096


def score_histograms(top: np.ndarray, margin: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per class, integer histograms of the top-1 cosine and of the margin: ``(k, 2, HIST_BINS)``.

    Counts add exactly across partitions, so quantiles read from the merged histograms do not
    depend on the partitioning (resolution 2/HIST_BINS ≈ 0.0005 cosine).
    """
    out = np.zeros((k, 2, HIST_BINS), np.int64)
    for j, (v, lo) in enumerate(((top, -1.0), (margin, 0.0))):
        b = np.clip(((np.asarray(v, np.float64) - lo) / 2.0 * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1)
        out[:, j, :] = np.bincount(labels.astype(np.int64) * HIST_BINS + b, minlength=k * HIST_BINS).reshape(k, HIST_BINS)
    return out


def quantile_thresholds(hist: np.ndarray, q: float, which: int) -> np.ndarray:
    """Per class, the lower bin edge below which lies at most a share ``q`` of its items."""
    lo = -1.0 if which == 0 else 0.0
    h = hist[:, which, :]
    cdf = np.cumsum(h, axis=1)
    total = cdf[:, -1:]
    # first bin whose cumulative count exceeds q·n: everything below its lower edge is dropped
    first = np.argmax(cdf > q * total, axis=1)
    edges = lo + first * (2.0 / HIST_BINS)
    return np.where(total[:, 0] > 0, edges, lo)
