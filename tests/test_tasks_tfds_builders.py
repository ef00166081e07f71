"""TFDS path: builders write the shipped splits as ArrayRecord offline, and `tfds.data_source` reads them back."""
import pytest
import tensorflow_datasets as tfds

from dllm_rl.tasks import get_task, tfds_builders


def test_gsm8k_builds_offline_with_the_official_schema(tmp_path):
    tfds_builders.build("gsm8k", tmp_path)
    for split in ("train", "test"):
        source = tfds.data_source("gsm8k_local", data_dir=str(tmp_path), split=split)
        expected = get_task("gsm8k").load(split)
        assert len(source) == len(expected)
        first = source[0]
        assert set(first) == {"question", "answer"}
        assert first["answer"].decode() == expected[0]["solution"]  # file order is kept
        assert tfds_builders.load("gsm8k", split, tmp_path) == expected


@pytest.mark.parametrize("task_name,fields", [("math", None), ("countdown", ("nums", "target")), ("sudoku", None)])
def test_other_tasks_round_trip(tmp_path, task_name, fields):
    tfds_builders.build(task_name, tmp_path)
    split = get_task(task_name).default_eval_split
    expected = get_task(task_name).load(split)
    if fields:
        expected = [{k: ex[k] for k in fields} for ex in expected]
    assert tfds_builders.load(task_name, split, tmp_path) == expected
