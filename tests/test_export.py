"""dllm_rl.export: HF export (bit-exact round trip, 8B names, float32 merge), PEFT folders, PEFT's target matching,
trainer checkpoints and the CLI's errors."""
import json
import os

import jax
import ml_dtypes
import numpy as np
import optax
import pytest
from safetensors import safe_open

from dllm_rl.assets import LLADA_8B_META_DIR
from dllm_rl.checkpoint import CheckpointError, load_hf, save_orbax, to_hf_tensors
from dllm_rl.checkpoint.hf import hf_names
from dllm_rl.export import export_hf, export_peft, load_peft, peft_adapted, peft_target_modules
from dllm_rl.export.__main__ import main
from dllm_rl.export.peft import index_module_names, lora_module_names, module_names
from dllm_rl.export.safetensors_io import parse_size, plan_shards
from dllm_rl.models.llada import LLaDAConfig
from dllm_rl.models.lora import CONFIG_FILE as LORA_CONFIG_FILE, LAYER_TARGETS, LoRAConfig
from dllm_rl.rl.train_state import checkpoint_manager, save
from tests.helpers.llada_numpy import random_tensors, tiny_config, write_hf_dir

BF16 = np.dtype(ml_dtypes.bfloat16)
REAL_INDEX = json.loads((LLADA_8B_META_DIR / "model.safetensors.index.json").read_text())
AGRPO_TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
D1_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "gate_proj", "up_proj")


def read_folder(folder) -> dict[str, np.ndarray]:
    """Every tensor of an HF folder (single file or shards)."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    out = {}
    for file in files:
        with safe_open(os.path.join(folder, file), framework="numpy") as f:
            out.update({name: f.get_tensor(name) for name in f.keys()})
    return out


def assert_bits_equal(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert got[name].tobytes() == tensor.tobytes(), name


def random_adapters(config: LLaDAConfig, lora_config: LoRAConfig, seed=0) -> dict:
    """Non-zero adapters {"layers": {t: {"a": [Ly, in, r], "b": [Ly, r, out]}}, "lm_head": {...}} in float32."""
    from dllm_rl.models.llada import param_shapes

    rng, shapes, out = np.random.default_rng(seed), param_shapes(config), {}
    for t in lora_config.targets:
        n, d_in, d_out = shapes["layers"][t]
        out.setdefault("layers", {})[t] = {"a": rng.standard_normal((n, d_in, lora_config.rank), np.float32) * 0.1,
                                           "b": rng.standard_normal((n, lora_config.rank, d_out), np.float32) * 0.1}
    if lora_config.lm_head:
        d_in, d_out = shapes["lm_head"]
        out["lm_head"] = {"a": rng.standard_normal((d_in, lora_config.rank), np.float32) * 0.1,
                          "b": rng.standard_normal((lora_config.rank, d_out), np.float32) * 0.1}
    return out


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_dir, tmp_path_factory):
    """The tiny fixture converted to an Orbax model folder (float32)."""
    out = str(tmp_path_factory.mktemp("models") / "tiny")
    config, params = load_hf(tiny_dir)
    save_orbax(out, config, params)
    return out


@pytest.fixture(scope="module")
def bf16_hf_dir(tmp_path_factory):
    """A synthetic bf16 HF checkpoint in two shards with an index (random weights, tiny GQA shapes)."""
    cfg = tiny_config(n_kv_heads=2)
    tensors = {k: v.astype(BF16) for k, v in random_tensors(cfg, np.random.default_rng(3)).items()}
    out = str(tmp_path_factory.mktemp("hf") / "bf16")
    write_hf_dir(out, cfg, tensors, {n: ("model-00001-of-00002.safetensors" if "blocks.0." in n
                                         else "model-00002-of-00002.safetensors") for n in tensors})
    return out


def test_fixture_hf_to_ours_to_hf_is_bit_identical(tiny_dir, tiny_model_dir, tmp_path):
    out = str(tmp_path / "hf")
    assert main(["--ckpt_dir", tiny_model_dir, "--out_dir", out, "--format", "hf", "--dtype", "float32"]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert_bits_equal(read_folder(out), read_folder(str(tiny_dir)))
    config, _ = load_hf(out)
    assert config == LLaDAConfig.from_hf_config(str(tiny_dir))
    assert json.loads(open(os.path.join(out, "config.json")).read())["auto_map"]["AutoModel"].endswith("LLaDAModelLM")


def test_bf16_sharded_round_trip_is_bit_identical(bf16_hf_dir, tmp_path):
    config, params = load_hf(bf16_hf_dir, dtype="bfloat16")
    original = read_folder(bf16_hf_dir)
    limit = 40_000
    export_hf(str(tmp_path / "hf"), config, params, dtype="bfloat16", max_shard_size=limit)
    out = tmp_path / "hf"
    assert_bits_equal(read_folder(str(out)), original)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{k:05d}-of-{len(files):05d}.safetensors" for k in range(1, len(files) + 1)]
    assert len(files) > 2 and sorted(index["weight_map"]) == sorted(original)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in original.values())
    for file in files:
        names = [n for n, f in index["weight_map"].items() if f == file]
        assert len(names) == 1 or sum(original[n].nbytes for n in names) <= limit
    _, back = load_hf(str(out), dtype="bfloat16")
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), back, params)


def scaled_8b_config(**widths) -> LLaDAConfig:
    raw = json.loads((LLADA_8B_META_DIR / "config.json").read_text())
    raw.update(widths)
    return LLaDAConfig.from_hf_config(raw)


def test_8b_names_and_shapes_match_the_real_index(tmp_path):
    real = scaled_8b_config()
    shapes = hf_names(real)
    assert sorted(shapes) == sorted(REAL_INDEX["weight_map"])
    assert sum(int(np.prod(s)) for s in shapes.values()) * 2 == REAL_INDEX["metadata"]["total_size"]
    tiny = scaled_8b_config(d_model=16, n_heads=2, n_kv_heads=2, mlp_hidden_size=24, vocab_size=40,
                            embedding_size=40)
    tensors = random_tensors(tiny.to_hf_dict(), np.random.default_rng(0))
    write_hf_dir(str(tmp_path / "src"), tiny.to_hf_dict(), tensors)
    _, params = load_hf(str(tmp_path / "src"), dtype="bfloat16")
    export_hf(str(tmp_path / "hf"), tiny, params, max_shard_size="20KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(REAL_INDEX["weight_map"])
    written = read_folder(str(tmp_path / "hf"))
    small = hf_names(tiny)
    for name, shape in shapes.items():  # the same axes as the real model, scaled
        assert written[name].shape == small[name] and len(shape) == len(small[name]), name


def test_shard_plan_and_sizes():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2**31 and parse_size(123) == 123
    with pytest.raises(CheckpointError, match="not a size"):
        parse_size("5 lots")
    plan = plan_shards([("a", (10,)), ("b", (10,)), ("c", (30,)), ("d", (1,))], 1, 20)
    assert [[n for n, _ in shard] for shard in plan] == [["a", "b"], ["c"], ["d"]]


# The tiny model's modules (HF names less ".weight"), and which of them PEFT adapts for a `target_modules`, worked
# out by hand from PEFT's rule: a list entry t matches a module named t or ending in "." + t; a string is a regex
# that must match the whole name.
HEAD = "model.transformer.ff_out"  # the untied LM head: its name ends in ".ff_out", as every block's MLP output
TINY_MODULES = ["model.transformer.wte", "model.transformer.ln_f", HEAD] + [
    f"model.transformer.blocks.{i}.{m}" for i in (0, 1)
    for m in ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out")]
PEFT_MATCHES = [  # (target_modules, the modules PEFT adapts)
    (["q_proj"], {"model.transformer.blocks.0.q_proj", "model.transformer.blocks.1.q_proj"}),
    (["ff_out"], {"model.transformer.blocks.0.ff_out", "model.transformer.blocks.1.ff_out", HEAD}),
    (["transformer.ff_out"], {HEAD}),
    ([HEAD], {HEAD}),
    (["0.ff_out"], {"model.transformer.blocks.0.ff_out"}),
    (["proj", "q_pro"], set()),  # suffixes of whole dot-separated parts only
    (["q_proj", "o_proj", "down_proj"], {"model.transformer.blocks.0.q_proj", "model.transformer.blocks.1.q_proj"}),
    ("ff_out", set()),  # a string is a regex over the whole name
    (r"model\.transformer\.blocks\.\d+\.ff_out", {"model.transformer.blocks.0.ff_out",
                                                 "model.transformer.blocks.1.ff_out"}),
]


def test_peft_matching_rule_against_a_hand_written_table(tiny_dir):
    assert module_names(LLaDAConfig.from_hf_config(str(tiny_dir))) == TINY_MODULES
    for target_modules, adapted in PEFT_MATCHES:
        assert peft_adapted(target_modules, TINY_MODULES) == adapted, target_modules


def layer_modules(*targets: str) -> set[str]:
    return {f"model.transformer.blocks.{i}.{t}" for i in (0, 1) for t in targets}


LORA_CASES = [  # (LoRA config, the modules it adapts, by hand, and the plain list written if PEFT's rule allows it)
    (LoRAConfig(rank=4, alpha=8.0), layer_modules(*LAYER_TARGETS), None),  # a list with ff_out would take the head
    (LoRAConfig(rank=3, alpha=5.0, lm_head=True), layer_modules(*LAYER_TARGETS) | {HEAD}, sorted(LAYER_TARGETS)),
    (LoRAConfig(rank=2, alpha=2.0, targets=(), lm_head=True), {HEAD}, None),
    (LoRAConfig(rank=4, alpha=16.0, targets=("q_proj", "k_proj", "v_proj", "up_proj")),
     layer_modules("q_proj", "k_proj", "v_proj", "up_proj"), ["k_proj", "q_proj", "up_proj", "v_proj"]),
]


@pytest.mark.parametrize("lora_config,modules,suffixes", LORA_CASES, ids=["default", "lm_head", "head_only", "d1"])
def test_peft_folder_names_shapes_and_round_trip(tiny_dir, tmp_path, lora_config, modules, suffixes):
    config = LLaDAConfig.from_hf_config(str(tiny_dir))
    adapters = random_adapters(config, lora_config)
    export_peft(str(tmp_path / "peft"), config, adapters, lora_config)
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"]) == ("LORA", lora_config.rank, lora_config.alpha)
    ours = lora_module_names(lora_config, config)
    assert ours == modules
    if suffixes is None:  # a regex: the plain list would adapt other modules too
        assert isinstance(cfg["target_modules"], str)
    else:
        assert cfg["target_modules"] == suffixes
    assert peft_adapted(cfg["target_modules"], TINY_MODULES) == modules  # PEFT adapts exactly our modules
    tensors = read_folder(str(tmp_path / "peft"))
    shapes = hf_names(config)
    want = {}
    for module in ours:
        d_out, d_in = shapes[module + ".weight"]
        want[f"base_model.model.{module}.lora_A.weight"] = (lora_config.rank, d_in)
        want[f"base_model.model.{module}.lora_B.weight"] = (d_out, lora_config.rank)
    assert {n: t.shape for n, t in tensors.items()} == want
    if lora_config.targets:
        q = tensors["base_model.model.model.transformer.blocks.1.q_proj.lora_A.weight"]
        np.testing.assert_array_equal(q, adapters["layers"]["q_proj"]["a"][1].T)
    back_config, back = load_peft(str(tmp_path / "peft"), config)
    assert back_config == lora_config
    jax.tree.map(np.testing.assert_array_equal, back, adapters)


def test_load_peft_rejects_what_does_not_map(tiny_dir, tmp_path):
    config = LLaDAConfig.from_hf_config(str(tiny_dir))
    lora_config = LoRAConfig(rank=2, alpha=2.0)
    folder = tmp_path / "peft"
    export_peft(str(folder), config, random_adapters(config, lora_config), lora_config)
    deeper = LLaDAConfig.from_hf_config(tiny_config(n_layers=3))
    with pytest.raises(CheckpointError, match="blocks.2.* break the pattern"):
        load_peft(str(folder), deeper)
    wider = LLaDAConfig.from_hf_config(tiny_config(d_model=128))
    with pytest.raises(CheckpointError, match="lora_A.weight is .* imply"):
        load_peft(str(folder), wider)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    for field, value, message in (("use_dora", True, "use_dora=True is not supported"),
                                  ("target_modules", ["q_proj"], "selects other modules")):
        (folder / "adapter_config.json").write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(CheckpointError, match=message):
            load_peft(str(folder), config)


def test_peft_suffix_rule_on_the_real_8b_names():
    names = index_module_names()  # the shipped real index
    config = scaled_8b_config()
    assert names == set(module_names(config))
    agrpo = peft_adapted(list(AGRPO_TARGETS), names)
    assert "model.transformer.ff_out" in agrpo and len(agrpo) == 7 * 32 + 1  # the suffix rule catches the LM head
    assert lora_module_names(LoRAConfig(targets=AGRPO_TARGETS, lm_head=True), config) == agrpo
    default = lora_module_names(LoRAConfig(targets=LAYER_TARGETS), config)
    assert agrpo - default == {"model.transformer.ff_out"}
    d1 = peft_adapted(list(D1_TARGETS), names)
    assert {n.rsplit(".", 1)[1] for n in d1} == {"q_proj", "k_proj", "v_proj", "up_proj"} and len(d1) == 4 * 32
    assert lora_module_names(LoRAConfig(targets=("q_proj", "k_proj", "v_proj", "up_proj")), config) == d1
    # what we write: the plain list when it is exact, a regex when the suffix rule would over-match
    assert peft_target_modules(LoRAConfig(targets=AGRPO_TARGETS, lm_head=True), config) == sorted(AGRPO_TARGETS)
    assert isinstance(peft_target_modules(LoRAConfig(targets=LAYER_TARGETS), config), str)


def f64_merge_hf(base: dict, adapters: dict, lora_config: LoRAConfig, config) -> dict:
    """Reference merge in float64 on HF (torch-layout) tensors: W + s·(A@B)ᵀ."""
    out = {k: v.astype(np.float64) for k, v in base.items()}
    for module in lora_module_names(lora_config, config):
        if module == "model.transformer.ff_out":
            a, b = adapters["lm_head"]["a"], adapters["lm_head"]["b"]
        else:
            *_, i, short = module.split(".")
            a, b = adapters["layers"][short]["a"][int(i)], adapters["layers"][short]["b"][int(i)]
        out[module + ".weight"] += lora_config.scale * (a.astype(np.float64) @ b.astype(np.float64)).T
    return out


def test_merged_export_is_float32_merge_cast_once(bf16_hf_dir, tmp_path):
    config, params = load_hf(bf16_hf_dir, dtype="bfloat16")
    lora_config = LoRAConfig(rank=4, alpha=8.0, lm_head=True)
    adapters = random_adapters(config, lora_config, seed=1)
    for dtype in ("float32", "bfloat16"):
        export_hf(str(tmp_path / dtype), config, params, dtype, adapters, lora_config)
    f32, bf16 = read_folder(str(tmp_path / "float32")), read_folder(str(tmp_path / "bfloat16"))
    want = f64_merge_hf(read_folder(bf16_hf_dir), adapters, lora_config, config)
    for name, ref in want.items():
        np.testing.assert_allclose(f32[name], ref, rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(bf16[name], f32[name].astype(BF16), err_msg=name)  # one cast, from f32
    q = f32["model.transformer.blocks.0.q_proj.weight"]
    assert not np.array_equal(q, q.astype(BF16).astype(np.float32))  # never rounded through the bf16 base


def write_trainer_checkpoint(workdir, adapters_or_params, base=None, alpha=None):
    """A checkpoint exactly as the trainer writes it (W/checkpoints/<step>/{state,data})."""
    manager = checkpoint_manager(os.path.join(workdir, "checkpoints"), 2)
    opt_state = optax.adam(1e-3).init(adapters_or_params)
    save(manager, 0, jax.tree.map(np.zeros_like, adapters_or_params), opt_state, {"epoch": 0}, base)
    save(manager, 5, adapters_or_params, opt_state, {"epoch": 0}, base)
    manager.close()
    if alpha is not None:  # as Trainer.write_lora_config
        with open(os.path.join(workdir, LORA_CONFIG_FILE), "w") as f:
            json.dump({"rank": 4, "alpha": alpha, "targets": ["q_proj"], "lm_head": False, "dropout": 0.0}, f)


def test_cli_from_trainer_lora_checkpoint(tiny_dir, tiny_model_dir, tmp_path):
    config, params = load_hf(tiny_dir)
    lora_config = LoRAConfig(rank=4, alpha=6.0, lm_head=True)
    adapters = random_adapters(config, lora_config, seed=2)
    workdir = str(tmp_path / "w")
    write_trainer_checkpoint(workdir, adapters, alpha=6.0)
    peft_dir, hf_dir = str(tmp_path / "peft"), str(tmp_path / "hf")
    assert main(["--ckpt_dir", tiny_model_dir, "--lora_dir", workdir, "--out_dir", peft_dir, "--format", "peft"]) == 0
    back_config, back = load_peft(peft_dir, config)
    assert back_config == lora_config
    jax.tree.map(np.testing.assert_array_equal, back, adapters)
    # a PEFT folder is accepted as --lora_dir too, and merges like the checkpoint it came from
    for src, out in ((workdir, hf_dir), (peft_dir, hf_dir + "2")):
        assert main(["--ckpt_dir", tiny_model_dir, "--lora_dir", src, "--out_dir", out, "--format", "hf",
                     "--dtype", "float32"]) == 0
    merged = read_folder(hf_dir)
    assert_bits_equal(read_folder(hf_dir + "2"), merged)
    want = f64_merge_hf(read_folder(str(tiny_dir)), adapters, lora_config, config)
    for name, ref in want.items():
        np.testing.assert_allclose(merged[name], ref, rtol=1e-6, atol=1e-6, err_msg=name)


def test_cli_trainer_checkpoint_with_sft_base_and_full_fine_tuning(tiny_dir, tiny_model_dir, tmp_path, capsys):
    config, params = load_hf(tiny_dir)
    params = jax.tree.map(np.asarray, params)
    shifted = jax.tree.map(lambda x: x + np.float32(0.5), params)
    lora_config = LoRAConfig(rank=2, alpha=2.0)
    write_trainer_checkpoint(str(tmp_path / "sft"), random_adapters(config, lora_config), base=shifted)
    args = ["--ckpt_dir", tiny_model_dir, "--lora_dir", str(tmp_path / "sft"), "--lora_alpha", "2"]
    assert main(args + ["--out_dir", str(tmp_path / "p"), "--format", "peft"]) == 2
    assert "SFT-warm-started base" in capsys.readouterr().err
    assert main(args + ["--out_dir", str(tmp_path / "h"), "--format", "hf", "--dtype", "float32"]) == 0
    got = read_folder(str(tmp_path / "h"))
    np.testing.assert_array_equal(got["model.transformer.wte.weight"], shifted["embed"])  # the saved base is used
    write_trainer_checkpoint(str(tmp_path / "full"), shifted)
    assert main(["--ckpt_dir", tiny_model_dir, "--lora_dir", str(tmp_path / "full"), "--out_dir",
                 str(tmp_path / "f"), "--format", "hf", "--dtype", "float32"]) == 0
    assert_bits_equal(read_folder(str(tmp_path / "f")), to_hf_tensors(config, shifted))


@pytest.mark.parametrize("extra, message", [
    (["--format", "peft"], "--format peft needs LoRA adapters"),
    (["--format", "hf", "--lora_dir", "{tmp}/nowhere"], "not a trainer workdir"),
    (["--format", "hf", "--dtype", "int4"], "unknown dtype"),
    (["--format", "hf", "--shard_size", "big"], "not a size"),
    (["--format", "hf", "--ckpt_dir", "{tmp}"], "not an Orbax model folder"),
])
def test_cli_errors_name_the_problem_and_write_nothing(tiny_model_dir, tmp_path, capsys, extra, message):
    out = str(tmp_path / "out")
    argv = ["--ckpt_dir", tiny_model_dir, "--out_dir", out] + [a.format(tmp=tmp_path) for a in extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_cli_missing_alpha_and_existing_out_dir(tiny_dir, tiny_model_dir, tmp_path, capsys):
    config = LLaDAConfig.from_hf_config(str(tiny_dir))
    write_trainer_checkpoint(str(tmp_path / "w"), random_adapters(config, LoRAConfig(rank=2, alpha=2.0)))
    base = ["--ckpt_dir", tiny_model_dir, "--lora_dir", str(tmp_path / "w"), "--format", "peft"]
    assert main(base + ["--out_dir", str(tmp_path / "p")]) == 2
    assert "pass --lora_alpha" in capsys.readouterr().err
    os.makedirs(tmp_path / "p")
    assert main(base + ["--lora_alpha", "2", "--out_dir", str(tmp_path / "p")]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(base + ["--lora_alpha", "2", "--out_dir", str(tmp_path / "p"), "--overwrite"]) == 0


def test_failed_write_leaves_nothing(tiny_dir, tmp_path):
    config, params = load_hf(tiny_dir)

    def failing(path):
        if path == ("layers", "ff_out"):
            raise OSError("disk full")
        return np.asarray(params[path[0]] if len(path) == 1 else params[path[0]][path[1]])

    with pytest.raises(OSError, match="disk full"):
        export_hf(str(tmp_path / "out"), config, failing, max_shard_size="10KB")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# Every family: its own names and config.json (tests/fixtures/families), merged LoRA, PEFT names


def family_hf_dir(family: str, tmp_path_factory) -> str:
    """A family's HF folder: the fixture's, or (llada_moe_mixed) LLaDA-MoE's config with a dense first layer and
    random tensors under the names its config implies."""
    from tests.helpers import family_goldens as fg

    if family != "llada_moe_mixed":
        return str(fg.FAMILIES_DIR / family)
    from dllm_rl.models import config_from_hf

    raw = dict(json.loads((fg.FAMILIES_DIR / "llada_moe" / "config.json").read_text()), moe_layer_freq=[0, 1])
    rng = np.random.default_rng(0)
    tensors = {n: rng.standard_normal(s).astype(np.float32) for n, s in hf_names(config_from_hf(raw)).items()}
    out = str(tmp_path_factory.mktemp("hf") / family)
    write_hf_dir(out, raw, tensors)
    return out


FAMILIES = ["dream", "a2d_qwen3", "llada_moe", "llada_moe_mixed"]


@pytest.fixture(scope="module", params=FAMILIES)
def family_dirs(request, tmp_path_factory):
    """(family, HF folder, Orbax model folder converted from it by `python -m dllm_rl.convert`)."""
    from dllm_rl.convert import convert

    hf_dir = family_hf_dir(request.param, tmp_path_factory)
    model_dir = str(tmp_path_factory.mktemp("models") / request.param)
    convert(hf_dir, model_dir, "float32", progress=False)
    return request.param, hf_dir, model_dir


def test_family_export_round_trip_is_bit_exact(family_dirs, tmp_path):
    """load_hf → Orbax → `--format hf`: the family's own tensor names, bit for bit, and its own config.json."""
    family, hf_dir, model_dir = family_dirs
    out = str(tmp_path / "hf")
    assert main(["--ckpt_dir", model_dir, "--out_dir", out, "--format", "hf", "--dtype", "float32"]) == 0
    source = read_folder(hf_dir)
    assert_bits_equal(read_folder(out), source)
    if family == "a2d_qwen3":
        assert "lm_head.weight" not in source  # the tied head is stored once, as the embedding
    written = json.loads(open(os.path.join(out, "config.json")).read())
    assert written == json.loads(open(os.path.join(hf_dir, "config.json")).read())
    config, params = load_hf(out)
    config0, params0 = load_hf(hf_dir)
    assert config == config0 and config.family == family.replace("_mixed", "")
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), params, params0)
    bf16 = str(tmp_path / "bf16")
    export_hf(bf16, config, params, dtype="bfloat16")
    assert_bits_equal(read_folder(bf16), {n: t.astype(BF16) for n, t in source.items()})
    assert json.loads(open(os.path.join(bf16, "config.json")).read())["model_type"] == config.to_hf_dict()["model_type"]


# Each family's HF module per LoRA target, written from the modeling code (tests/fixtures/families/README.md).
QWEN_MODULES = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
                "attn_out": "self_attn.o_proj", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
                "ff_out": "mlp.down_proj", "shared_ff_proj": "shared_expert.gate_proj",
                "shared_up_proj": "shared_expert.up_proj", "shared_ff_out": "shared_expert.down_proj"}
ATTENTION = ("q_proj", "k_proj", "v_proj", "attn_out")
SHARED = ("shared_ff_proj", "shared_up_proj", "shared_ff_out")
FAMILY_LORA = {  # family -> (LoRA config, the layers each target sits on, the target_modules PEFT gets)
    "dream": (LoRAConfig(rank=3, alpha=6.0, targets=LAYER_TARGETS, lm_head=True), {},
              ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj", "v_proj"]),
    "a2d_qwen3": (LoRAConfig(rank=3, alpha=6.0, targets=LAYER_TARGETS), {},
                  ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]),
    "llada_moe": (LoRAConfig(rank=3, alpha=6.0, targets=ATTENTION + SHARED, lm_head=True), {}, None),
    "llada_moe_mixed": (LoRAConfig(rank=3, alpha=6.0, targets=LAYER_TARGETS + SHARED, lm_head=True),
                        {"ff_proj": [0], "up_proj": [0], "ff_out": [0], **{t: [1] for t in SHARED}}, None),
}


def expected_modules(family: str) -> dict[str, tuple[str, int | None]]:
    """HF module -> (target, layer) of the family's LoRA case, by hand (layer None: the LM head)."""
    lora_config, layers_of, _ = FAMILY_LORA[family]
    out = {f"model.layers.{i}.{QWEN_MODULES[t]}": (t, i) for t in lora_config.targets
           for i in layers_of.get(t, [0, 1])}
    if lora_config.lm_head:
        out["lm_head"] = ("lm_head", None)
    return out


def real_module_names(hf_dir: str, family: str) -> set[str]:
    """The torch model's named modules: every dotted prefix of a stored tensor name (containers included), plus a
    tied `lm_head` (a module, though stored once as the embedding)."""
    names = {name.rsplit(".", 1)[0] for name in read_folder(hf_dir)}
    modules = {".".join(n.split(".")[:k]) for n in names for k in range(1, n.count(".") + 2)}
    return modules | ({"lm_head"} if family == "a2d_qwen3" else set())


def family_adapters(config, lora_config, seed=0) -> dict:
    """Non-zero float32 adapters in the params tree's layout (`init_lora`'s shapes)."""
    from dllm_rl.models import init_params
    from dllm_rl.models.lora import init_lora

    base = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    shapes = jax.eval_shape(lambda: init_lora(base, lora_config, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def test_family_merged_export_is_float32_merge_of_the_right_tensors(family_dirs, tmp_path):
    family, hf_dir, model_dir = family_dirs
    lora_config, _, _ = FAMILY_LORA[family]
    config, params = load_hf(hf_dir)
    adapters = family_adapters(config, lora_config, seed=1)
    export_hf(str(tmp_path / "hf"), config, params, "float32", adapters, lora_config)
    got, source = read_folder(str(tmp_path / "hf")), read_folder(hf_dir)
    want = {k: v.astype(np.float64) for k, v in source.items()}
    group = lambda t: "layers" if family != "llada_moe_mixed" or t in ATTENTION else (
        "moe_ffn" if t in SHARED else "dense_ffn")
    for module, (target, layer) in expected_modules(family).items():
        pair = adapters["lm_head"] if layer is None else {k: v[0 if group(target) != "layers" else layer]
                                                          for k, v in adapters[group(target)][target].items()}
        want[module + ".weight"] += 2.0 * (pair["a"].astype(np.float64) @ pair["b"].astype(np.float64)).T
    changed = {n for n in source if not np.array_equal(got[n], source[n])}
    assert changed == {m + ".weight" for m in expected_modules(family)}  # biases, norms, experts untouched
    for name, ref in want.items():
        np.testing.assert_allclose(got[name], ref, rtol=1e-6, atol=1e-6, err_msg=name)


def test_family_peft_names_are_the_real_modules(family_dirs, tmp_path):
    family, hf_dir, _ = family_dirs
    lora_config, _, suffixes = FAMILY_LORA[family]
    config, _ = load_hf(hf_dir)
    adapters = family_adapters(config, lora_config, seed=2)
    export_peft(str(tmp_path / "peft"), config, adapters, lora_config)
    modules = expected_modules(family)
    assert lora_module_names(lora_config, config) == set(modules)
    tensors = read_folder(str(tmp_path / "peft"))
    source = read_folder(hf_dir)
    for module in modules:
        d_out, d_in = source[module + ".weight"].shape  # the real module's own weight
        assert tensors[f"base_model.model.{module}.lora_A.weight"].shape == (3, d_in)
        assert tensors[f"base_model.model.{module}.lora_B.weight"].shape == (d_out, 3)
    assert len(tensors) == 2 * len(modules)
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    real = real_module_names(hf_dir, family)
    assert set(module_names(config)) <= real
    assert peft_adapted(cfg["target_modules"], real) == set(modules)  # PEFT adapts exactly these real modules
    if suffixes is None:  # the suffix list would also take every routed expert's gate/up/down_proj
        assert isinstance(cfg["target_modules"], str)
        plain = sorted({m.rsplit(".", 1)[-1] for m in modules})
        assert any(".mlp.experts." in m for m in peft_adapted(plain, real) - set(modules))
    else:
        assert cfg["target_modules"] == suffixes
    back_config, back = load_peft(str(tmp_path / "peft"), config)
    assert back_config == lora_config
    jax.tree.map(np.testing.assert_array_equal, back, adapters)


def test_family_cli_from_trainer_checkpoint(tmp_path_factory, tmp_path):
    """A LoRA run on mixed dense / MoE layers (adapters on `dense_ffn` and the shared expert) exports both ways."""
    hf_dir = family_hf_dir("llada_moe_mixed", tmp_path_factory)
    config, params = load_hf(hf_dir)
    model_dir = str(tmp_path / "model")
    save_orbax(model_dir, config, params)
    lora_config, _, _ = FAMILY_LORA["llada_moe_mixed"]
    adapters = family_adapters(config, lora_config, seed=3)
    workdir = str(tmp_path / "w")
    write_trainer_checkpoint(workdir, adapters, alpha=6.0)
    assert main(["--ckpt_dir", model_dir, "--lora_dir", workdir, "--out_dir", str(tmp_path / "peft"),
                 "--format", "peft"]) == 0
    back_config, back = load_peft(str(tmp_path / "peft"), config)
    assert back_config == lora_config
    jax.tree.map(np.testing.assert_array_equal, back, adapters)
    assert main(["--ckpt_dir", model_dir, "--lora_dir", workdir, "--out_dir", str(tmp_path / "hf"),
                 "--format", "hf", "--dtype", "float32"]) == 0
    export_hf(str(tmp_path / "direct"), config, params, "float32", adapters, lora_config)
    assert_bits_equal(read_folder(str(tmp_path / "hf")), read_folder(str(tmp_path / "direct")))


def test_family_peft_rejects_unadapted_modules(tmp_path):
    """A PEFT folder with adapters on LLaDA-MoE's routed experts names them and what dllm_rl adapts."""
    from tests.helpers import family_goldens as fg

    config, _ = load_hf(fg.FAMILIES_DIR / "llada_moe")
    lora_config = LoRAConfig(rank=2, alpha=2.0, targets=ATTENTION)
    folder = tmp_path / "peft"
    export_peft(str(folder), config, family_adapters(config, lora_config), lora_config)
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    tensors["base_model.model.model.layers.0.mlp.experts.3.gate_proj.lora_A.weight"] = np.zeros((2, 64), np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"experts\.3\.gate_proj.*which dllm_rl does not adapt"):
        load_peft(str(folder), config)
