"""The data rebuild tool: AGRPO's MATH train filter, Countdown's 3-number rows, byte-reproducible gzip."""
import gzip

from dllm_rl.tasks import prepare_data


def test_math_train_filter_matches_agrpo():
    rows = [{"unique_id": "a", "level": 3, "solution": "so \\boxed{\\frac{1}{2}} and \\boxed{2}"},
            {"unique_id": "b", "level": 5, "solution": "\\boxed{1}"},        # Level 5: dropped
            {"unique_id": "c", "level": None, "solution": "\\boxed{1}"},     # unknown level: dropped
            {"unique_id": "d", "level": 2, "solution": "\\boxed{1"},         # unbalanced box: dropped
            {"unique_id": "e", "level": 1, "solution": "\\boxed{7}"}]        # in MATH-500: dropped
    kept = prepare_data.agrpo_math_train(rows, math500_ids={"e"})
    assert [(row["unique_id"], row["answer"]) for row in kept] == [("a", "\\frac{1}{2}")]  # the first box


def test_countdown_keeps_three_number_rows():
    rows = [{"nums": [1, 2, 3]}, {"nums": [1, 2, 3, 4]}]
    assert prepare_data.countdown_cd3_rows(rows) == [{"nums": [1, 2, 3]}]


def test_gzip_output_is_reproducible(tmp_path):
    data = prepare_data.jsonl_bytes([{"x": "é"}, {"y": 1}])
    prepare_data.write_gzip(tmp_path / "a" / "f.jsonl.gz", data)
    prepare_data.write_gzip(tmp_path / "b" / "f.jsonl.gz", data)
    first, second = (tmp_path / "a" / "f.jsonl.gz").read_bytes(), (tmp_path / "b" / "f.jsonl.gz").read_bytes()
    assert first == second and gzip.decompress(first) == data
