"""The Rust core through its Python binding: hand-worked cases, zero-copy, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import redrafter_rs as rr
from redrafter_rs import RedrafterError

# The 3-beam example of docs/design.md §5 (B=1, W=3, L=4).
BEAMS = np.array([[[91, 92, 93, 95], [91, 92, 94, 96], [91, 92, 93, 97]]], dtype=np.int64)


def test_reference_example_tree():
    tree = rr.pack_beams(BEAMS)
    assert (tree.batch, tree.width, tree.length, tree.max_nodes) == (1, 3, 4, 7)
    assert tree.tokens.tolist() == [[91, 92, 93, 95, 94, 96, 97]]
    assert tree.depth.tolist() == [[0, 1, 2, 3, 2, 3, 3]]
    assert tree.parent.tolist() == [[-1, 0, 1, 2, 1, 4, 2]]
    assert tree.unpacker.tolist() == [[[0, 1, 2, 3], [0, 1, 4, 5], [0, 1, 2, 6]]]
    assert tree.num_nodes.tolist() == [7]
    rows = ["1000000", "1100000", "1110000", "1111000", "1100100", "1100110", "1110001"]
    expected = np.array([[c == "1" for c in r] for r in rows])
    np.testing.assert_array_equal(tree.mask[0], expected)


def test_reference_example_accept():
    tree = rr.pack_beams(BEAMS)
    # target agrees with 92, 94 then wants 5 instead of 96 -> beam 1, two drafts, bonus 5
    choice = np.array([[92, 94, 0, 0, 5, 0, 0]], dtype=np.int64)
    acc = rr.accept(tree, BEAMS, choice)
    assert acc.best_beam.tolist() == [1]
    assert acc.num_accepted.tolist() == [2]
    assert acc.path.tolist() == [[0, 1, 4, -1]]
    assert acc.tokens.tolist() == [[92, 94, 5, -1]]
    assert acc.bonus.tolist() == [5]


def test_outputs_are_rust_buffers_handed_over_without_copies():
    tree = rr.pack_beams(BEAMS)
    assert tree.tokens.dtype == np.int64 and tree.mask.dtype == np.bool_
    assert tree.tokens.flags.c_contiguous and tree.mask.flags.c_contiguous
    # the getter returns the same numpy object every time: no copy per access
    assert tree.tokens is tree.tokens
    # the data lives in the Rust Vec moved into numpy (numpy does not own a copy of it)
    assert not tree.tokens.flags.owndata and tree.tokens.base is not None


def test_accept_reads_choice_without_copy_and_does_not_modify_it():
    tree = rr.pack_beams(BEAMS)
    choice = np.array([[92, 93, 95, 7, 0, 0, 0]], dtype=np.int64)
    before = choice.copy()
    acc = rr.accept(tree, BEAMS, choice)
    np.testing.assert_array_equal(choice, before)
    assert acc.num_accepted.tolist() == [3] and acc.bonus.tolist() == [7]


@pytest.mark.parametrize(
    ("beams", "fragment"),
    [
        (np.zeros((1, 0, 4), dtype=np.int64), "W"),
        (np.zeros((1, 3, 0), dtype=np.int64), "L"),
        (np.zeros((0, 3, 4), dtype=np.int64), "B"),
        (np.zeros((3, 4), dtype=np.int64), "[B, W, L]"),
        (np.zeros((1, 3, 4), dtype=np.int32), "int64"),
        (np.zeros((1, 3, 4), dtype=np.float64), "int64"),
        (np.array([[[-1, 5]]], dtype=np.int64), "beams[0, 0, 0] = -1"),
        (np.array([[[5, -1, 6]]], dtype=np.int64), "follows the beam's end"),
        (np.array([[[5, -2]]], dtype=np.int64), "beams[0, 0, 1] = -2"),
        (np.array([[[5, 6], [7, 6]]], dtype=np.int64), "root"),
        ([[[1, 2]]], "numpy"),
    ],
)
def test_pack_beams_rejects_bad_input(beams, fragment):
    with pytest.raises(RedrafterError, match=None) as info:
        rr.pack_beams(beams)
    assert fragment.lower() in str(info.value).lower()
    assert isinstance(info.value, ValueError)


def test_ragged_beams_end_early():
    # beam 1 ends after 94, beam 2 after the root: 5 nodes, and nothing past an end is accepted
    beams = np.array([[[91, 92, 93, 95], [91, 94, -1, -1], [91, -1, -1, -1]]], dtype=np.int64)
    tree = rr.pack_beams(beams, vocab_size=100)
    assert tree.num_nodes.tolist() == [5]
    assert tree.unpacker.tolist() == [[[0, 1, 2, 3], [0, 4, 4, 4], [0, 0, 0, 0]]]
    choice = np.array([[94, 0, 0, 0, 94]], dtype=np.int64)  # at node 4 (94) the target says 94
    acc = rr.accept(tree, beams, choice)
    assert (acc.best_beam.tolist(), acc.num_accepted.tolist()) == ([1], [1])
    assert acc.tokens.tolist() == [[94, 94, -1, -1]]


def test_pack_beams_checks_vocab_range():
    with pytest.raises(RedrafterError, match="beams"):
        rr.pack_beams(BEAMS, vocab_size=95)
    assert rr.pack_beams(BEAMS, vocab_size=98).max_nodes == 7


def test_pack_beams_rejects_non_contiguous():
    beams = np.zeros((1, 4, 6), dtype=np.int64)[:, :, ::2]
    with pytest.raises(RedrafterError, match="contiguous"):
        rr.pack_beams(beams)


@pytest.mark.parametrize(
    ("choice", "fragment"),
    [
        (np.zeros((1, 6), dtype=np.int64), "choice"),
        (np.zeros((2, 7), dtype=np.int64), "choice"),
        (np.zeros((7,), dtype=np.int64), "choice"),
        (np.zeros((1, 7), dtype=np.float32), "int64"),
        (np.full((1, 7), -3, dtype=np.int64), "choice"),
    ],
)
def test_accept_rejects_bad_choice(choice, fragment):
    tree = rr.pack_beams(BEAMS)
    with pytest.raises(RedrafterError) as info:
        rr.accept(tree, BEAMS, choice)
    assert fragment in str(info.value)


def test_accept_rejects_beams_that_do_not_match_the_tree():
    tree = rr.pack_beams(BEAMS)
    choice = np.zeros((1, 7), dtype=np.int64)
    with pytest.raises(RedrafterError, match="beams"):
        rr.accept(tree, BEAMS[:, :2], choice)
    other = BEAMS.copy()
    other[0, 2, 3] = 1
    with pytest.raises(RedrafterError, match="beams"):
        rr.accept(tree, other, choice)
