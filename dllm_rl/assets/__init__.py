"""Small files shipped with the package (the demo model config and tokenizer)."""
import pathlib

DEMO_MODEL_DIR = pathlib.Path(__file__).resolve().parent / "demo_model"
