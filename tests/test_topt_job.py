"""The job's top-t path end to end: sparse masks with gathered decisions give the labels of the
dense product path (on the demo data, where both fit in memory)."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pairwise_dask import job
from pairwise_dask.config import load_settings

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "demo.toml"


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as c, \
            Client(c) as cl:
        yield cl


def _labels(tmp: Path, name: str, client, gather: bool, monkeypatch) -> tuple:
    monkeypatch.setattr(job, "use_gather", lambda *a, **k: gather)
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
    monkeypatch.setattr(job, "PARALLEL_PAIRS", 10)  # the demo's 210 pairs: in chunks
    calls: list[int] = []
    fit_on_workers = job._fit_on_workers
    monkeypatch.setattr(job, "_fit_on_workers", lambda *a, **k: calls.append(k) or fit_on_workers(*a, **k))
    chunked, _ = _labels(tmp_path, "workers", client, True, monkeypatch)
    assert calls  # the chunked path ran (once per round, for every view at once)
    assert all(k.get("keep_remote") for k in calls)  # and run left the chunks on the workers
    assert chunked.equals(one)
    for f in ("masks.parquet", "moments.parquet"):
        assert (tmp_path / "workers" / "model" / f).read_bytes() == (tmp_path / "client" / "model" / f).read_bytes()
