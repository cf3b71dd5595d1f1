"""Load-aware speculation: the (W, L) decision rule, and exactness with it switched on."""

from __future__ import annotations

import numpy as np
import torch

import redrafter_rs as rr
from helpers import OracleDrafter
from redrafter_rs.policy import PolicyConfig, ShapePolicy

# Step costs measured on this 2-core CPU for SmolLM2-135M (ms per target forward with m new
# tokens, offline-assets.md) and a drafter costing 2 ms per drafted depth at W = 4.
TARGET_MS = {1: 51, 2: 54, 3: 56, 4: 95, 5: 99, 8: 118, 16: 194, 32: 380, 64: 760, 128: 1520}


def _policy() -> ShapePolicy:
    p = ShapePolicy(PolicyConfig(explore_every=0))
    p.target_ms = dict(TARGET_MS)
    p.draft_ms = {(W, L): 0.5 * W * (L - 1) for W, L in p.config.shapes}
    return p


def _feed(policy: ShapePolicy, W: int, L: int, rate: float, B: int = 1, steps: int = 200):
    rng = np.random.default_rng(0)
    for _ in range(steps):
        accepted = np.zeros(B, dtype=np.int64)
        for d in range(1, L):
            accepted += (accepted == d - 1) & (rng.random(B) < rate)
        policy.observe(W, L, accepted, np.full(B, W * (L - 1) + 1))


def test_nothing_accepted_means_plain_decoding():
    p = _policy()
    for W, L in p.config.shapes:
        _feed(p, W, L, rate=0.0)
    assert p.choose(1) == (1, 1)
    assert p.choose(8) == (1, 1)


def test_good_acceptance_speculates_and_backs_off_under_load():
    p = _policy()
    for W, L in p.config.shapes:
        _feed(p, W, L, rate=0.8)
    W1, L1 = p.choose(1)
    # the BLAS cliff at 4 tokens (51 -> 95 ms) makes a 3-node chain the best buy at batch 1
    assert (W1, L1) == (1, 3) and p.expected_tokens(W1, L1) > 2.4
    W64, L64 = p.choose(64)
    # at batch 64 verification is compute-bound: the tree must shrink
    assert W64 * (L64 - 1) + 1 < W1 * (L1 - 1) + 1
    # without the cliff (a flat small-M kernel), longer and wider trees pay at batch 1
    p.target_ms = {m: 51 + 0.5 * m for m in TARGET_MS}
    W, L = p.choose(1)
    assert L >= 5 and p.expected_tokens(W, L) > 3.0


def test_acceptance_estimates_follow_observations():
    p = _policy()
    _feed(p, 4, 5, rate=0.9)
    _feed(p, 2, 5, rate=0.2)
    assert p.expected_tokens(4, 5) > 3.0 > p.expected_tokens(2, 5)
    assert p.rates[4][0] > 0.8 and p.rates[2][0] < 0.35


def test_adaptive_generation_stays_exact_and_calibrates(tiny_model, tiny_drafter):
    ids = torch.tensor([[4, 8, 15, 16]])
    want = tiny_model.generate(ids, do_sample=False, max_new_tokens=40)
    oracle = OracleDrafter(want[0], tiny_model.config.vocab_size)
    gen = rr.SpeculativeGenerator(tiny_model, oracle, rr.SpecConfig(8, 6, 40, adaptive=True))
    gen.add(0, ids)
    while gen.has_unfinished():
        gen.step()
    assert gen.pop_finished()[0].tokens == want[0, 4:].tolist()
    assert gen.policy.target_ms and gen.policy.draft_ms  # measured, not assumed
    shapes = [(W, L) for _, W, L in gen.policy.history]
    assert max(L for _, L in shapes) > 1  # a perfect drafter gets speculation
    out = rr.generate(tiny_model, tiny_drafter, ids, max_new_tokens=40, adaptive=True)
    assert torch.equal(out.sequences, want)


def test_calibration_is_measured_once_and_only_where_needed(tiny_model, tiny_drafter, monkeypatch):
    """Target costs are timed lazily (only the points bracketing the tree sizes a batch-1
    decision needs) and, with drafting costs, reused by later calls, retrieval wrappers too."""
    from redrafter_rs import policy

    timed: list[int] = []
    time_target = ShapePolicy._time_target

    def spy(target, prefilled, m, repeats):
        timed.append(m)
        return time_target(target, prefilled, m, repeats)

    monkeypatch.setattr(ShapePolicy, "_time_target", staticmethod(spy))
    policy._TARGET_MS.pop(tiny_model, None)
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    want = tiny_model.generate(ids, do_sample=False, max_new_tokens=24)
    kw = dict(max_new_tokens=24, beam_width=4, beam_length=4, adaptive=True, retrieval=True)
    out = rr.generate(tiny_model, tiny_drafter, ids, **kw)
    assert torch.equal(out.sequences, want)
    first = sorted(timed)
    assert first and max(first) <= 16  # 4x4 has at most 13 nodes: no 24..128-token forwards
    assert sum(out.stats.shapes.values()) == out.stats.steps
    drafted = len(policy._DRAFT_MS[tiny_drafter])
    timed.clear()
    out = rr.generate(tiny_model, tiny_drafter, ids, **kw)  # a new retrieval wrapper
    assert torch.equal(out.sequences, want)
    assert timed == [] and len(policy._DRAFT_MS[tiny_drafter]) == drafted
