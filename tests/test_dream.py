"""Dream: golden parity with its own HF code (aligned logits), the shift, biases, positions, config parsing."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl import models
from dllm_rl.models import dream
from tests.helpers import family_goldens as fg


@pytest.fixture(scope="module")
def loaded():
    return fg.load("dream")


def test_golden_aligned_logits(loaded):
    config, params, golden = loaded
    assert isinstance(config, dream.DreamConfig) and config.logit_shift and config.qkv_bias
    fg.assert_matches(fg.aligned_logits(config, params, golden), golden)


def test_own_logits_are_the_unshifted_reference_output(loaded):
    """`lm_head(hidden_states)` is the model's own output: HF's `logits_raw` at every real token."""
    config, params, golden = loaded
    ids, mask = jnp.asarray(golden["input_ids"]), jnp.asarray(golden["attention_mask"])
    raw = models.lm_head(config, params, models.hidden_states(config, params, ids, mask))
    real = golden["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(raw)[real], golden["logits_raw"][real], rtol=fg.RTOL, atol=fg.ATOL)


def test_forward_at_reads_the_shifted_position(loaded):
    config, params, golden = loaded
    ids, mask = jnp.asarray(golden["input_ids"]), jnp.asarray(golden["attention_mask"])
    pos = jnp.asarray([[6, 10, 19], [0, 1, 10], [5, 12, 19]])  # valid positions (row 0 is padded up to 5)
    want = np.take_along_axis(golden["logits"], np.asarray(pos)[..., None], axis=1)
    np.testing.assert_allclose(models.forward_at(config, params, ids, pos, mask), want, rtol=fg.RTOL, atol=fg.ATOL)


@pytest.mark.parametrize("switch", ["logit_shift", "qkv_bias"])
def test_golden_fails_without_the_switch(loaded, switch):
    config, params, golden = loaded
    assert fg.max_error(dataclasses.replace(config, **{switch: False}), params, golden) > 0.1


def test_padding_skipping_positions_ignore_where_the_padding_is(loaded):
    """Dream's positions (cumsum(mask) - 1) make a row with padding in the middle equal the row without it; plain
    0..T-1 positions do not (under left padding both agree: RoPE is relative)."""
    config, params, golden = loaded
    row = golden["input_ids"][1, :12]
    holed = np.concatenate([row[:4], [config.pad_token_id] * 3, row[4:]])[None]
    mask = np.ones_like(holed)
    mask[0, 4:7] = 0
    keep = mask[0].astype(bool)
    compact = np.asarray(models.forward(config, params, jnp.asarray(row[None])))
    holed_out = np.asarray(models.forward(config, params, jnp.asarray(holed), jnp.asarray(mask)))[:, keep]
    # Aligned logits at a token right after the hole are read from a pad row: compare the others.
    keep_aligned = np.ones(len(row), bool)
    keep_aligned[4] = False
    np.testing.assert_allclose(holed_out[:, keep_aligned], compact[:, keep_aligned], rtol=1e-5, atol=1e-5)
    plain = dataclasses.replace(config, positions_skip_padding=False)
    plain_out = np.asarray(models.forward(plain, params, jnp.asarray(holed), jnp.asarray(mask)))[:, keep]
    assert np.max(np.abs(plain_out[:, keep_aligned] - compact[:, keep_aligned])) > 1e-2


DREAM_7B = {  # Dream-v0-Instruct-7B's config.json values as assumed here (Qwen2.5-7B sizes, Dream's token ids)
    "model_type": "Dream", "architectures": ["DreamModel"], "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "tie_word_embeddings": False, "use_sliding_window": False, "mask_token_id": 151666, "pad_token_id": 151643,
    "eos_token_id": 151643, "bos_token_id": 151643,
}


def test_7b_config_parses_to_7b_shapes():
    config = dream.DreamConfig.from_hf_config(DREAM_7B)
    assert (config.head_dim, config.n_kv_heads, config.mask_token_id) == (128, 4, 151666)
    shapes = models.param_shapes(config)
    assert shapes["layers"]["q_bias"] == (28, 3584) and shapes["layers"]["k_proj"] == (28, 3584, 512)
    assert shapes["lm_head"] == (3584, 152064)
    assert 7.0e9 < config.num_params < 8.0e9


def test_config_round_trip_and_rejections():
    config = dream.DreamConfig.from_hf_config(DREAM_7B)
    assert dream.DreamConfig.from_hf_config(config.to_hf_dict()) == config
    assert models.config_from_hf(config.to_hf_dict()) == config
    with pytest.raises(models.ConfigError, match="use_sliding_window"):
        dream.DreamConfig.from_hf_config(dict(DREAM_7B, use_sliding_window=True))
    with pytest.raises(models.ConfigError, match="missing key"):
        dream.DreamConfig.from_hf_config({"model_type": "Dream"})
