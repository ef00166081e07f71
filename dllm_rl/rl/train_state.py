"""Orbax checkpoints of the training state: trainable params, optimizer state, the data iterator's state and,
when the run still uses it, the SFT-warm-started base. One step per saved checkpoint; restoring onto the
shardings of the live state makes a resumed run continue exactly where it stopped."""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from dllm_rl import paths

CHECKPOINT_DIR = "checkpoints"  # under the run's workdir


def checkpoint_manager(directory: str | os.PathLike, keep: int) -> ocp.CheckpointManager:
    """A synchronous manager keeping the last `keep` (at least 1) steps, in a local or gs:// `directory`. In a
    multi-host run every process calls it (and `save` / `restore`): each writes and reads its own shards."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max(keep, 1), create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(paths.absolute(directory), options=options,
                                 item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                "data": ocp.JsonCheckpointHandler()})


def _state(trainable, opt_state, base) -> dict:
    state = {"trainable": trainable, "opt_state": opt_state}
    if base is not None:
        state["base"] = base
    return state


def save(manager: ocp.CheckpointManager, step: int, trainable, opt_state, data_state: Any, base=None) -> None:
    """Writes step `step` (replacing one already there) and waits until it is on disk."""
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(trainable, opt_state, base)),
                                               data=ocp.args.JsonSave(data_state)), force=True)
    manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, step: int, trainable, opt_state, base=None):
    """(trainable, opt_state, data_state, base or None) of step `step`, on the shardings and dtypes of the given
    live state (which only serves as the target)."""
    target = _state(trainable, opt_state, base)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                             data=ocp.args.JsonRestore()))
    state = restored["state"]
    return state["trainable"], state["opt_state"], restored["data"], state.get("base")
