"""The CPU fast path for the target's linear layers: `accelerate(model)`.

On CPU a decoding step of a small LM is dominated by its linear layers (82% of a SmolLM2-135M
step in `aten::mm`), and torch's `F.linear` runs them far above the memory-bandwidth floor: at
M = 1 row (plain decoding) it reads the weights 3-4x slower than the machine streams them, and
from M = 4 rows (tree verification) it switches to a GEMM path that costs up to M times more.

`accelerate(model)` routes every CPU `nn.Linear` of `model` (attention projections, MLP, LM head,
a tied head included) through one of two kernels:

    "rust"    redrafter-kernels (this package's own, AVX2/FMA with runtime detection and a
              portable fallback, its own thread pool, GIL released). It reads the weight in
              place, in its original [out, in] layout: no copy, no packing, so memory holds one
              copy of each weight and `unaccelerate` has nothing to restore but the forwards.
              Each output is one dot product whose summation order depends only on the row, the
              weight row and K, never on how many rows share the call: a token's logits are
              bitwise the same whether it is verified alone or inside a tree of 64.
    "onednn"  torch's own oneDNN packed linear (a private op, `torch.ops.mkldnn`; guarded:
              unavailable means a clean error at `accelerate`). It holds a
              packed copy of each weight next to the original: twice the weight memory.

Both compute the same sums as `F.linear` in another order, so logits differ from the stock
model's in the last bits (|diff| ~ 1e-5 on SmolLM2); greedy outputs are compared token for
token in the tests and in `redrafter bench`. The patched model stays a normal `nn.Module`:
`model.generate` runs through the same kernels, `state_dict` is unchanged, autograd falls back
to `F.linear`, and `unaccelerate(model)` restores the stock forwards exactly.

bf16 (opt-in): a model in bfloat16 gets the "rust" kernel with bf16 weights read as is (half the
bytes of fp32) and fp32 accumulation; its outputs are rounded to bf16 like torch's own.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from redrafter_rs import _core
from redrafter_rs.errors import RedrafterError, check

_ATTR = "_redrafter_accel"
KERNELS = ("rust", "onednn")


def onednn_available() -> bool:
    """Whether torch's private oneDNN packed-linear ops exist in this build (and work)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops, "mkldnn")):
        return False
    try:
        w = torch.ones(4, 3)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 8)
        y = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 3), packed, None, "none", [], "")
        return bool(torch.equal(y, torch.full((2, 4), 3.0)))
    except (RuntimeError, AttributeError, TypeError):
        return False


class _Layer:
    """Per patched `nn.Linear`: which kernel, and the state it needs."""

    def __init__(self, module: nn.Linear, kernel: str) -> None:
        self.kernel = kernel
        self.active = True  # set_active(model, False): route everything to F.linear
        self.source = None  # the weight tensor the state below was made from
        self.refresh(module)

    def refresh(self, module: nn.Linear) -> None:
        """Re-read the weight: at patch time, and when it was replaced (`.data =`, `.to()`)."""
        weight = module.weight.detach()
        self.source, self.version = module.weight, module.weight._version
        self.ptr, self.dtype = weight.data_ptr(), weight.dtype  # `.data =` swaps these
        self.usable = _eligible(module, self.kernel)  # e.g. moved to a GPU or cast to fp16
        if not self.usable:
            return
        if self.kernel == "onednn":  # oneDNN's blocked layout, refreshed on in-place writes
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 8)
            return
        # numpy views of the weight's own memory: in-place edits are seen without a refresh
        if weight.dtype == torch.bfloat16:
            self.w = weight.view(torch.int16).numpy().view("uint16")
        else:
            self.w = weight.numpy()
        self.bias = None if module.bias is None else module.bias.detach().float().numpy()

    def __call__(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        weight = module.weight
        if (
            weight is not self.source
            or weight.data_ptr() != self.ptr
            or weight.dtype != self.dtype
            or (self.kernel == "onednn" and weight._version != self.version)
        ):
            self.refresh(module)
        if (
            not self.active
            or not self.usable
            or x.dtype != weight.dtype
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        ):
            return F.linear(x, weight, module.bias)  # autograd and odd calls stay stock
        K = x.shape[-1]
        x2 = x.reshape(-1, K)
        if self.kernel == "onednn":
            bias = None if module.bias is None else module.bias.detach()
            y = torch.ops.mkldnn._linear_pointwise(x2, self.packed, bias, "none", [], "")
        elif weight.dtype == torch.bfloat16:
            xf = x2.float().contiguous()
            out = torch.empty(xf.shape[0], weight.shape[0], dtype=torch.float32)
            _core.linear_bf16w(xf.numpy(), self.w, self.bias, out.numpy())
            y = out.to(torch.bfloat16)
        else:
            x2 = x2.contiguous()
            y = torch.empty(x2.shape[0], weight.shape[0], dtype=torch.float32)
            _core.linear_f32(x2.numpy(), self.w, self.bias, y.numpy())
        return y.view(*x.shape[:-1], y.shape[-1])


def _fast_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return getattr(self, _ATTR)(self, x)


def _eligible(module: nn.Module, kernel: str) -> bool:
    """A plain `nn.Linear` (subclasses may change forward) whose weight the kernel reads."""
    if not isinstance(module, nn.Linear) or module.weight.device.type != "cpu":
        return False
    w = module.weight
    if kernel == "onednn":
        return w.dtype == torch.float32
    return w.dtype in (torch.float32, torch.bfloat16) and w.is_contiguous()


@dataclass(frozen=True)
class AccelerateReport:
    kernel: str
    layers: int  # nn.Linear modules routed through the kernel
    isa: str  # the Rust kernel's instruction set ("avx2-fma", "portable")
    threads: int  # the Rust kernel's threads
    torch_threads: int  # torch's intra-op threads while accelerated


_THREADS = "_redrafter_accel_threads"  # on the root module: (torch threads fast, before)


def _set_torch_threads(model: nn.Module, active: bool) -> None:
    saved = getattr(model, _THREADS, None)
    if saved is not None:
        torch.set_num_threads(saved[0] if active else saved[1])


def accelerate(
    model: nn.Module,
    kernel: str = "rust",
    threads: int | None = None,
    torch_threads: int | None = 1,
) -> AccelerateReport:
    """Route the CPU `nn.Linear` layers of `model` through a fast kernel (see module docstring).

    `kernel`: "rust" (default; fp32 and bf16 weights, no extra memory) or "onednn" (fp32, a
    packed copy of each weight). `threads`: the Rust kernel's threads (default: torch's
    `get_num_threads()`). Idempotent: already accelerated layers are left as they are.

    `torch_threads` (kernel "rust"): torch's own intra-op threads while accelerated, restored by
    `unaccelerate` (None: leave torch alone). The kernel's pool and torch's OpenMP threads both
    spin between calls, so with both at 2 threads on 2 cores a SmolLM2 step ran 1.3-1.5x slower
    than with torch at 1 (the linears, 80% of the work, still run on every core).
    """
    check(kernel in KERNELS, f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "onednn" and not onednn_available():
        raise RedrafterError(
            "kernel='onednn': this torch build has no working oneDNN packed linear "
            "(torch.ops.mkldnn._linear_pointwise); use kernel='rust'"
        )
    if threads is not None:
        check(
            isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1,
            f"threads must be an integer >= 1, got {threads!r}",
        )
    if torch_threads is not None:
        check(
            isinstance(torch_threads, int)
            and not isinstance(torch_threads, bool)
            and torch_threads >= 1,
            f"torch_threads must be an integer >= 1 or None, got {torch_threads!r}",
        )
    before = getattr(model, _THREADS, (None, torch.get_num_threads()))[1]
    _core.set_kernel_threads(threads or before)
    if kernel == "rust" and torch_threads is not None:
        setattr(model, _THREADS, (torch_threads, before))
        _set_torch_threads(model, True)
    count = 0
    for module in model.modules():
        plain = type(module) is nn.Linear  # subclasses (quantized, LoRA) keep their forward
        if plain and _eligible(module, kernel) and not hasattr(module, _ATTR):
            setattr(module, _ATTR, _Layer(module, kernel))
            module.forward = types.MethodType(_fast_forward, module)
            count += 1
    return AccelerateReport(
        kernel, count, _core.kernel_isa(), _core.kernel_threads(), torch.get_num_threads()
    )


def unaccelerate(model: nn.Module) -> int:
    """Undo `accelerate`: the class's own forward shows again and torch's thread count is
    restored; returns how many layers."""
    _set_torch_threads(model, False)
    if hasattr(model, _THREADS):
        delattr(model, _THREADS)
    count = 0
    for module in model.modules():
        if hasattr(module, _ATTR):
            delattr(module, _ATTR)
            del module.forward  # the instance attribute set by `accelerate`
            count += 1
    return count


def set_active(model: nn.Module, active: bool) -> int:
    """Switch accelerated layers between their kernel and stock `F.linear` without unpatching
    (the bench interleaves both on one model), torch's threads with them; returns the number
    of accelerated layers."""
    _set_torch_threads(model, active)
    layers = [getattr(m, _ATTR) for m in model.modules() if hasattr(m, _ATTR)]
    for layer in layers:
        layer.active = active
    return len(layers)


def is_accelerated(model: nn.Module) -> bool:
    return any(hasattr(m, _ATTR) for m in model.modules())


def linear_path(model: nn.Module) -> str:
    """Which kernel `model`'s linear layers run on now: "stock", "rust" or "onednn" (cost
    tables measured on one path do not hold for another)."""
    for module in model.modules():
        layer = getattr(module, _ATTR, None)
        if layer is not None and layer.active:
            return layer.kernel
    return "stock"
