#!/usr/bin/env bash
# Streams a background job's log from one worker (worker 0 by default; every worker logs the same run).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DESCRIPTION="Follows REMOTE_DIR/JOB.log on one worker (Ctrl-C stops following, not the job)."

job_flags train
flag worker WORKER value 0 "worker whose log to follow"
flag lines TAIL_LINES value 100 "lines of history to print first"

main() {
  parse_flags "$@"
  require PROJECT ZONE TPU_NAME REMOTE_DIR
  # a terminal (-t) so that Ctrl-C also ends the remote tail
  tpu_ssh "$WORKER" "$(in_repo "$(q tail -n "$TAIL_LINES" -F "$JOB.log")")" --ssh-flag=-t
}

main "$@"
