#!/usr/bin/env bash
# Copies this working tree (code and configs) to every worker of the TPU VM.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SUMMARY="Copies this working tree (code, configs, docs; not .git, .venv, runs, caches)
to --remote-dir on every worker: one tar archive, scp to all workers, unpacked there.
Files deleted here stay on the workers. Run tpu/setup.sh again when setup.py changes."
define_tpu_flags
define_remote_dir_flag
parse_flags "$@"

sync_repo
