#!/usr/bin/env bash
# Starts `python -m experiments.run` on every worker of the slice, the same command on each (JAX's distributed
# runtime finds its peers from the TPU VM metadata), detached from ssh: logs in REMOTE_DIR/JOB.log per worker
# (tpu/logs.sh), stop with tpu/stop.sh (SIGTERM: the trainer saves a checkpoint; rerunning resumes).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DESCRIPTION="Launches dllm_rl training (experiments.run) on all workers of the TPU VM."

launch_flags train
flag gin GIN value experiments/configs/gsm8k_agrpo.gin "gin config, relative to the repository"
flag workdir WORKDIR value "" "run folder shared by all workers (gs://...): metrics, checkpoints, final_model/"
flag ckpt CKPT value "" "converted model folder (gs://..., from tpu/checkpoint.sh) bound to dllm_rl.ModelSource.ckpt_dir"
flag mesh MESH value "" "mesh spec bound to dllm_rl.MeshConfig.shape, e.g. \"{'data': -1, 'fsdp': 4, 'tensor': 1}\""
flag binding BINDINGS list "" "extra gin binding, e.g. dllm_rl.TrainConfig.grad_accum=8"

main() {
  parse_flags "$@"
  require PROJECT ZONE TPU_NAME REMOTE_DIR WORKDIR CKPT
  local bindings=("dllm_rl.ModelSource.ckpt_dir='$(model_input "$CKPT")'") binding args=()
  [[ -n $MESH ]] && bindings+=("dllm_rl.MeshConfig.shape=$MESH")
  bindings+=("${BINDINGS[@]}")
  for binding in "${bindings[@]}"; do
    args+=(--gin_binding "$binding")
  done
  tpu_ssh all "$(staged_background "$JOB" "$CKPT" \
    "$(python_cmd -m experiments.run --gin "$GIN" --workdir "$WORKDIR" "${args[@]}" --no_progress)")"
}

main "$@"
