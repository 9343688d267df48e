"""The tourney (METHOD.md §3): pair decisions as one product, then a seeded bracket. Pure NumPy.

Within a match the item's own masked norm is common to both sides, so match ``(a, b)`` is decided by
the sign of ``x · w_ab`` (see :func:`pairwise_dask.masks.pair_weights`): one ``X Wᵀ`` product gives
every pair decision of a block, and the bracket only indexes into it. Dividing by ``‖x|M_ab‖`` turns
the sign into the cosine margin used for confidence and ranking.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .arrays import mix64
from .base import chunked_matmul
from .masks import PairMasks

_ROUND = np.uint64(0xD1B54A32D192ED03)
_CLASS = np.uint64(0x8CB92BA72F3D8DD7)


def pair_decisions(x: np.ndarray, masks: PairMasks) -> np.ndarray:
    """``D = X Wᵀ``: ``D[i, p] > 0`` means the first class of pair ``p`` beats the second."""
    return chunked_matmul(x, np.ascontiguousarray(masks.weights.T))


def masked_margin(x: np.ndarray, masks: PairMasks, pair: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Cosine margin ``x·w_p / ‖x|M_p‖`` of each item's pair ``pair[i]`` (``raw`` = ``x·w_p``)."""
    sub = np.take_along_axis(x, masks.dims[pair], axis=1).astype(np.float64)
    norm = np.sqrt(np.einsum("ij,ij->i", sub, sub))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norm > 0, raw / norm, 0.0)
    return out.astype(np.float32)


def bracket_keys(id_hash: np.ndarray, seed: int, rnd: int, classes: np.ndarray) -> np.ndarray:
    """Random sort keys of the classes still in play: a pure function of (seed, id, round, class)."""
    with np.errstate(over="ignore"):
        salt = mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ (np.uint64(rnd + 1) * _ROUND))
        cls = mix64(classes.astype(np.uint64) * _CLASS + salt)
    return mix64(id_hash[:, None] ^ cls)


class Result(NamedTuple):
    """Per item: the winning class, and the pair and raw decision value of its final match."""

    label: np.ndarray       # (n,) int32
    final_pair: np.ndarray  # (n,) int64 pair row
    final_raw: np.ndarray   # (n,) float32, x·w of the final (sign oriented to the pair's order)


def play_bracket(d: np.ndarray, pair_index: np.ndarray, id_hash: np.ndarray, *, seed: int,
                 players: np.ndarray | None = None) -> Result:
    """Knockout bracket for every item at once.

    Each round the classes still in play are put in a random order (keys from
    :func:`bracket_keys`) and paired off; an odd one out (the last in that order) gets a bye.
    Match ``(a, b)``, ``a < b``, goes to ``a`` when ``D[i, pair(a, b)] ≥ 0`` (an exact tie to the
    lower class index). ``players`` ``(n, t)`` restricts the bracket (the top-t variant); by
    default every item plays all ``k`` classes.
    """
    n = d.shape[0]
    k = pair_index.shape[0]
    alive = np.broadcast_to(np.arange(k, dtype=np.int64), (n, k)) if players is None else players.astype(np.int64)
    rows = np.arange(n)[:, None]
    final_pair = np.full(n, -1, np.int64)
    final_raw = np.zeros(n, np.float32)
    rnd = 0
    while alive.shape[1] > 1:
        order = np.argsort(bracket_keys(id_hash, seed, rnd, alive), axis=1, kind="stable")
        alive = np.take_along_axis(alive, order, axis=1)
        half = alive.shape[1] // 2
        left, right = alive[:, 0:2 * half:2], alive[:, 1:2 * half:2]
        lo, hi = np.minimum(left, right), np.maximum(left, right)
        p = pair_index[lo, hi]
        raw = d[rows, p]
        winners = np.where(raw >= 0, lo, hi)
        if half == 1 and alive.shape[1] == 2:
            final_pair, final_raw = p[:, 0], raw[:, 0]
        alive = np.concatenate([winners, alive[:, 2 * half:]], axis=1)
        rnd += 1
    return Result(alive[:, 0].astype(np.int32), final_pair, final_raw)


def play_round_robin(d: np.ndarray, margins: np.ndarray, pairs: np.ndarray, k: int) -> np.ndarray:
    """Every pair decided; most wins; ties broken by the summed cosine margin, then lower index."""
    win_a = (d >= 0).astype(np.float64)
    onehot_a = np.zeros((len(pairs), k))
    onehot_b = np.zeros((len(pairs), k))
    onehot_a[np.arange(len(pairs)), pairs[:, 0]] = 1
    onehot_b[np.arange(len(pairs)), pairs[:, 1]] = 1
    wins = win_a @ onehot_a + (1 - win_a) @ onehot_b
    total = margins.astype(np.float64) @ (onehot_a - onehot_b)
    # wins are integers ≤ k−1, so a scaled margin in (−0.5, 0.5) only breaks ties
    scale = np.abs(total).max(axis=1, keepdims=True) * 2.0 + 1e-300
    return np.argmax(wins + total / scale / 1.0000001, axis=1).astype(np.int32)
