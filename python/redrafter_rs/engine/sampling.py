"""Choosing the target's token at every tree node: argmax, or an exact sample.

Exactness (docs/design.md §3): the drafter's beams are deterministic, so the classic p/q acceptance
test is biased for them. Instead every packed node gets its own independent draw from the
target's *processed* distribution at that node; the Rust `accept` walk then follows the drawn
tokens from the root. Each emitted token is a draw from the target's conditional given the
emitted prefix, with fresh randomness per node, so the output distribution equals plain sampling
whatever the drafter proposed. Greedy is the argmax case of the same walk.

Every draw is inverse-CDF sampling: one uniform u per node, the token is the first whose
cumulative probability exceeds u. It costs a cumulative sum over the vocabulary per node (an
exponential race costs an Exp(1) variate per vocabulary entry: 20x slower on CPU at V = 49152).

Seeded requests (docs/design.md §3): the uniform for the token at absolute
index i of a seeded request (prompt tokens count) depends only on (seed, i) through a
counter-based generator (`seeded_uniform`, splitmix64). Every tree node at depth d of a step
predicts index base + d and shares that uniform, so whichever path is accepted, the emitted token
at index i is the inverse-CDF draw at u(seed, i) from the target's processed distribution given
the emitted prefix: the token plain decoding with that seed draws (`sample_seeded`), alone or in
any batch, with any drafter, W x L or tree. Across seeds it is still an exact sample. The uniforms
are the same on every device; only the logits' last bits (a near-boundary draw) can differ.

Processing reuses transformers' own warpers, in `model.generate`'s order (temperature, top-k,
top-p, min-p), so "the processed distribution" means exactly what it means there. All of them are
context-free; a repetition penalty depends on each node's own path and is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from redrafter_rs._validate import check_float, check_int, check_optional_int
from redrafter_rs.engine.transfer import to_device_async
from redrafter_rs.errors import check

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # 0.0: off
    repetition_penalty: float = 1.0  # refused unless 1.0 (not context-free per node)
    seed: int | None = None  # pins this request's draws: noise per (seed, position), see above

    def __post_init__(self) -> None:
        check_float("temperature", self.temperature, low=0.0)
        check_int("top_k", self.top_k, low=0)
        check_float("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        check_float("min_p", self.min_p, low=0.0, high=1.0)
        check_float("repetition_penalty", self.repetition_penalty)
        check_optional_int("seed", self.seed)
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

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The processed distribution [M, V] from logits [M, V] (fp32)."""
        return torch.softmax(self.warpers()(None, logits.float()), dim=-1)


GREEDY = SamplingParams()


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection on 64-bit ints that spreads every input bit."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)


def seeded_uniform(seed: int, index: int) -> float:
    """The uniform draw in [0, 1) (53 bits) for (request seed, absolute token index): a
    counter-based generator (splitmix64 of the pair), the same on every device."""
    key = _mix64(int(seed) & _MASK64)
    bits = _mix64((key + (int(index) + 1) * 0x9E3779B97F4A7C15) & _MASK64)
    return (bits >> 11) * 2.0**-53


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token ids [M] drawn from probs [M, V] with uniforms u [M] in [0, 1): the first token
    whose cumulative probability exceeds u (fp64, so every token keeps its exact share)."""
    cdf = probs.double().cumsum(-1)  # [M, V]
    target = u.to(cdf.device, torch.float64)[:, None] * cdf[:, -1:]  # total ~1, rounding aside
    token = torch.searchsorted(cdf, target, right=True)[:, 0]
    return token.clamp_(max=probs.shape[-1] - 1)


def sample_seeded(logits: torch.Tensor, params: SamplingParams, index: int) -> int:
    """Plain (non-speculative) seeded decoding's draw for the token at absolute `index` from
    the target's logits [V] there: what the engine emits for a seeded request."""
    if params.greedy:
        return int(logits.argmax())
    u = torch.tensor([seeded_uniform(params.seed, index)], dtype=torch.float64)
    return int(inverse_cdf(params.probs(logits[None]), u)[0])


def sample_nodes(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """One independent draw per node from the processed distribution: [R, N, V] -> [R, N].

    Inverse-CDF sampling with one uniform per node from `generator` (None: torch's global RNG)
    draws exactly from p, stays on the device and needs no host synchronisation.
    """
    if params.greedy:
        return logits.argmax(-1)
    R, N, V = logits.shape
    probs = params.probs(logits.reshape(R * N, V))  # [R*N, V]
    u = torch.rand(R * N, generator=generator, dtype=torch.float64, device=probs.device)
    return inverse_cdf(probs, u).view(R, N)


def _seeded_uniforms(seed: int, start: int, depth: np.ndarray | None, nodes: int) -> np.ndarray:
    """Uniforms [N] of one seeded row: node n predicts the token at index start + depth[n]."""
    depth = np.zeros(nodes, dtype=np.int64) if depth is None else np.clip(depth, 0, None)
    per_depth = np.array([seeded_uniform(seed, start + d) for d in range(int(depth.max()) + 1)])
    return per_depth[depth]


def choose_tokens(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    start: list[int] | None = None,
    depth: np.ndarray | None = None,
) -> torch.Tensor:
    """The target's token at every node [B, N] from logits [B, N, V], per-row settings.

    Rows with equal settings and the same generator object (or the global RNG) are drawn
    together; rows with different generators are drawn separately, each from its own stream.
    A seeded row (`params[row].seed`) draws with `seeded_uniform`: `start[row]` is the absolute
    index of the token its depth-0 node predicts, `depth` [B, N] (host) each node's depth
    (None: all 0).
    """
    B, N = logits.shape[:2]
    if all(p.greedy for p in params):
        return logits.argmax(-1)
    choice = torch.empty((B, N), dtype=torch.long, device=logits.device)
    groups: dict[tuple, list[int]] = {}
    seeded: dict[SamplingParams, list[int]] = {}
    for row in range(B):
        p = params[row]
        if p.seed is not None and not p.greedy:
            seeded.setdefault(dataclasses.replace(p, seed=None), []).append(row)
            continue
        key = (p, id(generators[row]) if generators[row] is not None else None)
        groups.setdefault(key, []).append(row)
    device = logits.device
    everyone = list(range(B))
    for p, rows in seeded.items():
        check(start is not None, "choose_tokens: seeded rows need their start index")
        u = np.stack(
            [
                _seeded_uniforms(params[r].seed, start[r], None if depth is None else depth[r], N)
                for r in rows
            ]
        )  # [r, N]
        u = to_device_async(u.reshape(-1), device, torch.float64)  # no host wait
        if rows == everyone:
            return inverse_cdf(p.probs(logits.reshape(B * N, -1)), u).view(B, N)
        idx = to_device_async(rows, device)
        probs = p.probs(logits[idx].reshape(len(rows) * N, -1))
        choice[idx] = inverse_cdf(probs, u).view(len(rows), N)
    for (p, _), rows in groups.items():
        if rows == everyone:
            return sample_nodes(logits, p, generators[0])
        idx = to_device_async(rows, device)
        choice[idx] = sample_nodes(logits[idx], p, generators[rows[0]])
    return choice
