"""Small files shipped with the package: the demo model (config, tokenizer), the Dream-, A2D-Qwen3- and
LLaDA-MoE-style demo models (a config each; they use the demo model's tokenizer) and the real LLaDA-8B-Instruct
metadata (config, tokenizer config, shard index; no weights) that benchmarks and synthetic checkpoints use."""
import pathlib

DEMO_MODEL_DIR = pathlib.Path(__file__).resolve().parent / "demo_model"
LLADA_8B_META_DIR = pathlib.Path(__file__).resolve().parent / "llada_8b_instruct_meta"
