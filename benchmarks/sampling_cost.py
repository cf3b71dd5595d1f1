"""Cost of choosing the target's token at every tree node when sampling (issue #20).

Times `choose_tokens` per decode step on logits [B, N, V] of the default model's vocabulary
(V = 49152), interleaved in one process, for: unseeded rows (inverse CDF, one uniform per
node from the caller's generator), seeded rows (inverse CDF, uniforms from (seed, position)),
and the exponential race the engine used before (argmax p / E, one Exp(1) variate per vocabulary
entry), which is kept here only as the comparison point.

    python benchmarks/sampling_cost.py [--repeats 30] [--out benchmarks/sampling_cost.json]

Settings: temperature 0.8 alone, and with top-p 0.95 (transformers' TopPLogitsWarper sorts the
whole vocabulary per node, which then dominates).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from redrafter_rs.bench.report import machine_info
from redrafter_rs.engine.sampling import SamplingParams, choose_tokens


def exponential_race(logits: torch.Tensor, params: SamplingParams, gen) -> torch.Tensor:
    R, N, V = logits.shape
    probs = params.probs(logits.reshape(R * N, V))
    race = torch.empty_like(probs).exponential_(1.0, generator=gen)
    return (probs / race).argmax(-1).view(R, N)


def _arms(logits, params, seeded, depth, gen) -> dict:
    B = logits.shape[0]
    return {
        "exponential_race": lambda: exponential_race(logits, params, gen),
        "inverse_cdf": lambda: choose_tokens(logits, [params] * B, [gen] * B),
        "inverse_cdf_seeded": lambda: choose_tokens(
            logits, [seeded] * B, [None] * B, start=[100] * B, depth=depth
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    args = ap.parse_args()
    V = args.vocab
    gen = torch.Generator().manual_seed(0)
    rows = []
    cases = [(s, B, N) for s in ({"temperature": 0.8}, {"temperature": 0.8, "top_p": 0.95})
             for B, N in [(1, 1), (1, 5), (1, 16), (4, 16), (1, 32)]]  # fmt: skip
    for settings, B, N in cases:
        params = SamplingParams(**settings)
        seeded = SamplingParams(**settings, seed=1)
        logits = torch.randn(B, N, V, generator=torch.Generator().manual_seed(N)) * 3
        depth = np.minimum(np.arange(N), 4)[None].repeat(B, 0)
        arms = _arms(logits, params, seeded, depth, gen)
        times: dict[str, list[float]] = {k: [] for k in arms}
        for fn in arms.values():
            fn()  # warm-up
        for _ in range(args.repeats):  # interleaved: the arms see the same machine noise
            for name, fn in arms.items():
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) * 1e3)
        row = {**settings, "B": B, "N": N}
        row.update({k: statistics.median(v) for k, v in times.items()})
        rows.append(row)
        print(
            f"{settings} B={B:2d} N={N:2d}: exponential race {row['exponential_race']:7.3f} ms, "
            f"inverse CDF {row['inverse_cdf']:6.3f} ms, seeded {row['inverse_cdf_seeded']:6.3f} ms"
        )
    meta = {
        "cpu": machine_info()["cpu"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "V": V,
    }
    print(json.dumps(meta))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
