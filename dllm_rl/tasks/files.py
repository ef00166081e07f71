"""Reading the data files shipped in dllm_rl/tasks/data/ (see data/README.md for provenance)."""
from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import pathlib

DATA_DIR = pathlib.Path(__file__).with_name("data")


def data_path(name: str) -> pathlib.Path:
    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"task data file {path} is missing; reinstall dllm_rl, or rebuild the files with "
            f"`python -m dllm_rl.tasks.prepare_data --src <raw data folder>`")
    return path


def _text(name: str) -> str:
    raw = data_path(name).read_bytes()
    return (gzip.decompress(raw) if name.endswith(".gz") else raw).decode("utf-8")


@functools.lru_cache(maxsize=None)
def read_jsonl(name: str) -> tuple[dict, ...]:
    """Rows of a shipped .jsonl or .jsonl.gz file (cached; callers must not mutate them)."""
    return tuple(json.loads(line) for line in _text(name).splitlines() if line.strip())


@functools.lru_cache(maxsize=None)
def read_csv(name: str) -> tuple[dict, ...]:
    """Rows of a shipped CSV file, every field kept as a string (so leading zeros survive)."""
    return tuple(csv.DictReader(io.StringIO(_text(name))))


@functools.lru_cache(maxsize=None)
def read_indices(name: str) -> tuple[int, ...]:
    """The `indices` list of a shipped `*_subsample_indices.json` file."""
    return tuple(json.loads(_text(name))["indices"])
