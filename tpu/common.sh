# shellcheck shell=bash
# Shared by the tpu/*.sh scripts (sourced, never run): a declarative flag parser with generated --help, the
# run-or-print helper behind --dry-run, and the gcloud/ssh command builders.
#
# A script sources this file, declares its own flags with `flag`, calls `parse_flags "$@"`, then issues every
# side effect through `run` (or the `tpu_*` builders that call it), so --dry-run prints exactly the commands a
# real run would execute, one per line, shell-quoted and fully expanded.
#
# Settings are flags. Only the slice-wide ones also read a default from the environment, under DLLM_TPU_* names
# (DLLM_TPU_PROJECT, DLLM_TPU_ZONE, DLLM_TPU_NAME, DLLM_TPU_REMOTE_DIR, and DLLM_TPU_ACCELERATOR_TYPE for
# create.sh): every shell variable is set from its flag's default before use, so an unrelated exported CKPT,
# WORKER, JOB or OUT never changes what a script does.

# shellcheck disable=SC2034  # used by the sourcing scripts
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

_FLAG_NAMES=()
_FLAG_VARS=()
_FLAG_KINDS=()
_FLAG_HELPS=()
_FLAG_ENVS=()

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

# flag NAME VAR KIND DEFAULT HELP [ENV]: declares --NAME, stored in VAR, which starts at DEFAULT (or at the
# value of the environment variable ENV, when ENV is given and set and non-empty; only DLLM_TPU_* names are used).
# KIND: value (--NAME V or --NAME=V), bool (--NAME sets 1), list (repeatable). VAR itself is never read from
# the environment, and is not exported to the commands the script runs.
flag() {
  _FLAG_NAMES+=("$1")
  _FLAG_VARS+=("$2")
  _FLAG_KINDS+=("$3")
  _FLAG_HELPS+=("$5")
  _FLAG_ENVS+=("${6:-}")
  if [[ $3 == list ]]; then
    declare -ga "$2=()"
  else
    local value=$4
    if [[ -n ${6:-} && -n ${!6:-} ]]; then
      value=${!6}
    fi
    printf -v "$2" '%s' "$value"
  fi
  export -n "${2?}"
}

usage() {
  local i note
  printf 'Usage: tpu/%s [flags]\n\n%s\n\nFlags:\n' "$(basename "$0")" "$DESCRIPTION"
  for i in "${!_FLAG_NAMES[@]}"; do
    note=
    case ${_FLAG_KINDS[i]} in
      value) [[ -n ${!_FLAG_VARS[i]} ]] && note=" [default: ${!_FLAG_VARS[i]}]" ;;
      list) note=" (repeatable)" ;;
    esac
    [[ -n ${_FLAG_ENVS[i]} ]] && note+=" [env ${_FLAG_ENVS[i]}]"
    printf '  --%-22s %s%s\n' "${_FLAG_NAMES[i]}" "${_FLAG_HELPS[i]}" "$note"
  done
  printf '  --%-22s %s\n' "help" "this text"
}

_flag_index() {
  local i
  for i in "${!_FLAG_NAMES[@]}"; do
    if [[ ${_FLAG_NAMES[i]} == "$1" ]]; then
      printf '%s' "$i"
      return 0
    fi
  done
  return 1
}

parse_flags() {
  local arg name value has_value i
  while (($#)); do
    arg=$1
    shift
    case $arg in
      -h | --help) usage; exit 0 ;;
      --*=*) name=${arg%%=*}; value=${arg#*=}; has_value=1 ;;
      --*) name=$arg; value=; has_value=0 ;;
      *) die "unexpected argument '$arg' (see --help)" ;;
    esac
    i=$(_flag_index "${name#--}") || die "unknown flag $name (see --help)"
    if [[ ${_FLAG_KINDS[i]} == bool ]]; then
      ((has_value == 0)) || die "$name takes no value"
      printf -v "${_FLAG_VARS[i]}" 1
      continue
    fi
    if ((has_value == 0)); then
      (($#)) || die "$name needs a value"
      value=$1
      shift
    fi
    if [[ ${_FLAG_KINDS[i]} == list ]]; then
      local -n _list=${_FLAG_VARS[i]}
      _list+=("$value")
      unset -n _list
    else
      printf -v "${_FLAG_VARS[i]}" '%s' "$value"
    fi
  done
}

# require VAR...: fails with the flag name (and its environment variable, if any) when a setting is empty.
require() {
  local var i
  for var; do
    if [[ -z ${!var} ]]; then
      for i in "${!_FLAG_VARS[@]}"; do
        if [[ ${_FLAG_VARS[i]} == "$var" ]]; then
          [[ -n ${_FLAG_ENVS[i]} ]] && die "--${_FLAG_NAMES[i]} (or env ${_FLAG_ENVS[i]}) is required"
          die "--${_FLAG_NAMES[i]} is required"
        fi
      done
      die "$var is required"
    fi
  done
}

# quote WORD: the word as the shell reads it back: bare when it holds only safe characters, else in double
# quotes when it holds single quotes and nothing double quotes would expand, else in single quotes.
quote() {
  local safe='^[A-Za-z0-9_./:=@%+,-]+$' plain_in_double='^[^"$`\\!]*$'
  if [[ $1 =~ $safe ]]; then
    printf '%s' "$1"
  elif [[ $1 == *\'* && $1 =~ $plain_in_double ]]; then
    printf '"%s"' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# q WORD...: one shell-quoted command line.
q() {
  local words=() word
  for word; do
    words+=("$(quote "$word")")
  done
  printf "%s" "${words[*]}"
}

# run CMD...: with --dry-run prints the command line; otherwise echoes it to stderr and runs it.
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(q "$@")"
  else
    printf '+ %s\n' "$(q "$@")" >&2
    "$@"
  fi
}

_tpu_location=()
_set_location() {
  require PROJECT ZONE
  _tpu_location=("--project=$PROJECT" "--zone=$ZONE")
}

# tpu_gcloud GROUP VERB NAME ARGS...: `gcloud compute tpus GROUP VERB NAME --project --zone ARGS...`.
tpu_gcloud() {
  _set_location
  run gcloud compute tpus "$1" "$2" "$3" "${_tpu_location[@]}" "${@:4}"
}

# tpu_ssh WORKER REMOTE_COMMAND [GCLOUD_ARGS...]: runs one shell command line on the worker(s) ("all", "0",
# "0,1", ...).
tpu_ssh() {
  require TPU_NAME
  tpu_gcloud tpu-vm ssh "$TPU_NAME" "--worker=$1" --command "$2" "${@:3}"
}

# tpu_scp LOCAL_PATH REMOTE_PATH WORKER: copies a local file to the workers (remote path relative to home).
tpu_scp() {
  require TPU_NAME
  tpu_gcloud tpu-vm scp "$1" "$TPU_NAME:$2" "--worker=$3"
}

# Remote layout: the repository in REMOTE_DIR (relative to the workers' home, where ssh commands start), its
# virtual environment in REMOTE_DIR/.venv, and per background job JOB.log (its output), JOB.pid (its process
# group) and, once it has ended, JOB.exit (its exit status) in REMOTE_DIR. Relative paths given to the remote
# commands (--stage-dir, --results-dir, --scratch, a non-gs:// --workdir) are relative to REMOTE_DIR.
# shellcheck disable=SC2034  # used by the sourcing scripts
REMOTE_PYTHON=.venv/bin/python

# repo_flags: declares --remote-dir, for the scripts that work inside the repository on the workers.
repo_flags() {
  flag remote-dir REMOTE_DIR value dllm_rl "repository folder on the workers, relative to the home directory" \
    DLLM_TPU_REMOTE_DIR
}

# in_repo COMMAND_LINE: the command line run from the repository folder on the worker.
in_repo() {
  printf 'cd %s && %s' "$(quote "$REMOTE_DIR")" "$1"
}

# stage_cmd GCS_DIR LOCAL_DIR: command line making a worker-local folder an exact copy of a gs:// folder
# (only changed files are transferred; files the source lacks are deleted).
stage_cmd() {
  printf 'mkdir -p %s && %s' "$(quote "$2")" \
    "$(q gcloud storage rsync --recursive --delete-unmatched-destination-objects "$1" "$2")"
}

# job_flags DEFAULT_JOB: declares the flags naming a background job on the workers.
job_flags() {
  repo_flags
  flag job JOB value "$1" "job name: its files on each worker are REMOTE_DIR/JOB.log, JOB.pid and JOB.exit"
}

# launch_flags DEFAULT_JOB: declares the flags of a program started in the background on the workers.
launch_flags() {
  job_flags "$1"
  flag stage-dir STAGE_DIR value "/tmp/dllm_rl_$1_model" \
    "mirror the gs:// model folder into this worker-local folder first, read it there (empty: read it in place)"
  flag compilation-cache COMPILATION_CACHE value "" \
    "persistent XLA compilation cache folder, passed as --compilation_cache (e.g. gs://BUCKET/xla_cache)"
  flag env JOB_ENV list "" "KEY=VALUE environment variable for the program, e.g. LIBTPU_INIT_ARGS=..."
}

# model_input GCS_DIR: the model folder the program reads (the staged copy unless --stage-dir is empty).
model_input() {
  printf '%s' "${STAGE_DIR:-$1}"
}

# launch JOB GCS_DIR COMMAND_LINE: the remote command line that, in the repository folder, copies the model
# folder GCS_DIR to --stage-dir (in the foreground, so a failed copy fails the script), then starts COMMAND_LINE
# detached from ssh (setsid nohup): output to JOB.log, process-group id to JOB.pid (tpu/stop.sh signals the
# group, tpu/logs.sh tails the log), exit status to JOB.exit when it ends. The wrapping bash traps SIGTERM
# (`trap :`, which the program does not inherit) so that it outlives the signal and records the program's status.
launch() {
  local stage=
  if [[ -n $STAGE_DIR ]]; then
    stage="$(stage_cmd "$2" "$STAGE_DIR") && "
  fi
  in_repo "$stage$(q rm -f "$1.exit") && { setsid nohup $(q bash -c "trap : TERM; $3; echo \$? > $(quote "$1.exit")") > $(quote "$1.log") 2>&1 < /dev/null & echo \$! > $(quote "$1.pid"); }"
}

# python_cmd ARGS...: the workers' Python, unbuffered (so JOB.log shows each line as it is printed) and with the
# --env variables, as one quoted command line.
python_cmd() {
  q env PYTHONUNBUFFERED=1 "${JOB_ENV[@]}" "$REMOTE_PYTHON" "$@"
}

flag project PROJECT value "" "Google Cloud project" DLLM_TPU_PROJECT
flag zone ZONE value "" "zone of the TPU (e.g. us-east5-a for v5p, us-west4-a for v5e)" DLLM_TPU_ZONE
flag tpu-name TPU_NAME value "" "TPU VM (node) name" DLLM_TPU_NAME
flag dry-run DRY_RUN bool 0 "print the commands, one per line, instead of running them"
