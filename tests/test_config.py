"""Run configuration: model-source and training-knob validation, with messages that name the fix."""
import pytest

from dllm_rl.rl.config import ModelSource, TrainConfig, TrainError

DEMO_MODEL = "dllm_rl/assets/demo_model/config.json"


def test_model_source_needs_exactly_one_source():
    with pytest.raises(TrainError, match="exactly one of ckpt_dir, hf_dir, init_config; got none"):
        ModelSource().validate()
    with pytest.raises(TrainError, match=r"got \['ckpt_dir', 'init_config'\]"):
        ModelSource(ckpt_dir="x", init_config=DEMO_MODEL).validate()


def test_model_source_paths_resolve_from_the_package_and_default_the_tokenizer(tiny_dir):
    source = ModelSource(init_config=DEMO_MODEL, dtype="float32")
    source.validate()  # relative to the package's parent, from any working directory
    assert source.tokenizer_path.endswith("demo_model")
    with pytest.raises(TrainError, match="no tokenizer.json"):
        ModelSource(hf_dir=str(tiny_dir)).validate()  # the tiny HF fixture ships without a tokenizer


def test_model_source_loads_the_demo_model():
    config, params = ModelSource(init_config=DEMO_MODEL, dtype="float32").load()
    assert config.n_layers == 4 and params["embed"].dtype == "float32"


@pytest.mark.parametrize("field,value,message", [
    ("algorithm", "ppo", "choose one of"), ("lr_schedule", "linear", "'cosine' or 'constant'"),
    ("grad_accum", 0, "grad_accum must be ≥ 1"), ("eval_every", -1, "eval_every must be ≥ 0"),
])
def test_train_config_rejects_bad_values(field, value, message):
    with pytest.raises(TrainError, match=message):
        TrainConfig(**{field: value}).validate()


@pytest.mark.parametrize("family,lora,message", [
    ("a2d_qwen3", dict(lm_head=True), "LM head is tied.*Set LoRAConfig.lm_head=False.*a2d_qwen3"),
    ("llada_moe", dict(), "targets names 'ff_proj'.*choose LoRAConfig.targets from.*llada_moe"),
])
def test_lora_targets_are_checked_against_the_model_family_before_loading(family, lora, message):
    """A LoRAConfig that names a kernel the family lacks fails validation, from config.json alone."""
    import dataclasses

    from dllm_rl.models.lora import LoRAConfig
    from experiments.run import parse_config

    cfg = parse_config(["experiments/configs/demo.gin"], [])
    model = ModelSource(init_config=f"tests/fixtures/families/{family}/config.json",
                        tokenizer_dir="dllm_rl/assets/demo_model", dtype="float32")
    dataclasses.replace(cfg, model=model).validate()  # full fine-tuning: nothing to check
    with pytest.raises(TrainError, match=message):
        dataclasses.replace(cfg, model=model, lora=LoRAConfig(rank=4, **lora)).validate()
