"""A seed pins the output (issue #20): a seeded sampling request gives the same tokens alone
or in any batch, with any drafter, W x L, best-nodes tree or retrieval, and with no speculation
at all; those tokens are the ones plain seeded decoding draws (`sample_seeded` over full
forwards, no engine). That the draws are still exact samples across seeds is shown in
test_sampling.py (`test_seeded_sampling_matches_plain_sampling`)."""

from __future__ import annotations

import pytest
import torch

import redrafter_rs as rr
from helpers import NoisyOracleDrafter, OracleDrafter, tiny_llama
from redrafter_rs.engine.sampling import sample_seeded

V = 48
NEW = 24
PROMPT = [5, 6, 7, 8, 9, 10]
OTHER = [11, 12, 13, 14, 15, 16, 17, 18]
SETTINGS = {"temperature": 0.8, "top_p": 0.95}


class TreeOracle(NoisyOracleDrafter):
    """Drafts best-nodes-shaped trees: N beams that copy part of the truth, then diverge, and
    end at random depths (-1 padding), so accepted nodes sit at every depth of a ragged tree."""

    def draft(self, hidden, root, *, embed, beam_width, beam_length, context, tree_nodes=None,
              request_ids=None):  # fmt: skip
        width = tree_nodes or beam_width
        beams = super().draft(hidden, root, embed=embed, beam_width=width,
                              beam_length=beam_length, context=context)  # fmt: skip
        if tree_nodes is not None:
            ends = torch.randint(1, beam_length + 1, (width,), generator=self.gen)
            ends[0] = beam_length  # one full-depth branch
            for w in range(width):
                beams[:, w, int(ends[w]) :] = -1
        return beams


@pytest.fixture(scope="module")
def model():
    # small logits (initializer_range 0.05): high-entropy draws, so a wrong noise per position
    # would change the output at once
    m = tiny_llama(seed=8, vocab_size=V, initializer_range=0.05)
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    return m


def plain_loop(model, prompt: list[int], seed: int, n: int = NEW) -> list[int]:
    """Seeded plain decoding: one full forward per token, no cache, no engine."""
    params = rr.SamplingParams(**SETTINGS, seed=seed)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq])).logits[0, -1]
            seq.append(sample_seeded(logits, params, len(seq)))
    return seq[len(prompt) :]


@pytest.fixture(scope="module")
def reference(model):
    return plain_loop(model, PROMPT, seed=7)


def _generate(model, drafter, ids, **kwargs) -> rr.GenerationOutput:
    return rr.generate(model, drafter, ids, max_new_tokens=NEW, **SETTINGS, **kwargs)


def test_seeded_output_is_the_plain_loops(model, reference):
    other = plain_loop(model, PROMPT, seed=8)
    assert reference != other  # the seed matters
    torch.manual_seed(0)
    drafter = rr.RecurrentDrafter.for_target(model).eval()
    out = _generate(model, drafter, torch.tensor([PROMPT]), beam_width=1, beam_length=1, seed=7)
    assert out.sequences[0, len(PROMPT) :].tolist() == reference


@pytest.mark.parametrize(
    "shape",
    [
        {"beam_width": 1, "beam_length": 1},
        {"beam_width": 2, "beam_length": 3},
        {"beam_width": 4, "beam_length": 5},
        {"beam_width": 3, "beam_length": 4, "tree_nodes": 7},
    ],
    ids=["1x1", "2x3", "4x5", "tree7"],
)
@pytest.mark.parametrize("kind", ["rnn", "oracle", "noisy", "retrieval"])
def test_seeded_output_ignores_drafter_and_shape(model, reference, shape, kind):
    full = PROMPT + reference
    torch.manual_seed(0)
    drafter = {
        "rnn": rr.RecurrentDrafter.for_target(model).eval(),
        "oracle": OracleDrafter([full], V),
        "noisy": TreeOracle([full], V, seed=3),
        "retrieval": None,
    }[kind]
    if kind in ("retrieval", "oracle") and "tree_nodes" in shape:
        pytest.skip("this drafter drafts beams only")
    extra = {"retrieval": True} if kind == "retrieval" else {}
    out = _generate(model, drafter, torch.tensor([PROMPT]), seed=7, **shape, **extra)
    assert out.sequences[0, len(PROMPT) :].tolist() == reference
    accepted = sum(out.stats.accepted_per_step)
    print(f"{kind} {shape}: tau {out.stats.tau:.2f}, {accepted} draft tokens accepted")
    if kind == "oracle" and shape["beam_length"] > 1:
        # the tree really carried the draws: whole drafts accepted at every depth
        assert out.stats.tau > 2.0
    if kind == "noisy" and shape["beam_length"] > 1:
        assert accepted >= NEW // 4  # partial acceptance, on varying branches


def test_seeded_output_ignores_batch_partners(model, reference):
    """Alone, next to unseeded and differently seeded rows (left-padded batch), and joining a
    running step-API batch mid-way: the same tokens."""
    full = PROMPT + reference
    drafter = NoisyOracleDrafter([full], V, seed=5)
    ids = torch.tensor([[0, 0] + PROMPT, OTHER, [0] + OTHER[:7]])
    mask = torch.tensor([[0, 0] + [1] * 6, [1] * 8, [0] + [1] * 7])
    batch = _generate(model, drafter, ids, attention_mask=mask, seed=[7, 3, 11], beam_width=3)
    assert batch.sequences[0, 8:].tolist() == reference
    alone = _generate(model, drafter, torch.tensor([OTHER]), seed=3, beam_width=3)
    assert batch.sequences[1, 8:].tolist() == alone.sequences[0, 8:].tolist()

    gen = rr.SpeculativeGenerator(model, drafter, rr.SpecConfig(beam_width=2, beam_length=4))
    gen.add("other", OTHER, rr.SamplingParams(**SETTINGS), max_new_tokens=3 * NEW,
            generator=torch.Generator().manual_seed(1))  # fmt: skip
    for _ in range(3):
        gen.step()
    gen.add("seeded", PROMPT, rr.SamplingParams(**SETTINGS, seed=7), max_new_tokens=NEW)
    while gen.has_unfinished():
        gen.step()
    assert gen.pop_finished()["seeded"].tokens == reference


def test_a_greedy_row_ignores_its_seed(model):
    ids = torch.tensor([PROMPT])
    ref = model.generate(ids, do_sample=False, max_new_tokens=8)
    torch.manual_seed(0)
    drafter = rr.RecurrentDrafter.for_target(model).eval()
    out = rr.generate(model, drafter, ids, max_new_tokens=8, seed=123)
    assert torch.equal(out.sequences, ref)
