"""Rust core == the pure-torch reference (bench/reference.py) on random beams (hypothesis)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import redrafter_rs as rr
from redrafter_rs.bench import reference


@st.composite
def beam_batches(draw):
    """Beams [B, W, L] from a 3-token alphabet (so prefixes are shared), root shared per row,
    in half the cases with some beams ended early."""
    B = draw(st.integers(1, 3))
    W = draw(st.integers(1, 8))
    L = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    beams = rng.integers(0, 3, size=(B, W, L), dtype=np.int64)
    beams[:, :, 0] = rng.integers(0, 3, size=(B, 1))
    if draw(st.booleans()):  # ragged: some beams end early (-1 from a depth >= 1 on)
        ends = rng.integers(1, 2 * L + 1, size=(B, W, 1))
        beams[np.arange(L)[None, None] >= ends] = -1
    choice_seed = draw(st.integers(0, 2**31 - 1))
    return beams, choice_seed


@settings(max_examples=300, deadline=None)
@given(beam_batches())
def test_pack_and_accept_match_reference(case):
    beams, choice_seed = case
    tree = rr.pack_beams(beams)
    ref = reference.pack_beams(torch.from_numpy(beams))
    n = int(ref.num_nodes.max())
    assert tree.max_nodes == n
    for name in ("tokens", "depth", "parent", "unpacker", "num_nodes", "mask"):
        got = torch.from_numpy(getattr(tree, name))
        want = getattr(ref, name)
        if name in ("tokens", "depth", "parent", "mask"):  # compare real nodes only
            real = [slice(0, int(k)) for k in ref.num_nodes]
            for b, r in enumerate(real):
                g, w = got[b, r], want[b, r]
                if name == "mask":
                    g, w = g[:, r], w[:, r]
                assert torch.equal(g, w), (name, b)
        else:
            assert torch.equal(got, want), name
    # choices drawn so that acceptance is often partial: mostly follow beam tokens
    rng = np.random.default_rng(choice_seed)
    choice = rng.integers(0, 3, size=(beams.shape[0], n), dtype=np.int64)
    acc = rr.accept(tree, beams, choice)
    want = reference.accept(ref, torch.from_numpy(beams), torch.from_numpy(choice))
    for name in ("best_beam", "num_accepted", "path", "tokens", "bonus"):
        assert torch.equal(torch.from_numpy(getattr(acc, name)), getattr(want, name)), name


def test_packed_tokens_reconstruct_the_beams():
    rng = np.random.default_rng(7)
    beams = rng.integers(0, 2, size=(4, 16, 6), dtype=np.int64)
    beams[:, :, 0] = 1
    tree = rr.pack_beams(beams)
    rebuilt = np.take_along_axis(tree.tokens, tree.unpacker.reshape(4, -1), axis=1).reshape(
        beams.shape
    )
    np.testing.assert_array_equal(rebuilt, beams)
    # de-duplication: fewer nodes than W * L whenever beams share prefixes
    assert (tree.num_nodes < 16 * 6).all()
