"""Run and checkpoint paths that may be local or remote (`gs://bucket/dir`), as etils `epath` paths (what Orbax
uses). Remote URLs are kept as they are; `os.path.abspath` would mangle them into local paths."""
from __future__ import annotations

import os

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs such as gs://bucket/dir (anything with a scheme)."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> epath.Path:
    """A local path made absolute (Orbax needs absolute paths); a remote URL unchanged."""
    path = os.fspath(path)
    return epath.Path(path if is_remote(path) else os.path.abspath(path))


def replace_bytes(path: epath.Path, data: bytes) -> None:
    """Writes `data` to a temporary sibling, then renames it onto `path` (readers never see a partial file)."""
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
