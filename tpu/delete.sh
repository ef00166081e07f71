#!/usr/bin/env bash
# Deletes the TPU VM, or the queued resource together with its TPU VM (--queued-resource). Runs and
# checkpoints in gs:// survive; anything on the workers' disks is lost.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DESCRIPTION="Deletes the TPU VM (or its queued resource)."

flag queued-resource QUEUED_RESOURCE value "" "delete this queued resource and its TPU VM (--force)"
flag yes YES bool 0 "do not ask for confirmation (gcloud --quiet)"

main() {
  parse_flags "$@"
  local confirm=()
  ((YES)) && confirm=(--quiet)
  if [[ -n $QUEUED_RESOURCE ]]; then
    tpu_gcloud queued-resources delete "$QUEUED_RESOURCE" --force "${confirm[@]}"
  else
    require TPU_NAME
    tpu_gcloud tpu-vm delete "$TPU_NAME" "${confirm[@]}"
  fi
}

main "$@"
