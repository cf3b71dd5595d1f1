"""Retrieval drafts (suffix automaton per request, optional datastore) merged into the tree.

Losslessness is unchanged: greedy output equals `model.generate` with retrieval alone and with
the RNN drafter (every budget rule), in batch and through the step API, and sampling with
retrieval on still matches plain sampling. Retrieval works: on a model that repeats itself, or
with a datastore holding the continuation, it is accepted (tau > 1). The automaton and the
datastore file survive adversarial input.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import redrafter_rs as rr
from helpers import assert_same_distribution, joint_counts, plain_sample_counts, tiny_llama
from redrafter_rs import RedrafterError, RetrievalConfig, RetrievalDrafter
from redrafter_rs.cli import main as cli_main
from redrafter_rs.engine.target import left_pad

NEW = 30


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=5)


@pytest.fixture(scope="module")
def rnn(model):
    torch.manual_seed(1)
    return rr.RecurrentDrafter.for_target(model).eval()


@pytest.fixture(scope="module")
def bigram():
    """A tiny Llama whose attention and MLP outputs are zeroed: the next token depends only on
    the current one, so greedy output falls into a cycle (text that repeats itself)."""
    m = tiny_llama(seed=7)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    m.generation_config.eos_token_id = None
    return m


def _prompts(model) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    V = model.config.vocab_size
    phrase = torch.randint(2, V, (5,), generator=gen)
    return [
        torch.randint(2, V, (9,), generator=gen),
        phrase.repeat(3),  # repeats a phrase
        torch.cat([phrase, torch.randint(2, V, (4,), generator=gen), phrase[:3]]),
        torch.tensor([7, 7, 7, 7, 7, 7]),  # all-same tokens
    ]


def _reference(model, prompt: torch.Tensor, n: int = NEW) -> torch.Tensor:
    return model.generate(prompt[None], do_sample=False, max_new_tokens=n)


# ---- losslessness ---------------------------------------------------------------------------
@pytest.mark.parametrize("budget", ["alone", "adaptive", "fixed", "extra"])
def test_greedy_equals_generate(model, rnn, budget):
    drafter = None if budget == "alone" else rnn
    config = RetrievalConfig(budget="fixed" if budget == "alone" else budget, min_match=1)
    for prompt in _prompts(model):
        want = _reference(model, prompt)
        out = rr.generate(model, drafter, prompt[None], max_new_tokens=NEW, retrieval=config)
        assert torch.equal(out.sequences, want), prompt
        assert set(out.sources) == ({"retrieval"} if drafter is None else {"retrieval", "rnn"})


@pytest.mark.parametrize("with_rnn", [False, True])
def test_batch_left_padded_rows_equal_generate_alone(model, rnn, with_rnn):
    prompts = _prompts(model)
    refs = [_reference(model, p)[0, len(p) :].tolist() for p in prompts]
    ids, mask = left_pad(prompts, 1)
    out = rr.generate(
        model, rnn if with_rnn else None, ids, mask, max_new_tokens=NEW,
        retrieval=RetrievalConfig(min_match=1),
    )  # fmt: skip
    T = ids.shape[1]
    for row, ref in enumerate(refs):
        got = out.sequences[row, T:].tolist()
        assert got[: len(ref)] == ref, row


def test_step_api_one_automaton_per_request_released_at_the_end(bigram):
    drafter = RetrievalDrafter(None, RetrievalConfig())
    gen = rr.SpeculativeGenerator(bigram, drafter, rr.SpecConfig(4, 5, 24))
    prompts = {"a": torch.tensor([5, 65, 81, 5, 65]), "b": torch.tensor([10, 17, 76, 34])}
    gen.add("a", prompts["a"])
    gen.step()
    assert set(drafter.automata) == {"a"}
    gen.add("b", prompts["b"])
    gen.add("c", torch.tensor([3, 4, 5]))
    gen.step()
    assert set(drafter.automata) == {"a", "b", "c"}
    assert len(drafter.automata["b"]) == len(prompts["b"]) + 1  # prompt + first token
    gen.cancel("c")
    assert set(drafter.automata) == {"a", "b"}
    while gen.has_unfinished():
        gen.step()
    done = gen.pop_finished()
    assert drafter.automata == {}  # every automaton dropped with its request
    for rid, prompt in prompts.items():
        assert done[rid].tokens == _reference(bigram, prompt, 24)[0, len(prompt) :].tolist()
    assert done["a"].stats.tau > 2.0


@pytest.mark.slow
def test_sampling_with_retrieval_matches_plain_sampling():
    """The joint law of the first 3 sampled tokens (8-token vocabulary) over 20,000 samples
    equals plain sampling's (tests/test_sampling.py explains the test)."""
    n, new, prompt = 20_000, 3, torch.tensor([[3, 1, 4]])
    model = tiny_llama(seed=11, vocab_size=8, initializer_range=0.1)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    settings = {"temperature": 1.0}
    plain = plain_sample_counts(model, prompt, n, new, settings, seed=1)
    drafter = RetrievalDrafter(None, RetrievalConfig(min_match=1))
    gen = torch.Generator().manual_seed(2)
    params = rr.SamplingParams(**settings)
    done = {}
    for start in range(0, n, 2000):  # chunks: the engine's `add` is O(queued) per call
        engine = rr.SpeculativeGenerator(model, drafter, rr.SpecConfig(2, 3, new))
        for row in range(start, start + 2000):
            engine.add(row, prompt[0], params, generator=gen)
        while engine.has_unfinished():
            engine.step()
        done.update(engine.pop_finished())
    seqs = torch.tensor([prompt[0].tolist() + done[r].tokens for r in range(n)])
    spec = joint_counts(seqs, prompt.shape[1], new, 8)
    assert drafter.stats["retrieval"].matched > n // 20  # retrieval really was accepted
    assert_same_distribution(plain, spec, n, "retrieval sampling")


# ---- retrieval is used ----------------------------------------------------------------------
def test_retrieval_alone_accepts_on_a_repeated_phrase(bigram):
    prompt = torch.tensor([5, 65, 81] * 3 + [5])  # the phrase the model itself repeats
    want = _reference(bigram, prompt, 40)
    out = rr.generate(bigram, None, prompt[None], max_new_tokens=40, retrieval=True)
    assert torch.equal(out.sequences, want)
    assert out.stats.tau > 3.0, out.stats.summary()
    ret = out.sources["retrieval"]
    assert ret.wins > 0 and ret.tau > 3.0, ret.summary()
    # an unrelated prompt: the model's own cycle is found once it has repeated itself
    prompt = torch.tensor([10, 17, 76])
    out = rr.generate(bigram, None, prompt[None], max_new_tokens=60, retrieval=True)
    assert torch.equal(out.sequences, _reference(bigram, prompt, 60))
    assert out.stats.tau > 2.0, out.stats.summary()


def test_short_candidates_end_early_and_add_no_nodes():
    # row 0: the datastore's candidates after 65 have 1 and 3 tokens (a document ends right
    # after its 81); row 1: none (its slots repeat the root alone)
    store = rr.build_datastore([[2, 65, 81], [64, 65, 7, 9, 3]])
    drafter = RetrievalDrafter(None, RetrievalConfig(datastore=store, min_match=1))
    beams = drafter.draft(
        torch.zeros(2, 8), torch.tensor([65, 4]), embed=None, beam_width=2, beam_length=4,
        context=[torch.tensor([2, 65]), torch.tensor([4])], request_ids=["x", "y"],
    )  # fmt: skip
    assert beams.tolist() == [
        [[65, 81, -1, -1], [65, 7, 9, 3]],
        [[4, -1, -1, -1], [4, -1, -1, -1]],
    ]
    tree = rr.pack_beams(beams.numpy())
    assert tree.num_nodes.tolist() == [5, 1]  # no node for any padding


def test_datastore_proposes_the_continuation(model, rnn, tmp_path):
    prompt = _prompts(model)[0]
    want = _reference(model, prompt, 40)
    plain = rr.generate(model, None, prompt[None], max_new_tokens=40, retrieval=True)
    assert plain.stats.tau < 1.2  # the random model does not repeat itself
    store = rr.build_datastore([[3, 4, 5], want[0].tolist(), [9, 9]])
    store.save(tmp_path / "ref.rrds")
    for drafter in (None, rnn):
        config = RetrievalConfig(datastore=tmp_path / "ref.rrds")
        out = rr.generate(model, drafter, prompt[None], max_new_tokens=40, retrieval=config)
        assert torch.equal(out.sequences, want)
        assert out.stats.tau > 3.0, out.stats.summary()


# ---- the automaton from Python ---------------------------------------------------------------
def test_automaton_adversarial_inputs():
    empty = rr.SuffixAutomaton()
    assert len(empty) == 0 and empty.query(4, 4).tokens.shape == (0, 4)
    assert empty.query(4, 4, context=_i64([])).num == 0
    same = rr.SuffixAutomaton(_i64([9] * 5000))
    c = same.query(3, 6)
    assert c.tokens.tolist() == [[9] * 6] and c.match_len.tolist() == [4999]
    assert same.count(_i64([9, 9, 9])) == 4998
    block = list(range(20, 57))
    rep = rr.SuffixAutomaton(_i64(block * 30 + block[:5]))
    c = rep.query(2, 8)
    assert c.tokens[0].tolist() == block[5:13]
    assert c.match_len[0] == 37 * 29 + 5
    c = rep.query(2, 4, context=_i64([1, 2, 40, 41]))
    assert c.tokens[0].tolist() == [42, 43, 44, 45] and c.match_len[0] == 2
    with pytest.raises(RedrafterError, match=r"tokens\[1\] = -3"):
        rep.extend(_i64([4, -3]))
    assert len(rep) == 37 * 30 + 5  # unchanged by the refused call
    with pytest.raises(RedrafterError, match="dtype int64"):
        rep.extend(np.array([1.0]))
    with pytest.raises(RedrafterError, match="1-d"):
        rep.extend(_i64([[1]]))


def test_batched_retrieve_matches_single_queries():
    texts = [[1, 2, 3, 1, 2], [4, 4, 4, 4], [], [5, 6, 7, 8, 5, 6, 9, 5, 6]]
    autos = [rr.SuffixAutomaton(_i64(t)) for t in texts]
    batch = rr._core.retrieve(autos, 3, 4)
    assert batch.tokens.shape == (4, 3, 4)
    for b, a in enumerate(autos):
        one = a.query(3, 4)
        n = int(one.num)
        assert batch.num[b] == n
        assert np.array_equal(batch.tokens[b, :n], one.tokens)
        assert np.array_equal(batch.match_len[b, :n], one.match_len)
        assert (batch.tokens[b, n:] == -1).all()


# ---- the datastore file ---------------------------------------------------------------------
def test_datastore_roundtrip_and_corrupt_files(tmp_path):
    store = rr.build_datastore([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 6]])
    assert (store.num_docs, store.num_tokens) == (3, 14)
    path = tmp_path / "s.rrds"
    store.save(path)
    back = rr.Datastore.load(str(path))
    ctx = _i64([0, 1, 2])
    a, b = store.query(ctx, 3, 3), back.query(ctx, 3, 3)
    assert a.tokens.tolist() == b.tokens.tolist() == [[3, 4, -1], [5, -1, -1]]
    assert a.count.tolist() == [2, 1] and back.count(_i64([1, 2])) == 3
    data = bytearray(path.read_bytes())
    cases = {
        "checksum mismatch": bytes(data[:60]) + bytes([data[60] ^ 0xFF]) + bytes(data[61:]),
        "truncated": bytes(data[:-7]),
        "bad magic": b"NOTADS\0\0" + bytes(data[8:]),
        "unsupported format version 9": bytes(data[:8]) + b"\x09" + bytes(data[9:]),
    }
    for what, content in cases.items():
        bad = tmp_path / "bad.rrds"
        bad.write_bytes(content)
        with pytest.raises(RedrafterError, match=what):
            rr.Datastore.load(bad)
    with pytest.raises(RedrafterError, match="cannot read"):
        rr.Datastore.load(tmp_path / "missing.rrds")
    with pytest.raises(RedrafterError, match="cannot read"):
        RetrievalDrafter(None, RetrievalConfig(datastore=tmp_path / "missing.rrds"))


@pytest.mark.slow
def test_cli_datastore_build(tmp_path, capsys):
    """With the default tokenizer (the command converts the default model on first use)."""
    src = tmp_path / "docs.jsonl"
    rows = [{"text": "the cat sat on the mat"}, {"text": ["two", "turns"]}, {"other": 1}]
    src.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n", encoding="utf-8")
    (tmp_path / "more.txt").write_text("one whole document", encoding="utf-8")
    out = tmp_path / "store.rrds"
    more = tmp_path / "more.txt"
    assert cli_main(["datastore", "build", str(src), str(more), "-o", str(out)]) == 0
    store = rr.Datastore.load(out)
    assert store.num_docs == 3
    assert "3 documents" in capsys.readouterr().err
    src.write_text(json.dumps(rows[2]) + "\n", encoding="utf-8")
    assert cli_main(["datastore", "build", str(src), "-o", str(out)]) == 2
    assert "no field 'text'" in capsys.readouterr().err


def test_config_errors(model):
    with pytest.raises(RedrafterError, match="budget"):
        RetrievalConfig(budget="greedy")
    with pytest.raises(RedrafterError, match="min_match"):
        RetrievalConfig(min_match=0)
    with pytest.raises(RedrafterError, match="drafter is None"):
        rr.generate(model, None, torch.tensor([[3, 4]]), max_new_tokens=2)
