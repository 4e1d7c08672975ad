#!/usr/bin/env bash
# Starts (or stops) `python -m experiments.train` on every worker at once.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# JAX's coordinator port on Cloud TPU (jax/_src/clusters/cloud_tpu_cluster.py).
COORDINATOR_PORT=8482
METADATA_URL=http://metadata.google.internal/computeMetadata/v1/instance/attributes

SUMMARY="Starts 'python -m experiments.train --config=... --workdir=...' on every worker
at once, in the background (nohup), each worker logging to <remote-dir>/logs/<run>.log
and its pid to <remote-dir>/logs/<run>.pid; refuses while that run is alive. Each
worker exports PYTHONUNBUFFERED=1 and JAX_COORDINATOR_ADDRESS=<worker 0>:$COORDINATOR_PORT,
worker 0's address read from the TPU metadata (worker-network-endpoints) as JAX
itself does, so rlvr_jax.sharding.initialize_distributed() calls
jax.distributed.initialize(), which finds the process count and index by itself.
On a pod slice --workdir must be storage every worker sees at the same path:
a gs://bucket/folder (orbax writes the checkpoints, process 0 the other files).
With --stop, kills run --run on every worker instead."
ACCEPTS_EXTRA=1
EXTRA_HELP="More flags for experiments.train, e.g. --config.rl.group_size=16."
define_tpu_flags
define_remote_dir_flag
define_run_flag
define_flag config "" "Config file relative to the checkout, e.g. experiments/configs/default.py. Required unless --stop."
define_flag workdir "" "Checkpoints and metrics: gs://bucket/folder, or a path (relative to the checkout) that is the same storage on every worker of a pod slice. Required unless --stop."
define_list env "KEY=VALUE exported on every worker before training, e.g. LIBTPU_INIT_ARGS=..."
define_bool stop "Stop run --run on every worker (kill its pid) instead of starting one."
parse_flags "$@"
check_run_name

dir=$(remote_dir)
run_name=$(flag run)
log="logs/$run_name.log"
pid="logs/$run_name.pid"

if (( $(flag stop) )); then
  if (( ${#EXTRA_ARGS[@]} )); then
    die "--stop takes no arguments after --"
  fi
  tpu_ssh all "$(remote_script "cd $dir" \
    "if [ -f $pid ]; then kill \"\$(cat $pid)\" 2> /dev/null || true; rm -f $pid; echo \"\$(hostname): stopped $run_name\"; else echo \"\$(hostname): no $pid\"; fi")"
  exit 0
fi
require_flags config workdir

exports="PYTHONUNBUFFERED=1 \"JAX_COORDINATOR_ADDRESS=\$COORDINATOR:$COORDINATOR_PORT\""
while IFS= read -r pair; do
  if [[ -z $pair ]]; then
    continue
  fi
  if [[ ! $pair =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
    die "--env must be KEY=VALUE, got '$pair'"
  fi
  exports+=" $(quote_word "$pair")"
done <<< "$(flag env)"

train=$(quote_cmd .venv/bin/python -m experiments.train "--config=$(flag config)" \
  "--workdir=$(flag workdir)" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})

tpu_ssh all "$(remote_script "cd $dir" "mkdir -p logs" \
  "if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2> /dev/null; then echo \"\$(hostname): run $run_name is already running; stop it with tpu/launch.sh --stop\" >&2; exit 1; fi" \
  "COORDINATOR=\$(curl -sf -H Metadata-Flavor:Google $METADATA_URL/worker-network-endpoints | cut -d, -f1 | sed \"s/.*://\")" \
  "export $exports" \
  "nohup $train > $log 2>&1 < /dev/null & echo \$! > $pid" \
  "echo \"\$(hostname): started $run_name, pid \$(cat $pid), log $dir/$log\"")"
