"""Speculative generation with a recurrent drafter and dynamic tree attention.

One decode step (design.md §2):
    draft    beams [B, W, L] from (h [B, H], g0 [B])                 torch (drafter beam search)
    pack     tokens/depth/mask [B, N], unpacker [B, W, L]            Rust, one call
    verify   one target forward over the packed tree                 torch, 4D mask, ctx + depth
    choose   one token per node (argmax)                             torch, stays on device
    accept   accepted path, emitted tokens, bonus                    Rust, one call
    upkeep   keep ctx + accepted path in the KV cache                torch, O(tree)
Only beams [B, W, L], the tree arrays and choice [B, N] cross between host and device.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from redrafter_rs import _core
from redrafter_rs.errors import check
from redrafter_rs.kv import keep_accepted
from redrafter_rs.target import Target
from redrafter_rs.transfer import Staging


@dataclass
class SpecConfig:
    beam_width: int = 4  # W: beams drafted per step
    beam_length: int = 5  # L: tokens per beam, including the target's own token g0
    max_new_tokens: int = 128
    eos_token_id: int | list[int] | None = None  # None: the model's generation_config

    def __post_init__(self) -> None:
        check(self.beam_width >= 1, f"beam_width must be >= 1, got {self.beam_width}")
        check(self.beam_length >= 1, f"beam_length must be >= 1, got {self.beam_length}")
        check(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class GenerationStats:
    """Per-call statistics. τ = tokens emitted per verification step (accepted drafts + bonus)."""

    beam_width: int = 0
    beam_length: int = 0
    new_tokens: int = 0
    steps: int = 0  # verification forward passes (prefill excluded)
    accepted_per_step: list[int] = field(default_factory=list)  # draft tokens accepted each step
    time_s: dict[str, float] = field(default_factory=dict)  # prefill/draft/pack/target/accept/cache

    @property
    def tau(self) -> float:
        """Mean tokens per verification step (accepted draft tokens + the bonus token)."""
        if not self.steps:
            return 0.0
        return (sum(self.accepted_per_step) + self.steps) / self.steps

    @property
    def acceptance_per_depth(self) -> list[float]:
        """Fraction of steps whose draft token at depth d (1..L-1) was accepted."""
        if not self.steps:
            return []
        counts = np.asarray(self.accepted_per_step)
        return [float((counts >= d).mean()) for d in range(1, self.beam_length)]

    @property
    def total_time_s(self) -> float:
        return sum(self.time_s.values())

    def summary(self) -> dict:
        return {
            "new_tokens": self.new_tokens,
            "steps": self.steps,
            "tau": round(self.tau, 4),
            "acceptance_per_depth": [round(a, 4) for a in self.acceptance_per_depth],
            "time_s": {k: round(v, 4) for k, v in self.time_s.items()},
        }


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # [B, T_prompt + new]: prompt followed by the generated tokens
    stats: GenerationStats


class _Timer:
    """Accumulates wall time per phase into a dict (synchronising CUDA when timing it)."""

    def __init__(self, times: dict[str, float], device: torch.device) -> None:
        self.times = times
        self.sync = device.type == "cuda"
        self.t = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times[phase] = self.times.get(phase, 0.0) + now - self.t
        self.t = now


def _eos_ids(model: nn.Module, eos: int | list[int] | None) -> set[int]:
    if eos is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in ([eos] if isinstance(eos, int) else eos)}


def _check_prompt(target: Target, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    check(isinstance(input_ids, torch.Tensor), "input_ids must be a torch.Tensor")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    check(input_ids.dim() == 2, f"input_ids: expected shape [B, T], got {tuple(input_ids.shape)}")
    check(
        not input_ids.is_floating_point() and not input_ids.is_complex(),
        f"input_ids: expected an integer tensor, got dtype {input_ids.dtype}",
    )
    B, T = input_ids.shape
    check(T >= 1, "input_ids: the prompt is empty (T = 0); give at least one token")
    check(B == 1, f"input_ids: batch size {B} > 1 is not supported yet; pass one row at a time")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    check(
        lo >= 0 and hi < target.vocab_size,
        f"input_ids: token ids must be in [0, {target.vocab_size}), got range [{lo}, {hi}]",
    )
    if target.max_positions:
        check(
            T + max_new_tokens <= target.max_positions,
            f"input_ids: prompt length {T} + max_new_tokens {max_new_tokens} exceeds the "
            f"model's max_position_embeddings ({target.max_positions})",
        )
    return input_ids.to(device=target.device, dtype=torch.long)


class SpeculativeDecoder:
    """One generation call's state: the target's cache, context length, h and g0."""

    def __init__(self, model: nn.Module, drafter: nn.Module, config: SpecConfig) -> None:
        self.target = Target(model)
        self.drafter = drafter
        self.config = config
        self.eos = _eos_ids(model, config.eos_token_id)
        self.staging = Staging(self.target.device)
        if hasattr(drafter, "check_target"):
            drafter.check_target(model)

    # ---- the steps ----------------------------------------------------------------------
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt [1, T]; returns g0 [1], sets h [1, H], the cache and ctx_len."""
        self.cache = self.target.new_cache()
        hidden = self.target.forward(input_ids, self.cache)  # [1, T, H]
        self.hidden = hidden[:, -1]  # [1, H]
        self.ctx_len = input_ids.shape[1]
        self.tokens = input_ids[0].tolist()  # prompt + emitted tokens (for context-aware drafters)
        return self.target.logits(self.hidden).argmax(-1)  # [1]

    def draft(self, root: torch.Tensor) -> torch.Tensor:
        """Beams [1, W, L] rooted at g0."""
        cfg = self.config
        context = None
        if getattr(self.drafter, "uses_context", False):
            context = [torch.tensor(self.tokens, device=root.device)]
        return self.drafter.draft(
            self.hidden,
            root,
            embed=self.target.embed,
            beam_width=cfg.beam_width,
            beam_length=cfg.beam_length,
            context=context,
        )

    def verify(self, tree: _core.Tree) -> torch.Tensor:
        """One target forward over the packed tree; returns hidden states [1, N, H]."""
        tokens = self.staging.to_device(tree.tokens, "tokens")  # [1, N]
        depth = self.staging.to_device(tree.depth, "depth")  # [1, N]
        tree_mask = self.staging.to_device(tree.mask, "mask")  # [1, N, N]
        B, N = tokens.shape
        mask = torch.ones(B, 1, N, self.ctx_len + N, dtype=torch.bool, device=tokens.device)
        mask[:, 0, :, self.ctx_len :] = tree_mask  # [B, 1, N, ctx + N]
        return self.target.forward(tokens, self.cache, mask, position_ids=depth + self.ctx_len)

    def choose(self, hidden: torch.Tensor) -> torch.Tensor:
        """The target's token at every node [1, N] (greedy: argmax)."""
        return self.target.logits(hidden).argmax(-1)

    def advance(self, acc: _core.Acceptance, hidden: torch.Tensor) -> np.ndarray:
        """Keep the accepted path in the cache, move h/g0 on; returns the emitted tokens."""
        n = int(acc.num_accepted[0])
        path = acc.path[0, : n + 1]  # [n+1] node indices, root first
        keep_accepted(self.cache, self.ctx_len, path)
        self.ctx_len += n + 1
        self.hidden = hidden[:, int(path[-1])]  # [1, H]
        return acc.tokens[0, : n + 1]

    # ---- the loop -----------------------------------------------------------------------
    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, stats: GenerationStats) -> Iterator[list[int]]:
        """Yields the new tokens of each step until EOS or max_new_tokens."""
        timer = _Timer(stats.time_s, self.target.device)
        root = self.prefill(input_ids)
        timer.lap("prefill")
        budget = self.config.max_new_tokens
        emitted = self._clip([int(root[0])], budget)
        while True:
            self.tokens.extend(emitted)
            yield emitted
            budget -= len(emitted)
            if budget <= 0 or (emitted and emitted[-1] in self.eos):
                return
            beams = self.draft(root)  # [1, W, L]
            beams_np = self.staging.to_host(beams, "beams")
            timer.lap("draft")
            tree = _core.pack_beams(beams_np, self.target.vocab_size)
            timer.lap("pack")
            hidden = self.verify(tree)  # [1, N, H]
            choice = self.staging.to_host(self.choose(hidden), "choice")  # [1, N]
            timer.lap("target")
            acc = _core.accept(tree, beams_np, choice)
            timer.lap("accept")
            new = self.advance(acc, hidden)
            root = torch.as_tensor(new[-1:], device=self.target.device)  # [1]: the bonus
            timer.lap("cache")
            stats.steps += 1
            stats.accepted_per_step.append(len(new) - 1)
            emitted = self._clip([int(t) for t in new], budget)

    def _clip(self, tokens: list[int], budget: int) -> list[int]:
        """Truncate at the first EOS (inclusive) and at the token budget."""
        for i, t in enumerate(tokens[:budget]):
            if t in self.eos:
                return tokens[: i + 1]
        return tokens[:budget]


def generate(
    model: nn.Module,
    drafter: nn.Module,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int = 128,
    beam_width: int = 4,
    beam_length: int = 5,
    eos_token_id: int | list[int] | None = None,
) -> GenerationOutput:
    """Greedy speculative generation; `sequences` equals `model.generate(do_sample=False)`.

    input_ids: [B, T] (or [T]) prompt tokens. Returns the prompt followed by the new tokens,
    stopping after an EOS token or `max_new_tokens` exactly as `model.generate` does.
    """
    config = SpecConfig(beam_width, beam_length, max_new_tokens, eos_token_id)
    decoder = SpeculativeDecoder(model, drafter, config)
    prompt = _check_prompt(decoder.target, input_ids, max_new_tokens)
    stats = GenerationStats(beam_width=beam_width, beam_length=beam_length)
    new: list[int] = []
    for chunk in decoder.run(prompt, stats):
        new.extend(chunk)
    stats.new_tokens = len(new)
    tail = torch.tensor([new], dtype=prompt.dtype, device=prompt.device)
    return GenerationOutput(torch.cat([prompt, tail], dim=1), stats)
