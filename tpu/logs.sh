#!/usr/bin/env bash
# Tails the training log of worker 0, or of every worker.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SUMMARY="Shows <remote-dir>/logs/<run>.log (written by tpu/launch.sh) of worker --worker,
or of every worker with --worker=all; each line starts with the worker's hostname.
Follows the log until Ctrl-C unless --no-follow."
define_tpu_flags
define_remote_dir_flag
define_run_flag
define_flag worker 0 "Worker number, or 'all'."
define_flag lines 50 "Lines of history to show first."
define_bool no-follow "Print the last --lines lines and exit."
parse_flags "$@"
check_run_name

dir=$(remote_dir)
worker=$(flag worker)
if [[ ! $worker =~ ^(all|[0-9]+)$ ]]; then
  die "--worker must be 'all' or a worker number, got '$worker'"
fi
lines=$(flag lines)
if [[ ! $lines =~ ^[0-9]+$ ]]; then
  die "--lines must be a whole number, got '$lines'"
fi
follow="-F"
if (( $(flag no-follow) )); then
  follow=""
fi

tpu_ssh "$worker" "$(remote_script "cd $dir" \
  "tail -n $lines ${follow:+$follow }logs/$(flag run).log | sed -u \"s/^/[\$(hostname)] /\"")"
