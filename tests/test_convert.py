"""dllm_rl/convert.py: HF folder → Orbax model folder (CLI and function), side files, the real 8B layout, and
bad input failing with one clear error and nothing written."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from dllm_rl import convert as convert_cli
from dllm_rl.assets import LLADA_8B_META_DIR
from dllm_rl.checkpoint import CheckpointError, load_orbax, save_orbax, to_hf_tensors
from dllm_rl.models import llada
from tests.helpers import family_goldens as fg
from tests.helpers.llada_numpy import random_tensors, tiny_config, write_hf_dir

BF16 = np.dtype(ml_dtypes.bfloat16)


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("which", ["tiny_dir", "tiny_gqa_dir"])
def test_convert_then_load_orbax_matches_golden(which, request, tmp_path):
    src = request.getfixturevalue(which)
    out = tmp_path / "orbax"
    assert convert_cli.main(["--hf_dir", str(src), "--out_dir", str(out), "--dtype", "float32"]) == 0
    config, params = load_orbax(out)
    golden = np.load(src / "golden.npz")
    assert _rel(llada.forward(config, params, jnp.asarray(golden["input_ids"])), golden["logits"]) < 1e-4
    assert json.loads((out / "config.json").read_text())["n_kv_heads"] == config.n_kv_heads
    assert [p.name for p in tmp_path.iterdir()] == ["orbax"]  # no temporary directory left behind


@pytest.mark.parametrize("family", ["dream", "a2d_qwen3", "llada_moe"])
def test_convert_a_family_folder_then_load_orbax_matches_golden(family, tmp_path):
    """Other families convert with their own config.json and names, and restore to their own config class; a
    model folder written from the config (`save_orbax`) reads back the same."""
    src = fg.FAMILIES_DIR / family
    config = convert_cli.convert(str(src), str(tmp_path / "o"), "float32", progress=False)
    loaded, params = load_orbax(tmp_path / "o")
    assert loaded == config and loaded.family == family
    golden = dict(np.load(src / "golden.npz"))
    fg.assert_matches(fg.aligned_logits(loaded, params, golden), golden)
    save_orbax(tmp_path / "again", loaded, params)
    again, params_again = load_orbax(tmp_path / "again")
    assert again == loaded
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_bfloat16_conversion_and_dtype_on_restore(tiny_dir, tmp_path):
    convert_cli.convert(str(tiny_dir), str(tmp_path / "o"), "bfloat16", progress=False)
    _, params = load_orbax(tmp_path / "o")
    assert params["layers"]["q_proj"].dtype == jnp.bfloat16
    _, params32 = load_orbax(tmp_path / "o", dtype="float32")
    embed = load_file(str(tiny_dir / "model.safetensors"))["model.transformer.wte.weight"]
    np.testing.assert_array_equal(np.asarray(params32["embed"]), embed.astype(BF16).astype(np.float32))


def test_side_files_are_copied(tiny_dir, tiny_tokenizer_dir, tmp_path):
    src = tmp_path / "hf"
    shutil.copytree(tiny_dir, src, ignore=shutil.ignore_patterns("gqa", "golden.npz"))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer_dir / f, src / f)
    convert_cli.convert(str(src), str(tmp_path / "out"), "float32", progress=False)
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "params"} <= set(os.listdir(tmp_path / "out"))


def _real_layout_checkpoint(path):
    """The real 8B config/index (291 names, 6 shards) at reduced widths, 32 layers."""
    real = json.loads((LLADA_8B_META_DIR / "config.json").read_text())
    cfg = dict(real, d_model=16, n_heads=2, n_kv_heads=2, mlp_hidden_size=24, vocab_size=40, embedding_size=40,
               mask_token_id=36, eos_token_id=33, pad_token_id=33)
    index = json.loads((LLADA_8B_META_DIR / "model.safetensors.index.json").read_text())
    tensors = random_tensors(cfg, np.random.default_rng(0))
    tensors = {n: t.astype(np.float32) for n, t in tensors.items()}
    write_hf_dir(path, cfg, tensors, shard_of=index["weight_map"])
    return cfg, tensors, index


def test_real_8b_layout_converts_and_loads(tmp_path):
    cfg, tensors, index = _real_layout_checkpoint(tmp_path / "hf")
    assert len(index["weight_map"]) == 291 and len(set(index["weight_map"].values())) == 6
    assert sorted(tensors) == sorted(index["weight_map"])
    convert_cli.convert(str(tmp_path / "hf"), str(tmp_path / "out"), "bfloat16", progress=False)
    config, params = load_orbax(tmp_path / "out")
    assert config.n_layers == 32 and params["layers"]["ff_out"].shape == (32, 24, 16)
    back = to_hf_tensors(config, params)
    for name, tensor in tensors.items():  # bit-equal to the bf16 cast (round to nearest even) of the source
        assert back[name].dtype == BF16 and back[name].tobytes() == tensor.astype(BF16).tobytes(), name


# ---- bad input: one clear error naming the file/tensor, nothing written ----

def _copy_tiny(tiny_dir, dst):
    shutil.copytree(tiny_dir, dst, ignore=shutil.ignore_patterns("gqa", "golden.npz"))
    return dst


def _assert_fails_cleanly(src, tmp_path, match, dtype="float32"):
    out = tmp_path / "out"
    with pytest.raises((CheckpointError, llada.ConfigError), match=match):
        convert_cli.convert(str(src), str(out), dtype, progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "temporary directory left behind"


def test_truncated_safetensors(tiny_dir, tmp_path):
    src = _copy_tiny(tiny_dir, tmp_path / "hf")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    _assert_fails_cleanly(src, tmp_path, "model.safetensors")


def test_missing_tensor(tiny_dir, tmp_path):
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    del tensors["model.transformer.blocks.1.up_proj.weight"]
    write_hf_dir(tmp_path / "hf", tiny_config(), tensors)
    _assert_fails_cleanly(tmp_path / "hf", tmp_path, r"missing tensors \['model.transformer.blocks.1.up_proj")


def test_unexpected_tensor(tiny_dir, tmp_path):
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    tensors["model.transformer.wpe.weight"] = np.zeros((4, 64), np.float32)
    write_hf_dir(tmp_path / "hf", tiny_config(), tensors)
    _assert_fails_cleanly(tmp_path / "hf", tmp_path, "unexpected tensors.*wpe")


def test_wrong_shape(tiny_dir, tmp_path):
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    tensors["model.transformer.blocks.0.k_proj.weight"] = np.zeros((32, 64), np.float32)
    write_hf_dir(tmp_path / "hf", tiny_config(), tensors)
    _assert_fails_cleanly(tmp_path / "hf", tmp_path, r"blocks.0.k_proj.weight has shape \[32, 64\]")


def test_config_key_mismatch(tiny_dir, tmp_path):
    write_hf_dir(tmp_path / "hf", tiny_config(mlp_hidden_size=96), load_file(str(tiny_dir / "model.safetensors")))
    _assert_fails_cleanly(tmp_path / "hf", tmp_path, "ff_proj.weight has shape")
    write_hf_dir(tmp_path / "hf2", tiny_config(alibi=True), load_file(str(tiny_dir / "model.safetensors")))
    _assert_fails_cleanly(tmp_path / "hf2", tmp_path, "alibi")


def test_unknown_dtype(tiny_dir, tmp_path):
    _assert_fails_cleanly(tiny_dir, tmp_path, "unknown dtype 'float8'", dtype="float8")


def test_missing_shard_and_folder(tmp_path):
    _assert_fails_cleanly(tmp_path / "nowhere", tmp_path, "config.json")
    src = tmp_path / "hf"
    _real_layout_checkpoint(src)
    os.remove(src / "model-00003-of-00006.safetensors")
    _assert_fails_cleanly(src, tmp_path, "model-00003-of-00006.safetensors")


def test_existing_out_dir_is_kept(tiny_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="already exists"):
        convert_cli.convert(str(tiny_dir), str(out), "float32", progress=False)
    assert (out / "keep.txt").exists()
    assert convert_cli.main(["--hf_dir", str(tiny_dir), "--out_dir", str(out)]) == 2
