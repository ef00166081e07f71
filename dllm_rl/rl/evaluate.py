"""Held-out evaluation, one protocol for the trainer's periodic eval and `experiments/eval.py`.

Prompts are rendered with the task's template and left-padded by the tokenizer into one [N, P] array (P: the
longest prompt, or `max_prompt_length`), so every batch has one shape and one program is compiled; the last
batch is padded by repeating its final row. Every evaluation decodes without recording and with early stop: once a
block is all EOS the rest is filled with EOS, as the official eval's sampler does, so text after the EOS run is
never generated or graded. Completions are decoded with special tokens kept (as AGRPO's eval
does) and graded with `task.score` (and, on request, the strict score and the training reward). Multi-host, every
process samples its share of each batch, then gets all rows and grades them all (the same numbers everywhere).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import numpy as np

from dllm_rl import paths
from dllm_rl.parallel import multihost
from dllm_rl.sampling import SamplerConfig, generate
from dllm_rl.tasks import Score, Task, render_prompts


@dataclasses.dataclass(frozen=True)
class Graded:
    """One evaluated example: its prompt and completion, the default score, and the optional extras."""

    prompt: str
    completion: str
    score: Score
    strict: Score | None = None
    reward: float | None = None


def protocol(sampler: SamplerConfig) -> SamplerConfig:
    """The evaluation form of any sampler: no recording, EOS fill after an all-EOS block (early stop)."""
    return dataclasses.replace(sampler, record=False, early_stop=True)


def greedy(sampler: SamplerConfig) -> SamplerConfig:
    """The papers' eval decoding on the rollout's lengths: temperature 0, low-confidence remasking."""
    return protocol(dataclasses.replace(sampler, temperature=0.0, remasking="low_confidence"))


def complete(model_config, params, tokenizer, ids_NxP: np.ndarray, mask_NxP: np.ndarray, sampler: SamplerConfig,
             *, batch_size: int, rng: jax.Array | None = None, mesh=None) -> list[str]:
    """Completions of every row of the left-padded prompts, in batches of `batch_size` (rows beyond the end
    repeat the last one); batch `i` samples with `fold_in(rng, i * batch_size)` when `rng` is given."""
    completions = []
    for start in range(0, len(ids_NxP), batch_size):
        rows = np.arange(start, start + batch_size).clip(max=len(ids_NxP) - 1)
        key = None if rng is None else jax.random.fold_in(rng, start)
        rollout = generate(model_config, params, ids_NxP[rows], sampler, attention_mask=mask_NxP[rows], rng=key,
                           mesh=mesh)
        tokens_BxL = multihost.all_rows(rollout.tokens)[: len(ids_NxP) - start, ids_NxP.shape[1]:]
        completions += tokenizer.batch_decode(tokens_BxL, skip_special_tokens=False)
    return completions


def evaluate(model_config, params, tokenizer, task: Task, examples: Sequence[dict], sampler: SamplerConfig, *,
             batch_size: int, prompt_style: str = "agrpo", max_prompt_length: int | None = None,
             keep_last: int | None = None, strict: bool = False, reward_style: str | None = None,
             rng: jax.Array | None = None, mesh=None) -> list[Graded]:
    """Generates (with `protocol(sampler)`) and grades one completion per example. `keep_last` keeps only each
    prompt's last tokens (small test models); `strict` adds the strict score, `reward_style` the training
    reward's total."""
    prompts = render_prompts(tokenizer, task, examples, style=prompt_style)
    ids_NxP, mask_NxP = tokenizer.batch_encode(prompts, max_length=max_prompt_length, keep_last=keep_last)
    completions = complete(model_config, params, tokenizer, ids_NxP, mask_NxP, protocol(sampler),
                           batch_size=batch_size, rng=rng, mesh=mesh)
    return [Graded(prompt, text, task.score(text, ex), task.score(text, ex, strict=True) if strict else None,
                   task.reward(text, ex, style=reward_style).total if reward_style else None)
            for prompt, text, ex in zip(prompts, completions, examples)]


def select(num_examples: int, count: int | None, seed: int) -> list[int]:
    """Indices of the examples an evaluation scores: all of them when `count` is None or covers the split, else
    `count` drawn without replacement by `seed` (sorted), so every run that names the same count and seed scores
    the same examples, whatever else differs between them."""
    if count is None or count >= num_examples:
        return list(range(num_examples))
    return sorted(np.random.default_rng(seed).choice(num_examples, size=count, replace=False).tolist())


def records(task: Task, examples: Sequence[dict], indices: Sequence[int], graded: Sequence[Graded]) -> list[dict]:
    """One JSON-ready row per evaluated example (its index in the split, prompt, completion, reference, the
    extracted answer and correctness, and the strict score and training reward when graded)."""
    rows = []
    for index, example, g in zip(indices, examples, graded):
        row = {"index": int(index), "prompt": g.prompt, "completion": g.completion,
               "reference": task.reference_answer(example), "extracted": g.score.extracted,
               "correct": g.score.correct}
        if g.strict is not None:
            row.update(extracted_strict=g.strict.extracted, correct_strict=g.strict.correct)
        if g.reward is not None:
            row["reward"] = g.reward
        rows.append(row)
    return rows


def write_records(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """`rows` as JSON lines at `path` (local or gs://), replaced atomically."""
    target = paths.absolute(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    paths.replace_bytes(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
