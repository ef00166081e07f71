#!/usr/bin/env bash
# Creates the TPU VM: directly (tpu-vm create) or through a queued resource (--queued-resource NAME, waits
# until it is ACTIVE unless --async). The runtime version follows the accelerator generation unless given.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DESCRIPTION="Creates a TPU VM (or a queued resource holding one) for dllm_rl."

flag accelerator-type ACCELERATOR_TYPE value v5p-8 \
  "TPU type, e.g. v5p-8 (1 host, 4 chips), v5litepod-8 (1 host, 8 chips), v5p-16 (2 hosts, 8 chips)" \
  DLLM_TPU_ACCELERATOR_TYPE
flag runtime-version RUNTIME_VERSION value "" "TPU software version (default: v2-alpha-tpuv6e / -tpuv5 / -tpuv5-lite / tpu-ubuntu2204-base by generation)"
flag queued-resource QUEUED_RESOURCE value "" "create through a queued resource of this name (recommended for large slices)"
flag spot SPOT bool 0 "Spot capacity (preemptible; the trainer checkpoints on SIGTERM)"
flag reserved RESERVED bool 0 "use reserved capacity"
flag valid-until-duration VALID_UNTIL value "" "queued resource: give up if not provisioned within this duration (e.g. 6h)"
flag scopes SCOPES value "https://www.googleapis.com/auth/cloud-platform" "service-account scopes (GCS read/write needs storage access)"
flag async ASYNC bool 0 "queued resource: return without waiting for ACTIVE"

# default_runtime ACCELERATOR_TYPE: the TPU software version Cloud TPU recommends for JAX on that generation.
default_runtime() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

# wait_active: polls the queued resource until ACTIVE (prints the poll command once under --dry-run).
wait_active() {
  local poll=(queued-resources describe "$QUEUED_RESOURCE" "--format=value(state.state)") state
  if ((DRY_RUN)); then
    tpu_gcloud "${poll[@]}"
    return
  fi
  while true; do
    state=$(tpu_gcloud "${poll[@]}")
    case $state in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED) die "queued resource $QUEUED_RESOURCE is $state" ;;
    esac
    echo "queued resource $QUEUED_RESOURCE: ${state:-unknown}; waiting" >&2
    sleep 30
  done
}

main() {
  parse_flags "$@"
  require PROJECT ZONE TPU_NAME ACCELERATOR_TYPE
  local version=${RUNTIME_VERSION:-$(default_runtime "$ACCELERATOR_TYPE")}
  local capacity=()
  ((SPOT)) && capacity+=(--spot)
  ((RESERVED)) && capacity+=(--reserved)
  if [[ -z $QUEUED_RESOURCE ]]; then
    tpu_gcloud tpu-vm create "$TPU_NAME" "--accelerator-type=$ACCELERATOR_TYPE" "--version=$version" \
      "--scopes=$SCOPES" "${capacity[@]}"
    return
  fi
  [[ -n $VALID_UNTIL ]] && capacity+=("--valid-until-duration=$VALID_UNTIL")
  tpu_gcloud queued-resources create "$QUEUED_RESOURCE" "--node-id=$TPU_NAME" \
    "--accelerator-type=$ACCELERATOR_TYPE" "--runtime-version=$version" "--scopes=$SCOPES" "${capacity[@]}"
  ((ASYNC)) || wait_active
}

main "$@"
