"""τ (tokens per target forward) of a drafter on the 80 MT-Bench first turns, per (W, L) and per
category, greedy, checked token for token against `model.generate`.

τ does not depend on batching (greedy verification is exact and every row drafts from its own
hidden state), so rows run in batches to use this CPU well; speed is `redrafter bench`'s job.

    python benchmarks/mtbench_tau.py --grid 1x4,4x4,8x5 --out benchmarks/mtbench-tau.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

import redrafter_rs as rr
from redrafter_rs._io import atomic_write_text
from redrafter_rs.assets import load_default_drafter
from redrafter_rs.bench import _hf_runner, parse_grid
from redrafter_rs.data import chat_prompt, mt_bench_questions
from redrafter_rs.drafter import RecurrentDrafter
from redrafter_rs.models import load_model
from redrafter_rs.target import left_pad


def batches(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--drafter", default=None, help="drafter dir (default: the shipped one)")
    p.add_argument("--grid", type=parse_grid, default=parse_grid("1x4,4x4,8x5"))
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-prompts", type=int, default=80)
    p.add_argument("--retrieval", action="store_true", help="also with retrieval drafts merged")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    drafter = (
        RecurrentDrafter.from_pretrained(args.drafter, target=model)
        if args.drafter
        else load_default_drafter(model)
    )
    qs = mt_bench_questions()[: args.num_prompts]
    prompts = [tok(chat_prompt(tok, q["turns"][0])).input_ids for q in qs]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    n = args.max_new_tokens
    t0 = time.perf_counter()
    with torch.no_grad():
        greedy = _hf_runner(model, n)  # model.generate, greedy: the reference
        refs = [greedy(torch.tensor([ids]))[0] for ids in prompts]
    print(f"references: {time.perf_counter() - t0:.0f} s", flush=True)
    variants = [(W, L, False) for W, L in args.grid]
    if args.retrieval:
        variants += [(W, L, True) for W, L in args.grid]
    report = {"config": vars(args) | {"grid": [list(g) for g in args.grid]}, "shapes": {}}
    for W, L, ret in variants:
        name = f"{W}x{L}" + ("+retrieval" if ret else "")
        t = time.perf_counter()
        per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # tokens, steps
        depth = [0] * (L - 1)
        steps_all = tokens_all = equal = 0
        for chunk in batches(list(range(len(qs))), args.batch_size):
            ids, mask = left_pad([prompts[i] for i in chunk], pad)
            out = rr.generate(
                model, drafter, ids, attention_mask=mask, max_new_tokens=n,
                beam_width=W, beam_length=L, retrieval=True if ret else None,
            )  # fmt: skip
            for row, i in enumerate(chunk):
                new = out.sequences[row, ids.shape[1] :].tolist()[: len(refs[i])]
                equal += new == refs[i]
                s = out.row_stats[row]
                tokens = sum(s.accepted_per_step) + s.steps
                per_cat[qs[i]["category"]][0] += tokens
                per_cat[qs[i]["category"]][1] += s.steps
                tokens_all += tokens
                steps_all += s.steps
                for a in s.accepted_per_step:
                    for d in range(a):
                        depth[d] += 1
        report["shapes"][name] = {
            "tau": tokens_all / steps_all,
            "acceptance_per_depth": [c / steps_all for c in depth],
            "tau_per_category": {c: v[0] / v[1] for c, v in sorted(per_cat.items())},
            "greedy_equal": f"{equal}/{len(qs)}",
            "seconds": time.perf_counter() - t,
        }
        r = report["shapes"][name]
        print(
            f"{name}: τ {r['tau']:.3f}, per depth "
            + " ".join(f"{a:.2f}" for a in r["acceptance_per_depth"])
            + f", equal {r['greedy_equal']}, {r['seconds']:.0f} s; "
            + ", ".join(f"{c} {v:.2f}" for c, v in r["tau_per_category"].items()),
            flush=True,
        )
        atomic_write_text(args.out, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
