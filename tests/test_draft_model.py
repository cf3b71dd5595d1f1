"""Draft-model mode (drafters/draft_model.py): a separate small LM, the target's own first
layers (early exit) or an int8 copy of the target proposes into the tree. Exact by construction
(the target verifies), so every test compares with `model.generate` token for token; the draft
model's own KV cache must follow joins, leaves and ragged acceptance, which the self-draft
test pins down (a perfect draft accepts everything only if that cache is right)."""

from __future__ import annotations

import pytest
import torch

import redrafter_rs as rr
from helpers import tiny_llama
from redrafter_rs import RedrafterError
from redrafter_rs.drafters.draft_model import DraftModelDrafter, early_exit, quantized_copy
from redrafter_rs.engine.target import left_pad

V = 96
NEW = 30


@pytest.fixture(scope="module")
def target():
    m = tiny_llama(seed=5, num_hidden_layers=4)
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    return m


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(3, V, (n,), generator=g) for n in (5, 11, 3)]


@pytest.fixture(scope="module")
def refs(target, prompts):
    return [
        target.generate(p[None], do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW)[
            0, len(p) :
        ].tolist()
        for p in prompts
    ]


def _batch(target, drafter, prompts, **shape):
    ids, mask = left_pad(prompts)
    out = rr.generate(target, drafter, ids, mask, max_new_tokens=NEW, **shape)
    return [out.sequences[r, ids.shape[1] :].tolist() for r in range(len(prompts))], out.stats


SHAPES = [dict(beam_width=3, beam_length=4), dict(beam_width=2, beam_length=4, tree_nodes=6)]


@pytest.mark.parametrize("shape", SHAPES, ids=["beams", "best-nodes"])
@pytest.mark.parametrize("kind", ["small-lm", "early-exit", "int8"])
def test_greedy_padded_batch_equals_generate(target, prompts, refs, kind, shape):
    draft = {
        "small-lm": lambda: tiny_llama(seed=6, num_hidden_layers=1),
        "early-exit": lambda: early_exit(target, 2),
        "int8": lambda: quantized_copy(target),
    }[kind]()
    got, stats = _batch(target, DraftModelDrafter(draft), prompts, **shape)
    assert got == refs
    assert stats.steps > 0


def test_a_perfect_draft_is_always_accepted(target, prompts, refs):
    """The target drafting for itself (one beam) proposes exactly the greedy continuation, so
    every step keeps all L tokens: the draft cache's ragged catch-up, joins and positions are
    in step with the target's."""
    got, stats = _batch(target, DraftModelDrafter(target), prompts, beam_width=1, beam_length=4)
    assert got == refs
    assert stats.acceptance_per_depth == [1.0, 1.0, 1.0]


def test_requests_join_and_leave_mid_run(target, prompts, refs):
    drafter = DraftModelDrafter(target)
    gen = rr.SpeculativeGenerator(target, drafter, rr.SpecConfig(1, 4, NEW))
    gen.add("a", prompts[0], max_new_tokens=7)  # leaves early
    gen.add("b", prompts[1])
    done, first = {}, None
    for step in range(100):
        if step == 1:
            gen.add("c", prompts[2])  # joins a running batch
        gen.step()
        done.update(gen.pop_finished())
        if first is None and "a" in done:  # "a" left: its id comes back with another prompt
            first = done.pop("a")
            gen.add("a", prompts[2][:2])
        if not gen.has_unfinished():
            break
    assert first.tokens == refs[0][:7]
    again = target.generate(prompts[2][None, :2], do_sample=False, max_new_tokens=NEW,
                            min_new_tokens=NEW)[0, 2:].tolist()  # fmt: skip
    assert [done[k].tokens for k in ("a", "b", "c")] == [again, refs[1], refs[2]]
    for k in ("a", "b", "c"):
        assert done[k].stats.acceptance_per_depth == [1.0, 1.0, 1.0], k
    assert drafter._rows == []  # every finished request released its row


def test_merged_with_retrieval_in_one_tree(target, prompts, refs):
    drafter = rr.RetrievalDrafter(DraftModelDrafter(tiny_llama(seed=6, num_hidden_layers=1)))
    got, _ = _batch(target, drafter, prompts, beam_width=3, beam_length=4)
    assert got == refs


def test_a_different_vocabulary_is_refused(target):
    draft = tiny_llama(seed=6, vocab_size=128, num_hidden_layers=1)
    with pytest.raises(RedrafterError, match=r"vocabulary \(128 tokens\) differs .* \(96\)"):
        rr.SpeculativeGenerator(target, DraftModelDrafter(draft))


def test_a_different_tokenizer_is_refused():
    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return dict(self.vocab)

    draft = tiny_llama(seed=6, num_hidden_layers=1)
    with pytest.raises(RedrafterError, match="tokenizer differs"):
        DraftModelDrafter(draft, Tok({"a": 0, "b": 1}), Tok({"a": 1, "b": 0}))


def test_early_exit_shares_weights_and_leaves_the_target_alone(target):
    shallow = early_exit(target, 2)
    assert len(shallow.model.layers) == 2 and len(target.model.layers) == 4
    assert target.config.num_hidden_layers == 4
    assert shallow.model.layers[1].mlp.up_proj.weight is target.model.layers[1].mlp.up_proj.weight
    assert shallow.lm_head.weight is target.lm_head.weight
    with pytest.raises(RedrafterError, match=r"layers must be in \[1, 3\]"):
        early_exit(target, 4)


def test_command_line_specs(target, tmp_path):
    """`--draft-model` (generate, demo, bench): a model directory, early-exit:K or int8."""
    from redrafter_rs.cli import build_parser
    from redrafter_rs.drafters.draft_model import from_spec

    drafter, label = from_spec("early-exit:3", target)
    assert label == "early-exit-3" and len(drafter.model.model.layers) == 3
    assert from_spec("int8", target)[1] == "int8"
    small = tiny_llama(seed=6, num_hidden_layers=1)
    small.save_pretrained(tmp_path / "small")
    drafter, label = from_spec(str(tmp_path / "small"), target)
    assert label == "small" and drafter.lm.vocab_size == V
    for bad, match in [
        (str(tmp_path / "missing"), "not a model directory"),
        ("early-exit:x", "needs a layer count"),
        ("early-exit:9", r"layers must be in \[1, 3\]"),
    ]:
        with pytest.raises(RedrafterError, match=match):
            from_spec(bad, target)
    parser = build_parser()
    for cmd in (["generate", "hi"], ["demo"]):
        assert parser.parse_args([*cmd, "--draft-model", "int8"]).draft_model == "int8"
    args = parser.parse_args(["bench", "--draft-model", "int8", "--draft-model", "early-exit:4"])
    assert args.draft_models == ["int8", "early-exit:4"]
