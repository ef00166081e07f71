"""`rl.evaluate`: one batching, padding, decoding and grading protocol for the trainer and `experiments.eval`."""
import json
import types

import jax
import numpy as np
import pytest

from dllm_rl.rl import evaluate as eval_lib
from dllm_rl.sampling import SamplerConfig
from dllm_rl.tasks import get_task
from dllm_rl.tokenizer import Tokenizer
from tests.helpers.xla_env import fake_devices_env

SAMPLER = SamplerConfig(steps=4, gen_length=8, block_length=8)


@pytest.fixture
def fake_generate(monkeypatch, tiny_tokenizer_dir):
    """`generate` answering "4321" then EOS for every row, recording each call's batch and key."""
    tokenizer = Tokenizer.from_dir(tiny_tokenizer_dir)
    answer = tokenizer.encode("4321") + [tokenizer.eos_token_id] * 4
    calls = []

    def generate(config, params, prompt_ids, sampler, *, attention_mask, rng, mesh):
        calls.append(types.SimpleNamespace(ids=np.asarray(prompt_ids), mask=np.asarray(attention_mask), rng=rng,
                                           sampler=sampler))
        completion = np.tile(np.asarray(answer, np.int32), (len(prompt_ids), 1))
        return types.SimpleNamespace(tokens=np.concatenate([np.asarray(prompt_ids), completion], axis=1))

    monkeypatch.setattr(eval_lib, "generate", generate)
    return tokenizer, calls


def test_per_batch_calls_pad_each_batch_to_its_longest_prompt_and_fill_the_last(fake_generate):
    """The reference protocol: consecutive batches, each left-padded to its own longest prompt; the last one filled
    by repeating its final row; special tokens kept in the decoded completions."""
    tokenizer, calls = fake_generate
    task = get_task("reverse")
    examples = [{"digits": "1234", "answer": "4321", "demonstration": "4321"},
                {"digits": "5678", "answer": "8765", "demonstration": "8765"},
                {"digits": "1234", "answer": "4321", "demonstration": "4321"}]
    key = jax.random.PRNGKey(3)
    graded = eval_lib.evaluate(None, None, tokenizer, task, examples, SAMPLER,
                               batching=eval_lib.Batching(mode="per_batch", batch_size=2), reward_style="agrpo",
                               rng=key)
    width = len(tokenizer.encode(graded[0].prompt))
    assert [c.ids.shape for c in calls] == [(2, width), (2, width)]
    np.testing.assert_array_equal(calls[1].ids[0], calls[1].ids[1])
    np.testing.assert_array_equal(np.asarray(calls[1].rng), np.asarray(jax.random.fold_in(key, 2)))
    assert calls[0].sampler == eval_lib.protocol(SAMPLER) and calls[0].sampler.early_stop
    assert [g.completion for g in graded] == ["4321" + "<|endoftext|>" * 4] * 3  # special tokens kept
    assert [g.score.correct for g in graded] == [1.0, 0.0, 1.0]
    assert [g.reward for g in graded] == [3.25, 0.25, 3.25]
    assert graded[0].strict is None and graded[0].prompt.endswith("reverse 1234<|eot_id|>"
                                                                  "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_invariant_calls_pad_to_length_buckets_with_fixed_rows_and_keep_last_truncates(fake_generate):
    """Invariant batching: every call has rows_per_device rows (copies fill it) and prompts padded to their
    bucket, left-aligned to the right edge; keep_last cuts each prompt to its last tokens first."""
    tokenizer, calls = fake_generate
    task = get_task("reverse")
    examples = [{"digits": "1234", "answer": "4321", "demonstration": "4321"}]
    graded = eval_lib.evaluate(None, None, tokenizer, task, examples, SAMPLER, keep_last=10, strict=True,
                               batching=eval_lib.Batching(rows_per_device=3, prompt_bucket=16))
    assert calls[0].ids.shape == (3, 16) and calls[0].rng is None
    assert calls[0].mask[:, :6].sum() == 0 and calls[0].mask[:, 6:].all()  # 10 prompt tokens, left-padded
    assert graded[0].strict.correct == 1.0 and graded[0].reward is None


def test_calls_group_by_bucket_and_cover_every_example_once():
    lengths = [5, 70, 64, 1, 130, 65, 7]
    invariant = eval_lib.calls(lengths, eval_lib.Batching(rows_per_device=2, prompt_bucket=64), batch_ways=1)
    assert invariant == [([0, 2], 64), ([3, 6], 64), ([1, 5], 128), ([4], 192)]
    assert eval_lib.calls(lengths, eval_lib.Batching(rows_per_device=1, prompt_bucket=64), batch_ways=3)[0] == (
        [0, 2, 3], 64)
    per_batch = eval_lib.calls(lengths, eval_lib.Batching(mode="per_batch", batch_size=3))
    assert per_batch == [([0, 1, 2], 70), ([3, 4, 5], 130), ([6], 7)]
    with pytest.raises(ValueError, match="mode"):
        eval_lib.Batching(mode="longest")


def test_greedy_keeps_the_rollout_lengths_and_fills_eos_after_an_eos_block():
    rollout = SamplerConfig(steps=8, gen_length=8, block_length=8, temperature=1.0, remasking="random", record=True,
                            early_stop=False)
    assert eval_lib.greedy(rollout) == SamplerConfig(steps=8, gen_length=8, block_length=8, early_stop=True)


def test_select_takes_all_or_a_seeded_sorted_sample():
    assert eval_lib.select(5, None, 0) == eval_lib.select(5, 9, 0) == [0, 1, 2, 3, 4]
    sample = eval_lib.select(1000, 10, 3)
    assert sample == sorted(sample) and len(set(sample)) == 10 and sample == eval_lib.select(1000, 10, 3)
    assert sample != eval_lib.select(1000, 10, 4)


def test_trainer_eval_and_the_cli_grade_identically(tmp_path):
    """The trainer's periodic eval and `experiments.eval --sample` score the same examples with the same
    per-example completions and scores (demo model, random init, saved as a model folder for the CLI)."""
    from dllm_rl.rl.train import Trainer
    from experiments import eval as eval_cli
    from experiments.run import parse_config

    cfg = parse_config(["experiments/configs/demo.gin"], ["dllm_rl.TrainConfig.eval_examples = 6",
                                                          "dllm_rl.TrainConfig.eval_rows_per_device = 4"])
    trainer = Trainer(cfg, tmp_path / "run")
    graded = trainer.grade(trainer.base_params)
    trainer.export(trainer.base_params, str(tmp_path / "model"))
    task, split = cfg.train.task, cfg.train.eval_split
    eval_cli.main(["--task", task, "--split", split, "--lengths", "8", "--block_length", "8", "--steps_per_token",
                   "1", "--rows_per_device", "4", "--sample", "6", "--ckpt_dir", str(tmp_path / "model"),
                   "--out_dir", str(tmp_path / "eval")])
    rows = [json.loads(line) for line in (tmp_path / "eval" / f"{task}_{split}_len8.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == trainer.eval_set[0] and len(rows) == 6
    assert [r["prompt"] for r in rows] == [g.prompt for g in graded]
    assert [r["completion"] for r in rows] == [g.completion for g in graded]
    assert [(r["extracted"], r["correct"]) for r in rows] == [(g.score.extracted, g.score.correct) for g in graded]


@pytest.fixture
def half_right_generate(monkeypatch):
    """`generate` that answers `increment dddd` right when the first digit is even and copies the digits when it
    is odd, so the exact accuracy of any example set is known without a model."""
    import re

    from dllm_rl.assets import DEMO_MODEL_DIR
    from dllm_rl.tasks.increment import increment

    tokenizer = Tokenizer.from_dir(DEMO_MODEL_DIR)

    def generate(config, params, prompt_ids, sampler, *, attention_mask, rng, mesh):
        rows = []
        for ids in np.asarray(prompt_ids):
            digits = re.search(r"increment (\d{4})", tokenizer.decode(ids.tolist())).group(1)
            answer = increment(digits) if int(digits[0]) % 2 == 0 else digits
            ids_L = tokenizer.encode(answer)
            rows.append(ids_L + [tokenizer.eos_token_id] * (sampler.gen_length - len(ids_L)))
        return types.SimpleNamespace(tokens=np.concatenate([np.asarray(prompt_ids), np.asarray(rows, np.int32)], 1))

    monkeypatch.setattr(eval_lib, "generate", generate)

    def expected(examples):
        right = [int(e["digits"][0]) % 2 == 0 for e in examples]
        return sum(right) / len(right), float(np.mean([3.25 if r else 0.25 + 3.0 * sum(
            a == b for a, b in zip(e["digits"], e["answer"])) / 4 for r, e in zip(right, examples)]))
    return expected


def test_trainer_evaluation_reports_the_exact_accuracy_and_reward(tmp_path, half_right_generate):
    from dllm_rl.rl.train import Trainer
    from experiments.run import parse_config

    trainer = Trainer(parse_config(["experiments/configs/demo.gin"], ["dllm_rl.TrainConfig.eval_examples = 40",
                                                                      "dllm_rl.TrainConfig.eval_rows_per_device = 16"]),
                      tmp_path)
    accuracy, reward = half_right_generate(trainer.eval_set[1])
    assert 0 < accuracy < 1
    row = trainer.evaluate(trainer.base_params, step=0)
    assert row["eval_accuracy"] == pytest.approx(accuracy) and row["eval_reward_mean"] == pytest.approx(reward)
    lines = (tmp_path / "eval" / "step_0.jsonl").read_text().splitlines()
    assert [json.loads(line)["correct"] for line in lines] == [float(int(e["digits"][0]) % 2 == 0)
                                                               for e in trainer.eval_set[1]]


def test_cli_summary_reports_the_exact_accuracy(tmp_path, half_right_generate):
    from dllm_rl.assets import DEMO_MODEL_DIR
    from dllm_rl.checkpoint import copy_side_files, load_model, save_orbax
    from experiments import eval as eval_cli

    config, params = load_model(init_config=DEMO_MODEL_DIR / "config.json")
    save_orbax(str(tmp_path / "model"), config, params)
    copy_side_files(str(DEMO_MODEL_DIR), str(tmp_path / "model"))
    summary = eval_cli.main(["--task", "increment", "--lengths", "8", "--block_length", "8", "--steps_per_token",
                             "1", "--batch_size", "8", "--sample", "30", "--ckpt_dir", str(tmp_path / "model"),
                             "--out_dir", str(tmp_path / "eval")])
    test = get_task("increment").load("test")
    accuracy, _ = half_right_generate([test[i] for i in eval_lib.select(len(test), 30, 0)])
    assert 0 < accuracy < 1
    assert summary["increment"]["8"]["accuracy"] == pytest.approx(100 * accuracy)
    assert summary["increment"]["8"]["accuracy_strict"] == pytest.approx(100 * accuracy)


class _VariedIncrement:
    """`increment` with prompts of 37 to 79 tokens (0-6 leading "please "): a GSM8K-like spread of prompt lengths
    on a model whose context is 128 tokens."""

    def __new__(cls):
        from dllm_rl.tasks.increment import Increment

        class VariedIncrement(Increment):
            def prompt(self, example, style="agrpo"):
                words = "please " * (int(example["digits"]) % 7)
                return [{"role": "user", "content": f"{words}increment {example['digits']}"}]

        return VariedIncrement()


@pytest.fixture(scope="module")
def tiny_bf16(tiny_dir, tiny_tokenizer_dir):
    from dllm_rl.checkpoint import load_hf

    config, params = load_hf(tiny_dir, dtype="bfloat16")
    return config, params, Tokenizer.from_dir(tiny_tokenizer_dir), _VariedIncrement()


INVARIANCE_SAMPLER = SamplerConfig(steps=16, gen_length=32, block_length=16)


def _completions(tiny_bf16, indices, batching):
    config, params, tokenizer, task = tiny_bf16
    examples = task.load("test")[::80]
    graded = eval_lib.evaluate(config, params, tokenizer, task, [examples[i] for i in indices], INVARIANCE_SAMPLER,
                               batching=batching)
    return {i: g.completion for i, g in zip(indices, graded)}


def test_bf16_completions_do_not_depend_on_the_batch_they_are_evaluated_in(tiny_bf16):
    """bf16, prompts of 37-79 tokens: each example's invariant-batching completion is the same whether it is
    evaluated with all 24 examples, with 5 others in a shuffled order, or alone. The reference's per-batch padding
    (what evaluation did before) changes completions with the batch size on the same model and examples."""
    invariant = eval_lib.Batching(rows_per_device=4, prompt_bucket=16)
    everything = _completions(tiny_bf16, list(range(24)), invariant)
    for subset in ([20, 3, 17, 5, 11], [9], list(range(23, -1, -3))):
        assert _completions(tiny_bf16, subset, invariant) == {i: everything[i] for i in subset}, subset
    per_batch = [_completions(tiny_bf16, list(range(24)), eval_lib.Batching(mode="per_batch", batch_size=n))
                 for n in (3, 24)]
    assert per_batch[0] != per_batch[1]  # the power of the check above, on this model and platform


INVARIANCE_ON_DEVICES = """
import json, sys
sys.path.insert(0, {tests!r})
from test_evaluate import _VariedIncrement, INVARIANCE_SAMPLER
from dllm_rl.checkpoint import load_hf
from dllm_rl.parallel import mesh as mesh_lib
from dllm_rl.rl import evaluate as eval_lib
from dllm_rl.tokenizer import Tokenizer
task = _VariedIncrement()
tokenizer = Tokenizer.from_dir({tokenizer!r})
examples = task.load("test")[::80][:13]
out = {{}}
for name, shape in (("data", {{"data": -1, "fsdp": 1, "tensor": 1}}), ("fsdp", {{"data": 1, "fsdp": -1, "tensor": 1}})):
    mesh = mesh_lib.make_mesh(shape)
    config, params = load_hf({model!r}, dtype="bfloat16", shardings=mesh_lib.param_shardings(mesh))
    batching = eval_lib.Batching(rows_per_device=2, prompt_bucket=16)
    for subset in ("all", "some"):
        chosen = examples if subset == "all" else examples[3:6]
        graded = eval_lib.evaluate(config, params, tokenizer, task, chosen, INVARIANCE_SAMPLER, mesh=mesh,
                                   batching=batching)
        out[name + "_" + subset] = [g.completion for g in graded]
print("RESULT" + json.dumps(out))
"""


def test_bf16_completions_on_one_and_four_devices(tiny_dir, tiny_tokenizer_dir):
    """Invariant batching, 13 examples (not a multiple of the 8 rows a 4-device call holds): a data-parallel mesh
    of 4 fake devices gives the one-device completions; on a 4-device FSDP mesh an example's completion does not
    depend on the others evaluated with it. (Across FSDP sizes it can: XLA splits the weights' contraction over
    the devices, as tensor parallelism does; that case is documented, not claimed.)"""
    import os
    import subprocess
    import sys

    code = INVARIANCE_ON_DEVICES.format(tests=os.path.dirname(__file__), tokenizer=str(tiny_tokenizer_dir),
                                        model=str(tiny_dir))
    results = []
    for devices in (1, 4):
        env = fake_devices_env(devices)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads(proc.stdout.split("RESULT", 1)[1]))
    one, four = results
    assert one["data_all"] == one["fsdp_all"] == four["data_all"]
    for run in (one, four):
        for mesh in ("data", "fsdp"):
            assert run[f"{mesh}_some"] == run[f"{mesh}_all"][3:6]
