"""Drafter distillation: teacher caches, the training loop, checkpoints/resume, DDP and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import redrafter_rs as rr
from helpers import tiny_llama
from redrafter_rs.training.selfdistill import (
    SelfDistillConfig,
    builtin_openings,
    generate_cache,
    greedy_record,
    instruction_prompts,
    pre_query_prefix,
    sampled_prompts,
    sort_within_blocks,
)
from redrafter_rs.training.teacher import load_chunks, read_manifest, teacher_force
from redrafter_rs.training.train import (
    CHECKPOINT,
    AnchorData,
    TrainConfig,
    distill_loss,
    evaluate_tau,
    export_drafter,
    grow_blocks,
    grow_vocab,
    load_checkpoint,
    train_drafter,
    validate,
)

EOS = {1}


def _prompts(n: int, seed: int, vocab: int = 96) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (n,), generator=gen)
    return [torch.randint(2, vocab, (int(k),), generator=gen).tolist() for k in lengths]


def _tiny_cache(model, directory: Path, n: int = 24, max_new: int = 40) -> Path:
    cfg = SelfDistillConfig(max_new_tokens=max_new, batch_size=8, top_k=8, chunk_positions=300)
    generate_cache(model, _prompts(n, seed=0), directory, cfg, EOS, log=lambda s: None)
    return directory


def _config(**overrides) -> TrainConfig:
    base = dict(
        exit_dim=64,
        draft_vocab_size=48,
        beam_length=4,
        steps=20,
        batch_size=32,
        lr=3e-3,
        warmup_steps=5,
        ckpt_every=0,
        log_every=5,
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=3)


@pytest.fixture(scope="module")
def cache(model, tmp_path_factory) -> Path:
    return _tiny_cache(model, tmp_path_factory.mktemp("teacher"))


# ---- teacher outputs --------------------------------------------------------------------------
@pytest.mark.slow
def test_sampled_prompts_are_complete_distinct_and_seeded(smollm):
    model, tok = smollm
    assert pre_query_prefix(tok).endswith("<|im_start|>user\n")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = sampled_prompts(model, tok, 3, seed=5, batch_size=6, max_new_tokens=48, log=None)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    again = sampled_prompts(model, tok, 3, seed=5, batch_size=6, max_new_tokens=48, log=None)
    other = sampled_prompts(model, tok, 3, seed=6, batch_size=6, max_new_tokens=48, log=None)
    assert first == again and first != other
    assert len(first) == 3 and len({p.lower() for p in first}) == 3
    for text in first:
        assert len(text) >= 16 and "<|im_" not in text and text == text.strip()


@pytest.mark.slow
def test_sampled_prompts_start_from_the_openings(smollm):
    model, tok = smollm
    openings = ["Write a Python function", "Solve"]
    first = sampled_prompts(model, tok, 3, seed=2, batch_size=6, openings=openings, log=None)
    assert len(first) == 3 and len({p.lower() for p in first}) == 3
    for text in first:
        start = next(o for o in openings if text.startswith(o))
        assert len(text) > len(start) + 8 and "<|im_" not in text
    builtin = builtin_openings()
    assert len(builtin) >= 40 and len(set(builtin)) == len(builtin) and all(builtin)


@pytest.mark.slow
@pytest.mark.parametrize("opened", [False, True])
def test_cli_sampled_prompts_are_kept_and_answered(tmp_path, opened):
    from redrafter_rs.cli import main

    cmd = ["train", "--cache", str(tmp_path), "--sampled-prompts", "4", "--gen-shard", "1/2"]
    cmd += ["--gen-batch", "4", "--max-new-tokens", "4", "--threads", "1"]
    cmd += ["--sampled-openings"] if opened else []
    assert main(cmd) == 0
    directory = tmp_path / f"sampled{'-open' if opened else ''}-n4-seed0-shard1of2"
    prompts = json.loads((directory / "prompts.json").read_text())
    assert len(prompts) == 2 and all(isinstance(p, str) for p in prompts)
    if opened:
        openings = builtin_openings()
        assert all(any(p.startswith(o) for o in openings) for p in prompts)
    assert read_manifest(directory).items_done == 2
    assert main(cmd) == 0  # resumed: the same prompts, nothing new to answer
    assert json.loads((directory / "prompts.json").read_text()) == prompts
    assert read_manifest(directory).items_done == 2


def test_recorded_greedy_matches_generate_and_teacher_forcing(model):
    prompts = _prompts(4, seed=5)
    records = greedy_record(model, prompts, 12, EOS, top_k=8)
    for prompt, rec in zip(prompts, records, strict=True):
        ref = model.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=12, eos_token_id=1
        )
        answer = ref[0, len(prompt) :].tolist()
        assert rec.next_token.tolist() == answer
        assert rec.topk_ids[:, 0].tolist() == answer  # greedy = the teacher's top-1
        # teacher forcing over prompt + answer sees the same hidden states and logits
        forced = teacher_force(model, [prompt + answer], top_k=8, start=[len(prompt) - 1])[0]
        assert forced.next_token.tolist() == answer[: len(forced)]
        torch.testing.assert_close(
            forced.hidden.float(), rec.hidden[: len(forced)].float(), atol=2e-2, rtol=0
        )


def test_cache_chunks_resume_and_offsets(model, tmp_path):
    cfg = SelfDistillConfig(max_new_tokens=10, batch_size=4, top_k=8, chunk_positions=30)
    prompts = _prompts(12, seed=1)
    generate_cache(model, prompts[:8], tmp_path, cfg, EOS, log=lambda s: None)
    assert read_manifest(tmp_path).items_done == 8
    total = generate_cache(model, prompts, tmp_path, cfg, EOS, log=lambda s: None)  # resumes
    manifest = read_manifest(tmp_path)
    assert manifest.items_done == 12 and len(manifest.chunks) >= 2
    data = load_chunks(tmp_path, model)
    offsets = data["seq_offsets"]
    assert int(offsets[-1]) == total == data["hidden"].shape[0]
    assert len(offsets) == 13  # one sequence per prompt
    assert data["hidden"].dtype == torch.float16 and data["topk_ids"].shape == (total, 8)
    with pytest.raises(rr.RedrafterError, match="different target"):
        load_chunks(tmp_path, tiny_llama(seed=4))


def test_length_sorting_stays_inside_blocks_and_matches_unsorted_records(model, tmp_path):
    prompts = _prompts(10, seed=7)
    ordered = sort_within_blocks(prompts, 4)
    for lo in range(0, 10, 4):  # each block holds the same prompts, shortest first
        block = ordered[lo : lo + 4]
        assert sorted(block) == sorted(prompts[lo : lo + 4])
        assert [len(p) for p in block] == sorted(len(p) for p in block)
    cfg = SelfDistillConfig(max_new_tokens=6, batch_size=2, top_k=8, chunk_positions=20)
    generate_cache(model, prompts, tmp_path, cfg, EOS, log=lambda s: None)
    assert read_manifest(tmp_path).settings["length_sorted_blocks"] == 16
    data = load_chunks(tmp_path, model)
    offsets = data["seq_offsets"].tolist()
    first = [int(data["next_token"][a]) for a in offsets[:-1]]  # first answer token per prompt
    ordered = sort_within_blocks(prompts, 16)  # one block here: the whole list
    want = [r.next_token[0].item() for r in greedy_record(model, ordered, 6, EOS, top_k=8)]
    assert first == want


def test_instruction_prompts_are_balanced_and_exclude_mt_bench():
    prompts = instruction_prompts(400, seed=0)
    assert len(set(prompts)) == 400
    assert any("Python function" in p for p in prompts) and any("Solve" in p for p in prompts)
    try:
        from redrafter_rs.data import mt_bench_questions

        bench = {q["turns"][0] for q in mt_bench_questions()}
    except rr.RedrafterError:
        pytest.skip("MT-Bench package not installed")
    assert not bench & set(prompts)


# ---- training ---------------------------------------------------------------------------------
def test_training_lowers_loss_and_raises_tau(model, cache, tmp_path):
    """A few hundred teacher positions: the drafter learns the tiny target's own answers."""
    cfg = _config(steps=200, exit_dim=128, draft_vocab_size=64, batch_size=64, lr=1e-2)
    result = train_drafter(model, cache, tmp_path, cfg, progress=False)
    history = [h for h in result.history if "loss" in h]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert all(a > 0.2 for a in history[-1]["acc_per_depth"]), history[-1]
    trained = rr.RecurrentDrafter.from_pretrained(tmp_path / "drafter", target=model)
    assert trained.config.draft_vocab_size == 64
    torch.manual_seed(0)
    untrained = rr.RecurrentDrafter.for_target(model, exit_dim=128).eval()
    # the prompts the cache was distilled from (a random tiny target does not generalise)
    prompts = [torch.tensor([p]) for p in _prompts(24, seed=0)[:4]]
    tau_trained = evaluate_tau(model, trained, prompts, 4, 4, max_new_tokens=24)
    tau_untrained = evaluate_tau(model, untrained, prompts, 4, 4, max_new_tokens=24)
    assert tau_trained > tau_untrained + 0.5, (tau_trained, tau_untrained)


def test_hard_weight_adds_cross_entropy_on_the_teachers_top1():
    """loss(w) = KL + w x mean CE of the teacher's top-1 token, per depth, over valid anchors whose
    top-1 token is in the draft vocabulary."""
    gen = torch.Generator().manual_seed(0)
    B, D, K, V, Vd = 6, 3, 4, 20, 8
    t2d = torch.full((V,), -1)
    t2d[torch.arange(0, V, 2)[:Vd]] = torch.arange(Vd)  # even ids < 16 are drafted
    drafted = torch.arange(0, 2 * Vd, 2)
    rows = [torch.randperm(V, generator=gen) for _ in range(B * D)]
    # top-1 drafted (rotated to the front), the rest of the top-k anything
    rows = [r.roll(-int((r[:, None] == drafted).any(1).nonzero()[0])) for r in rows]
    topk_ids = torch.stack(rows)[:, :K].view(B, D, K)
    topk_ids[0, 0, 0], topk_ids[1, 2, 0] = 3, 17  # top-1 outside the draft vocabulary
    batch = {
        "topk_ids": topk_ids,
        "topk_logits": torch.randn(B, D, K, generator=gen).sort(-1, descending=True).values,
        "valid": torch.ones(B, D, dtype=torch.bool),
    }
    batch["valid"][5, 1:] = False
    logits = torch.randn(B, D, Vd, generator=gen)
    kl_only, stats = distill_loss(logits, batch, t2d)
    mixed, _ = distill_loss(logits, batch, t2d, hard_weight=0.5)
    expected = 0.0
    for i in range(D):
        top1 = t2d[topk_ids[:, i, 0]]
        keep = batch["valid"][:, i] & (top1 >= 0)
        ce = torch.nn.functional.cross_entropy(logits[keep, i], top1[keep])
        expected += float(ce)
    assert abs(float(mixed - kl_only) - 0.5 * expected) < 1e-5
    assert abs(float(kl_only) - float(stats["kl"].sum())) < 1e-6
    with pytest.raises(rr.RedrafterError, match="hard_weight"):
        TrainConfig(hard_weight=-1.0)


def test_resume_matches_uninterrupted_run(model, cache, tmp_path):
    cfg = _config(steps=16, ckpt_every=4)
    whole = train_drafter(model, cache, tmp_path / "a", cfg, progress=False)
    first = train_drafter(model, cache, tmp_path / "b", cfg, stop_after=7, progress=False)
    assert first.step == 7 and load_checkpoint(tmp_path / "b" / CHECKPOINT)["step"] == 7
    second = train_drafter(model, cache, tmp_path / "b", cfg, resume=True, progress=False)
    assert second.step == 16
    for name, tensor in whole.drafter.state_dict().items():
        assert torch.equal(tensor, second.drafter.state_dict()[name]), name


def test_bad_checkpoints_give_clear_errors(model, cache, tmp_path):
    cfg = _config(steps=4)
    train_drafter(model, cache, tmp_path, cfg, progress=False)
    with pytest.raises(rr.RedrafterError, match="does not match this run: exit_dim"):
        train_drafter(model, cache, tmp_path, _config(steps=8, exit_dim=32), resume=True)
    with pytest.raises(rr.RedrafterError, match="hard_weight: checkpoint 0.0 vs now 1.0"):
        train_drafter(model, cache, tmp_path, _config(steps=8, hard_weight=1.0), resume=True)
    with pytest.raises(rr.RedrafterError, match="different target"):
        train_drafter(tiny_llama(seed=4), cache, tmp_path, cfg, resume=True)
    path = tmp_path / CHECKPOINT
    path.write_bytes(path.read_bytes()[:200])  # torn file
    with pytest.raises(rr.RedrafterError, match="corrupt or unreadable"):
        train_drafter(model, cache, tmp_path, cfg, resume=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(rr.RedrafterError, match="corrupt or unreadable"):
        load_checkpoint(path)


def test_export_half_precision(model, cache, tmp_path):
    train_drafter(model, cache, tmp_path / "run", _config(steps=4), progress=False)
    export_drafter(tmp_path / "run", tmp_path / "export", dtype=torch.float16)
    loaded = rr.RecurrentDrafter.from_pretrained(tmp_path / "export", target=model)
    ref = rr.RecurrentDrafter.from_pretrained(tmp_path / "run" / "drafter", target=model)
    torch.testing.assert_close(loaded.head.weight, ref.head.weight, atol=1e-3, rtol=1e-3)
    assert torch.equal(loaded.draft_to_target, ref.draft_to_target)


def test_init_from_fine_tunes_an_existing_drafter(model, cache, tmp_path):
    """Warm start: the run begins at the given drafter's weights and keeps its architecture."""
    base = train_drafter(model, cache, tmp_path / "base", _config(steps=40), progress=False)
    start = validate(base.drafter, model, cache, beam_length=4)
    # no architecture given: taken from the init drafter (exit 64, 48-token draft vocabulary)
    cfg = TrainConfig(beam_length=4, steps=1, lr=1e-9, warmup_steps=1, batch_size=32, ckpt_every=0)
    cfg.init_from = str(tmp_path / "base" / "drafter")
    tuned = train_drafter(model, cache, tmp_path / "tuned", cfg, progress=False)
    assert tuned.drafter.config.exit_dim == 64 and tuned.drafter.config.draft_vocab_size == 48
    assert torch.equal(tuned.drafter.draft_to_target, base.drafter.draft_to_target)
    after = validate(tuned.drafter, model, cache, beam_length=4)
    assert after["acc_per_depth"] == start["acc_per_depth"]  # lr ~0: the init weights
    scratch = train_drafter(model, cache, tmp_path / "s", _config(steps=1), progress=False)
    assert validate(scratch.drafter, model, cache, beam_length=4)["kl_per_depth"][0] > (
        start["kl_per_depth"][0] + 0.1
    )
    with pytest.raises(rr.RedrafterError, match="has exit_dim=64, this run asks for 32"):
        train_drafter(model, cache, tmp_path / "x", _config(exit_dim=32, init_from=cfg.init_from))
    # more residual blocks than the init drafter: the new ones start as the identity
    hidden, state = torch.randn(2, 5, 64).unbind(0)
    grown_only = grow_blocks(base.drafter.eval(), 3)
    assert torch.equal(grown_only.logits(hidden, state), base.drafter.logits(hidden, state))
    cfg.num_layers = 3
    grown = train_drafter(model, cache, tmp_path / "grown", cfg, progress=False)
    assert grown.drafter.config.num_layers == 3
    grown_val = validate(grown.drafter, model, cache, beam_length=4)
    assert grown_val["acc_per_depth"] == start["acc_per_depth"]
    assert grown.drafter.blocks[2].linear.weight.abs().sum() > 0  # the new blocks train
    cfg.num_layers = 1
    other = tiny_llama(seed=4)  # same shapes, other weights, with a cache of its own
    other_cache = _tiny_cache(other, tmp_path / "other-cache", n=4, max_new=8)
    with pytest.raises(rr.RedrafterError, match="drafter/target mismatch"):
        train_drafter(other, other_cache, tmp_path / "y", cfg, progress=False)


def test_init_from_with_a_larger_draft_vocabulary_grows_the_head(model, cache, tmp_path):
    """--init with --draft-vocab above the init drafter's: its tokens keep their rows (same
    logits), the added ones are the most teacher-frequent it lacked, with LM-head rows."""
    base = train_drafter(model, cache, tmp_path / "base", _config(steps=20), progress=False)
    data = AnchorData(load_chunks(cache, model), 3)
    old = base.drafter.eval()
    grown = grow_vocab(old, data, 64, model).eval()
    ids = grown.draft_to_target
    assert grown.config.head_size == 64 and torch.equal(ids[:48], old.draft_to_target)
    assert ids.unique().numel() == 64  # the added tokens are new ones
    mass = data.token_mass(96)
    mass[old.draft_to_target] = -1
    assert set(ids[48:].tolist()) == set(mass.argsort(descending=True)[:16].tolist())
    hidden, state = torch.randn(2, 5, 64).unbind(0)
    assert torch.equal(grown.logits(hidden, state)[:, :48], old.logits(hidden, state))
    lm = model.get_output_embeddings().weight
    assert torch.equal(grown.head.weight[48:], lm[ids[48:]].to(grown.head.weight))
    assert grow_vocab(old, data, 48, model) is old  # not larger: unchanged
    assert grow_vocab(old, data, None, model).config.head_size == 96  # the full vocabulary
    # through train_drafter: the run's config asks for 64 with --init
    cfg = _config(steps=2, init_from=str(tmp_path / "base" / "drafter"), draft_vocab_size=64)
    tuned = train_drafter(model, cache, tmp_path / "tuned", cfg, progress=False)
    assert tuned.drafter.config.draft_vocab_size == 64
    assert torch.equal(tuned.drafter.draft_to_target[:48], old.draft_to_target)
    with pytest.raises(rr.RedrafterError, match="has draft_vocab_size=48, this run asks for 32"):
        train_drafter(
            model, cache, tmp_path / "x", _config(init_from=cfg.init_from, draft_vocab_size=32)
        )


# ---- data parallel ----------------------------------------------------------------------------
_DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from helpers import tiny_llama
from redrafter_rs.training.train import TrainConfig, train_drafter
torch.set_num_threads(1)
cfg = TrainConfig(exit_dim=64, draft_vocab_size=48, beam_length=4, steps=6, batch_size=16,
                  warmup_steps=2, ckpt_every=0, log_every=3)
out = train_drafter(tiny_llama(seed=3), {cache!r}, {out!r}, cfg, progress=False)
rank = int(os.environ["RANK"])
torch.save(out.drafter.state_dict(), os.path.join({out!r}, f"rank{{rank}}.pt"))
"""


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_end_identical(cache, tmp_path):
    script = tmp_path / "ddp_train.py"
    tests = str(Path(__file__).parent)
    script.write_text(
        textwrap.dedent(_DDP_SCRIPT.format(tests=tests, cache=str(cache), out=str(tmp_path)))
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd.append(str(script))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["data"]["world_size"] == 2 and state["step"] == 6
    for name in a:
        assert torch.equal(a[name], b[name]), name
        assert torch.equal(a[name], state["drafter"][name]), name  # rank 0 wrote the checkpoint
    assert state["history"][-1]["loss"] < state["history"][0]["loss"]


# ---- the command line -------------------------------------------------------------------------
def _tiny_target_dir(directory: Path, tok):
    """A tiny random Llama saved with `tok`, the default model's real tokenizer (from the
    `smollm` fixture, which converts the default model if no earlier run has)."""
    target = tiny_llama(seed=3, vocab_size=len(tok))
    target.save_pretrained(directory)
    tok.save_pretrained(directory)
    return target


@pytest.mark.slow
def test_cli_train_builds_caches_trains_resumes_and_exports(smollm, tmp_path):
    from redrafter_rs.cli import main

    target = _tiny_target_dir(tmp_path / "target", smollm[1])
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 12)
    chat = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    }
    (tmp_path / "chat.jsonl").write_text(json.dumps(chat) + "\n")
    common = ["train", "--model", str(tmp_path / "target"), "--cache", str(tmp_path / "cache")]
    common += ["--instructions", "6", "--max-new-tokens", "8", "--gen-batch", "3"]
    common += ["--data", str(tmp_path / "text.txt"), str(tmp_path / "chat.jsonl")]
    common += ["--window", "64"]
    common += ["--out", str(tmp_path / "run"), "--exit-dim", "64", "--draft-vocab", "256"]
    common += ["--batch-size", "8", "--steps", "6", "--log-every", "2", "--threads", "1"]
    assert main(common + ["--stop-after", "3"]) == 0
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["step"] == 3
    assert main(common + ["--resume", "--export", str(tmp_path / "export")]) == 0
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["step"] == 6
    drafter = rr.RecurrentDrafter.from_pretrained(tmp_path / "export", target=target)
    assert drafter.head.weight.shape == (256, 64)
    caches = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert caches[0].startswith("instructions-n6-seed0") and caches[1].startswith("text-")


@pytest.mark.slow
def test_cli_sharded_generation_then_training_on_the_shards(smollm, tmp_path, capsys):
    from redrafter_rs.cli import main

    _tiny_target_dir(tmp_path / "target", smollm[1])
    common = ["train", "--model", str(tmp_path / "target"), "--cache", str(tmp_path / "cache")]
    common += ["--threads", "1"]
    gen = ["--instructions", "6", "--max-new-tokens", "6", "--gen-batch", "2"]
    for k in (0, 1):
        assert main(common + gen + ["--gen-shard", f"{k}/2"]) == 0
    common += ["--out", str(tmp_path / "run")]
    shards = sorted((tmp_path / "cache").iterdir())
    assert [p.name for p in shards] == [f"instructions-n6-seed0-shard{k}of2" for k in (0, 1)]
    assert [read_manifest(p).items_done for p in shards] == [3, 3]
    assert not (tmp_path / "run").exists()  # generation only
    fit = ["--exit-dim", "64", "--draft-vocab", "64", "--batch-size", "8", "--steps", "4"]
    assert main(common + fit + ["--caches", *map(str, shards)]) == 0
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["step"] == 4
    assert main(common + fit + ["--caches", str(tmp_path)]) == 2
    assert "is not a teacher cache" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(common + gen + ["--gen-shard", "2/2"])


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_checkpoint(cache, tmp_path):
    script = tmp_path / "long_train.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from helpers import tiny_llama
        from redrafter_rs.training.train import TrainConfig, train_drafter
        torch.set_num_threads(1)
        cfg = TrainConfig(exit_dim=64, draft_vocab_size=48, beam_length=4, steps=10**6,
                          batch_size=16, ckpt_every=5, log_every=5)
        out = train_drafter(tiny_llama(seed=3), {str(cache)!r}, {str(tmp_path)!r}, cfg,
                            progress=False, log=print)
        sys.exit(130 if out.interrupted else 0)
        """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / CHECKPOINT).is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["step"] >= 5 and f"interrupted at step {state['step']}" in out
    drafter = rr.RecurrentDrafter.from_pretrained(tmp_path / "drafter")
    assert torch.equal(drafter.head.weight, state["drafter"]["head.weight"])


# ---- the shipped drafter ----------------------------------------------------------------------
@pytest.mark.slow
def test_shipped_drafter_is_small_trained_and_lossless(smollm, mt_bench_prompts):
    from redrafter_rs.assets import DEFAULT_DRAFTER, load_default_drafter

    weights = DEFAULT_DRAFTER / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 20 * 2**20
    assert (DEFAULT_DRAFTER / "MODEL_CARD.md").is_file()
    model, _ = smollm
    drafter = load_default_drafter(model)
    assert drafter.config.draft_vocab_size == 8192
    ids = mt_bench_prompts[1]
    out = rr.generate(model, drafter, ids, max_new_tokens=32, beam_width=4, beam_length=4)
    ref = model.generate(ids, do_sample=False, max_new_tokens=32)
    assert torch.equal(out.sequences, ref)
    assert out.stats.tau > 1.3  # an untrained drafter stays at ~1.0
