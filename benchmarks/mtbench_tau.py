"""τ (tokens per target forward) of a drafter on the 80 MT-Bench first turns, per (W, L) and per
category, greedy, checked token for token against `model.generate`.

τ does not depend on batching (greedy verification is exact and every row drafts from its own
hidden state), so rows run in batches to use this CPU well; speed is `redrafter bench`'s job.

    python benchmarks/mtbench_tau.py --grid 1x4,4x4,8x5 --out benchmarks/mtbench-tau.json

On a machine with several cores, one process per core over a share of the prompts is faster than
threads; the shares are merged by summing their raw counts:

    python benchmarks/mtbench_tau.py --shard 0/2 --threads 1 --out /tmp/tau0.json &
    python benchmarks/mtbench_tau.py --shard 1/2 --threads 1 --out /tmp/tau1.json; wait
    python benchmarks/mtbench_tau.py --merge /tmp/tau0.json /tmp/tau1.json --out tau.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

import redrafter_rs as rr
from redrafter_rs._io import atomic_write_text
from redrafter_rs.assets import load_default_drafter
from redrafter_rs.bench.runner import hf_runner, parse_grid, parse_tree_grid
from redrafter_rs.data import chat_prompt, mt_bench_questions
from redrafter_rs.drafters.recurrent import RecurrentDrafter
from redrafter_rs.engine.target import left_pad
from redrafter_rs.models import load_model


def parse_shapes(text: str) -> list[tuple[int, int, int | None]]:
    """Shapes such as "1x4,4x4n9" -> [(1, 4, None), (4, 4, 9)]: W x L beams, or best-nodes."""
    items = text.lower().split(",")
    return [parse_tree_grid(i)[0] if "n" in i else (*parse_grid(i)[0], None) for i in items]


def batches(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--drafter", default=None, help="drafter dir (default: the shipped one)")
    p.add_argument(
        "--grid", type=parse_shapes, default=parse_shapes("1x4,4x4,8x5"),
        help="W x L beams, or W x L n N for a best-nodes tree of N nodes: 1x4,4x4,4x4n9",
    )  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-prompts", type=int, default=80)
    p.add_argument("--retrieval", action="store_true", help="also with retrieval drafts merged")
    p.add_argument("--retrieval-only", action="store_true", help="only with retrieval drafts")
    p.add_argument("--datastore", default=None, help="retrieval also from this datastore file")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--shard", default="0/1", help="K/N: prompts K, K+N, ... of the selection")
    p.add_argument("--refs", default=None, help="JSON file caching the references (reused)")
    p.add_argument("--merge", nargs="+", default=None, help="sum these reports' counts into --out")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    drafter = (
        RecurrentDrafter.from_pretrained(args.drafter, target=model)
        if args.drafter
        else load_default_drafter(model)
    )
    k, n_shards = (int(x) for x in args.shard.split("/"))
    qs = mt_bench_questions()[: args.num_prompts][k::n_shards]
    prompts = [tok(chat_prompt(tok, q["turns"][0])).input_ids for q in qs]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    n = args.max_new_tokens
    refs = references(model, prompts, n, args.refs)
    retrieval = True
    if args.datastore:
        retrieval = rr.RetrievalConfig(datastore=rr.Datastore.load(args.datastore))
    variants = [] if args.retrieval_only else [(*g, False) for g in args.grid]
    if args.retrieval or args.retrieval_only:
        variants += [(*g, True) for g in args.grid]
    report = {"config": vars(args) | {"grid": [list(g) for g in args.grid]}, "shapes": {}}
    for W, L, N, ret in variants:
        name = f"{W}x{L}" + (f"n{N}" if N else "") + ("+retrieval" if ret else "")
        t = time.perf_counter()
        raw = {"tokens": 0, "steps": 0, "nodes": 0, "equal": 0, "rows": len(qs)}
        raw |= {"depth_hits": [0] * (L - 1), "per_category": defaultdict(lambda: [0, 0])}
        for chunk in batches(list(range(len(qs))), args.batch_size):
            ids, mask = left_pad([prompts[i] for i in chunk], pad)
            out = rr.generate(
                model, drafter, ids, attention_mask=mask, max_new_tokens=n,
                beam_width=W, beam_length=L, retrieval=retrieval if ret else None, tree_nodes=N,
            )  # fmt: skip
            for row, i in enumerate(chunk):
                new = out.sequences[row, ids.shape[1] :].tolist()[: len(refs[i])]
                raw["equal"] += new == refs[i]
                count_row(raw, out.row_stats[row], qs[i]["category"])
        raw["seconds"] = time.perf_counter() - t
        report["shapes"][name] = summarize(raw)
        show(name, report["shapes"][name])
        atomic_write_text(args.out, json.dumps(report, indent=1))


def references(model, prompts: list[list[int]], n: int, path: str | None) -> list[list[int]]:
    """Greedy `model.generate` answers, one prompt at a time; cached in `path` if given."""
    key = {"prompts": prompts, "max_new_tokens": n}
    if path and Path(path).is_file():
        cached = json.loads(Path(path).read_text(encoding="utf-8"))
        if cached["key"] == key:
            return cached["refs"]
    t0 = time.perf_counter()
    with torch.no_grad():
        greedy = hf_runner(model, n)  # model.generate, greedy: the reference
        refs = [greedy(torch.tensor([ids]))[0] for ids in prompts]
    print(f"references: {time.perf_counter() - t0:.0f} s", flush=True)
    if path:
        atomic_write_text(path, json.dumps({"key": key, "refs": refs}))
    return refs


def count_row(raw: dict, stats, category: str) -> None:
    tokens = sum(stats.accepted_per_step) + stats.steps  # accepted drafts + one target token
    raw["tokens"] += tokens
    raw["steps"] += stats.steps
    raw["nodes"] += stats.tree_nodes
    raw["per_category"][category][0] += tokens
    raw["per_category"][category][1] += stats.steps
    for a in stats.accepted_per_step:
        for d in range(a):
            raw["depth_hits"][d] += 1


def summarize(raw: dict) -> dict:
    """τ, acceptance per depth and τ per category from raw counts (kept, for merging)."""
    steps = raw["steps"]
    return {
        "tau": raw["tokens"] / steps,
        "tree_nodes_per_step": raw.get("nodes", 0) / steps,  # roots included
        "acceptance_per_depth": [c / steps for c in raw["depth_hits"]],
        "tau_per_category": {c: v[0] / v[1] for c, v in sorted(raw["per_category"].items())},
        "greedy_equal": f"{raw['equal']}/{raw['rows']}",
        "seconds": raw["seconds"],
        "raw": raw,
    }


def show(name: str, r: dict) -> None:
    print(
        f"{name}: τ {r['tau']:.3f}, {r['tree_nodes_per_step']:.1f} nodes/step, per depth "
        + " ".join(f"{a:.2f}" for a in r["acceptance_per_depth"])
        + f", equal {r['greedy_equal']}, {r['seconds']:.0f} s; "
        + ", ".join(f"{c} {v:.2f}" for c, v in r["tau_per_category"].items()),
        flush=True,
    )


def merge(paths: list[str], out: str) -> None:
    """Sum the raw counts of per-shard reports (same shapes) into one report."""
    reports = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    merged = {"config": reports[0]["config"] | {"merged_from": paths}, "shapes": {}}
    for name in reports[0]["shapes"]:
        raws = [r["shapes"][name]["raw"] for r in reports]
        keys = ("tokens", "steps", "equal", "rows", "nodes")
        total = {key: sum(r.get(key, 0) for r in raws) for key in keys}  # old: no "nodes"
        total["seconds"] = max(r["seconds"] for r in raws)  # the shards ran side by side
        total["depth_hits"] = [sum(x) for x in zip(*(r["depth_hits"] for r in raws), strict=True)]
        cats: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in raws:
            for c, (tok, st) in r["per_category"].items():
                cats[c][0] += tok
                cats[c][1] += st
        total["per_category"] = cats
        merged["shapes"][name] = summarize(total)
        show(name, merged["shapes"][name])
    atomic_write_text(out, json.dumps(merged, indent=1))


if __name__ == "__main__":
    main()
