"""Training metrics: one JSON object per line in `metrics.jsonl`, the same scalars to TensorBoard (plots: `dllm_rl.plots`)
and, optionally, to Weights & Biases (`WandbOptions`).

In a multi-host run only process 0's writer is `active`; the others' writes only return the row. The workdir may be
local or gs:// (etils `epath`); object stores cannot append, so there the (small) file is rewritten per row.
On resume, `MetricsWriter(workdir, resume_step=k)` drops rows logged after step k (they belong to the run that
was interrupted and will be logged again), so the file always reads as one uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import tempfile
from typing import Any, Mapping

import numpy as np

from dllm_rl import paths

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"  # W/wandb_run_id: a resumed run logs on into the same W&B run


@dataclasses.dataclass(frozen=True)
class WandbOptions:
    """Also log every row to Weights & Biases (`pip install 'dllm_rl[wandb]'`). `WANDB_MODE=offline` keeps the run
    on disk (under W/wandb, or a temporary folder for a gs:// workdir) for a later `wandb sync`."""

    project: str
    name: str | None = None
    entity: str | None = None


def _to_python(value: Any) -> Any:
    """numpy/jax scalars → plain floats/ints so every row is valid JSON (NaN/inf become null)."""
    if hasattr(value, "item") and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """All rows of `workdir/metrics.jsonl` (an empty list when there is none); a torn last line is skipped."""
    path = paths.absolute(workdir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill: everything after it is dropped too
    return rows


class MetricsWriter:
    """Appends metric rows to JSONL and TensorBoard; keeps the JSONL consistent across resumes."""

    def __init__(self, workdir: str | os.PathLike, resume_step: int | None = None, tensorboard: bool = True,
                 active: bool = True, wandb: WandbOptions | None = None, config: Mapping[str, Any] | None = None):
        self.active = active
        self._wandb = None
        if not active:
            return
        self.workdir = os.fspath(workdir)
        self.path = paths.absolute(self.workdir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.workdir) if resume_step is not None and r.get("step", 0) <= resume_step]
        self._lines = [json.dumps(r) + "\n" for r in kept]
        paths.replace_bytes(self.path, "".join(self._lines).encode())
        self._file = None if paths.is_remote(self.path) else open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"), purge_step=resume_step)
        if wandb is not None:
            self._wandb = _start_wandb(self.workdir, wandb, config)

    def write(self, step: int, scalars: Mapping[str, Any]) -> dict:
        row = {"step": int(step)}
        row.update({k: _to_python(v) for k, v in scalars.items()})
        if not self.active:
            return row
        if self._file is None:
            self._lines.append(json.dumps(row) + "\n")
            paths.replace_bytes(self.path, "".join(self._lines).encode())
        else:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=row["step"])
        return row

    def close(self) -> None:
        if not self.active:
            return
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _start_wandb(workdir: str, options: WandbOptions, config: Mapping[str, Any] | None):
    """A W&B run for this workdir: its id is kept in W/wandb_run_id so a resumed run continues the same W&B run
    (W&B ignores rows for steps it already has, so the rows an interrupted run logged past its last checkpoint
    stay as first logged there; metrics.jsonl is the exact record)."""
    try:
        import wandb
    except ImportError:
        raise ImportError("W&B logging needs the wandb package: pip install 'dllm_rl[wandb]'") from None
    id_path = paths.absolute(workdir) / WANDB_ID_FILE
    run_id = id_path.read_text().strip() if id_path.exists() else secrets.token_hex(6)
    if not id_path.exists():
        paths.replace_bytes(id_path, run_id.encode())
    local_dir = tempfile.mkdtemp(prefix="dllm_rl_wandb_") if paths.is_remote(workdir) else workdir
    return wandb.init(project=options.project, entity=options.entity, name=options.name, id=run_id, resume="allow",
                      dir=local_dir, config=dict(config or {}))
