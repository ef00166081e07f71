"""`atomic_directory`: the destination appears whole or not at all, no temporary sibling is left behind."""
import pytest

from dllm_rl.atomic import atomic_directory


def test_success_replaces_the_destination(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_directory(out) as tmp:
        assert not (tmp_path / "model" / "new.txt").exists()
        (tmp_path / tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_failure_keeps_the_old_destination_and_removes_the_temporary(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_directory(out) as tmp:
            (tmp_path / tmp / "half.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_creates_missing_parents(tmp_path):
    with atomic_directory(tmp_path / "a" / "b" / "model") as tmp:
        (tmp_path / tmp / "x").write_text("x")
    assert (tmp_path / "a" / "b" / "model" / "x").read_text() == "x"
