"""MATH: shipped split sizes, and the train split filtered as AGRPO does."""
import pytest

from dllm_rl.tasks import get_task


@pytest.mark.parametrize("split,size", [("train", 8502), ("test", 500)])
def test_split_sizes(split, size):
    assert len(get_task("math").load(split)) == size


def test_math_train_is_filtered_like_agrpo():
    train, test = get_task("math").load("train"), get_task("math").load("test")
    assert all(row["level"] <= 4 and row["answer"] for row in train)
    assert not {row["problem"] for row in train} & {row["problem"] for row in test}
