"""`redrafter` command line: demo and generate."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from redrafter_rs._flags import (
    add_draft_model,
    add_drafter,
    add_max_new_tokens,
    add_threads,
    apply_threads,
)
from redrafter_rs._validate import nonnegative_int, positive_int
from redrafter_rs.errors import RedrafterError


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    add_max_new_tokens(p, 128)
    # The best fixed shape depends on the CPU (benchmarks/README.md): 4x4 + retrieval was best on
    # an AMD EPYC (2026-11-23: 1.14x), 1x3 + retrieval on an Intel Xeon with AVX-512 (2026-12-02:
    # 1.36x, 4x4 1.05x). So by default the policy picks per step, up to -W x -L (adaptive: 1.31x
    # there).
    p.add_argument("--beam-width", "-W", type=positive_int, default=4)
    p.add_argument("--beam-length", "-L", type=positive_int, default=4)
    add_drafter(p)
    add_draft_model(p)
    add_threads(p)
    p.add_argument(
        "--no-retrieval", dest="retrieval", action="store_false",
        help="RNN drafts only (default: also draft from the prompt and the text so far with a "
        "suffix automaton, merged into the same tree)",
    )  # fmt: skip
    p.add_argument(
        "--adaptive", action=argparse.BooleanOptionalAction, default=True,
        help="pick (W, L) per step from measured costs and acceptance, up to -W and -L, plain "
        "decoding included (engine/policy.py; the default); --no-adaptive: always W x L",
    )  # fmt: skip
    p.add_argument(
        "--tree-nodes", type=positive_int, default=None, metavar="N",
        help="draft a best-nodes tree of N tokens per step (the most probable paths, up to depth "
        "L-1, W children of the W best nodes per depth) instead of W beams; a fixed tree, so "
        "it implies --no-adaptive",
    )  # fmt: skip
    p.add_argument(
        "--fast", action=argparse.BooleanOptionalAction, default=True,
        help="on CPU, run the target's linear layers through redrafter-rs's kernels "
        "(rr.accelerate; logits differ from stock torch by ~1e-5, outputs are compared); "
        "--no-fast: stock torch",
    )  # fmt: skip


def _spec_kwargs(args: argparse.Namespace, max_new_tokens: int | None = None) -> dict:
    """rr.generate keyword arguments from the shared flags."""
    return {
        "max_new_tokens": max_new_tokens or args.max_new_tokens,
        "beam_width": args.beam_width,
        "beam_length": args.beam_length,
        "retrieval": True if args.retrieval else None,
        "adaptive": args.adaptive and args.tree_nodes is None,
        "tree_nodes": args.tree_nodes,
    }


def _load(args: argparse.Namespace):
    from redrafter_rs.assets import load_drafter
    from redrafter_rs.models import load_model

    apply_threads(args.threads)
    model, tok = load_model()
    args.fast = args.fast and model.device.type == "cpu"
    if args.draft_model is not None:
        from redrafter_rs.drafters.draft_model import from_spec

        if args.drafter is not None:
            raise RedrafterError("pass --drafter or --draft-model, not both")
        drafter, label = from_spec(args.draft_model, model, tok)
        args.drafter_label = f"draft model {label}"
        return model, tok, drafter
    drafter, args.drafter_label = load_drafter(model, args.drafter)
    return model, tok, drafter


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def cmd_demo(args: argparse.Namespace) -> int:
    """Default model + drafter on one MT-Bench question: ReDrafter vs plain greedy."""
    import redrafter_rs as rr
    from redrafter_rs.data import chat_prompt, mt_bench_questions

    model, tok, drafter = _load(args)
    question = mt_bench_questions()[args.question]
    text = question["turns"][0]
    ids = tok(chat_prompt(tok, text), return_tensors="pt").input_ids
    n = args.max_new_tokens
    greedy = lambda: model.generate(ids, do_sample=False, max_new_tokens=n)  # noqa: E731
    # warm-up (excluded from timing; with --adaptive it also calibrates the policy's costs,
    # a one-off per process that every later call reuses, reported below)
    model.generate(ids, do_sample=False, max_new_tokens=4)
    stock, t_stock = _timed(greedy)
    fast = t_fast = None
    if args.fast:
        report = rr.accelerate(model)
        model.generate(ids, do_sample=False, max_new_tokens=4)
        fast, t_fast = _timed(greedy)
    _, t_warm = _timed(lambda: rr.generate(model, drafter, ids, **_spec_kwargs(args, 4)))
    kwargs = _spec_kwargs(args)
    spec, t_spec = _timed(lambda: rr.generate(model, drafter, ids, **kwargs))
    reference = fast if args.fast else stock  # the same forward, without speculation
    same = torch.equal(reference, spec.sequences)
    print(f"MT-Bench question {question['question_id']} ({question['category']}): {text}\n")
    print("--- ReDrafter output ---")
    print(tok.decode(spec.sequences[0, ids.shape[1] :], skip_special_tokens=True))
    print("\n--- plain greedy (model.generate) output ---")
    print(tok.decode(reference[0, ids.shape[1] :], skip_special_tokens=True))
    print()
    from redrafter_rs.drafters.draft_model import DraftModelDrafter

    weights = drafter.model if isinstance(drafter, DraftModelDrafter) else drafter
    params = sum(p.numel() for p in weights.parameters())
    print(
        f"drafter: {args.drafter_label} ({params / 1e6:.1f}M params), "
        + ("adaptive up to " if kwargs["adaptive"] else "")
        + f"W={args.beam_width}, L={args.beam_length}"
        + (f", best-nodes tree of {args.tree_nodes}" if args.tree_nodes else "")
        + (", + retrieval drafts" if args.retrieval else "")
    )
    if args.fast:
        print(
            f"fast path: {report.layers} linear layers on redrafter-rs's {report.kernel} kernel "
            f"({report.isa}, {report.threads} threads); --no-fast runs stock torch"
        )

    def rate(label: str, out: torch.Tensor, seconds: float) -> float:
        new = out.shape[1] - ids.shape[1]
        print(f"{label}: {new / seconds:7.1f} tokens/s ({new} tokens, {seconds:.2f} s)")
        return new / seconds

    r_stock = rate("model.generate (stock)      ", stock, t_stock)
    r_fast = rate("model.generate (accelerated)", fast, t_fast) if args.fast else None
    r_spec = rate("ReDrafter                   ", spec.sequences, t_spec)
    print(f"speedup vs stock model.generate       : {r_spec / r_stock:.2f}x")
    if args.fast:
        share = "(speculation's own share)"
        print(f"speedup vs accelerated model.generate : {r_spec / r_fast:.2f}x {share}")
    print(
        f"tau          : {spec.stats.tau:.2f} tokens per verification step "
        f"(acceptance per depth: {[round(a, 2) for a in spec.stats.acceptance_per_depth]})"
    )
    if kwargs["adaptive"]:
        shapes = sorted(spec.stats.shapes.items(), key=lambda kv: -kv[1])
        print("shapes       : " + ", ".join(f"{k} {v} steps" for k, v in shapes))
        print(f"calibration  : {t_warm:.1f} s once per process (in the warm-up, not timed)")
    print(f"identical    : {same} (ReDrafter vs model.generate on the same forward)")
    if args.fast:
        print(
            f"same as stock: {torch.equal(stock, spec.sequences)} (stock torch's logits differ "
            "from the kernels' in the last bits, so a near-tie may flip; not a promise)"
        )
    return 0 if same else 1


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate for a prompt with the default model and drafter."""
    import redrafter_rs as rr
    from redrafter_rs.data import chat_prompt

    model, tok, drafter = _load(args)
    if args.fast:
        rr.accelerate(model)
    text = chat_prompt(tok, args.prompt) if args.chat else args.prompt
    ids = tok(text, return_tensors="pt").input_ids
    out = rr.generate(model, drafter, ids, **_spec_kwargs(args))
    print(tok.decode(out.sequences[0, ids.shape[1] :], skip_special_tokens=True))
    print(f"[tau {out.stats.tau:.2f}, {out.stats.steps} steps]", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="redrafter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help=cmd_demo.__doc__)
    _add_spec_args(demo)
    demo.add_argument(
        "--question", type=nonnegative_int, default=0, help="MT-Bench question index (0-79)"
    )
    demo.set_defaults(func=cmd_demo)
    gen = sub.add_parser("generate", help=cmd_generate.__doc__)
    _add_spec_args(gen)
    gen.add_argument("prompt")
    gen.add_argument("--no-chat", dest="chat", action="store_false", help="skip the chat template")
    gen.set_defaults(func=cmd_generate)
    from redrafter_rs.training.cli import add_train_parser

    add_train_parser(sub)
    from redrafter_rs.bench import core as bench_core
    from redrafter_rs.bench import runner as bench

    bench.add_parser(sub)
    bench_core.add_parser(sub)
    from redrafter_rs.drafters.datastore import add_datastore_parser

    add_datastore_parser(sub)
    from redrafter_rs.serving import cli as serving

    serving.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RedrafterError as e:
        print(f"redrafter: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
