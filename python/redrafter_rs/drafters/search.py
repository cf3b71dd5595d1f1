"""Deterministic beam search over the recurrent drafter (ReDrafter §3.2), and best-nodes trees.

L includes the root token g0 (the target's own next token), so L - 1 tokens are drafted. Only
beam 0 is alive at the first step, so the first expansion yields W distinct children of g0.

`best_nodes_search` spends a fixed node budget N where the drafter expects acceptance. Beam
search keeps W full-length beams, so a second-best first token is dropped as soon as W deeper
continuations outscore it, although a node is accepted with (about) its path probability,
whatever its depth. Best-nodes expands the W best nodes of each depth with their W best
children (the same drafter calls as beam search at width W) and keeps the N nodes of highest
path probability q(x1) q(x2|x1)...: a parent always outscores its children, so the kept set is
a tree. With calibrated drafter probabilities that maximises the expected accepted length for N
nodes (EAGLE-2 and Sequoia choose trees the same way). Its branches have different depths, so
the beams it returns end early (-1 padding, which `pack_beams` turns into no node).

Both searches run over any proposer that can score the next token of many live paths at once:
a `Steps` object (the RNN drafter's `RecurrentSteps` here; a draft LM's tree-attention steps in
drafters/draft_model.py). Its per-path state is a tensor [B, w, D] that the search gathers along
the path axis when it keeps a child (D may grow from one depth to the next).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from redrafter_rs.errors import check


class Steps(Protocol):
    """What the searches need from a proposer (B rows, w live paths per row)."""

    size: int  # the proposer's vocabulary (the search picks among `size` tokens per path)

    def initial(self) -> torch.Tensor:
        """The state of the one live path per row (the root), [B, 1, D]."""
        ...

    def step(self, state: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed each path's last token `last` [B, w]: (new state [B, w, D'], log-distribution
        over the next token [B, w, size])."""
        ...

    def tokens(self, index: torch.Tensor) -> torch.Tensor:
        """Target token ids of vocabulary indices."""
        ...


class RecurrentSteps:
    """The recurrent drafter as `Steps`: state = the RNN state per path, [B, w, H]."""

    def __init__(self, drafter: nn.Module, embed: nn.Module, hidden: torch.Tensor) -> None:
        self.drafter, self.embed = drafter, embed
        self.hidden = hidden.to(drafter.head.weight.dtype)
        self.size = drafter.config.head_size

    def initial(self) -> torch.Tensor:
        B, H = self.hidden.shape
        return self.hidden.new_zeros(B, 1, H)

    def step(self, state, last):
        return _draft_step(self.drafter, self.embed, self.hidden, state, last)

    def tokens(self, index: torch.Tensor) -> torch.Tensor:
        return self.drafter.draft_to_target[index]


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
    return_log_probs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Beams [B, W, L] (int64) from the target's hidden state h [B, H] and root tokens g0 [B].

    With `return_log_probs`, also the drafter's log-distribution over the draft vocabulary at
    every drafted position of every final beam, [B, W, L-1, V'] (what a p/q acceptance test
    would need; the engine does not, see engine/sampling.py).
    """
    _check_args(drafter, hidden, root, beam_width, beam_length)
    steps = RecurrentSteps(drafter, embed, hidden)
    return search_beams(steps, root, beam_width, beam_length, return_log_probs)


def search_beams(
    steps: Steps,
    root: torch.Tensor,
    beam_width: int,
    beam_length: int,
    return_log_probs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Beam search over any `Steps`: beams [B, W, L] from the root tokens [B] (see
    `beam_search`)."""  # fmt: skip
    W, L = beam_width, beam_length
    B = root.shape[0]
    check(steps.size >= W, f"beam_width {W} exceeds the proposer's vocabulary ({steps.size})")
    beams = root.view(B, 1, 1).expand(B, 1, 1)  # [B, 1, 1]: one live beam
    state = steps.initial()  # [B, 1, D]
    scores = torch.zeros(B, 1, device=root.device)  # [B, 1]
    history = torch.zeros(B, 1, 0, steps.size, device=root.device)  # [B, w, k, V']
    for _ in range(L - 1):
        state, log_q = steps.step(state, beams[:, :, -1])
        cand = scores[..., None] + log_q
        V = cand.shape[-1]
        scores, flat = cand.view(B, -1).topk(W, dim=-1)  # [B, W]
        parent = torch.div(flat, V, rounding_mode="floor")  # [B, W]
        token = steps.tokens(flat % V)  # [B, W]
        beams = torch.cat([_gather_beams(beams, parent), token[..., None]], dim=-1)
        state = _gather_beams(state, parent)  # [B, W, H]
        if return_log_probs:
            history = torch.cat([history, log_q[:, :, None]], dim=2)
            history = history.gather(1, parent[..., None, None].expand(-1, -1, *history.shape[2:]))
    if beams.shape[1] < W:  # L == 1: nothing drafted, every beam is the root
        beams = beams.expand(B, W, 1)
        history = history.expand(B, W, 0, history.shape[-1])
    beams = beams.contiguous()  # [B, W, L]
    return (beams, history.contiguous()) if return_log_probs else beams


def _draft_step(drafter, embed, hidden, state, last) -> tuple[torch.Tensor, torch.Tensor]:
    """One drafter step for every live node: its last token `last` [B, w] moves the RNN state
    [B, w, H]; returns the new state and the log-distribution over the draft vocabulary
    [B, w, V'] given [h; s]."""
    state = drafter.rnn_step(state, embed(last).to(state.dtype))  # [B, w, H]
    logits = drafter.logits(hidden[:, None, :].expand_as(state), state)  # [B, w, V']
    return state, torch.log_softmax(logits.float(), dim=-1)


def _gather_beams(x: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """x [B, w, D] gathered along the beam axis by parent [B, W] -> [B, W, D]."""
    return x.gather(1, parent[..., None].expand(-1, -1, x.shape[-1]))


@torch.no_grad()
def best_nodes_search(
    drafter: nn.Module,
    embed: nn.Module,
    hidden: torch.Tensor,
    root: torch.Tensor,
    nodes: int,
    beam_width: int,
    beam_length: int,
) -> torch.Tensor:
    """Beams [B, N, L] (int64, -1 after a beam's end) holding the `nodes` (N) drafted tokens of
    highest path probability, one beam per node (root, its path, then -1), best first.

    Each of the L - 1 depths expands the `beam_width` (W) best nodes of the previous depth
    with their W most likely children, so there are W + W * W * (L - 2) candidates (the
    root alone is expanded first); a larger N keeps them all.
    """
    _check_args(drafter, hidden, root, beam_width, beam_length)
    steps = RecurrentSteps(drafter, embed, hidden)
    return search_best_nodes(steps, root, nodes, beam_width, beam_length)


def search_best_nodes(
    steps: Steps, root: torch.Tensor, nodes: int, beam_width: int, beam_length: int
) -> torch.Tensor:
    """Best-nodes tree search over any `Steps` (see `best_nodes_search`)."""
    W, L = beam_width, beam_length
    check(nodes >= 1, f"tree_nodes must be >= 1, got {nodes}")
    B = root.shape[0]
    if L == 1:  # nothing to draft
        return root.view(B, 1, 1).clone()
    k = min(W, steps.size)
    paths = root.view(B, 1, 1)  # [B, f, d+1]: frontier paths, root first
    state = steps.initial()  # [B, f, D]
    score = torch.zeros(B, 1, dtype=torch.float64, device=root.device)  # float64: exact ties
    found_paths, found_scores = [], []
    for d in range(L - 1):
        state, log_q = steps.step(state, paths[:, :, -1])
        top, idx = log_q.topk(k, dim=-1)  # [B, f, k]
        f = paths.shape[1]
        parent = torch.arange(f, device=root.device).repeat_interleave(k).expand(B, -1)
        child = torch.cat(
            [_gather_beams(paths, parent), steps.tokens(idx).view(B, -1, 1)], dim=-1
        )  # [B, f*k, d+2]
        child_score = (score[..., None] + top.double()).view(B, -1)  # [B, f*k]
        pad = child.new_full((B, f * k, L - 2 - d), -1)
        found_paths.append(torch.cat([child, pad], dim=-1))  # [B, f*k, L]
        # a parent and its child tie when q(child) rounds to 1: the parent goes first
        found_scores.append(child_score - 1e-9 * (d + 1))
        score, keep = child_score.topk(min(W, f * k), dim=-1)  # [B, W]
        paths = _gather_beams(child, keep)  # [B, W, d+2]
        state = _gather_beams(state, parent.gather(1, keep))  # [B, W, H]
    all_paths = torch.cat(found_paths, dim=1)  # [B, C, L]
    best = torch.cat(found_scores, dim=1).topk(min(nodes, all_paths.shape[1]), dim=-1).indices
    return _gather_beams(all_paths, best).contiguous()  # [B, N, L]
