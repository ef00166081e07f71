#!/usr/bin/env bash
# Streams a background job's log from one worker (worker 0 by default; every worker logs the same run), or with
# --no-follow prints its last lines and returns (for scripts).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DESCRIPTION="Follows REMOTE_DIR/JOB.log on one worker (Ctrl-C stops following, not the job)."

job_flags train
flag worker WORKER value 0 "worker whose log to follow"
flag lines TAIL_LINES value 100 "lines of history to print first"
flag no-follow NO_FOLLOW bool 0 "print the last --lines lines and exit instead of following the log"

main() {
  parse_flags "$@"
  require PROJECT ZONE TPU_NAME REMOTE_DIR
  if ((NO_FOLLOW)); then
    tpu_ssh "$WORKER" "$(in_repo "$(q tail -n "$TAIL_LINES" "$JOB.log")")"
    return
  fi
  # a terminal (-t) so that Ctrl-C also ends the remote tail
  tpu_ssh "$WORKER" "$(in_repo "$(q tail -n "$TAIL_LINES" -F "$JOB.log")")" --ssh-flag=-t
}

main "$@"
