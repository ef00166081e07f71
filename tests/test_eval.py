"""`python -m experiments.eval` end to end on the tiny golden checkpoint and tiny tokenizer, on a trained run
(`--lora_dir`), and with a gs:// results folder."""
import json
import os
import subprocess
import sys

import pytest
from tests.helpers.xla_env import fake_devices_env


def test_eval_writes_per_example_jsonl_and_summaries(tmp_path, tiny_dir, tiny_tokenizer_dir):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "experiments.eval", "--task", "gsm8k,sudoku", "--lengths", "32,64",
           "--block_length", "32", "--limit", "3", "--batch_size", "2", "--max_prompt_tokens", "48",
           "--hf_dir", str(tiny_dir), "--tokenizer_dir", str(tiny_tokenizer_dir), "--dtype", "float32",
           "--trajectories", "1", "--out_dir", str(out)]
    subprocess.run(cmd, check=True, timeout=600)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"gsm8k", "sudoku"} and set(summary["gsm8k"]) == {"32", "64"}
    assert summary["gsm8k"]["64"]["steps"] == 32 and summary["sudoku"]["32"]["n"] == 3
    for task in ("gsm8k", "sudoku"):
        for length in (32, 64):
            rows = [json.loads(line) for line in (out / f"{task}_test_len{length}.jsonl").read_text().splitlines()]
            assert [r["index"] for r in rows] == [0, 1, 2]
            assert all(set(r) >= {"prompt", "completion", "extracted", "correct", "correct_strict"} for r in rows)
            assert all(0.0 <= r["correct"] <= 1.0 for r in rows)
            accuracy = 100 * sum(r["correct"] for r in rows) / 3
            assert summary[task][str(length)]["accuracy"] == pytest.approx(accuracy)
    pictures = sorted(p.name for p in out.glob("*.png"))
    assert pictures == [f"{t}_test_len{n}_trajectory0.png" for t in ("gsm8k", "sudoku") for n in (32, 64)]
    table = (out / "summary.md").read_text()
    assert table.startswith("| task | split | length") and table.count("\n") == 2 + 4


def test_eval_rejects_a_length_the_blocks_cannot_split(tmp_path, tiny_dir):
    result = subprocess.run([sys.executable, "-m", "experiments.eval", "--task", "gsm8k", "--lengths", "48",
                             "--hf_dir", str(tiny_dir), "--out_dir", str(tmp_path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and result.stderr.startswith("error: length 48") and "block_length" in result.stderr


def test_eval_on_an_fsdp_mesh_gives_the_one_device_completions(tmp_path, tiny_dir, tiny_tokenizer_dir):
    """--mesh data=1,fsdp=-1 (weights sharded over 4 fake devices, batch split) decodes what one device does."""
    def run(out, *extra):
        cmd = [sys.executable, "-m", "experiments.eval", "--task", "gsm8k", "--lengths", "32", "--block_length", "32",
               "--limit", "4", "--batch_size", "4", "--max_prompt_tokens", "48", "--hf_dir", str(tiny_dir),
               "--tokenizer_dir", str(tiny_tokenizer_dir), "--dtype", "float32", "--out_dir", str(out), *extra]
        env = fake_devices_env(4)
        subprocess.run(cmd, check=True, timeout=600, env=env)
        return [json.loads(line)["completion"] for line in (out / "gsm8k_test_len32.jsonl").read_text().splitlines()]

    assert run(tmp_path / "fsdp", "--mesh", "data=1,fsdp=-1") == run(tmp_path / "one")
    bad = subprocess.run([sys.executable, "-m", "experiments.eval", "--task", "gsm8k", "--lengths", "32",
                          "--block_length", "32", "--batching", "per_batch", "--batch_size", "3", "--mesh", "data=-1",
                          "--hf_dir", str(tiny_dir),
                          "--out_dir", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300,
                         env=fake_devices_env(4))
    assert bad.returncode == 2 and "--batch_size" in bad.stderr and "not divisible" in bad.stderr, bad.stderr


@pytest.mark.slow
def test_lora_dir_reproduces_the_trainers_final_evaluation(tmp_path):
    """`experiments.eval --lora_dir W` evaluates the policy a LoRA run trained (the SFT-warm-started base saved in
    its checkpoint plus its adapters, unmerged) and reproduces the run's own final evaluation: the same examples,
    identical completions and accuracy. The warm-started base answers differently from the random-init one, so
    reading the wrong base (or dropping the adapters' effect on it) cannot pass."""
    from dllm_rl.rl.train import Trainer
    from experiments import eval as eval_cli
    from experiments.run import parse_config, record_operative_config
    import gin

    bindings = ["dllm_rl.TrainConfig.num_steps = 2", "dllm_rl.TrainConfig.sft_steps = 40",
                "dllm_rl.TrainConfig.eval_every = 2", "dllm_rl.TrainConfig.eval_examples = 24",
                "dllm_rl.TrainConfig.eval_batch_size = 8", "dllm_rl.TrainConfig.prompts_per_micro_batch = 2",
                "dllm_rl.AGRPOConfig.num_generations = 4", "dllm_rl.AGRPOConfig.mc_samples = 2",
                "dllm_rl.TrainConfig.checkpoint_every = 0", "experiment.lora = @dllm_rl.LoRAConfig()",
                "dllm_rl.LoRAConfig.rank = 4", "dllm_rl.TrainConfig.learning_rate = 0.02"]
    workdir = tmp_path / "run"
    Trainer(parse_config(["experiments/configs/demo.gin"], bindings), workdir).train(progress=False)
    record_operative_config(str(workdir), gin.operative_config_str())
    in_run = [json.loads(line) for line in (workdir / "eval" / "step_2.jsonl").read_text().splitlines()]
    args = ["--task", "increment", "--split", "validation", "--lengths", "8", "--block_length", "8",
            "--steps_per_token", "1", "--sample", "24", "--sample_seed", "0"]
    summary = eval_cli.main(args + ["--lora_dir", str(workdir), "--out_dir", str(tmp_path / "policy")])
    rows = [json.loads(line) for line in
            (tmp_path / "policy" / "increment_validation_len8.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [r["index"] for r in in_run] and len(rows) == 24
    assert [r["completion"] for r in rows] == [r["completion"] for r in in_run]
    assert summary["increment"]["8"]["accuracy"] == pytest.approx(100 * sum(r["correct"] for r in in_run) / 24)
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["eval_accuracy"] == pytest.approx(summary["increment"]["8"]["accuracy"] / 100)
    # The random-init base (what an evaluation that missed the checkpoint's warm-started base would sample).
    trainer = Trainer(parse_config(["experiments/configs/demo.gin"], bindings), tmp_path / "unused")
    trainer.export(trainer.base_params, str(tmp_path / "init_model"))
    eval_cli.main(args + ["--ckpt_dir", str(tmp_path / "init_model"), "--out_dir", str(tmp_path / "init")])
    init = [json.loads(line)["completion"] for line in
            (tmp_path / "init" / "increment_validation_len8.jsonl").read_text().splitlines()]
    assert init != [r["completion"] for r in rows]


def test_eval_writes_its_results_to_gs(tmp_path, tiny_dir, tiny_tokenizer_dir):
    """--out_dir gs://bucket/...: every result file goes through epath (the gs:// backend mapped onto a local
    folder here), written atomically."""
    from etils.epath import testing as epath_testing
    from experiments import eval as eval_cli

    def local(fn, path, *args, **kwargs):
        return fn(os.fspath(path).replace("gs://bucket", str(tmp_path / "bucket")), *args, **kwargs)

    def local2(fn, src, dst, *args, **kwargs):
        return fn(*(os.fspath(p).replace("gs://bucket", str(tmp_path / "bucket")) for p in (src, dst)), *args,
                  **kwargs)

    (tmp_path / "bucket").mkdir()
    with epath_testing.mock_epath(open=local, exists=local, isdir=local, makedirs=local, mkdir=local,
                                  rename=local2, replace=local2):
        eval_cli.main(["--task", "gsm8k", "--lengths", "32", "--block_length", "32", "--limit", "2",
                       "--batch_size", "2", "--max_prompt_tokens", "48", "--hf_dir", str(tiny_dir),
                       "--tokenizer_dir", str(tiny_tokenizer_dir), "--dtype", "float32",
                       "--out_dir", "gs://bucket/eval"])
    written = sorted(p.name for p in (tmp_path / "bucket" / "eval").iterdir())
    assert written == ["gsm8k_test_len32.jsonl", "summary.json", "summary.md"]
    assert json.loads((tmp_path / "bucket" / "eval" / "summary.json").read_text())["gsm8k"]["32"]["n"] == 2
