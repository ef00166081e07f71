"""One model loader for training, evaluation and benchmarks: (config, params) from exactly one source.

Sources: an Orbax model folder (`dllm_rl.convert` or a trainer's `final_model`), an HF folder (safetensors), or a
`config.json` to initialise randomly (tests and the demo). With `shardings_fn(config)`, params are placed straight
onto those shardings as they are read.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

from dllm_rl.checkpoint.hf import CheckpointError, load_hf
from dllm_rl.checkpoint.orbax import load_orbax
from dllm_rl import models

INIT_SEED = 0  # random initialisation from a config.json always uses this key


def load_model(*, ckpt_dir: str | os.PathLike | None = None, hf_dir: str | os.PathLike | None = None,
               init_config: str | os.PathLike | None = None, dtype: Any = None,
               shardings_fn: Callable[[models.DecoderConfig], Any] | None = None) -> tuple[models.DecoderConfig, Any]:
    """(config, params) from exactly one of `ckpt_dir`, `hf_dir`, `init_config`.

    dtype: the params dtype; None keeps an Orbax folder's saved dtype and means float32 for the other sources.
    """
    given = [name for name, value in (("ckpt_dir", ckpt_dir), ("hf_dir", hf_dir), ("init_config", init_config))
             if value]
    if len(given) != 1:
        raise CheckpointError(f"load_model needs exactly one of ckpt_dir, hf_dir, init_config; got {given or 'none'}")
    if ckpt_dir:
        config = models.config_from_hf(ckpt_dir)
        return load_orbax(ckpt_dir, dtype=dtype, shardings=shardings_fn(config) if shardings_fn else None)
    if hf_dir:
        config = models.config_from_hf(hf_dir)
        return load_hf(hf_dir, dtype=dtype or "float32", shardings=shardings_fn(config) if shardings_fn else None)
    config = models.config_from_hf(init_config)
    params = models.init_params(config, jax.random.PRNGKey(INIT_SEED), dtype=jnp.dtype(dtype or "float32"))
    if shardings_fn is not None:
        params = jax.device_put(params, shardings_fn(config))
    return config, params
