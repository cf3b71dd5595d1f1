"""Opt-in small-M CPU kernels for the target's linear layers (offline-assets.md, last section).

Tree verification runs every `nn.Linear` of the target on M = B * N rows with N ~ 4-32. On this
CPU's MKL, `F.linear(x, W)` (a transposed-weight GEMM) is a fast matrix-vector path for M <= 3
and then falls off a cliff. Per layer, weights cold in DRAM as in a real forward (1 thread,
fp32, ms; more in benchmarks/README.md):

    layer          M=1     M=3     M=4     M=8     M=16   (F.linear / x @ W^T / oneDNN packed)
    576->1536     0.42    0.48    0.75    0.97    0.95   F.linear
                  0.36    0.50    0.53    0.77    0.88   x @ W.t().contiguous()
    576->49152    8.8    13.6    28.0    40.7    30.8    F.linear (the LM head)
                  7.8    12.8    17.3    22.3    27.1    x @ W.t().contiguous()
                  9.1    13.4    12.9    16.1    21.0    oneDNN packed

On another machine of the same kind (AMD EPYC, 1 thread, weights warm), `F.linear`'s small-M
path costs M times its M = 1 cost, so 2-3 rows cost more than 4 (LM head: M=1 12.9, M=3 43.0,
M=4 23.4 ms; 576->1536: 0.10, 0.28, 0.20 ms).

`patch_model(model)` keeps `F.linear` for M = 1 (plain decoding stays bitwise unchanged) and for M
below `min_rows`, unless zero-padding those rows to `min_rows` (then `F.linear` or the kernels
below) measures faster for that weight shape when the model is patched (`pad_small`). From
`min_rows` rows on, it computes `x @ W^T` with a pre-transposed weight copy, or for layers with at
least `packed_min_features` outputs (the LM head) with oneDNN's pre-packed linear. Both compute the
same sums in a different order, so logits differ from `F.linear`'s in the last bits (|diff| ~ 1e-5);
`redrafter bench` checks that greedy outputs stay token-identical. `unpatch_model` restores the
modules exactly. The weight copies are refreshed when the weight is modified in place or replaced;
patching is for inference (no autograd through the copies).
"""

from __future__ import annotations

import time
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

_ATTR = "_redrafter_fast_linear"


@dataclass(frozen=True)
class FastLinearConfig:
    min_rows: int = 4  # M below this: F.linear, or padded up to it (see pad_small)
    packed_min_features: int = 16384  # out_features from which oneDNN's packed kernel is used
    dtypes: tuple[torch.dtype, ...] = (torch.float32,)  # weights dtypes to patch
    # M in [2, min_rows): zero-pad to min_rows rows and use the kernels (True), keep F.linear
    # (False), or None: per weight shape at patch time, time F.linear as is against F.linear
    # and the kernels on padded rows, and keep the fastest
    pad_small: bool | None = None


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _Kernel:
    """The weight copies of one patched `nn.Linear` and its dispatching forward."""

    def __init__(self, module: nn.Linear, config: FastLinearConfig) -> None:
        self.config = config
        self.packed = module.out_features >= config.packed_min_features and onednn_available()
        self.active = True  # `set_active(model, False)` routes everything to F.linear
        # rows in [2, min_rows): zero-padded to min_rows, then the kernels ("kernel") or
        # F.linear ("linear"), or left to F.linear as they are (None)
        self.pad_with: str | None = "kernel" if config.pad_small else None
        self.refresh(module)

    def refresh(self, module: nn.Linear) -> None:
        weight = module.weight.detach()
        self.source, self.version = module.weight, module.weight._version
        if self.packed:  # oneDNN's blocked layout; the batch-size hint (8) does not restrict M
            self.weight_t = None
            self.weight_packed = torch.ops.mkldnn._reorder_linear_weight(weight, 8)
        else:
            self.weight_t = weight.t().contiguous()  # [in, out]
            self.weight_packed = None

    def __call__(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        small = rows < self.config.min_rows
        if (
            not self.active
            or x.dtype != module.weight.dtype
            or (small and not (self.pad_with and rows >= 2))
            or (torch.is_grad_enabled() and (x.requires_grad or module.weight.requires_grad))
        ):
            return F.linear(x, module.weight, module.bias)  # autograd stays exact too
        if module.weight is not self.source or module.weight._version != self.version:
            self.refresh(module)
        x2 = x.reshape(rows, x.shape[-1])  # [M, in]
        if small:  # [min_rows, in]: zero rows, dropped below
            x2 = torch.cat([x2, x2.new_zeros(self.config.min_rows - rows, x2.shape[1])])
        if small and self.pad_with == "linear":
            y = F.linear(x2, module.weight, module.bias)[:rows]  # [M, out]
        else:
            y = self.matmul(module, x2)[:rows]  # [M, out]
        return y.view(*x.shape[:-1], y.shape[-1])

    def matmul(self, module: nn.Linear, x2: torch.Tensor) -> torch.Tensor:
        """x2 [M, in] -> [M, out] with the pre-transposed or pre-packed weight."""
        bias = None if module.bias is None else module.bias.detach()
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x2, self.weight_packed, bias, "none", [], "")
        return x2 @ self.weight_t if bias is None else torch.addmm(bias, x2, self.weight_t)


def _best_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


@torch.no_grad()
def _padding_choice(group: list[tuple[nn.Linear, _Kernel]]) -> str | None:
    """For layers of one weight shape: time F.linear on M = min_rows - 1 rows against F.linear
    and the kernels on min_rows zero-padded rows, each over every layer of the group in turn (so
    weights come from memory, as in a forward), and return the fastest padding if it saves at
    least 10%. On some BLAS builds F.linear's small-M path costs M times its M = 1 cost, so 3 rows
    cost more than 4 (AMD EPYC, 1 thread: LM head 36 ms at M = 3, 18 ms at 4, packed 6 ms)."""
    first = group[0][0]
    M = group[0][1].config.min_rows - 1
    if M < 2:
        return None
    x = torch.randn(M, first.in_features, dtype=first.weight.dtype)
    plain = _best_ms(lambda: [F.linear(x, m.weight, m.bias) for m, _ in group], repeats=3)
    times = {}
    for mode in ("linear", "kernel"):
        for _, kernel in group:
            kernel.pad_with = mode
        times[mode] = _best_ms(lambda: [k(m, x) for m, k in group], repeats=3)
    best = min(times, key=times.get)
    return best if times[best] < 0.9 * plain else None


def _fast_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return getattr(self, _ATTR)(self, x)


def _eligible(module: nn.Module, config: FastLinearConfig) -> bool:
    return (
        type(module) is nn.Linear
        and module.weight.device.type == "cpu"
        and module.weight.dtype in config.dtypes
    )


def patch_model(model: nn.Module, config: FastLinearConfig | None = None) -> int:
    """Route the eligible `nn.Linear` layers of `model` through the small-M kernels.

    Patches plain `nn.Linear` modules with CPU weights of a dtype in `config.dtypes` (a tied
    LM head included); returns how many were patched. Idempotent.
    """
    config = config or FastLinearConfig()
    kernels = [
        (m, _Kernel(m, config))
        for m in model.modules()
        if _eligible(m, config) and not hasattr(m, _ATTR)
    ]
    if config.pad_small is None:
        groups: dict[tuple, list] = {}  # (in, out, packed) -> [(module, kernel)]
        for m, k in kernels:
            groups.setdefault((m.in_features, m.out_features, k.packed), []).append((m, k))
        for group in groups.values():
            mode = _padding_choice(group)
            for _, k in group:
                k.pad_with = mode
    for m, k in kernels:
        setattr(m, _ATTR, k)
        m.forward = types.MethodType(_fast_forward, m)
    return len(kernels)


def padded_layers(model: nn.Module) -> int:
    """How many patched layers pad M in [2, min_rows) rows up to min_rows."""
    return sum(bool(getattr(m, _ATTR).pad_with) for m in model.modules() if hasattr(m, _ATTR))


def unpatch_model(model: nn.Module) -> int:
    """Undo `patch_model`: drop the weight copies and the instance forwards; returns the count."""
    count = 0
    for module in model.modules():
        if hasattr(module, _ATTR):
            delattr(module, _ATTR)
            del module.forward  # the instance attribute; the class's forward shows again
            count += 1
    return count


def set_active(model: nn.Module, active: bool) -> int:
    """Switch the patched layers between the small-M kernels and plain `F.linear` (no copies
    are made or dropped); returns the number of patched layers."""
    kernels = [getattr(m, _ATTR) for m in model.modules() if hasattr(m, _ATTR)]
    for kernel in kernels:
        kernel.active = active
    return len(kernels)


def is_patched(model: nn.Module) -> bool:
    return any(hasattr(m, _ATTR) for m in model.modules())
