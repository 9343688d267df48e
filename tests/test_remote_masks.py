"""Masks fitted on the workers stay there (RemoteMasks): the passes join them on a worker, the
model fetches them; on real worker processes, with the same bits as masks fitted on the client."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pairwise_dask import job, steps, tourney
from pairwise_dask.config import load_settings
from pairwise_dask.masks import fit_masks
from pairwise_dask.moments import class_moments
from pairwise_dask.passes import RemoteMasks, Spec

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "demo.toml"
MODEL_FILES = ("masks.parquet", "moments.parquet", "classes.parquet")


def _masks_seen(first, spec):
    """What a task sees of its spec's masks (module level: tasks pickle it by reference)."""
    return first, list(spec.masks), {v: (m.pairs, m.dims, m.values) for v, m in spec.masks.items()}


def test_tasks_get_the_masks_left_on_the_workers(client):
    rng = np.random.default_rng(0)
    k, d, n = 6, 10, 400
    c = rng.normal(size=(k, d)).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    mom = class_moments(x, (x @ c.T).argmax(1), np.ones(n, bool), k)
    whole = fit_masks(mom, c, m=4, min_items=1, per_pair=False, dense=False)
    [on_worker] = client.scatter([whole])
    spec = Spec("id", "", (("a", "a"), ("b", "b")), tuple("abcdef"), {"a": c, "b": c}, -1.0, 0.0, False,
                masks={"a": RemoteMasks(on_worker, "cosine"), "b": whole})
    ref = steps.shared(spec)
    # the spec task itself carries only the masks the client holds; the others go beside it
    assert list(client.compute(ref.stub).result().masks) == ["b"] and ref.masks == {"a": on_worker}
    first, order, seen = client.compute(steps.on_spec(_masks_seen, 7, ref)).result()
    assert first == 7 and order == ["a", "b"]  # the views' order as the client had it
    for v in ("a", "b"):
        for got, want in zip(seen[v], (whole.pairs, whole.dims, whole.values)):
            assert np.array_equal(got, want)


def _run(tmp: Path, name: str, client, command=job.run, **kw) -> Path:
    s = load_settings(str(DEMO), {"out": str(tmp / name), "mode": "top-t", "top_t": 3, **kw})
    command(s, client=client)
    return tmp / name


@pytest.mark.parametrize("opts, fits", [
    ({}, 3),  # the defaults: two refine rounds, discriminant masks
    ({"refine": 0, "decision": "cosine", "mix": 1.0, "fit_on": "view", "rotate": "none"}, 1),  # anchors.parquet
])
def test_remote_masks_give_the_client_fits_labels_and_model(tmp_path, client, monkeypatch, opts, fits):
    """Run and fit, masks chunked on two worker processes and kept there (the model's masks files
    written by the worker that joins them), equal the same jobs with every mask fitted on the
    client, bit for bit."""
    here = _run(tmp_path, "here", client, **opts)
    fit_here = _run(tmp_path, "fit-here", client, job.fit, **opts)
    monkeypatch.setattr(steps, "PARALLEL_PAIRS", 10)  # the demo's 210 pairs: chunks on the workers
    monkeypatch.setattr(tourney, "use_gather", lambda *a, **k: True)  # sparse masks: the chunked path
    calls: list[dict] = []
    on_workers = steps._fit_on_workers
    monkeypatch.setattr(steps, "_fit_on_workers", lambda *a, **k: calls.append(k) or on_workers(*a, **k))
    remote = _run(tmp_path, "remote", client, **opts)
    fit_remote = _run(tmp_path, "fit-remote", client, job.fit, **opts)
    assert len(calls) == 2 * fits and all(k["keep_remote"] for k in calls)
    assert pq.read_table(remote / "labels").sort_by("id").equals(pq.read_table(here / "labels").sort_by("id"))
    assert (pq.read_table(remote / "disagreements").equals(pq.read_table(here / "disagreements")))
    # the summary's mask facts came from the workers (MaskFacts) and the model's params too
    for a, b in ((remote, here), (fit_remote, fit_here)):
        sa, sb = (json.loads((x / "summary.json").read_text()) for x in (a, b))
        assert sa["fallback_pairs"] == sb["fallback_pairs"]
        for v in ("a", "b"):
            assert {k: sa["per_view"][v][k] for k in ("pairs", "fallback_pairs")} == \
                {k: sb["per_view"][v][k] for k in ("pairs", "fallback_pairs")}
        assert (a / "model" / "params.json").read_text() == (b / "model" / "params.json").read_text()
    files = MODEL_FILES + (("anchors.parquet",) if opts.get("mix") else ())
    assert (here / "model" / "anchors.parquet").exists() == bool(opts.get("mix"))
    for f in files:
        assert (remote / "model" / f).read_bytes() == (here / "model" / f).read_bytes()
        assert (fit_remote / "model" / f).read_bytes() == (fit_here / "model" / f).read_bytes()


def test_apply_sends_the_models_masks_to_the_workers_once(tmp_path, client):
    """``apply`` (top-t, so with its pair-collecting pass too): the saved model's masks and
    rotation go to the workers once, not inside each pass's graph. With Dask's "large graph"
    threshold below the masks' size, no pass warns; the labels are the fitted run's."""
    import warnings

    import dask

    from fixtures import make_catalog

    cat = make_catalog(tmp_path / "data", n=400, d=64, k=60)
    opts = {"dims": 0.5, "mode": "top-t", "top_t": 8}
    job.run(cat.settings(tmp_path / "run", **opts), client=client)
    model = tmp_path / "run" / "model"
    from dask.sizeof import sizeof

    from pairwise_dask.model import load

    size = sum(sizeof(m) for m in load(str(model)).masks.values())
    assert size > 200_000
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": size // 2}), \
            warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        job.apply(cat.settings(tmp_path / "apply", mode="top-t", top_t=8), str(model), client=client)
    assert [str(w.message)[:40] for w in seen if "large graph" in str(w.message)] == []
    ran, applied = (pq.read_table(tmp_path / p / "labels").sort_by("id") for p in ("run", "apply"))
    assert applied.column("final_label").equals(ran.column("final_label"))
