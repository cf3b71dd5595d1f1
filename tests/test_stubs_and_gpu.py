"""The `_core.pyi` stubs match the compiled module; the CUDA path (skipped without a GPU)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import redrafter_rs as rr
from helpers import NoisyOracleDrafter, tiny_llama
from redrafter_rs import _core


def _stub_names() -> dict[str, set[str]]:
    """Top-level names of `_core.pyi`, with the members of each class."""
    tree = ast.parse((Path(rr.__file__).parent / "_core.pyi").read_text())
    names: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names[node.name] = {
                n.name
                for n in node.body
                if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")
            }
        elif isinstance(node, ast.FunctionDef):
            names[node.name] = set()
        elif isinstance(node, ast.AnnAssign):
            names[node.target.id] = set()
    return names


def test_stubs_match_the_binary():
    stubs = _stub_names()
    public = {n for n in dir(_core) if not n.startswith("_")} | {"__version__"}
    assert set(stubs) == public
    for cls, members in stubs.items():
        obj = getattr(_core, cls)
        if isinstance(obj, type) and cls != "RedrafterError":
            actual = {n for n in dir(obj) if not n.startswith("_")}
            assert members == actual, cls


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 4])
def test_cuda_greedy_equals_generate(B):
    model = tiny_llama(seed=5).cuda()
    gen = torch.Generator().manual_seed(B)
    prompts = [torch.randint(2, 96, (int(t),), generator=gen) for t in torch.randint(1, 12, (B,))]
    refs = [
        model.generate(p[None].cuda(), do_sample=False, max_new_tokens=24)[0, len(p) :].tolist()
        for p in prompts
    ]
    drafter = NoisyOracleDrafter(
        [torch.cat([p, torch.tensor(r)]) for p, r in zip(prompts, refs, strict=True)], 96
    )
    engine = rr.SpeculativeGenerator(model, drafter, rr.SpecConfig(4, 5, 24))
    for row, p in enumerate(prompts):
        engine.add(row, p.cuda())
    while engine.has_unfinished():
        engine.step()
    done = engine.pop_finished()
    assert [done[i].tokens for i in range(B)] == refs
    assert engine.staging.cuda and engine.staging.pinned("beams").is_pinned()


@cuda
@pytest.mark.gpu
def test_cuda_sampling_runs_on_device():
    model = tiny_llama(seed=5).cuda()
    drafter = rr.RecurrentDrafter.for_target(model)
    ids = torch.tensor([[3, 4, 5]], device="cuda")
    gen = torch.Generator("cuda").manual_seed(0)
    out = rr.generate(model, drafter, ids, max_new_tokens=8, temperature=1.0, generator=gen)
    assert out.sequences.device.type == "cuda" and out.sequences.shape[1] <= 11


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("retrieval", [False, True])
def test_cuda_decode_steps_wait_for_the_device_at_most_twice(retrieval):
    """Per decode step the host waits for the GPU only for the drafted beams and the chosen
    tokens (torch's sync debug mode counts every synchronisation, HF's model code included);
    with retrieval the merged beams are on the host, so the RNN beams are the only draft wait."""
    import warnings

    model = tiny_llama(seed=5).cuda()
    drafter = rr.RecurrentDrafter.for_target(model)
    if retrieval:
        drafter = rr.RetrievalDrafter(drafter)
    gen = rr.SpeculativeGenerator(model, drafter, rr.SpecConfig(4, 5, 30))
    gen.add(0, torch.tensor([3, 4, 5, 6, 7], device="cuda"), max_new_tokens=30)
    gen.add(1, torch.tensor([9, 8, 7], device="cuda"), max_new_tokens=20)
    gen.step()  # prefill (its root tokens reach the host once)
    counts = []
    while gen.has_unfinished():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                gen.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts and max(counts) <= 2, counts
    assert gen.staging.syncs <= 2 * len(counts)
