"""The architecture's seams (issue #21): the library imports without training or bench code, a
drafter is anything with `draft` (capabilities declared, found once), and the acceptance rule is
a constructor argument."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import redrafter_rs as rr
from helpers import OracleDrafter
from redrafter_rs.drafters.protocol import Capabilities, capabilities


@pytest.mark.slow  # a subprocess importing torch
def test_importing_the_library_loads_no_training_or_bench_code():
    code = (
        "import sys, redrafter_rs\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('redrafter_rs'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "redrafter_rs.engine.scheduler" in loaded
    for module in loaded:  # no training or bench package, no command line
        assert not module.startswith(("redrafter_rs.training", "redrafter_rs.bench")), module
        assert module != "redrafter_rs.cli", module


class MinimalDrafter:
    """Only `draft`: every beam repeats the root (nothing accepted)."""

    def draft(self, hidden, root, *, embed, beam_width, beam_length, context=None):
        return root[:, None, None].expand(-1, beam_width, beam_length).clone()


class TreeDrafter(MinimalDrafter):
    drafts_trees = True
    uses_context = True

    def __init__(self) -> None:
        self.released: list = []
        self.observed = 0

    def draft(self, hidden, root, *, embed, beam_width, beam_length, context=None, **kw):
        assert context is not None and kw["request_ids"] is not None
        return super().draft(
            hidden, root, embed=embed, beam_width=kw.get("tree_nodes") or beam_width,
            beam_length=beam_length,
        )  # fmt: skip

    def observe(self, request_ids, acceptance) -> None:
        self.observed += 1

    def release(self, request_id) -> None:
        self.released.append(request_id)


def test_capabilities_are_declared_or_read_from_the_signature(tiny_drafter):
    assert capabilities(MinimalDrafter()) == Capabilities(
        uses_context=False, drafts_trees=False, observes=False, releases=False,
        checks_target=False,
    )  # fmt: skip
    caps = capabilities(TreeDrafter())
    assert caps.uses_context and caps.drafts_trees and caps.observes and caps.releases
    rnn = capabilities(tiny_drafter)  # tree_nodes in its draft signature, check_target
    assert rnn.drafts_trees and rnn.checks_target and not rnn.uses_context


def test_any_object_with_draft_is_a_drafter(tiny_model):
    ids = torch.tensor([[5, 6, 7]])
    ref = tiny_model.generate(ids, do_sample=False, max_new_tokens=6)
    out = rr.generate(tiny_model, MinimalDrafter(), ids, max_new_tokens=6, beam_width=2)
    assert torch.equal(out.sequences, ref)
    with pytest.raises(rr.RedrafterError, match="takes no tree_nodes"):
        rr.generate(tiny_model, MinimalDrafter(), ids, tree_nodes=3)
    d = TreeDrafter()
    gen = rr.SpeculativeGenerator(tiny_model, d, rr.SpecConfig(tree_nodes=3, max_new_tokens=6))
    gen.add("a", ids)
    while gen.has_unfinished():
        gen.step()
    assert gen.pop_finished()["a"].tokens == ref[0, 3:].tolist()
    assert d.released == ["a"] and d.observed >= 1


def test_the_acceptance_rule_is_a_constructor_argument(tiny_model):
    """A replacement acceptor sees the verified step and decides the emitted tokens: here one
    that wraps the exact rule and counts its calls."""

    class Counting(rr.ExactAcceptor):
        calls = 0

        def accept(self, step):
            Counting.calls += 1
            assert step.hidden.shape[:2] == step.tree.tokens.shape
            return super().accept(step)

    ids = torch.tensor([[5, 6, 7]])
    ref = tiny_model.generate(ids, do_sample=False, max_new_tokens=8)
    oracle = OracleDrafter(ref, tiny_model.config.vocab_size)
    gen = rr.SpeculativeGenerator(
        tiny_model, oracle, rr.SpecConfig(max_new_tokens=8), acceptor=Counting()
    )
    gen.add("a", ids)
    while gen.has_unfinished():
        gen.step()
    assert gen.pop_finished()["a"].tokens == ref[0, 3:].tolist()
    assert 1 <= Counting.calls <= 3  # whole drafts accepted: few steps
    with pytest.raises(rr.RedrafterError, match="acceptor must have an accept"):
        rr.SpeculativeGenerator(tiny_model, oracle, acceptor=object())
