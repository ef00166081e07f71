"""experiments/bench.py train_step: runs on CPU at a tiny shape and reports the fields BENCHMARKS.md records."""
from experiments import bench


def test_train_step_smoke():
    for rank in (4, 0):  # LoRA and full fine-tuning
        result = bench.main(["train_step", "--model", "tiny", "--batch", "2", "--prompt_len", "8", "--gen_length", "16",
                             "--sampling_steps", "8", "--lora_rank", str(rank), "--top_k_bits", "20", "--repeats", "1"])
        assert result["bench"] == "train_step" and result["seconds"] > 0 and result["tflops"] > 0
        assert result["lora_rank"] == rank and result["seq_len"] == 24
