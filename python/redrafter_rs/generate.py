"""`generate` and `stream`: `model.generate`-shaped front ends over `SpeculativeGenerator`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from redrafter_rs._common import pad_id
from redrafter_rs._validate import check_drafter
from redrafter_rs.drafters.retrieval import (
    RetrievalConfig,
    RetrievalDrafter,
    SourceStats,
    with_retrieval,
)
from redrafter_rs.engine.policy import PolicyConfig
from redrafter_rs.engine.sampling import SamplingParams
from redrafter_rs.engine.scheduler import GenerationStats, SpecConfig, SpeculativeGenerator
from redrafter_rs.errors import check


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # [B, T + new]: input_ids, then new tokens padded with pad_token_id
    stats: GenerationStats  # all rows together
    row_stats: list[GenerationStats]  # per row
    sources: dict[str, SourceStats] = field(default_factory=dict)  # per draft source (retrieval)


def _rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    """One unpadded prompt per row of a (left-)padded batch."""
    check(isinstance(input_ids, torch.Tensor), "input_ids must be a torch.Tensor")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    check(input_ids.dim() == 2, f"input_ids: expected shape [B, T], got {tuple(input_ids.shape)}")
    if attention_mask is None:
        return list(input_ids)
    check(
        isinstance(attention_mask, torch.Tensor),
        f"attention_mask must be a torch.Tensor or None, got {type(attention_mask).__name__}",
    )
    if attention_mask.dim() == 1:
        attention_mask = attention_mask[None]
    check(
        attention_mask.shape == input_ids.shape,
        f"attention_mask: expected shape {tuple(input_ids.shape)} like input_ids, "
        f"got {tuple(attention_mask.shape)}",
    )
    check(
        bool(((attention_mask == 0) | (attention_mask == 1)).all()),
        "attention_mask: values must be 0 (padding) or 1 (token)",
    )
    return [row[m.bool()] for row, m in zip(input_ids, attention_mask, strict=True)]


def _sampling(
    rows: int, temperature, top_k, top_p, min_p, repetition_penalty, seed, generator
) -> list[SamplingParams]:
    """Per-row settings: `seed` is one int for every row, or a list of one per row."""
    seeds = seed if isinstance(seed, (list, tuple)) else [seed] * rows
    check(
        len(seeds) == rows,
        f"seed: expected one seed per row ({rows}), got a list of {len(seeds)}",
    )
    check(
        generator is None or seed is None,
        "pass either seed or generator, not both: a seed pins each row's draws by itself",
    )
    # SamplingParams checks each seed (an int or None) and the other settings
    return [SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, s) for s in seeds]


def _start(
    model, drafter, prompts, config, params, generator, retrieval=None
) -> SpeculativeGenerator:
    check_drafter(drafter)
    engine = SpeculativeGenerator(model, with_retrieval(drafter, retrieval), config)
    for row, prompt in enumerate(prompts):
        engine.add(row, prompt, params[row], generator=generator)
    return engine


def _steps(engine: SpeculativeGenerator, rows: int, streamer, prompt) -> Iterator[list[list[int]]]:
    check(streamer is None or rows == 1, "streamer supports batch size 1 only")
    if streamer is not None:
        streamer.put(prompt[None].cpu())
    try:
        while engine.has_unfinished():
            new = engine.step()
            chunk = [new.get(row, []) for row in range(rows)]
            if streamer is not None and chunk[0]:
                streamer.put(torch.tensor(chunk[0]))
            yield chunk
    finally:
        if streamer is not None:
            streamer.end()


def stream(
    model: nn.Module,
    drafter: nn.Module | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 128,
    beam_width: int = 4,
    beam_length: int = 5,
    eos_token_id: int | list[int] | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | list[int] | None = None,
    streamer=None,
    adaptive: bool | PolicyConfig = False,
    retrieval: bool | RetrievalConfig | None = None,
    tree_nodes: int | None = None,
) -> Iterator[list[list[int]]]:
    """Yields, after every step, the new tokens of each row (`[]` for a row with none).

    Same arguments as `generate`. `streamer` takes a transformers `TextStreamer` /
    `TextIteratorStreamer` (batch size 1, as in transformers): it receives the prompt, then each
    step's tokens, then `end()`.
    """
    prompts = _rows(input_ids, attention_mask)
    config = _spec_config(
        beam_width, beam_length, max_new_tokens, eos_token_id, adaptive, tree_nodes
    )
    params = _sampling(
        len(prompts), temperature, top_k, top_p, min_p, repetition_penalty, seed, generator
    )
    engine = _start(model, drafter, prompts, config, params, generator, retrieval)
    yield from _steps(engine, len(prompts), streamer, prompts[0])


def generate(
    model: nn.Module,
    drafter: nn.Module | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 128,
    beam_width: int = 4,
    beam_length: int = 5,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | list[int] | None = None,
    streamer=None,
    adaptive: bool | PolicyConfig = False,
    retrieval: bool | RetrievalConfig | None = None,
    tree_nodes: int | None = None,
) -> GenerationOutput:
    """Speculative generation with `model.generate`'s contract.

    Greedy (`temperature=0`, the default): `sequences` equals `model.generate(input_ids,
    attention_mask=..., do_sample=False, max_new_tokens=...)` token for token. Sampling
    (`temperature > 0`, with optional top-k / top-p / min-p): every token is an exact draw from
    the target's processed distribution, as with `model.generate(do_sample=True)` and the same
    settings (pass `top_k=0` to `model.generate` to disable its default top-k of 50).

    input_ids: [B, T] (or [T]), left-padded for B > 1 with `attention_mask` [B, T].
    adaptive: pick the draft tree per step (W' beams of L' tokens, or a best-nodes tree) from
    the batch size, measured costs and recent acceptance, up to (beam_width, beam_length),
    including plain decoding (see engine/policy.py); a `PolicyConfig` turns it on with those
    settings.
    retrieval: True or a `RetrievalConfig` adds retrieval drafts (the prompt and the text so far,
    optionally a datastore) to the tree (see drafters/retrieval.py); `drafter` may then be None.
    tree_nodes: N drafts a best-nodes tree instead of W beams: the N drafted tokens of highest
    path probability, expanding the W best nodes per depth up to depth L - 1 (drafters/search.py).
    seed: an int (every row) or one per row pins the sampled tokens: a seeded row gives the
    same tokens alone or in any batch, with any drafter, shape or none (engine/sampling.py); without
    it, draws come from `generator` (None: torch's global RNG).
    Returns input_ids followed by the new tokens; rows that stop early (EOS) are padded with
    `pad_token_id`, as `model.generate` pads them.
    """
    prompts = _rows(input_ids, attention_mask)
    config = _spec_config(
        beam_width, beam_length, max_new_tokens, eos_token_id, adaptive, tree_nodes
    )
    params = _sampling(
        len(prompts), temperature, top_k, top_p, min_p, repetition_penalty, seed, generator
    )
    engine = _start(model, drafter, prompts, config, params, generator, retrieval)
    for _ in _steps(engine, len(prompts), streamer, prompts[0]):
        pass
    done = engine.pop_finished()
    reqs = [done[row] for row in range(len(prompts))]
    return _assemble(input_ids, reqs, pad_id(model, pad_token_id, engine.eos), engine)


def _spec_config(W, L, max_new_tokens, eos_token_id, adaptive, tree_nodes) -> SpecConfig:
    check(
        isinstance(adaptive, (bool, PolicyConfig)),
        f"adaptive must be true or false or a PolicyConfig, got {adaptive!r}",
    )
    policy = adaptive if isinstance(adaptive, PolicyConfig) else None
    return SpecConfig(
        W, L, max_new_tokens, eos_token_id, adaptive=bool(adaptive), policy=policy,
        tree_nodes=tree_nodes,
    )  # fmt: skip


def _assemble(input_ids, reqs, pad: int, engine: SpeculativeGenerator) -> GenerationOutput:
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    width = max(len(r.tokens) for r in reqs)
    new = torch.full((len(reqs), width), pad, dtype=input_ids.dtype)
    for row, r in enumerate(reqs):
        new[row, : len(r.tokens)] = torch.tensor(r.tokens, dtype=input_ids.dtype)
    sequences = torch.cat([input_ids, new.to(input_ids.device)], dim=1)
    total = GenerationStats(engine.config.beam_width, engine.config.beam_length)
    for r in reqs:
        total.new_tokens += r.stats.new_tokens
        total.steps += r.stats.steps
        total.accepted_per_step += r.stats.accepted_per_step
        total.tree_nodes += r.stats.tree_nodes
        for shape, n in r.stats.shapes.items():
            total.shapes[shape] = total.shapes.get(shape, 0) + n
    total.time_s = dict(engine.time_s)
    sources = engine.drafter.stats if isinstance(engine.drafter, RetrievalDrafter) else {}
    return GenerationOutput(sequences, total, [r.stats for r in reqs], sources)
