"""Deterministic beam search over the recurrent drafter (ReDrafter §3.2).

L includes the root token g0 (the target's own next token), so L - 1 tokens are drafted. Only
beam 0 is alive at the first step, so the first expansion yields W distinct children of g0.
"""

from __future__ import annotations

import torch
from torch import nn

from redrafter_rs.errors import check


def _check_args(
    drafter: nn.Module, hidden: torch.Tensor, root: torch.Tensor, W: int, L: int
) -> None:
    check(W >= 1, f"beam_width must be >= 1, got {W}")
    check(L >= 1, f"beam_length must be >= 1, got {L}")
    check(hidden.dim() == 2, f"hidden: expected shape [B, H], got {tuple(hidden.shape)}")
    check(
        root.shape == (hidden.shape[0],),
        f"root: expected shape [B] = [{hidden.shape[0]}], got {tuple(root.shape)}",
    )
    head = drafter.config.head_size
    check(head >= W, f"beam_width {W} exceeds the drafter's vocabulary ({head} tokens)")


@torch.no_grad()
def beam_search(
    drafter: nn.Module,
    embed: nn.Module,
    hidden: torch.Tensor,
    root: torch.Tensor,
    beam_width: int,
    beam_length: int,
) -> torch.Tensor:
    """Beams [B, W, L] (int64) from the target's hidden state h [B, H] and root tokens g0 [B]."""
    W, L = beam_width, beam_length
    _check_args(drafter, hidden, root, W, L)
    B, H = hidden.shape
    hidden = hidden.to(drafter.head.weight.dtype)
    beams = root.view(B, 1, 1).expand(B, 1, 1)  # [B, 1, 1]: one live beam
    state = hidden.new_zeros(B, 1, H)  # [B, 1, H]
    scores = hidden.new_zeros(B, 1)  # [B, 1]
    for _ in range(L - 1):
        last = beams[:, :, -1]  # [B, w]
        state = drafter.rnn_step(state, embed(last).to(state.dtype))  # [B, w, H]
        logits = drafter.logits(hidden[:, None, :].expand_as(state), state)  # [B, w, V']
        cand = scores[..., None] + torch.log_softmax(logits.float(), dim=-1)  # [B, w, V']
        V = cand.shape[-1]
        scores, flat = cand.view(B, -1).topk(W, dim=-1)  # [B, W]
        parent = torch.div(flat, V, rounding_mode="floor")  # [B, W]
        token = drafter.draft_to_target[flat % V]  # [B, W]
        beams = torch.cat([_gather_beams(beams, parent), token[..., None]], dim=-1)
        state = _gather_beams(state, parent)  # [B, W, H]
    if beams.shape[1] < W:  # L == 1: nothing drafted, every beam is the root
        beams = beams.expand(B, W, 1)
    return beams.contiguous()  # [B, W, L]


def _gather_beams(x: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """x [B, w, D] gathered along the beam axis by parent [B, W] -> [B, W, D]."""
    return x.gather(1, parent[..., None].expand(-1, -1, x.shape[-1]))
