"""Fusion when the views are not equally informative (issue 4, session 16).

The synthetic catalog of ``benchmarks/synthetic_small.py`` gives both views the same planted
signal. Real pairs of views differ: a CLIP image separates "red shoe" from "red boot", the title
separates "novel" from "biography". Here each view sees the class-specific dimensions strongly
for half of the taxonomy groups and weakly for the other half (the other view the reverse), and
the job is run with ``fuse = mean`` and ``fuse = llr`` (the views' pair log-likelihood ratios
summed, weighted by each pair's separation in each view).

    PYTHONPATH=. python benchmarks/experiments/hetero_views.py [--work /tmp/hetero] [--seeds 7,8,9]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from accuracy import job_row, load_dataset, run_job  # noqa: E402
import synthetic_small  # noqa: E402


def make(seed: int, hi: float, lo: float, noise: float) -> tuple[pa.Table, pa.Table]:
    """``synthetic_small.make`` with the class-specific signal at ``hi`` for the groups a view sees
    well and ``lo`` for the others (``hi == lo``: the views alike), at a raised ``noise``."""
    return synthetic_small.make(seed=seed, noise=noise, strong_scale=hi, strong_lo=lo, prefix="het")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/hetero")
    ap.add_argument("--seeds", default="7,8,9")
    ap.add_argument("--settings", default="0.3:0.3:0.45,0.6:0.05:0.45,0.8:0.0:0.45",
                    help="strong_hi:strong_lo:noise per catalog (synthetic_small's is 0.3:0.3:0.3, on which every "
                    "setting is near 0.99: the noise is raised here so that fusion has errors to fix)")
    a = ap.parse_args()
    from distributed import Client, LocalCluster

    work = Path(a.work)
    print("| catalog (hi:lo, noise, seed) | fuse | acc a | acc b | final | agree |")
    print("|---|---|---:|---:|---:|---:|")
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        for setting in a.settings.split(","):
            hi, lo, noise = (float(t) for t in setting.split(":"))
            for seed in (int(s) for s in a.seeds.split(",")):
                folder = work / f"h{hi}-l{lo}-n{noise}-s{seed}"
                folder.mkdir(parents=True, exist_ok=True)
                items, classes = make(seed, hi, lo, noise)
                pq.write_table(items, folder / "items.parquet", row_group_size=4000)
                pq.write_table(classes, folder / "classes.parquet")
                ds = load_dataset(folder.name, str(folder / "items.parquet"), str(folder / "classes.parquet"))
                for fuse in ("mean", "llr"):
                    r = job_row(run_job(client, ds, folder / f"run-{fuse}", fuse=fuse), ["a", "b"])
                    print(f"| {hi}:{lo}, noise {noise}, {seed} | {fuse} | {r['acc a']:.3f} | {r['acc b']:.3f} | "
                          f"{r['acc final']:.3f} | {r['agreement']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
