"""Load-aware speculation: pick (W, L) per step from batch size and recent acceptance.

Speculation pays when the extra tokens a step emits outweigh what the bigger tree costs. Both
sides are measured, not guessed:
- cost: a one-off calibration times the target forward for m new tokens (m = B * tree nodes,
  the quantity that decides when verification turns compute-bound) and the drafter's beam
  search for each candidate shape; step cost = target(B * N(W, L)) + B * drafter(W, L).
- gain: per width W, an exponential moving average of the conditional acceptance rate at each
  depth, r_d = P(depth d accepted | depth d-1 accepted), updated from every step's acceptance.
  Expected tokens per row and step: E(W, L) = 1 + sum_{d<L} prod_{j<=d} r_j(W).
Each step takes the shape with the highest expected tokens per second, B * E / cost; (1, 1) is
plain decoding (E = 1, no drafter). Every `explore_every` steps a random other shape is tried so
the estimates of unused widths stay current; it picks among shapes whose expected cost is at
most twice the best shape's, so probing stays cheap. Calibrations are cached per (model, drafter).
"""

from __future__ import annotations

import random
import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_SHAPES = (
    (1, 1), (1, 2), (1, 3), (2, 3), (1, 4), (2, 4), (4, 4),
    (1, 5), (2, 5), (4, 5), (8, 5), (1, 6), (4, 6), (8, 6),
)  # fmt: skip


# model -> {(id(drafter), shapes): (target_ms, draft_ms)}; dropped with the model
_CALIBRATIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class PolicyConfig:
    shapes: tuple[tuple[int, int], ...] = DEFAULT_SHAPES  # candidate (W, L)
    prior_rate: float = 0.5  # acceptance-rate prior before any observation
    ema: float = 0.1  # weight of the newest observation
    explore_every: int = 16  # steps between exploration steps (0: never)
    seed: int = 0


class ShapePolicy:
    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self.max_depth = max(L for _, L in self.config.shapes)
        widths = sorted({W for W, _ in self.config.shapes})
        self.rates = {W: np.full(self.max_depth, self.config.prior_rate) for W in widths}
        self.target_ms: dict[int, float] = {}  # new tokens -> ms
        self.draft_ms: dict[tuple[int, int], float] = {}  # (W, L) -> ms at B = 1
        self.nodes = {s: float(s[0] * (s[1] - 1) + 1) for s in self.config.shapes}  # EMA
        self.steps = 0
        self.rng = random.Random(self.config.seed)
        self.history: list[tuple[int, int, int]] = []  # (B, W, L) chosen per step

    # ---- calibration --------------------------------------------------------------------
    def calibrate(self, target, drafter) -> None:
        """Measured cost tables for (target, drafter), from the cache or by `measure`."""
        cache = _CALIBRATIONS.setdefault(target.model, {})
        key = (id(drafter), self.config.shapes)
        if key not in cache:
            self.measure(target, drafter)
            cache[key] = (dict(self.target_ms), dict(self.draft_ms))
        self.target_ms, self.draft_ms = (dict(t) for t in cache[key])

    @torch.no_grad()
    def measure(self, target, drafter, context: int = 64, repeats: int = 2) -> None:
        """Time the target forward for m new tokens and the drafter per shape (B = 1)."""
        device = target.device
        ids = torch.randint(0, target.vocab_size, (1, context), device=device)
        for m in sorted({1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128}):
            self.target_ms[m] = self._time_target(target, ids, m, repeats)
        for W, L in self.config.shapes:
            self.draft_ms[(W, L)] = self._time_drafter(target, drafter, ids, W, L, repeats)

    @staticmethod
    def _time_drafter(target, drafter, ids, W: int, L: int, repeats: int) -> float:
        if L == 1:
            return 0.0
        h = torch.zeros(1, target.hidden_size, device=ids.device)
        root = ids[:, -1]
        extra = {"context": None}
        if getattr(drafter, "uses_context", False):
            extra = {"context": [ids[0]], "request_ids": ["__calibration__"]}
        t = time.perf_counter()
        for _ in range(repeats):
            drafter.draft(h, root, embed=target.embed, beam_width=W, beam_length=L, **extra)
        if hasattr(drafter, "release"):
            drafter.release("__calibration__")
        return (time.perf_counter() - t) * 1e3 / repeats

    @staticmethod
    def _time_target(target, ids, m: int, repeats: int) -> float:
        best = float("inf")
        for _ in range(repeats + 1):  # first run warms up
            cache = target.new_cache()
            target.forward(ids, cache)
            new = torch.randint(0, target.vocab_size, (1, m), device=ids.device)
            t = time.perf_counter()
            target.logits(target.forward(new, cache))
            best = min(best, (time.perf_counter() - t) * 1e3)
        return best

    # ---- decisions ----------------------------------------------------------------------
    def expected_tokens(self, W: int, L: int) -> float:
        return 1.0 + float(np.cumprod(self.rates[W][: L - 1]).sum())

    def cost_ms(self, B: int, W: int, L: int) -> float:
        m = B * self.nodes[(W, L)]
        return self._interp(m) + B * self.draft_ms.get((W, L), 0.0)

    def _interp(self, m: float) -> float:
        xs = sorted(self.target_ms)
        ys = [self.target_ms[x] for x in xs]
        if m > xs[-1]:  # beyond the table: compute-bound, linear in m
            return ys[-1] * m / xs[-1]
        return float(np.interp(m, xs, ys))

    def choose(self, B: int) -> tuple[int, int]:
        self.steps += 1
        shapes = list(self.config.shapes)
        shape = max(shapes, key=lambda s: B * self.expected_tokens(*s) / self.cost_ms(B, *s))
        every = self.config.explore_every
        if every and self.steps % every == 0:  # probe a shape that costs at most twice as much
            budget = 2.0 * self.cost_ms(B, *shape)
            cheap = [s for s in shapes if s != shape and self.cost_ms(B, *s) <= budget]
            shape = self.rng.choice(cheap) if cheap else shape
        self.history.append((B, *shape))
        return shape

    def observe(self, W: int, L: int, accepted: np.ndarray, nodes: np.ndarray) -> None:
        """Update acceptance rates of width W from per-row accepted counts, and tree sizes."""
        a = self.config.ema
        self.nodes[(W, L)] = (1 - a) * self.nodes[(W, L)] + a * float(nodes.mean())
        for d in range(1, L):
            tried = accepted >= d - 1  # rows that reached depth d - 1
            if tried.any():
                rate = float((accepted[tried] >= d).mean())
                self.rates[W][d - 1] = (1 - a) * self.rates[W][d - 1] + a * rate
