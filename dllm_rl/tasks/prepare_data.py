"""Rebuild the shipped files under dllm_rl/tasks/data/ from the raw task data (a maintainer's tool).

    python -m dllm_rl.tasks.prepare_data --src ../shared/data

JSONL files are gzipped (mtime 0, so the bytes are reproducible). MATH train is filtered here exactly as
AGRPO's `load_math_train` does, so that only the rows used are shipped: MATH-500 problems removed (the
source already excludes them), Level 5 and unknown levels dropped, rows kept only when the solution has
a balanced `\\boxed{}` (the first one, as AGRPO's `extract_boxed` takes it, becomes `answer`).
Countdown keeps the 3-number rows of the upstream prefix (rows 0..10001 of Countdown-Tasks-3to4).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import pathlib
import shutil

from dllm_rl.tasks.extract import extract_boxed

DATA_DIR = pathlib.Path(__file__).with_name("data")

COPIED = {  # shipped name: source name (copied byte for byte)
    "countdown/countdown_cd3_test.jsonl": "countdown/countdown_cd3_test.jsonl",
    "countdown/d1_eval_subsample_indices.json": "countdown/d1_eval_subsample_indices.json",
    "sudoku/4x4_test_sudoku.csv": "sudoku/4x4_test_sudoku.csv",
    "sudoku/d1_eval_subsample_indices.json": "sudoku/d1_eval_subsample_indices.json",
}
GZIPPED = {
    "gsm8k/train.jsonl.gz": "gsm8k/train.jsonl",
    "gsm8k/test.jsonl.gz": "gsm8k/test.jsonl",
    "math500/test.jsonl.gz": "math500/test.jsonl",
}


def write_gzip(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        f.write(data)


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def agrpo_math_train(rows: list[dict], math500_ids: set[str]) -> list[dict]:
    kept = []
    for row in rows:
        if row["unique_id"] in math500_ids or row["level"] is None or row["level"] > 4:
            continue
        answer = extract_boxed(row["solution"])
        if answer:
            kept.append({**row, "answer": answer})
    return kept


def countdown_cd3_rows(rows: list[dict]) -> list[dict]:
    return [row for row in rows if len(row["nums"]) == 3]


def build(src: pathlib.Path, dst: pathlib.Path = DATA_DIR) -> dict[str, str]:
    """Writes every shipped file; returns {shipped name: sha256}."""
    for name, source in COPIED.items():
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / source, dst / name)
    for name, source in GZIPPED.items():
        write_gzip(dst / name, (src / source).read_bytes())
    math500_ids = {row["unique_id"] for row in read_jsonl(src / "math500/test.jsonl")}
    math_rows = agrpo_math_train(read_jsonl(src / "math/train_12k_rebuilt.jsonl"), math500_ids)
    write_gzip(dst / "math/train_agrpo.jsonl.gz", jsonl_bytes(math_rows))
    cd3_rows = countdown_cd3_rows(read_jsonl(src / "countdown/countdown_tasks_3to4_rows_0_10001.jsonl"))
    write_gzip(dst / "countdown/tasks_3to4_cd3_rows_0_10001.jsonl.gz", jsonl_bytes(cd3_rows))
    return {str(p.relative_to(dst)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(dst.rglob("*")) if p.is_file() and p.suffix in (".gz", ".json", ".jsonl", ".csv")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=pathlib.Path, required=True, help="the raw data folder (../shared/data)")
    args = parser.parse_args()
    for name, digest in build(args.src).items():
        print(f"{digest}  {name}")


if __name__ == "__main__":
    main()
