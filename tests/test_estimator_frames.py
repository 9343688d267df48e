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
