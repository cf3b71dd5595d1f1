"""Acceptance: from the verified tree to the tokens each row emits (docs/design.md §2-§3).

The engine's decode step is propose (drafting.DrafterAdapter) → pack (Rust) → verify (one target
forward over the packed trees) → accept (an `Acceptor`) → KV upkeep. The default acceptor,
`ExactAcceptor`, chooses the target's token at every tree node (argmax, or an exact sample,
engine/sampling.py) and lets the Rust core walk the tree along the chosen tokens. Another acceptance
rule plugs in through `SpeculativeGenerator(..., acceptor=...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from redrafter_rs import _core
from redrafter_rs.engine.sampling import choose_tokens


@dataclass
class VerifiedStep:
    """What an acceptor sees of one decode step (B rows, N packed nodes per row)."""

    target: Any  # target.Target: `logits(hidden)` gives the target's logits per node
    requests: Sequence[Any]  # engine.Request per row: params, generator, prompt, tokens
    beams: np.ndarray  # [B, W, L] host: the drafted beams (-1: a beam that ended early)
    tree: _core.Tree  # the packed trees (tokens, depth, parent, mask, unpacker)
    hidden: torch.Tensor  # [B, N, H] the target's final hidden state at every node
    to_host: Callable[[torch.Tensor, str], np.ndarray]  # device -> host via pinned staging
    lap: Callable[[str], None]  # closes an engine timing phase ("target", "transfer")


class Acceptor(Protocol):
    def accept(self, step: VerifiedStep) -> _core.Acceptance:
        """Per row: the accepted path, emitted tokens (accepted drafts + one more), the bonus
        token (the next root), the last accepted node and the KV plan; see `_core.accept`."""
        ...


class ExactAcceptor:
    """Lossless acceptance: the target's own token at every node, then the Rust tree walk."""

    def accept(self, step: VerifiedStep) -> _core.Acceptance:
        rows = step.requests
        logits = step.target.logits(step.hidden)  # [B, N, V]
        choice = choose_tokens(
            logits,
            [r.params for r in rows],
            [r.generator for r in rows],
            start=[len(r.prompt) + len(r.tokens) for r in rows],  # the index depth 0 predicts
            depth=step.tree.depth,
        )
        step.lap("target")
        choice_np = step.to_host(choice, "choice")  # [B, N]: wait 2 of 2
        step.lap("transfer")
        return _core.accept(step.tree, step.beams, choice_np)
