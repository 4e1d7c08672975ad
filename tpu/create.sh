#!/usr/bin/env bash
# Creates a TPU VM: one host (v4-8, v5litepod-8) or a pod slice (v4-32, v5p-64).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SUMMARY="Creates the TPU VM --name: one host (e.g. v4-8, v5litepod-8) or a pod slice of
several hosts (e.g. v4-32, v5p-64); the later scripts run on all of its workers.
The software version defaults to Google's base image for the accelerator family:
v2/v3/v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
v6e v2-alpha-tpuv6e."
ACCEPTS_EXTRA=1
EXTRA_HELP="More flags for 'gcloud compute tpus tpu-vm create', e.g. --network=NET --internal-ips."
define_tpu_flags
define_flag accelerator-type "" "TPU type, e.g. v4-8, v5litepod-8, v4-32, v5p-64." required
define_flag version "" "TPU software (runtime) version; default: by accelerator family (above)."
define_bool spot "Spot VM: much cheaper, may be preempted at any time."
define_bool preemptible "Legacy preemptible VM (at most 24 h); prefer --spot."
parse_flags "$@"

accelerator=$(flag accelerator-type)
version=$(flag version)
if [[ -z $version ]]; then
  case $accelerator in
    v2-* | v3-* | v4-*) version=tpu-ubuntu2204-base ;;
    v5litepod-*) version=v2-alpha-tpuv5-lite ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v6e-*) version=v2-alpha-tpuv6e ;;
    *) die "no default --version for --accelerator-type=$accelerator; pass --version" ;;
  esac
fi
capacity=()
if (( $(flag spot) && $(flag preemptible) )); then
  die "--spot and --preemptible exclude each other"
elif (( $(flag spot) )); then
  capacity=(--spot)
elif (( $(flag preemptible) )); then
  capacity=(--preemptible)
fi

tpu_gcloud create "$(flag name)" "--accelerator-type=$accelerator" "--version=$version" \
  ${capacity[@]+"${capacity[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
