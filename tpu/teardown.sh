#!/usr/bin/env bash
# Deletes the TPU VM (all of its workers and their disks).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SUMMARY="Deletes the TPU VM --name with all of its workers and their disks (anything
not in --workdir storage outside the VM is lost). Asks first unless --yes."
define_tpu_flags
define_bool yes "Delete without asking."
parse_flags "$@"

if (( ! DRY_RUN && ! $(flag yes) )); then
  answer=""
  read -r -p "Delete TPU VM '$(flag name)' in $(flag zone) and its disks? [y/N] " answer || true
  if [[ ! $answer =~ ^(y|Y|yes)$ ]]; then
    printf '%s: aborted, nothing deleted\n' "$SCRIPT_NAME" >&2
    exit 1
  fi
fi
tpu_gcloud delete "$(flag name)" --quiet
