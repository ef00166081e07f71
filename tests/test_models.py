"""models/__init__.py: the family chosen from config.json, one API for every family."""
import json

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
    assert len(gins) == 4 and all((root / "experiments/configs" / g).exists() for g in gins)
