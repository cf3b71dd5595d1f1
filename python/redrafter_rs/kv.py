"""KV-cache upkeep after verification: keep the accepted path, drop the rest of the tree.

Cost is proportional to the tree (a gather of at most L slots per layer), never to the context.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache


def keep_accepted(cache: DynamicCache, ctx_len: int, path: np.ndarray) -> None:
    """Move tree slots `ctx_len + path` [m] to `ctx_len .. ctx_len+m` and drop everything after.

    `path` holds packed node indices of batch row 0 in increasing depth order (root first).
    """
    m = int(path.shape[0])
    moved = not np.array_equal(path, np.arange(m))
    src = None
    for layer in cache.layers:
        if moved:
            if src is None:
                src = torch.as_tensor(path + ctx_len, device=layer.keys.device)  # [m]
            for name in ("keys", "values"):
                kv = getattr(layer, name)  # [B, heads, ctx+N, D]
                kv[:, :, ctx_len : ctx_len + m] = kv.index_select(2, src)
        layer.keys = layer.keys[:, :, : ctx_len + m]
        layer.values = layer.values[:, :, : ctx_len + m]
