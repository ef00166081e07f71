"""`python -m experiments.eval` end to end on the tiny golden checkpoint and tiny tokenizer."""
import json
import subprocess
import sys

import pytest


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
    import os

    def run(out, *extra):
        cmd = [sys.executable, "-m", "experiments.eval", "--task", "gsm8k", "--lengths", "32", "--block_length", "32",
               "--limit", "4", "--batch_size", "4", "--max_prompt_tokens", "48", "--hf_dir", str(tiny_dir),
               "--tokenizer_dir", str(tiny_tokenizer_dir), "--dtype", "float32", "--out_dir", str(out), *extra]
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
        subprocess.run(cmd, check=True, timeout=600, env=env)
        return [json.loads(line)["completion"] for line in (out / "gsm8k_test_len32.jsonl").read_text().splitlines()]

    assert run(tmp_path / "fsdp", "--mesh", "data=1,fsdp=-1") == run(tmp_path / "one")
    bad = subprocess.run([sys.executable, "-m", "experiments.eval", "--task", "gsm8k", "--lengths", "32",
                          "--block_length", "32", "--batch_size", "3", "--mesh", "data=-1", "--hf_dir", str(tiny_dir),
                          "--out_dir", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert bad.returncode == 2 and "--batch_size" in bad.stderr and "not divisible" in bad.stderr, bad.stderr
