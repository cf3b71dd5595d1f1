"""Choosing the target's token at every tree node: argmax, or an exact sample.

Exactness (design.md §3): the drafter's beams are deterministic, so the classic p/q acceptance
test is biased for them. Instead every packed node gets its own independent draw from the
target's *processed* distribution at that node; the Rust `accept` walk then follows the drawn
tokens from the root. Each emitted token is a draw from the target's conditional given the
emitted prefix, with fresh randomness per node, so the output distribution equals plain sampling
whatever the drafter proposed. Greedy is the argmax case of the same walk.

Processing reuses transformers' own warpers, in `model.generate`'s order (temperature, top-k,
top-p, min-p), so "the processed distribution" means exactly what it means there. All of them are
context-free; a repetition penalty depends on each node's own path and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from redrafter_rs.errors import check


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # 0.0: off
    repetition_penalty: float = 1.0  # refused unless 1.0 (not context-free per node)
    seed: int | None = None  # seeds this request's torch.Generator (None: global RNG)

    def __post_init__(self) -> None:
        check(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        check(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        check(0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}")
        check(
            self.repetition_penalty == 1.0,
            "repetition_penalty is not supported: it depends on each tree node's own path, and "
            "redrafter-rs refuses to approximate it (the output would no longer be exact)",
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def warpers(self) -> LogitsProcessorList:
        """transformers' warpers for these settings, in `model.generate`'s order."""
        procs = LogitsProcessorList()
        if self.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            procs.append(TopKLogitsWarper(top_k=self.top_k))
        if self.top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=self.top_p))
        if self.min_p > 0.0:
            procs.append(MinPLogitsWarper(min_p=self.min_p))
        return procs

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


GREEDY = SamplingParams()


def sample_nodes(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """One independent draw per node from the processed distribution: [R, N, V] -> [R, N].

    Exponential-race sampling (argmax of p / E with E ~ Exp(1)) draws exactly from p, stays on
    the device and needs no host synchronisation.
    """
    if params.greedy:
        return logits.argmax(-1)
    R, N, V = logits.shape
    scores = params.warpers()(None, logits.reshape(R * N, V).float())  # [R*N, V]
    probs = torch.softmax(scores, dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(-1).view(R, N)


def choose_tokens(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """The target's token at every node [B, N] from logits [B, N, V], per-row settings.

    Rows that share settings and the global RNG are processed together; a row with its own
    generator is drawn alone so its stream does not depend on the other rows.
    """
    B = logits.shape[0]
    if all(p.greedy for p in params):
        return logits.argmax(-1)
    choice = torch.empty(logits.shape[:2], dtype=torch.long, device=logits.device)
    groups: dict[tuple, list[int]] = {}
    for row in range(B):
        key = (params[row], id(generators[row]) if generators[row] is not None else None)
        groups.setdefault(key, []).append(row)
    for (p, _), rows in groups.items():
        idx = torch.tensor(rows, device=logits.device)
        choice[idx] = sample_nodes(logits[idx], p, generators[rows[0]])
    return choice
