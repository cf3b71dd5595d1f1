"""The running batch and its verification: per-row decode state and the tree forward.

`Batch` holds what the rows being decoded carry between steps (docs/design.md §4): the KV
cache with its per-row slot mask, each row's next position, the target's last hidden state and
the root token (the target's own next token, which every draft starts with). Rows join after
their prefill and leave when they finish; accepted paths advance them.

`TreeVerifier` is the verify stage of a step: one target forward over the packed trees, with
positions = next position + node depth and the tree attention mask over cache + tree.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from redrafter_rs import _core
from redrafter_rs.engine.cache import BatchCache
from redrafter_rs.engine.target import Target
from redrafter_rs.engine.transfer import Staging


class Batch:
    """Rows being decoded, aligned with `requests` (any per-row objects the scheduler keeps)."""

    def __init__(self, device: torch.device, staging: Staging | None = None) -> None:
        self.device = device
        self.staging = staging or Staging(device)  # host -> device copies without a wait
        self.requests: list = []
        self.cache: BatchCache | None = None
        self.pos = self.hidden = self.root = None  # [B] next positions, [B, H], [B]

    def __len__(self) -> int:
        return len(self.requests)

    def join(self, cache: BatchCache, pos, hidden, root, requests: Sequence) -> None:
        """Append prefilled rows (their cache, next positions, last hidden states, roots)."""
        if self.cache is None:
            self.cache, self.pos, self.hidden, self.root = cache, pos, hidden, root
        else:
            self.cache.merge(cache)
            self.pos = torch.cat([self.pos, pos])
            self.hidden = torch.cat([self.hidden, hidden])
            self.root = torch.cat([self.root, root])
        self.requests.extend(requests)

    def drop(self, rows: Sequence[int]) -> None:
        """Remove `rows` (finished or cancelled) so they stop costing target compute."""
        gone = set(rows)
        keep = [i for i in range(len(self.requests)) if i not in gone]
        self.requests = [self.requests[i] for i in keep]
        if not keep:
            self.cache = self.pos = self.hidden = self.root = None
            return
        idx = self.cache.select(keep)
        self.pos, self.hidden, self.root = self.pos[idx], self.hidden[idx], self.root[idx]

    def advance(self, acc: _core.Acceptance, hidden: torch.Tensor) -> None:
        """KV upkeep, next positions, next h (last accepted node) and next root (the bonus).
        Every host array goes to the device without a wait (engine/transfer.py)."""
        to_device = self.staging.to_device
        self.cache.keep_accepted(acc.kv_gather, acc.kv_valid, self.pos, to_device)
        self.pos = self.pos + to_device(acc.kept, "kept")
        last = to_device(acc.last_node, "last_node")
        self.hidden = hidden[torch.arange(hidden.shape[0], device=self.device), last]  # [B, H]
        self.root = to_device(acc.bonus, "bonus")

    def compact_if_wasteful(self, threshold: float) -> bool:
        """Squeeze the cache's holes once they exceed `threshold` of it; whether it did."""
        if self.cache is not None and self.cache.waste() > threshold:
            self.cache.compact()
            return True
        return False


class TreeVerifier:
    """One target forward over the packed trees of a batch: hidden states [B, N, H]."""

    def verify(self, target: Target, batch: Batch, tree: _core.Tree, staging: Staging):
        tokens = staging.to_device(tree.tokens, "tokens")  # [B, N]
        depth = staging.to_device(tree.depth, "depth")  # [B, N]
        positions = batch.pos[:, None] + depth  # [B, N]
        q_pos = positions
        if target.max_positions:
            # Learned position tables (GPT-2) end at max_positions. A node past the end only
            # predicts tokens beyond its request's budget (prompt + budget <= max_positions is
            # checked at add), which are never emitted, so clamping changes no output.
            positions = positions.clamp(max=target.max_positions - 1)
        cache = batch.cache
        plain = tree.tokens.shape[1] == 1 and cache.dense and target.sliding_window is None
        if plain:  # a plain step: every slot visible
            return target.forward(tokens, cache.cache, None, position_ids=positions)
        tree_mask = staging.to_device(tree.mask, "mask")  # [B, N, N]
        mask = cache.tree_mask(tree_mask)  # [B, 1, N, S + N]
        k_pos = torch.cat([cache.positions, q_pos], dim=1)  # [B, S + N]
        mask = target.tree_masks(mask, q_pos, k_pos)  # sliding-window layers: their own mask
        return target.forward(tokens, cache.cache, mask, position_ids=positions)
