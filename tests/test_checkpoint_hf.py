"""checkpoint/hf.py: HF safetensors → params and back, exactly, for every family; dtype names."""
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from dllm_rl.checkpoint import CheckpointError, load_hf, to_hf_tensors
from dllm_rl.checkpoint.hf import hf_names
from dllm_rl.models.llada_moe import LLaDAMoEConfig
from tests.helpers import family_goldens as fg
from tests.helpers.llada_numpy import write_hf_dir


def test_hf_round_trip_is_exact(tiny_dir):
    config, params = load_hf(tiny_dir)
    original = load_file(str(tiny_dir / "model.safetensors"))
    back = to_hf_tensors(config, params)
    assert sorted(back) == sorted(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(back[name], tensor, err_msg=name)


def test_load_hf_unknown_dtype(tiny_dir):
    with pytest.raises(CheckpointError, match="unknown dtype"):
        load_hf(tiny_dir, dtype="int4")


@pytest.mark.parametrize("family", ["dream", "a2d_qwen3", "llada_moe"])
def test_family_round_trip_is_exact(family):
    """Each family's own names: every tensor is read (a tied head from the embedding) and written back exactly."""
    folder = fg.FAMILIES_DIR / family
    config, params = load_hf(folder)
    original = load_file(str(folder / "model.safetensors"))
    assert hf_names(config).keys() == original.keys()
    back = to_hf_tensors(config, params)
    assert sorted(back) == sorted(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(back[name], tensor, err_msg=name)


def test_sharded_bfloat16_family_folder(tmp_path):
    """LLaDA-MoE's tensors as bf16 in two shards with an index: loaded in bf16 exactly, or widened to float32."""
    folder = fg.FAMILIES_DIR / "llada_moe"
    tensors = {n: t.astype(ml_dtypes.bfloat16) for n, t in load_file(str(folder / "model.safetensors")).items()}
    shard_of = {n: "model-00001-of-00002.safetensors" if ".layers.1." not in n else "model-00002-of-00002.safetensors"
                for n in tensors}
    write_hf_dir(tmp_path, json.loads((folder / "config.json").read_text()), tensors, shard_of)
    config, bf16 = load_hf(tmp_path, dtype="bfloat16")
    _, f32 = load_hf(tmp_path, dtype="float32")
    assert bf16["layers"]["expert_ff_out"].dtype == jnp.bfloat16
    for name, tensor in to_hf_tensors(config, bf16).items():
        np.testing.assert_array_equal(tensor, tensors[name], err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.astype(jnp.float32), b), bf16, f32)


def test_tied_head_copy_is_ignored(tmp_path):
    folder = fg.FAMILIES_DIR / "a2d_qwen3"
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    write_hf_dir(tmp_path, json.loads((folder / "config.json").read_text()), tensors)
    config, params = load_hf(tmp_path)
    assert config.tie_embeddings and "lm_head" not in params


def test_mixed_dense_and_moe_layers_load_into_their_stacks(tmp_path):
    raw = dict(json.loads((fg.FAMILIES_DIR / "llada_moe" / "config.json").read_text()), num_hidden_layers=3,
               moe_layer_freq=[1, 0, 1])
    rng = np.random.default_rng(0)
    tensors = {name: rng.normal(size=shape).astype(np.float32) for name, shape in
               hf_names(LLaDAMoEConfig.from_hf_config(raw)).items()}
    assert "model.layers.1.mlp.gate_proj.weight" in tensors and "model.layers.1.mlp.gate.weight" not in tensors
    write_hf_dir(tmp_path, raw, tensors)
    config, params = load_hf(tmp_path)
    np.testing.assert_array_equal(params["dense_ffn"]["ff_proj"][0], tensors["model.layers.1.mlp.gate_proj.weight"].T)
    np.testing.assert_array_equal(params["moe_ffn"]["expert_ff_out"][1, 3],
                                  tensors["model.layers.2.mlp.experts.3.down_proj.weight"].T)
    back = to_hf_tensors(config, params)
    assert back.keys() == tensors.keys()
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(back[name], tensor, err_msg=name)


def test_family_checkpoint_missing_a_tensor(tmp_path):
    folder = fg.FAMILIES_DIR / "dream"
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    write_hf_dir(tmp_path, json.loads((folder / "config.json").read_text()), tensors)
    with pytest.raises(CheckpointError, match="missing tensors.*k_proj.bias"):
        load_hf(tmp_path)
