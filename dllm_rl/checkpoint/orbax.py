"""Orbax save/restore of LLaDA params (CheckpointManager + StandardSave/StandardRestore).

A converted model folder holds the HF `config.json` (and tokenizer files) next to an Orbax manager directory
`params/`. Restoring always goes through an abstract target (`jax.ShapeDtypeStruct` with shardings), so the same
checkpoint restores onto any mesh, in any supported dtype, with each shard read only by the devices that need it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp

from dllm_rl import paths
from dllm_rl.checkpoint.hf import CheckpointError, resolve_dtype
from dllm_rl.models import DecoderConfig, config_from_hf, param_shapes

PARAMS_DIR = "params"
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def leaf_names(tree: Any) -> list[str]:
    """Orbax item name of every leaf: its dotted path ("layers.q_proj")."""
    return [".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _manager(directory: str, names: list[str], create: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(create=create, enable_async_checkpointing=False)
    return ocp.CheckpointManager(paths.absolute(directory), options=options,
                                 item_handlers={n: ocp.StandardCheckpointHandler() for n in names})


def save_params(directory: str | os.PathLike, params: Any, step: int = 0) -> None:
    """Writes `params` (jax or numpy arrays) as Orbax step `step`, one checkpoint item per leaf."""
    names = leaf_names(params)
    with _manager(os.fspath(directory), names, create=True) as manager:
        leaves = jax.tree.leaves(params)
        manager.save(step, args=ocp.args.Composite(**{n: ocp.args.StandardSave({"value": leaf})
                                                      for n, leaf in zip(names, leaves)}))
        manager.wait_until_finished()


def save_params_streaming(directory: str | os.PathLike, leaves: Iterable[tuple[str, Any]], step: int = 0) -> None:
    """Writes (item name, array) pairs one at a time into step `step`: the same layout as `save_params`, but
    only one leaf is ever in memory (used by the converter). `directory` must be new (e.g. a temp dir)."""
    step_dir = paths.absolute(directory) / str(step)
    step_dir.mkdir(parents=True)
    with ocp.StandardCheckpointer() as checkpointer:
        for name, leaf in leaves:
            checkpointer.save(step_dir / name, {"value": leaf})
            checkpointer.wait_until_finished()


def abstract_params(config: DecoderConfig, dtype: Any, shardings: Any = None) -> Any:
    """ShapeDtypeStruct tree of the params, with shardings (default: the first device)."""
    np_dtype = resolve_dtype(dtype)
    shapes = param_shapes(config)
    if shardings is None:
        single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: single, shapes, is_leaf=lambda s: isinstance(s, tuple))
    return jax.tree.map(lambda shape, sharding: jax.ShapeDtypeStruct(shape, np_dtype, sharding=sharding),
                        shapes, shardings, is_leaf=lambda s: isinstance(s, tuple))


def restore_params(directory: str | os.PathLike, target: Any, step: int | None = None) -> Any:
    """Restores params onto the shardings/dtypes of the abstract `target`; latest step by default."""
    directory = os.fspath(directory)
    if not paths.absolute(directory).is_dir():
        raise CheckpointError(f"{directory}: no Orbax checkpoint directory; run `python -m dllm_rl.convert` first")
    names = leaf_names(target)
    with _manager(directory, names, create=False) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{directory}: holds no finished Orbax checkpoint step")
        missing = [n for n in names if not (paths.absolute(directory) / str(step) / n).is_dir()]
        if missing:
            raise CheckpointError(f"{directory}/{step}: missing parameter items {missing}; the checkpoint does not "
                                  "belong to this config or was written by another tool")
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                **{n: ocp.args.StandardRestore({"value": t}) for n, t in zip(names, jax.tree.leaves(target))}))
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{directory}: checkpoint does not match the config's parameter tree ({e})") from None
    return jax.tree.unflatten(jax.tree.structure(target), [restored[n]["value"] for n in names])


def write_model_dir(out_dir: str | os.PathLike, config_json: dict, leaves: Iterable[tuple[str, Any]]) -> None:
    """Writes a model folder from a stream of (item name, array): `config.json` (HF keys) + `params/`."""
    _write_config(out_dir, config_json)
    save_params_streaming(paths.absolute(out_dir) / PARAMS_DIR, leaves)


def _write_config(out_dir: str | os.PathLike, config_json: dict) -> None:
    out_dir = paths.absolute(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config_json, indent=2))


def copy_side_files(src_dir: str | os.PathLike, dst_dir: str | os.PathLike) -> None:
    """Copies the generation-config and tokenizer files that exist in `src_dir` into a model folder."""
    for name in SIDE_FILES:
        src = paths.absolute(src_dir) / name
        if src.exists():
            src.copy(paths.absolute(dst_dir) / name, overwrite=True)


def save_orbax(out_dir: str | os.PathLike, config: DecoderConfig | dict, params: Any) -> None:
    """Writes a model folder loadable by `load_orbax` from in-memory params (local or gs://). Not atomic by itself
    (callers write into `dllm_rl.atomic.atomic_directory`). Params spread over several processes are written by
    all of them together: every process must call it."""
    config_json = config if isinstance(config, dict) else config.to_hf_dict()
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(params)):
        write_model_dir(out_dir, config_json, zip(leaf_names(params), (np.asarray(x) for x in jax.tree.leaves(params))))
        return
    # Each process writes its own shards through one Orbax manager (the same on-disk layout).
    if jax.process_index() == 0:
        _write_config(out_dir, config_json)
    save_params(paths.absolute(out_dir) / PARAMS_DIR, params)


def load_orbax(ckpt_dir: str | os.PathLike, dtype: Any = None, shardings: Any = None) -> tuple[DecoderConfig, Any]:
    """Loads a folder written by `save_orbax`/`dllm_rl.convert` → (config, params).

    dtype: the params dtype to restore into (default: as saved). shardings: tree of Sharding (e.g.
    `parallel.mesh.param_shardings(mesh)`) to restore straight onto a mesh.
    """
    ckpt_dir = os.fspath(ckpt_dir)
    config = config_from_hf(ckpt_dir)
    params_dir = os.path.join(ckpt_dir, PARAMS_DIR)
    if dtype is None:
        dtype = _saved_dtype(params_dir)
    return config, restore_params(params_dir, abstract_params(config, dtype, shardings))


def _saved_dtype(params_dir: str) -> np.dtype:
    """The dtype the checkpoint was written in, read from the embedding item's metadata."""
    with _manager(params_dir, ["embed"], create=False) as manager:
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"{params_dir}: holds no finished Orbax checkpoint step; convert again")
        try:
            return np.dtype(manager.item_metadata(step)["embed"]["value"].dtype)
        except (KeyError, TypeError, AttributeError, FileNotFoundError) as e:
            raise CheckpointError(f"{params_dir}: no readable 'embed' item ({e}); not a dllm_rl checkpoint") from None
