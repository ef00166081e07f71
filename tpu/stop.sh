#!/usr/bin/env bash
# Sends SIGTERM to a background job on every worker (its whole process group). The trainer answers SIGTERM by
# saving a checkpoint and exiting; tpu/train.sh with the same --workdir resumes from it.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DESCRIPTION="Stops a job started by tpu/train.sh or tpu/eval.sh (SIGTERM to its process group on each worker)."

job_flags train
flag worker WORKER value all "workers to signal"

main() {
  parse_flags "$@"
  require PROJECT ZONE TPU_NAME REMOTE_DIR
  tpu_ssh "$WORKER" "$(in_repo "kill -TERM -- -\"\$(cat $(quote "$JOB.pid"))\"")"
}

main "$@"
