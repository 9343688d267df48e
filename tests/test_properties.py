"""Properties tried on purpose: the moment merge and the bracket (hypothesis), degenerate shapes
through the real job.

Hypothesis runs derandomized (a fixed example sequence), so every run of the suite is the same.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fixtures import fsl, make_catalog
from pairwise_dask import job
from pairwise_dask.errors import BadInputError
from pairwise_dask.masks import all_pairs, pair_lookup
from pairwise_dask.moments import QUANT_BITS, Moments, class_moments, filtered_moments, quantize
from pairwise_dask.tourney import play_bracket, play_round_robin

PROPS = settings(derandomize=True, deadline=None, max_examples=60)

# --- the moment merge ------------------------------------------------------------------------

# embedding entries: normalised vectors live in [-1, 1]; include exact 0, ±1 and tiny values
entries = st.floats(-1.0, 1.0, allow_nan=False, width=32)


@st.composite
def labelled_blocks(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, list[int]]:
    """A block ``x`` (n, d), labels in [0, k) and cut points splitting it into partitions."""
    n = draw(st.integers(0, 40))
    d = draw(st.integers(1, 6))
    k = draw(st.integers(1, 4))
    x = draw(hnp.arrays(np.float32, (n, d), elements=entries))
    labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    return x, labels, k, cuts


def _moments(x: np.ndarray, labels: np.ndarray, k: int) -> Moments:
    return class_moments(x, labels, np.ones(len(labels), bool), k)


def _same(a: Moments, b: Moments) -> bool:
    return (np.array_equal(a.n, b.n) and np.array_equal(a.s1, b.s1) and np.array_equal(a.s2, b.s2))


@PROPS
@given(labelled_blocks(), st.randoms(use_true_random=False))
def test_merge_is_partition_invariant_commutative_associative(block: Any, rnd: Any) -> None:
    x, labels, k, cuts = block
    bounds = [0, *cuts, len(x)]
    parts = [_moments(x[a:b], labels[a:b], k) for a, b in zip(bounds[:-1], bounds[1:])]
    whole = _moments(x, labels, k)
    left = parts[0]
    for p in parts[1:]:  # ((p0 + p1) + p2) + ...
        left = left + p
    right = parts[-1]
    for p in reversed(parts[:-1]):  # p0 + (p1 + (p2 + ...))
        right = p + right
    shuffled = list(parts)
    rnd.shuffle(shuffled)
    any_order = shuffled[0]
    for p in shuffled[1:]:
        any_order = any_order + p
    # bit-for-bit, not approximately: the sums are exact whatever the order (moments.py)
    assert _same(left, whole) and _same(right, whole) and _same(any_order, whole)
    if len(parts) >= 2:
        assert _same(parts[0] + parts[1], parts[1] + parts[0])


@PROPS
@given(labelled_blocks(), st.floats(-1.0, 1.0), st.floats(0.0, 0.5))
def test_filtered_pair_moments_are_partition_invariant(block: Any, cos_min: float, diff_min: float) -> None:
    """The same for the per-pair sets of diff_min > 0 (k*k rows), with the real filters."""
    x, labels, k, cuts = block
    scores = np.zeros((len(x), k), np.float32)
    if len(x):
        scores = np.tanh(x.sum(axis=1, keepdims=True) * np.arange(1, k + 1)).astype(np.float32)
        labels = np.argmax(scores, axis=1)
    bounds = [0, *cuts, len(x)]
    f = dict(cos_min=cos_min, diff_min=diff_min, per_pair=True)
    parts = [filtered_moments(x[a:b], scores[a:b], labels[a:b], **f) for a, b in zip(bounds[:-1], bounds[1:])]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    assert _same(total, filtered_moments(x, scores, labels, **f))


@PROPS
@given(labelled_blocks())
def test_moments_exact_against_two_pass(block: Any) -> None:
    """Sums equal exact integer arithmetic on the quanta; mean and variance equal a two-pass
    float64 computation on the quantised values (variance within the x² rounding, 2**-27)."""
    x, labels, k, _ = block
    m = _moments(x, labels, k)
    xq, xq2 = quantize(x)
    q = 2 ** QUANT_BITS
    mu, var = m.mean_var()
    for c in range(k):
        rows = labels == c
        assert m.n[c] == rows.sum()
        for j in range(x.shape[1]):
            s1 = sum(int(v) for v in xq[rows, j])  # Python ints: no rounding at all
            s2 = sum(int(v) for v in xq2[rows, j])
            assert m.s1[c, j] == s1 and m.s2[c, j] == s2
            if rows.sum() == 0:
                assert np.isnan(mu[c, j])
                continue
            vals = xq[rows, j] / q  # pass 1: the mean; pass 2: squared deviations from it
            mean2 = vals.sum() / len(vals)
            var2 = ((vals - mean2) ** 2).sum() / len(vals)
            assert mu[c, j] == mean2  # both are s1 / n scaled by a power of two: the same float
            assert abs(var[c, j] - var2) <= 2.0 ** -(QUANT_BITS - 1)


# --- the bracket ---------------------------------------------------------------------------

@st.composite
def decisions(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Pair decisions ``D`` (n, P) for k classes, with ties (zeros) allowed, and id hashes."""
    k = draw(st.integers(2, 24))
    n = draw(st.integers(1, 12))
    pairs = all_pairs(k)
    d = draw(hnp.arrays(np.float32, (n, len(pairs)), elements=st.sampled_from([-1.0, -0.25, 0.0, 0.5, 1.0])))
    hashes = draw(hnp.arrays(np.uint64, n, elements=st.integers(0, 2 ** 64 - 1)))
    return d, pairs, hashes, k


@PROPS
@given(decisions(), st.integers(0, 2 ** 63 - 1))
def test_bracket_gives_every_item_exactly_one_class(dec: Any, seed: int) -> None:
    d, pairs, hashes, k = dec
    res = play_bracket(d, pair_lookup(pairs, k), hashes, seed=seed)
    assert res.label.shape == (len(d),)
    assert ((res.label >= 0) & (res.label < k)).all()
    # the final match was played by the winner (k ≥ 2: there always is one)
    assert (pairs[res.final_pair] == res.label[:, None]).any(axis=1).all()


@PROPS
@given(decisions(), st.integers(0, 2 ** 63 - 1), st.data())
def test_a_class_winning_every_pair_wins_the_bracket(dec: Any, seed: int, data: st.DataObject) -> None:
    d, pairs, hashes, k = dec
    champ = data.draw(hnp.arrays(np.int64, len(d), elements=st.integers(0, k - 1)))
    d = d.copy()
    for i, c in enumerate(champ):  # c beats everyone: > 0 when c is the pair's first class, < 0 else
        d[i, pairs[:, 0] == c] = 1.0
        d[i, pairs[:, 1] == c] = -1.0
    pidx = pair_lookup(pairs, k)
    assert np.array_equal(play_bracket(d, pidx, hashes, seed=seed).label, champ)
    margins = np.where(d == 0, 0.0, d).astype(np.float32)
    assert np.array_equal(play_round_robin(d, margins, pairs, k), champ)
    # the top-t variant too, whenever the champion is among the players
    t = min(k, data.draw(st.integers(2, 6)))
    players = np.stack([np.concatenate([[c], [j for j in range(k) if j != c][:t - 1]]) for c in champ])
    assert np.array_equal(play_bracket(d, pidx, hashes, seed=seed, players=players).label, champ)


@PROPS
@given(decisions(), st.integers(0, 2 ** 63 - 1), st.randoms(use_true_random=False))
def test_bracket_does_not_depend_on_row_order(dec: Any, seed: int, rnd: Any) -> None:
    """The random order is a function of (seed, id, round): shuffling rows shuffles the labels."""
    d, pairs, hashes, k = dec
    perm = list(range(len(d)))
    rnd.shuffle(perm)
    pidx = pair_lookup(pairs, k)
    a = play_bracket(d, pidx, hashes, seed=seed).label
    b = play_bracket(d[perm], pidx, hashes[perm], seed=seed).label
    assert np.array_equal(a[perm], b)


# --- degenerate shapes through the real job --------------------------------------------------

@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as c:
        yield c


def _check_complete(out: Path, summary: dict, n: int, names: list[str]) -> pa.Table:
    labels = pq.read_table(out / "labels")
    assert labels.num_rows == n == summary["labelled_items"]
    assert len(set(labels.column("id").to_pylist())) == n
    for col in labels.column_names:
        if col.startswith(("base_", "label_")) or col == "final_label":
            assert set(labels.column(col).to_pylist()) <= set(names)
    assert (out / "summary.json").exists()
    return labels


SHAPES = {
    # name: (make_catalog arguments, settings overrides, expect fallback pairs)
    "k=2": (dict(n=40, k=2), {}, False),
    "k=200": (dict(n=600, k=200, d=16), {"dims": 8}, True),
    "d=2": (dict(n=60, d=2), {"dims": 0.5}, False),
    "d=4096": (dict(n=24, d=4096, k=3), {"dims": None, "min_items": 2, "refine": 0}, False),  # refine halves 8-item sets
    "one item": (dict(n=1), {}, True),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_degenerate_shapes_complete(name: str, tmp_path: Path, client: Any) -> None:
    kw, overrides, fallback = SHAPES[name]
    cat = make_catalog(tmp_path / "data", **kw)
    out = tmp_path / "out"
    summary = job.run(cat.settings(out, **overrides), client=client)
    _check_complete(out, summary, kw["n"], cat.classes.column("name").to_pylist())
    k = kw.get("k", 3)
    assert summary["per_view"]["a"]["pairs"] == k * (k - 1) // 2
    assert (summary["fallback_pairs"] > 0) == fallback
    if name == "d=2":  # the default m is half of d: one of the two dimensions
        assert len(pq.read_table(out / "model" / "masks.parquet").column("dims").to_pylist()[0]) == 1


def test_wide_rotation_is_not_in_the_passes_graphs(tmp_path: Path, client: Any) -> None:
    """rotate = pca at d = 4,096: the (d, d) basis (64 MB) is found on a worker and every pass
    fetches it there, for run and for a saved model's update and apply (sent once). No pass ships
    it in its graph: Dask warns of a "large graph" past 10 MB. The labels are the run's."""
    cat = make_catalog(tmp_path / "data", n=24, d=4096, k=3)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        job.run(cat.settings(out, dims=None, min_items=2, refine=0), client=client)
        job.fit(cat.settings(tmp_path / "m", dims=None, min_items=2, refine=0), client=client)
        job.fit(cat.settings(tmp_path / "m2", dims=None, min_items=2, refine=0), client=client,
                base_model=str(tmp_path / "m" / "model"))
        job.apply(cat.settings(tmp_path / "a"), str(tmp_path / "m" / "model"), client=client)
    assert [str(w.message) for w in seen if "large graph" in str(w.message)] == []
    assert pq.read_table(tmp_path / "m" / "model" / "rotation.parquet").num_rows == 2 * 4096
    ran, applied = (pq.read_table(p / "labels").sort_by("id") for p in (out, tmp_path / "a"))
    assert applied.column("final_label").equals(ran.column("final_label"))


def test_partition_with_zero_rows(tmp_path: Path, client: Any) -> None:
    """A catalog folder holding an empty file (and an empty row group) labels the rest."""
    cat = make_catalog(tmp_path / "data")
    folder = tmp_path / "items"
    folder.mkdir()
    pq.write_table(cat.items.slice(0, 0), folder / "a-empty.parquet")
    with pq.ParquetWriter(folder / "b.parquet", cat.items.schema) as w:
        w.write_table(cat.items.slice(0, 30))
        w.write_table(cat.items.slice(30, 0))  # a zero-row row group between two full ones
        w.write_table(cat.items.slice(30))
    out = tmp_path / "out"
    summary = job.run(cat.settings(out, items=str(folder)), client=client)
    assert summary["items"]["partitions"] >= 3
    labels = _check_complete(out, summary, 60, cat.classes.column("name").to_pylist())
    # the same labels as the one-file catalog: partitions do not matter
    ref = job.run(cat.settings(tmp_path / "ref"), client=client)
    assert ref["labelled_items"] == 60
    assert labels.sort_by("id").equals(pq.read_table(tmp_path / "ref" / "labels").sort_by("id"))


def test_class_no_item_is_labelled_with(tmp_path: Path, client: Any) -> None:
    """Items come from classes 0–2 only; class 3's prompt points away from all of them."""
    truth = np.arange(60) % 3
    cat = make_catalog(tmp_path / "data", n=60, k=4, truth=truth, noise=0.2)
    names = cat.classes.column("name").to_pylist()
    for col in ("emb_a", "emb_b"):  # class 3: the opposite of the other prompts' mean
        c = np.asarray(cat.classes.column(col).combine_chunks().flatten()).reshape(4, -1).copy()
        c[3] = -c[:3].sum(axis=0)
        cat.write_classes(cat.classes.set_column(cat.classes.column_names.index(col), col, fsl(c)))
    out = tmp_path / "out"
    # each view's own base labels, all of them: refine and fit_on = fused keep only a share
    summary = job.run(cat.settings(out, refine=0, fit_on="view"), client=client)
    _check_complete(out, summary, 60, names)
    for v in ("a", "b"):
        assert summary["per_view"][v]["base_counts"]["class3"] == 0
        fb = summary["per_view"][v]["fallback_pairs"]
        assert sorted(fb) == ["class0 / class3", "class1 / class3", "class2 / class3"]
    assert summary["fallback_pairs"] == 6


def test_all_items_in_one_class(tmp_path: Path, client: Any) -> None:
    cat = make_catalog(tmp_path / "data", n=50, k=3, truth=np.zeros(50, int), noise=0.2)
    out = tmp_path / "out"
    summary = job.run(cat.settings(out), client=client)
    labels = _check_complete(out, summary, 50, ["class0", "class1", "class2"])
    assert summary["fallback_pairs"] == 2 * 3  # every pair of both views lacks one side
    assert set(labels.column("base_a").to_pylist()) == {"class0"}


def test_dims_above_a_tiny_d_fails_clearly(tmp_path: Path, client: Any) -> None:
    """Not every shape can run: an explicit dims above a tiny d is refused with a clear message."""
    cat = make_catalog(tmp_path / "data", n=20, d=2)
    with pytest.raises(BadInputError, match=r"dims = 4 is larger than d = 2"):
        job.run(cat.settings(tmp_path / "out", dims=4), client=client)
    assert not (tmp_path / "out").exists()
