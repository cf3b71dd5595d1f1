"""Load-aware speculation: the tree-shape decision rule, and exactness with it switched on."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import redrafter_rs as rr
from helpers import OracleDrafter, tiny_llama
from redrafter_rs.engine.policy import PolicyConfig, ShapePolicy

# Step costs measured on this 2-core CPU for SmolLM2-135M (ms per target forward with m new
# tokens; see benchmarks/README.md) and a drafter costing 2 ms per drafted depth at W = 4.
TARGET_MS = {1: 51, 2: 54, 3: 56, 4: 95, 5: 99, 8: 118, 16: 194, 32: 380, 64: 760, 128: 1520}


BEAMS = tuple(s for s in PolicyConfig().shapes if len(s) == 2)


def _policy(shapes=BEAMS) -> ShapePolicy:
    p = ShapePolicy(PolicyConfig(shapes, explore_every=0))
    p.target_ms = dict(TARGET_MS)
    p.draft_ms = {s: 0.5 * s[0] * (s[1] - 1) for s in p.config.shapes}
    return p


def _feed(policy: ShapePolicy, W: int, L: int, rate: float, B: int = 1, steps: int = 200, N=None):
    rng = np.random.default_rng(0)
    nodes = W * (L - 1) + 1 if N is None else N + 1
    for _ in range(steps):
        accepted = np.zeros(B, dtype=np.int64)
        for d in range(1, L):
            accepted += (accepted == d - 1) & (rng.random(B) < rate)
        policy.observe((W, L) if N is None else (W, L, N), accepted, np.full(B, nodes))


def test_nothing_accepted_means_plain_decoding():
    p = _policy(PolicyConfig().shapes)
    for s in p.config.shapes:
        _feed(p, s[0], s[1], rate=0.0, N=s[2] if len(s) > 2 else None)
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


def test_best_nodes_tree_chosen_when_it_accepts_more_per_node():
    """Trees keep their own acceptance estimates: a 9-node tree that accepts like a 4 x 4 beam
    tree (13 nodes) wins on cost; one that accepts nothing loses to the beams."""
    shapes = ((1, 1), (4, 4), (4, 4, 9))
    p = _policy(shapes)
    p.target_ms = {m: 51 + 2.0 * m for m in TARGET_MS}  # no cliff: cost grows with nodes
    p.draft_ms[(4, 4, 9)] = p.draft_ms[(4, 4)]  # the same drafter calls as 4 x 4 beams
    _feed(p, 4, 4, rate=0.7)
    _feed(p, 4, 4, rate=0.7, N=9)
    assert p.nodes[(4, 4, 9)] == pytest.approx(10) and p.nodes[(4, 4)] == pytest.approx(13)
    assert p.choose(1) == (4, 4, 9)
    _feed(p, 4, 4, rate=0.0, N=9)
    assert p.rates[4][0] > 0.6 and p.rates[(4, 4, 9)][0] < 0.05  # beams kept their estimate
    assert p.choose(1) == (4, 4)


def test_first_observations_replace_the_prior_quickly():
    """A shape's first steps count 1/n (the prior as one observation), later ones as an EMA:
    three steps that accept everything move a rate from the 0.5 prior past 0.85."""
    p = _policy(((1, 1), (4, 4, 9)))
    for _ in range(3):
        p.observe((4, 4, 9), np.array([3]), np.array([10]))
    assert p.rates[(4, 4, 9)][:3] == pytest.approx([0.875] * 3)
    assert p.counts[(4, 4, 9)][:3].tolist() == [3, 3, 3] and p.observed[(4, 4, 9)] == 3
    for _ in range(100):  # long run: the newest observations dominate (EMA weight 0.1)
        p.observe((4, 4, 9), np.array([0]), np.array([10]))
    p.observe((4, 4, 9), np.array([3]), np.array([10]))
    assert 0.09 < p.rates[(4, 4, 9)][0] < 0.11


def test_exploration_reaches_the_least_tried_affordable_shape():
    shapes = ((1, 1), (1, 2), (1, 3), (2, 3), (4, 4, 3))
    p = ShapePolicy(PolicyConfig(shapes, explore_every=1))
    p.target_ms = {m: 50.0 for m in TARGET_MS}  # flat: every shape is affordable
    p.draft_ms = dict.fromkeys(shapes, 1.0)
    seen = []
    for _ in range(len(shapes) - 1):
        shape = p.choose(1)
        seen.append(shape)
        p.observe(shape, np.array([0]), np.array([1]))
    best = max(shapes, key=lambda s: p.expected_tokens(*s) / p.cost_ms(1, *s))
    assert sorted(seen + [best]) == sorted(shapes)  # each probe went to an untried shape


def test_measured_step_times_scale_each_shapes_cost():
    """A 9-node tree accepting 70% per depth (E = 2.53) beats plain decoding on the tables alone
    (2.53 / 107.5 ms > 1 / 50 ms). Measured tree steps 1.5x slower than predicted leave it ahead
    while plain decoding is untimed (both scaled by the all-steps 1.5x), but once plain steps
    are measured at their predicted cost, plain decoding wins (1 / 50 > 2.53 / 161)."""
    shapes = ((1, 1), (4, 4, 9))
    p = _policy(shapes)
    p.target_ms = {1: 50.0, 2: 90.0, 4: 95.0, 8: 100.0, 16: 110.0}
    p.draft_ms = {(1, 1): 0.0, (4, 4, 9): 5.0}
    _feed(p, 4, 4, rate=0.7, N=9, steps=400)
    assert p.nodes[(4, 4, 9)] == pytest.approx(10)
    assert p.choose(1) == (4, 4, 9)
    predicted = p.cost_ms(1, 4, 4, 9)  # untimed, slowdown 1: the tables' cost
    assert predicted == pytest.approx(107.5)  # 102.5 ms for 10 nodes (interpolated) + 5 ms
    for _ in range(20):
        p.observe_time((4, 4, 9), 1, 1.5 * predicted)
    assert p.slowdown[(4, 4, 9)] == pytest.approx(1.5) and p.slowdown_all == pytest.approx(1.5)
    assert p.cost_ms(1, 1, 1) == pytest.approx(75.0)  # untimed: the all-steps slowdown
    assert p.choose(1) == (4, 4, 9)
    for _ in range(3):
        p.observe_time((1, 1), 1, 50.0)
    assert p.cost_ms(1, 1, 1) == pytest.approx(50.0)
    assert p.choose(1) == (1, 1)
    off = _policy(shapes)
    off.config.learn_slowdown = False
    off.observe_time((1, 1), 1, 80.0)
    assert off.timed_all == 0 and off.cost_ms(1, 1, 1) == 51.0  # TARGET_MS[1], unscaled


def test_slowdowns_are_learnt_per_batch_size():
    """A tree whose steps run at their predicted cost alone but 2x slower at 16 rows (what the
    tables miss grows with the rows: `redrafter serve` under load) stays the choice at B = 1 and
    gives way to plain decoding at B = 16, where plain steps run as predicted. A batch size with
    no timed step of a shape yet uses the shape's slowdown over all batch sizes."""
    shapes = ((1, 1), (4, 4, 9))
    p = _policy(shapes)
    p.target_ms = {1: 50.0, 16: 60.0, 160: 120.0, 256: 200.0}  # verification nearly free
    p.draft_ms = {(1, 1): 0.0, (4, 4, 9): 0.5}
    _feed(p, 4, 4, rate=0.7, N=9, steps=400)
    tree, plain = (4, 4, 9), (1, 1)
    assert p.choose(1) == tree and p.choose(16) == tree  # on the tables alone
    for B, factor in ((1, 1.0), (16, 2.0)):
        for _ in range(20):
            p.observe_time(tree, B, factor * p._table_ms(B, tree))
            p.observe_time(plain, B, p._table_ms(B, plain))
    assert p.cost_ms(1, *tree) == pytest.approx(p._table_ms(1, tree))
    assert p.cost_ms(16, *tree) == pytest.approx(2.0 * p._table_ms(16, tree))
    assert p.choose(1) == tree and p.choose(16) == plain
    between = p.slowdown[tree]  # B = 4 was never timed: the shape's slowdown over all B
    assert 1.0 < between < 2.0 and p.cost_ms(4, *tree) == pytest.approx(
        between * p._table_ms(4, tree)
    )


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
    assert gen.policy.timed_all == gen.policy.steps  # every step's wall time observed
    shapes = [shape for _, shape in gen.policy.history]
    assert max(s[1] for s in shapes) > 1  # a perfect drafter gets speculation
    out = rr.generate(tiny_model, tiny_drafter, ids, max_new_tokens=40, adaptive=True)
    assert torch.equal(out.sequences, want)
    custom = PolicyConfig(shapes=((1, 1), (1, 2), (2, 3)))  # adaptive=PolicyConfig, W x L bound
    kw = dict(max_new_tokens=40, beam_width=2, beam_length=3, adaptive=custom)
    out = rr.generate(tiny_model, tiny_drafter, ids, **kw)
    assert torch.equal(out.sequences, want)
    # every step ran one of the three shapes (none outside them, none uncounted)
    assert set(out.stats.shapes) <= {"1x1", "1x2", "2x3"}
    assert sum(out.stats.shapes.values()) == out.stats.steps > 0


def test_adaptive_best_nodes_trees_stay_exact(tiny_model, tiny_drafter):
    """Steps that switch between plain decoding, beams and best-nodes trees (ragged, -1
    padded) keep greedy output identical, with retrieval drafts merged too."""
    ids = torch.tensor([[4, 8, 15, 16, 23, 42, 4, 8]])
    want = tiny_model.generate(ids, do_sample=False, max_new_tokens=40)
    shapes = ((1, 1), (2, 3), (4, 4, 3), (4, 4, 9))
    for drafter in (tiny_drafter, rr.RetrievalDrafter(tiny_drafter)):
        cfg = rr.SpecConfig(4, 4, 40, adaptive=True, policy=PolicyConfig(shapes))
        gen = rr.SpeculativeGenerator(tiny_model, drafter, cfg)
        cycle = itertools.cycle(shapes)  # every kind of step, in turn
        gen.policy.choose = lambda B, c=cycle: next(c)
        gen.add(0, ids)
        while gen.has_unfinished():
            gen.step()
        req = gen.pop_finished()[0]
        assert req.tokens == want[0, 8:].tolist()
        assert {"1x1", "2x3", "4x4n3", "4x4n9"} == set(req.stats.shapes), req.stats.shapes
        assert gen.policy.draft_ms[(4, 4, 9)] > 0  # trees are timed like beams
        assert gen.policy.rates[(4, 4, 9)][0] != 0.5  # its own estimate, moved off the prior


def test_calibration_is_measured_once_and_only_where_needed():
    """Target costs are timed lazily (only the points bracketing the tree sizes a batch-1
    decision needs) and, with drafting costs, reused by later generators of the same model and
    drafter, retrieval wrappers too. A fresh model and drafter: nothing timed before."""
    model = tiny_llama()
    torch.manual_seed(1)
    drafter = rr.RecurrentDrafter.for_target(model, num_layers=1).eval()
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    want = model.generate(ids, do_sample=False, max_new_tokens=24)
    config = rr.SpecConfig(4, 4, 24, adaptive=True)
    policies = []
    for _ in range(2):  # each run: a new generator around a new retrieval wrapper
        gen = rr.SpeculativeGenerator(model, rr.RetrievalDrafter(drafter), config)
        gen.add(0, ids)
        while gen.has_unfinished():
            gen.step()
        req = gen.pop_finished()[0]
        assert req.tokens == want[0, 6:].tolist()
        assert sum(req.stats.shapes.values()) == req.stats.steps
        policies.append((gen.policy, dict(gen.policy.target_ms), dict(gen.policy.draft_ms)))
    (first, first_target, first_draft), (second, second_target, second_draft) = policies
    # the first run timed a few points only: 4x4 has at most 13 nodes, no 24..128-token forwards
    assert first_target and max(first_target) <= 16
    assert set(first_draft) == set(first.config.shapes)
    # the second run timed nothing: the same measurements (not new timings, which would differ)
    assert second_target == first_target and second_draft == first_draft
    assert second.target_ms is first.target_ms  # one table per model (and linear-layer path)
