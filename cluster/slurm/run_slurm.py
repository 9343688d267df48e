"""Run a pairwise-dask job on a SLURM cluster with dask-jobqueue.

Each SLURM job started here hosts ``--processes`` Dask workers; the script asks for ``--jobs``
of them, waits for the workers, runs the job, and releases the allocation when it is done::

    pip install dask-jobqueue
    python cluster/slurm/run_slurm.py jobs/nightly.toml --jobs 4 --cores 8 --memory 32GiB \\
        --queue normal --account myproject --walltime 02:00:00

Run it on a login node, or submit it as a small job itself (``sbatch cluster/slurm/driver.sbatch``).
Items and outputs must be on a shared file system (same path on every node).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", help="job file (TOML)")
    p.add_argument("--out", default=None, help="override the job file's output folder")
    p.add_argument("--jobs", type=int, default=2, help="SLURM jobs to start")
    p.add_argument("--cores", type=int, default=8, help="cores per SLURM job")
    p.add_argument("--processes", type=int, default=None,
                   help="Dask worker processes per SLURM job (default: one per core: NumPy blocks "
                        "scale better over processes than threads)")
    p.add_argument("--memory", default="32GiB", help="memory per SLURM job")
    p.add_argument("--queue", default=None, help="SLURM partition (-p)")
    p.add_argument("--account", default=None, help="SLURM account (-A)")
    p.add_argument("--walltime", default="02:00:00", help="SLURM time limit of each worker job")
    p.add_argument("--local-directory", default="$TMPDIR",
                   help="node-local scratch for the workers' spill files")
    p.add_argument("--log-directory", default="dask-slurm-logs", help="where SLURM writes worker job logs")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported here so that `--help` (and the test suite) work without dask-jobqueue installed.
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    from pairwise_dask.config import load_settings
    from pairwise_dask.job import run

    settings = load_settings(args.job, {"out": args.out} if args.out else {})
    processes = args.processes or args.cores
    with SLURMCluster(cores=args.cores, processes=processes, memory=args.memory, queue=args.queue,
                      account=args.account, walltime=args.walltime, job_name="pairwise-dask",
                      local_directory=args.local_directory, log_directory=args.log_directory,
                      python=sys.executable) as cluster:
        print(cluster.job_script(), flush=True)  # what each worker job runs, for the record
        cluster.scale(jobs=args.jobs)
        with Client(cluster) as client:
            # Wait for at least one job's workers: the queue may hold the rest for a while, and
            # the job runs on whatever has joined (late workers take tasks as they arrive).
            client.wait_for_workers(processes, timeout=3600)
            print(f"Dask dashboard: {client.dashboard_link}", flush=True)
            summary = run(settings, client=client, progress=True, echo=print)
    print(f"done: {summary['items']['rows']:,} items, outputs in {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
