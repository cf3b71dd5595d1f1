"""`redrafter bench`: ReDrafter against plain greedy decoding and HF assisted generation, side by
side in one process on the same model, prompts and token budget (docs/design.md §12).

Methods (all greedy, batch 1):
    hf_greedy          `model.generate(do_sample=False)`: the baseline
    plain_loop         our engine with W = L = 1: plain decoding through our own loop, which
                       separates engine overhead from what speculation gains
    redrafter_WxL      ReDrafter with beam width W and beam length L, one per grid point
    redrafter_WxLnN    ReDrafter drafting a best-nodes tree of N tokens (the most probable
                       paths up to depth L - 1; `tree_grid`, e.g. --tree-grid 4x4n3,4x5n9)
    redrafter_auto     ReDrafter with the load-aware policy (`adaptive=True`,
                       engine/policy.py): (W, L) chosen per step from measured costs
                       and acceptance, up to the grid's largest W and L, plain decoding
                       included
    hf_prompt_lookup   `model.generate(prompt_lookup_num_tokens=...)`
    hf_assisted        `model.generate(assistant_model=...)`, only with `--assistant DIR`
    oracle_WxL         with `oracle`: ReDrafter whose beam 0 is the baseline's own output (other
                       beams random) at zero drafting cost, the ceiling at that (W, L) given
                       today's verification cost (its reference comes from an untimed greedy run)
With `fast` (the CPU fast path, engine/fastpath.py), every method also runs as `<name>+fast` on the
same model with redrafter-rs's linear kernels switched on; the baseline `hf_greedy` stays stock.
So `hf_greedy+fast` is the accelerated model's own `model.generate`, `plain_loop+fast` the fast
forward without speculation, and every method reports its speedup against both `hf_greedy` and
`plain_loop+fast` (speculation's own share). The bench then also measures the verification cost
curve c(N), stock and fast side by side, and the machine's bandwidth floor for the weights
(bench/cost.py), and the largest |Δlogit| between a plain step and the same token inside a tree.

Prompts run one after the other; for each prompt every method runs once, in an order rotated per
prompt, so machine drift hits all methods alike. A warm-up prompt runs first and is not counted.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from redrafter_rs._common import (
    cuda_sync,
    pad_id,
    parse_shapes,
    read_jsonl,
    verified_tokens,
)
from redrafter_rs._flags import add_drafter, add_max_new_tokens, add_model, add_threads
from redrafter_rs._validate import nonnegative_int, positive_int
from redrafter_rs.bench.oracle import OracleDrafter
from redrafter_rs.bench.report import markdown_table, summarize, write_reports
from redrafter_rs.drafters.draft_model import DRAFT_MODEL_HELP
from redrafter_rs.drafters.protocol import NoDrafter
from redrafter_rs.engine.policy import shape_name

DEFAULT_GRID = ((1, 3), (1, 4), (2, 4), (4, 4), (4, 5))  # small trees: see benchmarks/README.md
DEFAULT_RETRIEVAL_GRID = ((1, 8),)  # retrieval alone: one long candidate, like prompt lookup


@dataclass
class BenchConfig:
    model: str = "default"  # "default" (SmolLM2-135M-Instruct), "gemma-3-270m" or a model dir
    drafter: str | None = None  # drafter dir; None: the shipped one (default model only)
    prompts: str | None = None  # JSON-lines file (keys `prompt` or `turns`); None: MT-Bench
    num_prompts: int = 80  # spread evenly over the prompt set
    max_new_tokens: int = 128
    grid: tuple[tuple[int, int], ...] = DEFAULT_GRID  # ReDrafter (W, L) points
    retrieval: bool = True  # also retrieval_WxL (alone) and redrafter+retrieval_WxL (grid)
    retrieval_grid: tuple[tuple[int, int], ...] = DEFAULT_RETRIEVAL_GRID  # retrieval alone
    tree_grid: tuple[tuple[int, int, int], ...] = ()  # best-nodes trees (W, L, N)
    methods: tuple[str, ...] = ()  # fnmatch patterns of methods to run; () = all
    prompt_lookup_tokens: int = 10  # HF `prompt_lookup_num_tokens`
    assistant: str | None = None  # same-tokenizer draft model dir for HF assisted generation
    # draft-model mode (drafters/draft_model.py): DIR, early-exit:K or int8, each run over `grid`
    # as draftmodel-<label>_WxL
    draft_models: tuple[str, ...] = ()
    fast: bool = False  # also run every method on the CPU fast path (`+fast`), cost curve
    cost_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)  # N of the cost curve (with fast)
    oracle: bool = False  # also run oracle_WxL (perfect free drafter) for every grid point
    adaptive: bool = True  # also redrafter_auto (and redrafter+retrieval_auto with retrieval)
    threads: int | None = None  # torch CPU threads (None: torch's default)
    dtype: str = "float32"  # float32 | bfloat16
    device: str = "cpu"
    chat: bool = True  # MT-Bench / `turns` prompts through the chat template (if any)
    warmup: int = 1  # prompts run first and not counted
    out: str = "bench-out"

    def __post_init__(self) -> None:
        from redrafter_rs.errors import check

        check(self.num_prompts >= 1, f"num_prompts must be >= 1, got {self.num_prompts}")
        check(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        check(self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}")
        check(
            self.dtype in ("float32", "bfloat16"), f"dtype: float32 or bfloat16, not {self.dtype}"
        )


@dataclass
class Prompt:
    id: str
    category: str
    text: str  # final text given to the tokenizer


@dataclass
class Method:
    name: str
    run: Callable[[torch.Tensor], tuple[list[int], dict]]  # ids [1, T] -> (new tokens, info)
    fast: bool = False
    shape: tuple[int, int] | None = None  # (W, L) for engine methods
    oracle: OracleDrafter | None = None  # needs the prompt's greedy reference before it runs


@dataclass
class Setup:
    """What a bench runs on; `run_bench` loads it from the config unless given one."""

    model: nn.Module
    tokenizer: object
    drafter: nn.Module | None
    drafter_label: str
    assistant: nn.Module | None = None
    notes: list[str] = field(default_factory=list)
    draft_models: dict = field(default_factory=dict)  # label -> DraftModelDrafter


# ---- prompts ------------------------------------------------------------------------------
def load_prompts(config: BenchConfig, tokenizer) -> list[Prompt]:
    """The prompt set: MT-Bench first turns, or a JSON-lines file."""
    from redrafter_rs.data import chat_prompt, mt_bench_questions
    from redrafter_rs.errors import check

    if config.prompts is None:
        rows = list(enumerate(mt_bench_questions(), 1))
    else:
        rows = list(read_jsonl(config.prompts))
    prompts = []
    for i, (line, row) in enumerate(rows):
        if "turns" in row:
            text = row["turns"][0]
            text = chat_prompt(tokenizer, text) if config.chat else text
        else:
            check("prompt" in row, f"{config.prompts}:{line}: no 'prompt' or 'turns'")
            text = row["prompt"]
        qid = str(row.get("question_id", row.get("id", i)))
        prompts.append(Prompt(qid, str(row.get("category", "")), text))
    return prompts


def spread(items: list, n: int) -> list:
    """n items evenly spread over `items` (all of them if n >= len)."""
    if n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


# ---- loading ------------------------------------------------------------------------------
def load_setup(config: BenchConfig) -> Setup:
    from redrafter_rs.assets import load_drafter
    from redrafter_rs.models import load_causal_lm, load_model

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]
    model, tok = load_model(config.model, dtype=dtype, device=config.device)
    notes: list[str] = []
    drafter, label = load_drafter(model, config.drafter, model_name=config.model)
    if drafter is None:
        notes.append(f"no drafter for {config.model}: ReDrafter skipped (pass --drafter DIR)")
    assistant = None
    if config.assistant:
        assistant = load_causal_lm(config.assistant, dtype, config.device)
    setup = Setup(model, tok, drafter, label, assistant, notes)
    if config.draft_models:
        from redrafter_rs.drafters.draft_model import from_spec

        for spec in config.draft_models:  # before any `accelerate`: an int8 copy stays stock
            d, name = from_spec(spec, model, tok)
            setup.draft_models[name] = d
    return setup


# ---- methods ------------------------------------------------------------------------------
class _ForwardCounter:
    """Counts calls of a module's forward (target forward passes inside `model.generate`)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        self.calls += 1


def hf_runner(model: nn.Module, n: int, **kwargs) -> Callable:
    pad = pad_id(model)

    def run(ids: torch.Tensor) -> tuple[list[int], dict]:
        counter = _ForwardCounter(model)
        try:
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=n,
                pad_token_id=pad,
                **kwargs,
            )
        finally:
            counter.handle.remove()
        new = out[0, ids.shape[1] :].tolist()
        steps = max(counter.calls - 1, 0)  # the first call is the prefill
        return new, {"steps": steps, "verified_tokens": max(len(new) - 1, 0)}

    return run


def _engine_runner(
    model: nn.Module,
    drafter: nn.Module | None,
    n: int,
    W: int,
    L: int,
    retrieval=None,
    adaptive: bool = False,
    tree_nodes: int | None = None,
) -> Callable:
    """`rr.generate` at (W, L); `retrieval` (a RetrievalConfig) merges retrieval drafts;
    `adaptive` lets the policy pick the shape per step, up to (W, L); `tree_nodes` drafts a
    best-nodes tree."""
    from redrafter_rs.generate import generate

    def run(ids: torch.Tensor) -> tuple[list[int], dict]:
        out = generate(
            model, drafter, ids, max_new_tokens=n, beam_width=W, beam_length=L,
            retrieval=retrieval, adaptive=adaptive, tree_nodes=tree_nodes,
        )  # fmt: skip
        stats = out.stats
        hist = [0] * L
        for a in stats.accepted_per_step:
            hist[a] += 1
        info = {
            "steps": stats.steps,
            "verified_tokens": verified_tokens(sum(stats.accepted_per_step), stats.steps),
            "accepted_hist": hist,  # steps that accepted 0, 1, ..., L-1 draft tokens
            "shapes": dict(stats.shapes),  # "WxL" -> steps (several with adaptive)
            "phases_s": _phases(stats.time_s),
        }
        if out.sources:
            info["sources"] = {k: {"steps": v.steps, "matched": v.matched, "wins": v.wins}
                               for k, v in out.sources.items()}  # fmt: skip
        return out.sequences[0, ids.shape[1] :].tolist(), info

    return run


def _phases(t: dict[str, float]) -> dict[str, float]:
    """Engine phases -> the report's split (drafter / target / rust / cache / transfer;
    `other` later)."""
    return {
        "drafter": t.get("draft", 0.0),
        "target": t.get("target", 0.0) + t.get("prefill", 0.0),
        "rust": t.get("pack", 0.0) + t.get("accept", 0.0),
        "cache": t.get("cache", 0.0),
        "transfer": t.get("transfer", 0.0),
    }


def build_methods(config: BenchConfig, setup: Setup) -> tuple[list[Method], dict[str, str]]:
    """Methods to run (the baseline first) and the skipped ones with the reason."""
    model, n = setup.model, config.max_new_tokens
    methods = [
        Method("hf_greedy", hf_runner(model, n)),
        Method("plain_loop", _engine_runner(model, NoDrafter(), n, 1, 1), shape=(1, 1)),
    ]
    skipped: dict[str, str] = {}
    for W, L in config.grid:
        name = f"redrafter_{shape_name((W, L))}"
        if setup.drafter is None:
            skipped[name] = "no drafter for this model"
            continue
        methods.append(Method(name, _engine_runner(model, setup.drafter, n, W, L), shape=(W, L)))
    for W, L, N in config.tree_grid if setup.drafter is not None else ():
        run = _engine_runner(model, setup.drafter, n, W, L, tree_nodes=N)
        methods.append(Method(f"redrafter_{shape_name((W, L, N))}", run, shape=(W, L)))
    if setup.drafter is not None and config.adaptive:
        W, L = _grid_bound(config.grid)
        run = _engine_runner(model, setup.drafter, n, W, L, adaptive=True)
        methods.append(Method("redrafter_auto", run, shape=(W, L)))
    if config.retrieval:
        methods += _retrieval_methods(config, setup)
    for label, draft in setup.draft_models.items():
        for W, L in config.grid:
            run = _engine_runner(model, draft, n, W, L)
            methods.append(Method(f"draftmodel-{label}_{shape_name((W, L))}", run, shape=(W, L)))
    if config.oracle:
        oracle = OracleDrafter(vocab_size=model.get_input_embeddings().weight.shape[0])
        for W, L in config.grid:
            run = _engine_runner(model, oracle, n, W, L)
            methods.append(Method(f"oracle_{shape_name((W, L))}", run, shape=(W, L), oracle=oracle))
    lookup = hf_runner(model, n, prompt_lookup_num_tokens=config.prompt_lookup_tokens)
    methods.append(Method("hf_prompt_lookup", lookup))
    if setup.assistant is not None:
        methods.append(Method("hf_assisted", hf_runner(model, n, assistant_model=setup.assistant)))
    else:
        skipped["hf_assisted"] = (
            "no draft model with the target's tokenizer is available offline (pass --assistant DIR)"
        )
    if config.fast:
        methods += [_fast_variant(m) for m in methods]
    keep = [m for m in methods if m.name == "hf_greedy" or _selected(m.name, config.methods)]
    return keep, skipped


def _retrieval_methods(config: BenchConfig, setup: Setup) -> list[Method]:
    """retrieval_WxL (retrieval drafts alone, prompt + output so far) for `retrieval_grid`, and
    redrafter+retrieval_WxL (both sources in one tree, adaptive budget) for `grid`."""
    from redrafter_rs.drafters.retrieval import RetrievalConfig

    model, n = setup.model, config.max_new_tokens
    methods = [
        Method(
            f"retrieval_{shape_name((W, L))}",
            _engine_runner(model, None, n, W, L, RetrievalConfig()),
            shape=(W, L),
        )
        for W, L in config.retrieval_grid
    ]
    if setup.drafter is not None:
        for W, L in config.grid:
            run = _engine_runner(model, setup.drafter, n, W, L, RetrievalConfig())
            methods.append(Method(f"redrafter+retrieval_{shape_name((W, L))}", run, shape=(W, L)))
        for W, L, N in config.tree_grid:
            run = _engine_runner(model, setup.drafter, n, W, L, RetrievalConfig(), tree_nodes=N)
            methods.append(
                Method(f"redrafter+retrieval_{shape_name((W, L, N))}", run, shape=(W, L))
            )
        if config.adaptive:
            W, L = _grid_bound(config.grid)
            run = _engine_runner(model, setup.drafter, n, W, L, RetrievalConfig(), adaptive=True)
            methods.append(Method("redrafter+retrieval_auto", run, shape=(W, L)))
    return methods


def _grid_bound(grid: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The largest W and the largest L of the grid: the adaptive methods' upper bound."""
    return max(W for W, _ in grid), max(L for _, L in grid)


def _fast_variant(method: Method) -> Method:
    return Method(method.name + "+fast", method.run, True, method.shape, method.oracle)


def _selected(name: str, patterns: tuple[str, ...]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


# ---- running ------------------------------------------------------------------------------
def _run_one(method: Method, model: nn.Module, ids: torch.Tensor) -> tuple[list[int], dict]:
    from redrafter_rs.engine import fastpath

    if method.fast:
        fastpath.set_active(model, True)
    try:
        cuda_sync(ids.device)
        t = time.perf_counter()
        new, info = method.run(ids)
        cuda_sync(ids.device)
        info["time_s"] = time.perf_counter() - t
    finally:
        if method.fast:
            fastpath.set_active(model, False)
    return new, info


def _record(prompt: Prompt, index: int, method: Method, new, info, base) -> dict:
    info = dict(info)
    wall = info.pop("time_s")
    diff = (i for i, (a, b) in enumerate(zip(new, base, strict=False)) if a != b)
    first_diff = next(diff, min(len(new), len(base)))
    rec = {
        "prompt": index,
        "prompt_id": prompt.id,
        "category": prompt.category,
        "method": method.name,
        "new_tokens": len(new),
        "time_s": wall,
        "tokens_per_s": len(new) / wall if wall > 0 else 0.0,
        "equal": new == base,
        "first_diff": None if new == base else first_diff,  # first differing token
        **info,
    }
    if "phases_s" in rec:
        rec["phases_s"] = dict(rec["phases_s"])
        rec["phases_s"]["other"] = max(wall - sum(rec["phases_s"].values()), 0.0)
    return rec


def _order(methods: list[Method], i: int) -> list[Method]:
    """The methods rotated by i (the baseline runs first in the warm-up)."""
    k = i % len(methods)
    return methods[k:] + methods[:k]


def run_bench(
    config: BenchConfig, setup: Setup | None = None, log: Callable[[str], None] | None = None
) -> dict:
    """Run the bench; returns the report (see `summarize`) and writes nothing."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        setup = setup or load_setup(config)
        return _run(config, setup, log)
    finally:
        torch.set_num_threads(threads)


def _run(config: BenchConfig, setup: Setup, log: Callable[[str], None]) -> dict:
    from redrafter_rs.engine import fastpath

    model, tok = setup.model, setup.tokenizer
    prompts = spread(load_prompts(config, tok), config.num_prompts + config.warmup)
    warm, timed = prompts[: config.warmup], prompts[config.warmup :]
    methods, skipped = build_methods(config, setup)
    fl_info = _patch(model) if config.fast else None
    records: list[dict] = []
    try:
        with torch.no_grad():
            for i, prompt in enumerate(warm + timed):
                ids = tok(prompt.text, return_tensors="pt").input_ids.to(model.device)
                counted = i >= len(warm)
                _set_reference(methods, model, ids, config.max_new_tokens)
                outs = {m.name: _run_one(m, model, ids) for m in _order(methods, i)}
                base = outs["hf_greedy"][0]
                # +fast methods answer to the accelerated model's own greedy output (the same
                # forward); equality with the stock model is recorded too, as `equal_stock`
                fast_base = outs.get("hf_greedy+fast", (base,))[0]
                if counted:
                    for m in methods:
                        ref = fast_base if m.fast else base
                        rec = _record(prompt, i - len(warm), m, *outs[m.name], ref)
                        rec["equal_stock"] = outs[m.name][0] == base
                        records.append(rec)
                log(_progress(i, len(warm), len(timed), prompt, outs, ids.shape[1]))
        if fl_info is not None:
            fl_info["max_abs_logit_diff"] = _logit_diff(model, tok, timed[0].text)
            fl_info.update(_tree_vs_plain(model, tok, timed[0].text))
            if config.cost_sizes:
                log("measuring the verification cost curve c(N), stock and fast ...")
                fl_info.update(_forward_costs(model, config.cost_sizes))
    finally:
        if fl_info is not None:
            fastpath.unaccelerate(model)
    return summarize(config, setup, methods, skipped, records, fl_info)


def _set_reference(methods: list[Method], model: nn.Module, ids, n: int) -> None:
    """Give the oracle drafters this prompt's greedy output (an untimed run)."""
    oracles = {id(m.oracle): m.oracle for m in methods if m.oracle is not None}
    if not oracles:
        return
    reference, _ = hf_runner(model, n)(ids)
    for oracle in oracles.values():
        oracle.references = [ids[0].tolist() + list(reference)]


def _patch(model: nn.Module) -> dict:
    from redrafter_rs.engine import fastpath

    report = fastpath.accelerate(model)
    fastpath.set_active(model, False)
    return {"accelerated": asdict(report)}


@torch.no_grad()
def _logit_diff(model: nn.Module, tok, text: str, extra: int = 16) -> float:
    """max |logits(+fast) - logits| over a prompt plus `extra` tokens, in one forward."""
    from redrafter_rs.engine import fastpath

    ids = tok(text, return_tensors="pt").input_ids.to(model.device)
    cont = torch.randint(0, model.get_input_embeddings().weight.shape[0], (1, extra))
    ids = torch.cat([ids, cont.to(ids.device)], dim=1)
    ref = model(ids).logits
    fastpath.set_active(model, True)
    try:
        got = model(ids).logits
    finally:
        fastpath.set_active(model, False)
    return float((got - ref).abs().max())


@torch.no_grad()
def _tree_vs_plain(model: nn.Module, tok, text: str, extra: int = 16) -> dict:
    """Largest |Δlogit| between `extra` tokens decoded one plain step at a time and the same
    tokens verified in one tree forward (a chain under the 4D mask), stock and fast."""
    from redrafter_rs.bench.cost import chain_mask
    from redrafter_rs.engine import fastpath
    from redrafter_rs.engine.cache import crop
    from redrafter_rs.engine.target import Target

    target = Target(model)
    ids = tok(text, return_tensors="pt").input_ids
    T = ids.shape[1]
    gen = torch.Generator().manual_seed(0)
    cont = torch.randint(0, target.vocab_size, (1, extra), generator=gen)
    out = {}
    for name, active in (("stock", False), ("fast", True)):
        fastpath.set_active(model, active)
        try:
            cache = target.new_cache()
            target.forward(ids, cache, None, position_ids=torch.arange(T)[None])
            pos = T + torch.arange(extra)[None]
            mask = chain_mask(T, extra)
            tree = target.logits(target.forward(cont, cache, mask, position_ids=pos))
            crop(cache, T)
            steps = [
                target.forward(cont[:, i : i + 1], cache, None, position_ids=pos[:, i : i + 1])
                for i in range(extra)
            ]
            plain = target.logits(torch.cat(steps, dim=1))
        finally:
            fastpath.set_active(model, False)
        out[f"tree_vs_plain_max_abs_logit_diff_{name}"] = float((tree - plain).abs().max())
    return out


def _forward_costs(model: nn.Module, sizes: tuple[int, ...]) -> dict:
    """c(N) stock (HF's growing cache, torch's F.linear) and fast (the engine's slot cache and
    the kernels), interleaved, plus the bandwidth floor of the weights."""
    from transformers import DynamicCache

    from redrafter_rs.bench import cost
    from redrafter_rs.engine import fastpath
    from redrafter_rs.engine.cache import SlotCache

    arms = {
        "stock": (model, DynamicCache, lambda on: None),
        "fast": (model, SlotCache, lambda on: fastpath.set_active(model, on)),
    }
    curve = cost.cost_curve(arms, sizes)
    nbytes = cost.weight_bytes(model)
    gbs = cost.read_bandwidth_gbs()
    floor = nbytes / gbs / 1e6
    return {
        "cost_curve": curve,
        "weight_bytes": nbytes,
        "read_bandwidth_gbs": gbs,
        "floor_ms": floor,
        "plain_step_over_floor": {a: c["ms"][1] / floor for a, c in curve.items() if 1 in c["ms"]},
    }


def _progress(i: int, warm: int, timed: int, prompt: Prompt, outs: dict, T: int) -> str:
    tag = "warm-up" if i < warm else f"{i - warm + 1}/{timed}"
    base = outs["hf_greedy"]
    parts = [f"{name} {len(new) / info['time_s']:.1f}" for name, (new, info) in outs.items()]
    same = sum(new == base[0] for new, _ in outs.values())
    return (
        f"[{tag}] prompt {prompt.id} ({prompt.category}, {T} tokens): tok/s "
        + ", ".join(parts)
        + f"; equal {same}/{len(outs)}"
    )


# ---- summary ------------------------------------------------------------------------------
def _parse_shapes(text: str, size: int, flag: str, example: str) -> tuple:
    """Comma-separated shapes of `size` numbers (`_common.parse_shapes`), for argparse."""
    try:
        grid = parse_shapes(text)
    except ValueError:
        grid = ()
    if not grid or any(len(g) != size for g in grid):
        raise argparse.ArgumentTypeError(f"{flag}: expected e.g. {example}, got {text!r}")
    return grid


def parse_grid(text: str) -> tuple[tuple[int, int], ...]:
    """Parse a grid such as "1x4,4x4,8x5" into ((1, 4), (4, 4), (8, 5))."""
    return _parse_shapes(text, 2, "--grid", "1x4,4x4,8x5")


def parse_tree_grid(text: str) -> tuple[tuple[int, int, int], ...]:
    """Parse best-nodes trees such as "4x4n3,4x5n9" into ((4, 4, 3), (4, 5, 9))."""
    return _parse_shapes(text, 3, "--tree-grid", "4x4n3,4x5n9")


def add_parser(sub) -> None:
    """Register `redrafter bench` on the CLI's subparsers."""
    p = sub.add_parser("bench", help="ReDrafter vs model.generate vs prompt lookup (tokens/s, τ)")
    d = BenchConfig()
    add_model(p, d.model, "default | gemma-3-270m | model directory")
    add_drafter(p)
    p.add_argument("--prompts", default=None, help="JSON-lines file (keys prompt or turns)")
    p.add_argument("--num-prompts", type=positive_int, default=d.num_prompts)
    add_max_new_tokens(p, d.max_new_tokens)
    p.add_argument("--grid", type=parse_grid, default=d.grid, help="W x L points, e.g. 1x4,4x5")
    p.add_argument(
        "--retrieval-grid", type=parse_grid, default=d.retrieval_grid,
        help="W x L points of retrieval_WxL (retrieval drafts alone)",
    )  # fmt: skip
    p.add_argument(
        "--tree-grid", type=parse_tree_grid, default=d.tree_grid,
        help="best-nodes trees W x L n N (N drafted tokens), e.g. 4x4n3,4x5n9",
    )  # fmt: skip
    p.add_argument(
        "--no-retrieval", dest="retrieval", action="store_false",
        help="skip retrieval_WxL and redrafter+retrieval_WxL",
    )  # fmt: skip
    p.add_argument("--methods", default="", help="comma-separated fnmatch patterns to run")
    p.add_argument("--prompt-lookup-tokens", type=positive_int, default=d.prompt_lookup_tokens)
    p.add_argument("--assistant", default=None, help="same-tokenizer draft model directory")
    p.add_argument(
        "--draft-model", dest="draft_models", action="append", default=[], metavar="SPEC",
        help=DRAFT_MODEL_HELP + "; repeatable; runs draftmodel-<label>_WxL over --grid",
    )  # fmt: skip
    p.add_argument(
        "--fast", action="store_true",
        help="also run every method on the CPU fast path (+fast) and measure the cost curve",
    )  # fmt: skip
    p.add_argument("--oracle", action="store_true", help="also run a perfect free drafter")
    p.add_argument(
        "--no-adaptive", dest="adaptive", action="store_false",
        help="skip redrafter_auto and redrafter+retrieval_auto (the load-aware policy)",
    )  # fmt: skip
    add_threads(p)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=d.dtype)
    p.add_argument("--device", default=d.device, help="cpu | cuda")
    p.add_argument("--no-chat", dest="chat", action="store_false", help="skip the chat template")
    p.add_argument(
        "--warmup", type=nonnegative_int, default=d.warmup, help="warm-up prompts (not counted)"
    )
    p.add_argument("--out", default=d.out, help="output directory")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """ReDrafter vs model.generate vs prompt lookup on MT-Bench: JSON, Markdown, PNG."""
    config = BenchConfig(
        model=args.model,
        drafter=args.drafter,
        prompts=args.prompts,
        num_prompts=args.num_prompts,
        max_new_tokens=args.max_new_tokens,
        grid=args.grid,
        retrieval=args.retrieval,
        retrieval_grid=args.retrieval_grid,
        tree_grid=args.tree_grid,
        methods=tuple(p for p in args.methods.split(",") if p),
        prompt_lookup_tokens=args.prompt_lookup_tokens,
        assistant=args.assistant,
        draft_models=tuple(args.draft_models),
        fast=args.fast,
        oracle=args.oracle,
        adaptive=args.adaptive,
        threads=args.threads,
        dtype=args.dtype,
        device=args.device,
        chat=args.chat,
        warmup=args.warmup,
        out=args.out,
    )
    report = run_bench(config)
    paths = write_reports(report, config.out)
    print(markdown_table(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
