"""Self-distillation data: diverse instruction prompts, answered greedily by the target.

The prompts are built offline from templates in the eight MT-Bench category *styles* (writing,
roleplay, reasoning, math, coding, extraction, stem, humanities) filled with topics written for
this repository (`train_data/instructions.json`), optionally plus "summarize / explain" requests
over passages of a documentation tree (e.g. Debian's python3.11-doc). `sampled_prompts` has the
target write user prompts itself (its chat template's pre-query prefix, sampled). MT-Bench
questions are never used: they are the benchmark.

`generate_cache` answers the prompts in left-padded batches with the target's own greedy decode
and records, at every answer position, the teacher outputs of `training/teacher.py` (the hidden
state and top-k logits come for free from the decode step, so no second teacher pass is needed).
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from redrafter_rs._common import eos_ids, pad_id
from redrafter_rs.engine.target import Target, left_pad
from redrafter_rs.errors import check
from redrafter_rs.training.teacher import (
    ChunkWriter,
    SequenceRecord,
    check_manifest_target,
    new_manifest,
    read_manifest,
)

INSTRUCTIONS = Path(__file__).parent.parent / "train_data" / "instructions.json"
CATEGORIES = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
)
_DOC_TEMPLATES = (
    "Summarize the following passage from the Python documentation in plain English: {passage}",
    "Explain the following text to a beginner programmer: {passage}",
    "List the key points of this passage as bullet points: {passage}",
    "Based on this documentation excerpt, write a short example showing the idea: {passage}",
)


# ---- prompts ----------------------------------------------------------------------------------
def _builtin_spec() -> dict:
    """`train_data/instructions.json`: templates, topics, styles and openings by category."""
    return json.loads(INSTRUCTIONS.read_text(encoding="utf-8"))


def _numbers(rng: random.Random) -> dict[str, int]:
    a = rng.randint(2, 12)
    step = rng.randint(2, 9)
    return {
        "a": a,
        "b": rng.randint(2, 15),
        "c": rng.randint(10, 60),
        "a2": a + step,
        "a3": a + 2 * step,
        "a4": a + 3 * step,
        "big": rng.randint(60, 999),
    }


def _fill(template: str, entry: dict, spec: dict, rng: random.Random) -> str:
    names = rng.sample(spec["names"], 3)
    fields = {
        "topic": rng.choice(entry["topics"]) if entry.get("topics") else "",
        "passage": rng.choice(entry["passages"]) if entry.get("passages") else "",
        "name": names[0],
        "name2": names[1],
        "name3": names[2],
        "plural": rng.choice(spec["plurals"]),
        **_numbers(rng),
    }
    return template.format(**fields)


def instruction_prompts(n: int, seed: int = 0, passages: list[str] | None = None) -> list[str]:
    """Up to `n` distinct instructions, categories interleaved so that any prefix is balanced.

    A category whose combinations run out (many repeats in a row) drops out of the rotation.
    """
    spec = _builtin_spec()
    rng = random.Random(seed)
    kinds = list(CATEGORIES) + (["docs"] if passages else [])
    seen: set[str] = set()
    out: list[str] = []
    turn = 0
    while len(out) < n and kinds:
        kind = kinds[turn % len(kinds)]
        for _ in range(_MAX_REPEATS):
            prompt = _one_prompt(kind, spec, rng, passages)
            if prompt not in seen:
                seen.add(prompt)
                out.append(prompt)
                turn += 1
                break
        else:
            kinds.remove(kind)
    return out


_MAX_REPEATS = 200


def _one_prompt(kind: str, spec: dict, rng: random.Random, passages: list[str] | None) -> str:
    if kind == "docs":
        prompt = rng.choice(_DOC_TEMPLATES).format(passage=rng.choice(passages))
    else:
        entry = spec[kind]
        prompt = _fill(rng.choice(entry["templates"]), entry, spec, rng)
    return prompt + rng.choice(spec["styles"])


_RST_ROLE = re.compile(r":[\w:-]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LITERAL = re.compile(r"``([^`]*)``")
_RST_SKIP = ("..", ">>>", "|", "=", "-", "*", "+")  # directives, code, tables, headings, lists


def doc_passages(root: str | Path, min_chars: int = 200, max_chars: int = 700) -> list[str]:
    """Prose paragraphs of an .rst/.txt documentation tree, with inline markup removed."""
    passages = []
    for path in sorted(Path(root).rglob("*.txt")) + sorted(Path(root).rglob("*.rst")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        for para in re.split(r"\n\s*\n", text):
            lines = [ln.strip() for ln in para.splitlines()]
            if not lines or any(ln.startswith(_RST_SKIP) for ln in lines):
                continue
            clean = _RST_LITERAL.sub(r"'\1'", _RST_ROLE.sub(r"\1", " ".join(lines)))
            if min_chars <= len(clean) <= max_chars and clean[-1] in ".:)":
                passages.append(clean)
    return passages


# ---- prompts written by the target itself ------------------------------------------------------
def pre_query_prefix(tokenizer) -> str:
    """The chat template's text before a user message's content (system turn + user header)."""
    check(
        getattr(tokenizer, "chat_template", None),
        "sampled prompts need a tokenizer with a chat template (an instruction-tuned target)",
    )
    marker = "\x00redrafter-user-message\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False)
    check(marker in text, "the chat template does not render the user's message verbatim")
    return text[: text.index(marker)]


@torch.no_grad()
def sampled_prompts(
    model: nn.Module,
    tokenizer,
    n: int,
    seed: int = 0,
    batch_size: int = 48,
    max_new_tokens: int = 96,
    min_chars: int = 16,
    openings: Sequence[str] | None = None,
    log=print,
) -> list[str]:
    """Up to `n` distinct user prompts written by the target itself.

    The instruction-tuned target continues only its chat template's pre-query prefix (the
    "Magpie" recipe, Xu et al. 2024), sampled at temperature 1 (top-p 0.98), so it writes the
    kind of requests it was tuned on: far more varied than templates. Kept: complete turns
    (ended by an end-of-sequence token) of at least `min_chars` characters, each text once.

    With `openings`, each sample starts from an opening drawn at random ("Write a Python",
    "Solve", ...) that the target completes: left alone, a small target mostly writes one or two
    kinds of request ("Can you help me ...", "I'm ..."); openings spread them over tasks.
    """
    prefix = tokenizer(pre_query_prefix(tokenizer), add_special_tokens=False).input_ids
    eos = eos_ids(model, tokenizer=tokenizer)
    pad = pad_id(model, eos=eos)
    device = next(model.parameters()).device
    pick = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    rounds = 3 * math.ceil(n / batch_size) + 1  # give up if most samples are rejected
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for r in range(rounds):
            if len(out) >= n:
                break
            starts = [pick.choice(openings) if openings else "" for _ in range(batch_size)]
            ids, mask = _opened_batch(tokenizer, prefix, starts, pad)  # [B, P]
            rows = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=True,
                temperature=1.0,
                top_p=0.98,
                top_k=0,
                max_new_tokens=max_new_tokens,
                eos_token_id=sorted(eos),
                pad_token_id=pad,
            )[:, ids.shape[1] :].tolist()
            for text in _complete_turns(rows, starts, eos, tokenizer, min_chars):
                if text.lower() not in seen and len(out) < n:
                    seen.add(text.lower())
                    out.append(text)
            if log:
                log(f"sampled prompts {len(out)}/{n} (round {r + 1})")
    check(out, f"the target wrote no complete user prompt in {rounds} batches of {batch_size}")
    return out


def _opened_batch(tokenizer, prefix: list[int], starts: list[str], pad_id: int):
    """The pre-query prefix followed by each row's opening, left-padded."""
    rows = [prefix + tokenizer(s, add_special_tokens=False).input_ids for s in starts]
    return left_pad(rows, pad_id)


def _complete_turns(rows: list[list[int]], starts: list[str], eos: set[int], tokenizer, min_chars):
    for row, start in zip(rows, starts, strict=True):
        end = next((j for j, t in enumerate(row) if t in eos), None)
        if end is None:
            continue  # cut off by max_new_tokens
        rest = tokenizer.decode(row[:end], skip_special_tokens=True)
        text = (start + rest).strip()
        if len(text) >= min_chars and len(rest.strip()) >= min_chars // 2:
            yield text


# ---- recorded greedy generation ---------------------------------------------------------------
@torch.no_grad()
def greedy_record(
    model: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_ids: set[int],
    top_k: int,
    pad_id: int = 0,
) -> list[SequenceRecord]:
    """Greedy answers to a batch of prompts, recording teacher outputs at every answer step.

    Record j of a row is the position whose hidden state produced answer token j (the last
    prompt position for j = 0), so next_token[j] is answer token j itself.
    """
    target = Target(model)
    B = len(prompts)
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(target.device), mask.to(target.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
    cache = target.new_cache()
    hidden = target.forward(ids, cache, attention_mask=mask, position_ids=positions)[:, -1]
    rows = torch.arange(B)  # original row of each live batch entry
    steps: list[list[tuple]] = [[] for _ in range(B)]
    next_pos = positions[:, -1:] + 1  # [B, 1]
    for _ in range(max_new_tokens):
        logits = target.logits(hidden).float()  # [b, V]
        token = logits.argmax(-1)  # [b]
        values, top = logits.topk(top_k, dim=-1)  # [b, K]
        for k, row in enumerate(rows.tolist()):
            steps[row].append((hidden[k], token[k], top[k], values[k]))
        alive = torch.tensor([int(t) not in eos_ids for t in token.tolist()])
        if not alive.any():
            break
        if not alive.all():  # drop finished rows from the batch and the cache
            keep = alive.nonzero().flatten()
            cache.batch_select_indices(keep.to(target.device))
            rows, token, mask, next_pos = rows[keep], token[keep], mask[keep], next_pos[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        out = target.forward(token[:, None], cache, attention_mask=mask, position_ids=next_pos)
        hidden, next_pos = out[:, -1], next_pos + 1
    return [_stack(s) for s in steps]


def _stack(steps: list[tuple]) -> SequenceRecord:
    hidden, token, top, values = (torch.stack(x) for x in zip(*steps, strict=True))
    return SequenceRecord(
        hidden=hidden.to(torch.float16).cpu(),  # [n, H]
        next_token=token.to(torch.int32).cpu(),  # [n]
        topk_ids=top.to(torch.int32).cpu(),  # [n, K]
        topk_logits=values.to(torch.float16).cpu(),  # [n, K]
    )


# ---- the resumable producer -------------------------------------------------------------------
@dataclass
class SelfDistillConfig:
    num_prompts: int = 4000
    max_new_tokens: int = 128
    batch_size: int = 16
    top_k: int = 16
    chunk_positions: int = 20000
    seed: int = 0
    docs: str | None = None  # documentation tree for extra "summarize/explain" prompts
    time_budget_s: float | None = None  # stop (resumably) after this long


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    from redrafter_rs.data import chat_prompt

    texts = [chat_prompt(tokenizer, p) for p in prompts]
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


def builtin_openings() -> list[str]:
    """The built-in openings for `sampled_prompts`: task verbs across the eight categories."""
    return _builtin_spec()["openings"]


def builtin_prompts(config: SelfDistillConfig) -> list[str]:
    """The built-in instruction prompts of `config` (plus documentation passages)."""
    passages = doc_passages(config.docs) if config.docs else None
    return instruction_prompts(config.num_prompts, config.seed, passages)


def generate_cache(
    model: nn.Module,
    prompts: list[list[int]],
    out_dir: str | Path,
    config: SelfDistillConfig,
    eos_ids: set[int],
    log=print,
) -> int:
    """Answer tokenized prompts greedily into a teacher cache; resumes where it stopped.

    Returns the number of positions in the cache.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out_dir)
    if manifest is None:
        settings = asdict(config) | {"length_sorted_blocks": config.batch_size * _SORT_BATCHES}
        manifest = new_manifest(model, "selfdistill", config.top_k, settings)
    else:
        check_manifest_target(manifest, model, out_dir)
        check(manifest.top_k == config.top_k, f"{out_dir}: cache has top_k={manifest.top_k}")
    block = manifest.settings.get("length_sorted_blocks")  # absent in caches made before it
    if block:
        prompts = sort_within_blocks(prompts, block)
    writer = ChunkWriter(out_dir, manifest, config.chunk_positions)
    start, t0, made = manifest.items_done, time.perf_counter(), 0
    for lo in range(start, len(prompts), config.batch_size):
        batch = prompts[lo : lo + config.batch_size]
        records = greedy_record(model, batch, config.max_new_tokens, eos_ids, config.top_k)
        writer.add(records, len(batch))
        made += sum(len(r) for r in records)
        rate = made / (time.perf_counter() - t0)
        log(f"prompts {lo + len(batch)}/{len(prompts)}  positions +{made}  {rate:.0f} tok/s")
        if config.time_budget_s and time.perf_counter() - t0 > config.time_budget_s:
            break
    writer.flush()
    return manifest.positions


_SORT_BATCHES = 8


def sort_within_blocks(prompts: list[list[int]], block: int) -> list[list[int]]:
    """Prompts sorted by length inside consecutive blocks of `block`.

    Batches then pad little (a 150-token passage prompt no longer pads 47 short prompts in its
    batch), while every block keeps the category mix of the interleaved prompt list, so a run
    cut short by its time budget is still balanced.
    """
    out: list[list[int]] = []
    for lo in range(0, len(prompts), block):
        out += sorted(prompts[lo : lo + block], key=len)  # stable: deterministic on resume
    return out
