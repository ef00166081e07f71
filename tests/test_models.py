"""models/__init__.py: the family chosen from config.json, one API for every family."""
import json
import pathlib

import pytest

from dllm_rl import models
from dllm_rl.assets import LLADA_8B_META_DIR
from tests.helpers import family_goldens as fg


@pytest.mark.parametrize("family, cls", [("dream", models.DreamConfig), ("a2d_qwen3", models.A2DQwen3Config),
                                         ("llada_moe", models.LLaDAMoEConfig)])
def test_config_from_hf_picks_the_family(family, cls):
    raw = json.loads((fg.FAMILIES_DIR / family / "config.json").read_text())
    assert type(models.config_from_hf(fg.FAMILIES_DIR / family)) is cls
    assert cls.family == family and models.FAMILIES[family] is cls
    # by architectures when model_type is absent
    del raw["model_type"]
    assert type(models.config_from_hf(raw)) is cls


def test_llada_configs_with_and_without_model_type():
    assert type(models.config_from_hf(LLADA_8B_META_DIR)) is models.LLaDAConfig
    raw = json.loads((LLADA_8B_META_DIR / "config.json").read_text())
    for key in ("model_type", "architectures"):
        raw.pop(key, None)
    assert type(models.config_from_hf(raw)) is models.LLaDAConfig


def test_llada_moe_as_released_says_model_type_llada():
    """LLaDA-MoE's released config.json has model_type "llada" (its configuration_lladamoe.py's): MoE keys pick it."""
    raw = json.loads((fg.FAMILIES_DIR / "llada_moe" / "config.json").read_text())
    assert type(models.config_from_hf(dict(raw, model_type="llada"))) is models.LLaDAMoEConfig
    assert models.config_from_hf(dict(raw, model_type="llada")) == models.config_from_hf(raw)


SHAPES_DIR = pathlib.Path(__file__).parents[1] / "experiments/configs/model_shapes"


@pytest.mark.parametrize("name, cls, billions", [
    ("dream_v0_7b.json", models.DreamConfig, 7.62),  # Dream-v0-Instruct-7B's model page: 7.62B params
    ("llada_moe_7b_a1b.json", models.LLaDAMoEConfig, 7.36),  # 7.36B (model_shapes/README.md)
    ("a2d_qwen3_0.6b.json", models.A2DQwen3Config, 0.60),  # Qwen3-0.6B: 0.6B, 0.44B of them non-embedding
])
def test_released_shapes_read_as_their_family(name, cls, billions):
    """experiments/configs/model_shapes (the released configs, README there) read with the released sizes."""
    config = models.config_from_hf(SHAPES_DIR / name)
    assert type(config) is cls and round(config.num_params / 1e9, 2) == billions


def test_unknown_family_is_named():
    with pytest.raises(models.ConfigError, match="unknown model family.*'qwen2'"):
        models.config_from_hf({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]})


def test_readme_families_table_lists_every_family_and_existing_configs():
    """README's "Model families" table has a row per family here and names only configs that exist."""
    import pathlib
    import re

    root = pathlib.Path(__file__).parents[1]
    section = (root / "README.md").read_text().split("## Model families\n", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")} - {"family"}
    names = {"llada": "LLaDA", "dream": "Dream", "a2d_qwen3": "A2D-Qwen3", "llada_moe": "LLaDA-MoE"}
    assert {names[f] for f in models.FAMILIES} <= rows
    gins = re.findall(r"`(\w+\.gin)`", section)
    assert {"llada15_agrpo.gin", "dream_agrpo.gin", "a2d_qwen3_agrpo.gin", "llada_moe_agrpo.gin"} <= set(gins)
    assert all((root / "experiments/configs" / g).exists() for g in gins), gins
