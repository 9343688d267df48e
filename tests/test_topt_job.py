"""The job's top-t path end to end: sparse masks with gathered decisions give the labels of the
dense product path (on the demo data, where both fit in memory)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pairwise_dask import job, steps, tourney
from pairwise_dask.config import load_settings

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "demo.toml"


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as c, \
            Client(c) as cl:
        yield cl


def _labels(tmp: Path, name: str, client, gather: bool, monkeypatch) -> tuple:
    monkeypatch.setattr(tourney, "use_gather", lambda *a, **k: gather)
    s = load_settings(str(DEMO), {"out": str(tmp / name), "mode": "top-t", "top_t": 3})
    summary = job.run(s, client=client)
    return pq.read_table(tmp / name / "labels").sort_by("id"), summary


def test_gather_job_equals_product_job(tmp_path, client, monkeypatch):
    dense, s1 = _labels(tmp_path, "dense", client, False, monkeypatch)
    sparse, s2 = _labels(tmp_path, "sparse", client, True, monkeypatch)
    for v in ("a", "b"):
        assert dense.column(f"label_{v}").equals(sparse.column(f"label_{v}"))
        # both fit exactly the pairs some item's top 3 can meet (here: all 210; bounds are unit-tested)
        assert s1["per_view"][v]["pairs"] == s2["per_view"][v]["pairs"]
    assert dense.column("final_label").equals(sparse.column("final_label"))


def test_masks_fitted_on_the_workers_equal_the_client_fit(tmp_path, client, monkeypatch):
    """Many pairs are fitted in chunks on the workers (``PARALLEL_PAIRS``): the same model, the same labels."""
    one, _ = _labels(tmp_path, "client", client, True, monkeypatch)
    monkeypatch.setattr(steps, "PARALLEL_PAIRS", 10)  # the demo's 210 pairs: in chunks
    calls: list[int] = []
    fit_on_workers = steps._fit_on_workers
    monkeypatch.setattr(steps, "_fit_on_workers", lambda *a, **k: calls.append(k) or fit_on_workers(*a, **k))
    chunked, _ = _labels(tmp_path, "workers", client, True, monkeypatch)
    assert calls  # the chunked path ran (once per round, for every view at once)
    assert all(k.get("keep_remote") for k in calls)  # and run left the chunks on the workers
    assert chunked.equals(one)
    for f in ("masks.parquet", "moments.parquet"):
        assert (tmp_path / "workers" / "model" / f).read_bytes() == (tmp_path / "client" / "model" / f).read_bytes()


def test_apply_gives_a_top_t_model_the_masks_of_pairs_its_fit_never_met(tmp_path, client):
    """New items rank classes in combinations the fit never saw: apply (and the estimator's
    predict) add those pairs' masks from the model's moments, the masks a fuller fit would have."""
    import dask.dataframe as dd
    import numpy as np

    from pairwise_dask import PairwiseLabeler
    from pairwise_dask.masks import pair_ids, with_pairs
    from pairwise_dask.model import load, model_fit_options, save

    from catalogs import make_catalog

    cat = make_catalog(tmp_path / "data", n=400, k=20, d=16)
    t = pq.read_table(cat["items"])
    for name, part in (("A", t.slice(0, 60)), ("B", t.slice(60))):
        (tmp_path / name).mkdir()
        pq.write_table(part, tmp_path / name / "items.parquet", row_group_size=100)
    opts = {"mode": "top-t", "top_t": 3, "refine": 0, "rotate": "none", "fit_on": "view", "dims": 4, "label": ""}
    job.fit(load_settings(None, {**cat, "items": str(tmp_path / "A" / "items.parquet"), "out": str(tmp_path / "fit"),
                                 **opts}), client=client)
    model = load(tmp_path / "fit" / "model")
    new = {**cat, "items": str(tmp_path / "B" / "items.parquet"), **opts}
    summary = job.apply(load_settings(None, {**new, "out": str(tmp_path / "applied")}), str(tmp_path / "fit" / "model"),
                        client=client)
    assert summary["labelled_items"] == 340
    assert all(summary["per_view"][v]["pairs"] > len(model.masks[v].pairs) for v in ("a", "b"))  # pairs were added
    # the reference: the model with every pair's mask made up front, then applied (nothing to add)
    everything = np.arange(20 * 20, dtype=np.int64)
    everything = everything[everything // 20 < everything % 20]
    full = {v: with_pairs(m, model.moments[v], model.classes[v], everything, **model_fit_options(model.params))
            for v, m in model.masks.items()}
    assert all(len(m.pairs) == 190 for m in full.values())
    save(replace(model, masks=full), tmp_path / "full" / "model")
    job.apply(load_settings(None, {**new, "out": str(tmp_path / "applied-full")}), str(tmp_path / "full" / "model"),
              client=client)
    got, want = (pq.read_table(tmp_path / d / "labels").sort_by("id") for d in ("applied", "applied-full"))
    assert got.equals(want)
    # the estimator adds them lazily, partition by partition: the same labels
    pred = PairwiseLabeler.load(tmp_path / "fit" / "model", views=dict(cat["views"])).predict(
        dd.read_parquet(new["items"], dtype_backend="pyarrow", split_row_groups=True)).compute()
    assert pred["final_label"].astype(str).tolist() == got.column("final_label").to_pylist()
    assert pair_ids(model.masks["a"].pairs, 20).size < 190


def test_apply_and_the_estimator_reproduce_a_top_t_run_bit_for_bit(tmp_path, client):
    """A top-t run gathers its matches from sparse weights (many pairs); apply of its model, and
    PairwiseLabeler.load(...).predict, must play the same form (the form is the settings', not the
    loaded model's), else the margins differ in their last bit although the labels agree."""
    import dask.dataframe as dd
    import numpy as np

    from pairwise_dask import PairwiseLabeler
    from pairwise_dask.tourney import gathers

    from catalogs import make_catalog

    cat = make_catalog(tmp_path / "data", n=1500, k=30, d=16, seed=1)
    assert gathers(30, 16, 8, 5)  # the run gathers; a loaded model is dense (small): the two forms met
    s = load_settings(None, {**cat, "out": str(tmp_path / "run"), "mode": "top-t", "top_t": 5})
    job.run(s, client=client)
    job.apply(s.replace(out=str(tmp_path / "applied")), str(tmp_path / "run" / "model"), client=client)
    ran, applied = (pq.read_table(tmp_path / d / "labels").sort_by("id") for d in ("run", "applied"))
    for name in ran.column_names:
        assert ran.column(name).equals(applied.column(name)), name
    pred = PairwiseLabeler.load(tmp_path / "run" / "model").predict(
        dd.read_parquet(cat["items"], dtype_backend="pyarrow", split_row_groups=True)).compute().sort_values("id")
    for v in ("a", "b"):
        np.testing.assert_array_equal(pred[f"margin_{v}"].to_numpy(np.float32),
                                      ran.column(f"margin_{v}").to_numpy())
