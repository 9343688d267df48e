"""The 1M packed catalog, article settings, from a cold page cache (root: drops it), on a
LocalCluster of 2 workers with THREADS threads each; ``overlap`` drops the wait between reading
the items and pass 1, so a worker's second thread can compute while the first reads.

    PYTHONPATH=. python benchmarks/experiments/cold_threads.py THREADS barrier|overlap

``CAT`` is the catalog's folder (``benchmarks/perf.py --cases 1m-packed --keep-data`` makes it).
Session 7's figures are in ``benchmarks/README.md``.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
from distributed import Client, LocalCluster

from pairwise_dask import job, steps
from pairwise_dask.config import load_settings

FOLDER = Path(os.environ.get("CAT", "/tmp/pb10/1m-packed"))
ARTICLE = {"mode": "bracket", "refine": 0, "mix": 0.0, "final": "confident-view", "dims": 100,
           "fit_on": "view", "decision": "cosine", "rotate": "none"}


def drop_page_cache() -> None:
    subprocess.run("sync; echo 1 > /proc/sys/vm/drop_caches", shell=True, check=True)


def main() -> None:
    threads, overlap = int(sys.argv[1]), sys.argv[2] == "overlap"
    if overlap:
        wait = steps._await
        steps._await = lambda c, p, label, progress: None if label == "read and check" else wait(c, p, label, progress)
    s = load_settings(None, {"items": str(FOLDER / "items.parquet"), "classes": str(FOLDER / "classes.parquet"),
                             "out": "/tmp/cold-threads-out", "views": (("image", "image"), ("text", "text")),
                             "label": "label", "overwrite": True, "workers": 2} | ARTICLE)
    drop_page_cache()
    t = time.perf_counter()
    pq.read_table(FOLDER / "items.parquet", columns=["image", "text"])
    io = time.perf_counter() - t
    with LocalCluster(n_workers=2, threads_per_worker=threads, processes=True,
                      memory_limit=int(psutil.virtual_memory().total / 2), silence_logs=logging.ERROR,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        drop_page_cache()
        t = time.perf_counter()
        summary = job.run(s, client=client)
        total = time.perf_counter() - t
    tm = summary["timings_s"]
    print(f"threads={threads} {sys.argv[2]}: IO cold {io:.2f}  job cold {total:.2f}  ratio {total / io:.2f}  "
          f"read {tm.get('read', 0):.2f} stats {tm['statistics']:.2f} tourney {tm['tourney']:.2f}", flush=True)


if __name__ == "__main__":
    main()
