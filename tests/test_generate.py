"""Greedy speculative generation equals plain greedy `model.generate`, token for token."""

from __future__ import annotations

import warnings

import pytest
import torch

import redrafter_rs as rr
from helpers import NoisyOracleDrafter, OracleDrafter, tiny_llama
from redrafter_rs.engine.target import left_pad


def _plain(model, ids, n):
    return model.generate(ids, do_sample=False, max_new_tokens=n)


@pytest.mark.parametrize(("W", "L"), [(1, 1), (1, 2), (2, 2), (4, 3), (4, 5), (8, 4), (3, 7)])
def test_tiny_llama_equals_generate(tiny_model, tiny_drafter, W, L):
    gen = torch.Generator().manual_seed(W * 100 + L)
    for _ in range(6):
        T = int(torch.randint(1, 20, (1,), generator=gen))
        ids = torch.randint(2, tiny_model.config.vocab_size, (1, T), generator=gen)
        want = _plain(tiny_model, ids, 24)
        out = rr.generate(
            tiny_model, tiny_drafter, ids, max_new_tokens=24, beam_width=W, beam_length=L
        )
        assert torch.equal(out.sequences, want), (W, L, ids.tolist())
        assert out.stats.new_tokens == want.shape[1] - T
        if out.stats.steps:  # L = 1 drafts nothing: exactly one token per step
            assert (out.stats.tau == 1.0) if L == 1 else (out.stats.tau <= L)


@pytest.mark.parametrize(("W", "L", "N"), [(1, 2, 1), (2, 4, 3), (4, 4, 9), (4, 6, 20), (8, 5, 2)])
def test_tiny_llama_best_nodes_tree_equals_generate(tiny_model, tiny_drafter, W, L, N):
    gen = torch.Generator().manual_seed(W * 1000 + L * 10 + N)
    prompts = [torch.randint(2, 96, (int(torch.randint(1, 20, (1,), generator=gen)),),
                             generator=gen) for _ in range(4)]  # fmt: skip
    for ids in prompts:
        want = _plain(tiny_model, ids[None], 24)
        out = rr.generate(tiny_model, tiny_drafter, ids[None], max_new_tokens=24,
                          beam_width=W, beam_length=L, tree_nodes=N)  # fmt: skip
        assert torch.equal(out.sequences, want), (W, L, N, ids.tolist())
        assert out.stats.shapes == {f"{W}x{L}n{N}": out.stats.steps}
        # every step verifies the root + N nodes (the pool, W + W*W*(L-2), is never smaller)
        assert out.stats.tree_nodes == out.stats.steps * (N + 1)
    # a left-padded batch, with retrieval drafts on top of the tree
    ids, mask = left_pad([p.tolist() for p in prompts], 1)
    out = rr.generate(tiny_model, tiny_drafter, ids, mask, max_new_tokens=24, beam_width=W,
                      beam_length=L, tree_nodes=N, retrieval=True)  # fmt: skip
    for row, p in enumerate(prompts):
        want = _plain(tiny_model, p[None], 24)[0, len(p) :].tolist()
        assert out.sequences[row, ids.shape[1] :].tolist()[: len(want)] == want, row


def test_tree_nodes_needs_a_drafter_that_takes_it(tiny_model):
    class Chain(torch.nn.Module):  # a drafter written against the plain protocol
        def draft(self, hidden, root, *, embed, beam_width, beam_length, context=None):
            return root.view(-1, 1, 1).expand(-1, 1, beam_length).contiguous()

    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(rr.RedrafterError, match="Chain.draft takes no tree_nodes"):
        rr.generate(tiny_model, Chain(), ids, max_new_tokens=4, tree_nodes=3)
    want = _plain(tiny_model, ids, 4)  # and without tree_nodes it drafts as before
    assert torch.equal(rr.generate(tiny_model, Chain(), ids, max_new_tokens=4).sequences, want)


def test_tiny_llama_oracle_drafter_accepts_everything(tiny_model):
    ids = torch.tensor([[5, 17, 33, 2, 9]])
    want = _plain(tiny_model, ids, 40)
    oracle = OracleDrafter(want[0], tiny_model.config.vocab_size)
    out = rr.generate(tiny_model, oracle, ids, max_new_tokens=40, beam_width=3, beam_length=5)
    assert torch.equal(out.sequences, want)
    # every step but the last accepts all L-1 drafts (+ the bonus): 1 + 9 * 4 = 37 of 40 ...
    steps = out.stats.accepted_per_step
    assert all(a == 4 for a in steps[:-1]), steps
    assert out.stats.tau > 4.5


@pytest.mark.parametrize(("W", "L"), [(2, 3), (4, 5), (6, 6)])
def test_tiny_llama_partial_acceptance_on_any_beam(tiny_model, W, L):
    """Accepted paths that skip packed nodes exercise the KV-cache compaction."""
    gen = torch.Generator().manual_seed(L)
    for seed in range(4):
        ids = torch.randint(2, tiny_model.config.vocab_size, (1, 6), generator=gen)
        want = _plain(tiny_model, ids, 40)
        drafter = NoisyOracleDrafter(want[0], tiny_model.config.vocab_size, seed=seed)
        out = rr.generate(tiny_model, drafter, ids, max_new_tokens=40, beam_width=W, beam_length=L)
        assert torch.equal(out.sequences, want)
        if out.stats.steps > 2:
            assert 0 < sum(out.stats.accepted_per_step) < out.stats.steps * (L - 1)


def test_tiny_llama_stops_at_eos_like_generate():
    model = _eos_prone_model()
    ids = torch.tensor([[3, 4, 5]])
    want = _plain(model, ids, 50)
    assert want.shape[1] < 3 + 50 and int(want[0, -1]) == 1  # generate stopped on EOS
    torch.manual_seed(0)
    drafter = rr.RecurrentDrafter.for_target(model)
    out = rr.generate(model, drafter, ids, max_new_tokens=50, beam_width=4, beam_length=4)
    assert torch.equal(out.sequences, want)
    oracle = OracleDrafter(want[0], model.config.vocab_size)
    out = rr.generate(model, oracle, ids, max_new_tokens=50, beam_width=2, beam_length=6)
    assert torch.equal(out.sequences, want)


def _eos_prone_model():
    """A tiny Llama whose LM head favours EOS (id 1) after a few steps of context."""
    model = tiny_llama(seed=3)
    with torch.no_grad():
        model.lm_head.weight[1] += 0.35 * model.model.norm.weight.sign()
    return model


def test_max_new_tokens_is_exact(tiny_model, tiny_drafter):
    ids = torch.tensor([[7, 8, 9]])
    for n in (1, 2, 3, 7):
        want = _plain(tiny_model, ids, n)
        out = rr.generate(tiny_model, tiny_drafter, ids, max_new_tokens=n, beam_length=5)
        assert torch.equal(out.sequences, want), n


def test_stats_are_consistent(tiny_model, tiny_drafter):
    ids = torch.tensor([[2, 3, 4, 5]])
    out = rr.generate(tiny_model, tiny_drafter, ids, max_new_tokens=30, beam_width=4, beam_length=4)
    s = out.stats
    assert s.steps == len(s.accepted_per_step)
    # prefill's token + (accepted + bonus) per step, clipped to the budget
    assert s.new_tokens <= 1 + sum(s.accepted_per_step) + s.steps
    assert len(s.acceptance_per_depth) == 3
    assert all(0.0 <= a <= 1.0 for a in s.acceptance_per_depth)
    assert s.acceptance_per_depth == sorted(s.acceptance_per_depth, reverse=True)
    assert {"prefill", "draft", "pack", "target", "accept", "cache"} <= set(s.time_s)


# ---- the real default model, offline ----------------------------------------------------


def test_no_deprecated_transformers_arguments(tiny_model, tiny_drafter):
    """transformers 5.24 renamed the decoder's `past_key_values` argument to `cache` (the old name
    goes in 5.40): the engine passes whichever the installed version takes, without warnings."""
    ids = torch.tensor([[5, 6, 7, 8]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = rr.generate(tiny_model, tiny_drafter, ids, max_new_tokens=12, beam_width=2)
    assert torch.equal(out.sequences, _plain(tiny_model, ids, 12))
    kinds = (FutureWarning, DeprecationWarning)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, kinds)]
    assert not deprecations, deprecations


@pytest.mark.slow
def test_concurrent_first_use_conversion_keeps_the_winner(smollm, tmp_path):
    """Two processes converting the GGUF at once (e.g. `train --gen-shard 0/2` and `1/2` on a
    fresh machine): the one that renames second keeps the first one's checkpoint, no error."""
    import shutil

    from redrafter_rs.models import cache_dir, convert_gguf

    dest = tmp_path / "SmolLM2-135M-Instruct"
    dest.mkdir()
    shutil.copy(cache_dir() / "models" / "SmolLM2-135M-Instruct" / "config.json", dest)
    convert_gguf(dest)  # finishes second: its rename onto the non-empty dest fails
    assert sorted(p.name for p in dest.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]  # temp dir cleaned up


@pytest.mark.slow
def test_smollm2_untrained_drafter_equals_generate(smollm, mt_bench_prompts):
    model, _ = smollm
    torch.manual_seed(0)
    drafter = rr.RecurrentDrafter.for_target(model).eval()
    for ids in mt_bench_prompts:
        want = _plain(model, ids, 32)
        out = rr.generate(model, drafter, ids, max_new_tokens=32, beam_width=4, beam_length=4)
        assert torch.equal(out.sequences, want)


@pytest.mark.slow
def test_smollm2_perfect_drafter_equals_generate(smollm, mt_bench_prompts):
    model, _ = smollm
    for ids in mt_bench_prompts:
        want = _plain(model, ids, 48)
        oracle = OracleDrafter(want[0], model.config.vocab_size)
        out = rr.generate(model, oracle, ids, max_new_tokens=48, beam_width=4, beam_length=5)
        assert torch.equal(out.sequences, want)
        assert out.stats.tau > 4.0, out.stats.accepted_per_step


@pytest.mark.slow
def test_cli_demo_with_retrieval_on_the_fast_path(capsys):
    """`redrafter demo` end to end (default model, shipped drafter): output identical to
    model.generate on the same (accelerated) forward, with retrieval drafts merged and the
    adaptive shape policy (the defaults), and the fast path on (the CPU default)."""
    from redrafter_rs.cli import build_parser, main

    argv = ["demo", "--max-new-tokens", "12", "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "identical    : True" in out and "+ retrieval drafts" in out
    assert "fast path: 211 linear layers on redrafter-rs's rust kernel" in out
    assert "model.generate (stock)" in out and "model.generate (accelerated)" in out
    assert "speedup vs accelerated model.generate" in out
    assert "shipped (smollm2-135m-instruct-drafter)" in out
    assert "adaptive up to W=4, L=4" in out and "shapes       : " in out
    assert not build_parser().parse_args(["demo", "--no-retrieval"]).retrieval
    assert not build_parser().parse_args(["demo", "--no-fast"]).fast
    fixed = build_parser().parse_args(["demo", "--no-adaptive", "-W", "2", "-L", "3"])
    assert not fixed.adaptive and (fixed.beam_width, fixed.beam_length) == (2, 3)


@pytest.mark.slow
def test_cli_demo_best_nodes_tree(capsys):
    """`redrafter demo --tree-nodes N`: a fixed best-nodes tree (no policy), lossless."""
    from redrafter_rs.cli import main

    argv = ["demo", "--question", "20", "--max-new-tokens", "10", "--tree-nodes", "3"]
    assert main([*argv, "--threads", "1", "--no-fast"]) == 0
    out = capsys.readouterr().out
    assert "fast path" not in out and "model.generate (accelerated)" not in out
    assert "identical    : True" in out and "W=4, L=4, best-nodes tree of 3" in out
    assert "adaptive" not in out and "shapes       : " not in out


def test_request_context_grows_incrementally():
    """Context-aware drafters get prompt + emitted tokens from a buffer grown by doubling."""
    from redrafter_rs.engine.sampling import GREEDY
    from redrafter_rs.engine.scheduler import GenerationStats, Request

    req = Request("r", list(range(70)), GREEDY, 500, None, GenerationStats())
    assert req.context().tolist() == list(range(70))
    first = req.context_capacity
    grew = 0
    for step in range(40):
        before = req.context_capacity
        req.tokens.extend([1000 + step] * (step % 5))
        ctx = req.context()
        assert ctx.dtype == torch.int64 and ctx.tolist() == req.prompt + req.tokens
        if req.context_capacity != before:  # grown by doubling, never by one step's tokens
            assert req.context_capacity >= 2 * (len(req.prompt) + len(req.tokens))
            grew += 1
    assert first >= 70 and grew >= 1
    assert req.context_capacity >= len(req.prompt) + len(req.tokens)
