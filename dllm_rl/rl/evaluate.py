"""Held-out evaluation, one protocol for the trainer's periodic eval and `experiments/eval.py`.

Prompts are rendered with the task's template, tokenised and grouped into generate calls by a `Batching`:

- `invariant` (the default): every example's completion is a function of that example alone (with the model,
  the sampler settings and the seed), not of the batch size, the other examples evaluated with it, or the number
  of data/FSDP devices. Each prompt is left-padded to its own length bucket (the smallest multiple of
  `prompt_bucket` that holds it, so its positions and the program's sequence length never depend on other
  prompts), the prompts of one bucket are generated `rows_per_device` rows per batch device at a time (one
  program shape per bucket, the same per-device shape on any number of devices), and the rows that fill the last
  call are copies whose outputs are dropped. Tensor parallelism splits the model's reductions over devices and
  is not covered. Sampled decoding (temperature > 0) is invariant too with a sampler that has `row_keys=True`:
  each example then samples from its own key, made from `rng` and its index in the split (`draws.row_keys`); without
  it a call draws with one key, so only greedy decoding is invariant.
- `per_batch`: the reference protocol (the official eval scripts): consecutive batches of `batch_size` examples,
  each left-padded to its own longest prompt; results can move with the batch size and composition. Use it to
  reproduce the official code's numbers.

The last call of a group is filled by repeating its final row. Every evaluation decodes without recording and with
early stop: once a block is all EOS the rest is filled with EOS, as the official eval's sampler does, so text after
the EOS run is never generated or graded. Completions are decoded with special tokens kept (as AGRPO's eval does)
and graded with `task.score` (and, on request, the strict score and the training reward). Multi-host, every
process samples its share of each call, then gets all rows and grades them all (the same numbers everywhere).
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
from dllm_rl.sampling.draws import row_keys
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


@dataclasses.dataclass(frozen=True)
class Batching:
    """How an evaluation groups prompts into generate calls (module docstring): `mode` 'invariant' (prompts padded
    to their `prompt_bucket` length bucket, `rows_per_device` rows per batch device per call) or 'per_batch' (the
    reference: `batch_size` consecutive examples per call, padded to their longest prompt)."""

    mode: str = "invariant"
    rows_per_device: int = 8
    prompt_bucket: int = 64
    batch_size: int = 8

    def __post_init__(self):
        if self.mode not in ("invariant", "per_batch"):
            raise ValueError(f"Batching.mode={self.mode!r}; choose 'invariant' or 'per_batch'")
        for name in ("rows_per_device", "prompt_bucket", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Batching.{name} must be ≥ 1, got {getattr(self, name)}")


def calls(lengths: Sequence[int], batching: Batching, batch_ways: int = 1) -> list[tuple[list[int], int]]:
    """The generate calls of an evaluation: (example indices, padded prompt length) each, every index exactly once.
    Invariant calls hold `rows_per_device × batch_ways` rows; per-batch calls `batch_size`."""
    if batching.mode == "per_batch":
        chunks = [list(range(i, min(i + batching.batch_size, len(lengths))))
                  for i in range(0, len(lengths), batching.batch_size)]
        return [(chunk, max(lengths[i] for i in chunk)) for chunk in chunks]
    width = lambda n: -(-max(n, 1) // batching.prompt_bucket) * batching.prompt_bucket  # noqa: E731
    rows = batching.rows_per_device * batch_ways
    out = []
    for padded in sorted({width(n) for n in lengths}):
        members = [i for i, n in enumerate(lengths) if width(n) == padded]
        out += [(members[i:i + rows], padded) for i in range(0, len(members), rows)]
    return out


def call_rows(batching: Batching, batch_ways: int) -> int | None:
    """Rows of every generate call (invariant; a short call is filled with copies), or None (per-batch: each
    call holds `batch_size` rows, the last one filled the same way)."""
    return batching.rows_per_device * batch_ways if batching.mode == "invariant" else batching.batch_size


def left_pad(ids: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded ids and attention mask, int32 [N, width]."""
    ids_NxP = np.full((len(ids), width), pad_id, np.int32)
    mask_NxP = np.zeros((len(ids), width), np.int32)
    for row, x in enumerate(ids):
        if len(x):
            ids_NxP[row, width - len(x):] = x
            mask_NxP[row, width - len(x):] = 1
    return ids_NxP, mask_NxP


def complete(model_config, params, tokenizer, prompt_ids: Sequence[Sequence[int]], sampler: SamplerConfig, *,
             batching: Batching = Batching(), rng: jax.Array | None = None, mesh=None,
             indices: Sequence[int] | None = None) -> list[str]:
    """Completions of every tokenised prompt, generated in the calls `batching` makes (`calls`). When `rng` is
    given, a call whose first example is example `i` samples with `fold_in(rng, i)`; with `sampler.row_keys`, each
    example with its own key from `rng` and its index (`indices`: each prompt's index in its split; default its
    position in `prompt_ids`)."""
    from dllm_rl.parallel import mesh as mesh_lib

    ways = 1 if mesh is None else mesh_lib.batch_ways(mesh)
    rows = call_rows(batching, ways)
    completions: list[str | None] = [None] * len(prompt_ids)
    for members, width in calls([len(x) for x in prompt_ids], batching, ways):
        filled = members + [members[-1]] * (rows - len(members))
        ids_BxP, mask_BxP = left_pad([prompt_ids[i] for i in filled], width, tokenizer.pad_token_id)
        if rng is None:
            key = None
        elif sampler.row_keys:
            key = row_keys(rng, [i if indices is None else indices[i] for i in filled])
        else:
            key = jax.random.fold_in(rng, members[0])
        rollout = generate(model_config, params, ids_BxP, sampler, attention_mask=mask_BxP, rng=key, mesh=mesh)
        tokens_BxL = multihost.all_rows(rollout.tokens)[: len(members), width:]
        for i, text in zip(members, tokenizer.batch_decode(tokens_BxL, skip_special_tokens=False)):
            completions[i] = text
    return completions


def evaluate(model_config, params, tokenizer, task: Task, examples: Sequence[dict], sampler: SamplerConfig, *,
             batching: Batching = Batching(), prompt_style: str = "agrpo", keep_last: int | None = None,
             strict: bool = False, reward_style: str | None = None, rng: jax.Array | None = None,
             mesh=None, indices: Sequence[int] | None = None) -> list[Graded]:
    """Generates (with `protocol(sampler)`) and grades one completion per example. `keep_last` keeps only each
    prompt's last tokens (small test models); `strict` adds the strict score, `reward_style` the training
    reward's total; `indices` (each example's index in its split) keys row-keyed sampling (`complete`)."""
    prompts = render_prompts(tokenizer, task, examples, style=prompt_style)
    prompt_ids = [tokenizer.encode(p)[-keep_last:] if keep_last else tokenizer.encode(p) for p in prompts]
    completions = complete(model_config, params, tokenizer, prompt_ids, protocol(sampler), batching=batching,
                           rng=rng, mesh=mesh, indices=indices)
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
