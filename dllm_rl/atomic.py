"""Atomic directory writes: fill a temporary sibling directory, then rename it onto the destination.

A reader (or a resumed run) never sees a half-written folder: an interrupted or failed write leaves only the
destination as it was before (plus nothing, since the temporary directory is removed on error).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike) -> Iterator[str]:
    """Yields a new temporary directory next to `out_dir`; on success it replaces `out_dir` (an existing one is
    removed first), on error it is deleted and the error propagates."""
    out_dir = os.fspath(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        yield tmp_dir
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
