"""`checkpoint.load_model`: one loader for the trainer, evaluation and benchmarks, from any of its sources."""
import jax
import numpy as np
import pytest

from dllm_rl.checkpoint import CheckpointError, load_hf, load_model
from dllm_rl.convert import convert
from dllm_rl.models import llada


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_hf_and_orbax_sources_give_the_same_params(tiny_dir, tmp_path):
    convert(str(tiny_dir), str(tmp_path / "orbax"), "bfloat16", progress=False)
    config, from_hf = load_model(hf_dir=tiny_dir, dtype="bfloat16")
    config_b, from_orbax = load_model(ckpt_dir=tmp_path / "orbax")  # the saved dtype by default
    assert config == config_b
    _assert_same(from_hf, from_orbax)
    _assert_same(load_hf(tiny_dir)[1], load_model(hf_dir=tiny_dir)[1])  # float32 by default


def test_init_config_initialises_onto_the_shardings(tiny_dir):
    placed = []

    def shardings_fn(config):
        placed.append(config)
        single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.tree.map(lambda _: single, llada.param_shapes(config), is_leaf=lambda s: isinstance(s, tuple))

    config, params = load_model(init_config=tiny_dir / "config.json", dtype="bfloat16", shardings_fn=shardings_fn)
    assert placed == [config] and params["embed"].dtype == "bfloat16"
    _assert_same(params, load_model(init_config=tiny_dir / "config.json", dtype="bfloat16")[1])  # one fixed key


def test_exactly_one_source():
    with pytest.raises(CheckpointError, match="exactly one"):
        load_model()
    with pytest.raises(CheckpointError, match=r"got \['ckpt_dir', 'hf_dir'\]"):
        load_model(ckpt_dir="a", hf_dir="b")
