#!/usr/bin/env bash
# Runs one JAX job as N processes on this machine, each with D simulated CPU devices, talking over gloo
# on 127.0.0.1: the multi-host code path (coordinator, per-process data, cross-process collectives,
# process-0-only logging and export) without a cluster. The tests use it.
#
#   launch/local_cpu.sh N D python -m starbucks_jax.train --config configs/quickstart.py --workdir runs/qs2
#
# Every process gets STARBUCKS_COORDINATOR, STARBUCKS_NUM_PROCESSES and STARBUCKS_PROCESS_ID (read by
# starbucks_jax/distributed.py). With STARBUCKS_LOG_DIR set, process i writes to $STARBUCKS_LOG_DIR/
# process_i.log; otherwise all share this terminal. If one process fails the others are killed (they
# would wait for it forever) and its exit status is returned. SIGTERM and SIGINT are passed on to every
# process, so `kill -TERM` of this script is a preemption of the whole job.
set -euo pipefail
if (( $# < 3 )); then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS COMMAND [ARGS...]" >&2
  exit 2
fi
num_processes=$1 devices=$2
shift 2
port=${STARBUCKS_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
xla_flags="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}"

pids=()
for ((i = 0; i < num_processes; i++)); do
  if [[ -n "${STARBUCKS_LOG_DIR:-}" ]]; then
    mkdir -p "$STARBUCKS_LOG_DIR"
    exec {log}>"$STARBUCKS_LOG_DIR/process_$i.log"
  else
    exec {log}>&2
  fi
  STARBUCKS_COORDINATOR="127.0.0.1:$port" STARBUCKS_NUM_PROCESSES=$num_processes STARBUCKS_PROCESS_ID=$i \
    JAX_PLATFORMS=cpu XLA_FLAGS="$xla_flags" "$@" 2>&$log &
  pids+=($!)
  exec {log}>&-
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT

status=0
alive=("${pids[@]}")
while (( ${#alive[@]} > 0 )); do
  finished=""
  set +e
  wait -n -p finished "${alive[@]}"
  rc=$?
  set -e
  [[ -z "${finished:-}" ]] && continue  # woken by a passed-on signal; keep waiting
  still=()
  for pid in "${alive[@]}"; do [[ "$pid" != "$finished" ]] && still+=("$pid"); done
  alive=("${still[@]+"${still[@]}"}")
  if (( rc != 0 && status == 0 )); then
    status=$rc
    echo "local_cpu.sh: process $finished exited with status $rc; stopping the others" >&2
    kill -KILL "${alive[@]}" 2>/dev/null || true
  fi
done
exit $status
