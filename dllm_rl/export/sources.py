"""Where exported weights come from, read one params leaf at a time onto the host.

- an Orbax model folder (`dllm_rl.convert` output, or the trainer's `W/final_model`): `config.json` + `params/<step>/`
  with one Orbax item per leaf, so each leaf is restored on its own;
- a trainer checkpoint (`W/checkpoints/<step>/state`): the trainable tree (LoRA adapters, or all params for full
  fine-tuning) and, after an SFT warm start, the warm-started base; sub-trees are restored partially.
A `LeafReader` maps a params path such as ("layers", "q_proj") to a host numpy array.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from dllm_rl import paths
from dllm_rl.checkpoint.hf import CheckpointError, get_path, set_path
from dllm_rl.checkpoint.orbax import PARAMS_DIR
from dllm_rl.models import DecoderConfig, config_from_hf

LeafReader = Callable[[tuple[str, ...]], np.ndarray]
CHECKPOINT_DIR, STATE_ITEM = "checkpoints", "state"  # the trainer's W/checkpoints/<step>/state


def tree_reader(params: Any) -> LeafReader:
    """Reader over an in-memory params tree (jax or numpy leaves); each leaf is copied to host when read."""
    return lambda path: np.asarray(get_path(params, path))


def _latest_step(directory: str, what: str) -> int:
    folder = paths.absolute(directory)
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    if not steps:
        raise CheckpointError(f"{directory}: holds no finished checkpoint step; {what}")
    return max(steps)


@contextlib.contextmanager
def _quiet():
    """Orbax warns (warnings + absl log) that a bare item has no step metadata file; expected here."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        absl_logger.setLevel(level)


def _restore(item_dir: str, target: Any) -> Any:
    """Restores the sub-tree `target` (ShapeDtypeStruct leaves) of the Orbax PyTree at `item_dir` as numpy."""
    restore_args = jax.tree.map(lambda s: ocp.RestoreArgs(restore_type=np.ndarray, dtype=s.dtype), target)
    with _quiet(), ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                                          partial_restore=True))


def _metadata(item_dir: str) -> Any:
    with _quiet(), ocp.PyTreeCheckpointer() as checkpointer:
        try:
            return checkpointer.metadata(item_dir).item_metadata
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(f"{item_dir}: not a readable Orbax checkpoint item ({e})") from None


def _abstract(metadata: Any) -> Any:
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype)), metadata)


def read_model_dir(model_dir: str) -> tuple[DecoderConfig, dict, LeafReader]:
    """(config of the model's family, raw config.json, leaf reader) of an Orbax model folder."""
    params_dir = os.path.join(model_dir, PARAMS_DIR)
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{model_dir}: not an Orbax model folder (no {PARAMS_DIR}/); pass the output of "
                              "`python -m dllm_rl.convert` (convert an HF folder first) or the trainer's final_model")
    config = config_from_hf(model_dir)
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        raw_config = json.load(f)
    step_dir = os.path.join(params_dir, str(_latest_step(
        params_dir, "pass a model folder written by `python -m dllm_rl.convert` or the trainer's final_model")))

    def read(path: tuple[str, ...]) -> np.ndarray:
        item_dir = os.path.join(step_dir, ".".join(path))
        if not os.path.isdir(item_dir):
            raise CheckpointError(f"{item_dir}: missing parameter item; the folder was not written by dllm_rl")
        return _restore(item_dir, _abstract(_metadata(item_dir)))["value"]

    return config, raw_config, read


def trainer_state_dir(path: str, step: int | None = None) -> str:
    """The `state` item of a trainer checkpoint, given the workdir, its checkpoints/ folder or one step folder
    (local or gs://)."""
    for candidate in (paths.absolute(path), paths.absolute(path) / CHECKPOINT_DIR):
        if (candidate / STATE_ITEM).is_dir():
            if step is not None:
                raise CheckpointError(f"{path}: is one step's folder already; drop --step or pass the workdir")
            return os.fspath(candidate / STATE_ITEM)
        present = sorted(int(p.name) for p in candidate.iterdir() if p.name.isdigit()) if candidate.is_dir() else []
        if present:
            chosen = max(present) if step is None else step
            state = candidate / str(chosen) / STATE_ITEM
            if not state.is_dir():
                raise CheckpointError(f"{state}: no such checkpoint; steps present: {present}")
            return os.fspath(state)
    raise CheckpointError(f"{path}: not a trainer workdir, checkpoints/ folder or step folder (no "
                          f"{CHECKPOINT_DIR}/<step>/{STATE_ITEM}); pass --lora_dir W or W/{CHECKPOINT_DIR}")


class TrainerCheckpoint:
    """The trainable tree (restored whole; adapters are small) and lazy access to the saved base, if any."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.metadata = _metadata(state_dir)
        if "trainable" not in self.metadata:
            raise CheckpointError(f"{state_dir}: no 'trainable' entry; not a dllm_rl trainer checkpoint")
        self.is_lora = "embed" not in self.metadata["trainable"]
        self.has_base = "base" in self.metadata

    def adapters(self) -> dict:
        if not self.is_lora:
            raise CheckpointError(f"{self.state_dir}: holds fully fine-tuned params, not LoRA adapters; "
                                  "export it with --format hf")
        return _restore(self.state_dir, {"trainable": _abstract(self.metadata["trainable"])})["trainable"]

    def reader(self, key: str) -> LeafReader:
        """Leaf reader of the saved 'base' or (full fine-tuning) 'trainable' params."""
        def read(path: tuple[str, ...]) -> np.ndarray:
            target: dict = {}
            set_path(target, (key, *path), _abstract(get_path(self.metadata, (key, *path))))
            return get_path(_restore(self.state_dir, target), (key, *path))
        return read
