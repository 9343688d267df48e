#!/usr/bin/env bash
# Start a Dask scheduler and N `dask worker` processes on this machine, on loopback only, for
# pairwise-dask. Writes a scheduler file, the process ids and logs into one folder, waits until
# every worker has joined, and prints how to run a job against the cluster and how to stop it.
#
#   cluster/local/start.sh                      # 2 workers, scheduler on 127.0.0.1:8786
#   cluster/local/start.sh -n 4 -t 2 -d /tmp/dask-local
#   cluster/local/stop.sh -d /tmp/dask-local
set -euo pipefail

usage() {
  cat <<USAGE
usage: $(basename "$0") [options]
  -n, --workers N         worker processes (default 2)
  -t, --threads N         threads per worker (default 1: the job's NumPy work is one block per task)
  -m, --memory-limit M    memory per worker, e.g. 4GiB (default: 90% of the machine's memory / N)
  -p, --port P            scheduler port (default 8786; 0 picks a free one)
      --dashboard-port P  dashboard port (default 8787; 0 picks a free one)
  -d, --dir DIR           where the scheduler file, pids and logs go
                          (default \$PAIRWISE_DASK_CLUSTER_DIR or ./dask-local)
      --timeout S         seconds to wait for the scheduler and the workers (default 60)
  -h, --help              this help
Environment: DASK (the dask command, default 'dask'), PYTHON (default 'python3'): both must see
the same environment as pairwise-dask (workers import it to run the job's tasks).
USAGE
}

WORKERS=2 THREADS=1 MEMORY="" PORT=8786 DASH_PORT=8787 TIMEOUT=60
DIR="${PAIRWISE_DASK_CLUSTER_DIR:-$PWD/dask-local}"
DASK="${DASK:-dask}" PYTHON="${PYTHON:-python3}"
HOST=127.0.0.1  # loopback only: nothing outside this machine can reach the cluster
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--workers) WORKERS="$2"; shift 2 ;;
    -t|--threads) THREADS="$2"; shift 2 ;;
    -m|--memory-limit) MEMORY="$2"; shift 2 ;;
    -p|--port) PORT="$2"; shift 2 ;;
    --dashboard-port) DASH_PORT="$2"; shift 2 ;;
    -d|--dir) DIR="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "$(basename "$0"): unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$WORKERS" in ''|*[!0-9]*|0) echo "--workers must be a positive integer" >&2; exit 2 ;; esac
# Separate worker processes each get a share of the memory (one `dask worker` per process would
# otherwise each assume the whole machine).
[ -n "$MEMORY" ] || MEMORY=$(awk "BEGIN { printf \"%.4f\", 0.9 / $WORKERS }")

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
SCHED_FILE="$DIR/scheduler.json"
PIDS="$DIR/pids"

alive() { kill -0 "$1" 2>/dev/null; }
if [ -f "$PIDS" ]; then
  while read -r _ pid; do
    if alive "$pid"; then
      echo "A cluster started from $DIR is still running (pid $pid). Stop it first:" >&2
      echo "  $(dirname "$0")/stop.sh --dir $DIR" >&2
      exit 1
    fi
  done < "$PIDS"
fi
rm -f "$SCHED_FILE" "$PIDS"

# setsid: the processes outlive this script and the terminal's Ctrl-C; stop.sh ends them by pid.
# (Called directly, not through a shell function, so that $! is the dask process itself.)
DETACH=nohup; command -v setsid >/dev/null && DETACH=setsid

fail() {
  echo "$(basename "$0"): $1" >&2
  for log in "$DIR"/*.log; do [ -f "$log" ] && { echo "--- $log (last lines)" >&2; tail -n 15 "$log" >&2; }; done
  "$(dirname "$0")/stop.sh" --dir "$DIR" --quiet || true
  exit 1
}

"$DETACH" "$DASK" scheduler --host "$HOST" --port "$PORT" --dashboard-address "$HOST:$DASH_PORT" \
  --scheduler-file "$SCHED_FILE" </dev/null >"$DIR/scheduler.log" 2>&1 &
SCHED_PID=$!
echo "scheduler $SCHED_PID" >> "$PIDS"

deadline=$((SECONDS + TIMEOUT))
until [ -s "$SCHED_FILE" ]; do
  alive "$SCHED_PID" || fail "the scheduler exited (port $PORT taken? see the log)"
  [ $SECONDS -lt $deadline ] || fail "the scheduler did not start within $TIMEOUT s"
  sleep 0.2
done

for i in $(seq 1 "$WORKERS"); do
  "$DETACH" "$DASK" worker --scheduler-file "$SCHED_FILE" --host "$HOST" --name "local-$i" \
    --nthreads "$THREADS" --memory-limit "$MEMORY" --local-directory "$DIR/work" \
    --dashboard-address "$HOST:0" </dev/null >"$DIR/worker-$i.log" 2>&1 &
  echo "worker-$i $!" >> "$PIDS"
done

# Wait until every worker has registered, and read the addresses back from the scheduler.
INFO=$("$PYTHON" - "$SCHED_FILE" "$WORKERS" "$TIMEOUT" <<'PY'
import sys
from distributed import Client
path, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with Client(scheduler_file=path, timeout=f"{timeout}s") as c:
    c.wait_for_workers(n, timeout=timeout)
    print(c.scheduler.address, c.dashboard_link)
PY
) || fail "the workers did not all join within $TIMEOUT s"
read -r ADDRESS DASHBOARD <<< "$INFO"
HERE="$(cd "$(dirname "$0")" && pwd)"

cat <<MSG
Dask cluster up: $WORKERS workers × $THREADS thread(s), scheduler $ADDRESS (loopback only)
  dashboard       $DASHBOARD
  scheduler file  $SCHED_FILE
  logs, pids      $DIR/*.log, $PIDS

Run a job on it:
  pairwise-dask run jobs/demo.toml --scheduler $ADDRESS
  # or set  scheduler = "$ADDRESS"  under [cluster] in the job file
  # or in Python:  client = distributed.Client(scheduler_file="$SCHED_FILE")
  #                pairwise_dask.job.run(settings, client=client)

Stop it:
  $HERE/stop.sh --dir $DIR
MSG
