"""Slow, readable pure-torch versions of the Rust core's `pack_beams` and `accept` (test oracle).

Follows ReDrafter's tree-attention recipe (docs/design.md §5): pairwise prefix equality,
first matching beam per (beam, depth), keep the first occurrences in row-major order. A beam
may end early (-1 from some depth on): its padded positions stay at its last real node.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RefTree:
    tokens: torch.Tensor  # [B, N]
    depth: torch.Tensor  # [B, N]
    parent: torch.Tensor  # [B, N]
    mask: torch.Tensor  # [B, N, N] bool
    unpacker: torch.Tensor  # [B, W, L]
    num_nodes: torch.Tensor  # [B]


@dataclass
class RefAcceptance:
    best_beam: torch.Tensor  # [B]
    num_accepted: torch.Tensor  # [B]
    path: torch.Tensor  # [B, L]
    tokens: torch.Tensor  # [B, L]
    bonus: torch.Tensor  # [B]


def prefix_tree(beams: torch.Tensor) -> torch.Tensor:
    """[B, W, L] -> [B, W, L]: the first beam j sharing beams[b, i, :k+1]."""
    match = beams[:, :, None, :] == beams[:, None, :, :]  # [B, W, W, L]
    same_prefix = match.long().cumprod(dim=-1).bool()  # [B, W, W, L]
    return same_prefix.long().argmax(dim=2)  # [B, W, L]: first j (argmax takes the first max)


def pack_beams(beams: torch.Tensor) -> RefTree:
    beams = torch.as_tensor(beams, dtype=torch.long)
    B, W, L = beams.shape
    if not bool((beams[:, :, 0] == beams[:, :1, 0]).all()):
        raise ValueError("beams of a row must share the root token")
    first = prefix_tree(beams)  # [B, W, L]
    own = torch.arange(W)[None, :, None]
    real = beams >= 0  # [B, W, L]: False past a beam's end (-1 padding)
    keep = ((first == own) & real).reshape(B, W * L)  # [B, W*L]
    node_of = keep.long().cumsum(-1) - 1  # [B, W*L]: packed index of each kept (i, k)
    num_nodes = keep.sum(-1)  # [B]
    N = int(num_nodes.max())
    depth_all = torch.arange(L).repeat(W)  # [W*L]
    flat_first = first * L + torch.arange(L)  # [B, W, L] flat (j, k)
    unpacker = node_of.gather(1, flat_first.reshape(B, -1)).reshape(B, W, L)
    for k in range(1, L):  # an ended beam stays at its last real node
        unpacker[:, :, k] = torch.where(real[:, :, k], unpacker[:, :, k], unpacker[:, :, k - 1])
    tokens = torch.zeros(B, N, dtype=torch.long)
    depth = torch.zeros(B, N, dtype=torch.long)
    parent = torch.full((B, N), -1, dtype=torch.long)
    mask = torch.eye(N, dtype=torch.bool).repeat(B, 1, 1)
    for b in range(B):
        kept = keep[b].nonzero().flatten()  # flat (i, k) of each node, in node order
        tokens[b, : len(kept)] = beams[b].reshape(-1)[kept]
        depth[b, : len(kept)] = depth_all[kept]
        for i in range(W):
            for k in range(int(real[b, i].sum())):
                node = unpacker[b, i, k]
                parent[b, node] = unpacker[b, i, k - 1] if k > 0 else -1
                mask[b, node, unpacker[b, i, : k + 1]] = True
    return RefTree(tokens, depth, parent, mask, unpacker, num_nodes)


def accept(tree: RefTree, beams: torch.Tensor, choice: torch.Tensor) -> RefAcceptance:
    """Longest beam prefix that matches the target's choice at every node, plus the bonus."""
    beams = torch.as_tensor(beams, dtype=torch.long)
    choice = torch.as_tensor(choice, dtype=torch.long)
    B, W, L = beams.shape
    target = choice.gather(1, tree.unpacker.reshape(B, -1)).reshape(B, W, L)  # [B, W, L]
    match = beams[:, :, 1:] == target[:, :, :-1]  # [B, W, L-1]
    n_per_beam = match.long().cumprod(-1).sum(-1)  # [B, W]
    num_accepted, best = n_per_beam.max(-1)  # max returns the first index among ties
    path = torch.full((B, L), -1, dtype=torch.long)
    tokens = torch.full((B, L), -1, dtype=torch.long)
    bonus = torch.empty(B, dtype=torch.long)
    for b in range(B):
        n, w = int(num_accepted[b]), int(best[b])
        path[b, : n + 1] = tree.unpacker[b, w, : n + 1]
        bonus[b] = choice[b, path[b, n]]
        tokens[b, :n] = beams[b, w, 1 : n + 1]
        tokens[b, n] = bonus[b]
    return RefAcceptance(best, num_accepted, path, tokens, bonus)
