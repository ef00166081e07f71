"""The notebooks run end to end: quickstart.ipynb on CPU with a tiny training budget, from a folder outside any
checkout (so its install cell pip-installs the package from a git URL, as on Colab), and llada_8b.ipynb without
weights (every weights cell skips with a message). Executed with nbclient in a fresh kernel."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' installs nbclient and ipykernel")
nbformat = pytest.importorskip("nbformat")

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


def execute(name: str, cwd: pathlib.Path, kernel_name: str = "python3") -> list[str]:
    """Runs the notebook with `cwd` as its folder and returns every code cell's text output."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(notebook, timeout=900, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return ["".join(o.get("text", "") for o in cell.get("outputs", [])) for cell in notebook.cells
            if cell.cell_type == "code"]


def git_repository_of_this_tree(path: pathlib.Path) -> str:
    """A git repository at `path` holding this working tree (tracked and untracked, not ignored, files), committed:
    what a user's clone of the repository holds; returns its URL."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, path / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "tree"]):
        subprocess.run(git + command, cwd=path, check=True)
    return f"file://{path}"


def kernel_in_fresh_venv(root: pathlib.Path) -> str:
    """A Jupyter kernel whose Python is a new virtual environment without dllm_rl: it sees this environment's
    other packages, pip included (one path line, not a copy), so the notebook's `pip install` installs only
    dllm_rl itself."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (pathlib.Path(site) / "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    spec = root / "jupyter" / "kernels" / "fresh"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh venv", "language": "python"}))
    return "fresh"


@pytest.mark.slow
def test_quickstart_installs_itself_outside_a_checkout_and_runs_the_demo(tmp_path, monkeypatch):
    (tmp_path / "repo").mkdir()
    url = git_repository_of_this_tree(tmp_path / "repo")
    kernel = kernel_in_fresh_venv(tmp_path)
    outside = tmp_path / "colab"
    outside.mkdir()
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("DLLM_RL_REPO_URL", url)
    monkeypatch.setenv("DLLM_RL_QUICK", "1")
    monkeypatch.setenv("DLLM_RL_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("PYTHONPATH", "")
    outputs = execute("quickstart.ipynb", outside, kernel)
    assert f"installed dllm_rl @ git+{url}" in outputs[0], outputs[0]
    location = re.search(r"dllm_rl from (\S+)", outputs[1]).group(1)
    assert location.startswith(str(tmp_path / "venv")), location  # the installed copy ran, not this checkout
    accuracies = [float(a) for a in re.findall(r"held-out accuracy (\d\.\d+) \(step \d+\) -> (\d\.\d+)",
                                               "".join(outputs))[0]]
    assert all(0.0 <= a <= 1.0 for a in accuracies), accuracies
    assert (tmp_path / "run" / "plots" / "overview.png").exists()


def test_quickstart_install_cell_says_what_to_set_without_a_url(tmp_path, monkeypatch):
    """Outside a checkout and with no REPO_URL, the first cell stops with one sentence naming what to set."""
    monkeypatch.delenv("DLLM_RL_REPO_URL", raising=False)
    notebook = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    source = notebook.cells[1].source
    result = subprocess.run([sys.executable, "-c", source], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env={k: v for k, v in os.environ.items() if k != "DLLM_RL_REPO_URL"})
    assert result.returncode != 0 and "set REPO_URL" in result.stderr, result.stderr


def test_llada_8b_skips_every_weights_cell_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("LLADA_WEIGHTS_DIR", str(tmp_path / "no_weights"))
    outputs = execute("llada_8b.ipynb", NOTEBOOKS)
    skipped = [o for o in outputs if o.startswith("skipped: no LLaDA weights")]
    assert len(skipped) == 6, outputs
