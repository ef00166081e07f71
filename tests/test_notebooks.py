"""The notebooks run end to end: quickstart.ipynb on CPU with a tiny training budget, llada_8b.ipynb without
weights (every weights cell skips with a message). Executed with nbclient in a fresh kernel, no network."""
import pathlib

import pytest

nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' installs nbclient and ipykernel")
nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str) -> list[str]:
    """Runs the notebook in its folder (as Jupyter would) and returns every cell's text output."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return ["".join(o.get("text", "") for o in cell.get("outputs", [])) for cell in notebook.cells
            if cell.cell_type == "code"]


def test_quickstart_runs_the_demo_and_draws_its_pictures(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_RL_QUICK", "1")
    monkeypatch.setenv("DLLM_RL_WORKDIR", str(tmp_path))
    outputs = execute("quickstart.ipynb")
    assert "using the checkout at" in outputs[0]  # the local code, no pip install
    assert "held-out accuracy" in "".join(outputs)
    assert (tmp_path / "plots" / "overview.png").exists() and (tmp_path / "final_model").is_dir()


def test_llada_8b_skips_every_weights_cell_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("LLADA_WEIGHTS_DIR", str(tmp_path / "no_weights"))
    outputs = execute("llada_8b.ipynb")
    skipped = [o for o in outputs if o.startswith("skipped: no LLaDA weights")]
    assert len(skipped) == 5, outputs
