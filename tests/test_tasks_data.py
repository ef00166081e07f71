"""The Grain pipeline: per-host shards are disjoint, shuffled per epoch, and resume exactly from a state."""
import pytest

from dllm_rl.tasks import get_task, make_dataset


def test_grain_pipeline_shards_shuffles_and_resumes():
    task = get_task("countdown")
    seen = []
    for shard in range(2):
        it = iter(make_dataset(task, "test", seed=3, shard_index=shard, shard_count=2, num_epochs=1))
        seen.append([str(ex) for ex in it])
    assert len(seen[0]) == len(seen[1]) == 128 and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(str(ex) for ex in task.load("test"))
    assert seen[0] != [str(ex) for ex in task.load("test")[0::2]]  # shuffled

    ds = make_dataset(task, "test", seed=3, shard_index=0, shard_count=2)
    it = iter(ds)
    first_epoch = [next(it) for _ in range(128)]
    state = it.get_state()
    rest = [next(it) for _ in range(5)]
    resumed = iter(ds)
    resumed.set_state(state)
    assert [next(resumed) for _ in range(5)] == rest
    assert rest != first_epoch[:5]  # a new order in the second epoch
    with pytest.raises(ValueError, match="shard_index"):
        make_dataset(task, "test", seed=0, shard_index=2, shard_count=2)
