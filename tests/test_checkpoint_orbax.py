"""checkpoint/orbax.py: model-folder and manager-layout round trips, and load errors."""
import shutil

import jax
import numpy as np
import pytest

from dllm_rl.checkpoint import CheckpointError, load_hf, load_orbax
from dllm_rl.checkpoint.orbax import abstract_params, restore_params, save_orbax, save_params
from dllm_rl.models import llada


def test_load_orbax_errors(tmp_path, tiny_dir):
    with pytest.raises((CheckpointError, llada.ConfigError)):
        load_orbax(tmp_path / "nothing")
    (tmp_path / "c").mkdir()
    shutil.copy(tiny_dir / "config.json", tmp_path / "c" / "config.json")
    with pytest.raises(CheckpointError, match="convert"):
        load_orbax(tmp_path / "c")


def test_in_memory_save_and_manager_layout_round_trip(tiny_dir, tmp_path):
    """save_orbax (streamed items) and save_params (one CheckpointManager save) restore identically."""
    config, params = load_hf(tiny_dir)
    save_orbax(tmp_path / "m", config, params)
    _, restored = load_orbax(tmp_path / "m")
    save_params(tmp_path / "p", params, step=3)
    restored_mgr = restore_params(tmp_path / "p", abstract_params(config, "float32"))
    for tree in (restored, restored_mgr):
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
