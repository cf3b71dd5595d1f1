"""Host <-> device staging of the small per-step integer arrays.

On CUDA the arrays go through reusable pinned host buffers with non-blocking copies; elsewhere
they are plain zero-copy `numpy` <-> `torch` views. Full logits never leave the device.
"""

from __future__ import annotations

import numpy as np
import torch


class Staging:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._pinned: dict[str, torch.Tensor] = {}

    def pinned(self, name: str) -> torch.Tensor | None:
        """The pinned host buffer of transfer `name` (None until a CUDA transfer made it)."""
        return self._pinned.get(name)

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A pinned host buffer with `like`'s shape and dtype, reused across steps."""
        buf = self._pinned.get(name)
        if buf is None or buf.numel() < like.numel() or buf.dtype != like.dtype:
            buf = torch.empty(max(like.numel(), 1), dtype=like.dtype, pin_memory=True)
            self._pinned[name] = buf
        return buf[: like.numel()].view(like.shape)

    def to_host(self, t: torch.Tensor, name: str) -> np.ndarray:
        """A C-contiguous numpy view of device tensor `t` (one sync on CUDA)."""
        if not self.cuda:
            return t.contiguous().numpy()
        buf = self._buffer(name, t)
        buf.copy_(t, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return buf.numpy()

    def to_device(self, arr: np.ndarray, name: str) -> torch.Tensor:
        """`arr` on the target device (no copy on CPU; pinned + non-blocking on CUDA)."""
        t = torch.from_numpy(arr)
        if not self.cuda:
            return t
        buf = self._buffer(name, t)
        buf.copy_(t)
        return buf.to(self.device, non_blocking=True)
