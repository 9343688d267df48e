"""Bracket, pair decisions and masks on small hand-checkable cases."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pairwise_dask.arrays import hash_ids
from pairwise_dask.base import base_labels, chunked_matmul, CHUNK_ROWS
from pairwise_dask.masks import all_pairs, fit_masks, pair_lookup, pair_weights, top_dims
from pairwise_dask.moments import class_moments
from pairwise_dask.tourney import masked_margin, pair_decisions, play_bracket, play_round_robin


def _decisions_for_ranking(rank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """D where class a beats b iff rank[a] > rank[b], for every item."""
    pairs = all_pairs(k)
    d = (rank[:, pairs[:, 0]] - rank[:, pairs[:, 1]]).astype(np.float32)
    return d, pair_lookup(pairs, k)


def test_bracket_winner_of_a_total_order_is_its_top():
    rng = np.random.default_rng(0)
    for k in (2, 3, 5, 13, 21):
        rank = np.stack([rng.permutation(k) for _ in range(300)])
        d, idx = _decisions_for_ranking(rank, k)
        res = play_bracket(d, idx, hash_ids(pa.array(np.arange(300))), seed=7)
        assert np.array_equal(res.label, rank.argmax(1))


def test_bracket_depends_on_id_and_seed_not_on_row_position():
    rng = np.random.default_rng(1)
    k, n = 9, 400
    d = rng.normal(size=(n, k * (k - 1) // 2)).astype(np.float32)  # intransitive: order matters
    _, idx = _decisions_for_ranking(np.zeros((1, k)), k)
    h = hash_ids(pa.array([f"id{i}" for i in range(n)]))
    a = play_bracket(d, idx, h, seed=3).label
    perm = rng.permutation(n)
    b = play_bracket(d[perm], idx, h[perm], seed=3).label
    assert np.array_equal(a[perm], b)
    assert not np.array_equal(a, play_bracket(d, idx, h, seed=4).label)  # the seed matters
    assert ((a >= 0) & (a < k)).all()


def test_bracket_draw_depends_on_the_id_and_the_round():
    """Items with the same decisions but other ids play other brackets; each round draws anew."""
    from pairwise_dask.tourney import bracket_keys

    k, n = 3, 600
    # rock-paper-scissors: 0 beats 1, 1 beats 2, 2 beats 0; the winner is decided by the draw
    d, idx = np.zeros((n, 3), np.float32), pair_lookup(all_pairs(k), k)
    d[:, idx[0, 1]], d[:, idx[1, 2]], d[:, idx[0, 2]] = 1.0, 1.0, -1.0
    h = hash_ids(pa.array([f"id{i}" for i in range(n)]))
    won = np.bincount(play_bracket(d, idx, h, seed=5).label, minlength=k)
    assert (won > n / 6).all(), won  # each class wins for some ids: the draw is per item
    cls = np.broadcast_to(np.arange(k), (n, k))
    r0, r1 = bracket_keys(h, 5, 0, cls), bracket_keys(h, 5, 1, cls)
    assert (r0 != r1).all() and (r0 != bracket_keys(h, 6, 0, cls)).all()
    # the round's order differs between rounds for most items (not one draw reused)
    assert (np.argsort(r0, axis=1) != np.argsort(r1, axis=1)).any(axis=1).mean() > 0.7


def test_round_robin_ties_go_to_the_larger_summed_margin():
    k = 3
    pairs, idx = all_pairs(k), pair_lookup(all_pairs(k), k)
    m = np.zeros((2, 3), np.float32)  # a 3-cycle: every class has one win
    m[0, idx[0, 1]], m[0, idx[1, 2]], m[0, idx[0, 2]] = 0.1, 0.5, -0.2  # sums: 0 -0.1, 1 +0.4, 2 -0.3
    m[1, idx[0, 1]], m[1, idx[1, 2]], m[1, idx[0, 2]] = 0.6, 0.1, -0.2  # sums: 0 +0.4, 1 -0.5, 2 +0.1
    assert play_round_robin(m, m, pairs, k).tolist() == [1, 0]


def test_round_robin_most_wins():
    rank = np.array([[0, 3, 1, 2], [2, 1, 0, 3]])
    d, idx = _decisions_for_ranking(rank, 4)
    assert play_round_robin(d, d, all_pairs(4), 4).tolist() == [1, 3]


def test_chunked_matmul_rows_do_not_depend_on_block_size():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(CHUNK_ROWS + 37, 50)).astype(np.float32)
    w = rng.normal(size=(50, 9)).astype(np.float32)
    whole = chunked_matmul(x, w)
    for cut in (1, 5, CHUNK_ROWS - 1, CHUNK_ROWS + 1):
        parts = np.concatenate([chunked_matmul(x[:cut], w), chunked_matmul(x[cut:], w)])
        assert np.array_equal(whole, parts)


def test_pair_decision_sign_equals_masked_cosine_comparison():
    """The identity of METHOD.md §3: sign(x·w_ab) decides cosine on M_ab, margin = Δcos."""
    rng = np.random.default_rng(4)
    k, d = 4, 20
    c = rng.normal(size=(k, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = rng.normal(size=(50, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    base = base_labels(x, c)
    masks = fit_masks(class_moments(x, base.label, np.ones(50, bool), k), c, m=7, min_items=1, per_pair=False)
    dd = pair_decisions(x, masks)
    for p, (a, b) in enumerate(masks.pairs):
        dims = masks.dims[p]
        xs = x[:, dims] / np.linalg.norm(x[:, dims], axis=1, keepdims=True)
        ca, cb = c[a, dims] / np.linalg.norm(c[a, dims]), c[b, dims] / np.linalg.norm(c[b, dims])
        delta = xs @ ca - xs @ cb
        assert np.allclose(masked_margin(x, masks, np.full(50, p), dd[:, p]), delta, atol=1e-5)
        assert ((dd[:, p] >= 0) == (delta >= 0)).mean() > 0.98  # equal but for float ties


def test_masked_margin_blocks_equal_direct_and_any_split():
    """Masked margins go in row blocks: across several (ragged) blocks they equal the direct
    formula, and bit for bit whatever rows share a call (partition invariance)."""
    from pairwise_dask.base import CHUNK_ROWS

    rng = np.random.default_rng(7)
    k, d, n = 5, 24, 2 * CHUNK_ROWS + 333
    c = rng.normal(size=(k, d)).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[3] = 0.0  # no norm on any mask: margin 0
    masks = fit_masks(class_moments(x[4:], base_labels(x[4:], c).label, np.ones(n - 4, bool), k), c, m=6,
                      min_items=1, per_pair=False)
    assert masks.dims.dtype == np.int32
    pair = rng.integers(0, len(masks.pairs), n)
    raw = rng.normal(size=n).astype(np.float32)
    got = masked_margin(x, masks, pair, raw)
    sub = np.take_along_axis(x, masks.dims[pair].astype(np.int64), axis=1).astype(np.float64)
    norm = np.sqrt((sub * sub).sum(axis=1))
    want = np.where(norm > 0, raw / np.where(norm > 0, norm, 1.0), 0.0)
    assert got.dtype == np.float32 and got[3] == 0.0
    np.testing.assert_allclose(got, want, rtol=1e-6)
    cuts = [0, 1, 700, CHUNK_ROWS + 5, n]
    split = np.concatenate([masked_margin(x[a:b], masks, pair[a:b], raw[a:b]) for a, b in zip(cuts, cuts[1:])])
    np.testing.assert_array_equal(split, got)


def test_top_dims_ties_by_lower_index_and_fallback():
    assert top_dims(np.array([1.0, 3.0, 3.0, 2.0]), 2).tolist() == [1, 2]
    assert top_dims(np.array([5.0, 5.0, 5.0]), 2).tolist() == [0, 1]
    c = np.eye(3, 5, dtype=np.float32)
    x = c[[0, 0, 1]]
    masks = fit_masks(class_moments(x, np.array([0, 0, 1]), np.ones(3, bool), 3), c, m=2, min_items=2,
                      per_pair=False)
    assert masks.fallback.tolist() == [True, True, True]  # class 1 has 1 item, class 2 none
    w = pair_weights(c, masks.pairs, masks.dims)
    assert np.allclose(np.abs(w).sum(1), 2.0)
