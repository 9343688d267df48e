"""The job files users copy run as shipped (from any directory) and produce what their comments say."""
from __future__ import annotations

import json

import pyarrow.parquet as pq

from pairwise_dask import job
from pairwise_dask.config import load_settings

from catalogs import REPO

JOBS = REPO / "jobs"


def test_every_job_file_parses():
    for f in JOBS.glob("*.toml"):
        s = load_settings(str(f), {})
        assert s.items.startswith(str(JOBS)) and s.view_names == ["a", "b"], f


def test_nightly_fit_then_apply_then_update(client, tmp_path):
    fit_s = load_settings(str(JOBS / "nightly.toml"), {"out": str(tmp_path / "models" / "current")})
    job.fit(fit_s, client=client)
    model = tmp_path / "models" / "current" / "model"
    assert (model / "masks.parquet").exists() and not (tmp_path / "models" / "current" / "labels").exists()
    tonight = load_settings(str(JOBS / "nightly.toml"), {"out": str(tmp_path / "tonight"),
                                                         "classes": str(model / "classes.parquet")})
    summary = job.apply(tonight, str(model), client=client)
    assert summary["labelled_items"] == 3107 and summary["command"] == "apply"
    assert pq.read_table(tmp_path / "tonight" / "labels").num_rows == 3107
    nxt = load_settings(str(JOBS / "nightly.toml"), {"out": str(tmp_path / "models" / "next"),
                                                     "classes": str(model / "classes.parquet")})
    assert job.fit(nxt, client=client, base_model=str(model))["model_items"] == 2 * 3107


def test_qa_job_gives_a_ranked_review_list(client, tmp_path):
    s = load_settings(str(JOBS / "qa.toml"), {"out": str(tmp_path / "qa")})
    job.run(s, client=client)
    table = pq.read_table(tmp_path / "qa" / "disagreements")
    dis = table.to_pandas()
    # contradicted annotations first, each tier by priority
    contradicted = dis.reason.str.contains("annotation")
    assert len(dis) and contradicted.is_monotonic_decreasing
    assert dis.priority[contradicted].is_monotonic_decreasing and dis.priority[~contradicted].is_monotonic_decreasing
    assert set(dis.reason) <= {"annotation", "views", "annotation+views"}
    summary = json.loads((tmp_path / "qa" / "summary.json").read_text())
    assert summary["method"]["fit_on"] == "annotation"
