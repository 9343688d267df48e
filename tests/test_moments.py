"""The statistics step is exact: merged partition moments equal single-pass and all-pairs numbers."""
from __future__ import annotations

import numpy as np
import pytest

from pairwise_dask.moments import (Moments, class_moments, cross_deviation_ratio, cross_variance,
                                   filtered_moments, quantize, set_moments, EXACT_ITEMS, QUANT_BITS)


def _data(n: int = 500, d: int = 12, k: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, k, n).astype(np.int32)
    keep = rng.random(n) < 0.8
    return x, labels, keep


def _brute(xq: np.ndarray, xq2: np.ndarray, labels: np.ndarray, keep: np.ndarray, k: int) -> Moments:
    """Two-pass reference: a Python loop per class over the quantised values."""
    n = np.zeros(k, np.int64)
    s1 = np.zeros((k, xq.shape[1]))
    s2 = np.zeros((k, xq.shape[1]))
    for c in range(k):
        rows = (labels == c) & keep
        n[c] = rows.sum()
        s1[c] = xq[rows].sum(axis=0)
        s2[c] = xq2[rows].sum(axis=0)
    return Moments(n, s1, s2)


@pytest.mark.parametrize("cuts", [[], [0], [250], [0, 0, 100, 100, 499], list(range(0, 500, 7)), [1, 2, 3, 498]])
def test_merged_partition_moments_equal_single_pass_bit_for_bit(cuts):
    x, labels, keep = _data()
    k = 5
    whole = class_moments(x, labels, keep, k)
    bounds = [0, *cuts, len(x)]
    parts = [class_moments(x[a:b], labels[a:b], keep[a:b], k) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged + p
    # reversed order and a tree merge too: addition of exact quanta is order-free
    rev = parts[-1]
    for p in reversed(parts[:-1]):
        rev = p + rev
    xq, xq2 = quantize(x)
    ref = _brute(xq, xq2, labels, keep, k)
    for m in (merged, rev):
        assert np.array_equal(m.n, whole.n) and np.array_equal(m.s1, whole.s1) and np.array_equal(m.s2, whole.s2)
        assert np.array_equal(m.n, ref.n) and np.array_equal(m.s1, ref.s1) and np.array_equal(m.s2, ref.s2)


def test_quantised_moments_match_float64_two_pass_to_quantum():
    x, labels, keep = _data(n=2000, d=8)
    mu, var = class_moments(x, labels, keep, 5).mean_var()
    for c in range(5):
        rows = x[(labels == c) & keep].astype(np.float64)
        # two-pass mean and variance of the unquantised values
        assert np.allclose(mu[c], rows.mean(axis=0), atol=2.0 ** -QUANT_BITS)
        assert np.allclose(var[c], ((rows - rows.mean(axis=0)) ** 2).mean(axis=0), atol=4 * 2.0 ** -QUANT_BITS)


def test_cross_variance_equals_all_pairs_brute_force():
    rng = np.random.default_rng(3)
    a = rng.normal(0.1, 0.3, size=(40, 6))
    b = rng.normal(-0.2, 0.5, size=(25, 6))
    brute = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=(0, 1)) / (2 * len(a) * len(b))
    xv = cross_variance(a.mean(0), a.var(0), b.mean(0), b.var(0))
    assert np.allclose(xv, brute, rtol=1e-12)
    # with A = B it is the variance, and the ratio is 1
    assert np.allclose(cross_variance(a.mean(0), a.var(0), a.mean(0), a.var(0)), a.var(0))
    assert np.allclose(cross_deviation_ratio(a.mean(0), a.var(0), a.mean(0), a.var(0)), 1.0)
    assert (cross_deviation_ratio(a.mean(0), a.var(0), b.mean(0), b.var(0)) >= 1.0).all()


def test_cross_variance_scores_from_merged_partitions_equal_all_pairs():
    """End to end on quantised data: scores from merged moments = brute force over all cross pairs."""
    x, labels, keep = _data(n=300, d=6, k=3)
    parts = [class_moments(x[i:i + 64], labels[i:i + 64], keep[i:i + 64], 3) for i in range(0, 300, 64)]
    merged = sum(parts[1:], parts[0])
    mu, var = merged.mean_var()
    xq, _ = quantize(x)
    vals = xq / 2.0 ** QUANT_BITS
    a, b = vals[(labels == 0) & keep], vals[(labels == 1) & keep]
    brute = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=(0, 1)) / (2 * len(a) * len(b))
    assert np.allclose(cross_variance(mu[0], var[0], mu[1], var[1]), brute, rtol=1e-6, atol=1e-12)


def test_degenerate_sets_scores():
    mu = np.array([[0.1, 0.2], [0.1, 0.3]])
    var = np.zeros((2, 2))
    r = cross_deviation_ratio(mu[0], var[0], mu[1], var[1])
    assert r[0] == 1.0 and np.isinf(r[1])  # equal constants: no evidence; different: separating


def test_deviation_ratio_with_given_standard_deviations_is_the_same_bits():
    """The mask step passes each set's sqrt(var), taken once: the same score, bit for bit."""
    rng = np.random.default_rng(7)
    mu, var = rng.normal(size=(2, 50)), rng.random((2, 50))
    var[:, :3] = 0.0  # the degenerate branch too
    mu[1, 1] = mu[0, 1]
    plain = cross_deviation_ratio(mu[0], var[0], mu[1], var[1])
    given = cross_deviation_ratio(mu[0], var[0], mu[1], var[1], np.sqrt(var[0]), np.sqrt(var[1]))
    assert np.array_equal(plain, given) and np.isinf(plain[0]) and plain[1] == 1.0


def test_pair_sets_with_diff_min_match_a_loop():
    x, labels, keep = _data(n=200, d=5, k=4)
    scores = x @ np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    labels = scores.argmax(1).astype(np.int32)
    m = filtered_moments(x, scores, labels, cos_min=-10, diff_min=0.3, per_pair=True)
    xq, _ = quantize(x)
    for a in range(4):
        for b in range(4):
            if a == b:
                continue
            rows = (labels == a) & (scores[:, a] - scores[:, b] >= 0.3)
            assert m.n[a * 4 + b] == rows.sum()
            assert np.array_equal(m.s1[a * 4 + b], xq[rows].sum(axis=0))
    # diff_min = 0 per pair equals the per-class sets
    per_pair = filtered_moments(x, scores, labels, cos_min=-10, diff_min=0.0, per_pair=True)
    per_class = filtered_moments(x, scores, labels, cos_min=-10, diff_min=0.0, per_pair=False)
    for a in range(4):
        for b in range(4):
            if a != b:
                assert np.array_equal(per_pair.s1[a * 4 + b], per_class.s1[a])


def test_cos_min_and_diff_min_filter_the_sets_like_a_loop():
    """Both filters at once, against the sets written out by hand (METHOD.md §2)."""
    x, _, _ = _data(n=300, d=5, k=4, seed=4)
    scores = x @ np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    labels = scores.argmax(1).astype(np.int32)
    top = scores.max(1)
    cos_min = float(np.quantile(top, 0.4))
    xq, xq2 = quantize(x)
    per_class = filtered_moments(x, scores, labels, cos_min=cos_min, diff_min=0.0, per_pair=False)
    per_pair = filtered_moments(x, scores, labels, cos_min=cos_min, diff_min=0.2, per_pair=True)
    for a in range(4):
        rows = (labels == a) & (top >= cos_min)
        assert 0 < per_class.n[a] == rows.sum() < (labels == a).sum()
        assert np.array_equal(per_class.s2[a], xq2[rows].sum(axis=0))
        for b in set(range(4)) - {a}:
            rows_ab = rows & (scores[:, a] - scores[:, b] >= 0.2)
            assert per_pair.n[a * 4 + b] == rows_ab.sum()
            assert np.array_equal(per_pair.s1[a * 4 + b], xq[rows_ab].sum(axis=0))


def test_quanta_round_to_nearest():
    """A value's quantum is the nearest multiple of 2**-QUANT_BITS (not truncated)."""
    q = 2.0 ** -QUANT_BITS
    x = np.array([[0.3 * q, 0.7 * q, -0.7 * q, 5.49 * q, 5.51 * q, 0.5]], np.float32)
    xq, xq2 = quantize(x)
    assert xq[0].tolist() == [0, 1, -1, 5, 6, 0.5 / q]
    assert xq2[0, -1] == 0.25 / q and xq2[0, 1] == 0  # x² quantised too: (0.7q)² rounds to 0


def test_exactness_bound_is_documented():
    assert EXACT_ITEMS == 2 ** (53 - QUANT_BITS)
    ind = np.ones((3, 1))
    m = set_moments(np.full((3, 2), 0.5, np.float32), ind)
    assert m.n[0] == 3 and m.s1[0, 0] == 1.5 * 2 ** QUANT_BITS


def test_quantile_thresholds_from_merged_histograms():
    from pairwise_dask.moments import HIST_BINS, quantile_thresholds, score_histograms

    rng = np.random.default_rng(5)
    top = rng.uniform(-0.2, 0.8, 5000)
    margin = rng.uniform(0, 0.3, 5000)
    labels = rng.integers(0, 3, 5000)
    whole = score_histograms(top, margin, labels, 3)
    parts = sum(score_histograms(top[i:i + 700], margin[i:i + 700], labels[i:i + 700], 3)
                for i in range(0, 5000, 700))
    assert np.array_equal(whole, parts)
    t = quantile_thresholds(whole, 0.25, 0)
    for c in range(3):
        vals = top[labels == c]
        dropped = (vals < t[c]).mean()
        assert dropped <= 0.25 and abs(dropped - 0.25) < 0.01  # within a bin (2/HIST_BINS) of the quantile
        assert abs(t[c] - np.quantile(vals, 0.25)) <= 2.0 / HIST_BINS + 1e-12
    assert np.all(quantile_thresholds(whole, 0.0, 1) == 0.0)  # q = 0 drops nothing


def test_rows_in_no_set_are_skipped_without_changing_a_bit():
    """``set_moments`` quantises only rows that belong to some set (a kept share); the sums equal,
    bit for bit, the product over every row's quanta, the empty rows' zero memberships included."""
    from pairwise_dask.moments import quantize, set_moments

    rng = np.random.default_rng(7)
    n, d, g = 1000, 24, 5
    x = rng.normal(size=(n, d)).astype(np.float32)
    scale = (1.0 / np.linalg.norm(x, axis=1)).astype(np.float32)
    for share in (0.0, 0.3, 1.0):
        member = ((rng.random((n, g)) < 0.4) & (rng.random(n) < share)[:, None]).astype(np.float64)
        got = set_moments(x, member, scale=scale)
        want = set_moments(x, member, quantized=quantize(x, scale))  # every row, as one product
        assert np.array_equal(got.n, want.n) and np.array_equal(got.s1, want.s1) and np.array_equal(got.s2, want.s2)
