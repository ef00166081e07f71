"""A2D-Qwen3: golden parity with its own HF code, per-head q/k norm, explicit head_dim, tied head, config parsing."""
import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl import models
from dllm_rl.models import a2d_qwen3
from tests.helpers import family_goldens as fg


@pytest.fixture(scope="module")
def loaded():
    return fg.load("a2d_qwen3")


def test_golden_logits(loaded):
    config, params, golden = loaded
    assert isinstance(config, a2d_qwen3.A2DQwen3Config)
    # head_dim 32 is explicit (d_model 64 / 4 heads would be 16); the head is tied and stored once.
    assert (config.head_dim, config.tie_embeddings, config.logit_shift) == (32, True, False)
    assert "lm_head" not in params
    fg.assert_matches(fg.aligned_logits(config, params, golden), golden)
    np.testing.assert_array_equal(golden["logits"], golden["logits_raw"])  # same-position logits


def test_golden_fails_without_qk_norm(loaded):
    config, params, golden = loaded
    assert fg.max_error(dataclasses.replace(config, qk_norm=False), params, golden) > 0.1


def test_tied_head_is_the_embedding(loaded):
    config, params, golden = loaded
    h = models.hidden_states(config, params, jnp.asarray(golden["input_ids"][1:]))
    np.testing.assert_array_equal(models.lm_head(config, params, h), h @ params["embed"].T)


def _raw():
    return json.loads((fg.FAMILIES_DIR / "a2d_qwen3" / "config.json").read_text())


def test_config_round_trip_and_rejections():
    config = models.config_from_hf(_raw())
    assert a2d_qwen3.A2DQwen3Config.from_hf_config(config.to_hf_dict()) == config
    raw = _raw()
    del raw["mask_token_id"]
    with pytest.raises(models.ConfigError, match="mask_token_id"):
        a2d_qwen3.A2DQwen3Config.from_hf_config(raw)
    with pytest.raises(models.ConfigError, match="attention_bias"):
        a2d_qwen3.A2DQwen3Config.from_hf_config(dict(_raw(), attention_bias=True))
    with pytest.raises(models.ConfigError, match="layer_types"):
        a2d_qwen3.A2DQwen3Config.from_hf_config(dict(_raw(), layer_types=["full_attention", "sliding_attention"]))
