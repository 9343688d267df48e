#!/usr/bin/env bash
# Stop a cluster started by start.sh: ask the scheduler to shut everything down, then end any
# process of ours still running, by the pids start.sh recorded (nothing else is touched).
set -uo pipefail

DIR="${PAIRWISE_DASK_CLUSTER_DIR:-$PWD/dask-local}" PYTHON="${PYTHON:-python3}" QUIET=0
while [ $# -gt 0 ]; do
  case "$1" in
    -d|--dir) DIR="$2"; shift 2 ;;
    -q|--quiet) QUIET=1; shift ;;
    -h|--help) echo "usage: $(basename "$0") [-d|--dir DIR] [-q|--quiet]"; exit 0 ;;
    *) echo "$(basename "$0"): unknown option $1" >&2; exit 2 ;;
  esac
done
say() { [ "$QUIET" = 1 ] || echo "$@"; }
SCHED_FILE="$DIR/scheduler.json" PIDS="$DIR/pids"
if [ ! -f "$PIDS" ]; then say "No cluster recorded in $DIR"; exit 0; fi

# Only pids that still run a dask command count: a pid reused by another program is left alone.
ours() { kill -0 "$1" 2>/dev/null && tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -q -e dask -e distributed; }
pids=() ; while read -r _ pid; do pids+=("$pid"); done < "$PIDS"

# 1. the clean way: the scheduler tells workers and nannies to close, then closes itself
if [ -s "$SCHED_FILE" ]; then
  timeout 20 "$PYTHON" - "$SCHED_FILE" <<'PY' >/dev/null 2>&1 || true
import sys
from distributed import Client
with Client(scheduler_file=sys.argv[1], timeout="5s") as c:
    c.shutdown()
PY
fi

# 2. whatever is left: TERM (nannies then end their worker), then KILL, children included
wait_gone() { for _ in $(seq 1 "$1"); do local any=0; for p in "${pids[@]}"; do ours "$p" && any=1; done
                [ $any = 0 ] && return 0; sleep 0.25; done; return 1; }
if ! wait_gone 40; then
  for p in "${pids[@]}"; do ours "$p" && kill -TERM "$p" 2>/dev/null; done
  if ! wait_gone 40; then
    for p in "${pids[@]}"; do
      if ours "$p"; then
        for c in $(pgrep -P "$p" 2>/dev/null); do kill -KILL "$c" 2>/dev/null; done
        kill -KILL "$p" 2>/dev/null
      fi
    done
  fi
fi
rm -f "$SCHED_FILE" "$PIDS"
say "Stopped the cluster of $DIR"
