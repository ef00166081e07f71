"""TFDS builders for the shipped task data (optional path; the Grain pipeline in `data.py` needs none of this).

TFDS works here without TensorFlow only through ArrayRecord files read with `tfds.data_source`
(`tfds.load` needs TensorFlow), and its built-in gsm8k builder downloads from GitHub. These builders
instead read the files shipped in `dllm_rl/tasks/data` (via `Task.load`), so they build offline:

    build("gsm8k", data_dir)                       # writes <data_dir>/gsm8k_local/1.0.0/*.array_record
    source = tfds.data_source("gsm8k_local", data_dir=data_dir, split="test")
    examples = load("gsm8k", "test", data_dir)     # the same dicts as get_task("gsm8k").load("test")

gsm8k keeps the official TFDS schema (`question`, `answer` = the worked solution ending in `#### n`).
Records keep file order (shuffling disabled), so row i is example i. Countdown's generated `train`
split also has a reference `solution`; it is not stored (the feature set is shared by all splits).
Not imported by `dllm_rl.tasks`: importing TFDS takes a while. `code_path = None`: TFDS 4.9.10 looks up
a packaged builder's source (for checksum files these builders do not have) through the
`importlib_resources` backport, which is not installed here.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from dllm_rl.tasks.base import get_task
from dllm_rl.tasks.gsm8k import final_answer

VERSION = "1.0.0"


@dataclasses.dataclass(frozen=True)
class _Schema:
    """A task's TFDS features and the conversions between its examples and TFDS records."""

    features: dict[str, tfds.features.FeatureConnector]
    to_record: Callable[[dict], dict]
    from_record: Callable[[dict], dict]


def _text(*names: str) -> dict[str, tfds.features.FeatureConnector]:
    return {name: tfds.features.Text() for name in names}


def _decoded(record: dict) -> dict:
    """A `tfds.data_source` record with Text bytes decoded and arrays as lists of ints."""
    return {k: v.decode("utf-8") if isinstance(v, bytes) else v.tolist() if hasattr(v, "tolist") else v
            for k, v in record.items()}


def _fields(*names: str) -> Callable[[dict], dict]:
    return lambda example: {name: example[name] for name in names}


_MATH_FIELDS = ("problem", "solution", "answer", "subject", "level", "unique_id")

SCHEMAS: dict[str, _Schema] = {
    "gsm8k": _Schema(
        features=_text("question", "answer"),
        to_record=lambda ex: {"question": ex["question"], "answer": ex["solution"]},
        from_record=lambda r: {"question": r["question"], "solution": r["answer"],
                               "answer": final_answer(r["answer"])}),
    "math": _Schema(
        features={**_text("problem", "solution", "answer", "subject", "unique_id"), "level": tfds.features.Scalar(np.int32)},
        to_record=_fields(*_MATH_FIELDS), from_record=_fields(*_MATH_FIELDS)),
    "countdown": _Schema(
        features={"nums": tfds.features.Sequence(tfds.features.Scalar(np.int64)), "target": tfds.features.Scalar(np.int64)},
        to_record=_fields("nums", "target"), from_record=_fields("nums", "target")),
    "sudoku": _Schema(features=_text("puzzle", "answer"), to_record=_fields("puzzle", "answer"),
                      from_record=_fields("puzzle", "answer")),
}


def _builder_class(task_name: str) -> type[tfds.core.GeneratorBasedBuilder]:
    """A builder named `<task>_local` writing every split of the task from the shipped files."""
    task, schema = get_task(task_name), SCHEMAS[task_name]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=f"dllm_rl {task_name}, from the shipped files",
                                     features=tfds.features.FeaturesDict(schema.features), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in task.splits}

    def _generate_examples(self, split):
        for index, example in enumerate(task.load(split)):
            yield index, schema.to_record(example)

    return type(f"{task_name.capitalize()}Local", (tfds.core.GeneratorBasedBuilder,), {
        "VERSION": tfds.core.Version(VERSION), "__module__": __name__, "code_path": None, "_info": _info,
        "_split_generators": _split_generators, "_generate_examples": _generate_examples})


BUILDERS = {name: _builder_class(name) for name in SCHEMAS}


def dataset_name(task_name: str) -> str:
    return BUILDERS[task_name].name


def build(task_name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """Writes every split of `task_name` as ArrayRecord under `data_dir` (a no-op when already built)."""
    builder = BUILDERS[task_name](data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return builder


def load(task_name: str, split: str, data_dir: str) -> list[dict]:
    """The built split as the task's example dicts (`Task.load` format), read with `tfds.data_source`."""
    source = tfds.data_source(dataset_name(task_name), data_dir=str(data_dir), split=split)
    return [SCHEMAS[task_name].from_record(_decoded(source[i])) for i in range(len(source))]
