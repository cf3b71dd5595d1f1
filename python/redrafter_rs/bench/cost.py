"""What a verification forward costs on this machine: the curve c(N) and the bandwidth floor.

c(N) = time of one target forward over N new tokens (plus the LM head on those N rows) divided
by the time of the same forward over 1 token, at a fixed context. Speculation pays when the
tokens a step emits (τ) outgrow c(tree nodes), so this curve decides which tree shapes pay.

The floor: a decoding step must read every weight once; weight bytes / the read bandwidth
measured here (a reduction over a buffer far larger than the caches) is the least a step costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from redrafter_rs._common import cuda_sync
from redrafter_rs.engine.cache import crop
from redrafter_rs.engine.target import Target


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the distinct parameters a forward reads (a tied head counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def read_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Memory read bandwidth in GB/s: the best of `repeats` sums over a `megabytes` buffer
    (torch's reduction on torch's threads, as the forward runs)."""
    buf = torch.ones(megabytes * (1 << 20) // 4)
    buf.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - t)
    return buf.numel() * 4 / best / 1e9


def chain_mask(context: int, n: int) -> torch.Tensor:
    """[1, 1, n, context + n] boolean 4D mask: n new tokens in a chain (each sees the whole
    context and the new tokens before it), the simplest tree the engine verifies."""
    ctx = torch.ones(1, 1, n, context, dtype=torch.bool)
    tree = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    return torch.cat([ctx, tree], dim=-1)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


class _Probe:
    """A target with a prefilled cache of `context` tokens; `step(N)` times a forward over N
    new tokens (a causal chain under the 4D tree mask, or a maskless plain step for N = 1, as
    the engine runs them) and crops the cache back."""

    def __init__(self, model: nn.Module, context: int, cache_factory: Callable, seed: int) -> None:
        self.target = Target(model)
        gen = torch.Generator().manual_seed(seed)
        self.V, self.T, self.gen = self.target.vocab_size, context, gen
        self.cache = cache_factory()
        ids = torch.randint(0, self.V, (1, context), generator=gen).to(self.target.device)
        positions = torch.arange(context, device=self.target.device)[None]
        self.target.forward(ids, self.cache, None, position_ids=positions)

    def step(self, N: int) -> float:
        target, T = self.target, self.T
        tokens = torch.randint(0, self.V, (1, N), generator=self.gen)
        device = target.device
        tokens, positions = tokens.to(device), (T + torch.arange(N)[None]).to(device)
        mask = None if N == 1 else chain_mask(T, N).to(device)
        cuda_sync(device)
        t = time.perf_counter()
        hidden = target.forward(tokens, self.cache, mask, position_ids=positions)
        target.logits(hidden)
        cuda_sync(device)  # the device's work is the cost being measured
        elapsed = time.perf_counter() - t
        crop(self.cache, T)
        return elapsed


@torch.no_grad()
def cost_curve(
    arms: dict[str, tuple[nn.Module, Callable, Callable[[bool], None]]],
    sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    context: int = 200,
    repeats: int = 7,
    seed: int = 0,
) -> dict[str, dict]:
    """Forward time per N for several arms, interleaved (every repeat runs each N on each arm
    in turn, so machine drift hits all alike).

    `arms`: name -> (model, cache factory, switch) where `switch(True)` sets the arm up before
    its forward (e.g. turns its kernels on) and `switch(False)` after. Returns per arm
    {"ms": {N: median ms}, "c": {N: ms(N) / ms(1)}}.
    """
    probes = {}
    for name, (model, factory, switch) in arms.items():
        switch(True)
        try:
            probes[name] = _Probe(model, context, factory, seed)
            probes[name].step(1)  # warm-up
        finally:
            switch(False)
    times: dict[str, dict[int, list[float]]] = {a: {n: [] for n in sizes} for a in arms}
    for _ in range(repeats):
        for N in sizes:
            for name, (_, _, switch) in arms.items():
                switch(True)
                try:  # an untimed step first: the previous arm's idle threads spin for a while
                    probes[name].step(N)
                    times[name][N].append(probes[name].step(N))
                finally:
                    switch(False)
    out = {}
    for name, per_n in times.items():
        ms = {N: 1e3 * _median(ts) for N, ts in per_n.items()}
        base = ms.get(1) or next(iter(ms.values()))
        out[name] = {"ms": ms, "c": {N: v / base for N, v in ms.items()}}
    return out
