"""Pair masks and pair weights from merged moments (METHOD.md §2–3): pure NumPy, no Dask."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .moments import Moments, cross_deviation_ratio, set_index


def all_pairs(k: int) -> np.ndarray:
    """Every unordered class pair ``(a, b)`` with ``a < b``, in lexicographic order: ``(P, 2)``."""
    a, b = np.triu_indices(k, 1)
    return np.stack([a, b], axis=1).astype(np.int32)


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


def top_dims(score: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` indices of largest score (ties by lower index), ascending."""
    order = np.argsort(-score, axis=-1, kind="stable")[..., :m]
    return np.sort(order, axis=-1).astype(np.int32)


@dataclass(frozen=True)
class PairMasks:
    """Everything the tourney needs for one view.

    ``pairs`` ``(P, 2)``; ``dims`` ``(P, m)`` int32; ``weights`` ``(P, d)`` float32 with
    ``w_ab = ĉ_a|M − ĉ_b|M`` (each restricted to ``M_ab``, re-normalised; zero elsewhere);
    ``n_a``/``n_b`` the set sizes; ``fallback`` where a side had fewer than ``min_items`` items.
    """

    k: int
    pairs: np.ndarray
    dims: np.ndarray
    weights: np.ndarray
    n_a: np.ndarray
    n_b: np.ndarray
    fallback: np.ndarray

    def pair_index(self) -> np.ndarray:
        """``(k, k)`` lookup: pair row of ``(a, b)`` (either order), ``-1`` on the diagonal."""
        idx = np.full((self.k, self.k), -1, dtype=np.int64)
        p = np.arange(len(self.pairs))
        idx[self.pairs[:, 0], self.pairs[:, 1]] = p
        idx[self.pairs[:, 1], self.pairs[:, 0]] = p
        return idx


def pair_weights(classes: np.ndarray, pairs: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """``w_ab`` per pair: the difference of the two prompts restricted to ``M_ab``, each re-normalised."""
    p = np.arange(len(pairs))[:, None]
    ca = classes[pairs[:, 0]][p, dims].astype(np.float64)
    cb = classes[pairs[:, 1]][p, dims].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ca /= np.linalg.norm(ca, axis=1, keepdims=True)
        cb /= np.linalg.norm(cb, axis=1, keepdims=True)
    w = np.zeros((len(pairs), classes.shape[1]), dtype=np.float64)
    w[p, dims] = np.nan_to_num(ca) - np.nan_to_num(cb)
    return w.astype(np.float32)


def fit_masks(moments: Moments, classes: np.ndarray, *, m: int, min_items: int, per_pair: bool,
              pairs: np.ndarray | None = None) -> PairMasks:
    """Score every dimension of every pair and keep the ``m`` most discriminative.

    A pair with fewer than ``min_items`` items on either side falls back to the ``m`` dimensions
    where the two (normalised) class prompts differ most: the only evidence left without data.
    """
    k, d = classes.shape
    pairs = all_pairs(k) if pairs is None else pairs
    a, b = pairs[:, 0], pairs[:, 1]
    ia, ib = set_index(a, b, k, per_pair), set_index(b, a, k, per_pair)
    mu, var = moments.mean_var()
    n_a, n_b = moments.n[ia], moments.n[ib]
    fallback = (n_a < min_items) | (n_b < min_items)
    score = cross_deviation_ratio(mu[ia], var[ia], mu[ib], var[ib])
    if fallback.any():
        score[fallback] = np.abs(classes[a[fallback]] - classes[b[fallback]])
    dims = top_dims(np.nan_to_num(score, nan=0.0), m)
    return PairMasks(k, pairs, dims, pair_weights(classes, pairs, dims), n_a, n_b, fallback)
