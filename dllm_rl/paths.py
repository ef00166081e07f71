"""Run and checkpoint paths that may be local or remote (`gs://bucket/dir`), as etils `epath` paths (what Orbax
uses). Remote URLs are kept as they are; `os.path.abspath` would mangle them into local paths. gs:// goes
through gcsfs (the `gcs` extra) or TensorFlow's gfile, whichever is installed."""
from __future__ import annotations

import importlib.util
import os

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs such as gs://bucket/dir (anything with a scheme)."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> epath.Path:
    """A local path made absolute (Orbax needs absolute paths); a remote URL unchanged."""
    path = os.fspath(path)
    if not is_remote(path):
        return epath.Path(os.path.abspath(path))
    if path.startswith("gs://") and not _has_module("gcsfs") and not _has_module("tensorflow"):
        raise ImportError(f"{path}: reading or writing gs:// needs gcsfs; pip install 'dllm_rl[gcs]' (or gcsfs)")
    return epath.Path(path)


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def replace_bytes(path: epath.Path, data: bytes) -> None:
    """Writes `data` to a temporary sibling, then renames it onto `path` (readers never see a partial file)."""
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
