"""Load test of `redrafter serve`: throughput and latency at several client concurrencies,
speculation on versus off, with the official `openai` client over HTTP.

    python benchmarks/serve_load.py --out benchmarks/serve-load-smollm2   # default model

Two servers run in this process on loopback ports over the same model: `--speculative-method
redrafter` (the shipped drafter, adaptive shapes, retrieval: the `redrafter serve` defaults) and
`--speculative-method none` (the same engine, plain decoding). For each concurrency C, C clients
each send `--requests` streaming chat requests (MT-Bench first turns, greedy, `--max-tokens`) one
after another; the two modes alternate per concurrency level so drift hits both. Measured per
request: time to first token (TTFT), time per output token after the first (TPOT), the gaps
between streamed chunks (a chunk carries every token one engine step emitted for the request);
per run: output tokens/s. Writes serve_load.json and serve_load.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def _client(url: str, prompts: list[str], max_tokens: int, out: list[dict]) -> None:
    import openai

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as ac:
        for text in prompts:
            await _one(ac, text, max_tokens, out)


async def _one(ac, text: str, max_tokens: int, out: list[dict]) -> None:
    """One streaming greedy chat request: its TTFT, TPOT, chunk gaps and tokens into `out`."""
    t0 = time.perf_counter()
    stream = await ac.chat.completions.create(
        model="m", messages=[{"role": "user", "content": text}], max_tokens=max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    stamps, tokens = [], 0
    async for ch in stream:
        if ch.choices and ch.choices[0].delta.content:
            stamps.append(time.perf_counter())
        if ch.usage is not None:
            tokens = ch.usage.completion_tokens
    end = time.perf_counter()
    out.append({
        "ttft": stamps[0] - t0 if stamps else end - t0,
        "tpot": (end - stamps[0]) / max(tokens - 1, 1) if stamps else 0.0,
        "gaps": [b - a for a, b in zip(stamps, stamps[1:], strict=False)],
        "tokens": tokens,
    })  # fmt: skip


def run_level(url: str, prompts: list[str], clients: int, per_client: int, max_tokens: int):
    records: list[dict] = []
    batches = [prompts[(c * per_client) % len(prompts) :][:per_client] for c in range(clients)]

    async def main():
        await asyncio.gather(*(_client(url, b, max_tokens, records) for b in batches))

    t = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t
    gaps = [g for r in records for g in r["gaps"]]
    return {
        "clients": clients,
        "requests": len(records),
        "output_tokens": sum(r["tokens"] for r in records),
        "wall_s": wall,
        "tokens_per_s": sum(r["tokens"] for r in records) / wall,
        "ttft_ms_p50": 1e3 * _pct([r["ttft"] for r in records], 0.5),
        "ttft_ms_p99": 1e3 * _pct([r["ttft"] for r in records], 0.99),
        "tpot_ms_p50": 1e3 * _pct([r["tpot"] for r in records], 0.5),
        "tpot_ms_p99": 1e3 * _pct([r["tpot"] for r in records], 0.99),
        "chunk_gap_ms_p50": 1e3 * _pct(gaps, 0.5),
        "chunk_gap_ms_p99": 1e3 * _pct(gaps, 0.99),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="1,4,16", help="client concurrencies")
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", type=Path, default=Path("serve-load-out"))
    args = ap.parse_args(argv)
    import torch

    from redrafter_rs._io import atomic_write_json, atomic_write_text
    from redrafter_rs.bench.report import machine_info
    from redrafter_rs.data import mt_bench_questions
    from redrafter_rs.models import load_model
    from redrafter_rs.serving.cli import running_server

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model()
    threads = torch.get_num_threads()  # before the fast path sets torch's own to 1
    prompts = [q["turns"][0] for q in mt_bench_questions()][::4]
    common = ["--max-batch", "16", "--max-queue", "256"] + ([] if args.fast else ["--no-fast"])
    modes = {
        "speculation on": ["--speculative-method", "redrafter"] + common,
        "speculation off": ["--speculative-method", "none"] + common,
    }
    levels = [int(x) for x in args.levels.split(",")]
    results: dict[str, list[dict]] = {m: [] for m in modes}
    with (
        running_server(modes["speculation on"], model, tok) as (url_on, _, _),
        running_server(modes["speculation off"], model, tok) as (url_off, _, _),
    ):
        urls = {"speculation on": url_on, "speculation off": url_off}
        for url in urls.values():  # warm-up (the policy's calibration, first allocations)
            run_level(url, prompts[:1], 1, 1, 8)
        for i, c in enumerate(levels):
            order = list(modes) if i % 2 == 0 else list(modes)[::-1]
            for mode in order:
                res = run_level(urls[mode], prompts, c, args.requests, args.max_tokens)
                results[mode].append(res)
                print(mode, json.dumps({k: round(v, 2) for k, v in res.items()}), flush=True)
    cpu = machine_info()["cpu"]
    report = {"cpu": cpu, "threads": threads, "args": vars(args) | {
        "out": str(args.out)}, "results": results}  # fmt: skip
    lines = [
        f"# redrafter serve load test ({cpu}, {threads} threads)",
        "",
        f"SmolLM2-135M-Instruct, greedy streaming chat, {args.max_tokens} max tokens, "
        f"{args.requests} requests per client; fast path {'on' if args.fast else 'off'}.",
        "",
        "| clients | mode | tok/s | speedup | TTFT p50 / p99 ms | TPOT p50 / p99 ms "
        "| chunk gap p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(levels):
        off = results["speculation off"][i]["tokens_per_s"]
        for mode in modes:
            r = results[mode][i]
            lines.append(
                f"| {c} | {mode} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / off:.2f}x "
                f"| {r['ttft_ms_p50']:.0f} / {r['ttft_ms_p99']:.0f} "
                f"| {r['tpot_ms_p50']:.1f} / {r['tpot_ms_p99']:.1f} "
                f"| {r['chunk_gap_ms_p50']:.0f} / {r['chunk_gap_ms_p99']:.0f} |"
            )
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "serve_load.json", report)
    atomic_write_text(args.out / "serve_load.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
