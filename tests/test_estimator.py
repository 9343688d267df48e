"""The estimator API on an existing Client: fit/predict/partial_fit/save/load."""
from __future__ import annotations

from pathlib import Path

import dask.dataframe as dd
import pyarrow.parquet as pq

from pairwise_dask import PairwiseLabeler, job
from pairwise_dask.config import load_settings

from catalogs import make_catalog


def test_estimator_matches_the_job_and_round_trips(client, tmp_path):
    cat = make_catalog(tmp_path / "data", n=500)
    # refine = 0: moments that partial_fit can add to (refined moments are of refined labels)
    job.run(load_settings(None, {**cat, "out": str(tmp_path / "out"), "refine": 0}), client=client)
    ref = pq.read_table(tmp_path / "out" / "labels").to_pandas()

    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    lab = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), label="label", refine=0).fit(items)
    pred = lab.predict(items)
    assert isinstance(pred, dd.DataFrame)  # lazy
    got = pred.compute()
    for col in ("label_a", "label_b", "final_label", "base_a"):
        assert got[col].astype(str).tolist() == ref[col].astype(str).tolist()
    assert lab.masks_table().equals(pq.read_table(tmp_path / "out" / "model" / "masks.parquet"))

    lab.save(tmp_path / "m")
    again = PairwiseLabeler.load(tmp_path / "m").predict(items).compute()
    assert again["final_label"].tolist() == got["final_label"].tolist()
    # a run's model/ folder loads too
    from_run = PairwiseLabeler.load(tmp_path / "out" / "model", views=dict(cat["views"]))
    assert from_run.predict(items).compute()["label_a"].tolist() == got["label_a"].tolist()

    # partial_fit: moments add exactly (as `update`: sets from each view's own base labels, in the
    # embedding's own basis; a fused keep share or a PCA basis would be the first batch's)
    first = dd.from_pandas(items.compute().iloc[:300], npartitions=2)
    rest = dd.from_pandas(items.compute().iloc[300:], npartitions=3)
    plain = {"refine": 0, "fit_on": "view", "rotate": "none"}
    inc = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), **plain).fit(first).partial_fit(rest)
    whole = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), **plain).fit(items)
    assert inc.masks_table().equals(whole.masks_table())


def test_estimator_loads_a_discriminant_rotated_model(client, tmp_path):
    cat = make_catalog(tmp_path / "data", n=400)
    opts = {"decision": "discriminant", "rotate": "pca", "refine": 1, "prior": 1.0}
    job.run(load_settings(None, {**cat, "out": str(tmp_path / "out"), **opts}), client=client)
    ref = pq.read_table(tmp_path / "out" / "labels").to_pandas()
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    got = PairwiseLabeler.load(tmp_path / "out" / "model", views=dict(cat["views"])).predict(items).compute()
    for col in ("label_a", "label_b", "final_label", "base_a"):
        assert got[col].astype(str).tolist() == ref[col].astype(str).tolist()


def test_estimator_fit_with_samples_matches_the_job(client, tmp_path):
    """The defaults (PCA basis, fused keep, two refine rounds) with both samples smaller than the
    catalog: the estimator's fit reads the same sampled items as the job, so the same masks."""
    cat = make_catalog(tmp_path / "data", n=500, row_group=120)
    opts = {"rotate_sample": 200, "keep_sample": 150}
    job.run(load_settings(None, {**cat, "out": str(tmp_path / "out"), **opts}), client=client)
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    lab = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), label="label", **opts).fit(items)
    assert lab.masks_table().equals(pq.read_table(tmp_path / "out" / "model" / "masks.parquet"))
    ref = pq.read_table(tmp_path / "out" / "labels").to_pandas()
    assert lab.predict(items).compute()["final_label"].astype(str).tolist() == ref["final_label"].astype(str).tolist()


def test_estimator_fuse_llr_matches_the_job_and_bad_fuse_is_refused(client, tmp_path):
    import pytest

    cat = make_catalog(tmp_path / "data", n=500)
    opts = {"refine": 0, "fit_on": "view", "rotate": "none", "decision": "discriminant", "fuse": "llr"}
    job.run(load_settings(None, {**cat, "out": str(tmp_path / "out"), **opts}), client=client)
    ref = pq.read_table(tmp_path / "out" / "labels").to_pandas()
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    got = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), **opts).fit(items).predict(items).compute()
    assert got["final_label"].astype(str).tolist() == ref["final_label"].astype(str).tolist()
    # a saved model keeps its fusion
    assert PairwiseLabeler.load(tmp_path / "out" / "model", views=dict(cat["views"])).fuse == "llr"
    with pytest.raises(ValueError, match="fuse"):
        PairwiseLabeler(cat["classes"], views=dict(cat["views"]), fuse="max")


def test_estimator_refuses_to_update_refined_moments_and_duplicate_ids(client, tmp_path):
    import pandas as pd
    import pytest

    from pairwise_dask.errors import BadInputError

    cat = make_catalog(tmp_path / "data", n=300)
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    lab = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), refine=1, rotate="none").fit(items)
    before = lab.masks_table()
    with pytest.raises(BadInputError, match="refine > 0 cannot be updated"):
        lab.partial_fit(items)
    assert lab.masks_table().equals(before)  # the fitted model is left as it was
    df = items.compute()
    twice = dd.from_pandas(pd.concat([df, df.iloc[[7]]]).reset_index(drop=True), npartitions=3)  # in another partition
    with pytest.raises(BadInputError, match="duplicated id") as info:
        PairwiseLabeler(cat["classes"], views=dict(cat["views"]), refine=0).fit(twice)
    assert info.value.column == "id"


def test_estimator_plays_the_jobs_bracket_with_the_same_default_seed(client, tmp_path):
    """In mode bracket the labels depend on the seed's draw: the estimator's default is the job's."""
    cat = make_catalog(tmp_path / "data", n=400, k=6)
    opts = {"refine": 0, "mode": "bracket", "final": "confident-view"}
    job.run(load_settings(None, {**cat, "out": str(tmp_path / "out"), **opts}), client=client)
    ref = pq.read_table(tmp_path / "out" / "labels").to_pandas()
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    got = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), label="label", **opts).fit(items).predict(items).compute()
    assert got["label_a"].astype(str).tolist() == ref["label_a"].astype(str).tolist()
    other = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), label="label", seed=1, **opts).fit(items)
    assert other.predict(items).compute()["label_a"].astype(str).tolist() != ref["label_a"].astype(str).tolist()


def test_load_reads_new_items_from_the_columns_it_is_given(tmp_path: Path) -> None:
    """A saved labeler remembers its items' embedding columns, but the items it labels later may
    name them otherwise: the ``views`` given to ``load()`` are the columns read, over the saved
    ones, and give the labels the saved columns gave. (Any Dask scheduler: no cluster needed.)"""
    cat = make_catalog(tmp_path / "data", n=200)
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    lab = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), refine=0, fit_on="view", rotate="none").fit(items)
    lab.save(tmp_path / "m")
    want = lab.predict(items).compute()["final_label"].astype(str).tolist()
    loaded = PairwiseLabeler.load(tmp_path / "m", views={"a": "img", "b": "txt"})
    assert loaded.views == {"a": "img", "b": "txt"}
    renamed = items.rename(columns={"emb_a": "img", "emb_b": "txt"})
    assert loaded.predict(renamed).compute()["final_label"].astype(str).tolist() == want


def test_bad_option_values_are_refused_as_the_job_refuses_them() -> None:
    """mode = "Score", keep = 1.5 or refine = -1 were taken and labelled silently otherwise."""
    import pytest

    for bad, phrase in ((dict(mode="Score"), "mode = 'Score' must be one of"), (dict(keep=1.5), "keep = 1.5 must be"),
                        (dict(refine=-1), "refine = -1 must be"), (dict(fit_on="nope"), "fit_on = 'nope'"),
                        (dict(rotate="nope"), "rotate = 'nope'"), (dict(final="nope"), "final = 'nope'")):
        with pytest.raises(ValueError, match=phrase):
            PairwiseLabeler("classes.parquet", views={"a": "emb_a"}, **bad)
    PairwiseLabeler("classes.parquet", views={"a": "emb_a"}, dims=None)  # None: the default


def test_load_of_a_runs_model_takes_the_columns_from_its_summary(client, tmp_path):
    """A run's model/ has no columns of its own (only the estimator's save wrote them): load()
    read the views as columns named like the views and predict failed ("column 'a' is missing")."""
    cat = make_catalog(tmp_path / "data", n=300)
    job.run(load_settings(None, {**cat, "out": str(tmp_path / "run"), "mode": "bracket"}), client=client)
    est = PairwiseLabeler.load(tmp_path / "run" / "model")
    assert est.views == {"a": "emb_a", "b": "emb_b"} and (est.id, est.label) == ("id", "label")
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow")
    got = est.predict(items).compute().sort_values("id").reset_index(drop=True)
    want = pq.read_table(tmp_path / "run" / "labels").to_pandas().sort_values("id").reset_index(drop=True)
    assert (got["final_label"].astype(str).to_numpy() == want["final_label"].astype(str).to_numpy()).all()
    assert (got["annotation"].astype(str).to_numpy() == want["annotation"].astype(str).to_numpy()).all()


def test_partial_fit_of_a_quantile_filtered_model_equals_update(client, tmp_path):
    """A job model fitted with cos_quantile / diff_quantile holds per-class thresholds (and, with a
    diff filter, per-pair sets): partial_fit must select the new items' sets with them, as
    ``update`` does, or the moments it adds are of other sets (diff_quantile crashed on the shapes)."""
    import numpy as np

    from pairwise_dask.model import load

    cat = make_catalog(tmp_path / "data", n=1200, d=16, k=5)
    t = pq.read_table(cat["items"])
    for name, part in (("A", t.slice(0, 700)), ("B", t.slice(700))):
        (tmp_path / name).mkdir()
        pq.write_table(part, tmp_path / name / "items.parquet", row_group_size=100)
    for q in ({"cos_quantile": 0.3}, {"diff_quantile": 0.3}):
        tag = next(iter(q))
        opts = {**cat, "refine": 0, "fit_on": "view", "rotate": "none", "label": "", **q}
        job.fit(load_settings(None, {**opts, "items": str(tmp_path / "A" / "items.parquet"),
                                     "out": str(tmp_path / tag / "fit")}), client=client)
        job.fit(load_settings(None, {**opts, "items": str(tmp_path / "B" / "items.parquet"),
                                     "out": str(tmp_path / tag / "update")}),
                client=client, base_model=str(tmp_path / tag / "fit" / "model"))
        lab = PairwiseLabeler.load(tmp_path / tag / "fit" / "model")
        lab.partial_fit(dd.read_parquet(str(tmp_path / "B" / "items.parquet"), dtype_backend="pyarrow",
                                        split_row_groups=True))
        want = load(tmp_path / tag / "update" / "model")
        for v in ("a", "b"):
            got = lab.model_.moments[v]
            for f in ("n", "s1", "s2"):
                np.testing.assert_array_equal(getattr(got, f), getattr(want.moments[v], f), err_msg=f"{tag} {v} {f}")
            np.testing.assert_array_equal(lab.model_.masks[v].dims, want.masks[v].dims)
        # saved and partially fitted again, the filter is still the model's
        lab.save(tmp_path / tag / "saved")
        assert load(tmp_path / tag / "saved").params["thresholds"] == want.params["thresholds"]


def test_partial_fit_refuses_what_update_refuses(client, tmp_path):
    """A refined job model loaded with refine = 0, or a model loaded with other options or views,
    would add moments of other sets to the model's (and save it as updatable): refused, as update
    refuses it, every difference named, the model left as it was."""
    import pytest

    from pairwise_dask.errors import BadInputError

    cat = make_catalog(tmp_path / "data", n=300)
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    job.fit(load_settings(None, {**cat, "out": str(tmp_path / "refined"), "refine": 1, "rotate": "none"}),
            client=client)
    lab = PairwiseLabeler.load(tmp_path / "refined" / "model", refine=0)
    with pytest.raises(BadInputError, match="refine > 0 cannot be updated"):
        lab.partial_fit(items)
    job.fit(load_settings(None, {**cat, "out": str(tmp_path / "plain"), "refine": 0, "rotate": "none",
                                 "fit_on": "view"}), client=client)
    lab = PairwiseLabeler.load(tmp_path / "plain" / "model", cos_min=0.3, dims=3, views={"a": "emb_a"})
    before = lab.masks_table()
    with pytest.raises(BadInputError) as info:
        lab.partial_fit(items)
    for part in ("partial_fit cannot use the model as asked", "the model's view(s) b are not among",
                 "cos_min = 0.3 (the model: -1)", "dims = 3 (the model: 0.5)"):
        assert part in info.value.what, part
    assert lab.masks_table().equals(before)
    # the model's own options: accepted
    PairwiseLabeler.load(tmp_path / "plain" / "model").partial_fit(items)


def test_estimator_fit_in_this_process_rounds_as_the_job(client, tmp_path):
    """With no distributed Client the estimator computes in this process, whose BLAS may use
    several threads: a docs sweep found its PCA basis, moments and masks differing from a run's on
    the same items. fit now runs under one BLAS thread, as the job's workers do."""
    import dask
    from threadpoolctl import threadpool_limits

    from catalogs import REPO

    data = REPO / "jobs" / "demo-data"
    cat = {"items": str(data / "items.parquet"), "classes": str(data / "classes.parquet"),
           "views": (("a", "emb_a"), ("b", "emb_b")), "label": "label"}
    job.run(load_settings(None, {**cat, "out": str(tmp_path / "out")}), client=client)
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    with threadpool_limits(limits=2), dask.config.set(scheduler="threads"):  # BLAS may thread here
        lab = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), label="label").fit(items)
    lab.save(tmp_path / "est")
    for name in ("rotation.parquet", "moments.parquet", "masks.parquet"):
        assert pq.read_table(tmp_path / "est" / name).equals(pq.read_table(tmp_path / "out" / "model" / name)), name


def test_save_over_an_older_model_leaves_none_of_its_parts(tmp_path: Path) -> None:
    """``save`` into a folder that already held a model (a scheduled refit saved to the same path)
    overwrote the four main files but left the old ``rotation.parquet`` and ``anchors.parquet``:
    ``load`` then read a rotate = none model as rotated (or with the old anchors) and labelled
    almost every item otherwise, silently."""
    import dask

    cat = make_catalog(tmp_path / "data", n=300)
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    with dask.config.set(scheduler="synchronous"):
        PairwiseLabeler(cat["classes"], views=dict(cat["views"]), refine=0, rotate="pca", decision="cosine",
                        mix=1.0).fit(items).save(tmp_path / "m")
        assert (tmp_path / "m" / "rotation.parquet").exists() and (tmp_path / "m" / "anchors.parquet").exists()
        plain = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), refine=0, rotate="none", fit_on="view",
                                decision="cosine", mix=0.0).fit(items)
        want = plain.predict(items).compute()
        plain.save(tmp_path / "m")
        assert not (tmp_path / "m" / "rotation.parquet").exists()
        assert not (tmp_path / "m" / "anchors.parquet").exists()
        loaded = PairwiseLabeler.load(tmp_path / "m")
        assert loaded.rotate == "none"
        got = loaded.predict(items).compute()
    for col in want.columns:
        assert got[col].astype(str).tolist() == want[col].astype(str).tolist(), col


def test_partial_fit_of_a_run_model_on_new_items_without_the_annotation(client, tmp_path):
    """A model fitted with ``--label`` (fit_on = view) is loaded with ``label`` from its summary.json;
    ``partial_fit`` on new, unannotated items refused them ("column 'label': is missing") where
    ``update`` takes them: the new items' annotation is needed only with fit_on = annotation."""
    import numpy as np

    from pairwise_dask.model import load

    cat = make_catalog(tmp_path / "data", n=500)
    t = pq.read_table(cat["items"])
    pq.write_table(t.slice(0, 300), tmp_path / "A.parquet", row_group_size=100)
    pq.write_table(t.slice(300).drop_columns(["label"]), tmp_path / "B.parquet", row_group_size=100)
    opts = {**cat, "refine": 0, "fit_on": "view", "rotate": "none"}
    job.fit(load_settings(None, {**opts, "items": str(tmp_path / "A.parquet"), "out": str(tmp_path / "fit")}),
            client=client)
    job.fit(load_settings(None, {**opts, "items": str(tmp_path / "B.parquet"), "label": "",
                                 "out": str(tmp_path / "update")}),
            client=client, base_model=str(tmp_path / "fit" / "model"))
    lab = PairwiseLabeler.load(tmp_path / "fit" / "model")
    assert lab.label == "label"
    lab.partial_fit(dd.read_parquet(str(tmp_path / "B.parquet"), dtype_backend="pyarrow", split_row_groups=True))
    want = load(tmp_path / "update" / "model")
    for v in ("a", "b"):
        np.testing.assert_array_equal(lab.model_.moments[v].s1, want.moments[v].s1)
    assert lab.masks_table().equals(pq.read_table(tmp_path / "update" / "model" / "masks.parquet"))


def test_a_loaded_labeler_fits_again(tmp_path: Path) -> None:
    """``PairwiseLabeler.load(model).fit(items)`` (a weekly refit with the model's options) read
    the model *folder* as the classes file: ArrowInvalid on params.json. The loaded labeler's
    classes are now the model's classes.parquet, taken as the model holds them (as ``update``
    does: read and normalised again, their last bits change), and its fit is a fresh labeler's."""
    import dask

    cat = make_catalog(tmp_path / "data", n=300)
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    opts = {"refine": 0, "rotate": "pca", "decision": "discriminant"}
    with dask.config.set(scheduler="synchronous"):
        fresh = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), **opts).fit(items)
        fresh.save(tmp_path / "m")
        again = PairwiseLabeler.load(tmp_path / "m").fit(items)
    assert again.masks_table().equals(fresh.masks_table())
    again.save(tmp_path / "m2")
    for name in ("moments.parquet", "rotation.parquet", "classes.parquet"):
        assert pq.read_table(tmp_path / "m2" / name).equals(pq.read_table(tmp_path / "m" / name)), name


def test_top_t_fits_only_the_pairs_that_can_play_as_the_job(client, tmp_path):
    """With the top-t bracket over many classes the job fits only the pairs some item can meet
    (the pairs of pass 1; for update, of either batch); the estimator fitted all k(k−1)/2 pairs,
    dense: its model was not the run's (780 pairs per view here against the job's ~120) and, at
    k = 1,000, half a million dense pair weights per view in the driver."""
    cat = make_catalog(tmp_path / "data", n=150, k=40)
    opts = {"mode": "top-t", "top_t": 2, "refine": 0, "rotate": "none", "fit_on": "view"}
    job.run(load_settings(None, {**cat, "out": str(tmp_path / "out"), **opts}), client=client)
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    lab = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), label="label", **opts).fit(items)
    want = pq.read_table(tmp_path / "out" / "model" / "masks.parquet")
    assert want.num_rows < 2 * 780
    assert lab.masks_table().equals(want)
    ref = pq.read_table(tmp_path / "out" / "labels").to_pandas()
    assert lab.predict(items).compute()["final_label"].astype(str).tolist() == ref["final_label"].astype(str).tolist()
    # partial_fit as update: the pairs either batch can play
    t = pq.read_table(cat["items"])
    pq.write_table(t.slice(0, 90), tmp_path / "A.parquet", row_group_size=30)
    pq.write_table(t.slice(90), tmp_path / "B.parquet", row_group_size=30)
    job.fit(load_settings(None, {**cat, **opts, "items": str(tmp_path / "A.parquet"), "out": str(tmp_path / "fit")}),
            client=client)
    job.fit(load_settings(None, {**cat, **opts, "items": str(tmp_path / "B.parquet"), "out": str(tmp_path / "upd")}),
            client=client, base_model=str(tmp_path / "fit" / "model"))
    inc = PairwiseLabeler.load(tmp_path / "fit" / "model").partial_fit(
        dd.read_parquet(str(tmp_path / "B.parquet"), dtype_backend="pyarrow", split_row_groups=True))
    assert inc.masks_table().equals(pq.read_table(tmp_path / "upd" / "model" / "masks.parquet"))


def _fitted_plain(tmp_path: Path) -> tuple[PairwiseLabeler, dict]:
    cat = make_catalog(tmp_path / "data", n=300)
    items = dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)
    return PairwiseLabeler(cat["classes"], views=dict(cat["views"]), refine=0, rotate="none", fit_on="view",
                           decision="cosine").fit(items), cat


def test_save_is_whole_or_nothing_and_replaces_only_a_model(tmp_path: Path, monkeypatch) -> None:
    """``save`` wrote the model's files one by one into the folder: a scheduled ``apply`` reading
    it meanwhile, or a save that failed half way, found a mix of two models. It now writes beside
    the folder and renames; a folder that holds anything but a model is refused, not replaced."""
    import dask
    import pytest

    from pairwise_dask import estimator

    with dask.config.set(scheduler="synchronous"):
        labeler, _ = _fitted_plain(tmp_path)
    labeler.save(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    assert set(before) >= {"params.json", "classes.parquet", "moments.parquet", "masks.parquet"}

    def half_written(model, folder, *a, **kw):  # the disk fills up after the first file
        from pairwise_dask.storage import Location

        Location.of(folder).mkdir()
        (Location.of(folder) / "masks.parquet").write_text("partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(estimator, "save", half_written)
    with pytest.raises(OSError, match="No space left"):
        labeler.save(tmp_path / "m")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before  # the old model, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "m"]  # nothing left beside it

    labeler.save(tmp_path / "m")  # over a model: replaced whole, nothing left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "m"]
    assert PairwiseLabeler.load(tmp_path / "m").model_ is not None

    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files that are not a saved model's \\(notes.txt\\)"):
        labeler.save(tmp_path / "home")
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a model folder"):
        labeler.save(tmp_path / "file")
