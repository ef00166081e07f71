"""Write a folder under a temporary sibling name and rename it into place only when complete.

The same steps as `dllm_rl.convert` does inline (convert.py has no reusable function yet); to be replaced by the
shared atomic-directory helper when it lands.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from dllm_rl.checkpoint.hf import CheckpointError


def check_writable(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(out_dir) and not overwrite:
        raise CheckpointError(f"{out_dir}: already exists; pass --overwrite or choose another --out_dir")


@contextlib.contextmanager
def staging_dir(out_dir: str, overwrite: bool = False) -> Iterator[str]:
    """Yields an empty temporary sibling of `out_dir`; on success it replaces `out_dir`, on error it is removed."""
    check_writable(out_dir, overwrite)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.tmp-", dir=parent)
    try:
        yield tmp_dir
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
