"""Retrieval drafts merged into the ReDrafter tree (SAM-Decoding style, arXiv 2411.10666).

Verification is lossless whatever proposes the candidates, so one tree can hold beams from
several sources. Retrieval proposes what followed earlier occurrences of the context's longest
repeated suffix, in the request's own text (one suffix automaton per request: built from the
prompt at first sight, extended with each step's emitted tokens, amortised O(1) per token,
dropped when the request ends) and optionally in a shared read-only corpus index
(`redrafter datastore build`). Candidates are ranked by (match length, frequency) in Rust, one
`_core.retrieve` call per step for the whole batch.

`RetrievalDrafter(rnn | None, config)` implements the engine's drafter protocol: beams
[B, W', L] = retrieval candidates (shorter ones end early: -1, no tree node) followed by the
RNN drafter's beams;
`pack_beams` merges shared prefixes, so a proposal made twice costs no extra tree node.

Budget: how a step's W beams are shared (`RetrievalConfig.budget`). Retrieval candidates
either displace RNN beams (the tree keeps its size) or come on top of them (a bigger tree):
  "adaptive"  retrieval displaces round(W * r_ret / (r_ret + r_rnn)) RNN beams (0 to W - 1), where
              r = moving average, per request, of the draft tokens each source's own beams
              matched on the accepted path per step (what it would have had accepted alone;
              priors r_ret = 0, r_rnn = 1, so retrieval earns its beams); when that rounds to
              0, one retrieval candidate still comes on top (a probe);
  "fixed"     retrieval displaces up to min(max_candidates, W - 1) RNN beams;
  "extra"     retrieval displaces nothing: up to max_candidates candidates on top of W.
Displacement happens only where retrieval has candidates; in a batch the RNN drafts
W - (the smallest displacement of any row) beams. Measured (tiny Llamas, W=4, L=5, a stand-in
RNN whose beams keep a geometric(0.4) prefix of the truth; tau / tree nodes per step):
                    RNN alone    retrieval alone  fixed        adaptive     extra
  repeating text    3.02 / 15.9  3.47 / 3.5       4.60 / 14.8  4.60 / 15.2  4.60 / 17.6
  non-repeating     3.01 / 15.9  1.04 / 1.3       2.92 / 15.9  2.99 / 16.3  3.02 / 16.3
(Measured when short candidates were padded with their last token, which added nodes; they now
end early.) "adaptive" (the default) matches the best tau on both for the fewest extra nodes.
Retrieval alone takes up to min(max_candidates, W) beams and the tree shrinks to its longest
candidate (a plain decode step when nothing matches).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from redrafter_rs import _core
from redrafter_rs._core import Datastore, SuffixAutomaton
from redrafter_rs.drafters.protocol import DrafterAdapter, require_context
from redrafter_rs.errors import check

__all__ = [
    "Datastore",
    "RetrievalConfig",
    "RetrievalDrafter",
    "SourceStats",
    "SuffixAutomaton",
    "with_retrieval",
]

BUDGETS = ("adaptive", "fixed", "extra")
_DRAFT = _core.RETRIEVAL_DEFAULTS["draft"]  # defined once, in the Rust core (QueryParams::DRAFT)


@dataclass
class RetrievalConfig:
    max_candidates: int | None = None  # retrieval beams per row at most (None: beam_width)
    min_match: int = _DRAFT["min_match"]  # shortest matched context suffix that proposes anything
    datastore: str | Path | _core.Datastore | None = None  # file, or a loaded one (no reload)
    budget: str = "adaptive"  # split of the W beams: "adaptive", "fixed" or "extra"
    ema: float = 0.25  # weight of the newest step in the per-source acceptance averages
    count_cap: int = _DRAFT["count_cap"]  # occurrences are counted up to this (ranking only)
    max_levels: int = _DRAFT["max_levels"]  # suffix-link levels (shorter matches) tried per query

    def __post_init__(self) -> None:
        k = self.max_candidates
        check(k is None or k >= 1, f"max_candidates must be >= 1 or None, got {k}")
        check(self.min_match >= 1, f"min_match must be >= 1, got {self.min_match}")
        check(self.budget in BUDGETS, f"budget must be one of {BUDGETS}, got {self.budget!r}")
        check(0 < self.ema <= 1, f"ema must be in (0, 1], got {self.ema}")
        check(self.count_cap >= 1, f"count_cap must be >= 1, got {self.count_cap}")
        check(self.max_levels >= 1, f"max_levels must be >= 1, got {self.max_levels}")


@dataclass
class SourceStats:
    """Acceptance of one draft source, over the steps where it proposed at least one beam.

    `matched`: draft tokens of the accepted path that the source's own beams proposed (its
    longest accepted prefix: what it would have had accepted alone).
    """

    steps: int = 0  # steps (per request) with at least one beam from this source
    matched: int = 0  # sum of its longest accepted prefix over those steps
    wins: int = 0  # steps where it proposed the whole accepted path (>= 1 draft token)
    per_depth: list[int] = field(default_factory=list)  # steps with >= d tokens matched

    @property
    def tau(self) -> float:
        """Tokens per step (its matched drafts + the bonus token) on its steps."""
        return (self.matched + self.steps) / self.steps if self.steps else 0.0

    @property
    def acceptance_per_depth(self) -> list[float]:
        return [c / self.steps for c in self.per_depth] if self.steps else []

    def add(self, matched: np.ndarray, accepted: np.ndarray) -> None:
        """Record steps: `matched` [R] tokens this source matched, `accepted` [R] in total."""
        self.steps += int(matched.size)
        self.matched += int(matched.sum())
        self.wins += int(((matched == accepted) & (accepted > 0)).sum())
        depth = int(matched.max(initial=0))
        self.per_depth += [0] * max(0, depth - len(self.per_depth))
        for d in range(1, depth + 1):
            self.per_depth[d - 1] += int((matched >= d).sum())

    def summary(self) -> dict:
        return {
            "steps": self.steps,
            "matched": self.matched,
            "wins": self.wins,
            "tau": round(self.tau, 4),
            "acceptance_per_depth": [round(a, 4) for a in self.acceptance_per_depth],
        }


@dataclass
class _Request:
    sam: _core.SuffixAutomaton
    rate: dict[str, float]  # per source: moving average of matched draft tokens per step


@dataclass
class _Part:
    beams: np.ndarray  # [B, w, L] this source's beams (host copy)
    valid: np.ndarray  # [B, w] which of them the source really proposed


def _open_datastore(store) -> _core.Datastore | None:
    if store is None or isinstance(store, _core.Datastore):
        return store
    return _core.Datastore.load(Path(store))


class RetrievalDrafter(nn.Module):
    """Multi-source drafter: retrieval candidates plus, optionally, an RNN drafter's beams.

    drafter = RetrievalDrafter(rnn_drafter_or_None, RetrievalConfig(datastore="corpus.rrds"))
    gen = SpeculativeGenerator(model, drafter, SpecConfig(beam_width=4, beam_length=5))

    `stats` holds per-source acceptance (`SourceStats`) over every request so far.
    """

    uses_context = True

    def __init__(self, rnn: nn.Module | None = None, config: RetrievalConfig | None = None):
        super().__init__()
        self.rnn = rnn
        self._rnn = None if rnn is None else DrafterAdapter(rnn)
        self.config = config or RetrievalConfig()
        self.datastore = _open_datastore(self.config.datastore)
        self.stats = {"retrieval": SourceStats()}
        if rnn is not None:
            self.stats["rnn"] = SourceStats()
        self._requests: dict[Hashable, _Request] = {}
        self._last: tuple[list, dict[str, _Part]] | None = None  # latest draft, for observe

    def check_target(self, model: nn.Module) -> None:
        if self._rnn is not None:
            self._rnn.check_target(model)

    # ---- the drafter protocol -----------------------------------------------------------
    @torch.no_grad()
    def draft(
        self,
        hidden: torch.Tensor,
        root: torch.Tensor,
        *,
        embed: nn.Module,
        beam_width: int,
        beam_length: int,
        context: list[torch.Tensor] | None = None,
        request_ids: list[Hashable] | None = None,
        tree_nodes: int | None = None,
    ) -> torch.Tensor:
        """Host beams [B, W', L'] with beams[:, :, 0] == root: retrieval first, then the RNN's
        (its best-nodes tree with `tree_nodes`, less L - 1 nodes per displaced beam)."""
        require_context(self, context, request_ids)
        W, L = beam_width, beam_length
        reqs = [self._sync(rid, ctx) for rid, ctx in zip(request_ids, context, strict=True)]
        # The root is the context's last token (the engine's protocol, drafters/protocol.py):
        # read from the host context, it costs no wait for the device.
        root_np = np.array([int(ctx[-1]) for ctx in context], dtype=np.int64)  # [B]
        tokens, lengths, n, displaced = self._retrieve(reqs, W, L)  # [B, k, L-1], [B, k], [B]
        if self.rnn is None:
            beams, parts = self._alone(root_np, tokens, lengths, n)
            beams = torch.from_numpy(beams)  # host beams: the engine packs them on the host
        else:
            width, nodes = W - int(displaced.min()), tree_nodes
            if nodes is not None:  # a displaced beam frees L - 1 nodes; the RNN keeps its W
                width, nodes = W, max(1, nodes - int(displaced.min()) * (L - 1))
            rnn = self._rnn_beams(hidden, root, embed, width, L, context, request_ids, nodes)
            rnn_np = rnn.cpu().numpy()  # [B, w, L]: the step's one wait for drafted beams
            ret = _candidate_beams(root_np, tokens, lengths, n, fill=rnn_np[:, 0])
            parts = {
                "retrieval": _Part(ret, np.arange(ret.shape[1])[None] < n[:, None]),
                "rnn": _Part(rnn_np, np.ones(rnn_np.shape[:2], dtype=bool)),
            }
            beams = torch.from_numpy(np.concatenate([ret, rnn_np.astype(np.int64)], axis=1))
        self._last = (list(request_ids), parts)
        return beams

    def observe(self, request_ids: list[Hashable], acceptance) -> None:
        """Per-source acceptance of the step just verified (stats and budget averages)."""
        if self._last is None or self._last[0] != list(request_ids):
            return
        accepted = np.asarray(acceptance.num_accepted)  # [B]
        emitted = np.asarray(acceptance.tokens)  # [B, L']: accepted drafts, bonus, -1
        a = self.config.ema
        for name, part in self._last[1].items():
            if part.beams.shape[1] == 0:
                continue
            matched = _matched(part, emitted, accepted)  # [B], -1 where not offered
            offered = matched >= 0
            self.stats[name].add(matched[offered], accepted[offered])
            for rid, m, ok in zip(request_ids, matched, offered, strict=True):
                req = self._requests.get(rid)
                if ok and req is not None:
                    req.rate[name] = (1 - a) * req.rate[name] + a * float(m)
        self._last = None

    def release(self, request_id: Hashable) -> None:
        """Drop the request's automaton (the engine calls this when the request ends)."""
        self._requests.pop(request_id, None)
        if self._rnn is not None:
            self._rnn.release(request_id)

    def source_stats(self) -> dict[str, dict]:
        return {name: s.summary() for name, s in self.stats.items()}

    @property
    def automata(self) -> dict[Hashable, _core.SuffixAutomaton]:
        """The live requests' suffix automata by request id (a new dict per read, read-only
        use): one per request drafted for and not yet released."""
        return {rid: req.sam for rid, req in self._requests.items()}

    # ---- pieces -------------------------------------------------------------------------
    def _sync(self, request_id: Hashable, ctx: torch.Tensor) -> _Request:
        """The request's automaton, caught up with its context (prompt + emitted tokens)."""
        req = self._requests.get(request_id)
        if req is None or len(req.sam) > ctx.shape[0]:
            req = _Request(_core.SuffixAutomaton(), {"retrieval": 0.0, "rnn": 1.0})
            self._requests[request_id] = req
        done = len(req.sam)
        if ctx.shape[0] > done:
            new = ctx[done:].cpu().numpy().astype(np.int64, copy=False)
            req.sam.extend(np.ascontiguousarray(new))
        return req

    def _split(self, req: _Request, W: int) -> tuple[int, int]:
        """(RNN beams retrieval may displace, retrieval candidates to ask for): module docs."""
        cap = self.config.max_candidates or W
        if self.rnn is None:
            return 0, min(cap, W)
        room = min(cap, W - 1)
        if self.config.budget == "extra":
            return 0, cap
        if self.config.budget == "fixed":
            return room, max(room, 1)
        r, q = req.rate["retrieval"], req.rate["rnn"]
        share = r / (r + q) if r + q > 0 else 0.5
        displace = int(np.clip(round(W * share), 0, max(room, 0)))
        return displace, max(displace, 1)

    def _retrieve(self, reqs: list[_Request], W: int, L: int):
        """Candidates of L - 1 tokens: tokens [B, k, L-1] (-1 padded), lengths [B, k], n [B],
        and the RNN beams each row lets them displace [B]."""
        B = len(reqs)
        split = np.array([self._split(r, W) for r in reqs] if L > 1 else [(0, 0)] * B)
        displace, quota = split.reshape(B, 2).T
        k = int(quota.max(initial=0))
        if k == 0:
            none = np.zeros(B, np.int64)
            return np.full((B, 0, L - 1), -1), np.zeros((B, 0), np.int64), none, none
        cfg = self.config
        c = _core.retrieve(
            [r.sam for r in reqs], k, L - 1, datastore=self.datastore,
            min_match=cfg.min_match, count_cap=cfg.count_cap, max_levels=cfg.max_levels,
        )  # fmt: skip
        n = np.minimum(c.num, quota)
        used = int(n.max())  # slots past every row's quota or candidates are dropped
        valid = np.arange(k)[None] < n[:, None]  # [B, k]
        lengths = np.where(valid, c.lengths, 0)
        return c.tokens[:, :used], lengths[:, :used], n, np.minimum(displace, n)

    def _alone(self, root: np.ndarray, tokens, lengths, n) -> tuple[np.ndarray, dict]:
        """Retrieval beams only, as short as the longest candidate any row uses."""
        B, k = len(root), max(1, tokens.shape[1])
        depth = int(lengths.max(initial=0))
        tok = np.full((B, k, depth), -1, dtype=np.int64)
        tok[:, : tokens.shape[1]] = tokens[:, :, :depth]
        lens = np.zeros((B, k), dtype=np.int64)
        lens[:, : tokens.shape[1]] = lengths
        # rows with fewer than k candidates repeat their first one (or the root alone)
        first = _candidate_beams(root, tok[:, :1], lens[:, :1], np.minimum(n, 1), None)
        beams = _candidate_beams(root, tok, lens, n, fill=first[:, 0])
        return beams, {"retrieval": _Part(beams, np.arange(k)[None] < n[:, None])}

    def _rnn_beams(
        self, hidden, root, embed, width, L, context, request_ids, tree_nodes
    ) -> torch.Tensor:
        shape = (width, L) if tree_nodes is None else (width, L, tree_nodes)
        return self._rnn.draft(hidden, root, embed, shape, context, request_ids)


def _candidate_beams(root, tokens, lengths, n, fill) -> np.ndarray:
    """Beams [B, k, L] = root then each candidate, short ones ended early (-1: no tree node);
    slots past a row's `n` candidates become `fill[b]` ([B, L]; None: the root alone)."""
    B, k, D = tokens.shape
    beams = np.full((B, k, D + 1), -1, dtype=np.int64)
    beams[:, :, 0] = root[:, None]
    if D:
        real = np.arange(D)[None, None] < lengths[..., None]
        beams[:, :, 1:] = np.where(real, tokens, -1)
    if fill is None:
        fill = np.full((B, D + 1), -1, dtype=np.int64)
        fill[:, 0] = root
    valid = np.arange(k)[None] < n[:, None]  # [B, k]
    return np.where(valid[..., None], beams, fill[:, None, :])


def _matched(part: _Part, emitted: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """Per row: the longest prefix of the accepted drafts found on one of the part's beams
    (-1 for rows where the part proposed nothing)."""
    D = part.beams.shape[2] - 1
    drafts = emitted[:, None, :D]  # [B, 1, D]
    in_path = np.arange(D)[None, None] < accepted[:, None, None]  # [B, 1, D]
    same = (part.beams[:, :, 1:] == drafts) & in_path  # [B, w, D]
    lcp = np.cumprod(same, axis=2).sum(axis=2)  # [B, w]
    return np.where(part.valid, lcp, -1).max(axis=1)


def with_retrieval(drafter: nn.Module | None, retrieval) -> nn.Module:
    """`drafter` wrapped for `retrieval` (True, a RetrievalConfig, or None/False for none)."""
    if retrieval is None or retrieval is False:
        check(
            drafter is not None,
            "drafter is None: pass a drafter, or retrieval=True for retrieval drafts alone",
        )
        return drafter
    config = RetrievalConfig() if retrieval is True else retrieval
    check(
        isinstance(config, RetrievalConfig),
        f"retrieval must be True, False, None or a RetrievalConfig, got {type(retrieval)}",
    )
    return RetrievalDrafter(drafter, config)
