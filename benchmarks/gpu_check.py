"""GPU readiness in one command: is the CUDA path right, and how fast is it?

    python benchmarks/gpu_check.py                 # CUDA if present (full sizes, bf16), else CPU
    python benchmarks/gpu_check.py --device cpu    # tiny sizes on the CPU (what `make test` runs)

Needs only torch, transformers and this package: no network, no downloaded weights (the models
are randomly initialised from fixed configs). Writes `gpu_check.json` and `gpu_check.md` to
`--out` (default: benchmarks/gpu-check-<device>/). On one recent NVIDIA GPU it finishes in a
few minutes. Sections:

1. tests: the CUDA tests of this repo (`pytest -m gpu`), skipped without CUDA.
2. per model (the default model's config, SmolLM2-135M, and a 1B-class Llama, Llama-3.2-1B's
   config; tiny versions of both on the CPU):
   - cost: c(N) = time of one verification forward of N tokens / time of a plain step, N = 1..64;
   - equality: greedy tokens of the engine == `model.generate` (oracle and untrained RNN
     drafters, batch 1 and a left-padded batch of 4). In bf16 a divergence is legitimate only at
     a near-tie of the top two logits (the tree forward and the plain forward round differently):
     each divergence is reported with that margin, and a copy in fp32 must match exactly;
   - speed: tokens/s of `model.generate` and of the engine with the oracle drafter (every draft
     token accepted: the engine's ceiling) and with the untrained RNN drafter (τ ~ 1: its cost);
   - the step: time split per decode step (drafter / target / Rust / host-device transfers /
     cache upkeep / Python) with exact per-phase timing, and the host-device synchronisations per
     step: the engine's own waits (`Staging.syncs`, the algorithm needs 2 with a device drafter:
     beams and chosen tokens) and every synchronisation torch reports
     (`torch.cuda.set_sync_debug_mode`), CUDA only.
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import redrafter_rs as rr
from redrafter_rs._common import cuda_sync
from redrafter_rs._io import atomic_write_json, atomic_write_text
from redrafter_rs.bench.cost import cost_curve
from redrafter_rs.bench.oracle import OracleDrafter
from redrafter_rs.bench.report import machine_info
from redrafter_rs.engine.target import Target

REPO = Path(__file__).resolve().parents[1]

# Public configs of the two model sizes (architecture only; weights are random).
CONFIGS = {
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
        rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
    ),
    "llama-1b": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
    ),
}  # fmt: skip
# The CPU's tiny sizes: the same shapes of config, small enough for `make test`.
TINY = {
    "smollm2-135m": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
    "llama-1b": dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=6, num_key_value_heads=2, head_dim=16, vocab_size=768),
}  # fmt: skip


def build_model(name: str, tiny: bool, device: torch.device, dtype: torch.dtype):
    """A randomly initialised Llama with `name`'s config (fixed seed), eval mode, sdpa."""
    kwargs = dict(CONFIGS[name], **(TINY[name] if tiny else {}))
    config = LlamaConfig(**kwargs, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model = model.to(dtype).eval()
    model.generation_config.eos_token_id = None  # random weights: run every budget to the end
    model.generation_config.pad_token_id = 0
    return model


def prompts_for(model, count: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    lengths = torch.randint(8, 40, (count,), generator=gen)
    return [torch.randint(3, V, (int(n),), generator=gen) for n in lengths]


@torch.no_grad()
def plain_greedy(model, prompt: torch.Tensor, n: int) -> tuple[list[int], float]:
    device = model.device
    ids = prompt[None].to(device)
    cuda_sync(device)
    t = time.perf_counter()
    out = model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n)
    cuda_sync(device)
    return out[0, ids.shape[1] :].tolist(), time.perf_counter() - t


def engine_run(model, drafter, prompts, n: int, shape=(4, 5), exact_timing=False):
    """Greedy outputs of the engine for `prompts` in one batch, and per-step measurements."""
    config = rr.SpecConfig(shape[0], shape[1], n, exact_timing=exact_timing)
    gen = rr.SpeculativeGenerator(model, drafter, config)
    for i, p in enumerate(prompts):
        gen.add(i, p.to(model.device))
    device = model.device
    cuda_sync(device)
    t = time.perf_counter()
    gen.step()  # prefill (+ the first decode step when nothing is pending)
    steps, step_s, waits, handoffs, torch_syncs = 0, 0.0, 0, 0, []
    before = dict(gen.time_s)
    while gen.has_unfinished():
        w0, h0 = gen.staging.syncs, gen.staging.handoffs
        s0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            debug = device.type == "cuda"
            if debug:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                gen.step()
            finally:
                if debug:
                    torch.cuda.set_sync_debug_mode("default")
        step_s += time.perf_counter() - s0
        steps += 1
        waits += gen.staging.syncs - w0
        handoffs += gen.staging.handoffs - h0
        if debug:
            torch_syncs.append(sum("synchroniz" in str(w.message) for w in caught))
    cuda_sync(device)
    wall = time.perf_counter() - t
    done = gen.pop_finished()
    tokens = [done[i].tokens for i in range(len(prompts))]
    phases = {k: v - before.get(k, 0.0) for k, v in gen.time_s.items() if k != "prefill"}
    taus = [done[i].stats.tau for i in range(len(prompts))]
    return tokens, {
        "wall_s": wall,
        "decode_steps": steps,
        "step_ms": 1e3 * step_s / max(steps, 1),
        "phases_ms": {k: 1e3 * v / max(steps, 1) for k, v in phases.items()},
        "engine_waits_per_step": waits / max(steps, 1),
        "handoffs_per_step": handoffs / max(steps, 1),
        "torch_syncs_per_step": (sum(torch_syncs) / len(torch_syncs)) if torch_syncs else None,
        "torch_syncs_max": max(torch_syncs) if torch_syncs else None,
        "tau": sum(taus) / len(taus),
    }


@torch.no_grad()
def margin_at(model, prompt: torch.Tensor, tokens: list[int], k: int) -> dict:
    """The top-2 logit margin of the plain forward where token k is chosen (after `tokens[:k]`),
    and the rounding step of the model's dtype at the top logit's magnitude."""
    ids = torch.cat([prompt, torch.tensor(tokens[:k], dtype=torch.long)])[None].to(model.device)
    logits = model(ids).logits[0, -1].float()
    top = logits.topk(2).values
    finfo = torch.finfo(model.dtype)
    ulp = float(top[0].abs().clamp(min=finfo.tiny)) * finfo.eps
    return {"position": k, "margin": float(top[0] - top[1]), "ulp": ulp}


def compare(model, prompts, refs, outs, tie_ulps: float) -> dict:
    """Equal rows, and for each diverging row where and with which top-2 margin."""
    rows = []
    for p, ref, out in zip(prompts, refs, outs, strict=True):
        if out == ref:
            rows.append({"equal": True})
            continue
        k = next((i for i, (a, b) in enumerate(zip(ref, out, strict=False)) if a != b), None)
        k = min(len(ref), len(out)) if k is None else k
        info = margin_at(model, p, ref, k)
        info["near_tie"] = info["margin"] <= tie_ulps * info["ulp"]
        rows.append({"equal": False, **info})
    equal = sum(r["equal"] for r in rows)
    ties = sum(1 for r in rows if not r["equal"] and r["near_tie"])
    return {
        "rows": len(rows),
        "equal": equal,
        "near_tie_divergences": ties,
        "real_mismatches": len(rows) - equal - ties,
        "divergences": [r for r in rows if not r["equal"]],
    }


def check_equality(model, prompts, n: int, shape, exact: bool) -> dict:
    """The engine against `model.generate` per prompt alone: batch 1 and a batch of 4."""
    refs = [plain_greedy(model, p, n)[0] for p in prompts]
    full = [torch.cat([p, torch.tensor(r)]) for p, r in zip(prompts, refs, strict=True)]
    drafters = {
        "oracle": OracleDrafter(full, model.config.vocab_size),
        "rnn_untrained": rr.RecurrentDrafter.for_target(model).to(model.dtype),
    }
    out = {}
    for name, drafter in drafters.items():
        for B in (1, 4):
            got, _ = engine_run(model, drafter, prompts[:B], n, shape)
            # exact: fp32, where the two forwards agree far below any margin; bf16: near-ties
            res = compare(model, prompts[:B], refs[:B], got, 0.0 if exact else 8.0)
            out[f"{name}_b{B}"] = res
    return out


def measure_speed(model, prompts, n: int, shapes) -> dict:
    """Tokens/s interleaved per prompt: model.generate, the oracle engine per shape (the
    ceiling), the untrained RNN engine at the first shape."""
    drafter = rr.RecurrentDrafter.for_target(model).to(model.dtype)
    plain_greedy(model, prompts[0], 4)  # warm-up
    times: dict[str, float] = {}
    taus: dict[str, list[float]] = {}
    tokens = 0
    for p in prompts:
        ref, t = plain_greedy(model, p, n)
        times["model.generate"] = times.get("model.generate", 0.0) + t
        tokens += len(ref)
        oracle = OracleDrafter([torch.cat([p, torch.tensor(ref)])], model.config.vocab_size)
        runs = [(f"oracle_{w}x{ln}", oracle, (w, ln)) for w, ln in shapes]
        runs.append((f"rnn_untrained_{shapes[0][0]}x{shapes[0][1]}", drafter, shapes[0]))
        for name, d, shape in runs:
            _, info = engine_run(model, d, [p], n, shape)
            times[name] = times.get(name, 0.0) + info["wall_s"]
            taus.setdefault(name, []).append(info["tau"])
    base = tokens / times["model.generate"]
    out = {"model.generate": {"tokens_per_s": base}}
    for name, t in times.items():
        if name != "model.generate":
            rate = tokens / t
            tau = sum(taus[name]) / len(taus[name])
            out[name] = {"tokens_per_s": rate, "speedup": rate / base, "tau": tau}
    return out


def step_profile(model, prompts, n: int, shape) -> dict:
    """Per decode step: the phase split (exact timing) and the synchronisation counts (a run
    without exact timing, as users run it)."""
    drafter = rr.RecurrentDrafter.for_target(model).to(model.dtype)
    refs = [plain_greedy(model, p, n)[0] for p in prompts[:4]]
    full = [torch.cat([p, torch.tensor(r)]) for p, r in zip(prompts[:4], refs, strict=True)]
    oracle = OracleDrafter(full, model.config.vocab_size)
    out = {}
    for name, d in (("rnn_untrained", drafter), ("oracle", oracle)):
        engine_run(model, d, prompts[:1], 4, shape)  # warm-up (first calls, allocations)
        for B in (1, 4):
            _, exact = engine_run(model, d, prompts[:B], n, shape, exact_timing=True)
            _, plain = engine_run(model, d, prompts[:B], n, shape, exact_timing=False)
            phases = exact["phases_ms"]
            split = {
                "drafter": phases.get("draft", 0.0),
                "target": phases.get("target", 0.0),
                "rust": phases.get("pack", 0.0) + phases.get("accept", 0.0),
                "transfers": phases.get("transfer", 0.0),
                "cache": phases.get("cache", 0.0),
            }
            split["python"] = max(exact["step_ms"] - sum(split.values()), 0.0)
            out[f"{name}_b{B}"] = {
                "step_ms_exact_timing": exact["step_ms"],
                "step_ms": plain["step_ms"],
                "split_ms": split,
                "engine_waits_per_step": plain["engine_waits_per_step"],
                "handoffs_per_step": plain["handoffs_per_step"],
                "torch_syncs_per_step": plain["torch_syncs_per_step"],
                "torch_syncs_max": plain["torch_syncs_max"],
            }
    return out


def run_cuda_tests() -> dict:
    """This repo's CUDA tests (`-m gpu`); without CUDA they report as skipped."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}
    return {
        "command": " ".join(cmd[1:]),
        "returncode": proc.returncode,
        "summary": last,
        "counts": counts,
        "seconds": round(time.perf_counter() - t, 1),
        "output_tail": proc.stdout[-3000:] if proc.returncode not in (0, 5) else "",
    }


def environment(device: torch.device) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "redrafter_rs": rr.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": str(device),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - a dependency
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["cpu"] = machine_info()["cpu"]
        env["threads"] = torch.get_num_threads()
    return env


def check_model(name: str, args, device: torch.device) -> dict:
    tiny = device.type != "cuda"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t = time.perf_counter()
    model = build_model(name, tiny, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    prompts = prompts_for(model, 4, seed=1)
    n, shape = args.max_new_tokens, (4, 5)
    sizes = list(range(1, 65)) if not tiny else [1, 2, 4, 8, 16, 32, 64]
    target = Target(model)
    curve = cost_curve(
        {name: (model, target.new_cache, lambda on: None)},
        sizes=sizes, context=args.context, repeats=args.repeats,
    )[name]  # fmt: skip
    result = {
        "config": dict(CONFIGS[name], **(TINY[name] if tiny else {})),
        "parameters": params,
        "dtype": str(dtype).removeprefix("torch."),
        "cost": {"ms": curve["ms"], "c": curve["c"], "context": args.context},
        "equality": {
            str(dtype).removeprefix("torch."):
                check_equality(model, prompts, n, shape, exact=dtype == torch.float32)
        },
        "speed": measure_speed(model, prompts, n, [(1, 4), (1, 8), (4, 8)]),
        "step": step_profile(model, prompts, n, shape),
    }  # fmt: skip
    if dtype != torch.float32:  # the strict check: the same weights in fp32, TF32 off
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            model = model.float()
            result["equality"]["float32"] = check_equality(model, prompts, n, shape, exact=True)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["seconds"] = round(time.perf_counter() - t, 1)
    return result


def verdict(report: dict) -> dict:
    """Pass/fail per criterion: CUDA tests pass (or are skipped without CUDA), no real greedy
    mismatch in any dtype, no divergence at all in fp32."""
    problems = []
    tests = report["tests"]
    if tests.get("returncode") not in (0, 5) or tests["counts"].get("failed"):
        problems.append(f"CUDA tests: {tests.get('summary')}")
    for name, m in report["models"].items():
        for dtype, checks in m["equality"].items():
            for case, res in checks.items():
                if res["real_mismatches"]:
                    problems.append(f"{name} {dtype} {case}: {res['real_mismatches']} mismatches")
                if dtype == "float32" and res["equal"] != res["rows"]:
                    problems.append(f"{name} float32 {case}: {res['rows'] - res['equal']} differ")
    return {"ok": not problems, "problems": problems}


def _at(table: dict, n: int):
    """table[n], whether the keys are ints or (after a JSON round trip) strings."""
    return table[n] if n in table else table[str(n)]


def markdown(report: dict) -> str:
    env = report["environment"]
    hw = env.get("gpu") or env.get("cpu")
    lines = [
        f"# GPU check: {hw}",
        "",
        f"{report['verdict']['ok'] and 'PASS' or 'FAIL'} in {report['seconds']} s. "
        f"torch {env['torch']}, transformers {env.get('transformers')}, "
        f"redrafter_rs {env['redrafter_rs']}, device {env['device']}"
        + (f", CUDA {env['cuda']}" if "cuda" in env else f", {env.get('threads')} threads"),
        "",
    ]
    for p in report["verdict"]["problems"]:
        lines.append(f"- problem: {p}")
    t = report["tests"]
    lines += ["", "## CUDA tests", "", f"`{t['command']}`: {t['summary']} ({t['seconds']} s)"]
    for name, m in report["models"].items():
        lines += ["", f"## {name} ({m['parameters'] / 1e6:.1f}M parameters, {m['dtype']})", ""]
        c = m["cost"]["c"]
        pts = [n for n in (1, 2, 4, 8, 16, 32, 48, 64) if n in c or str(n) in c]
        lines += [
            f"Verification cost c(N) at context {m['cost']['context']} "
            f"(plain step {_at(m['cost']['ms'], 1):.2f} ms):",
            "",
            "| N | " + " | ".join(str(n) for n in pts) + " |",
            "|---|" + "---|" * len(pts),
            "| c(N) | " + " | ".join(f"{_at(c, n):.2f}" for n in pts) + " |",
            "",
            "| greedy equality | " + " | ".join(next(iter(m["equality"].values()))) + " |",
            "|---|" + "---|" * len(next(iter(m["equality"].values()))),
        ]
        for dtype, checks in m["equality"].items():
            cells = []
            for res in checks.values():
                cell = f"{res['equal']}/{res['rows']}"
                if res["near_tie_divergences"]:
                    cell += f" (+{res['near_tie_divergences']} near-tie)"
                if res["real_mismatches"]:
                    cell += f" **{res['real_mismatches']} MISMATCH**"
                cells.append(cell)
            lines.append(f"| {dtype} | " + " | ".join(cells) + " |")
        lines += ["", "| method | tok/s | speedup | τ |", "|---|---|---|---|"]
        for meth, s in m["speed"].items():
            lines.append(
                f"| {meth} | {s['tokens_per_s']:.1f} | {s.get('speedup', 1.0):.2f}x "
                f"| {s.get('tau', 1.0):.2f} |"
            )
        lines += [
            "",
            "Per decode step at W x L = 4x5, in ms: the split comes from a run with exact timing "
            "(a wait for the device at every phase boundary); the step time without it and the "
            "synchronisation counts from a run as users run it. Handoffs: device results copied "
            "to the host (each a wait when the tensor is on a GPU); waits: the engine's own; torch "
            "syncs: every synchronisation torch's sync debug mode reports (CUDA only).",
            "",
            "| case | step (exact) | step | drafter | target | rust | transfers | cache | python "
            "| handoffs | waits | torch syncs (max) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for case, s in m["step"].items():
            sp = s["split_ms"]
            syncs = (
                "n/a (CPU)"
                if s["torch_syncs_per_step"] is None
                else f"{s['torch_syncs_per_step']:.2f} ({s['torch_syncs_max']})"
            )
            lines.append(
                f"| {case} | {s['step_ms_exact_timing']:.2f} | {s['step_ms']:.2f} "
                f"| {sp['drafter']:.2f} | {sp['target']:.2f} | {sp['rust']:.3f} "
                f"| {sp['transfers']:.3f} | {sp['cache']:.2f} | {sp['python']:.2f} "
                f"| {s['handoffs_per_step']:.2f} | {s['engine_waits_per_step']:.2f} | {syncs} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cuda or cpu")
    ap.add_argument("--out", type=Path, default=None, help="report folder")
    ap.add_argument("--models", default="smollm2-135m,llama-1b", help="comma-separated")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--context", type=int, default=None, help="c(N)'s context length")
    ap.add_argument("--repeats", type=int, default=None, help="c(N)'s timings per point")
    ap.add_argument("--no-tests", action="store_true", help="skip the CUDA tests")
    args = ap.parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device is available")
    gpu = device.type == "cuda"
    args.max_new_tokens = args.max_new_tokens or (64 if gpu else 16)
    args.context = args.context or (512 if gpu else 64)
    args.repeats = args.repeats or (5 if gpu else 2)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in CONFIGS]
    if unknown:
        ap.error(f"--models: unknown {unknown}; known: {sorted(CONFIGS)}")
    out_dir = args.out or REPO / "benchmarks" / f"gpu-check-{device.type}"
    t = time.perf_counter()
    report = {"environment": environment(device), "arguments": vars(args) | {"out": str(out_dir)}}
    report["tests"] = (
        {"command": "skipped (--no-tests)", "summary": "skipped", "counts": {}, "seconds": 0,
         "returncode": 0}
        if args.no_tests else run_cuda_tests()
    )  # fmt: skip
    report["models"] = {name: check_model(name, args, device) for name in names}
    report["seconds"] = round(time.perf_counter() - t, 1)
    report["verdict"] = verdict(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "gpu_check.json", report)
    atomic_write_text(out_dir / "gpu_check.md", markdown(report))
    print(markdown(report))
    print(f"wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}")
    return 0 if report["verdict"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
