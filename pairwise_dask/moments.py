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


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer-valued float64 quanta of ``x`` and of ``x²`` (both in units of 2**-QUANT_BITS)."""
    xq = np.rint(x.astype(np.float64) * _Q)
    return xq, np.rint(xq * xq / _Q)


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


def set_moments(x: np.ndarray, membership: np.ndarray, *, quantized: tuple[np.ndarray, np.ndarray] | None = None) -> Moments:
    """Moments of the item sets given by a ``(n, g)`` 0/1 membership matrix, as two GEMMs.

    ``indicatorᵀ @ Xq`` and ``indicatorᵀ @ Xq²`` in float64: exact (see module docstring).
    """
    xq, xq2 = quantized if quantized is not None else quantize(x)
    ind = membership.astype(np.float64, copy=False)
    return Moments(membership.sum(axis=0, dtype=np.int64), ind.T @ xq, ind.T @ xq2)


def class_moments(x: np.ndarray, labels: np.ndarray, keep: np.ndarray, k: int,
                  *, quantized: tuple[np.ndarray, np.ndarray] | None = None) -> Moments:
    """Moments of the k per-class sets ``{i : labels_i = c, keep_i}``."""
    onehot = np.zeros((len(labels), k), dtype=np.float64)
    rows = np.flatnonzero(keep)
    onehot[rows, labels[rows]] = 1.0
    return set_moments(x, onehot, quantized=quantized)


def cross_variance(mu_a: np.ndarray, var_a: np.ndarray, mu_b: np.ndarray, var_b: np.ndarray) -> np.ndarray:
    """``Σ_{x∈A} Σ_{y∈B} (x−y)² / (2 n_A n_B)`` in its exact O(d) moment form."""
    return ((mu_a - mu_b) ** 2 + var_a + var_b) / 2.0


def cross_deviation_ratio(mu_a: np.ndarray, var_a: np.ndarray, mu_b: np.ndarray, var_b: np.ndarray) -> np.ndarray:
    """The article's score ``r_j = sqrt(xv_j / (σ_A σ_B))`` (≥ 1; large = discriminative).

    A dimension where either side has zero spread gets ``+inf`` if the means differ (perfectly
    separating) and 1 if they do not.
    """
    xv = cross_variance(mu_a, var_a, mu_b, var_b)
    denom = np.sqrt(var_a) * np.sqrt(var_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.sqrt(xv / denom)
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


def filtered_moments(x: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, cos_min: float,
                     diff_min: float, per_pair: bool, keep: np.ndarray | None = None) -> Moments:
    """The statistics step for one block: moments of every pair side's filtered set.

    Side ``a`` of pair ``(a, b)`` is ``{i : labels_i = a, S_ia ≥ cos_min, S_ia − S_ib ≥ diff_min}``
    (and ``keep_i``, when given: a further filter decided by the caller).
    """
    n, k = scores.shape
    rows = np.arange(n)
    top = scores[rows, labels] if n else np.zeros(0, np.float32)
    keep = (top >= cos_min) if keep is None else keep & (top >= cos_min)
    q = quantize(x)
    if not per_pair:
        return class_moments(x, labels, keep, k, quantized=q)
    member = np.zeros((n, k * k), dtype=np.float64)
    diff = top[:, None] - scores  # (n, k): S_ia − S_ib for the item's own a
    ok = keep[:, None] & (diff >= diff_min)
    ok[rows, labels] = False  # no pair (a, a)
    r, b = np.nonzero(ok)
    member[r, labels[r] * k + b] = 1.0
    return set_moments(x, member, quantized=q)
