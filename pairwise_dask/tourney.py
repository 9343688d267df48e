"""The tourney (METHOD.md §3): pair decisions as one product, then a seeded bracket. Pure NumPy.

Within a match the item's own masked norm is common to both sides, so match ``(a, b)`` is decided by
the sign of ``x · w_ab`` (see :func:`pairwise_dask.masks.pair_weights`): one ``X Wᵀ`` product gives
every pair decision of a block, and the bracket only indexes into it. Dividing by ``‖x|M_ab‖`` turns
the sign into the cosine margin used for confidence and ranking.

With many classes (k = 1000: 499,500 pairs) that product is out of reach, and useless: the top-t
bracket only plays pairs among an item's ``t`` best base classes. Then each match's decision is
gathered: ``x[M_p] · w_p[M_p]`` from the ``(P, m)`` sparse weights of the pairs that can play
(:func:`gather_decisions`), so an item costs ``O(matches · m)``, whatever ``k``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from .arrays import mix64, mix64_inplace
from .base import CHUNK_ROWS, chunked_matmul
from .masks import PairMasks, top_dims

_ROUND = np.uint64(0xD1B54A32D192ED03)
_CLASS = np.uint64(0x8CB92BA72F3D8DD7)


def _affine(masks: PairMasks) -> bool:
    """Decisions with a bias (the discriminant) depend on the rows' scale; cosine ones do not."""
    return masks.bias is not None


def pair_decisions(x: np.ndarray, masks: PairMasks, scale: np.ndarray | None = None) -> np.ndarray:
    """``D = X Wᵀ`` (+ the pairs' bias, if any): ``D[i, p] > 0`` means the first class of pair ``p``
    beats the second.

    ``x`` holds normalised rows, or raw rows with ``scale`` their inverse norms. A cosine decision
    (no bias) is scale-free, its sign and masked margin alike, so ``scale`` is only applied to a
    discriminant's ``x·w``, before its bias.
    """
    d = chunked_matmul(x, np.ascontiguousarray(masks.weights.T))
    if _affine(masks):
        if scale is not None:
            d *= scale[:, None]
        d += masks.bias
    return d


def gather_decisions(x: np.ndarray, masks: PairMasks, pair: np.ndarray,
                     scale: np.ndarray | None = None) -> np.ndarray:
    """``x_i · w_{pair[i, j]}`` for a ``(n, h)`` array of pair rows, from the sparse ``(P, m)`` weights
    (``scale`` and the bias as in :func:`pair_decisions`).

    Equals the matching entries of :func:`pair_decisions` up to rounding (accumulated here in
    float64 over the ``m`` mask dimensions only). Row blocks of :data:`CHUNK_ROWS` bound the
    ``(rows, h, m)`` gather; each row's value depends on that row alone (partition-invariant).
    """
    pair = np.asarray(pair)
    if pair.size and pair.min() < 0:
        raise ValueError("a match between two classes whose pair has no mask (not collected in pass 1)")
    vals = masks.sparse_values()
    dims = masks.dims
    x = np.ascontiguousarray(x)
    d = x.shape[1]
    out = np.empty(pair.shape, dtype=np.float32)
    offsets = np.arange(min(len(pair), CHUNK_ROWS), dtype=np.int64).reshape((-1,) + (1,) * pair.ndim) * d
    for s in range(0, len(pair), CHUNK_ROWS):
        p = pair[s:s + CHUNK_ROWS]
        sub = _row_entries(x[s:s + CHUNK_ROWS], np.take(dims, p, axis=0), offsets)
        out[s:s + CHUNK_ROWS] = np.einsum("rhm,rhm->rh", sub.astype(np.float64),
                                          np.take(vals, p, axis=0).astype(np.float64))
    if _affine(masks) and out.size:
        if scale is not None:
            out *= scale.reshape((-1,) + (1,) * (out.ndim - 1))
        out += masks.bias[pair]
    return out


def _row_entries(block: np.ndarray, cols: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``block[i, cols[i, ...]]`` of a C-contiguous row block, by flat indices and ``np.take``
    (a third to a half faster than indexing with (row, column) index arrays or take_along_axis).
    ``offsets``: ``arange(rows) · d``, shaped to broadcast against ``cols``, for at least its rows."""
    return np.take(block.reshape(-1), offsets[:len(cols)] + cols)


def use_gather(n_pairs: int, d: int, matches: int, m: int, *, ratio: float = 16.0) -> bool:
    """Gather per match when one product (``P·d`` per item) costs over ``ratio`` × the gathers
    (``matches·m`` per item); ``ratio`` prices a gathered multiply-add against a BLAS one."""
    return n_pairs * d > ratio * matches * m


def gathers(k: int, d: int, m: int, top_t: int | None) -> bool:
    """Whether the top-t bracket (``top_t``; ``None``: another mode) gathers each match's decision
    from sparse ``(P, m)`` weights instead of one ``X Wᵀ`` product (:func:`use_gather`, priced at
    all ``k(k−1)/2`` pairs). Decided by the settings and dimensions alone, never by which pairs a
    catalog's items happen to need: a run, ``apply`` of its model and ``PairwiseLabeler`` then do
    the same arithmetic, so their margins agree bit for bit (the two forms round differently)."""
    return top_t is not None and top_t < k and use_gather(k * (k - 1) // 2, d, top_t - 1, m)


def top_classes(scores: np.ndarray, t: int) -> np.ndarray:
    """Each row's ``t`` best classes ``(n, t)`` int64, best first (ties: lower class index).

    :func:`~pairwise_dask.masks.top_dims` keeps this ``O(k)`` per item (the set equals a stable
    argsort's first ``t`` exactly); only the ``t`` chosen are then sorted.
    """
    n, k = scores.shape
    if t >= k:
        return np.argsort(-scores, axis=1, kind="stable").astype(np.int64)
    cols = top_dims(scores, t)  # each row's t classes, ascending
    cand = np.take_along_axis(scores, cols, axis=1)
    order = np.argsort(-cand, axis=1, kind="stable")  # best first; ties keep the lower index first
    return np.take_along_axis(cols, order, axis=1).astype(np.int64)


def play_pairs(players: np.ndarray, k: int) -> np.ndarray:
    """Sorted unique ids (``a·k + b``, ``a < b``) of every pair two of a row's players could play.

    A mergeable set (merge with ``np.union1d``): the pass-1 summary of which pair masks the top-t
    bracket will need. At most ``n · t(t−1)/2`` and ``k(k−1)/2`` ids.
    """
    n, t = players.shape
    if n == 0 or t < 2:
        return np.zeros(0, np.int64)
    i, j = np.triu_indices(t, 1)
    a, b = players[:, i].astype(np.int64), players[:, j].astype(np.int64)
    seen = np.zeros(k * k, dtype=bool)  # a bitmap: O(k²) bits once, not a sort of n·t² ids
    seen[np.minimum(a, b) * k + np.maximum(a, b)] = True
    return np.flatnonzero(seen).astype(np.int64)


def masked_margin(x: np.ndarray, masks: PairMasks, pair: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Cosine margin ``x·w_p / ‖x|M_p‖`` of each item's pair ``pair[i]`` (``raw`` = ``x·w_p``).

    A discriminant's decision is its margin already (standard-deviation units): ``raw`` unchanged.
    Row blocks of :data:`CHUNK_ROWS` keep the gathered ``(rows, m)`` entries in cache; each row's
    norm is summed over its own entries only (no buffered casting), so it is partition-invariant.
    """
    if masks.decision == "discriminant":
        return np.asarray(raw, dtype=np.float32)
    x = np.ascontiguousarray(x)
    n, d = x.shape
    out = np.empty(n, np.float32)
    offsets = np.arange(min(n, CHUNK_ROWS), dtype=np.int64)[:, None] * d
    for s in range(0, n, CHUNK_ROWS):
        p = pair[s:s + CHUNK_ROWS]
        sub = _row_entries(x[s:s + CHUNK_ROWS], masks.dims[p], offsets).astype(np.float64)
        norm = np.sqrt(np.einsum("ij,ij->i", sub, sub))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + len(p)] = np.where(norm > 0, raw[s:s + len(p)] / norm, 0.0)
    return out


def bracket_keys(id_hash: np.ndarray, seed: int, rnd: int, classes: np.ndarray) -> np.ndarray:
    """Random sort keys of the classes still in play: a pure function of (seed, id, round, class)."""
    with np.errstate(over="ignore"):
        salt = mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ (np.uint64(rnd + 1) * _ROUND))
        # a class's key part depends on the class alone: hash each class once, then look it up
        top = int(classes.max()) + 1 if classes.size else 0
        cls = mix64(np.arange(top, dtype=np.uint64) * _CLASS + salt)
    return mix64_inplace(id_hash[:, None] ^ cls[classes])


class Result(NamedTuple):
    """Per item: the winning class, and the pair and raw decision value of its final match."""

    label: np.ndarray       # (n,) int32
    final_pair: np.ndarray  # (n,) int64 pair row
    final_raw: np.ndarray   # (n,) float32, x·w of the final (sign oriented to the pair's order)


def play_bracket(d: np.ndarray, pair_index: np.ndarray, id_hash: np.ndarray, *, seed: int,
                 players: np.ndarray | None = None) -> Result:
    """Knockout bracket for every item at once, reading decisions from ``D = X Wᵀ``.

    Each round the classes still in play are put in a random order (keys from
    :func:`bracket_keys`) and paired off; an odd one out (the last in that order) gets a bye.
    Match ``(a, b)``, ``a < b``, goes to ``a`` when ``D[i, pair(a, b)] ≥ 0`` (an exact tie to the
    lower class index). ``players`` ``(n, t)`` restricts the bracket (the top-t variant); by
    default every item plays all ``k`` classes.
    """
    rows = np.arange(d.shape[0])[:, None]
    return _play(lambda p: d[rows, p], d.shape[0], pair_index, id_hash, seed=seed, players=players)


def play_bracket_gather(x: np.ndarray, masks: PairMasks, pair_index: np.ndarray, id_hash: np.ndarray, *,
                        seed: int, players: np.ndarray, scale: np.ndarray | None = None) -> Result:
    """The same bracket as :func:`play_bracket`, each round's decisions gathered per match
    (:func:`gather_decisions`): no ``k²`` product, cost ``O(n · t · m)``."""
    return _play(lambda p: gather_decisions(x, masks, p, scale), x.shape[0], pair_index, id_hash, seed=seed,
                 players=players)


def _play(decide: Callable[[np.ndarray], np.ndarray], n: int, pair_index: np.ndarray, id_hash: np.ndarray,
          *, seed: int, players: np.ndarray | None) -> Result:
    """The bracket itself; ``decide(p)`` gives ``x_i · w_{p[i, j]}`` for ``(n, h)`` pair rows ``p``."""
    k = pair_index.shape[0]
    alive = np.broadcast_to(np.arange(k, dtype=np.int64), (n, k)) if players is None else players.astype(np.int64)
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
        if p.size and p.min() < 0:  # a pair pass 1 did not collect: a bug, never a silent column −1
            raise ValueError("a match between two classes whose pair has no mask")
        raw = decide(p)
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


# --- margins of every pair, view fusion, the mode dispatcher ------------------------------------

def pair_margins(x: np.ndarray, masks: PairMasks, d: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Cosine margins of every pair: ``D / ‖x|M_p‖`` (one more product, ``(x∘x) Maskᵀ``).

    Same signs as ``D`` (so any tourney played on them gives the same labels), but in cosine units,
    comparable across pairs and views: what fusion, round-robin ties and the review priority need.
    ``out=d`` overwrites ``d`` in place (pass 2 keeps only one ``(n, P)`` matrix per view).
    A discriminant's decisions are margins already (standard-deviation units): returned as they are.
    """
    if masks.decision == "discriminant":
        if out is None:
            return d.copy()
        if out is not d:
            out[...] = d
        return out
    mask = np.zeros((len(masks.pairs), x.shape[1]), np.float32)
    mask[np.arange(len(masks.pairs))[:, None], masks.dims] = 1.0
    norms = np.sqrt(np.maximum(chunked_matmul(x, np.ascontiguousarray(mask.T), square=True), 0))
    out = np.empty_like(d) if out is None else out
    np.divide(d, norms, out=out, where=norms > 0)
    out[~(norms > 0)] = 0.0  # a NaN norm too (rows as read: arrays.checked_rows keeps them in range)
    return out


def fuse_margins(margins: list[np.ndarray], separations: list[np.ndarray] | None = None) -> np.ndarray:
    """View fusion of pair margins (same pair order in every view); one view: its margins unchanged.

    Without ``separations``: the mean over views. Each view's margin is on that view's own mask
    (a cosine margin, or a discriminant's in standard deviations), so the mean is the evidence of
    all views together.

    With ``separations`` (``fuse = "llr"``; each view's per-pair ``Δ``, see
    :func:`~pairwise_dask.masks.discriminant_values`): ``Σ_v Δ_v m_v / sqrt(Σ_v Δ_v²)``. A
    discriminant margin ``m`` is a log-likelihood ratio divided by ``Δ``, so this is the views'
    log-likelihood ratios summed (independent views' evidence adds), put back in standard-deviation
    units of the joint discriminant. A view that separates a pair better weighs more on that pair;
    where no view separates it (every ``Δ`` = 0) the views weigh the same.
    """
    if len(margins) == 1:
        return margins[0]
    if separations is None:
        out = margins[0].astype(np.float32, copy=True)
        for m in margins[1:]:
            out += m
        out /= len(margins)
        return out
    sep = [np.asarray(s, np.float64) for s in separations]
    joint = np.sqrt(sum(s * s for s in sep))
    safe = np.where(joint > 0, joint, 1.0)
    weights = [np.where(joint > 0, s / safe, 1.0 / np.sqrt(len(sep))).astype(np.float32) for s in sep]
    out = np.multiply(margins[0], weights[0], dtype=np.float32)
    for m, w in zip(margins[1:], weights[1:]):
        out += m * w
    return out


def pair_signs(pairs: np.ndarray, k: int) -> np.ndarray:
    """``(P, k)``: +1 for a pair's first class, −1 for its second (margins → per-class sums)."""
    s = np.zeros((len(pairs), k), np.float32)
    s[np.arange(len(pairs)), pairs[:, 0]] = 1.0
    s[np.arange(len(pairs)), pairs[:, 1]] = -1.0
    return s


def class_scores(margins: np.ndarray, pairs: np.ndarray, k: int) -> np.ndarray:
    """Per item and class: the mean signed margin of the class against each of the ``k − 1`` others.

    A Borda count weighted by margins: it uses every pair decision, not only the matches one
    bracket happened to play, so it ranks a proposed label against any other label (the review
    priority) without depending on the bracket's draw.
    """
    # fixed row blocks: a row's score (and so its label in mode "score") is partition-invariant
    return chunked_matmul(np.asarray(margins, np.float32), pair_signs(pairs, k)) / np.float32(max(k - 1, 1))


def runner_up(margins: np.ndarray, pair_index: np.ndarray, label: np.ndarray) -> np.ndarray:
    """The class the winner beat by the least margin (its closest rival)."""
    k = pair_index.shape[0]
    p = pair_index[label[:, None], np.arange(k)[None, :]]  # (n, k), -1 on the winner itself
    m = np.abs(np.take_along_axis(margins, np.maximum(p, 0), axis=1))
    m[p < 0] = np.inf
    return np.argmin(m, axis=1)


def decide(margins: np.ndarray, pairs: np.ndarray, pair_index: np.ndarray, id_hash: np.ndarray, *,
           mode: str, seed: int, players: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One label per item from its pair margins, by ``mode``; and the margin that decided it.

    ``bracket`` / ``top-t`` (``players`` restricts the bracket): the final match's |margin|.
    ``round-robin``: every pair played, most wins (ties by summed margin); the |margin| against
    the closest rival.
    ``score``: the class with the best :func:`class_scores` (its mean signed margin against every
    other class: a Borda count weighted by margins; ties to the lower index); the lead of that
    score over the runner-up's.
    """
    n, k = margins.shape[0], pair_index.shape[0]
    if mode == "score":
        sc = class_scores(margins, pairs, k)
        label = sc.argmax(axis=1).astype(np.int32)
        if n == 0 or k < 2:
            return label, np.zeros(n, np.float32)
        top2 = np.partition(sc, k - 2, axis=1)[:, -2:]
        return label, (top2[:, 1] - top2[:, 0]).astype(np.float32)
    if mode == "round-robin":
        label = play_round_robin(margins, margins, pairs, k)
        if n == 0:
            return label, np.zeros(0, np.float32)
        p = pair_index[label, runner_up(margins, pair_index, label)]
        return label, np.abs(margins[np.arange(n), p]).astype(np.float32)
    res = play_bracket(margins, pair_index, id_hash, seed=seed, players=players)
    return res.label, np.abs(res.final_raw).astype(np.float32)
