"""Small rules that several modules share, each written once (issue #21): τ, end-of-sequence and
padding ids, JSON-lines records, CUDA synchronisation and tree-shape strings.

Imports nothing from training or bench code (the engine may use it too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import torch
from torch import nn

from redrafter_rs.errors import RedrafterError, check


# ---- τ --------------------------------------------------------------------------------------
def verified_tokens(accepted_total: int, steps: int) -> int:
    """Tokens that `steps` verification steps emit: the draft tokens they accepted plus one
    bonus token (the target's own next token) per step."""
    return accepted_total + steps


def tau_of(accepted_total: int, steps: int) -> float:
    """τ, tokens per verification step: (accepted draft tokens + steps) / steps; 0.0 without
    steps (as `GenerationStats.tau`)."""
    return verified_tokens(accepted_total, steps) / steps if steps else 0.0


# ---- special tokens -------------------------------------------------------------------------
def eos_ids(model: nn.Module, eos: int | list[int] | None = None, tokenizer=None) -> set[int]:
    """End-of-sequence ids: `eos` if given, else the model's generation config, else the
    tokenizer's (when given); an empty set when none is known."""
    if eos is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in ([eos] if isinstance(eos, int) else eos) if e is not None}


def pad_id(model: nn.Module, pad_token_id: int | None = None, eos: set[int] | None = None) -> int:
    """The padding id: `pad_token_id` if given, else the model's generation config, else the
    smallest end-of-sequence id (`eos`, default `eos_ids(model)`), else 0."""
    if pad_token_id is None:
        pad_token_id = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if pad_token_id is None:
        eos = eos_ids(model) if eos is None else eos
        pad_token_id = min(eos) if eos else 0
    return int(pad_token_id)


# ---- files ----------------------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every non-blank line of a JSON-lines file of objects; a line
    that is not a JSON object is a `RedrafterError` naming `path:line`."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RedrafterError(f"{path}:{n}: not valid JSON ({e})") from e
            check(
                isinstance(row, dict),
                f"{path}:{n}: expected a JSON object, got {type(row).__name__}",
            )
            yield n, row


# ---- devices --------------------------------------------------------------------------------
def cuda_sync(device: torch.device) -> None:
    """Wait for `device`'s queued work (a no-op off CUDA), so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- tree shapes ----------------------------------------------------------------------------
def parse_shape(text: str) -> tuple[int, ...]:
    """The inverse of `policy.shape_name`: "4x5" -> (4, 5) (W beams of L tokens), "4x5n9" ->
    (4, 5, 9) (a best-nodes tree of N); every number >= 1. ValueError otherwise."""
    beams, sep, nodes = text.strip().lower().partition("n")
    shape = tuple(int(v) for v in beams.split("x")) + ((int(nodes),) if sep else ())
    if len(shape) != 2 + bool(sep) or min(shape) < 1:
        raise ValueError(f"not a shape WxL or WxLnN: {text!r}")
    return shape


def parse_shapes(text: str) -> tuple[tuple[int, ...], ...]:
    """Comma-separated shapes ("1x4,4x4n3") -> ((1, 4), (4, 4, 3)); ValueError if any is not a
    shape (see `parse_shape`)."""
    return tuple(parse_shape(item) for item in text.split(","))
