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


def test_batches_pad_the_last_one_and_keep_special_tokens(fake_generate):
    tokenizer, calls = fake_generate
    task = get_task("reverse")
    examples = [{"digits": "1234", "answer": "4321", "demonstration": "4321"},
                {"digits": "5678", "answer": "8765", "demonstration": "8765"},
                {"digits": "1234", "answer": "4321", "demonstration": "4321"}]
    key = jax.random.PRNGKey(3)
    graded = eval_lib.evaluate(None, None, tokenizer, task, examples, SAMPLER, batch_size=2, max_prompt_length=40,
                               reward_style="agrpo", rng=key)
    assert [c.ids.shape for c in calls] == [(2, 40), (2, 40)]  # one shape: the last batch repeats its final row
    np.testing.assert_array_equal(calls[1].ids[0], calls[1].ids[1])
    assert all(c.mask[:, 0].sum() == 0 and c.mask[:, -1].all() for c in calls)  # left-padded
    np.testing.assert_array_equal(np.asarray(calls[1].rng), np.asarray(jax.random.fold_in(key, 2)))
    assert calls[0].sampler == eval_lib.protocol(SAMPLER) and calls[0].sampler.early_stop
    assert [g.completion for g in graded] == ["4321" + "<|endoftext|>" * 4] * 3  # special tokens kept
    assert [g.score.correct for g in graded] == [1.0, 0.0, 1.0]
    assert [g.reward for g in graded] == [3.25, 0.25, 3.25]
    assert graded[0].strict is None and graded[0].prompt.endswith("reverse 1234<|eot_id|>"
                                                                  "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_without_a_length_prompts_take_the_longest_and_keep_last_truncates(fake_generate):
    tokenizer, calls = fake_generate
    task = get_task("reverse")
    examples = [{"digits": "1234", "answer": "4321", "demonstration": "4321"}]
    graded = eval_lib.evaluate(None, None, tokenizer, task, examples, SAMPLER, batch_size=4, keep_last=10,
                               strict=True)
    assert calls[0].ids.shape == (4, 10) and calls[0].mask.all() and calls[0].rng is None
    assert graded[0].strict.correct == 1.0 and graded[0].reward is None


def test_greedy_keeps_the_rollout_lengths_and_fills_eos_after_an_eos_block():
    rollout = SamplerConfig(steps=8, gen_length=8, block_length=8, temperature=1.0, remasking="random", record=True,
                            early_stop=False)
    assert eval_lib.greedy(rollout) == SamplerConfig(steps=8, gen_length=8, block_length=8, early_stop=True)


def test_trainer_eval_and_the_cli_grade_identically(tmp_path):
    """The trainer's periodic eval and `experiments.eval` give the same per-example completions and scores on the
    demo model (random init, saved as a model folder for the CLI)."""
    from dllm_rl.rl.train import Trainer
    from experiments import eval as eval_cli
    from experiments.run import parse_config

    cfg = parse_config(["experiments/configs/demo.gin"], ["dllm_rl.TrainConfig.eval_examples = 6",
                                                          "dllm_rl.TrainConfig.eval_batch_size = 4"])
    trainer = Trainer(cfg, tmp_path / "run")
    graded = trainer.grade(trainer.base_params)
    trainer.export(trainer.base_params, str(tmp_path / "model"))
    task = cfg.train.task  # the demo's task, whichever it is
    eval_cli.main(["--task", task, "--lengths", "8", "--block_length", "8", "--steps_per_token", "1",
                   "--batch_size", "4", "--limit", "6", "--ckpt_dir", str(tmp_path / "model"),
                   "--out_dir", str(tmp_path / "eval")])
    split = trainer.task.default_eval_split
    rows = [json.loads(line) for line in (tmp_path / "eval" / f"{task}_{split}_len8.jsonl").read_text().splitlines()]
    assert len(rows) == len(graded) == 6
    assert [r["prompt"] for r in rows] == [g.prompt for g in graded]
    assert [r["completion"] for r in rows] == [g.completion for g in graded]
    assert [(r["extracted"], r["correct"]) for r in rows] == [(g.score.extracted, g.score.correct) for g in graded]
