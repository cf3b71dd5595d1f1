"""Tokens/s at batch 1/4/8: plain `model.generate` vs ReDrafter (fixed W x L and load-aware),
side by side on the same MT-Bench prompts, on the default model. Also counts greedy equality
of every row with `model.generate` on that row alone.

    python benchmarks/batch_throughput.py [--drafter DIR] [--new 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import redrafter_rs as rr
from redrafter_rs.assets import load_default_drafter
from redrafter_rs.data import chat_prompt, mt_bench_questions
from redrafter_rs.models import load_default_model


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _new(row: torch.Tensor, T: int, eos: int) -> list[int]:
    toks = row[T:].tolist()
    return toks[: toks.index(eos) + 1] if eos in toks else toks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drafter", default=None)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--shape", default="4x5")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_default_model()
    tok.padding_side = "left"
    if args.drafter:
        drafter = rr.RecurrentDrafter.from_pretrained(args.drafter, target=model)
    else:
        drafter = load_default_drafter(model)
    W, L = map(int, args.shape.split("x"))
    texts = [chat_prompt(tok, q["turns"][0]) for q in mt_bench_questions()[::10]]  # 8 categories
    eos = model.generation_config.eos_token_id
    alone = {}
    for i, t in enumerate(texts):
        ids = tok(t, return_tensors="pt").input_ids
        alone[i] = _new(model.generate(ids, do_sample=False, max_new_tokens=args.new)[0],
                        ids.shape[1], eos)  # fmt: skip
    rr.generate(model, drafter, tok(texts[0], return_tensors="pt").input_ids, max_new_tokens=4)
    results = []
    for B in map(int, args.batches.split(",")):
        enc = tok(texts[:B], return_tensors="pt", padding=True)
        T = enc.input_ids.shape[1]
        ids, mask = enc.input_ids, enc.attention_mask
        hf, t_hf = _timed(
            lambda ids=ids, mask=mask: model.generate(
                input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=args.new
            )
        )
        fixed, t_fx = _timed(
            lambda ids=ids, mask=mask: rr.generate(
                model, drafter, ids, mask, max_new_tokens=args.new, beam_width=W, beam_length=L
            )
        )
        adapt, t_ad = _timed(
            lambda ids=ids, mask=mask: rr.generate(
                model,
                drafter,
                ids,
                mask,
                max_new_tokens=args.new,
                beam_width=8,
                beam_length=6,
                adaptive=True,
            )
        )
        n_hf = sum(len(_new(r, T, eos)) for r in hf)
        row = {
            "batch": B,
            "hf_tok_s": n_hf / t_hf,
            f"redrafter_{W}x{L}_tok_s": fixed.stats.new_tokens / t_fx,
            f"redrafter_{W}x{L}_tau": fixed.stats.tau,
            "adaptive_tok_s": adapt.stats.new_tokens / t_ad,
            "adaptive_tau": adapt.stats.tau,
            "rows_equal_alone": sum(
                _new(fixed.sequences[i], T, eos) == alone[i]
                and _new(adapt.sequences[i], T, eos) == alone[i]
                for i in range(B)
            ),
            "rows": B,
        }
        results.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
