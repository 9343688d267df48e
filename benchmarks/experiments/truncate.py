"""Experiment (not a job option yet): how much accuracy a *truncated* PCA rotation costs on Debian.

    PYTHONPATH=. python benchmarks/experiments/truncate.py

Projects both views (and the prompts) onto their top ``r`` principal axes offline (float64), writes
the projected catalog to /tmp/s3/trunc/r{r}, and runs the job on it with the defaults but
``rotate = none`` (the data is already on its principal axes). ``r = 384`` is the full rotation.
Base labels are then cosines of the projected vectors too (a job option would keep them on the
full vectors). Every pass after the rotation costs O(r) per item instead of O(d).
"""
import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from accuracy import load_dataset, run_job, job_row
from distributed import Client, LocalCluster
D = "/work/shared/data/debian"
def fsl(m):
    return pa.FixedSizeListArray.from_arrays(pa.array(m.astype(np.float32).ravel()), m.shape[1])
def project(r, out):
    it = pq.read_table(f"{D}/items.parquet"); cl = pq.read_table(f"{D}/classes.parquet")
    cols = {c: it.column(c) for c in it.column_names if not c.startswith("emb_")}
    ccols = {"name": cl.column("name")}
    for c in [c for c in it.column_names if c.startswith("emb_")]:
        x = np.asarray(it.column(c).combine_chunks().flatten()).reshape(it.num_rows, -1).astype(np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        cov = np.cov(x.T); w, v = np.linalg.eigh(cov); v = v[:, ::-1][:, :r]
        cols[c] = fsl(x @ v)
        ce = cl.column(c if c in cl.column_names else "embedding").combine_chunks()
        cm = np.asarray(ce.flatten()).reshape(cl.num_rows, -1).astype(np.float64)
        cm /= np.linalg.norm(cm, axis=1, keepdims=True)
        ccols[c] = fsl(cm @ v)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), out / "items.parquet"); pq.write_table(pa.table(ccols), out / "classes.parquet")
if __name__ == "__main__":
    with LocalCluster(n_workers=1, threads_per_worker=1) as lc, Client(lc) as c:
        for r in [384, 256, 192, 128]:
            o = Path(f"/tmp/s3/trunc/r{r}"); project(r, o)
            ds = load_dataset("debian", str(o / "items.parquet"), str(o / "classes.parquet"))
            row = job_row(run_job(c, ds, Path("/tmp/s3/trunc/run"), rotate="none"), ["a", "b"])
            print(r, {k: round(v, 4) for k, v in row.items() if "mF1" not in k}, flush=True)
