#!/usr/bin/env bash
# Starts `python -m experiments.run --distributed` on every worker of the slice, the same command on each (JAX's
# distributed runtime finds the coordinator, the process count and this process's index itself: on a Cloud TPU
# VM from the VM metadata server), detached from ssh: output in REMOTE_DIR/JOB.log per worker (tpu/logs.sh),
# stop with tpu/stop.sh (SIGTERM: the trainer saves a checkpoint; rerunning resumes).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DESCRIPTION="Launches dllm_rl training (experiments.run --distributed) on all workers of the TPU VM."

launch_flags train
flag gin GIN value experiments/configs/gsm8k_agrpo.gin "gin config, relative to the repository"
flag workdir WORKDIR value "" "run folder shared by all workers (gs://...): metrics, checkpoints, final_model/"
flag shared-workdir SHARED_WORKDIR bool 0 \
  "--workdir is not on gs:// but on a filesystem every worker mounts (Filestore, gcsfuse): allow it on any slice"
flag workers WORKERS value "" \
  "workers (hosts) of the slice, for the non-gs:// --workdir check (default: ask gcloud tpu-vm describe)"
flag ckpt CKPT value "" "converted model folder (gs://..., from tpu/checkpoint.sh) bound to dllm_rl.ModelSource.ckpt_dir"
flag mesh MESH value "" "mesh spec bound to dllm_rl.MeshConfig.shape, e.g. \"{'data': -1, 'fsdp': 4, 'tensor': 1}\""
flag binding BINDINGS list "" "extra gin binding, e.g. dllm_rl.TrainConfig.grad_accum=8"

# check_workdir: a workdir outside gs:// is refused on a multi-worker slice unless every worker mounts it (each
# worker would write its checkpoints and metrics to its own disk, and a resume would find them incomplete). The
# worker count comes from --workers, else from gcloud; a dry run prints the describe command instead of asking
# it, and skips the check.
check_workdir() {
  [[ $WORKDIR == gs://* ]] && return
  ((SHARED_WORKDIR)) && return
  # One network endpoint per worker. `len()` is a documented resource-projection transform (`gcloud topic
  # projections`: "Returns the length of the resource if it is non-empty, 0 otherwise"); checked against the
  # Cloud SDK 528 resource printer, a node with two networkEndpoints prints "2".
  local workers=$WORKERS describe=(tpu-vm describe "$TPU_NAME" "--format=value(networkEndpoints.len())")
  if [[ -z $workers ]]; then
    if ((DRY_RUN)); then
      tpu_gcloud "${describe[@]}"
      echo "note: dry run: the worker count is not asked (pass --workers N to check the non-gs:// --workdir)" >&2
      return
    fi
    workers=$(tpu_gcloud "${describe[@]}")
  fi
  [[ $workers =~ ^[0-9]+$ ]] || die "cannot tell how many workers $TPU_NAME has (got '$workers'); pass --workers N"
  ((workers <= 1)) || die "--workdir '$WORKDIR' is not on gs:// and $TPU_NAME has $workers workers, each of which" \
    "would write its own copy of the run; use a gs:// --workdir, or pass --shared-workdir if every worker mounts" \
    "this path (Filestore, gcsfuse)"
}

main() {
  parse_flags "$@"
  require PROJECT ZONE TPU_NAME REMOTE_DIR WORKDIR CKPT
  [[ -z $WORKERS || $WORKERS =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer, got '$WORKERS'"
  check_workdir
  local bindings=("dllm_rl.ModelSource.ckpt_dir='$(model_input "$CKPT")'") binding args=()
  [[ -n $MESH ]] && bindings+=("dllm_rl.MeshConfig.shape=$MESH")
  bindings+=("${BINDINGS[@]}")
  for binding in "${bindings[@]}"; do
    args+=(--gin_binding "$binding")
  done
  [[ -n $COMPILATION_CACHE ]] && args+=(--compilation_cache "$COMPILATION_CACHE")
  tpu_ssh all "$(launch "$JOB" "$CKPT" \
    "$(python_cmd -m experiments.run --distributed --gin "$GIN" --workdir "$WORKDIR" "${args[@]}" --no_progress)")"
}

main "$@"
