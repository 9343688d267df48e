"""The labelling modes: round-robin, top-t, view fusion, prototype mix, refine, the review priority."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pairwise_dask import job, steps
from pairwise_dask.arrays import hash_ids
from pairwise_dask.config import load_settings
from pairwise_dask.model import load
from pairwise_dask.masks import all_pairs, class_means, fit_masks, pair_lookup, prototypes
from pairwise_dask.moments import class_moments
from pairwise_dask.passes import MARGIN_BINS, margin_quantile, review_priority
from pairwise_dask.tourney import class_scores, decide, fuse_margins, pair_decisions, pair_margins

from catalogs import make_catalog


def _index(k: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = all_pairs(k)
    return pairs, pair_lookup(pairs, k)


def test_round_robin_picks_the_class_that_wins_every_pair():
    rng = np.random.default_rng(0)
    k, n = 7, 200
    pairs, idx = _index(k)
    m = rng.normal(size=(n, len(pairs))).astype(np.float32)  # intransitive noise elsewhere
    champ = rng.integers(0, k, n)
    for p, (a, b) in enumerate(pairs):  # the champion beats everyone, by a little
        m[champ == a, p] = 0.01
        m[champ == b, p] = -0.01
    label, margin = decide(m, pairs, idx, hash_ids(pa.array(np.arange(n))), mode="round-robin", seed=0)
    assert np.array_equal(label, champ)
    assert np.allclose(margin, 0.01)
    # the bracket finds it too, whatever the draw: a Condorcet winner wins every match it plays
    label_b, _ = decide(m, pairs, idx, hash_ids(pa.array(np.arange(n))), mode="bracket", seed=3)
    assert np.array_equal(label_b, champ)


def test_top_t_only_lets_the_players_win():
    k, n = 6, 50
    pairs, idx = _index(k)
    m = np.zeros((n, len(pairs)), np.float32)
    m[:, idx[0, 5]] = 1.0  # class 0 beats 5, 5 loses to all; otherwise lower index wins (ties)
    players = np.tile(np.array([[3, 5]]), (n, 1))
    label, _ = decide(m, pairs, idx, hash_ids(pa.array(np.arange(n))), mode="top-t", seed=0, players=players)
    assert set(label.tolist()) == {3}


def test_fusion_of_one_view_is_that_view_and_of_two_is_their_mean():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 30, 10)).astype(np.float32)
    assert fuse_margins([a]) is a
    assert np.allclose(fuse_margins([a, b]), (a + b) / 2)


def test_llr_fusion_sums_the_views_log_likelihood_ratios():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 30, 4)).astype(np.float32)
    sa = np.array([1.0, 2.0, 0.0, 0.0], np.float32)
    sb = np.array([1.0, 0.5, 3.0, 0.0], np.float32)
    f = fuse_margins([a, b], [sa, sb])
    # a discriminant margin is its LLR / Δ: the fused margin is the summed LLR / the joint Δ
    joint = np.sqrt(sa.astype(float) ** 2 + sb ** 2)
    want = (a * sa + b * sb) / np.where(joint > 0, joint, 1.0)
    assert np.allclose(f[:, :3], want[:, :3], rtol=1e-6)
    assert np.allclose(f[:, 0], (a[:, 0] + b[:, 0]) / np.sqrt(2))  # equal Δ: the sum over √V
    assert np.array_equal(f[:, 2], b[:, 2])                        # a view with Δ = 0 adds nothing
    assert np.allclose(f[:, 3], (a[:, 3] + b[:, 3]) / np.sqrt(2))  # nobody separates: the views weigh the same
    assert fuse_margins([a], [sa]) is a


def test_pair_margins_are_masked_cosines_with_the_decisions_signs():
    rng = np.random.default_rng(2)
    k, d, n = 4, 12, 80
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = rng.normal(size=(k, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    masks = fit_masks(class_moments(x, (x @ c.T).argmax(1), np.ones(n, bool), k), c, m=5, min_items=1,
                      per_pair=False)
    dec = pair_decisions(x, masks)
    m = pair_margins(x, masks, dec)
    assert np.array_equal(np.sign(m), np.sign(dec))
    p = 3
    sub = x[:, masks.dims[p]]
    ca, cb = c[masks.pairs[p]][:, masks.dims[p]]
    want = sub @ (ca / np.linalg.norm(ca) - cb / np.linalg.norm(cb)) / np.linalg.norm(sub, axis=1)
    assert np.allclose(m[:, p], want, atol=1e-5)


def test_mix_zero_keeps_the_prompts_and_large_mix_tends_to_the_class_means():
    rng = np.random.default_rng(3)
    k, d, n = 3, 8, 300
    x = rng.normal(size=(n, d)).astype(np.float32)
    c = np.eye(k, d, dtype=np.float32)
    lab = rng.integers(0, k, n)
    mom = class_moments(x, lab, np.ones(n, bool), k)
    assert prototypes(c, mom, mix=0.0, per_pair=False) is c
    mean, cnt = class_means(mom, k, per_pair=False)
    assert cnt.tolist() == np.bincount(lab, minlength=k).tolist()
    far = prototypes(c, mom, mix=1e6, per_pair=False)
    assert np.allclose(far, mean, atol=1e-4)
    plain = fit_masks(mom, c, m=4, min_items=1, per_pair=False)
    mixed = fit_masks(mom, c, m=4, min_items=1, per_pair=False, mix=2.0)
    assert np.array_equal(plain.dims, mixed.dims) and plain.anchors is None and mixed.anchors is not None


def test_margin_quantile_keeps_the_requested_share():
    margins = np.linspace(0.0, 1.0, 1001)
    counts = np.histogram(margins, bins=MARGIN_BINS)[0]
    thr = margin_quantile(counts, 0.7)
    kept = (margins >= thr).mean()
    assert 0.3 <= kept <= 0.31
    assert margin_quantile(counts, 0.0) == 0.0


def test_review_priority_ranks_broad_losers_first():
    k = 3
    pairs, idx = _index(k)
    m = np.zeros((2, len(pairs)), np.float32)
    # item 0: current label 1 loses to 0 and to 2; item 1: label 1 loses to 0 only, beats 2
    m[0, idx[0, 1]], m[0, idx[1, 2]], m[0, idx[0, 2]] = 0.2, -0.2, 0.0
    m[1, idx[0, 1]], m[1, idx[1, 2]], m[1, idx[0, 2]] = 0.2, 0.4, 0.0
    pr = review_priority(m, pairs, k, np.array([0, 0]), np.array([1, 1]))
    assert pr[0] > 0 > pr[1]  # item 1's label 1 is, on balance, not beaten (it beats 2)
    # by hand: class scores (mean signed margin against the 2 others) item 0: 0.1, −0.2, 0.1;
    # item 1: 0.1, 0.1, −0.2; priority = ½·score(proposed) − score(current)
    assert np.allclose(pr, [0.5 * 0.1 + 0.2, 0.5 * 0.1 - 0.1])
    assert review_priority(m, pairs, k, np.array([0, 2]), np.array([0, 2])).tolist() == [0.0, 0.0]
    assert np.allclose(class_scores(m, pairs, k).sum(1), 0)  # every match's margin won and lost once


def _moments(cat: dict, s) -> dict:
    """Each view's class moments of its base labels, over all items at once (NumPy only)."""
    t = pq.read_table(cat["items"])
    cls = job.prepare(s).spec.classes
    out = {}
    for v, col in cat["views"]:
        x = np.asarray(t.column(col).combine_chunks().flatten()).reshape(t.num_rows, -1)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        out[v] = class_moments(x, (x @ cls[v].T).argmax(1), np.ones(len(x), bool), len(cls[v]))
    return out


def _run(client, cat: dict, out: Path, **kw) -> dict:
    s = load_settings(None, {**cat, "out": str(out), **kw})
    return job.run(s, client=client)


def test_refine_zero_is_plain_and_refine_is_partition_invariant(client, tmp_path):
    cat = make_catalog(tmp_path / "data", n=700, row_group=128)
    # refine = 0 (the article's statistics) is the plain two-pass job: identical to computing its
    # pieces by hand
    plain = {"refine": 0, "fit_on": "view", "rotate": "none", "decision": "cosine"}
    _run(client, cat, tmp_path / "r0", **plain)
    s = load_settings(None, {**cat, "out": str(tmp_path / "x"), **plain})
    masks = steps.fit_pair_masks(s, job.prepare(s).spec, _moments(cat, s))
    model = load(tmp_path / "r0" / "model")
    for v in masks:
        assert np.array_equal(model.masks[v].dims, masks[v].dims)
    s2 = _run(client, cat, tmp_path / "r2", refine=2)
    assert len(s2["refine_thresholds"]) == 2
    tables = []
    for i, rows in enumerate([0, 97]):
        summ = _run(client, cat, tmp_path / f"ref{i}", refine=2, keep=0.6, mix=1.0, partition_rows=rows)
        assert len(summ["refine_thresholds"]) == 2
        tables.append(pq.read_table(tmp_path / f"ref{i}" / "labels"))
    assert tables[0].equals(tables[1])


def test_mix_model_applies_like_the_run(client, tmp_path):
    cat = make_catalog(tmp_path / "data", n=500)
    # mix shapes the cosine decision's class vectors (a discriminant has its own)
    _run(client, cat, tmp_path / "run", mix=2.0, mode="round-robin", decision="cosine")
    s = load_settings(None, {**cat, "out": str(tmp_path / "applied"), "mix": 2.0, "mode": "round-robin",
                             "decision": "cosine"})
    job.apply(s, str(tmp_path / "run" / "model"), client=client)
    assert pq.read_table(tmp_path / "applied" / "labels").equals(pq.read_table(tmp_path / "run" / "labels"))
    assert (tmp_path / "run" / "model" / "anchors.parquet").exists()


def test_confident_view_final_is_the_larger_margin_view(client, tmp_path):
    cat = make_catalog(tmp_path / "data", n=400)
    _run(client, cat, tmp_path / "cv", final="confident-view")
    df = pq.read_table(tmp_path / "cv" / "labels").to_pandas()
    want = np.where(df.margin_a >= df.margin_b, df.label_a, df.label_b)
    assert (df.final_label.to_numpy() == want).all()


def test_fit_on_annotation_uses_the_annotation(client, tmp_path):
    cat = make_catalog(tmp_path / "data", n=600, noise=2.5)
    base = _run(client, cat, tmp_path / "pred")
    ann = _run(client, cat, tmp_path / "ann", fit_on="annotation")
    # statistics from the true labels cannot be worse than from the noisy base labels here
    assert ann["final"]["accuracy"] >= base["final"]["accuracy"]


def test_fused_final_of_one_view_is_that_views_label(client, tmp_path):
    cat = make_catalog(tmp_path / "data", n=400, views=("a",))
    _run(client, cat, tmp_path / "one", final="fused")
    df = pq.read_table(tmp_path / "one" / "labels").to_pandas()
    assert (df.final_label == df.label_a).all()


def test_score_mode_is_the_argmax_of_the_class_scores():
    """``mode = score``: the label with the best mean signed margin against every other class, and
    its lead over the runner-up; unlike most wins, a wide margin counts more than narrow ones."""
    k, n = 3, 3
    pairs, idx = _index(k)
    m = np.zeros((n, len(pairs)), np.float32)
    # item 0: class 0 beats 1 and 2 narrowly, class 1 beats 2 widely
    m[0, idx[0, 1]], m[0, idx[0, 2]], m[0, idx[1, 2]] = 0.1, 0.1, 5.0
    m[1, idx[1, 2]] = -1.0  # item 1: only 1 vs 2 decided, for 2
    ids = hash_ids(pa.array(np.arange(n)))
    label, lead = decide(m, pairs, idx, ids, mode="score", seed=0)
    sc = class_scores(m, pairs, k)
    assert np.allclose(sc[0], [0.1, 2.45, -2.55])
    assert label.tolist() == [1, 2, 0]  # item 2: all ties, the lower index
    top = np.sort(sc, axis=1)
    assert np.allclose(lead, top[:, -1] - top[:, -2]) and np.isclose(lead[0], 2.35)
    rr, _ = decide(m, pairs, idx, ids, mode="round-robin", seed=0)
    assert rr[0] == 0  # most wins: class 0's two narrow wins


def test_score_mode_job_is_partition_invariant(client, tmp_path):
    cat = make_catalog(tmp_path / "data", n=700, row_group=128)
    tables = []
    for i, rows in enumerate([0, 97]):
        summary = _run(client, cat, tmp_path / f"s{i}", mode="score", partition_rows=rows)
        assert summary["final"]["accuracy"] > summary["per_view"]["a"]["accuracy_base"]
        tables.append(pq.read_table(tmp_path / f"s{i}" / "labels"))
    assert tables[0].equals(tables[1])


def test_bracket_block_margins_equal_the_every_pair_path():
    """A bracket only computes its final match's masked norm (and the fused margins of the rows
    asked for): the same labels, margins and fused margins as the every-pair computation."""
    from dataclasses import replace

    from pairwise_dask.passes import Block, Spec, play_block

    rng = np.random.default_rng(5)
    k, d, n = 6, 24, 300
    classes = rng.normal(size=(k, d)).astype(np.float32)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    views, masks = {}, {}
    for v in ("a", "b"):
        x = (classes[rng.integers(0, k, n)] + rng.normal(scale=0.3, size=(n, d))).astype(np.float32)
        views[v] = x
        masks[v] = fit_masks(class_moments(x, (x @ classes.T).argmax(1), np.ones(n, bool), k), classes,
                             m=8, min_items=1, per_pair=False)
    ids = pa.array(np.arange(n))
    block = Block(ids, hash_ids(ids), views, None, None, {v: 1 / np.linalg.norm(x, axis=1) for v, x in views.items()},
                  False, {})
    spec = Spec("id", "", (("a", "a"), ("b", "b")), tuple("abcdef"), {"a": classes, "b": classes}, -1.0, 0.0,
                False, seed=3, mode="bracket", masks=masks, final="confident-view")
    lazy = play_block(block, spec)
    block.bases.clear()
    full = play_block(block, replace(spec, final="fused"))  # every pair's margin for every row
    for v in views:
        assert np.array_equal(lazy.label[v], full.label[v])
        assert np.allclose(lazy.margin[v], full.margin[v], rtol=1e-5, atol=1e-6)
    assert lazy.margin["a"].min() >= 0 and (lazy.margin["a"] > 0).any()
    rows = np.array([4, 17, 250, 3])
    fused = fuse_margins([pair_margins(x, masks[v], pair_decisions(x, masks[v])) for v, x in views.items()])
    assert np.allclose(lazy.fused_of(rows), fused[rows], rtol=1e-5, atol=1e-6)
    assert np.allclose(full.fused_of(rows), fused[rows], rtol=1e-5, atol=1e-6)
    assert np.array_equal(lazy.final, np.where(lazy.margin["a"] >= lazy.margin["b"], lazy.label["a"],
                                               lazy.label["b"]))


def test_agreement_and_accuracy_figures_by_hand():
    """Weighted F1 (the article's agreement), macro F1 and accuracy of a worked confusion matrix."""
    from pairwise_dask.metrics import accuracy, confusion, macro_f1, weighted_f1

    conf = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])  # truth rows; class 2 absent on both sides
    f1 = [2 * 3 / (4 + 5), 2 * 4 / (6 + 5)]
    assert np.isclose(weighted_f1(conf), (4 * f1[0] + 6 * f1[1]) / 10)
    assert np.isclose(macro_f1(conf), (f1[0] + f1[1]) / 2)
    assert accuracy(conf) == 0.7
    truth, pred = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]), np.array([0, 0, 0, 1, 0, 0, 1, 1, 1, 1])
    assert np.array_equal(confusion(truth, pred, 3), conf)


def test_a_class_with_too_few_items_keeps_its_prompt_in_the_prototypes():
    """mix moves a class vector towards its items' mean only when it has min_items of them."""
    rng = np.random.default_rng(9)
    k, d = 3, 6
    cls = rng.normal(size=(k, d)).astype(np.float32)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    y = np.array([0] * 2 + [1] * 40 + [2] * 40)  # class 0: two items only
    x = rng.normal(size=(len(y), d)).astype(np.float32)
    mom = class_moments(x, y, np.ones(len(y), bool), k)
    proto = prototypes(cls, mom, mix=1.0, per_pair=False, min_items=5)
    assert np.allclose(proto[0], cls[0], atol=1e-6)
    assert not np.allclose(proto[1], cls[1], atol=1e-3) and np.isclose(np.linalg.norm(proto[1]), 1, atol=1e-5)


def test_refined_statistics_use_the_keep_share_of_most_confident_items(client, tmp_path):
    """A refine round's moments hold about ``keep`` of the items: those of largest final margin."""
    cat = make_catalog(tmp_path / "data", n=1000)
    counts = {}
    for keep in (0.3, 0.6):
        s = load_settings(None, {**cat, "out": str(tmp_path / f"k{keep}"), "refine": 1, "keep": keep,
                                 "keep_sample": 0})
        job.fit(s, client=client)
        model = load(tmp_path / f"k{keep}" / "model")
        counts[keep] = {v: int(m.n.sum()) for v, m in model.moments.items()}
        for v, n in counts[keep].items():  # one set per final label: each kept item counted once
            assert abs(n - keep * 1000) <= 25, (keep, v, n)
