"""Pair masks and pair weights from merged moments (METHOD.md §2–3): pure NumPy, no Dask."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .moments import Moments, cross_deviation_ratio, set_index


def all_pairs(k: int) -> np.ndarray:
    """Every unordered class pair ``(a, b)`` with ``a < b``, in lexicographic order: ``(P, 2)``."""
    a, b = np.triu_indices(k, 1)
    return np.stack([a, b], axis=1).astype(np.int32)


def resolve_dims(dims: float, d: int) -> int:
    """``m`` from an integer count or a fraction of ``d`` (``0 < dims < 1``)."""
    m = int(round(dims * d)) if 0 < dims < 1 else int(dims)
    return max(1, min(m, d))


def top_dims(score: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` indices of largest score (ties by lower index), ascending."""
    order = np.argsort(-score, axis=-1, kind="stable")[..., :m]
    return np.sort(order, axis=-1).astype(np.int32)


@dataclass(frozen=True)
class PairMasks:
    """Everything the tourney needs for one view.

    ``pairs`` ``(P, 2)``; ``dims`` ``(P, m)`` int32; ``weights`` ``(P, d)`` float32 with
    ``w_ab = ĉ_a|M − ĉ_b|M`` (each restricted to ``M_ab``, re-normalised; zero elsewhere);
    ``n_a``/``n_b`` the set sizes; ``fallback`` where a side had fewer than ``min_items`` items;
    ``anchors`` ``(k, d)`` the class vectors the weights were built from (the prompts, or the
    prompts mixed with the class means: :func:`prototypes`); ``None`` means the prompts.
    """

    k: int
    pairs: np.ndarray
    dims: np.ndarray
    weights: np.ndarray
    n_a: np.ndarray
    n_b: np.ndarray
    fallback: np.ndarray
    anchors: np.ndarray | None = None

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
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def fit_masks(moments: Moments, classes: np.ndarray, *, m: int, min_items: int, per_pair: bool,
              pairs: np.ndarray | None = None, mix: float = 0.0) -> PairMasks:
    """Score every dimension of every pair and keep the ``m`` most discriminative.

    A pair with fewer than ``min_items`` items on either side falls back to the ``m`` dimensions
    where the two (normalised) class prompts differ most: the only evidence left without data.
    The pair weights come from :func:`prototypes` (``mix = 0``: the prompts themselves).
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
    anchors = prototypes(classes, moments, mix=mix, per_pair=per_pair, min_items=min_items)
    return PairMasks(k, pairs, dims, pair_weights(anchors, pairs, dims), n_a, n_b, fallback,
                     None if mix <= 0 else anchors)
