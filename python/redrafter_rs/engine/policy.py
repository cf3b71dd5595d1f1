"""Load-aware speculation: pick the draft tree per step from batch size and recent acceptance.

A candidate shape is (W, L), W beams of L tokens, or (W, L, N), a best-nodes tree of N drafted
tokens (the most probable paths up to depth L - 1, searched at width W; drafters/search.py).

Speculation pays when the extra tokens a step emits outweigh what the bigger tree costs. Both
sides are measured, not guessed:
- cost: a one-off calibration times the target forward for m new tokens (m = B * tree nodes,
  the quantity that decides when verification turns compute-bound) and the drafter's beam
  search for each candidate shape; step cost = target(B * nodes(shape)) + B * drafter(shape).
  What the tables miss (the engine's host copies, packing, acceptance, KV upkeep and emitting;
  the real context length and the 4D tree mask the calibration forward runs without) is learnt
  from the engine's wall time of each step: slowdown = running mean of measured / predicted,
  per shape and batch-size bucket (B = 1, 2-3, 4-7, 8-15, 16+; before a shape's first step in
  a bucket: the shape's over all batch sizes; before its first step at all: over all steps),
  multiplies the tables' cost. Per bucket because what the tables miss grows with the rows
  differently per shape (2-core AMD EPYC, `redrafter serve` at 4 and 16 clients: trees priced
  from batch-1 slowdowns cost 9-12% of throughput against plain decoding). It is
  kept per shape because it differs by shape (0.84x-1.46x across shapes in one demo run on a
  2-core AMD EPYC, calibration noise included): one additive overhead for all shapes made plain
  decoding look as slow as trees and picked trees where they did not pay.
- gain: a running mean of the conditional acceptance rate at each depth,
  r_d = P(depth d accepted | depth d-1 accepted), updated from every step's acceptance; kept per
  width W for beams (a longer beam shape extends a shorter one) and per shape for trees. The
  prior counts as `prior_weight` observations and the n-th observation weighs
  max(ema, 1 / (n + prior_weight)), so a shape's first few steps replace the prior quickly and
  later ones follow drift as an exponential moving average.
  Expected tokens per row and step: E = 1 + sum_{d<L} prod_{j<=d} r_j.
Each step takes the shape with the highest expected tokens per second, B * E / cost; (1, 1) is
plain decoding (E = 1, no drafter). Every `explore_every` steps another shape is tried so the
estimates of unused shapes stay current: the least tried among those whose expected cost is at
most twice the best shape's, so probing stays cheap and reaches every affordable shape.

Calibrations are cached for the life of the model (target costs) and of the drafter (drafting
costs), so every `generate(..., adaptive=True)` call after the first reuses them. A retrieval
wrapper, made anew per call, is keyed by the RNN drafter it wraps. Target costs are measured
lazily: only the table points that bracket a tree size some decision needs (at batch 1 and
shapes up to 4x4, m <= 16), so a short call does not pay for timing 128-token forwards.
"""

from __future__ import annotations

import copy
import random
import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from redrafter_rs._common import cuda_sync
from redrafter_rs.engine import fastpath

Shape = tuple[int, ...]  # (W, L) beams or (W, L, N) a best-nodes tree

DEFAULT_SHAPES: tuple[Shape, ...] = (
    (1, 1), (1, 2), (1, 3), (2, 3), (1, 4), (2, 4), (4, 4),
    (1, 5), (2, 5), (4, 5), (8, 5), (1, 6), (4, 6), (8, 6),
    (4, 4, 3), (4, 4, 9), (4, 5, 12), (8, 5, 20), (8, 6, 32), (16, 7, 64),
)  # fmt: skip


def tree_nodes(shape: Shape) -> int | None:
    """N of a best-nodes tree shape, None for beams."""
    return shape[2] if len(shape) > 2 else None


def draft_kwargs(shape: Shape) -> dict:
    """The keyword arguments of `drafter.draft` that ask for `shape`."""
    kwargs = {"beam_width": shape[0], "beam_length": shape[1]}
    if tree_nodes(shape) is not None:
        kwargs["tree_nodes"] = tree_nodes(shape)
    return kwargs


def shape_name(shape: Shape) -> str:
    """WxL (beams) or WxLnN (a best-nodes tree of N)."""
    N = tree_nodes(shape)
    return f"{shape[0]}x{shape[1]}" if N is None else f"{shape[0]}x{shape[1]}n{N}"


# target forward cost per number of new tokens m, measured at these points (ms)
TARGET_POINTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
# model -> {m: ms}; dropped with the model
_TARGET_MS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# drafter (a retrieval wrapper's RNN drafter) -> {(kind, *shape): ms}; dropped with the drafter
_DRAFT_MS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class PolicyConfig:
    shapes: tuple[Shape, ...] = DEFAULT_SHAPES  # candidate (W, L) beams and (W, L, N) trees
    prior_rate: float = 0.5  # acceptance-rate prior before any observation
    prior_weight: float = 1.0  # the prior counts as this many observations
    ema: float = 0.1  # least weight of the newest observation (1/n before that)
    learn_slowdown: bool = True  # scale the tables' costs by the engine's measured step times
    explore_every: int = 16  # steps between exploration steps (0: never)
    seed: int = 0


class ShapePolicy:
    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self.max_depth = max(s[1] for s in self.config.shapes)
        keys = {self._key(s) for s in self.config.shapes}
        # acceptance-rate running mean per depth: per width W (beams), per shape (trees)
        self.rates = {k: np.full(self.max_depth, self.config.prior_rate) for k in keys}
        self.counts = {k: np.zeros(self.max_depth) for k in keys}  # observations per depth
        self.nodes = {s: float(_initial_nodes(s)) for s in self.config.shapes}  # running mean
        self.observed = dict.fromkeys(self.config.shapes, 0)  # steps observed per shape
        # measured step time / the tables' prediction: per shape, and over all steps
        self.slowdown = dict.fromkeys(self.config.shapes, 1.0)
        self.timed = dict.fromkeys(self.config.shapes, 0)
        self.slowdown_all, self.timed_all = 1.0, 0
        self.slowdown_b: dict[tuple, float] = {}  # (shape, batch bucket) -> slowdown
        self.timed_b: dict[tuple, int] = {}
        self.target_ms: dict[int, float] = {}  # new tokens -> ms
        self.draft_ms: dict[Shape, float] = {}  # shape -> ms at B = 1
        self.steps = 0
        self.rng = random.Random(self.config.seed)
        self.history: list[tuple[int, Shape]] = []  # (B, shape) chosen per step
        self._target = self._ids = self._prefilled = None  # set by `calibrate` (lazy timing)
        self._repeats = 2

    # ---- calibration --------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, target, proposer, context: int = 64, repeats: int = 2) -> None:
        """Attach the measured cost tables of (target, proposer): drafting costs for every
        candidate shape now (from the cache where measured before), target costs on demand.
        `proposer` is a `drafting.DrafterAdapter`."""
        drafter = proposer.drafter
        self._target, self._repeats = target, repeats
        self._ids = torch.randint(0, target.vocab_size, (1, context), device=target.device)
        self._prefilled = None  # the context's cache, prefilled on the first target timing
        # shared per model and linear-layer path (stock or fast): filled lazily
        per_path = _TARGET_MS.setdefault(target.model, {})
        self.target_ms = per_path.setdefault(fastpath.linear_path(target.model), {})
        inner = getattr(drafter, "rnn", None)  # a retrieval wrapper's RNN drafter
        owner = inner if isinstance(inner, torch.nn.Module) else drafter
        table = _DRAFT_MS.setdefault(owner, {})
        kind = type(drafter).__name__
        for shape in self.config.shapes:
            key = (kind, *shape)
            if key not in table:
                table[key] = self._time_drafter(target, proposer, self._ids, shape, repeats)
            self.draft_ms[shape] = table[key]

    @torch.no_grad()
    def _ensure_target(self, m: float) -> None:
        """Measure the table points bracketing m that are not measured yet."""
        if self._target is None:
            return  # tables set by hand (tests): interpolate what is there
        lo = max((p for p in TARGET_POINTS if p <= m), default=TARGET_POINTS[0])
        hi = min((p for p in TARGET_POINTS if p >= m), default=TARGET_POINTS[-1])
        target = self._target
        for p in (lo, hi):
            if p not in self.target_ms:
                if self._prefilled is None:
                    self._prefilled = target.new_cache()
                    target.forward(self._ids, self._prefilled)
                self.target_ms[p] = self._time_target(target, self._prefilled, p, self._repeats)

    @staticmethod
    def _time_drafter(target, proposer, ids, shape: Shape, repeats: int) -> float:
        if shape[1] == 1:
            return 0.0
        h = torch.zeros(1, target.hidden_size, device=ids.device)
        root = ids[:, -1]
        calibration = ["__calibration__"]
        cuda_sync(ids.device)
        t = time.perf_counter()
        for _ in range(repeats):
            proposer.draft(h, root, target.embed, shape, [ids[0]], calibration)
        cuda_sync(ids.device)
        proposer.release(calibration[0])
        return (time.perf_counter() - t) * 1e3 / repeats

    @staticmethod
    def _time_target(target, prefilled, m: int, repeats: int) -> float:
        """Best of `repeats` timings (after one warm-up) of m new tokens after the context."""
        best = float("inf")
        for _ in range(repeats + 1):
            cache = copy.deepcopy(prefilled)
            new = torch.randint(0, target.vocab_size, (1, m), device=target.device)
            cuda_sync(target.device)
            t = time.perf_counter()
            target.logits(target.forward(new, cache))
            cuda_sync(target.device)
            best = min(best, (time.perf_counter() - t) * 1e3)
        return best

    # ---- decisions ----------------------------------------------------------------------
    @staticmethod
    def _key(shape: Shape):
        return shape[0] if tree_nodes(shape) is None else tuple(shape)

    def expected_tokens(self, *shape: int) -> float:
        return 1.0 + float(np.cumprod(self.rates[self._key(shape)][: shape[1] - 1]).sum())

    def cost_ms(self, B: int, *shape: int) -> float:
        """Predicted wall time of one engine step of `shape` over B rows: the tables' cost
        times the measured slowdown of this shape (of all steps, before it is timed)."""
        key = (shape, _bucket(B))
        if self.timed_b.get(key):
            slowdown = self.slowdown_b[key]
        else:
            slowdown = self.slowdown[shape] if self.timed[shape] else self.slowdown_all
        return self._table_ms(B, shape) * slowdown

    def _table_ms(self, B: int, shape: Shape) -> float:
        """Target forward over the B trees + B drafter calls, from the calibration tables."""
        return self._interp(B * self.nodes[shape]) + B * self.draft_ms.get(shape, 0.0)

    def _interp(self, m: float) -> float:
        self._ensure_target(m)
        xs = sorted(self.target_ms)
        ys = [self.target_ms[x] for x in xs]
        if m > xs[-1]:  # beyond the table: compute-bound, linear in m
            return ys[-1] * m / xs[-1]
        return float(np.interp(m, xs, ys))

    def choose(self, B: int) -> Shape:
        """The shape for the next step of a batch of B rows, as listed in `config.shapes`."""
        self.steps += 1
        shapes = list(self.config.shapes)
        shape = max(shapes, key=lambda s: B * self.expected_tokens(*s) / self.cost_ms(B, *s))
        every = self.config.explore_every
        if every and self.steps % every == 0:  # probe a shape that costs at most twice as much
            budget = 2.0 * self.cost_ms(B, *shape)
            cheap = [s for s in shapes if s != shape and self.cost_ms(B, *s) <= budget]
            if cheap:  # the least tried of them (ties at random)
                fewest = min(self.observed[s] for s in cheap)
                shape = self.rng.choice([s for s in cheap if self.observed[s] == fewest])
        self.history.append((B, shape))
        return shape

    def _weight(self, n: float, prior: float | None = None) -> float:
        """Weight of the (n+1)-th observation: 1 / (n + 1 + prior), at least `ema` (prior:
        `prior_weight` pseudo-observations unless given)."""
        prior = self.config.prior_weight if prior is None else prior
        return max(self.config.ema, 1.0 / (n + 1.0 + prior))

    def observe(self, shape: Shape, accepted: np.ndarray, nodes: np.ndarray) -> None:
        """Update the acceptance rates of `shape` (its width, for beams) from per-row accepted
        counts [B], and its tree size from the nodes verified per row [B]."""
        key = self._key(shape)
        rates, counts = self.rates[key], self.counts[key]
        a = self._weight(self.observed[shape])
        self.nodes[shape] = (1 - a) * self.nodes[shape] + a * float(nodes.mean())
        self.observed[shape] += 1
        for d in range(1, shape[1]):
            tried = accepted >= d - 1  # rows that reached depth d - 1
            if tried.any():
                rate = float((accepted[tried] >= d).mean())
                a = self._weight(counts[d - 1])
                rates[d - 1] = (1 - a) * rates[d - 1] + a * rate
                counts[d - 1] += 1

    def observe_time(self, shape: Shape, B: int, ms: float) -> None:
        """Learn how much slower than the tables' prediction a step of `shape` over B rows ran,
        from its measured wall time `ms` (no-op unless `config.learn_slowdown`)."""
        if not self.config.learn_slowdown:
            return
        ratio = ms / max(self._table_ms(B, shape), 1e-6)  # no prior: the first step sets it
        self.slowdown[shape] += self._weight(self.timed[shape], 0) * (ratio - self.slowdown[shape])
        self.timed[shape] += 1
        self.slowdown_all += self._weight(self.timed_all, 0) * (ratio - self.slowdown_all)
        self.timed_all += 1
        key = (shape, _bucket(B))
        n = self.timed_b.get(key, 0)
        old = self.slowdown_b.get(key, ratio)
        self.slowdown_b[key] = old + self._weight(n, 0) * (ratio - old)
        self.timed_b[key] = n + 1


def _bucket(B: int) -> int:
    """Batch-size bucket of the learnt slowdowns: 1, 2-3, 4-7, 8-15, 16+ -> 1..5."""
    return min(max(int(B), 1).bit_length(), 5)


def _initial_nodes(shape: Shape) -> int:
    """Tree nodes (root included) before any observation: W (L - 1) + 1 beams, N + 1 trees."""
    N = tree_nodes(shape)
    return shape[0] * (shape[1] - 1) + 1 if N is None else N + 1
