#!/usr/bin/env bash
# Installs dllm_rl on every worker: the source (git clone of --repo-url, else this checkout's HEAD as a
# tarball over scp), a Python 3.12 virtual environment made with uv (TPU VM images ship Python 3.10; the
# package needs 3.11+), `pip install -e ".[gcs]"` (gcsfs, for gs:// paths) plus jax[tpu] in the range setup.py pins, then a multi-host check
# printing, per worker: process index, process count, local devices, global devices, device kind.
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

# jax_tpu_spec: setup.py's jax requirement with the [tpu] extra, e.g. jax[tpu]>=0.10.2,<0.12.
jax_tpu_spec() {
  local spec
  spec=$(sed -n 's/^ *"\(jax[<>=!~][^"]*\)",.*/\1/p' "$REPO_ROOT/setup.py")
  [[ -n $spec ]] || die "no jax requirement found in $REPO_ROOT/setup.py; pass --jax-spec"
  printf 'jax[tpu]%s' "${spec#jax}"
}

# fetch_source: puts the repository in REMOTE_DIR on every worker.
fetch_source() {
  local dir=$REMOTE_DIR
  if [[ -n $REPO_URL ]]; then
    tpu_ssh all "{ test -d $(quote "$dir/.git") || $(q git clone --quiet "$REPO_URL" "$dir"); } && $(q git -C "$dir" fetch --quiet origin "$REPO_REF") && $(q git -C "$dir" checkout --quiet --detach FETCH_HEAD)"
    return
  fi
  run git -C "$REPO_ROOT" archive --format=tar.gz "--output=$TARBALL" HEAD
  tpu_scp "$TARBALL" dllm_rl_src.tar.gz all
  tpu_ssh all "$(q mkdir -p "$dir") && $(q tar -xzf dllm_rl_src.tar.gz -C "$dir") && rm dllm_rl_src.tar.gz"
}

main() {
  parse_flags "$@"
  require PROJECT ZONE TPU_NAME REMOTE_DIR
  local jax_spec=${JAX_SPEC:-$(jax_tpu_spec)}
  local check="import jax; jax.distributed.initialize(); print(jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(), jax.devices()[0].device_kind)"
  fetch_source
  tpu_ssh all "$(in_repo "$(q python3 -m pip install --quiet --user --upgrade uv) && $(q python3 -m uv venv --quiet --allow-existing --python "$PYTHON_VERSION" .venv) && $(q python3 -m uv pip install --quiet --python "$REMOTE_PYTHON" -e ".[gcs]" "$jax_spec")")"
  tpu_ssh all "$(in_repo "$(q "$REMOTE_PYTHON" -c "$check")")"
}

main "$@"
