"""Readers of the shipped data files: cached rows, CSV fields kept as strings, a clear missing-file error."""
import pytest

from dllm_rl.tasks import files


def test_readers_return_cached_rows():
    rows = files.read_jsonl("countdown/countdown_cd3_test.jsonl")
    assert len(rows) == 256 and rows is files.read_jsonl("countdown/countdown_cd3_test.jsonl")
    assert sorted(files.read_indices("countdown/d1_eval_subsample_indices.json")) == list(range(256))
    sudoku = files.read_csv("sudoku/4x4_test_sudoku.csv")
    assert len(sudoku) == 500 and all(isinstance(v, str) for v in sudoku[0].values())


def test_a_missing_file_names_the_rebuild_command():
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        files.data_path("gsm8k/missing.jsonl.gz")
