#!/usr/bin/env bash
# Evaluates a model folder with `python -m experiments.eval` (the AGRPO/d1 protocol) on one worker, detached
# from ssh, then uploads the results (per-example JSONL, summary.json, summary.md) to --out.
# experiments.eval runs on a single host; on a multi-host slice use a single-host TPU VM for evaluation.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DESCRIPTION="Runs experiments.eval on one worker of the TPU VM and uploads the results to gs://."

launch_flags eval
flag worker WORKER value 0 "worker that runs the evaluation"
flag ckpt CKPT value "" "model folder to evaluate (gs://...; default: WORKDIR/final_model, the trained policy)"
flag workdir WORKDIR value "" "training run folder (only to default --ckpt)"
flag task TASK value gsm8k "comma-separated tasks (gsm8k, math, countdown, sudoku)"
flag lengths LENGTHS value 128,256,512 "comma-separated generation lengths"
flag out OUT value "" "gs:// folder receiving the results"
flag results-dir RESULTS_DIR value /tmp/dllm_rl_eval_results "worker-local folder experiments.eval writes to (emptied first)"
flag arg EVAL_ARGS list "" "extra experiments.eval argument, e.g. --limit=100 (repeatable)"

main() {
  parse_flags "$@"
  if [[ -z $CKPT && -n $WORKDIR ]]; then
    CKPT=$WORKDIR/final_model
  fi
  require PROJECT ZONE TPU_NAME REMOTE_DIR CKPT OUT
  local evaluate upload
  evaluate=$(q rm -rf "$RESULTS_DIR")" && "$(python_cmd -m experiments.eval --task "$TASK" --lengths "$LENGTHS" --ckpt_dir "$(model_input "$CKPT")" \
    --out_dir "$RESULTS_DIR" "${EVAL_ARGS[@]}")
  upload=$(q gcloud storage rsync --recursive "$RESULTS_DIR" "$OUT")
  tpu_ssh "$WORKER" "$(staged_background "$JOB" "$CKPT" "$(q bash -c "$evaluate && $upload")")"
}

main "$@"
