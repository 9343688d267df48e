"""The chosen discriminant settings measured through the real job (``pairwise_dask.job.run``),
against the defaults, on Debian all / half A / half B and the synthetic catalog, with annotation QA
exactly as ``benchmarks/accuracy.py`` measures it (its functions, not a copy).

    PYTHONPATH=. python benchmarks/experiments/discriminant_job.py [--data /work/shared/data/debian]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

import synthetic_small  # noqa: E402
from accuracy import corrupt, job_qa, job_row, load_dataset, run_job, split_halves  # noqa: E402

ROWS = [
    ("defaults (cosine)", {}),
    ("decision = discriminant (m = 100, refine = 2)", {"decision": "discriminant"}),
    ("decision = discriminant, prior = 1, dims = 0.5, fit_on = fused (chosen on half A)",
     {"decision": "discriminant", "prior": 1.0, "dims": 0.5, "fit_on": "fused"}),
    ("the same + rotate = pca (chosen on half A)",
     {"decision": "discriminant", "prior": 1.0, "dims": 0.5, "fit_on": "fused", "rotate": "pca"}),
    ("decision = discriminant, rotate = pca, dims = 0.5, fit_on = fused, refine = 3 (no prior)",
     {"decision": "discriminant", "dims": 0.5, "fit_on": "fused", "rotate": "pca", "refine": 3}),
    ("decision = discriminant, rotate = pca, dims = 0.5, fit_on = fused, refine = 2 (no prior)",
     {"decision": "discriminant", "dims": 0.5, "fit_on": "fused", "rotate": "pca"}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data/debian")
    ap.add_argument("--work", default="/tmp/acc2-job")
    ap.add_argument("--rows", default="", help="comma-separated row numbers (0-based) to run; default all")
    ap.add_argument("--opts", default="", help='JSON list of [name, options] rows instead of ROWS, e.g. '
                    '\'[["defaults", {}], ["fuse mean", {"fuse": "mean"}]]\'')
    ap.add_argument("--sets", default="all,A,B,syn", help="of all, A, B, syn, man")
    ap.add_argument("--man", default="/tmp/acc2-man", help="make_manpages.py's catalog (set: man)")
    a = ap.parse_args()
    from distributed import Client, LocalCluster

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    deb = load_dataset("debian", f"{a.data}/items.parquet", f"{a.data}/classes.parquet")
    half_a, half_b = split_halves(deb, work)
    syn = synthetic_small.write(work / "synthetic")
    sets = [("all", deb, True), ("A", half_a, True), ("B", half_b, True),
            ("syn", load_dataset("syn", syn["items"], syn["classes"]), True)]
    if "man" in a.sets.split(","):
        sets.append(("man", load_dataset("man", f"{a.man}/items.parquet", f"{a.man}/classes.parquet"), True))
    sets = [t for t in sets if t[0] in a.sets.split(",")]
    print("| job | set | acc a | acc b | final | agree | P@N | QA final acc | s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        import json
        chosen = (json.loads(a.opts) if a.opts else
                  [ROWS[int(i)] for i in a.rows.split(",")] if a.rows else ROWS)
        for name, opts in chosen:
            for tag, ds, qa in sets:
                r = job_row(run_job(client, ds, work / "run", **opts), ["a", "b"])
                items, flip, _ = corrupt(ds, work)
                q = job_qa(client, ds, work, items, flip, **opts) if qa else {}
                print(f"| {name} | {tag} | {r['acc a']:.3f} | {r['acc b']:.3f} | {r['acc final']:.3f} | "
                      f"{r['agreement']:.3f} | {q.get('P@N', float('nan')):.3f} | "
                      f"{q.get('final accuracy (vs truth)', float('nan')):.3f} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
