"""The estimator checks the Dask DataFrame it is given before any task runs: a missing column, the
id as the index, no partitions and embeddings Dask turned into strings are named with what to do
(they were KeyErrors and a ZeroDivisionError from inside tasks). New items need no annotation."""
from __future__ import annotations

from pathlib import Path

import dask
import dask.dataframe as dd
import pytest

from catalogs import make_catalog
from pairwise_dask import PairwiseLabeler
from pairwise_dask.errors import BadInputError


@pytest.fixture
def setup(tmp_path: Path) -> tuple[dict, dd.DataFrame]:
    cat = make_catalog(tmp_path / "data", n=200)
    return cat, dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)


def _labeler(cat: dict, **kw) -> PairwiseLabeler:
    return PairwiseLabeler(cat["classes"], views=dict(cat["views"]), label="label", refine=0, **kw)


def test_missing_columns_are_named(setup) -> None:
    cat, items = setup
    with pytest.raises(BadInputError, match=r"column 'nope': is missing\. The frame has: id, emb_a, emb_b, label"):
        PairwiseLabeler(cat["classes"], views={"a": "nope"}).fit(items)
    with pytest.raises(BadInputError, match=r"column 'label': is missing"):
        _labeler(cat).fit(items.drop(columns=["label"]))
    with pytest.raises(BadInputError, match=r"column 'id': is missing \(it is the index: call reset_index\(\) first\)"):
        _labeler(cat).fit(items.set_index("id"))


def test_a_frame_without_partitions_is_refused(setup) -> None:
    cat, items = setup
    empty = items.partitions[:0]  # (dask itself cannot count these: its npartitions raises)
    with pytest.raises(BadInputError, match="has no partitions"):
        _labeler(cat).fit(empty)


def test_predict_on_items_without_the_annotation(setup) -> None:
    cat, items = setup
    with dask.config.set(scheduler="synchronous"):
        lab = _labeler(cat).fit(items)
        with_ann = lab.predict(items).compute()
        without = lab.predict(items.drop(columns=["label"])).compute()
    assert "annotation" in with_ann.columns and "annotation" not in without.columns
    assert without["final_label"].tolist() == with_ann["final_label"].tolist()


def test_embeddings_turned_into_strings_get_a_hint(setup) -> None:
    cat, items = setup
    pdf = items.compute()
    pdf["emb_a"] = pdf["emb_a"].astype(str)  # what from_pandas's string conversion leaves of arrays
    as_text = dd.from_pandas(pdf, npartitions=2)
    with dask.config.set(scheduler="synchronous"), \
            pytest.raises(BadInputError, match=r"column 'emb_a': has type .*string, not a list of floats\. "
                                               r"If the frame came from pandas through Dask"):
        _labeler(cat).fit(as_text)


def test_a_path_or_a_pandas_frame_is_named_as_such(setup) -> None:
    """``fit("items.parquet")`` or a pandas DataFrame was told "the Dask DataFrame has no
    partitions. Give it at least one partition of items", which sends the user looking for an
    empty frame: the message now says what the labeler takes and how to read it."""
    cat, items = setup
    for wrong in (cat["items"], Path(cat["items"]), items.compute()):
        for method in ("fit", "partial_fit"):
            with pytest.raises(TypeError, match=r"takes a Dask DataFrame of items, not \w+: read them with "
                                                r"dask\.dataframe\.read_parquet\(path, dtype_backend=\"pyarrow\"\)"):
                getattr(_labeler(cat), method)(wrong)
    with dask.config.set(scheduler="synchronous"):
        lab = _labeler(cat).fit(items)
    with pytest.raises(TypeError, match="not str"):
        lab.predict(cat["items"])


def test_view_names_and_fit_on_annotation_are_checked_as_the_job_checks_them(setup) -> None:
    """The job refuses views={} , a view name that cannot name a column, two views of one column
    and fit_on = annotation without an annotation column; the estimator took them: no views
    divided by zero in fit, and fit_on = "annotation" without ``label`` fitted the base labels'
    sets silently (and skipped the refine rounds), saving a model that says it was fitted on the
    annotation."""
    cat, items = setup
    for views, phrase in (({}, "no views given"), ({"a b": "emb_a"}, "view name 'a b' is not a plain identifier"),
                          ({"a": "emb_a", "b": "emb_a"}, "column 'emb_a' is used by two views")):
        with pytest.raises(ValueError, match=phrase):
            PairwiseLabeler(cat["classes"], views=views)
    lab = PairwiseLabeler(cat["classes"], views=dict(cat["views"]), fit_on="annotation")
    with pytest.raises(BadInputError, match=r"^fit_on = annotation needs the annotation column\. Pass label=COLUMN"):
        lab.fit(items)
    assert lab.model_ is None
    with dask.config.set(scheduler="synchronous"):  # with the annotation: fitted, and a saved model loads without it
        _labeler(cat, fit_on="annotation").fit(items).save(Path(cat["items"]).parent / "m")
        loaded = PairwiseLabeler.load(Path(cat["items"]).parent / "m", label="")
        assert len(loaded.predict(items.drop(columns=["label"])).compute()) == 200
        with pytest.raises(BadInputError, match="fit_on = annotation needs the annotation column"):
            loaded.partial_fit(items)  # its sets were the annotation's: base labels' moments would not add


def test_predict_refuses_options_the_model_fixes_as_apply_does(setup, tmp_path: Path) -> None:
    """``apply`` refuses options built into the model's masks (dims, decision, …) and views it
    lacks; ``PairwiseLabeler.load(model, dims=3).predict(items)`` played the model's masks as they
    were, silently ignoring dims = 3 (a missing view was a KeyError from inside a task). The
    tourney's own options (seed, mode, top_t, final, fuse) stay free, as for ``apply``."""
    cat, items = setup
    with dask.config.set(scheduler="synchronous"):
        _labeler(cat).fit(items).save(tmp_path / "m")
        with pytest.raises(BadInputError) as info:
            PairwiseLabeler.load(tmp_path / "m", dims=3, decision="cosine").predict(items)
        assert info.value.what.startswith("predict cannot use the model as asked: ")
        assert "dims = 3 (the model: 0.5)" in info.value.what and "decision = 'cosine'" in info.value.what
        with pytest.raises(BadInputError, match=r"the model has no view\(s\) c \(it has a, b\)"):
            PairwiseLabeler.load(tmp_path / "m", views={"c": "emb_a"}).predict(items)
        free = PairwiseLabeler.load(tmp_path / "m", seed=3, mode="round-robin", final="confident-view", fuse="mean")
        assert len(free.predict(items).compute()) == 200
        lab = _labeler(cat).fit(items)
        lab.predict(items)  # a fitted labeler's own options are the model's


def test_predict_meta_has_the_dtypes_of_the_computed_frame(setup, tmp_path: Path) -> None:
    """The lazy frame's ``dtypes`` said the id was the items' ``string`` while every computed
    partition held ``large_string[pyarrow]`` (as ``labels/`` does): Dask's meta must match the
    partitions (integer ids already did)."""
    cat, items = setup
    with dask.config.set(scheduler="synchronous"):
        lab = _labeler(cat).fit(items)
        for frame in (items, items.assign(id=items["id"].str.slice(5).astype("int64"))):
            pred = lab.predict(frame)
            got = pred.compute()
            assert pred.dtypes.to_dict() == got.dtypes.to_dict()


def test_load_with_other_classes_says_the_classes_are_the_models(setup, tmp_path: Path) -> None:
    """``PairwiseLabeler.load(model, classes=other)`` failed with Python's "__init__() got multiple
    values for argument 'classes'"; as ``apply --classes``, it now says the model's are used."""
    cat, items = setup
    with dask.config.set(scheduler="synchronous"):
        _labeler(cat).fit(items).save(tmp_path / "m")
    with pytest.raises(TypeError, match=r"takes the classes from the model \(its classes.parquet\): drop classes="):
        PairwiseLabeler.load(tmp_path / "m", classes=cat["classes"])


def test_dims_and_rotate_dims_above_d_are_refused_before_any_pass(setup) -> None:
    """The job refuses ``rotate_dims`` above d and ``dims`` above the statistics' dimension before
    reading any data; the estimator took rotate_dims = 500 of d = 16 silently (all the axes), and
    refused dims only after the rotation and statistics passes, in other words ("outside 1..16 (d)")."""
    cat, items = setup
    with dask.config.set(scheduler="synchronous"):
        fitted = _labeler(cat).fit(items)
        before = fitted.masks_table()
        for kw, phrase in ((dict(rotate="pca", rotate_dims=500), r"rotate_dims = 500 is larger than d = 16, the "
                            r"dimension of view 'a'\. Set rotate_dims to at most 16"),
                           (dict(rotate="pca", rotate_dims=8, dims=12), r"dims = 12 is larger than the 8 principal "
                            r"axes rotate_dims keeps, the dimension of view 'a'\. Set dims to at most 8"),
                           (dict(rotate="none", dims=20), r"dims = 20 is larger than d = 16")):
            for name, value in kw.items():
                setattr(fitted, name, value)
            with pytest.raises(ValueError, match=phrase):
                fitted.fit(items.map_partitions(_no_pass, meta=items._meta))
            assert fitted.masks_table().equals(before)  # the fitted model is left as it was


def _no_pass(df):
    raise AssertionError("a pass ran before the settings were checked")


def test_a_plain_fit_reads_the_items_once(setup) -> None:
    """With fit_on = view, refine = 0 and rotate = none (jobs/nightly.toml's method) no sample is
    drawn, yet fit counted the rows first (``len(ddf)``: a whole pass over a frame whose length
    Dask does not know) because keep_sample is set by default."""
    cat, items = setup
    calls = []

    def seen(df):
        calls.append(len(df))
        return df

    frame = items.map_partitions(seen, meta=items._meta)
    with dask.config.set(scheduler="synchronous"):
        _labeler(cat, fit_on="view", rotate="none").fit(frame)
    assert sum(calls) == 200
