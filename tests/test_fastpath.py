"""The CPU fast path: redrafter-rs's linear kernels against `F.linear`, the patch round trip,
exactness of speculative decoding on the accelerated model, and the slot KV cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import redrafter_rs as rr
from helpers import run_rows_equal, tiny_llama
from redrafter_rs import _core
from redrafter_rs.engine import fastpath
from redrafter_rs.engine.cache import SlotCache, SlotLayer


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """`accelerate` lowers torch's threads while a model is accelerated; later tests get theirs
    back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _kernel_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """One `nn.Linear` with weight `w` and bias `b`, accelerated, applied to `x`."""
    layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if b is not None:
            layer.bias.copy_(b)
    fastpath.accelerate(layer)
    with torch.no_grad():
        return layer(x)


# ---- the kernel against F.linear ----------------------------------------------------------------
@pytest.mark.parametrize("K,N", [(1, 1), (7, 3), (37, 29), (64, 100), (129, 17)])
@pytest.mark.parametrize("bias", [False, True])
def test_rust_kernel_matches_f_linear_every_row_count(K, N, bias):
    """M = 1..67 rows, K and N off the vector width, with and without bias."""
    gen = torch.Generator().manual_seed(K * 1000 + N)
    w = torch.randn(N, K, generator=gen)
    b = torch.randn(N, generator=gen) if bias else None
    x = torch.randn(67, K, generator=gen)
    for M in range(1, 68):
        ref = F.linear(x[:M].double(), w.double(), None if b is None else b.double()).float()
        got = _kernel_linear(x[:M], w, b)
        assert got.shape == (M, N)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * K**0.5)


def test_rust_kernel_rows_do_not_depend_on_the_batch():
    """Each output row is summed in an order fixed by the row alone: a row computed alone is
    bitwise the row computed among 1..67 others, at any position and any thread count."""
    gen = torch.Generator().manual_seed(3)
    w, b = torch.randn(45, 70, generator=gen), torch.randn(45, generator=gen)
    x = torch.randn(67, 70, generator=gen)
    alone = torch.cat([_kernel_linear(x[i : i + 1], w, b) for i in range(67)])
    threads = _core.kernel_threads()
    try:
        for t in (1, 2, 3):
            _core.set_kernel_threads(t)
            for M in (2, 5, 16, 67):
                assert torch.equal(_kernel_linear(x[:M], w, b), alone[:M])
    finally:
        _core.set_kernel_threads(threads)


def test_rust_kernel_non_contiguous_and_batched_inputs():
    layer = nn.Linear(24, 10)
    x = torch.randn(3, 24, 5).transpose(1, 2)  # [3, 5, 24], not contiguous
    with torch.no_grad():
        ref = F.linear(x, layer.weight, layer.bias)
        fastpath.accelerate(layer)
        got = layer(x)
    assert got.shape == (3, 5, 10)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_onednn_kernel_matches_f_linear():
    if not fastpath.onednn_available():
        pytest.skip("this torch build has no oneDNN packed linear")
    layer = nn.Linear(37, 29)
    x = torch.randn(2, 9, 37)
    with torch.no_grad():
        ref = F.linear(x, layer.weight, layer.bias)
        assert fastpath.accelerate(layer, kernel="onednn").layers == 1
        torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
        layer.weight.mul_(2.0)  # in place: the packed copy follows
        torch.testing.assert_close(
            layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-4, rtol=1e-5
        )


def test_bf16_weights_match_torch_bf16():
    torch.manual_seed(0)
    layer = nn.Linear(40, 24).to(torch.bfloat16)
    x = torch.randn(6, 40).to(torch.bfloat16)
    with torch.no_grad():
        ref = F.linear(x.float(), layer.weight.float(), layer.bias.float())  # exact products
        fastpath.accelerate(layer)
        got = layer(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=1e-2, atol=1e-2)  # one bf16 rounding


def test_binding_rejects_bad_arrays():
    x = np.ones((2, 3), np.float32)
    w = np.ones((4, 3), np.float32)
    out = np.empty((2, 4), np.float32)
    _core.linear_f32(x, w, None, out)
    assert (out == 3).all()
    with pytest.raises(rr.RedrafterError, match="float32"):
        _core.linear_f32(x.astype(np.float64), w, None, out)
    with pytest.raises(rr.RedrafterError):
        _core.linear_f32(x, np.ones((4, 5), np.float32), None, out)  # K mismatch
    with pytest.raises(rr.RedrafterError):
        _core.linear_f32(x, w, np.ones(3, np.float32), out)  # bias length
    with pytest.raises(rr.RedrafterError):
        _core.linear_f32(x, w, None, np.empty((2, 5), np.float32))  # out shape
    with pytest.raises(rr.RedrafterError):
        _core.set_kernel_threads(0)


# ---- the patch ----------------------------------------------------------------------------------
def test_accelerate_round_trip_keeps_one_copy_and_restores_exactly():
    model = tiny_llama(seed=6)
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    linear = model.model.layers[0].mlp.up_proj
    x = torch.randn(6, linear.in_features)
    with torch.no_grad():
        stock = linear(x)
    report = rr.accelerate(model)
    assert report.layers == 15 and report.kernel == "rust"  # 2 layers x 7 + the LM head
    assert rr.accelerate(model).layers == 0  # idempotent
    assert fastpath.is_accelerated(model) and "forward" in vars(linear)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == ptrs  # no weight copies
    with torch.no_grad():
        torch.testing.assert_close(linear(x), stock, rtol=1e-5, atol=1e-5)
        linear.weight.mul_(2.0)  # in place: the kernel reads the weight itself
        torch.testing.assert_close(linear(x), F.linear(x, linear.weight), rtol=1e-5, atol=1e-5)
        linear.weight.data = linear.weight.data / 2.0  # a new tensor: picked up too
        torch.testing.assert_close(linear(x), stock, rtol=1e-5, atol=1e-5)
        fastpath.set_active(model, False)
        assert torch.equal(linear(x), F.linear(x, linear.weight, linear.bias))
    assert fastpath.linear_path(model) == "stock"  # switched off: stock cost tables apply
    fastpath.set_active(model, True)
    assert fastpath.linear_path(model) == "rust"
    assert rr.unaccelerate(model) == 15
    assert fastpath.linear_path(model) == "stock"
    assert not fastpath.is_accelerated(model) and "forward" not in vars(linear)
    with torch.no_grad():
        assert torch.equal(linear(x), F.linear(x, linear.weight, linear.bias))


def test_accelerate_sets_and_restores_torch_threads():
    model = tiny_llama(seed=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        report = rr.accelerate(model, threads=2, torch_threads=1)
        assert report.threads == 2 and report.torch_threads == 1 == torch.get_num_threads()
        fastpath.set_active(model, False)  # stock torch gets its threads back while off
        assert torch.get_num_threads() == 2
        fastpath.set_active(model, True)
        assert torch.get_num_threads() == 1
        rr.unaccelerate(model)
        assert torch.get_num_threads() == 2
        rr.accelerate(model, torch_threads=None)  # leave torch alone
        assert torch.get_num_threads() == 2
        rr.unaccelerate(model)
    finally:
        torch.set_num_threads(before)


def test_accelerate_leaves_autograd_to_torch():
    layer = nn.Linear(8, 4)
    rr.accelerate(layer)
    x = torch.randn(3, 8, requires_grad=True)
    y = layer(x)  # grad enabled: stock F.linear, so backward works
    assert torch.equal(y, F.linear(x, layer.weight, layer.bias))
    y.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_accelerate_rejects_bad_arguments():
    layer = nn.Linear(8, 4)
    with pytest.raises(rr.RedrafterError, match="kernel"):
        rr.accelerate(layer, kernel="mkl")
    with pytest.raises(rr.RedrafterError, match="threads"):
        rr.accelerate(layer, threads=0)
    for bad in (0, True, 1.5):
        with pytest.raises(rr.RedrafterError, match="torch_threads"):
            rr.accelerate(layer, torch_threads=bad)
    assert not fastpath.is_accelerated(layer)  # refused before anything was patched


# ---- exactness on the accelerated model ---------------------------------------------------------
@pytest.mark.parametrize(
    "shape",
    [
        dict(beam_width=4, beam_length=4),
        dict(beam_width=3, beam_length=5, tree_nodes=9),
        dict(adaptive=True),
    ],
)
def test_greedy_on_accelerated_model_equals_its_generate(shape):
    model = tiny_llama(seed=5)
    torch.manual_seed(1)
    drafter = rr.RecurrentDrafter.for_target(model).eval()
    ids = torch.randint(2, 96, (1, 12))
    stock = model.generate(ids, do_sample=False, max_new_tokens=24)
    rr.accelerate(model)
    ref = model.generate(ids, do_sample=False, max_new_tokens=24)
    assert torch.equal(ref, stock)  # peaky tiny model: no near-ties, same as stock too
    out = rr.generate(model, drafter, ids, max_new_tokens=24, retrieval=True, **shape)
    assert torch.equal(out.sequences, ref)


def test_batch_with_padding_on_accelerated_model():
    model = tiny_llama(seed=8)
    torch.manual_seed(2)
    drafter = rr.RecurrentDrafter.for_target(model).eval()
    rr.accelerate(model)
    prompts = [torch.randint(2, 96, (n,)) for n in (5, 11, 8)]
    gen = rr.SpeculativeGenerator(
        model, drafter, rr.SpecConfig(beam_width=3, beam_length=4, max_new_tokens=16)
    )
    refs = [
        model.generate(p[None], do_sample=False, max_new_tokens=16)[0, p.numel() :].tolist()
        for p in prompts
    ]
    run_rows_equal(gen, prompts, refs)


def test_sampling_runs_on_accelerated_model():
    """A seeded sampling run on the fast path is reproducible and spends its budget."""
    model = tiny_llama(seed=9)
    torch.manual_seed(3)
    drafter = rr.RecurrentDrafter.for_target(model).eval()
    rr.accelerate(model)
    ids = torch.randint(2, 96, (1, 6))
    runs = [
        rr.generate(
            model,
            drafter,
            ids,
            max_new_tokens=12,
            temperature=0.8,
            top_p=0.95,
            eos_token_id=[],
            generator=torch.Generator().manual_seed(5),
        )  # fmt: skip
        for _ in range(2)
    ]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    assert runs[0].sequences.shape[1] == 18


# ---- the slot cache ------------------------------------------------------------------------------
def test_slot_layer_appends_in_place_and_crops_by_moving_the_mark():
    layer = SlotLayer()
    k = torch.randn(2, 3, 5, 4)
    keys, values = layer.update(k, -k)
    assert torch.equal(keys, k) and torch.equal(values, -k) and layer.get_seq_length() == 5
    buf = layer.keys.data_ptr()
    for _ in range(20):  # tree of 4, crop back to keep 2: no reallocation once grown
        new = torch.randn(2, 3, 4, 4)
        before = layer.keys.clone()
        keys, _ = layer.update(new, -new)
        assert torch.equal(keys[:, :, :-4], before) and torch.equal(keys[:, :, -4:], new)
        layer.keys = layer.keys[:, :, : before.shape[2] + 2]
        layer.values = layer.values[:, :, : before.shape[2] + 2]
    assert layer.get_seq_length() == 5 + 2 * 20
    assert layer.keys.data_ptr() == buf  # one buffer, grown with headroom, never copied per step
    other = torch.randn(1, 3, 7, 4)  # a new tensor (select / merge / compact): adopted
    layer.keys, layer.values = other, -other
    assert torch.equal(layer.keys, other) and layer.get_seq_length() == 7
    layer.update(other[:, :, :1], other[:, :, :1])
    assert layer.get_seq_length() == 8 and torch.equal(layer.keys[:, :, :7], other)


def test_slot_cache_forward_equals_dynamic_cache():
    from transformers import DynamicCache

    model = tiny_llama(seed=4)
    ids = torch.randint(2, 96, (2, 9))
    outs = []
    for cache in (DynamicCache(), SlotCache()):
        with torch.no_grad():
            a = model(ids, cache=cache, use_cache=True).logits
            b = model(ids[:, :3], cache=cache, use_cache=True).logits
        outs.append((a, b))
    for x, y in zip(*outs, strict=True):
        assert torch.equal(x, y)
