"""dllm_rl.cli: every user mistake on a command line ends in one `error:` line on stderr and exit code 2."""
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from dllm_rl import cli

# experiments/run.py is wrapped through the same helper; spelled out here so the test does not depend on its
# `__main__` block.
RUN = [sys.executable, "-c", "from dllm_rl.cli import run_main; from experiments.run import main; run_main(main)"]
DEMO = ["--gin", "experiments/configs/demo.gin", "--gin_binding", "dllm_rl.TrainConfig.sft_steps=0",
        "--gin_binding", "dllm_rl.TrainConfig.num_steps=1", "--no_progress"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module(name):
    return [sys.executable, "-m", name]


def mistakes(tmp, tiny_tokenizer_dir):
    """(command, words the one line must contain) for each mistake."""
    no_tokenizer = tmp / "model_without_tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text("{}")
    eval_ = module("experiments.eval") + ["--out_dir", str(tmp / "eval")]
    return {
        "missing folder": (eval_ + ["--task", "gsm8k", "--ckpt_dir", str(tmp / "nowhere")], ["nowhere", "--ckpt_dir"]),
        "missing tokenizer": (eval_ + ["--task", "gsm8k", "--ckpt_dir", str(no_tokenizer)], ["tokenizer.json", "copy"]),
        "bad task name": (eval_ + ["--task", "gsm9k", "--ckpt_dir", str(tiny_tokenizer_dir)], ["gsm9k", "gsm8k"]),
        "gin typo": (RUN + DEMO + ["--workdir", str(tmp / "w1"), "--gin_binding", "dllm_rl.TrainConfig.num_stepz=2"],
                     ["num_stepz", "--gin_binding"]),
        "config does not fit": (RUN + DEMO + ["--workdir", str(tmp / "w2"), "--gin_binding",
                                              "rollout/dllm_rl.SamplerConfig.block_length=3"], ["block_length 3"]),
        "convert missing folder": (module("dllm_rl.convert") + ["--hf_dir", str(tmp / "nohf"), "--out_dir",
                                                                str(tmp / "o")], ["nohf"]),
        "export missing folder": (module("dllm_rl.export") + ["--ckpt_dir", str(tmp / "nockpt"), "--out_dir",
                                                              str(tmp / "x"), "--format", "hf"], ["nockpt"]),
        "plot missing workdir": (module("experiments.plot") + ["--workdir", str(tmp / "norun")], ["norun", "metrics"]),
        "no cluster to join": (module("dllm_rl.parallel.multihost") + ["--distributed"],
                               ["--distributed", "--coordinator_address"]),
    }


@pytest.mark.parametrize("name", ["missing folder", "missing tokenizer", "bad task name", "gin typo",
                                  "config does not fit", "convert missing folder", "export missing folder",
                                  "plot missing workdir", "no cluster to join"])
def test_a_user_mistake_is_one_line_and_exit_code_2(name, tmp_path, tiny_tokenizer_dir):
    command, words = mistakes(tmp_path, tiny_tokenizer_dir)[name]
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(w in lines[0] for w in words), lines[0]


def help_examples(command: str) -> list[list[str]]:
    """The example command lines (`python -m COMMAND ...`, continuation lines joined) that `COMMAND --help` shows,
    as argument lists after the module name."""
    text = subprocess.run(module(command) + ["--help"], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True).stdout
    text = text.replace("\\\n", " ")
    lines = [line.split("#")[0].strip() for line in text.splitlines() if line.strip().startswith(f"python -m {command} ")]
    return [shlex.split(line)[3:] for line in lines]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_dir, tiny_tokenizer_dir):
    """The tiny golden checkpoint as an Orbax model folder with the tiny tokenizer (what convert writes), made once
    for the module (the tests below only read it)."""
    from dllm_rl.convert import convert

    out = tmp_path_factory.mktemp("cli") / "tiny_model"
    convert(str(tiny_dir), str(out), "float32", progress=False)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer_dir / name, out / name)
    return out


def example_cases(tmp, tiny_dir, model):
    """Per command: (which of its --help examples runs, placeholder → path substitutions, arguments appended to
    shrink it to this machine: argparse keeps a repeated flag's last value)."""
    run_dir = tmp / "demo_run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 0, "reward_mean": 0.1, "eval_accuracy": 0.0}) + "\n"
                                           + json.dumps({"step": 1, "reward_mean": 0.5}) + "\n")
    tiny_eval = ["--lengths", "32", "--block_length", "32", "--limit", "1", "--batch_size", "1",
                 "--max_prompt_tokens", "48"]
    tiny_run = [a for b in ("dllm_rl.TrainConfig.num_steps=1", "dllm_rl.TrainConfig.sft_steps=0",
                            "dllm_rl.TrainConfig.eval_every=0", "dllm_rl.TrainConfig.export_final_model=False",
                            "dllm_rl.TrainConfig.prompts_per_micro_batch=1", "dllm_rl.AGRPOConfig.num_generations=2",
                            "dllm_rl.AGRPOConfig.mc_samples=1") for a in ("--gin_binding", b)] + ["--no_progress"]
    return {
        "experiments.eval": (1, {"/path/llada8b": str(model), "runs/base_eval": str(tmp / "eval")}, tiny_eval),
        "experiments.plot": (0, {"/tmp/dllm_demo": str(run_dir)}, []),
        "experiments.run": (0, {"/tmp/demo": str(tmp / "run")}, tiny_run),
        "dllm_rl.convert": (0, {"/path/to/LLaDA-8B-Instruct": str(tiny_dir), "/path/to/llada8b": str(tmp / "c")}, []),
        "dllm_rl.export": (2, {"W/final_model": str(model), "OUT": str(tmp / "hf")}, []),
        # one process: a job of its own, started from the flags instead of a cluster's environment
        "dllm_rl.parallel.multihost": (0, {}, ["--coordinator_address", f"127.0.0.1:{_free_port()}",
                                               "--num_processes", "1", "--process_id", "0"]),
    }


@pytest.mark.parametrize("command", ["experiments.eval", "experiments.plot", "experiments.run", "dllm_rl.convert",
                                     "dllm_rl.export", "dllm_rl.parallel.multihost"])
def test_the_example_in_each_help_runs(command, tmp_path, tiny_dir, tiny_model):
    """The example every --help shows runs as written, its paths pointed at tiny fixtures and its sizes shrunk by
    appended flags (experiments.aot, bench and sweep run theirs in test_aot.py, test_bench.py, test_sweep.py)."""
    index, substitutions, tiny = example_cases(tmp_path, tiny_dir, tiny_model)[command]
    example = help_examples(command)[index]
    for placeholder in substitutions:
        assert any(placeholder in a for a in example), (placeholder, example)
    args = [functools.reduce(lambda a, kv: a.replace(*kv), substitutions.items(), a) for a in example]
    result = subprocess.run(module(command) + args + tiny, capture_output=True, text=True, timeout=600, cwd=REPO,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, (args, result.stderr[-3000:])


def test_bugs_keep_their_traceback_and_results_become_exit_codes():
    assert cli.user_error_message(TypeError("a bug")) is None
    assert cli.user_error_message(ValueError("not from gin")) is None
    assert cli.user_error_message(KeyError("x")) is None
    assert cli.user_error_message(FileNotFoundError(2, "No such file or directory", "/p")) == \
        "/p: No such file or directory; check the path"
    with pytest.raises(TypeError):
        cli.run_main(lambda argv: (_ for _ in ()).throw(TypeError("a bug")))
    for returned, code in ((3, 3), ({"result": 1}, 0), (None, 0)):
        with pytest.raises(SystemExit) as exit_info:
            cli.run_main(lambda argv: returned)
        assert exit_info.value.code == code


def test_one_line_joins_a_multi_line_message():
    assert cli.one_line("No configurable 'x'.\n  In bindings string line 1\n    x.y=1") == \
        "No configurable 'x'; In bindings string line 1; x.y=1"


def test_mesh_flag_parses_axis_sizes_or_says_how_to_write_them():
    import argparse

    assert cli.mesh_flag("data=1, fsdp=8,tensor=1") == {"data": 1, "fsdp": 8, "tensor": 1}
    assert cli.mesh_flag("data=1,fsdp=-1") == {"data": 1, "fsdp": -1}
    with pytest.raises(argparse.ArgumentTypeError, match="data=1,fsdp=8,tensor=1"):
        cli.mesh_flag("fsdp:8")


def test_the_library_never_imports_the_entry_points():
    """`dllm_rl` stands alone: no module of the package imports `experiments` (the gin entry points)."""
    import ast
    import pathlib

    offenders = []
    for path in pathlib.Path(REPO, "dllm_rl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path}: {n}" for n in names if n == "experiments" or n.startswith("experiments.")]
    assert not offenders, offenders


@pytest.mark.parametrize("tool", ["convert", "export"])
def test_file_tools_run_on_the_cpu_backend_whatever_jax_platforms_says(tool, tmp_path, tiny_dir, tiny_model):
    """On a TPU VM the converter and the exporter must not initialise the TPU (a lone worker of a slice would wait
    for its peers; a running job holds the chips): with JAX_PLATFORMS=tpu on this machine, which has no TPU, they
    still work."""
    if tool == "convert":
        command = module("dllm_rl.convert") + ["--hf_dir", str(tiny_dir), "--out_dir", str(tmp_path / "out")]
    else:
        command = module("dllm_rl.export") + ["--ckpt_dir", str(tiny_model), "--out_dir", str(tmp_path / "out"),
                                              "--format", "hf"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO,
                            env=dict(os.environ, JAX_PLATFORMS="tpu"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "config.json").exists()
