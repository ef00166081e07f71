#!/usr/bin/env bash
# Evaluates with `python -m experiments.eval --distributed` (the AGRPO/d1 protocol) on every worker, detached
# from ssh: every process samples its share of the examples and process 0 writes the results (per-example
# JSONL, summary.json, summary.md), which its worker then uploads to --out.
#
# What is evaluated:
#   --workdir W --ckpt BASE   the trained policy: W's latest checkpoint on the base model BASE (the converted
#                             model folder train.sh --ckpt used, staged to the worker disk the same way)
#   --workdir W --merged      W/final_model, the merged bf16 copy the trainer writes at the end
#   --ckpt MODEL              that model folder (e.g. the base model, for the baseline)
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DESCRIPTION="Runs experiments.eval --distributed on the workers of the TPU VM and uploads the results to gs://.
  --workdir W --ckpt BASE   the trained policy: W's latest checkpoint on the base model BASE (train.sh --ckpt)
  --workdir W --merged      W/final_model (the LoRA-merged bf16 copy written at the end of training)
  --ckpt MODEL              that model folder as is (e.g. the base model, for the baseline)"

launch_flags eval
flag worker WORKER value all "workers that run the evaluation (every host of a multi-host slice must take part)"
flag workdir WORKDIR value "" "training run folder (gs://...): evaluate its trained policy on the base model --ckpt"
flag ckpt CKPT value "" "converted base model folder (gs://..., as given to train.sh --ckpt); alone: evaluate it as is"
flag merged MERGED bool 0 "with --workdir: evaluate WORKDIR/final_model (merged at the end of training) instead"
flag task TASK value gsm8k "comma-separated tasks (gsm8k, math, countdown, sudoku)"
flag lengths LENGTHS value 128,256,512 "comma-separated generation lengths"
flag out OUT value "" "gs:// folder receiving the results"
flag results-dir RESULTS_DIR value /tmp/dllm_rl_eval_results \
  "worker-local folder experiments.eval writes to (emptied first; uploaded from the worker holding summary.json)"
flag arg EVAL_ARGS list "" "extra experiments.eval argument, e.g. --limit=100 (repeatable)"

main() {
  parse_flags "$@"
  require PROJECT ZONE TPU_NAME REMOTE_DIR OUT
  local model policy=()
  if [[ -n $WORKDIR ]] && ((MERGED)); then
    [[ -z $CKPT ]] || die "--merged evaluates WORKDIR/final_model; drop --ckpt"
    model=$WORKDIR/final_model
  elif [[ -n $WORKDIR ]]; then
    [[ -n $CKPT ]] || die "--ckpt is required with --workdir: the base model folder the run trained on" \
      "(train.sh --ckpt); or pass --merged to evaluate WORKDIR/final_model"
    model=$CKPT
    policy=(--lora_dir "$WORKDIR")
  else
    ((MERGED == 0)) || die "--merged needs --workdir"
    [[ -n $CKPT ]] || die "--workdir (with --ckpt) or --ckpt is required"
    model=$CKPT
  fi
  local args=(--task "$TASK" --lengths "$LENGTHS" "${policy[@]}" --ckpt_dir "$(model_input "$model")"
    --out_dir "$RESULTS_DIR")
  [[ -n $COMPILATION_CACHE ]] && args+=(--compilation_cache "$COMPILATION_CACHE")
  local evaluate upload
  evaluate="$(q rm -rf "$RESULTS_DIR") && $(python_cmd -m experiments.eval --distributed "${args[@]}" "${EVAL_ARGS[@]}")"
  upload="if [ -f $(quote "$RESULTS_DIR/summary.json") ]; then $(q gcloud storage rsync --recursive "$RESULTS_DIR" "$OUT"); fi"
  tpu_ssh "$WORKER" "$(launch "$JOB" "$model" "$evaluate && $upload")"
}

main "$@"
