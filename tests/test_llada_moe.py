"""LLaDA-MoE: golden parity with its own HF code, q/k norm, routing as the reference does it, config parsing."""
import dataclasses
import json

import pytest

from dllm_rl import models
from dllm_rl.models import llada_moe
from tests.helpers import family_goldens as fg


@pytest.fixture(scope="module")
def loaded():
    return fg.load("llada_moe")


def test_golden_logits(loaded):
    config, params, golden = loaded
    assert isinstance(config, llada_moe.LLaDAMoEConfig)
    assert config.moe.layers == (True, True) and config.moe.shared_expert_hidden_size == 48
    assert params["layers"]["expert_ff_proj"].shape == (2, 8, 64, 32)
    fg.assert_matches(fg.aligned_logits(config, params, golden), golden)


@pytest.mark.parametrize("change", ["no_qk_norm", "norm_topk_prob", "top_1", "no_shared_expert"])
def test_golden_fails_when_a_feature_is_changed(loaded, change):
    config, params, golden = loaded
    moe = config.moe
    changed = {
        "no_qk_norm": dataclasses.replace(config, qk_norm=False),
        "norm_topk_prob": dataclasses.replace(config, moe=dataclasses.replace(moe, norm_topk_prob=True)),
        "top_1": dataclasses.replace(config, moe=dataclasses.replace(moe, n_experts_per_tok=1)),
        "no_shared_expert": dataclasses.replace(config, moe=dataclasses.replace(moe, shared_expert_hidden_size=0)),
    }[change]
    assert fg.max_error(changed, params, golden) > 0.05


def _raw():
    return json.loads((fg.FAMILIES_DIR / "llada_moe" / "config.json").read_text())


def test_config_follows_the_reference_code():
    """norm_topk_prob is hard-coded False by the reference; moe_layer_freq picks dense layers."""
    assert llada_moe.LLaDAMoEConfig.from_hf_config(dict(_raw(), norm_topk_prob=True)).moe.norm_topk_prob is False
    mixed = llada_moe.LLaDAMoEConfig.from_hf_config(dict(_raw(), moe_layer_freq=[0, 1]))
    assert mixed.moe.layers == (False, True) and mixed.mlp_hidden_size == 128
    config = models.config_from_hf(_raw())
    assert llada_moe.LLaDAMoEConfig.from_hf_config(config.to_hf_dict()) == config


@pytest.mark.parametrize("key, value, needle", [
    ("moe_layer_freq", [1], "moe_layer_freq"),
    ("moe_layer_freq", [1, 2], "moe_layer_freq"),
    ("moe_router_enable_expert_bias", True, "expert biases"),
    ("moe_router_score_function", "sigmoid", "softmax"),
    ("clip_qkv", 8.0, "clip"),
    ("partial_rotary_factor", 0.5, "partial rotary"),
    ("num_experts_per_tok", 9, "n_experts_per_tok"),
])
def test_unsupported_config_is_rejected(key, value, needle):
    with pytest.raises(models.ConfigError, match=needle):
        llada_moe.LLaDAMoEConfig.from_hf_config(dict(_raw(), **{key: value}))


def test_dense_layers_need_a_dense_width():
    raw = dict(_raw(), moe_layer_freq=[0, 1])
    del raw["dense_intermediate_size"]
    with pytest.raises(models.ConfigError, match="dense_intermediate_size"):
        llada_moe.LLaDAMoEConfig.from_hf_config(raw)
