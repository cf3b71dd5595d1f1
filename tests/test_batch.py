"""Batch > 1 (left padding, ragged acceptance), streaming, and the step API."""

from __future__ import annotations

import gc
import itertools

import pytest
import torch
from transformers import TextIteratorStreamer

import redrafter_rs as rr
from helpers import NoisyOracleDrafter, OracleDrafter, run_rows_equal, tiny_llama
from redrafter_rs import RedrafterError
from redrafter_rs.engine.target import left_pad


def _prompts(seed: int, n: int, vocab: int, lo: int = 1, hi: int = 16) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi, (n,), generator=gen).tolist()
    return [torch.randint(2, vocab, (t,), generator=gen) for t in lens]


def _alone(model, prompt: torch.Tensor, n: int) -> list[int]:
    """model.generate on one row alone: the new tokens."""
    out = model.generate(prompt[None], do_sample=False, max_new_tokens=n)
    return out[0, len(prompt) :].tolist()


def _new_tokens(row: torch.Tensor, T: int, pad: int, eos: int) -> list[int]:
    toks = row[T:].tolist()
    return toks[: toks.index(eos) + 1] if eos in toks else toks


@pytest.mark.parametrize(("B", "compact_waste"), [(1, 0.5), (4, 0.5), (8, 0.5), (8, 0.0)])
def test_batch_greedy_rows_equal_generate_alone(B, compact_waste):
    model = tiny_llama(seed=5)
    prompts = _prompts(B, B, model.config.vocab_size)
    refs = [_alone(model, p, 30) for p in prompts]
    ids, mask = left_pad(prompts, 1)
    drafter = NoisyOracleDrafter(
        [torch.cat([p, torch.tensor(r)]) for p, r in zip(prompts, refs, strict=True)],
        model.config.vocab_size,
    )
    gen = rr.SpeculativeGenerator(model, drafter, rr.SpecConfig(4, 5, 30, None, compact_waste))
    run_rows_equal(gen, prompts, refs)
    if compact_waste == 0.0:  # holes were squeezed out (O(context)) and nothing changed
        assert gen.compactions > 0
    out = rr.generate(model, drafter, ids, mask, max_new_tokens=30, beam_width=4, beam_length=5)
    T = ids.shape[1]
    for row, ref in enumerate(refs):
        assert _new_tokens(out.sequences[row], T, 1, 1) == ref, row
    assert torch.equal(out.sequences[:, :T], ids)
    if B > 1:  # ragged acceptance really happened
        accepted = [sum(s.accepted_per_step) for s in out.row_stats]
        assert len(set(accepted)) > 1, accepted


def test_batch_matches_generate_on_the_padded_batch_with_eos_padding():
    model = tiny_llama(seed=3)
    with torch.no_grad():  # make EOS (id 1) likely so rows finish at different times
        model.lm_head.weight[1] += 0.35 * model.model.norm.weight.sign()
    prompts = _prompts(11, 6, model.config.vocab_size, lo=2, hi=9)
    ids, mask = left_pad(prompts, 1)
    want = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=40)
    torch.manual_seed(0)
    drafter = rr.RecurrentDrafter.for_target(model)
    out = rr.generate(model, drafter, ids, mask, max_new_tokens=40, beam_width=3, beam_length=4)
    assert out.sequences.shape == want.shape
    assert torch.equal(out.sequences, want)
    lengths = [len(_new_tokens(row, ids.shape[1], 1, 1)) for row in want]
    assert len(set(lengths)) > 2 and min(lengths) < 40, lengths  # rows finish at different steps


def test_stream_yields_the_same_tokens_step_by_step(tiny_model, tiny_drafter):
    ids = torch.tensor([[5, 9, 14, 3]])
    want = tiny_model.generate(ids, do_sample=False, max_new_tokens=20)
    oracle = NoisyOracleDrafter(want[0], tiny_model.config.vocab_size)
    chunks = list(rr.stream(tiny_model, oracle, ids, max_new_tokens=20, beam_length=4))
    assert len(chunks) > 1 and all(len(c) == 1 for c in chunks)
    assert sum((c[0] for c in chunks), []) == want[0, 4:].tolist()
    assert max(len(c[0]) for c in chunks) > 1  # multi-token steps really streamed


@pytest.mark.slow
def test_text_iterator_streamer_receives_the_text(smollm):
    model, tok = smollm
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    want = tok.decode(model.generate(ids, do_sample=False, max_new_tokens=12)[0, ids.shape[1] :])
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    drafter = OracleDrafter(model.generate(ids, do_sample=False, max_new_tokens=12)[0], 49152)
    rr.generate(model, drafter, ids, max_new_tokens=12, streamer=streamer)
    assert "".join(streamer) == want


def test_streamer_refuses_batches(tiny_model, tiny_drafter):
    streamer = TextIteratorStreamer(tokenizer=None)
    ids, mask = left_pad(_prompts(0, 2, 96), 1)
    with pytest.raises(RedrafterError, match="batch size 1"):
        rr.generate(tiny_model, tiny_drafter, ids, mask, streamer=streamer)


# ---- the step API -----------------------------------------------------------------------


@pytest.mark.parametrize("compact_waste", [0.5, 0.0])  # 0.0: squeeze the holes every step
def test_step_api_requests_join_and_leave_between_steps(tiny_model, compact_waste):
    """Rows join, leave and are cancelled between steps; every row equals model.generate alone,
    and the host's count of valid slots per row (which spares each step a device read) always
    equals the device mask's."""
    prompts = _prompts(21, 5, tiny_model.config.vocab_size)
    refs = {i: _alone(tiny_model, p, 12 + i) for i, p in enumerate(prompts)}
    drafter = NoisyOracleDrafter(
        [torch.cat([p, torch.tensor(refs[i])]) for i, p in enumerate(prompts)],
        tiny_model.config.vocab_size,
    )
    gen = rr.SpeculativeGenerator(
        tiny_model, drafter, rr.SpecConfig(3, 4, compact_waste=compact_waste)
    )
    streamed = {i: [] for i in range(5)}
    gen.add(0, prompts[0], max_new_tokens=12)
    gen.add(1, prompts[1], max_new_tokens=13)
    done = {}
    for step in range(200):
        if step == 2:
            gen.add(2, prompts[2], max_new_tokens=14)
        if step == 3:
            gen.add(3, prompts[3], max_new_tokens=15)
            gen.add(4, prompts[4], max_new_tokens=16)
        if step == 4:
            assert gen.cancel(3)
        for rid, toks in gen.step().items():
            streamed[rid] += toks
        cache = gen.batch.cache
        if cache is not None:
            assert cache.filled.tolist() == cache.valid.sum(1).tolist(), step
        done.update(gen.pop_finished())
        if not gen.has_unfinished():
            break
    assert set(done) == {0, 1, 2, 3, 4}
    assert done[3].finish_reason == "cancelled"
    for i in (0, 1, 2, 4):
        assert done[i].tokens == refs[i] == streamed[i], i
        assert done[i].finish_reason in ("eos", "length")
        assert done[i].stats.steps > 0 and done[i].stats.tau > 1.0  # partial drafts accepted
    assert not gen.cancel(99)
    assert compact_waste > 0 or gen.compactions > 0


def test_step_api_rejects_duplicate_ids_and_bad_prompts(tiny_model, tiny_drafter):
    gen = rr.SpeculativeGenerator(tiny_model, tiny_drafter)
    gen.add("a", [3, 4])
    with pytest.raises(RedrafterError, match="already"):
        gen.add("a", [5])
    with pytest.raises(RedrafterError, match="empty"):
        gen.add("b", [])
    with pytest.raises(RedrafterError, match="one prompt"):
        gen.add("c", torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(RedrafterError, match="repetition_penalty"):
        gen.add("d", [3], rr.SamplingParams(temperature=1.0, repetition_penalty=1.2))


def _kv_bytes(gen: rr.SpeculativeGenerator) -> int:
    """KV elements (keys + values) the running batch holds."""
    cache = gen.batch.cache
    if cache is None:
        return 0
    return sum(layer.keys.numel() * 2 for layer in cache.cache.layers)


@pytest.mark.slow
def test_soak_200_requests_through_one_generator():
    """200 requests of random lengths; each output equals its standalone greedy output, and
    the KV cache stays bounded (it shrinks back when requests leave)."""
    model = tiny_llama(seed=7)
    V = model.config.vocab_size
    gen_rng = torch.Generator().manual_seed(0)
    prompts = _prompts(99, 200, V, lo=1, hi=24)
    budgets = torch.randint(1, 24, (200,), generator=gen_rng).tolist()
    refs = [_alone(model, p, n) for p, n in zip(prompts, budgets, strict=True)]
    drafter = NoisyOracleDrafter(
        [torch.cat([p, torch.tensor(r)]) for p, r in zip(prompts, refs, strict=True)], V
    )
    gen = rr.SpeculativeGenerator(model, drafter, rr.SpecConfig(3, 4))
    done, next_id, peak = {}, 0, []
    while len(done) < 200:
        while gen.num_active + gen.num_pending < 8 and next_id < 200:
            gen.add(next_id, prompts[next_id], max_new_tokens=budgets[next_id])
            next_id += 1
        gen.step()
        done.update(gen.pop_finished())
        peak.append(_kv_bytes(gen))
        gc.collect()
    assert all(done[i].tokens == refs[i] for i in range(200))
    assert not gen.has_unfinished() and _kv_bytes(gen) == 0
    assert gen.compactions > 0
    # bounded: the late half of the run never needs much more cache than the early half
    half = len(peak) // 2
    assert max(peak[half:]) <= 2 * max(peak[:half])


@pytest.mark.slow
def test_smollm2_batch_of_4_rows_equal_generate_alone(smollm):
    from redrafter_rs.data import chat_prompt, mt_bench_questions

    model, tok = smollm
    texts = [chat_prompt(tok, q["turns"][0]) for q in mt_bench_questions()[5:45:10]]
    prompts = [tok(t, return_tensors="pt").input_ids[0] for t in texts]
    refs = [_alone(model, p, 24) for p in prompts]
    ids, mask = left_pad(prompts, 2)
    torch.manual_seed(0)
    drafter = rr.RecurrentDrafter.for_target(model).eval()
    out = rr.generate(model, drafter, ids, mask, max_new_tokens=24, beam_width=4, beam_length=4)
    for row, ref in enumerate(refs):
        assert _new_tokens(out.sequences[row], ids.shape[1], 2, 2) == ref, row


@pytest.mark.parametrize("B", [1, 3])
def test_plain_steps_skip_the_mask_only_when_every_slot_is_valid(B):
    """A one-node step over a cache without holes or padding runs the target without a mask
    (as model.generate does; the 4D mask cost up to 15% of a plain step on a 2-core CPU). Rows
    of different lengths (padding) and ragged acceptance (holes) keep the mask. Steps cycle
    between plain decoding and 4x4 beams; every row stays equal to model.generate alone."""
    from redrafter_rs.engine.policy import PolicyConfig

    model = tiny_llama(seed=5)
    prompts = _prompts(11, B, model.config.vocab_size, lo=3, hi=12)
    refs = [_alone(model, p, 30) for p in prompts]
    drafter = NoisyOracleDrafter(
        [torch.cat([p, torch.tensor(r)]) for p, r in zip(prompts, refs, strict=True)],
        model.config.vocab_size,
    )
    cfg = rr.SpecConfig(4, 4, 30, adaptive=True, policy=PolicyConfig(((1, 1), (4, 4))))
    gen = rr.SpeculativeGenerator(model, drafter, cfg)
    cycle = itertools.cycle([(1, 1), (4, 4), (1, 1)])
    gen.policy.choose = lambda B, c=cycle: next(c)
    plain = []  # (mask skipped, cache dense) per one-node step
    forward = gen.target.forward

    def spy(ids, cache, mask=None, **kw):
        batch_cache = gen.batch.cache
        if batch_cache is not None and ids.shape[1] == 1:
            assert batch_cache.dense == bool(batch_cache.valid.all())
            assert batch_cache.filled.tolist() == batch_cache.valid.sum(1).tolist()
            plain.append((mask is None, batch_cache.dense))
        return forward(ids, cache, mask, **kw)

    gen.target.forward = spy
    run_rows_equal(gen, prompts, refs)
    assert all(skipped == dense for skipped, dense in plain)
    if B == 1:
        assert plain and all(skipped for skipped, _ in plain)
    else:
        assert any(not skipped for skipped, _ in plain)
