#!/usr/bin/env bash
# Start a Dask cluster on a handful of machines over SSH with `dask ssh`: the scheduler on the
# first host of hosts.txt, workers on every host. Runs in the foreground; Ctrl-C stops it all.
#
#   cluster/ssh/start.sh                         # hosts from cluster/ssh/hosts.txt
#   HOSTFILE=my-hosts.txt NWORKERS=4 NTHREADS=2 cluster/ssh/start.sh --ssh-username me
#
# Then, from any machine that can reach the scheduler:
#   pairwise-dask run job.toml --scheduler tcp://<first host>:8786
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
HOSTFILE="${HOSTFILE:-$HERE/hosts.txt}"
NWORKERS="${NWORKERS:-2}"      # worker processes per host
NTHREADS="${NTHREADS:-1}"      # threads per worker: the job's tasks are NumPy blocks, processes scale better
PORT="${PORT:-8786}"
REMOTE_PYTHON="${REMOTE_PYTHON:-python3}"  # the remote Python that has pairwise-dask installed
LOGS="${LOGS:-/tmp/pairwise-dask-logs}"

# `dask ssh` wants plain host names: drop comments and blank lines
HOSTS=$(mktemp); trap 'rm -f "$HOSTS"' EXIT
grep -v -e '^\s*#' -e '^\s*$' "$HOSTFILE" > "$HOSTS"

exec dask ssh --hostfile "$HOSTS" --scheduler-port "$PORT" --nworkers "$NWORKERS" --nthreads "$NTHREADS" \
  --remote-python "$REMOTE_PYTHON" --log-directory "$LOGS" --memory-limit auto "$@"
