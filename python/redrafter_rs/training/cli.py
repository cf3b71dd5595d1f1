"""`redrafter train`: build (or resume) teacher caches, then distil (or resume) a drafter.

    redrafter train --instructions 6000 --docs /usr/share/doc/python3.11/html/_sources \\
        --out runs/smollm2 --draft-vocab 4096 --exit-dim 576 --steps 3000 --resume

Teacher caches live under `$REDRAFTER_CACHE/train/<model>/` (override with --cache); they are
resumable and shared between runs with the same data settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from redrafter_rs._flags import add_max_new_tokens, add_model, add_threads, apply_threads
from redrafter_rs._validate import arg_int, nonnegative_int, positive_float, positive_int
from redrafter_rs.errors import check

_TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".jsonl"}
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def add_train_parser(sub) -> None:
    """Register the `train` subcommand on an argparse subparsers object."""
    p = sub.add_parser(
        "train", help="distil a drafter from a target model (knowledge distillation)"
    )
    data = p.add_argument_group("data")
    add_model(data, None, "HF model directory (default: SmolLM2-135M)")
    data.add_argument(
        "--instructions", type=nonnegative_int, default=0, help="built-in prompts to answer"
    )
    data.add_argument("--docs", default=None, help="doc tree whose passages become prompts too")
    data.add_argument(
        "--sampled-prompts",
        type=int,
        default=0,
        metavar="N",
        help="N user prompts written by the target itself (sampled from its chat template's "
        "user header), then answered",
    )
    data.add_argument(
        "--sampled-openings",
        action="store_true",
        help='start each sampled prompt with a built-in opening ("Write a Python function", '
        '"Solve", ...) for a spread of tasks',
    )
    data.add_argument("--data", nargs="*", default=[], help="text files, directories, JSONL")
    data.add_argument("--self-distill", action="store_true", help="answer --data JSONL prompts")
    data.add_argument("--cache", default=None, help="teacher cache root directory")
    add_max_new_tokens(data, 128, "answer length")
    data.add_argument(
        "--gen-batch", type=positive_int, default=48, help="prompts answered per batch"
    )
    data.add_argument(
        "--top-k", type=positive_int, default=16, help="teacher logits kept per position"
    )
    data.add_argument(
        "--window", type=positive_int, default=256, help="teacher-forcing window (tokens)"
    )
    data.add_argument("--gen-only", action="store_true", help="build the caches, do not train")
    data.add_argument(
        "--gen-budget", type=positive_float, default=None, help="minutes of generation"
    )
    data.add_argument(
        "--gen-shard",
        type=_shard,
        default=None,
        metavar="K/N",
        help="answer only prompts K, K+N, ... of --instructions (and write every N-th of "
        "--sampled-prompts; one process per core; implies --gen-only); train on the shards "
        "with --caches",
    )
    data.add_argument("--caches", nargs="*", default=[], help="existing teacher caches to use")
    m = p.add_argument_group("drafter")
    m.add_argument(
        "--exit-dim", type=positive_int, default=None, help="residual width (default 2H)"
    )
    m.add_argument(
        "--layers",
        type=int,
        default=1,
        help="residual blocks; with --init, more than the init drafter has adds identity blocks",
    )
    m.add_argument("--no-rnn", dest="rnn", action="store_false")
    m.add_argument(
        "--draft-vocab", type=int, default=8192,
        help="0: the full vocabulary; with --init, a size above the init drafter's grows its head",
    )  # fmt: skip
    m.add_argument(
        "--beam-length", "-L", type=positive_int, default=5, help="L (includes the root)"
    )
    m.add_argument(
        "--init",
        default=None,
        metavar="DIR",
        help="fine-tune this drafter (a from_pretrained directory; 'shipped': the default "
        "model's) instead of starting from random weights; its architecture is kept",
    )
    t = p.add_argument_group("training")
    t.add_argument("--out", default=None, help="run directory (checkpoint.pt, drafter/)")
    t.add_argument("--steps", type=positive_int, default=1000)
    t.add_argument("--batch-size", type=positive_int, default=256)
    t.add_argument("--lr", type=positive_float, default=2e-3)
    t.add_argument(
        "--hard-weight",
        type=float,
        default=0.0,
        help="add this x cross-entropy on the target's top-1 token to the KL loss",
    )
    t.add_argument("--warmup", type=nonnegative_int, default=50)
    t.add_argument("--seed", type=arg_int(), default=0)
    t.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    t.add_argument("--ckpt-every", type=positive_int, default=200)
    t.add_argument(
        "--eval-every", type=nonnegative_int, default=0, help="τ on held-out prompts every N"
    )
    t.add_argument("--eval-prompts", type=positive_int, default=4)
    t.add_argument("--log-every", type=positive_int, default=10)
    t.add_argument(
        "--time-budget", type=positive_float, default=None, help="minutes; then checkpoint"
    )
    t.add_argument(
        "--stop-after", type=positive_int, default=None, help="end this run at this step"
    )
    add_threads(t)
    t.add_argument("--export", default=None, help="write the trained drafter here")
    t.add_argument("--export-dtype", choices=sorted(_DTYPES), default="float16")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Build or resume the teacher caches, train, optionally export."""
    from redrafter_rs.training.train import TrainConfig, export_drafter, train_drafter

    apply_threads(args.threads)
    model, tok, name = _load_target(args.model)
    root = Path(args.cache) if args.cache else _default_cache_root(name)
    caches = build_caches(model, tok, root, args) + _existing_caches(args.caches)
    check(
        caches,
        "no training data: pass --instructions N, --sampled-prompts N, --data PATH ... "
        "or --caches DIR ...",
    )
    if args.gen_only or args.gen_shard:
        return 0
    check(args.out, "--out DIR is needed to train (or pass --gen-only to only build caches)")
    config = TrainConfig(
        exit_dim=args.exit_dim,
        num_layers=args.layers,
        rnn=args.rnn,
        draft_vocab_size=args.draft_vocab or None,
        beam_length=args.beam_length,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        hard_weight=args.hard_weight,
        warmup_steps=args.warmup,
        seed=args.seed,
        ckpt_every=args.ckpt_every,
        eval_every=args.eval_every,
        log_every=args.log_every,
        init_from=_init_dir(args.init),
    )
    result = train_drafter(
        model,
        caches,
        args.out,
        config,
        resume=args.resume,
        eval_prompts=_eval_prompts(tok, args.eval_prompts, args.seed) if args.eval_every else None,
        stop_after=args.stop_after,
        time_budget_s=args.time_budget * 60 if args.time_budget else None,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    print(json.dumps({"step": result.step, **result.metrics}))
    if args.export and result.step >= config.steps:
        export_drafter(args.out, args.export, dtype=_DTYPES[args.export_dtype])
        print(f"exported the drafter to {args.export}", file=sys.stderr)
    return 130 if result.interrupted else 0


def _load_target(name: str | None):
    """(model, tokenizer, cache name) of --model (default: the default model), in float32."""
    from redrafter_rs.models import DEFAULT_MODEL, load_model

    model, tok = load_model(name or "default")
    return model, tok, DEFAULT_MODEL if name is None else Path(name).name


def _init_dir(init: str | None) -> str | None:
    if init == "shipped":
        from redrafter_rs.assets import DEFAULT_DRAFTER

        return str(DEFAULT_DRAFTER)
    return init


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gen-shard wants K/N, got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"--gen-shard {text}: need 0 <= K < N")
    return k, n


def _existing_caches(paths: list[str]) -> list[Path]:
    from redrafter_rs.training.teacher import read_manifest

    for p in map(Path, paths):
        check(read_manifest(p) is not None, f"--caches: {p} is not a teacher cache (no manifest)")
    return [Path(p) for p in paths]


def _default_cache_root(name: str) -> Path:
    from redrafter_rs.models import cache_dir

    return cache_dir() / "train" / name


def _eval_prompts(tok, n: int, seed: int) -> list[torch.Tensor]:
    from redrafter_rs.training.selfdistill import encode_prompts, instruction_prompts

    held_out = instruction_prompts(n, seed=10_000 + seed)  # a seed no training set uses
    return [torch.tensor([ids]) for ids in encode_prompts(tok, held_out)]


# ---- teacher caches ---------------------------------------------------------------------------
def build_caches(model, tok, root: Path, args: argparse.Namespace) -> list[Path]:
    """Produce (or finish) every cache the arguments ask for; returns their directories."""
    from redrafter_rs._common import eos_ids
    from redrafter_rs.training.selfdistill import builtin_prompts, encode_prompts, generate_cache

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    caches = []
    eos = eos_ids(model, tokenizer=tok)
    if args.instructions:
        cfg = _gen_config(
            args,
            num_prompts=args.instructions,
            seed=args.seed,
            docs=args.docs,
            time_budget_s=_gen_budget_s(args),
        )
        prompts = builtin_prompts(cfg)
        if args.gen_shard:
            k, n = args.gen_shard
            prompts = prompts[k::n]
        suffix = ("-docs" if cfg.docs else "") + _shard_suffix(args)
        directory = root / f"instructions-n{cfg.num_prompts}-seed{cfg.seed}{suffix}"
        generate_cache(model, encode_prompts(tok, prompts), directory, cfg, eos, log)
        caches.append(directory)
    if args.sampled_prompts:
        caches.append(_sampled_cache(model, tok, root, args, eos, log))
    if args.data:
        files = _expand(args.data)
        key = _digest([str(f) for f in files] + [args.window, args.self_distill, args.top_k])
        if args.self_distill:
            cfg = _gen_config(args)
            texts = _jsonl_prompts(tok, files)
            prompts = [tok(t, add_special_tokens=False).input_ids for t in texts]
            directory = root / f"selfdistill-{key}"
            generate_cache(model, prompts, directory, cfg, eos, log)
        else:
            directory = root / f"text-{key}"
            teacher_force_cache(model, tok, files, directory, args.window, args.top_k, log)
        caches.append(directory)
    return caches


def _sampled_cache(model, tok, root: Path, args, eos: set[int], log) -> Path:
    """Prompts the target writes itself (kept in `prompts.json`, so a resumed run answers the
    same ones), answered greedily. A shard K/N writes its share with its own seed."""
    from redrafter_rs._io import atomic_write_json
    from redrafter_rs.training.selfdistill import (
        builtin_openings,
        encode_prompts,
        generate_cache,
        sampled_prompts,
    )

    n, seed = args.sampled_prompts, args.seed
    if args.gen_shard:
        k, shards = args.gen_shard
        n, seed = len(range(k, n, shards)), int(_digest([seed, k, shards]), 16)
    openings = builtin_openings() if args.sampled_openings else None
    kind = "sampled-open" if openings else "sampled"
    directory = root / f"{kind}-n{args.sampled_prompts}-seed{args.seed}{_shard_suffix(args)}"
    path = directory / "prompts.json"
    if path.is_file():
        prompts = json.loads(path.read_text(encoding="utf-8"))
    else:
        prompts = sampled_prompts(
            model, tok, n, seed, batch_size=args.gen_batch, openings=openings, log=log
        )
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, prompts)
    cfg = _gen_config(args, num_prompts=len(prompts), seed=seed, time_budget_s=_gen_budget_s(args))
    generate_cache(model, encode_prompts(tok, prompts), directory, cfg, eos, log)
    return directory


def _gen_config(args, **fields):
    """The generation settings every self-distillation cache shares, plus `fields`."""
    from redrafter_rs.training.selfdistill import SelfDistillConfig

    return SelfDistillConfig(
        max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch, top_k=args.top_k, **fields
    )


def _gen_budget_s(args) -> float | None:
    return args.gen_budget * 60 if args.gen_budget else None


def _shard_suffix(args) -> str:
    """Cache-directory suffix of a `--gen-shard K/N` run ("" when not sharded)."""
    if not args.gen_shard:
        return ""
    k, n = args.gen_shard
    return f"-shard{k}of{n}"


def _expand(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        check(p.exists(), f"--data: {p} does not exist")
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and _is_text(f))
        else:
            files.append(p)
    return files


def _is_text(path: Path) -> bool:
    return path.suffix in _TEXT_SUFFIXES or path.name.endswith(".rst.txt")


def _digest(items: list) -> str:
    return hashlib.sha1(json.dumps(items).encode()).hexdigest()[:10]


def read_texts(tok, files: list[Path]):
    """Training texts: plain files as they are; JSONL chat turns through the chat template."""
    from redrafter_rs._common import read_jsonl

    for path in files:
        if path.suffix != ".jsonl":
            yield path.read_text(encoding="utf-8", errors="ignore")
            continue
        for _, rec in read_jsonl(path):
            if "messages" in rec and getattr(tok, "chat_template", None):
                yield tok.apply_chat_template(rec["messages"], tokenize=False)
            elif "prompt" in rec:
                from redrafter_rs.data import chat_prompt

                yield chat_prompt(tok, rec["prompt"]) + rec.get("response", "")
            elif "text" in rec:
                yield rec["text"]


def _jsonl_prompts(tok, files: list[Path]) -> list[str]:
    """Self-distillation prompts: JSONL user turns (chat template, generation prompt on)."""
    from redrafter_rs._common import read_jsonl
    from redrafter_rs.data import chat_prompt

    prompts = []
    for path in (f for f in files if f.suffix == ".jsonl"):
        for _, rec in read_jsonl(path):
            if "messages" in rec:
                msgs = rec["messages"]
                last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
                prompts.append(
                    tok.apply_chat_template(
                        msgs[: last_user + 1], tokenize=False, add_generation_prompt=True
                    )
                )
            elif "prompt" in rec:
                prompts.append(chat_prompt(tok, rec["prompt"]))
    check(prompts, "--self-distill needs JSONL records with 'messages' or 'prompt'")
    return prompts


def teacher_force_cache(model, tok, files, directory: Path, window: int, top_k: int, log) -> None:
    """Teacher-forced outputs over text windows (resumable by window count)."""
    from redrafter_rs.training.teacher import (
        ChunkWriter,
        check_manifest_target,
        new_manifest,
        read_manifest,
        teacher_force,
        text_windows,
    )

    directory.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(directory)
    if manifest is None:
        manifest = new_manifest(model, "text", top_k, {"files": len(files), "window": window})
    else:
        check_manifest_target(manifest, model, directory)
    tokens = (tok(t, add_special_tokens=False).input_ids for t in read_texts(tok, files))
    windows = list(text_windows(tokens, window))
    writer = ChunkWriter(directory, manifest, chunk_positions=20000)
    batch = 8
    for lo in range(manifest.items_done, len(windows), batch):
        chunk = windows[lo : lo + batch]
        writer.add(teacher_force(model, chunk, top_k), len(chunk))
        log(f"text windows {min(lo + batch, len(windows))}/{len(windows)}")
    writer.flush()
