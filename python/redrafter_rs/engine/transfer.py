"""Host <-> device staging of the small per-step integer arrays.

On CUDA the arrays go through reusable pinned host buffers with non-blocking copies; elsewhere
they are plain zero-copy `numpy` <-> `torch` views. Full logits never leave the device.

Synchronisations (docs/design.md §4): a decode step waits for the device exactly where the
algorithm needs device results on the host, and nowhere else:
  1. the drafted beams, which the Rust core packs into the tree (`to_host`);
  2. the target's token at every node, which the Rust core walks to accept (`to_host`).
Everything the host sends the device (the packed tree, the acceptance, the KV plan) is copied
from pinned buffers without waiting (`to_device`). `syncs` counts the waits (1 and 2 above).
A drafter that computes on the host (retrieval, an oracle) returns host beams, and handing them
over costs no wait at all.
"""

from __future__ import annotations

import numpy as np
import torch


class Staging:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._pinned: dict[str, torch.Tensor] = {}
        self._copied: dict[str, torch.cuda.Event] = {}  # the last H2D copy out of each buffer
        self.handoffs = 0  # `to_host` calls so far (device results the host needs)
        self.syncs = 0  # of which waits for the device (a CUDA tensor's copy)

    def pinned(self, name: str) -> torch.Tensor | None:
        """The pinned host buffer of transfer `name` (None until a CUDA transfer made it)."""
        return self._pinned.get(name)

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A pinned host buffer with `like`'s shape and dtype, reused across steps."""
        buf = self._pinned.get(name)
        if buf is None or buf.numel() < like.numel() or buf.dtype != like.dtype:
            buf = torch.empty(max(like.numel(), 1), dtype=like.dtype, pin_memory=True)
            self._pinned[name] = buf
            self._copied.pop(name, None)
        done = self._copied.pop(name, None)
        if done is not None and not done.query():
            # The previous non-blocking copy out of this buffer must finish before the host
            # overwrites it. In the engine a later `to_host` has always waited for it already
            # (the query says done); this wait keeps other callers safe.
            done.synchronize()
        return buf[: like.numel()].view(like.shape)

    def to_host(self, t: torch.Tensor, name: str) -> np.ndarray:
        """A C-contiguous numpy view of `t` (one wait on CUDA when `t` is on the device)."""
        self.handoffs += 1
        if not (self.cuda and t.device.type == "cuda"):
            return t.contiguous().numpy()
        buf = self._buffer(name, t)
        buf.copy_(t, non_blocking=True)
        torch.cuda.current_stream(t.device).synchronize()
        self.syncs += 1
        return buf.numpy()

    def to_device(self, arr: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
        """Host `arr` on the target device (no copy on CPU; pinned + non-blocking on CUDA)."""
        t = torch.from_numpy(np.ascontiguousarray(arr)) if isinstance(arr, np.ndarray) else arr
        if not self.cuda:
            return t
        buf = self._buffer(name, t)
        buf.copy_(t)
        out = buf.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self._copied[name] = event
        return out


def to_device_async(values, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A small host list/array as a tensor on `device` without a host wait: through a fresh
    pinned buffer and a non-blocking copy on CUDA (the buffer is kept alive by the copy), a
    plain tensor elsewhere."""
    t = torch.as_tensor(values, dtype=dtype)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)
