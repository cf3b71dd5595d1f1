"""The drafter protocol: what the engine asks of a proposer, and the one adapter that asks it.

A drafter proposes, from the target's last hidden state and the root token (the target's own
next token), W beams of L tokens per row (or a best-nodes tree). Only `draft` is required; the
rest are optional capabilities, found once per drafter by `capabilities()` and used only through
`DrafterAdapter` (the engine, the policy's calibration and the retrieval merger alike).
See docs/design.md §6.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from redrafter_rs._validate import check_drafter
from redrafter_rs.engine.policy import Shape, draft_kwargs, tree_nodes
from redrafter_rs.errors import check


@runtime_checkable
class Drafter(Protocol):
    """The required method. Optional capabilities a drafter may declare:

    - `uses_context = True`: `draft` also receives `context` (per row, prompt + emitted tokens
      with the root last, host int64 tensors valid during the call) and `request_ids`.
    - a `tree_nodes` keyword on `draft` (or `drafts_trees = True`): drafts best-nodes trees,
      N beams [B, N, L] that may end early with -1.
    - `observe(request_ids, acceptance)`: called after every step with the Rust acceptance.
    - `release(request_id)`: called when a request ends (free per-request state).
    - `check_target(model)`: raise `RedrafterError` unless `model` is the drafter's target.
    """

    def draft(
        self,
        hidden: torch.Tensor,  # [B, H] the target's last hidden state per row
        root: torch.Tensor,  # [B] the target's next token per row (every beam starts with it)
        *,
        embed: nn.Module,  # the target's input embeddings
        beam_width: int,
        beam_length: int,
        context: Sequence[torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:  # [B, W, L] int64, on the target's device or on the host
        """Host beams suit a drafter that computes on the CPU (retrieval): the engine packs the
        tree on the host, so they cost no wait for the device; device beams cost one."""
        ...


class NoDrafter:
    """Proposes nothing: every beam is the root alone (plain decoding, W = L = 1)."""

    def draft(self, hidden, root, *, embed, beam_width, beam_length, context=None):
        return root.view(-1, 1, 1).expand(-1, beam_width, 1).contiguous()


def require_context(drafter: object, context, request_ids) -> None:
    """Refuse a `draft` call without `context` and `request_ids` (a drafter that declares
    `uses_context = True` needs both; the engine always passes them)."""
    check(
        context is not None and request_ids is not None,
        f"{type(drafter).__name__}.draft needs `context` and `request_ids` (the engine passes "
        "them to drafters with uses_context = True)",
    )


@dataclass(frozen=True)
class Capabilities:
    uses_context: bool
    drafts_trees: bool
    observes: bool
    releases: bool
    checks_target: bool


def capabilities(drafter: Drafter) -> Capabilities:
    """What `drafter` declares beyond `draft` (see `Drafter`)."""
    trees = getattr(drafter, "drafts_trees", None)
    if trees is None:
        try:
            trees = "tree_nodes" in inspect.signature(drafter.draft).parameters
        except (TypeError, ValueError):  # a builtin or C-implemented draft
            trees = False
    return Capabilities(
        uses_context=bool(getattr(drafter, "uses_context", False)),
        drafts_trees=bool(trees),
        observes=callable(getattr(drafter, "observe", None)),
        releases=callable(getattr(drafter, "release", None)),
        checks_target=callable(getattr(drafter, "check_target", None)),
    )


class DrafterAdapter:
    """Calls a drafter through its declared capabilities: the only place that knows them."""

    def __init__(self, drafter: Drafter) -> None:
        check_drafter(drafter, optional=False)
        self.drafter = drafter
        self.caps = capabilities(drafter)

    def supports(self, shape: Shape) -> bool:
        return tree_nodes(shape) is None or self.caps.drafts_trees

    def draft(
        self,
        hidden: torch.Tensor,
        root: torch.Tensor,
        embed: nn.Module,
        shape: Shape,
        context: Sequence[torch.Tensor] | None = None,
        request_ids: Sequence[Hashable] | None = None,
    ) -> torch.Tensor:
        """Beams for `shape` ((W, L) beams or a (W, L, N) best-nodes tree). `context` and
        `request_ids` reach only a drafter that uses them."""
        kwargs: dict[str, Any] = draft_kwargs(shape)
        if self.caps.uses_context:
            kwargs["request_ids"] = list(request_ids) if request_ids is not None else None
        else:
            context = None
        return self.drafter.draft(hidden, root, embed=embed, context=context, **kwargs)

    def observe(self, request_ids: Sequence[Hashable], acceptance) -> None:
        if self.caps.observes:
            self.drafter.observe(list(request_ids), acceptance)

    def release(self, request_id: Hashable) -> None:
        if self.caps.releases:
            self.drafter.release(request_id)

    def check_target(self, model: nn.Module) -> None:
        if self.caps.checks_target:
            self.drafter.check_target(model)
