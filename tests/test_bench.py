"""experiments/bench.py: each subcommand runs on CPU at a tiny shape and reports the fields BENCHMARKS.md records
(smoke tests: no timing is asserted)."""
from experiments import bench

ROLLOUT = ["--batch", "2", "--prompt_len", "8", "--gen_length", "24", "--block_length", "8", "--temperature", "0.6",
           "--top_k", "20", "--top_p", "0.95"]


def test_train_step_smoke():
    for rank in (4, 0):  # LoRA and full fine-tuning
        result = bench.main(["train_step", "--model", "tiny", "--batch", "2", "--prompt_len", "8", "--gen_length", "16",
                             "--sampling_steps", "8", "--lora_rank", str(rank), "--top_k_bits", "20", "--repeats", "1"])
        assert result["bench"] == "train_step" and result["seconds"] > 0 and result["tflops"] > 0
        assert result["lora_rank"] == rank and result["seq_len"] == 24


def test_sampler_compare_greedy_smoke():
    result = bench.main(["sampler", "--vocab", "300", "--steps", "6", "--remasking", "random", "--record",
                         "--no_early_stop", "--compare_greedy", "--repeats", "1"] + ROLLOUT)
    assert result["vocab"] == 300 and result["steps_run"] == result["greedy_steps_run"] == 6
    assert result["rollout_over_greedy"] > 0 and len(result["greedy_seconds_all"]) == 1


def test_sampler_compare_row_keys_smoke():
    result = bench.main(["sampler", "--vocab", "300", "--steps", "6", "--remasking", "random", "--record",
                         "--no_early_stop", "--compare_row_keys", "--repeats", "1"] + ROLLOUT)
    assert result["row_keys_over_rollout"] > 0 and len(result["row_keys_seconds_all"]) == 1


def test_sampler_profile_smoke():
    result = bench.main(["sampler_profile", "--vocab", "300", "--repeats", "1"] + ROLLOUT)
    assert result["bench"] == "sampler_profile"
    assert all(result[k] > 0 for k in ("forward_at_block_s", "top_k_top_p_candidates_s", "gumbel_vocab_s"))


def test_eval_batching_smoke(tiny_tokenizer_dir):
    result = bench.main(["eval_batching", "--task", "increment", "--examples", "6", "--tokenizer_dir",
                         str(tiny_tokenizer_dir), "--gen_length", "8", "--block_length", "8", "--steps", "4",
                         "--rows_per_device", "4", "--prompt_bucket", "16", "--batch_sizes", "4,3", "--dtype",
                         "float32"])
    assert result["examples"] == 6 and set(result["seconds_per_example"]) == {"invariant", "per_batch_4"}
    assert result["padded_prompt_tokens"]["invariant"] >= result["prompt_tokens"]
    assert set(result["differing_completions"]) == {"per_batch_4_vs_3", "invariant_vs_per_batch"}
