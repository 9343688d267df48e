"""Run a pairwise-dask job on a few machines over SSH, from Python (``distributed.SSHCluster``).

The same as ``cluster/ssh/start.sh`` + ``pairwise-dask run --scheduler``, in one script that
starts the cluster, runs the job on it and stops it::

    python cluster/ssh/run_sshcluster.py jobs/demo.toml --hosts node1 node2 node3 --out /shared/out

Needs ``pip install asyncssh`` here, passwordless SSH to every host, the same Python environment
with pairwise-dask on every host, and the items/out paths visible at the same path everywhere.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", help="job file (TOML)")
    p.add_argument("--hosts", nargs="+", required=True,
                   help="the first host runs the scheduler; every host runs workers")
    p.add_argument("--nworkers", type=int, default=2, help="worker processes per host")
    p.add_argument("--nthreads", type=int, default=1, help="threads per worker")
    p.add_argument("--remote-python", default=None, help="Python on the hosts (default: the same path as here)")
    p.add_argument("--out", default=None, help="override the job file's output folder")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported here so that `--help` works without the cluster extras installed.
    from distributed import Client, SSHCluster

    from pairwise_dask.config import load_settings
    from pairwise_dask.job import run

    settings = load_settings(args.job, {"out": args.out} if args.out else {})
    hosts = [args.hosts[0], *args.hosts]  # scheduler host first, then one entry per worker host
    with SSHCluster(hosts, remote_python=args.remote_python or sys.executable,
                    worker_options={"n_workers": args.nworkers, "nthreads": args.nthreads},
                    scheduler_options={"port": 8786, "dashboard_address": ":8787"}) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(len(args.hosts) * args.nworkers, timeout=120)
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        summary = run(settings, client=client, progress=True, echo=print)
    print(f"done: {summary['items']['rows']:,} items, outputs in {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
