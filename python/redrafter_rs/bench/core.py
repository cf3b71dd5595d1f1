"""`redrafter bench-core`: the Rust path (`pack_beams` + `accept`, as the engine calls them per
step) against the pure-torch reference (bench/reference.py), and the Rust path's share of a real
decode step of the default model.

Beams come from a 4-letter alphabet after a per-row root, so they share prefixes about as often
as beam-search drafts do (as in crates/redrafter-core/benches/tree.rs); the target's choice per
node comes from the same alphabet, so acceptance is partial. Times are medians of timeit repeats.
"""

from __future__ import annotations

import argparse
import itertools
import json
import timeit
from pathlib import Path

import numpy as np
import torch

from redrafter_rs import _core
from redrafter_rs._flags import add_threads, apply_threads
from redrafter_rs.bench import reference

SIZES = tuple(itertools.product((1, 8), (4, 16), (4, 6)))  # (B, W, L)
VOCAB = 49_152


def make_beams(B: int, W: int, L: int, seed: int = 0) -> np.ndarray:
    """[B, W, L] int64: root 1000 + b, then tokens from a 4-letter alphabet."""
    rng = np.random.default_rng(seed)
    beams = rng.integers(0, 4, size=(B, W, L), dtype=np.int64)
    beams[:, :, 0] = 1000 + np.arange(B)[:, None]
    return beams


def make_choice(tree: _core.Tree, seed: int = 1) -> np.ndarray:
    """[B, N] int64: the target's token at every node, from the same alphabet."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4, size=(tree.batch, tree.max_nodes), dtype=np.int64)


def _median_s(fn, number: int, repeat: int = 7) -> float:
    """Median seconds per call over `repeat` runs of `number` calls."""
    return float(np.median(timeit.repeat(fn, number=number, repeat=repeat))) / number


def time_core(B: int, W: int, L: int) -> dict:
    """Microseconds per step of the Rust path and of the reference, on the same inputs."""
    beams = make_beams(B, W, L)
    tree = _core.pack_beams(beams, VOCAB)
    choice = make_choice(tree)
    beams_t, choice_t = torch.from_numpy(beams), torch.from_numpy(choice)
    ref_tree = reference.pack_beams(beams_t)
    assert ref_tree.tokens.shape == tree.tokens.shape, "reference and Rust trees differ in N"

    def rust() -> None:
        _core.accept(_core.pack_beams(beams, VOCAB), beams, choice)

    def ref() -> None:
        reference.accept(reference.pack_beams(beams_t), beams_t, choice_t)

    rust_s = _median_s(rust, number=2000)
    ref_s = _median_s(ref, number=max(1, 20 // B))
    return {
        "B": B,
        "W": W,
        "L": L,
        "N": int(tree.max_nodes),
        "rust_us": rust_s * 1e6,
        "reference_us": ref_s * 1e6,
        "speedup": ref_s / rust_s,
    }


@torch.no_grad()
def time_step(model, drafter, prompts: list[list[int]], W: int, L: int, steps: int = 3) -> dict:
    """Per decode step of the engine at batch len(prompts): total ms and the Rust phases' ms."""
    from redrafter_rs.engine.scheduler import SpecConfig, SpeculativeGenerator

    config = SpecConfig(beam_width=W, beam_length=L, max_new_tokens=steps * L + 2)
    engine = SpeculativeGenerator(model, drafter, config)
    for i, p in enumerate(prompts):
        engine.add(i, p)
    engine.step()  # prefill + one step, not counted
    before = dict(engine.time_s)
    done = 0
    for _ in range(steps):
        if engine.num_active < len(prompts):
            break
        engine.step()
        done += 1
    phases = {k: v - before.get(k, 0.0) for k, v in engine.time_s.items() if k != "prefill"}
    total = sum(phases.values())
    rust = phases.get("pack", 0.0) + phases.get("accept", 0.0)
    return {"step_ms": 1e3 * total / max(done, 1), "engine_rust_ms": 1e3 * rust / max(done, 1)}


def _step_inputs(batch: int):
    from redrafter_rs.assets import load_drafter
    from redrafter_rs.data import chat_prompt, mt_bench_questions
    from redrafter_rs.models import load_model

    model, tok = load_model()
    drafter, _ = load_drafter(model)
    questions = mt_bench_questions()
    texts = [chat_prompt(tok, questions[i * 10]["turns"][0]) for i in range(batch)]
    return model, drafter, [tok(t).input_ids for t in texts]


def run(with_step: bool = True, sizes=SIZES) -> list[dict]:
    rows = [time_core(*s) for s in sizes]
    if with_step:
        model, drafter, prompts = _step_inputs(max(B for B, _, _ in sizes))
        for row in rows:
            row.update(time_step(model, drafter, prompts[: row["B"]], row["W"], row["L"]))
            row["rust_share"] = row["rust_us"] / 1e3 / row["step_ms"]
    return rows


def markdown(rows: list[dict]) -> str:
    head = (
        "| B | W | L | N | Rust µs/step | reference µs/step | Rust speedup | decode step ms "
        "| Rust share of step | in-engine pack+accept ms |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = [
        f"| {r['B']} | {r['W']} | {r['L']} | {r['N']} | {r['rust_us']:.1f} "
        f"| {r['reference_us']:.0f} | {r['speedup']:.0f}x | {r.get('step_ms', float('nan')):.0f} "
        f"| {100 * r.get('rust_share', float('nan')):.3f}% "
        f"| {r.get('engine_rust_ms', float('nan')):.3f} |"
        for r in rows
    ]
    return head + "\n".join(body) + "\n"


def add_parser(sub) -> None:
    p = sub.add_parser("bench-core", help="Rust pack/accept vs the pure-torch reference")
    p.add_argument("--no-step", dest="step", action="store_false", help="skip the model step")
    add_threads(p)
    p.add_argument("--out", default="bench-out", help="output directory")
    p.set_defaults(func=cmd_bench_core)


def cmd_bench_core(args: argparse.Namespace) -> int:
    """Rust pack_beams + accept vs bench/reference.py per step, and their share of a decode step."""
    apply_threads(args.threads)
    rows = run(with_step=args.step)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "core.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    table = markdown(rows)
    (out / "core.md").write_text(table, encoding="utf-8")
    print(table)
    ok = all(r["speedup"] >= 10 and r.get("rust_share", 0.0) <= 0.02 for r in rows)
    print("criteria (>= 10x faster, <= 2% of a step):", "met" if ok else "NOT met")
    return 0
