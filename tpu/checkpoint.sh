#!/usr/bin/env bash
# Converts the HF LLaDA checkpoint to dllm_rl's Orbax model folder and uploads it to GCS. With a gs:// --hf-dir
# the conversion runs on worker 0 (fast GCS access, enough host memory: the converter peaks at ~13 GiB for the
# 8B model), on JAX's CPU backend (JAX_PLATFORMS=cpu: the converter needs no accelerator, and on TPU it would
# block, alone of a multi-host slice, in TPU initialisation, or fail while a job holds the chips); with a local
# --hf-dir it runs here, with this checkout's Python environment.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DESCRIPTION="Converts LLaDA HF weights (python -m dllm_rl.convert) and uploads the Orbax folder to gs://."

repo_flags
flag hf-dir HF_DIR value "" "HF model folder (config.json, safetensors, tokenizer): gs://... (convert on worker 0) or local"
flag ckpt CKPT value "" "gs:// destination of the converted model folder (what train.sh --ckpt reads)"
flag dtype DTYPE value bfloat16 "parameter dtype of the converted checkpoint"
flag scratch SCRATCH value /tmp/dllm_rl_convert \
  "scratch folder for the HF copy (hf/) and the converted model (out/); on worker 0 for a gs:// --hf-dir"
flag python LOCAL_PYTHON value python3 "local Python with dllm_rl installed (local --hf-dir only)"

main() {
  parse_flags "$@"
  require HF_DIR CKPT
  [[ $CKPT == gs://* ]] || die "--ckpt must be a gs:// folder, got '$CKPT'"
  local out=$SCRATCH/out
  if [[ $HF_DIR != gs://* ]]; then
    run "$LOCAL_PYTHON" -m dllm_rl.convert --hf_dir "$HF_DIR" --out_dir "$out" --dtype "$DTYPE" --overwrite
    run gcloud storage rsync --recursive "$out" "$CKPT"
    return
  fi
  require PROJECT ZONE TPU_NAME REMOTE_DIR
  local convert
  convert=$(q env JAX_PLATFORMS=cpu "$REMOTE_PYTHON" -m dllm_rl.convert --hf_dir "$SCRATCH/hf" --out_dir "$out" \
    --dtype "$DTYPE" --overwrite)
  tpu_ssh 0 "$(in_repo "$(stage_cmd "$HF_DIR" "$SCRATCH/hf") && $convert && $(q gcloud storage rsync --recursive "$out" "$CKPT")")"
}

main "$@"
