"""The accuracy benchmark: the real job (``pairwise_dask.job.run``, the code path of
``pairwise-dask run``) in every mode, the baselines, and annotation QA, on every dataset under
``--data`` and on a generated one; writes ``benchmarks/ACCURACY.md``.

    PYTHONPATH=. python benchmarks/accuracy.py [--data ../shared/data] [--out benchmarks/ACCURACY.md]

A dataset is a folder holding ``items.parquet`` (``id``, ``label``, one ``emb_<view>`` column per
view) and ``classes.parquet`` (``name`` and ``embedding``, or one column per view). For every
real dataset the two halves of its items by id hash (``:half-A`` / ``:half-B``) are run as well:
choices made on one half are checked on the other (the job never sees ``label`` unless
``fit_on = annotation``, so "tuning" here means choosing options by their score).

Annotation QA: 10% of the annotations are replaced by a different class uniformly at random
(``numpy.random.default_rng(0)``), the job is run with ``--label`` on the corrupted column, and the
``disagreements/`` ranking is scored: precision@N (N = number of flipped items) and recall of the
whole report. The peers are cleanlab's ``rank.get_label_quality_scores`` and
``filter.find_label_issues`` given zero-shot probabilities (softmax of the cosines at a
temperature, views averaged), and, as the usual cleanlab setup, given 5-fold cross-validated
logistic-regression probabilities trained on the corrupted annotations.

Needs the ``bench`` extra (scikit-learn, scipy, cleanlab); the package itself does not.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import baselines  # noqa: E402
import synthetic_small  # noqa: E402
from pairwise_dask import job  # noqa: E402
from pairwise_dask.arrays import hash_ids  # noqa: E402
from pairwise_dask.config import load_settings  # noqa: E402
from pairwise_dask.metrics import accuracy, confusion, macro_f1, weighted_f1  # noqa: E402

#: The job's modes as measured: (row name, job options). The first row is the article as written
#: (METHOD.md: bracket, final label = most confident view); the last row is the defaults.
ARTICLE: dict[str, Any] = {"dims": 100, "mode": "bracket", "final": "confident-view", "mix": 0.0, "refine": 0,
                          "fit_on": "view", "decision": "cosine", "rotate": "none"}
#: The first session's defaults: cosine decisions, prompt + class mean, two refine rounds.
COSINE: dict[str, Any] = {"dims": 100, "mode": "round-robin", "final": "fused", "mix": 1.0, "refine": 2,
                          "keep": 0.5, "fit_on": "view", "decision": "cosine", "rotate": "none"}
MODES: list[tuple[str, dict[str, Any]]] = [
    ("article: m = 100, bracket, final = most confident view", ARTICLE),
    ("article + final = fused", ARTICLE | {"final": "fused"}),
    ("article + round-robin, fused", ARTICLE | {"final": "fused", "mode": "round-robin"}),
    ("article + top-t (t = 5)", ARTICLE | {"mode": "top-t", "top_t": 5}),
    ("article + fused + mix = 1", ARTICLE | {"final": "fused", "mix": 1.0}),
    ("article + fused + refine = 2", ARTICLE | {"final": "fused", "refine": 2}),
    ("cosine: article + round-robin, fused, mix = 1, refine = 2 (the old defaults)", COSINE),
    ("cosine + dims = 0.5 (half of d)", COSINE | {"dims": 0.5}),
    ("cosine + fit_on = fused", COSINE | {"fit_on": "fused", "base_keep": "margin"}),
    ("cosine + mix = 3, refine = 3, keep = 0.3", COSINE | {"mix": 3.0, "refine": 3, "keep": 0.3}),
    ("cosine + rotate = pca", COSINE | {"rotate": "pca"}),
    ("discriminant (cosine row with decision = discriminant)", COSINE | {"decision": "discriminant", "fuse": "mean"}),
    ("discriminant, dims = 0.5, fit_on = fused (no rotation)", {"rotate": "none", "base_keep": "margin", "fuse": "mean"}),
    ("discriminant, dims = 0.5, fit_on = fused, rotate = pca, prior = 1", {"prior": 1.0, "base_keep": "margin", "fuse": "mean"}),
    ("discriminant, dims = 0.5, fit_on = fused, rotate = pca, refine = 3", {"refine": 3, "base_keep": "margin", "fuse": "mean"}),
    ("the session-2 defaults: mode = round-robin (most wins)", {"mode": "round-robin", "base_keep": "margin", "fuse": "mean"}),
    ("the session-14 defaults: base_keep = margin (round 0 keeps by the lead over the runner-up)",
     {"base_keep": "margin", "fuse": "mean"}),
    ("the session-15 defaults: fuse = mean (the views' pair margins averaged)", {"fuse": "mean"}),
]
#: The annotation-QA recipe: statistics from the annotation itself (mostly right), prototypes
#: pulled hard towards its class means (cosine decisions); refine is skipped with fit_on = annotation.
QA_RECIPE: dict[str, Any] = {"fit_on": "annotation", "mix": 10.0, "decision": "cosine", "rotate": "none"}
DEFAULT_ROW = ("job defaults (decision = discriminant, rotate = pca, m = d/2, fit_on = fused, base_keep = cosine, "
               "mode = score, final = fused, fuse = llr, refine = 2, keep = 0.5)")
FLIP_SHARE, FLIP_SEED = 0.10, 0


@dataclass
class Dataset:
    name: str
    items: str
    classes: str
    views: tuple[tuple[str, str], ...]
    y: np.ndarray                      # true class index per item (items' file order)
    names: list[str]
    ids: pa.Array
    x: dict[str, np.ndarray] = field(default_factory=dict)  # view -> normalised (n, d)
    c: dict[str, np.ndarray] = field(default_factory=dict)  # view -> normalised (k, d)


def _matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    a = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    m = np.asarray(a.flatten()).reshape(len(a), -1).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def load_dataset(name: str, items: str, classes: str) -> Dataset:
    it, cl = pq.read_table(items), pq.read_table(classes)
    views = tuple((c[len("emb_"):], c) for c in it.column_names if c.startswith("emb_"))
    names = cl.column("name").to_pylist()
    index = {n: i for i, n in enumerate(names)}
    y = np.array([index[s] for s in it.column("label").to_pylist()])
    ds = Dataset(name, items, classes, views, y, names, it.column("id").combine_chunks())
    for v, col in views:
        ds.x[v] = _matrix(it.column(col))
        ccol = v if v in cl.column_names else col if col in cl.column_names else "embedding"
        ds.c[v] = _matrix(cl.column(ccol))
    return ds


def split_halves(ds: Dataset, work: Path) -> list[Dataset]:
    """The items in two halves by the parity of their id hash (stable, independent of order)."""
    half = (hash_ids(ds.ids) & np.uint64(1)).astype(bool)
    out = []
    table = pq.read_table(ds.items)
    for tag, sel in (("half-A", ~half), ("half-B", half)):
        folder = work / f"{ds.name}-{tag}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(pa.array(sel)), folder / "items.parquet", row_group_size=4000)
        out.append(load_dataset(f"{ds.name}:{tag}", str(folder / "items.parquet"), ds.classes))
    return out


# --- the job -----------------------------------------------------------------------------------

def run_job(client: Any, ds: Dataset, out: Path, label: str = "label", items: str | None = None,
            **options: Any) -> dict:
    s = load_settings(None, {"items": items or ds.items, "classes": ds.classes, "views": ds.views,
                             "label": label, "out": str(out), "overwrite": True, "min_items": 2,
                             "partition_rows": 4000, **options})
    return job.run(s, client=client)


def job_row(summary: dict, views: list[str]) -> dict:
    pv = summary["per_view"]
    row = {f"acc {v}": pv[v]["accuracy_tourney"] for v in views}
    row |= {f"mF1 {v}": pv[v]["macro_f1_tourney"] for v in views}
    row["acc final"] = summary["final"]["accuracy"]
    row["mF1 final"] = summary["final"]["macro_f1"]
    ag = summary["agreement_weighted_f1"]
    row["agreement"] = ag[next(iter(ag))]["tourney"] if ag else float("nan")
    row["seconds"] = summary["timings_s"]["total"]
    return row


def base_row(summary: dict, views: list[str]) -> dict:
    pv = summary["per_view"]
    row = {f"acc {v}": pv[v]["accuracy_base"] for v in views}
    row |= {f"mF1 {v}": pv[v]["macro_f1_base"] for v in views}
    ag = summary["agreement_weighted_f1"]
    row["agreement"] = ag[next(iter(ag))]["base"] if ag else float("nan")
    return row


# --- baselines -----------------------------------------------------------------------------------

def baseline_row(ds: Dataset, fn: Any) -> dict:
    k = len(ds.names)
    t = time.perf_counter()
    scores = {v: fn(ds.x[v], ds.c[v]) for v, _ in ds.views}
    labels = {v: s.argmax(1) for v, s in scores.items()}
    views = list(labels)
    row = {}
    for v in views:
        conf = confusion(ds.y, labels[v], k)
        row[f"acc {v}"], row[f"mF1 {v}"] = accuracy(conf), macro_f1(conf)
    # views fused by adding their (same-method) scores
    fused = sum(scores.values()).argmax(1)
    conf = confusion(ds.y, fused, k)
    row["acc final"], row["mF1 final"] = accuracy(conf), macro_f1(conf)
    if len(views) > 1:
        row["agreement"] = weighted_f1(confusion(labels[views[1]], labels[views[0]], k))
    row["seconds"] = time.perf_counter() - t
    return row


# --- annotation QA -------------------------------------------------------------------------------

def corrupt(ds: Dataset, work: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """Items with a ``noisy`` column: ``label`` with 10% replaced by another class at random."""
    rng = np.random.default_rng(FLIP_SEED)
    n, k = len(ds.y), len(ds.names)
    flip = rng.random(n) < FLIP_SHARE
    noisy = ds.y.copy()
    noisy[flip] = (ds.y[flip] + rng.integers(1, k, n)[flip]) % k
    table = pq.read_table(ds.items).append_column("noisy", pa.array([ds.names[i] for i in noisy]))
    folder = work / f"{ds.name.replace(':', '-')}-noisy"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "items.parquet", row_group_size=4000)
    return str(folder / "items.parquet"), flip, noisy


def ranking_scores(order: np.ndarray, flip: np.ndarray, reported: np.ndarray | None = None) -> dict:
    """precision@N of a ranking (item indices, best first) and recall of the reported set."""
    n_flip = int(flip.sum())
    top = order[:n_flip]
    out = {"P@N": float(flip[top].mean()) if len(top) else 0.0}
    rep = reported if reported is not None else order
    out["recall"] = float(flip[rep].sum() / n_flip)
    out["reported"] = int(len(rep))
    return out


def job_qa(client: Any, ds: Dataset, work: Path, items: str, flip: np.ndarray, **options: Any) -> dict:
    summary = run_job(client, ds, work / "qa-run", label="noisy", items=items, **options)
    dis = pq.read_table(work / "qa-run" / "disagreements", columns=["id", "priority"])
    pos = pc.index_in(dis.column("id"), value_set=ds.ids).to_numpy(zero_copy_only=False).astype(np.int64)
    res = ranking_scores(pos, flip)  # already sorted by priority, descending
    res["final accuracy (vs truth)"] = float((_final_labels(work / "qa-run", ds) == ds.y).mean())
    res["seconds"] = summary["timings_s"]["total"]
    return res


def _final_labels(out: Path, ds: Dataset) -> np.ndarray:
    t = pq.read_table(out / "labels", columns=["id", "final_label"])
    pos = pc.index_in(ds.ids, value_set=t.column("id")).to_numpy(zero_copy_only=False)
    index = {n: i for i, n in enumerate(ds.names)}
    lab = np.array([index[s] for s in t.column("final_label").to_pylist()])
    return lab[pos]


def cleanlab_qa(ds: Dataset, noisy: np.ndarray, flip: np.ndarray) -> dict[str, dict]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    out = {}
    for temp in (0.01, 0.02, 0.05):
        probs = np.mean([_softmax(ds.x[v] @ ds.c[v].T / temp) for v, _ in ds.views], axis=0)
        q = get_label_quality_scores(noisy, probs, method="self_confidence")
        issues = find_label_issues(noisy, probs)
        out[f"cleanlab self-confidence, zero-shot softmax T = {temp}"] = ranking_scores(
            np.argsort(q, kind="stable"), flip, np.flatnonzero(issues))
    # the usual cleanlab setup: out-of-fold probabilities of a model trained on the annotations
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    x = np.concatenate([ds.x[v] for v, _ in ds.views], axis=1)
    probs = cross_val_predict(LogisticRegression(max_iter=300, C=1.0), x, noisy, cv=5, method="predict_proba")
    q = get_label_quality_scores(noisy, probs, method="self_confidence")
    issues = find_label_issues(noisy, probs)
    out["cleanlab self-confidence, 5-fold logistic regression on the annotations"] = ranking_scores(
        np.argsort(q, kind="stable"), flip, np.flatnonzero(issues))
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- report --------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if np.isnan(v) else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def table(rows: list[tuple[str, dict]], cols: list[str]) -> str:
    head = "| method | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols) + "\n"
    return head + "".join("| " + name + " | " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |\n"
                          for name, r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(HERE / "ACCURACY.md"))
    ap.add_argument("--work", default="/tmp/pairwise-accuracy")
    ap.add_argument("--no-halves", action="store_true", help="skip the two id-hash halves of real data")
    ap.add_argument("--json", default="", help="also write every figure to this JSON file")
    a = ap.parse_args()
    from distributed import Client, LocalCluster

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    datasets: list[Dataset] = []
    for folder in sorted(Path(a.data).iterdir()):
        if (folder / "items.parquet").exists() and (folder / "classes.parquet").exists():
            ds = load_dataset(folder.name, str(folder / "items.parquet"), str(folder / "classes.parquet"))
            datasets.append(ds)
            if not a.no_halves:
                datasets += split_halves(ds, work)
    syn = synthetic_small.write(work / "synthetic")
    datasets.append(load_dataset("synthetic (benchmarks/synthetic_small.py)", syn["items"], syn["classes"]))

    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        for ds in datasets:
            views = [v for v, _ in ds.views]
            print(f"{ds.name}: {len(ds.y):,} items, {len(ds.names)} classes, views {views}", flush=True)
            rows: list[tuple[str, dict]] = []
            for name, fn in baselines.BASELINES.items():
                rows.append((f"baseline: {name}", baseline_row(ds, fn)))
            for name, opts in MODES + [(DEFAULT_ROW, {})]:
                summary = run_job(client, ds, work / "run", **opts)
                rows.append((f"job: {name}", job_row(summary, views)))
                print(f"  {name}: final {summary['final']['accuracy']:.3f}", flush=True)
            qa: dict[str, dict] = {}
            if not ds.name.split(":")[-1].startswith("half"):
                items, flip, noisy = corrupt(ds, work)
                qa["job: defaults (statistics from the zero-shot labels)"] = job_qa(client, ds, work, items, flip)
                qa["job: fit_on = annotation, mix = 10, cosine (the QA recipe)"] = job_qa(
                    client, ds, work, items, flip, **QA_RECIPE)
                qa["job: defaults with fit_on = annotation"] = job_qa(client, ds, work, items, flip,
                                                                      fit_on="annotation")
                qa["job: the old cosine defaults"] = job_qa(client, ds, work, items, flip, **COSINE)
                qa["job: article (statistics from the zero-shot labels)"] = job_qa(client, ds, work, items, flip,
                                                                                 **ARTICLE)
                qa |= cleanlab_qa(ds, noisy, flip)
                qa = {"flipped items (N)": {"reported": int(flip.sum())}} | qa
            results[ds.name] = {"views": views, "items": len(ds.y), "classes": len(ds.names),
                                "rows": rows, "qa": qa}
    write_report(Path(a.out), results, time.perf_counter() - t0)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {a.out}")


def write_report(path: Path, results: dict, seconds: float) -> None:
    parts = [HEADER]
    for name, r in results.items():
        views = r["views"]
        cols = [f"acc {v}" for v in views] + [f"mF1 {v}" for v in views] + ["acc final", "mF1 final",
                                                                            "agreement", "seconds"]
        parts.append(f"\n### {name}\n\n{r['items']:,} items, {r['classes']} classes, views "
                     f"{', '.join(views)}. *acc/mF1 V*: accuracy and macro F1 of view V's label against "
                     f"`label`; *final*: the job's `final_label` (baselines: argmax of the views' summed "
                     f"scores); *agreement*: weighted F1 of view {views[0]} against view {views[-1]}.\n\n")
        parts.append(table(r["rows"], cols))
        if r["qa"]:
            parts.append(f"\nAnnotation QA ({FLIP_SHARE:.0%} of `label` flipped, seed {FLIP_SEED}): "
                         "precision@N of the ranking, recall and size of the report (the job: "
                         "`disagreements/`; cleanlab: `find_label_issues`).\n\n")
            parts.append(table(list(r["qa"].items()), ["P@N", "recall", "reported", "final accuracy (vs truth)"]))
    notes = HERE / "ACCURACY-notes.md"  # the hand-written reading of the tables (static figures)
    if notes.exists():
        parts.append("\n" + notes.read_text())
    parts.append(f"\n_Tables measured by `benchmarks/accuracy.py` in {seconds:.0f} s._\n")
    path.write_text("".join(parts))


HEADER = """# Accuracy: the job's modes against the baselines, and annotation QA

Produced by `PYTHONPATH=. python benchmarks/accuracy.py` (see `benchmarks/README-accuracy.md`).
Every `job:` row is one `pairwise_dask.job.run` (the code path of `pairwise-dask run`) with the
options named and otherwise the defaults (`min_items = 2`); `baseline:` rows are
`benchmarks/baselines.py`. The Debian halves split the items by the parity of their id hash.
"""


if __name__ == "__main__":
    main()
