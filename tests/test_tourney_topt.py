"""The top-t bracket's bounded-memory path: pair collection, sparse weights, gathered decisions.

On small k every piece is checked against the all-pairs product path it replaces.
"""
from __future__ import annotations

import numpy as np
import pytest

from pairwise_dask import moments as mom
from pairwise_dask.arrays import inverse_norms
from pairwise_dask.base import base_labels
from pairwise_dask.masks import all_pairs, fit_masks, pair_ids, pairs_from_ids
from pairwise_dask.moments import class_moments, filtered_moments
from pairwise_dask.passes import union_sorted
from pairwise_dask.tourney import (gather_decisions, pair_decisions, play_bracket, play_bracket_gather,
                                   play_pairs, top_classes)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _problem(n: int = 3000, k: int = 9, d: int = 48, m: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    classes = _unit(rng.standard_normal((k, d)))
    y = rng.integers(0, k, n)
    x = _unit(classes[y] + 1.5 * rng.standard_normal((n, d)) / np.sqrt(d))
    base = base_labels(x, classes)
    moments = filtered_moments(x, base.scores, base.label, cos_min=-1, diff_min=0, per_pair=False)
    full = fit_masks(moments, classes, m=m, min_items=5, per_pair=False)
    ids = rng.integers(0, 2**63, n, dtype=np.int64).view(np.uint64)
    return x, classes, base, moments, full, ids


def test_gather_equals_product_entries():
    x, classes, base, moments, full, ids = _problem()
    d = pair_decisions(x, full)
    rng = np.random.default_rng(1)
    pair = rng.integers(0, len(full.pairs), (len(x), 5))
    g = gather_decisions(x, full, pair)
    np.testing.assert_allclose(g, np.take_along_axis(d, pair, axis=1), atol=2e-6)


def test_sparse_fit_equals_dense_fit_on_subset():
    x, classes, base, moments, full, ids = _problem()
    sub = full.pairs[::3]
    sparse = fit_masks(moments, classes, m=12, min_items=5, per_pair=False, pairs=sub, dense=False)
    assert sparse.weights is None
    np.testing.assert_array_equal(sparse.dims, full.dims[::3])
    np.testing.assert_array_equal(sparse.values, full.sparse_values()[::3])
    np.testing.assert_array_equal(full.sparse_values(),
                                  np.take_along_axis(full.weights, full.dims.astype(np.int64), axis=1))


@pytest.mark.parametrize("t", [2, 3, 5, 9])
def test_gather_bracket_equals_product_bracket(t):
    x, classes, base, moments, full, ids = _problem()
    k = classes.shape[0]
    players = top_classes(base.scores, t)
    want = play_bracket(pair_decisions(x, full), full.pair_index(), ids, seed=7, players=players)
    # only the pairs the players can meet, sparse: what the job fits for top-t
    pairs = pairs_from_ids(play_pairs(players, k), k)
    sparse = fit_masks(moments, classes, m=12, min_items=5, per_pair=False, pairs=pairs, dense=False)
    got = play_bracket_gather(x, sparse, sparse.pair_index(), ids, seed=7, players=players)
    np.testing.assert_array_equal(got.label, want.label)
    np.testing.assert_array_equal(sparse.pairs[got.final_pair], full.pairs[want.final_pair])
    np.testing.assert_allclose(got.final_raw, want.final_raw, atol=2e-6)


def test_full_players_equals_default_bracket():
    x, classes, base, moments, full, ids = _problem()
    k = classes.shape[0]
    want = play_bracket(pair_decisions(x, full), full.pair_index(), ids, seed=3)
    got = play_bracket_gather(x, full, full.pair_index(), ids, seed=3, players=top_classes(base.scores, k))
    np.testing.assert_array_equal(got.label, want.label)


def test_top_classes_matches_stable_argsort_with_ties():
    rng = np.random.default_rng(2)
    s = rng.integers(0, 6, (500, 20)).astype(np.float32)  # many exact ties
    for t in (1, 2, 5, 19, 20):
        np.testing.assert_array_equal(top_classes(s, t), np.argsort(-s, axis=1, kind="stable")[:, :t])


def test_play_pairs_is_the_set_of_possible_matches_and_merges_by_union():
    rng = np.random.default_rng(3)
    k, t = 30, 4
    players = np.stack([rng.choice(k, t, replace=False) for _ in range(200)])
    want = sorted({min(a, b) * k + max(a, b) for row in players for a in row for b in row if a != b})
    np.testing.assert_array_equal(play_pairs(players, k), want)
    merged = np.union1d(play_pairs(players[:77], k), play_pairs(players[77:], k))
    np.testing.assert_array_equal(merged, want)
    # pass 1's merge (Statistics.__add__) joins the sorted sets by merging their runs
    np.testing.assert_array_equal(union_sorted(play_pairs(players[:77], k), play_pairs(players[77:], k)), want)
    np.testing.assert_array_equal(union_sorted(play_pairs(players[:0], k), play_pairs(players, k)), want)
    np.testing.assert_array_equal(pair_ids(pairs_from_ids(merged, k), k), merged)


def test_pairs_grow_with_items_times_t_squared_not_k_squared():
    rng = np.random.default_rng(4)
    k, t, n = 1000, 4, 50
    players = np.stack([rng.choice(k, t, replace=False) for _ in range(n)])
    assert len(play_pairs(players, k)) <= n * t * (t - 1) // 2 < len(all_pairs(k))


@pytest.mark.parametrize("k", [3, 70])
def test_segment_sum_class_moments_equal_onehot_gemm(monkeypatch, k):
    """Per-class moments (segment sums of float32 quanta) equal the one-hot GEMM on float64 quanta
    bit for bit, with raw rows and inverse norms, empty classes, extreme entries and label runs
    cut across the quantising blocks."""
    rng = np.random.default_rng(5)
    x = _unit(rng.standard_normal((1000, 16)))
    x[:7] *= rng.choice([1e-30, 1e-8, 1e3, 1e9], size=(7, 1)).astype(np.float32)
    labels = rng.integers(0, k, 1000).astype(np.int32)
    labels[labels == 1] = 2  # an empty class
    keep = rng.random(1000) < 0.8
    scale = inverse_norms(x, name="x")  # raw rows with their inverse norms
    monkeypatch.setattr(mom, "QUANT_ROWS", 37)
    onehot = np.zeros((1000, k))
    onehot[np.flatnonzero(keep), labels[keep]] = 1.0
    for rows, sc in ((x, scale), (x * scale[:, None], None)):
        seg = class_moments(rows, labels, keep, k, scale=sc)
        gemm = mom.set_moments(rows, onehot, scale=sc)
        assert seg.n[1] == 0 and seg.n.sum() == keep.sum()
        np.testing.assert_array_equal(seg.n, gemm.n)
        np.testing.assert_array_equal(seg.s1, gemm.s1)
        np.testing.assert_array_equal(seg.s2, gemm.s2)
        xq, xq2 = mom.quantize(rows, sc)  # and the one product of every row at once
        np.testing.assert_array_equal(seg.s1, onehot.T @ xq)
        np.testing.assert_array_equal(seg.s2, onehot.T @ xq2)


def test_blocked_moments_equal_one_block(monkeypatch):
    x, classes, base, moments, full, ids = _problem(n=3000)
    monkeypatch.setattr(mom, "MOMENT_ROWS", 256)
    blocked = filtered_moments(x, base.scores, base.label, cos_min=-1, diff_min=0, per_pair=False)
    np.testing.assert_array_equal(blocked.s1, moments.s1)
    np.testing.assert_array_equal(blocked.s2, moments.s2)
    np.testing.assert_array_equal(blocked.n, moments.n)


def test_blocked_fused_set_moments_equal_whole_quantised_gemm(monkeypatch):
    rng = np.random.default_rng(6)
    x = _unit(rng.standard_normal((1000, 24)))
    member = (rng.random((1000, 5)) < 0.3).astype(np.float64)
    monkeypatch.setattr(mom, "QUANT_ROWS", 37)  # blocks that do not divide n
    got = mom.set_moments(x, member)
    xq, xq2 = mom.quantize(x)
    np.testing.assert_array_equal(got.s1, member.T @ xq)
    np.testing.assert_array_equal(got.s2, member.T @ xq2)
    np.testing.assert_array_equal(got.n, member.sum(axis=0))


@pytest.mark.parametrize("block", [1 << 18, 100])  # one block; blocks of 2 rows (tie rows in several)
def test_top_dims_partition_equals_stable_argsort(monkeypatch, block):
    from pairwise_dask import masks
    from pairwise_dask.masks import top_dims

    monkeypatch.setattr(masks, "TOP_BLOCK", block)
    rng = np.random.default_rng(7)
    s = rng.integers(0, 8, (300, 40)).astype(np.float64)  # many exact ties
    s[0, 3] = np.inf
    s[1] = rng.standard_normal(40)  # rows without ties next to rows with them
    for m in (1, 5, 39, 40):
        want = np.sort(np.argsort(-s, axis=1, kind="stable")[:, :m], axis=1)
        np.testing.assert_array_equal(top_dims(s, m), want)
    np.testing.assert_array_equal(top_dims(s[0], 5), np.sort(np.argsort(-s[0], kind="stable")[:5]))


@pytest.mark.parametrize("decision", ["cosine", "discriminant"])
def test_masks_fitted_in_chunks_equal_one_fit(decision: str, monkeypatch) -> None:
    """The job fits many pairs in chunks on its workers: joined in order they are the one-call fit;
    and inside one call, the pairs scored :data:`FIT_CHUNK` at a time give the same bits too."""
    from pairwise_dask import masks as masks_mod
    from pairwise_dask.masks import all_pairs, concat_masks, fit_masks
    from pairwise_dask.moments import class_moments

    rng = np.random.default_rng(5)
    k, d, n = 9, 24, 400
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cls = rng.standard_normal((k, d)).astype(np.float32)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    labels = rng.integers(0, k - 1, n).astype(np.int32)  # the last class has no items: fallback pairs
    mom = class_moments(x, labels, np.ones(n, bool), k)
    pairs = all_pairs(k)
    kw = dict(m=6, min_items=5, per_pair=False, dense=False, mix=1.0, decision=decision, prior=0.5)
    whole = fit_masks(mom, cls, pairs=pairs, **kw)
    parts = concat_masks([fit_masks(mom, cls, pairs=ch, **kw) for ch in np.array_split(pairs, 4)])
    monkeypatch.setattr(masks_mod, "FIT_CHUNK", 5)  # 36 pairs: 8 chunks, the last one short
    chunked = fit_masks(mom, cls, pairs=pairs, **kw)
    assert whole.fallback.any()
    for other in (parts, chunked):
        for name in ("pairs", "dims", "n_a", "n_b", "fallback", "values", "anchors", "bias", "separation"):
            a, b = getattr(whole, name), getattr(other, name)
            assert (a is None and b is None) or np.array_equal(a, b), name
