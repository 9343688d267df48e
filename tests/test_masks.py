"""Pair masks against the method written out independently (METHOD.md §2): the dimensions chosen
are the top m of the cross-deviation ratio computed by brute force from the two item sets."""
from __future__ import annotations

import numpy as np
import pytest

from pairwise_dask.masks import all_pairs, fit_masks, pair_ids, prototypes, with_pairs
from pairwise_dask.moments import Moments, filtered_moments, quantize, QUANT_BITS


def _sets(seed: int = 0, n: int = 400, d: int = 30, k: int = 4):
    """Items whose classes differ in mean on some dimensions and in spread on others."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    mu = rng.normal(scale=0.3, size=(k, d)) * (rng.random(d) < 0.4)
    sd = rng.uniform(0.05, 0.5, size=(k, d))
    x = (mu[y] + rng.normal(size=(n, d)) * sd[y]).astype(np.float32)
    return x, y.astype(np.int32), k


def _brute_ratio(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """r_j = sqrt(mean over all cross pairs of (x_j − y_j)² / 2 / (σ_A σ_B)), pair by pair."""
    cross = ((xa[:, None, :] - xb[None, :, :]) ** 2).mean(axis=(0, 1)) / 2
    return np.sqrt(cross / (xa.std(axis=0) * xb.std(axis=0)))


def _top(r: np.ndarray, m: int) -> list[int]:
    return sorted(np.argsort(-r, kind="stable")[:m].tolist())


@pytest.mark.parametrize("m", [1, 5, 12])
def test_mask_dims_are_the_top_m_of_the_brute_force_ratio(m: int) -> None:
    x, y, k = _sets()
    scores = np.eye(k, dtype=np.float32)[y]  # every item confidently its own class
    mom = filtered_moments(x, scores, y, cos_min=-1.0, diff_min=0.0, per_pair=False)
    masks = fit_masks(mom, np.ones((k, x.shape[1]), np.float32), m=m, min_items=2, per_pair=False)
    xq = quantize(x)[0] / 2.0 ** QUANT_BITS  # the values the moments hold
    for p, (a, b) in enumerate(masks.pairs):
        want = _top(_brute_ratio(xq[y == a].astype(np.float64), xq[y == b].astype(np.float64)), m)
        assert masks.dims[p].tolist() == want, (a, b)
        assert (masks.n_a[p], masks.n_b[p]) == ((y == a).sum(), (y == b).sum())


def test_per_pair_sets_give_each_side_its_own_filtered_items() -> None:
    """With diff_min > 0 side a of (a, b) holds the a-items that beat b by diff_min: the mask
    and the counts come from those sets (and side b's from the b-items beating a)."""
    x, y, k = _sets(seed=1, n=600)
    rng = np.random.default_rng(3)
    scores = (np.eye(k)[y] * 0.5 + rng.random((len(y), k)) * 0.6).astype(np.float32)
    labels = scores.argmax(1).astype(np.int32)
    mom = filtered_moments(x, scores, labels, cos_min=-1.0, diff_min=0.25, per_pair=True)
    masks = fit_masks(mom, np.ones((k, x.shape[1]), np.float32), m=4, min_items=2, per_pair=True)
    xq = quantize(x)[0] / 2.0 ** QUANT_BITS
    assert (masks.n_a != masks.n_b).any()  # so that sides swapped would show in the counts
    for p, (a, b) in enumerate(masks.pairs):
        side_a = (labels == a) & (scores[:, a] - scores[:, b] >= 0.25)
        side_b = (labels == b) & (scores[:, b] - scores[:, a] >= 0.25)
        assert (masks.n_a[p], masks.n_b[p]) == (side_a.sum(), side_b.sum())
        want = _top(_brute_ratio(xq[side_a].astype(np.float64), xq[side_b].astype(np.float64)), 4)
        assert masks.dims[p].tolist() == want, (a, b)
    # a discriminant on per-pair sets points from side b's mean to side a's
    disc = fit_masks(mom, np.ones((k, x.shape[1]), np.float32), m=4, min_items=2, per_pair=True,
                     decision="discriminant")
    for p, (a, b) in enumerate(disc.pairs):
        side_a = (labels == a) & (scores[:, a] - scores[:, b] >= 0.25)
        side_b = (labels == b) & (scores[:, b] - scores[:, a] >= 0.25)
        w = np.zeros(x.shape[1])
        w[disc.dims[p]] = disc.values[p]
        assert (x[side_a] @ w + disc.bias[p]).mean() > 0 > (x[side_b] @ w + disc.bias[p]).mean()


def test_fallback_pairs_use_the_prompts_largest_differences() -> None:
    x, y, k = _sets(seed=2)
    y = np.where(y == 3, 0, y)  # class 3 has no items
    scores = np.eye(k, dtype=np.float32)[y]
    mom = filtered_moments(x, scores, y, cos_min=-1.0, diff_min=0.0, per_pair=False)
    cls = np.random.default_rng(4).normal(size=(k, x.shape[1])).astype(np.float32)
    masks = fit_masks(mom, cls, m=6, min_items=2, per_pair=False)
    for p, (a, b) in enumerate(masks.pairs):
        assert masks.fallback[p] == (b == 3)
        if b == 3:
            assert masks.dims[p].tolist() == _top(np.abs(cls[a] - cls[b]), 6)
    assert all_pairs(k).tolist() == masks.pairs.tolist()


@pytest.mark.parametrize("decision,per_pair", [("cosine", False), ("discriminant", False), ("cosine", True)])
def test_pairs_added_later_are_the_masks_a_full_fit_makes(decision: str, per_pair: bool) -> None:
    """with_pairs (apply's top-t completion) fits only the missing pairs, bit for bit as one fit of all."""
    x, y, k = _sets(seed=5)
    scores = (np.eye(k)[y] * 0.5 + np.random.default_rng(6).random((len(y), k)) * 0.6).astype(np.float32)
    labels = scores.argmax(1).astype(np.int32)
    mom = filtered_moments(x, scores, labels, cos_min=-1.0, diff_min=0.2 if per_pair else 0.0, per_pair=per_pair)
    cls = np.random.default_rng(7).normal(size=(k, x.shape[1])).astype(np.float32)
    kw = dict(m=5, min_items=2, per_pair=per_pair, dense=False, mix=0.5, decision=decision, prior=0.3)
    full = fit_masks(mom, cls, **kw)
    part = fit_masks(mom, cls, pairs=full.pairs[[0, 4]], **kw)
    grown = with_pairs(part, mom, cls, pair_ids(full.pairs, k)[::-1].copy(), min_items=2, mix=0.5, prior=0.3)
    assert with_pairs(full, mom, cls, pair_ids(full.pairs, k), min_items=2, mix=0.5, prior=0.3) is full
    order = np.argsort(pair_ids(grown.pairs, k))
    for name in ("pairs", "dims", "values", "n_a", "n_b", "fallback", "bias", "separation"):
        a, b = getattr(full, name), getattr(grown, name)
        assert (a is None and b is None) or np.array_equal(a, b[order]), name


def test_masks_table_gives_each_side_of_a_pair_its_own_item_count() -> None:
    """``model/masks.parquet`` (the output contract) holds per pair the item counts of its
    ``class_a`` and ``class_b`` sides: what a user reads to see which pairs rest on few items (and
    why one fell back to the prompts). Each count must be its own side's."""
    from pairwise_dask.model import masks_table

    x, y, k = _sets(seed=8, n=300)
    mom = filtered_moments(x, np.eye(k, dtype=np.float32)[y], y, cos_min=-1.0, diff_min=0.0, per_pair=False)
    names = tuple(f"class{c}" for c in range(k))
    table = masks_table({"a": fit_masks(mom, np.ones((k, x.shape[1]), np.float32), m=3, min_items=2,
                                        per_pair=False)}, names)
    counts = np.bincount(y, minlength=k)
    assert len(set(counts.tolist())) == k  # unequal classes: a side's count given for the other would show
    rows = table.to_pylist()
    assert len(rows) == k * (k - 1) // 2
    for r in rows:
        a, b = names.index(r["class_a"]), names.index(r["class_b"])
        assert (r["view"], r["n_a"], r["n_b"]) == ("a", (y == a).sum(), (y == b).sum()), r


def test_a_class_mean_that_cancels_its_prompt_keeps_the_prompt() -> None:
    prompts = np.array([[1.0], [-1.0], [1.0]], np.float32)
    s1 = np.array([[-3.0], [-2.0], [5.0]])  # class 0's items lie opposite its prompt
    got = prototypes(prompts, Moments(np.array([3, 2, 5]), s1, s1 ** 2), mix=1.0, per_pair=False)
    np.testing.assert_array_equal(got, [[1.0], [-1.0], [1.0]])
