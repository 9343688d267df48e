"""decision = discriminant: per-pair diagonal discriminant weights and bias from the moments."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pairwise_dask import job, steps
from pairwise_dask.config import load_settings
from pairwise_dask.errors import BadInputError
from pairwise_dask.masks import DISC_SHRINK, all_pairs, discriminant_values, fit_masks
from pairwise_dask.model import load
from pairwise_dask.passes import review_order
from pairwise_dask.moments import Moments, class_moments
from pairwise_dask.tourney import gather_decisions, masked_margin, pair_decisions, pair_margins

from catalogs import make_catalog


def _two_blobs(n: int = 4000, d: int = 6, seed: int = 0, share_a: float = 0.5):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) >= share_a).astype(np.int32)  # 0 = class a, 1 = class b
    mu = np.zeros((2, d))
    mu[0, :2] = [0.3, -0.2]
    mu[1, :2] = [-0.1, 0.2]
    sd = np.linspace(0.05, 0.2, d)
    x = (mu[y] + rng.normal(size=(n, d)) * sd).astype(np.float32)
    return x, y, mu, sd


def test_discriminant_is_the_diagonal_lda_in_std_units():
    x, y, mu, sd = _two_blobs()
    mom = class_moments(x, y, np.ones(len(y), bool), 2)
    classes = np.eye(2, 6, dtype=np.float32)
    pairs = all_pairs(2)
    dims = np.arange(6, dtype=np.int32)[None, :]
    w, b, sep = discriminant_values(mom, classes, pairs, dims, per_pair=False, min_items=1)
    # by hand from the sample moments
    m, v = mom.mean_var()
    n = mom.n.astype(float)
    pooled = (n[0] * v[0] + n[1] * v[1]) / n.sum()
    pooled = pooled + DISC_SHRINK * pooled.mean() + 1e-12
    ww = (m[0] - m[1]) / pooled
    delta = np.sqrt(ww @ (m[0] - m[1]))
    assert np.allclose(w[0], ww / delta, rtol=1e-5)
    assert np.isclose(sep[0], delta, rtol=1e-5)  # the separation: Δ itself
    assert np.isclose(b[0], -(ww @ (m[0] + m[1])) / 2 / delta, rtol=1e-5)
    margin = x @ w[0] + b[0]
    assert ((margin >= 0) == (y == 0)).mean() > 0.95   # it separates the two blobs
    # the midpoint between the class means is the decision boundary
    assert abs(((m[0] + m[1]) / 2) @ w[0] + b[0]) < 1e-5


def test_prior_shifts_the_bias_by_the_log_count_ratio():
    x, y, _, _ = _two_blobs(share_a=0.8)
    mom = class_moments(x, y, np.ones(len(y), bool), 2)
    classes = np.eye(2, 6, dtype=np.float32)
    pairs, dims = all_pairs(2), np.arange(6, dtype=np.int32)[None, :]
    w0, b0, s0 = discriminant_values(mom, classes, pairs, dims, per_pair=False, min_items=1)
    w1, b1, s1 = discriminant_values(mom, classes, pairs, dims, per_pair=False, min_items=1, prior=1.0)
    assert np.array_equal(s0, s1)
    assert np.array_equal(w0, w1)
    m, _ = mom.mean_var()
    n = mom.n.astype(float)
    # Δ is recovered from the weights: w·(μa − μb) = Δ
    delta = float(w0[0] @ (m[0] - m[1]))
    assert np.isclose(b1[0] - b0[0], np.log(n[0] / n[1]) / delta, rtol=1e-4)


def test_discriminant_masks_in_the_tourney_functions():
    rng = np.random.default_rng(1)
    k, d, n = 4, 12, 300
    c = rng.normal(size=(k, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = (c[rng.integers(0, k, n)] + rng.normal(scale=0.5, size=(n, d))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    lab = (x @ c.T).argmax(1)
    lab[0] = 3  # keep every class present
    mom = class_moments(x, lab, np.ones(n, bool), k)
    masks = fit_masks(mom, c, m=5, min_items=1, per_pair=False, decision="discriminant", prior=1.0)
    assert masks.decision == "discriminant" and masks.bias is not None and masks.anchors is None
    dec = pair_decisions(x, masks)
    want = x @ masks.weights.T + masks.bias
    assert np.allclose(dec, want, atol=1e-5)
    # margins are the decisions themselves (std units), in place or not
    assert np.array_equal(pair_margins(x, masks, dec), dec)
    # gathered per match (the top-t path) equals the product, bias included
    pair = rng.integers(0, len(masks.pairs), size=(n, 3))
    g = gather_decisions(x, masks, pair)
    assert np.allclose(g, np.take_along_axis(dec, pair, axis=1), atol=1e-5)
    assert np.array_equal(masked_margin(x, masks, pair[:, 0], g[:, 0]), g[:, 0])
    # raw rows with their inverse norms (how the job holds them): a discriminant depends on the
    # rows' scale, so both paths must apply it, before the bias
    raw = x * rng.uniform(0.5, 3.0, size=(n, 1)).astype(np.float32)
    scale = (1.0 / np.linalg.norm(raw, axis=1)).astype(np.float32)
    assert np.allclose(pair_decisions(raw, masks, scale), dec, atol=1e-5)
    assert np.allclose(gather_decisions(raw, masks, pair, scale), g, atol=1e-5)


def test_a_class_without_items_falls_back_to_its_prompt():
    rng = np.random.default_rng(2)
    k, d, n = 3, 8, 200
    c = np.eye(k, d, dtype=np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    lab = rng.integers(0, 2, n)  # class 2 is never used
    mom = class_moments(x, lab, np.ones(n, bool), k)
    masks = fit_masks(mom, c, m=4, min_items=5, per_pair=False, decision="discriminant")
    assert masks.fallback.sum() == 2
    assert np.isfinite(masks.weights).all() and np.isfinite(masks.bias).all()
    with pytest.raises(ValueError):
        fit_masks(mom, c, m=4, min_items=5, per_pair=False, decision="nope")


def test_bad_decision_is_bad_input(tmp_path):
    cat = make_catalog(tmp_path / "data", n=50)
    with pytest.raises(BadInputError):
        load_settings(None, {**cat, "out": str(tmp_path / "o"), "decision": "lda"})


def test_fingerprint_leaves_out_the_new_options_at_their_old_values(tmp_path):
    """A job that spells out the old method (cosine, no prior, no rotation) keeps the fingerprint it
    had before these options existed, so its earlier outputs are still recognised as its own."""
    import dataclasses
    import hashlib
    import json

    cat = make_catalog(tmp_path / "data", n=50)
    s = load_settings(None, {**cat, "out": str(tmp_path / "o")})
    old = s.replace(decision="cosine", prior=0.0, rotate="none", keep_sample=0, fuse="mean")
    # the fingerprint as computed before the options existed (same fields minus the new ones)
    fields = {k: v for k, v in dataclasses.asdict(old).items()
              if k not in {"out", "overwrite", "scheduler", "workers", "threads_per_worker", "memory_limit",
                           "cache", "partition_rows", "worker_malloc", "job_file", "storage_options", "flags",
                           "worker_wait", "decision", "prior", "rotate",
                           "rotate_sample", "rotate_dims", "keep_sample", "fuse"}}
    assert old.fingerprint() == hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert s.fingerprint() != old.fingerprint()  # the defaults are a different method


def test_a_model_saved_before_decision_existed_loads_as_the_cosine_model_it_is(tmp_path: Path) -> None:
    """A model written before ``decision`` existed has no such key in its params.json, and its
    masks are cosine masks. Loading it must rebuild those cosine pair weights from its prompts,
    not discriminants from its moments, or ``apply`` would label with a method it was never
    fitted with (and silently change an older model's labels)."""
    from pairwise_dask.model import FittedModel, save

    rng = np.random.default_rng(3)
    k, d, n = 3, 8, 300
    prompts = rng.normal(size=(k, d))
    prompts = (prompts / np.linalg.norm(prompts, axis=1, keepdims=True)).astype(np.float32)
    y = rng.integers(0, k, n).astype(np.int32)
    x = (prompts[y] + rng.normal(scale=0.5, size=(n, d))).astype(np.float32)
    mom = class_moments(x, y, np.ones(n, bool), k)
    masks = fit_masks(mom, prompts, m=4, min_items=2, per_pair=False, decision="cosine")
    folder = tmp_path / "model"
    save(FittedModel(("c0", "c1", "c2"), {"a": prompts}, {"a": mom}, {"a": masks},
                     {"min_items": 2, "mix": 0.0, "prior": 0.0, "decision": "cosine"}), folder)
    params = json.loads((folder / "params.json").read_text())
    del params["decision"]  # as an older release wrote it
    (folder / "params.json").write_text(json.dumps(params))
    loaded = load(folder).masks["a"]
    assert loaded.decision == "cosine" and loaded.bias is None
    np.testing.assert_array_equal(loaded.dims, masks.dims)
    np.testing.assert_array_equal(loaded.weights, masks.weights)


def test_discriminant_job_runs_applies_and_is_partition_invariant(client, tmp_path):
    cat = make_catalog(tmp_path / "data", n=700, row_group=128)
    opts = {"decision": "discriminant", "prior": 1.0, "refine": 2, "fit_on": "fused"}
    tables = []
    for i, rows in enumerate([0, 97]):
        s = load_settings(None, {**cat, "out": str(tmp_path / f"r{i}"), "partition_rows": rows, **opts})
        summary = job.run(s, client=client)
        assert summary["final"]["accuracy"] > summary["per_view"]["a"]["accuracy_base"]
        tables.append(pq.read_table(tmp_path / f"r{i}" / "labels"))
    assert tables[0].equals(tables[1])
    # the saved model rebuilds the same discriminant: apply gives the run's labels
    model = load(tmp_path / "r0" / "model")
    assert all(m.decision == "discriminant" and m.bias is not None for m in model.masks.values())
    s = load_settings(None, {**cat, "out": str(tmp_path / "applied"), **opts})
    job.apply(s, str(tmp_path / "r0" / "model"), client=client)
    assert pq.read_table(tmp_path / "applied" / "labels").equals(tables[0])
    # the review list is ranked by the fused discriminant margins (finite, in the review order)
    dis = pq.read_table(tmp_path / "r0" / "disagreements")
    assert np.isfinite(dis.column("priority").to_numpy()).all()
    assert review_order(dis).to_pylist() == list(range(dis.num_rows))


# --- rotate = pca ---------------------------------------------------------------------------

def test_rotation_is_orthogonal_exact_under_merge_and_keeps_cosines():
    from pairwise_dask.rotation import block_gram, rotate_classes, rotation_from_gram

    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 10)) * np.linspace(0.1, 2.0, 10) @ rng.normal(size=(10, 10))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    whole = block_gram(x)
    parts = [block_gram(x[s:s + 77]) for s in range(0, 500, 77)]
    n = sum(p[0] for p in parts)
    s1 = sum(p[1] for p in parts[::-1])
    g = sum(p[2] for p in parts[::-1])
    assert n == whole[0] and np.array_equal(s1, whole[1]) and np.array_equal(g, whole[2])  # bit for bit
    r = rotation_from_gram(n, s1, g)
    assert np.allclose(r.T @ r, np.eye(10), atol=1e-5)
    xr = x @ r
    var = xr.var(axis=0)
    assert (np.diff(var) <= 1e-6).all()                  # largest variance first
    cov = np.cov(xr.T)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-4  # uncorrelated coordinates
    c = rng.normal(size=(3, 10)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    assert np.allclose(xr @ rotate_classes(c, r).T, x @ c.T, atol=1e-5)  # cosines unchanged


def test_rotated_job_is_partition_invariant_applies_and_updates_only_with_its_basis(client, tmp_path):
    cat = make_catalog(tmp_path / "data", n=700, row_group=128)
    opts = {"decision": "discriminant", "rotate": "pca", "refine": 1}
    tables = []
    for i, rows in enumerate([0, 97]):
        s = load_settings(None, {**cat, "out": str(tmp_path / f"r{i}"), "partition_rows": rows, **opts})
        summary = job.run(s, client=client)
        tables.append(pq.read_table(tmp_path / f"r{i}" / "labels"))
        assert summary["final"]["accuracy"] > summary["per_view"]["a"]["accuracy_base"]
    assert tables[0].equals(tables[1])
    model = load(tmp_path / "r0" / "model")
    assert set(model.rotation) == {"a", "b"} and (tmp_path / "r0" / "model" / "rotation.parquet").exists()
    # the model's classes are the prompts as given, not rotated
    given = pq.read_table(cat["classes"]).column("emb_a").combine_chunks().flatten().to_numpy().reshape(4, -1)
    assert np.allclose(model.classes["a"], given / np.linalg.norm(given, axis=1, keepdims=True), atol=1e-6)
    s = load_settings(None, {**cat, "out": str(tmp_path / "applied"), **opts})
    job.apply(s, str(tmp_path / "r0" / "model"), client=client)
    assert pq.read_table(tmp_path / "applied" / "labels").equals(tables[0])
    # update: refine = 0 models only (as before), and in the model's basis
    s0 = load_settings(None, {**cat, "out": str(tmp_path / "f0"), **opts, "refine": 0})
    job.fit(s0, client=client)
    plain = load_settings(None, {**cat, "out": str(tmp_path / "u"), "refine": 0, "rotate": "none"})
    with pytest.raises(BadInputError, match="rotate"):
        job.fit(plain, client=client, base_model=str(tmp_path / "f0" / "model"))
    job.fit(s0.replace(out=str(tmp_path / "u2")), client=client, base_model=str(tmp_path / "f0" / "model"))
    upd = load(tmp_path / "u2" / "model")
    assert all(np.array_equal(upd.rotation[v], load(tmp_path / "f0" / "model").rotation[v]) for v in "ab")


def test_rotation_sample_is_a_fixed_id_sample_whatever_the_partitioning(client, tmp_path):
    """``rotate_sample``: past it the Gram is taken over the items whose id hash is below a bound
    set by the row count alone, so the basis is the exact Gram of that sample for any partitioning,
    cached or streamed."""
    from pairwise_dask.arrays import hash_ids, inverse_norms
    from pairwise_dask.rotation import block_gram, rotation_from_gram, sample_below

    assert sample_below(700, 0) is None and sample_below(700, 700) is None and sample_below(700, 5000) is None
    below = sample_below(700, 200)
    assert below == (200 << 64) // 700
    cat = make_catalog(tmp_path / "data", n=700, row_group=128)
    items = pq.read_table(cat["items"])
    ids = items.column("id").combine_chunks()
    inside = hash_ids(ids) < np.uint64(below)
    assert 150 < inside.sum() < 250  # about the sample asked for

    opts = {"decision": "discriminant", "rotate": "pca", "refine": 1, "rotate_sample": 200}
    tables = []
    for i, (rows, cache) in enumerate([(0, "on"), (97, "off"), (50, "on")]):
        s = load_settings(None, {**cat, "out": str(tmp_path / f"r{i}"), "partition_rows": rows, "cache": cache,
                                 **opts})
        job.run(s, client=client)
        tables.append(pq.read_table(tmp_path / f"r{i}" / "labels"))
        assert json.loads((tmp_path / f"r{i}" / "model" / "params.json").read_text())["rotate_sample"] == 200
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])
    model = load(tmp_path / "r0" / "model")
    for v in "ab":
        x = items.column(f"emb_{v}").combine_chunks().flatten().to_numpy().reshape(700, -1)[inside]
        n, s1, g = block_gram(x * inverse_norms(x, name=v)[:, None])
        assert n == inside.sum()
        assert np.array_equal(model.rotation[v], rotation_from_gram(n, s1, g))
    # every item (rotate_sample = 0) gives another basis: the sample is really used
    job.run(load_settings(None, {**cat, "out": str(tmp_path / "all"), **opts, "rotate_sample": 0}), client=client)
    assert not np.array_equal(load(tmp_path / "all" / "model").rotation["a"], model.rotation["a"])


@pytest.mark.parametrize("cache", ["off", "on"])
def test_rotation_reads_the_catalog_once_when_cached(cache, client, tmp_path):
    """With the items kept in worker memory the Grams come from the kept raw blocks, which are then
    rotated in place: storage is read once. Streaming, every pass (and the rotation's) reads it."""
    from collections import Counter

    from dask.utils import key_split
    from distributed import get_task_stream

    cat = make_catalog(tmp_path / "data", n=300, row_group=100)
    s = load_settings(None, {**cat, "out": str(tmp_path / "o"), "cache": cache, "refine": 1})
    with get_task_stream(client) as ts:
        summary = job.run(s, client=client)
    tasks = Counter(key_split(t["key"]) for t in ts.data)
    parts = summary["items"]["partitions"]
    reads = 1 if cache == "on" else 1 + job._passes(s, True)
    assert tasks["read_parquet"] == reads * parts
    assert tasks["gram_partition"] == parts and tasks["rotate"] == (parts if cache == "on" else 0)


def test_rotate_dims_keeps_the_first_axes_and_base_labels_of_the_whole_vectors(client, tmp_path):
    """``rotate_dims``: the statistics and the tourney work on the first ``r`` principal axes; base
    labels stay the cosines of the rows as read (the same as without any rotation); the labels do
    not depend on the partitioning or on caching; apply reproduces them; an update keeps ``r``."""
    cat = make_catalog(tmp_path / "data", n=700, d=16, row_group=128)
    opts = {"decision": "discriminant", "rotate": "pca", "refine": 1, "rotate_dims": 0.5}
    tables = []
    for i, (rows, cache) in enumerate([(0, "on"), (97, "off")]):
        s = load_settings(None, {**cat, "out": str(tmp_path / f"t{i}"), "partition_rows": rows, "cache": cache,
                                 **opts})
        summary = job.run(s, client=client)
        assert summary["final"]["accuracy"] > summary["per_view"]["a"]["accuracy_base"]
        tables.append(pq.read_table(tmp_path / f"t{i}" / "labels"))
    assert tables[0].equals(tables[1])
    model = load(tmp_path / "t0" / "model")
    assert model.rotation["a"].shape == (16, 8) and model.moments["a"].s1.shape == (4, 8)
    assert int(model.masks["a"].dims.max()) < 8
    # base labels: those of the plain (unrotated) job, bit for bit
    job.run(load_settings(None, {**cat, "out": str(tmp_path / "plain"), **opts, "rotate": "none"}), client=client)
    plain = pq.read_table(tmp_path / "plain" / "labels")
    for v in "ab":
        assert tables[0].column(f"base_{v}").equals(plain.column(f"base_{v}"))
    # apply rebuilds the truncated basis from the model
    job.apply(load_settings(None, {**cat, "out": str(tmp_path / "applied"), **opts}), str(tmp_path / "t0" / "model"),
              client=client)
    assert pq.read_table(tmp_path / "applied" / "labels").equals(tables[0])
    # an update must keep the model's axes; bad values are refused before any data is read
    s0 = load_settings(None, {**cat, "out": str(tmp_path / "f0"), **opts, "refine": 0})
    job.fit(s0, client=client)
    with pytest.raises(BadInputError, match="rotate_dims"):
        job.fit(s0.replace(out=str(tmp_path / "u"), rotate_dims=0.0), client=client,
                base_model=str(tmp_path / "f0" / "model"))
    job.fit(s0.replace(out=str(tmp_path / "u2")), client=client, base_model=str(tmp_path / "f0" / "model"))
    assert load(tmp_path / "u2" / "model").moments["a"].s1.shape == (4, 8)
    with pytest.raises(BadInputError, match="rotate_dims = 17 is larger than d = 16"):
        job.run(s0.replace(out=str(tmp_path / "bad"), rotate_dims=17.0), client=client)
    with pytest.raises(BadInputError, match="dims = 9 is larger than the 8 principal axes"):
        job.run(s0.replace(out=str(tmp_path / "bad2"), dims=9.0), client=client)


def _rotated_spec_and_group(tmp_path, *, row_group: int, group: int, seed: int):
    """A 300-item catalog's spec in a random orthogonal basis, and one row group as read."""
    from pairwise_dask.io import read_row_group

    cat = make_catalog(tmp_path / "data", n=300, d=16, row_group=row_group)
    prep = job.prepare(load_settings(None, {**cat, "out": str(tmp_path / "o")}))
    rng = np.random.default_rng(seed)
    spec = steps.with_rotation(prep.spec, {v: np.linalg.qr(rng.normal(size=(16, 16)))[0].astype(np.float32)
                                           for v in "ab"})
    return spec, read_row_group(cat["items"], group, ["id", "emb_a", "emb_b", "label"])


def test_base_label_passes_of_a_streamed_catalog_skip_the_rotation(tmp_path):
    """Passes that read only base labels (the fused base keep threshold, the quantile filters)
    leave a streamed partition unrotated: the same base labels and histograms as a rotated block."""
    from pairwise_dask import passes

    spec, table = _rotated_spec_and_group(tmp_path, row_group=100, group=1, seed=0)
    rotated, raw = passes.read_block(table, spec), passes.read_block(table, spec, rotate=False)
    assert rotated.rotated and not raw.rotated
    for v in "ab":
        as_read = table.column(f"emb_{v}").combine_chunks().flatten().to_numpy().reshape(100, 16)
        assert np.array_equal(raw.views[v], as_read) and not np.array_equal(rotated.views[v], as_read)
        assert np.array_equal(raw.bases[v].scores, rotated.bases[v].scores)
    assert np.array_equal(passes.margin_histogram_partition(table, spec),
                          passes.margin_histogram_partition(rotated, spec))
    hist_raw, hist_rot = passes.histogram_partition(table, spec), passes.histogram_partition(rotated, spec)
    assert all(np.array_equal(hist_raw.counts[v], hist_rot.counts[v]) for v in "ab")


def test_keep_sample_reads_the_keep_threshold_from_a_fixed_sample(client, tmp_path):
    """``keep_sample``: past it the keep thresholds (fused base margins, each refine round's final
    margins) are quantiles over the items whose id hash is below a bound. Only they are rotated and
    played in those passes, streamed or cached, so the labels stay the same for any partitioning;
    a sample as large as the catalog is every item."""
    cat = make_catalog(tmp_path / "data", n=700, d=16, row_group=128)
    opts = {"refine": 2, "keep_sample": 250}
    tables, thresholds = [], []
    for i, (rows, cache) in enumerate([(0, "on"), (0, "off"), (90, "on"), (233, "off")]):
        s = load_settings(None, {**cat, "out": str(tmp_path / f"r{i}"), "partition_rows": rows, "cache": cache,
                                 **opts})
        summary = job.run(s, client=client)
        tables.append(pq.read_table(tmp_path / f"r{i}" / "labels"))
        params = json.loads((tmp_path / f"r{i}" / "model" / "params.json").read_text())
        assert params["keep_sample"] == 250 and summary["method"]["keep_sample"] == 250
        thresholds.append((params["base_keep_margin"], summary["refine_thresholds"]))
    assert all(t.equals(tables[0]) for t in tables[1:])
    assert all(t == thresholds[0] for t in thresholds[1:])
    every = []
    for sample in (0, 700):
        job.run(load_settings(None, {**cat, "out": str(tmp_path / f"k{sample}"), **opts, "keep_sample": sample}),
                client=client)
        p = json.loads((tmp_path / f"k{sample}" / "model" / "params.json").read_text())
        every.append((p["base_keep_margin"], p["refine_thresholds"]))
    assert every[0] == every[1]        # a sample of at least every item is every item
    assert every[0] != thresholds[0]   # and the smaller sample is really used


def test_keep_sample_histogram_counts_the_sampled_rows_of_a_whole_block(tmp_path):
    """The sampled histogram of a streamed partition (sampled, then rotated) equals the histogram
    of the same rows' margins taken from the whole rotated block."""
    from pairwise_dask import passes
    from pairwise_dask.rotation import sample_below

    spec, table = _rotated_spec_and_group(tmp_path, row_group=300, group=0, seed=1)
    whole = passes.read_block(table, spec)
    below = sample_below(300, 100)
    inside = whole.id_hash < np.uint64(below)
    assert 50 < inside.sum() < 150
    margin = passes.fused_base({v: whole.bases[v] for v in "ab"}, spec.base_keep)[1][inside]
    bins = passes.margin_bins(spec)
    want = np.histogram(np.clip(margin, 0.0, bins[-1]), bins=bins)[0]
    assert np.array_equal(passes.margin_histogram_partition(table, spec, below), want)
    assert np.array_equal(passes.margin_histogram_partition(whole, spec, below), want)
    assert passes.margin_histogram_partition(table, spec).sum() == 300
    # a partition with no sampled item counts nothing (and plays nothing)
    empty = passes.margin_histogram_partition(table, spec, 1)
    assert empty.shape == want.shape and empty.sum() == 0


def test_llr_fusion_in_the_job_is_the_views_separation_weighted_margins(client, tmp_path):
    """fuse = llr: the final label is the mode played on Σ_v Δ_v m_v / √Σ Δ_v², with each view's Δ
    from the saved model's masks; fuse = mean keeps the labels the job gave before the option."""
    from pairwise_dask.tourney import decide, fuse_margins

    from pairwise_dask.arrays import hash_ids

    cat = make_catalog(tmp_path / "data", n=700, row_group=128)
    opts = {"decision": "discriminant", "refine": 0, "fit_on": "view", "rotate": "none", "mode": "score"}
    finals = {}
    for fuse in ("llr", "mean"):
        job.run(load_settings(None, {**cat, "out": str(tmp_path / fuse), "fuse": fuse, **opts}), client=client)
        finals[fuse] = pq.read_table(tmp_path / fuse / "labels").column("final_label").to_pylist()
    model = load(tmp_path / "llr" / "model")
    t = pq.read_table(cat["items"])
    margins, seps = [], []
    for v, col in cat["views"]:
        x = np.stack(t.column(col).to_numpy(zero_copy_only=False)).astype(np.float32)
        m = model.masks[v]
        assert m.separation is not None and (m.separation > 0).all()
        margins.append(pair_decisions(x, m, 1.0 / np.linalg.norm(x, axis=1)))
        seps.append(m.separation)
    idx = model.masks["a"].pair_index()
    ids = hash_ids(t.column("id").combine_chunks())
    names = np.array(model.names)
    for fuse, sep in (("llr", seps), ("mean", None)):
        want, _ = decide(fuse_margins(margins, sep), model.masks["a"].pairs, idx, ids, mode="score", seed=0)
        assert (names[want] == np.array(finals[fuse])).all()
    # the two fusions label some items differently here (else the test above could not tell them apart)
    assert finals["llr"] != finals["mean"]


def test_base_keep_ranks_round_0_by_the_labels_own_cosine_or_its_lead():
    """``base_keep``: the confidence round 0 keeps by. ``cosine`` (the default since session 15):
    1 + the fused base label's own mean cosine; ``margin`` (before): its lead over the runner-up.
    Both lie in [0, 2], the keep threshold's histogram range."""
    from types import SimpleNamespace

    from pairwise_dask.passes import MARGIN_BINS, fused_base

    a = np.array([[0.9, 0.8, 0.1], [0.3, -0.2, 0.1], [-0.5, -0.4, -0.9]], np.float32)
    b = np.array([[0.7, 0.6, 0.1], [0.5, 0.0, 0.1], [-0.3, -0.6, -0.7]], np.float32)
    bases = {"a": SimpleNamespace(scores=a), "b": SimpleNamespace(scores=b)}
    label, lead = fused_base(bases, "margin")
    label_c, own = fused_base(bases, "cosine")
    assert label.tolist() == label_c.tolist() == [0, 0, 0]  # the label does not depend on it
    np.testing.assert_allclose(lead, [0.1, 0.3, 0.1], atol=1e-6)
    np.testing.assert_allclose(own, [1.8, 1.4, 0.6], atol=1e-6)
    assert fused_base(bases)[1].tolist() == own.tolist()  # the default, as the job's
    assert (own >= MARGIN_BINS[0]).all() and (own <= MARGIN_BINS[-1]).all()


def test_base_keep_is_recorded_and_a_model_without_it_is_read_as_margin(client, tmp_path):
    """The job records ``base_keep`` with the method (summary, params.json); the two rules keep
    different items (a different threshold); a model saved before the option existed was fitted
    by the lead (its ``base_keep_margin`` is a threshold on it), so apply and update read it so."""
    from pairwise_dask.config import model_method

    cat = make_catalog(tmp_path / "data", n=600, d=16)
    params = {}
    for rule in ("cosine", "margin"):
        summary = job.run(load_settings(None, {**cat, "out": str(tmp_path / rule), "base_keep": rule}), client=client)
        assert summary["method"]["base_keep"] == rule
        params[rule] = json.loads((tmp_path / rule / "model" / "params.json").read_text())
        assert params[rule]["base_keep"] == rule
    assert params["cosine"]["base_keep_margin"] > 1.0 > params["margin"]["base_keep_margin"]
    assert load_settings(None, {**cat, "out": "x"}).base_keep == "cosine"
    old = {k: v for k, v in params["margin"].items() if k != "base_keep"}
    assert model_method(old)["method.base_keep"] == "margin"
