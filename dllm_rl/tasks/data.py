"""Grain input pipelines over task splits: seeded per-epoch shuffle, per-host sharding, checkpointable state.

    ds = make_dataset(get_task("gsm8k"), "train", seed=0, shard_index=jax.process_index(),
                      shard_count=jax.process_count())
    it = iter(ds)                      # a grain.DatasetIterator
    example = next(it)
    state = it.get_state()             # save with the train state; it.set_state(state) resumes exactly
"""
from __future__ import annotations

import grain

from dllm_rl.tasks.base import Task


def make_dataset(task: Task, split: str, seed: int, shard_index: int = 0, shard_count: int = 1, *,
                 shuffle: bool = True, num_epochs: int | None = None) -> grain.IterDataset:
    """Examples of `task`'s `split` for host `shard_index` of `shard_count`.

    Each host takes every `shard_count`-th example (so hosts see disjoint examples), then shuffles its
    shard with `seed` (a new order each epoch) and repeats `num_epochs` times (None: forever).
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    examples = task.load(split)
    if len(examples) < shard_count:
        raise ValueError(f"{task.name}/{split} has {len(examples)} examples, fewer than {shard_count} shards")
    ds = grain.MapDataset.source(examples)[shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    return ds.repeat(num_epochs).to_iter_dataset()
