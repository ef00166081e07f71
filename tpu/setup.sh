#!/usr/bin/env bash
# Installs dllm_rl on every worker: the source (git clone of --repo-url, else this checkout's HEAD as a
# tarball over scp), a Python 3.12 virtual environment made with uv (TPU VM images ship Python 3.10; the
# package needs 3.11+), `pip install -e ".[gcs]"` (gcsfs, for gs:// paths) plus jax[tpu] in the range setup.py
# pins, then a multi-host check: `python -m dllm_rl.parallel.multihost --distributed` on every worker starts JAX
# the way the trainer does (jax.distributed.initialize() with the slice found by JAX itself) and prints one line
# per process: "process I of N: L local devices, G global devices (KIND)".
#
# Copying HEAD ships committed files only: a tree with uncommitted changes to tracked files is refused unless
# --allow-dirty (HEAD is then shipped without them, with a warning).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DESCRIPTION="Installs dllm_rl and jax[tpu] on every worker of the TPU VM (--worker=all)."

repo_flags
flag repo-url REPO_URL value "" "git URL to clone on the workers (default: copy this checkout's HEAD with git archive + scp)"
flag repo-ref REPO_REF value main "branch, tag or commit to check out with --repo-url"
flag python-version PYTHON_VERSION value 3.12 "Python for the workers' virtual environment (uv downloads it)"
flag jax-spec JAX_SPEC value "" "jax requirement (default: jax[tpu] with the version range of setup.py)"
flag tarball TARBALL value "${TMPDIR:-/tmp}/dllm_rl_src.tar.gz" "local tarball path used without --repo-url"
flag allow-dirty ALLOW_DIRTY bool 0 "ship HEAD even though tracked files have uncommitted changes (not shipped)"

# jax_tpu_spec: setup.py's jax requirement with the [tpu] extra, e.g. jax[tpu]>=0.10.2,<0.12.
jax_tpu_spec() {
  local spec
  spec=$(sed -n 's/^ *"\(jax[<>=!~][^"]*\)",.*/\1/p' "$REPO_ROOT/setup.py")
  [[ -n $spec ]] || die "no jax requirement found in $REPO_ROOT/setup.py; pass --jax-spec"
  printf 'jax[tpu]%s' "${spec#jax}"
}

# check_clean: HEAD is what gets copied, so uncommitted changes to tracked files would silently stay behind.
check_clean() {
  local changes
  changes=$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) || die "git status failed in $REPO_ROOT"
  [[ -z $changes ]] && return
  ((ALLOW_DIRTY)) || die "$REPO_ROOT has uncommitted changes to tracked files, which would not be shipped" \
    "(setup.sh copies HEAD): commit them, or pass --allow-dirty to ship HEAD without them"
  printf 'warning: %s has uncommitted changes to tracked files; shipping HEAD without them (--allow-dirty)\n' \
    "$REPO_ROOT" >&2
}

# fetch_source: puts the repository in REMOTE_DIR on every worker.
fetch_source() {
  local dir=$REMOTE_DIR
  if [[ -n $REPO_URL ]]; then
    tpu_ssh all "{ test -d $(quote "$dir/.git") || $(q git clone --quiet "$REPO_URL" "$dir"); } && $(q git -C "$dir" fetch --quiet origin "$REPO_REF") && $(q git -C "$dir" checkout --quiet --detach FETCH_HEAD)"
    return
  fi
  check_clean
  run git -C "$REPO_ROOT" archive --format=tar.gz "--output=$TARBALL" HEAD
  tpu_scp "$TARBALL" dllm_rl_src.tar.gz all
  tpu_ssh all "$(q mkdir -p "$dir") && $(q tar -xzf dllm_rl_src.tar.gz -C "$dir") && rm dllm_rl_src.tar.gz"
}

main() {
  parse_flags "$@"
  require PROJECT ZONE TPU_NAME REMOTE_DIR
  local jax_spec
  jax_spec=${JAX_SPEC:-$(jax_tpu_spec)}
  fetch_source
  tpu_ssh all "$(in_repo "$(q python3 -m pip install --quiet --user --upgrade uv) && $(q python3 -m uv venv --quiet --allow-existing --python "$PYTHON_VERSION" .venv) && $(q python3 -m uv pip install --quiet --python "$REMOTE_PYTHON" -e ".[gcs]" "$jax_spec")")"
  tpu_ssh all "$(in_repo "$(q "$REMOTE_PYTHON" -m dllm_rl.parallel.multihost --distributed)")"
}

main "$@"
