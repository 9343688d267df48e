"""``rotate = pca``: every view turned onto the principal axes of its items (label-free), before
any statistic. Pure NumPy, no Dask.

The masks and the diagonal statistics of METHOD.md §2 work dimension by dimension; embedding
dimensions are strongly correlated, so a per-dimension model wastes most of what the moments see.
An orthogonal rotation ``R`` (the eigenvectors of the items' covariance) changes no cosine (base
labels stay the same), but it makes the coordinates uncorrelated over the catalog, which is what
a per-dimension mask and a diagonal discriminant assume. ``R`` comes from one more set of
mergeable moments, the ``(d, d)`` Gram ``Σ x xᵀ`` of every item, computed exactly: ``x`` is
quantised to multiples of ``2**-GRAM_BITS``, so every product is a whole number of ``2**-2·GRAM_BITS``
quanta and every partial sum is exact in float64 (up to ``2**(53 − 2·GRAM_BITS)`` items), whatever
the partitioning or the order of the merge.

The basis needs a good estimate of the covariance, not every item: past ``rotate_sample`` items
the Gram is taken over a fixed sample, the items whose id hash falls below a threshold set by the
catalog's row count (:func:`sample_below`). Which items are in it depends on their ids alone, so
the basis is still the same for any partitioning, and the pass costs ``O(sample · d²)``, not
``O(n · d²)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRAM_BITS = 13  # resolution 1.2e-4 of each entry: plenty for a basis, exact sums up to 2**27 items
_G = float(2 ** GRAM_BITS)


@dataclass(frozen=True)
class Gram:
    """Per view: item count, ``Σ xq`` ``(d,)`` and ``Σ xq xqᵀ`` ``(d, d)`` in quanta (exact sums)."""

    n: dict[str, int]
    s1: dict[str, np.ndarray]
    g: dict[str, np.ndarray]

    def __add__(self, o: "Gram") -> "Gram":
        return Gram({v: self.n[v] + o.n[v] for v in self.n}, {v: self.s1[v] + o.s1[v] for v in self.s1},
                    {v: self.g[v] + o.g[v] for v in self.g})


def sample_below(rows: int, sample: int) -> int | None:
    """The id-hash bound of the Gram's sample: items with ``hash < bound`` are in it (about
    ``sample`` of ``rows``); ``None`` when every item is (``sample`` is 0 or at least ``rows``)."""
    if sample <= 0 or rows <= sample:
        return None
    return (sample << 64) // rows  # exact integer arithmetic: no float rounding in the bound


def block_gram(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """``(n, Σ xq, Σ xq xqᵀ)`` of one block (``xq = rint(x · 2**GRAM_BITS)``, float64 integers)."""
    xq = np.rint(np.asarray(x, np.float64) * _G)
    return len(xq), xq.sum(axis=0), xq.T @ xq


def rotation_from_gram(n: int, s1: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The covariance's eigenvectors as columns, largest variance first, float32 ``(d, d)``.

    Each column's sign is fixed (its largest-magnitude entry positive), so the basis is a function
    of the moments alone.
    """
    d = len(s1)
    if n < 2:
        return np.eye(d, dtype=np.float32)
    mu = s1 / n / _G
    cov = g / n / (_G * _G) - np.outer(mu, mu)
    _, vec = np.linalg.eigh((cov + cov.T) / 2)
    vec = vec[:, ::-1]
    big = np.argmax(np.abs(vec), axis=0)
    vec = vec * np.where(vec[big, np.arange(d)] < 0, -1.0, 1.0)
    return np.ascontiguousarray(vec, dtype=np.float32)


def axes_of(gram: Gram, dims: float) -> dict[str, np.ndarray]:
    """Every view's rotation from its merged Gram, truncated to ``dims`` axes (runs on a worker:
    the ``(d, d)`` Grams never travel, and the client fetches the result once)."""
    return {v: truncate(rotation_from_gram(gram.n[v], gram.s1[v], gram.g[v]), dims) for v in gram.n}


def kept_axes(d: int, dims: float) -> int:
    """``r``, the principal axes ``rotate_dims`` keeps of ``d``: a count, a fraction of ``d`` below
    1, or 0 for all of them."""
    return d if dims == 0 else max(1, int(round(dims * d))) if dims < 1 else min(int(dims), d)


def truncate(rotation: np.ndarray, dims: float) -> np.ndarray:
    """The first principal axes only (``rotate_dims``). Every pass after the rotation then works
    on ``r`` coordinates instead of ``d``."""
    r = kept_axes(rotation.shape[1], dims)
    return rotation if r == rotation.shape[1] else np.ascontiguousarray(rotation[:, :r])


def rotate_classes(classes: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Prompts in the rotated basis (re-normalised: float32 rounding only)."""
    c = classes.astype(np.float64) @ rotation.astype(np.float64)
    return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)
