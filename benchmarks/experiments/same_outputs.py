"""Bit-for-bit checks of a speed change: run the k1000 catalog's job (top-t; the article's settings,
or any options given as a Python dict) with whichever package is on PYTHONPATH, into OUT; then
compare every Parquet file of two such outputs.

    PYTHONPATH=/path/to/old/tree python benchmarks/experiments/same_outputs.py /tmp/out-old ['{...}']
    PYTHONPATH=. python benchmarks/experiments/same_outputs.py /tmp/out-new ['{...}']
    python benchmarks/experiments/same_outputs.py cmp /tmp/out-old /tmp/out-new

``CAT``: the catalog's folder (``benchmarks/perf.py --cases k1000 --keep-data`` makes it).
"""
import sys, logging, hashlib
from pathlib import Path
def digest(out):
    h = {}
    for p in sorted(Path(out).rglob("*.parquet")):
        h[str(p.relative_to(out))] = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
    return h
if __name__ == "__main__":
    if sys.argv[1] == "cmp":
        a, b = digest(sys.argv[2]), digest(sys.argv[3])
        print("identical" if a == b else {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)})
        sys.exit()
    import psutil, time
    from distributed import Client, LocalCluster
    from pairwise_dask import job
    from pairwise_dask.config import load_settings
    import os
    folder = Path(os.environ.get("CAT", "/tmp/pb10/k1000"))
    extra = eval(sys.argv[2]) if len(sys.argv) > 2 else {}
    s = load_settings(None, {"items": str(folder / "items.parquet"), "classes": str(folder / "classes.parquet"), "out": sys.argv[1],
                             "views": (("image", "image"), ("text", "text")), "label": "label", "overwrite": True, "workers": 2,
                             "mode": "top-t", "top_t": 16, "refine": 0, "mix": 0.0, "final": "confident-view", "dims": 100,
                             "fit_on": "view", "decision": "cosine", "rotate": "none"} | extra)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=int(psutil.virtual_memory().total / 2),
                      silence_logs=logging.ERROR, dashboard_address=":0") as cl, Client(cl) as c:
        t = time.perf_counter(); summ = job.run(s, client=c); print(round(time.perf_counter() - t, 2), summ["timings_s"])
