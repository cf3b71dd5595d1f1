"""The batch's KV cache: an HF `DynamicCache` plus a per-row mask of valid slots.

Rows share one slot axis of width S. After a verification step every row keeps its accepted path
(Rust's `kv_gather` plan) in the first M tree slots; a row that accepted fewer tokens than the
longest one leaves masked holes there. Per step the upkeep touches only the tree slots (O(tree),
never O(context)). Holes are squeezed out by `compact()` only when they waste more than half the
cache (O(context), amortised over many steps), rows join with `merge()` and leave with
`select()` - both O(context) but once per join/leave, not per step.

Slot order inside a row does not matter: keys are stored with their rotary position already
applied, and positions are tracked per row by the engine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from redrafter_rs.engine.transfer import to_device_async


class SlotLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values live in pre-allocated buffers [B, h, capacity, D].

    `update` writes the new entries into free slots (no `torch.cat` of the whole cache per layer
    and step; a full buffer grows by half again, O(1) amortised) and returns views of the filled
    part.
    Assigning `keys`/`values` a prefix view of its buffer (the engine's crop after verification)
    only moves that buffer's fill mark; assigning any other tensor adopts it as the new buffer
    (joins, leaves and compaction, once per event).
    """

    def __init__(self, **kwargs) -> None:
        self._buf: dict[str, torch.Tensor | None] = {"keys": None, "values": None}
        self._fill = {"keys": 0, "values": 0}
        super().__init__(**kwargs)

    def _get(self, name: str) -> torch.Tensor | None:
        buf = self._buf[name]
        return None if buf is None else buf[:, :, : self._fill[name]]

    def _set(self, name: str, t: torch.Tensor | None) -> None:
        buf = self._buf[name]
        if t is None or t.dim() != 4:  # unset, or DynamicLayer's empty placeholder
            self._buf[name], self._fill[name] = None, 0
            return
        prefix = (
            buf is not None
            and t.data_ptr() == buf.data_ptr()
            and t.shape[:2] == buf.shape[:2]
            and t.shape[3] == buf.shape[3]
            and t.stride() == buf.stride()
            and t.shape[2] <= buf.shape[2]
        )
        if not prefix:
            self._buf[name] = t  # adopted as is; the next append grows it
        self._fill[name] = t.shape[2]

    keys = property(lambda self: self._get("keys"), lambda self, t: self._set("keys", t))
    values = property(lambda self: self._get("values"), lambda self, t: self._set("values", t))

    def _append(self, name: str, new: torch.Tensor) -> None:
        buf, start = self._buf[name], self._fill[name]
        end = start + new.shape[2]
        if buf is None or end > buf.shape[2]:  # grow: keep headroom for the steps to come
            B, h, _, D = new.shape
            cap = end + max(end // 2, 64)
            grown = new.new_empty(B, h, cap, D)
            if start:
                grown[:, :, :start] = buf[:, :, :start]
            self._buf[name] = buf = grown
        buf[:, :, start:end] = new
        self._fill[name] = end

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.device = key_states.device
            self.is_initialized = True
        self._append("keys", key_states)
        self._append("values", value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._fill["keys"]


class SlotCache(DynamicCache):
    """An HF cache of `SlotLayer`s: what the engine's target runs on (full-attention layers)."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=SlotLayer)


def _layers(cache: DynamicCache) -> list:
    return [layer for layer in cache.layers if getattr(layer, "keys", None) is not None]


def crop(cache: DynamicCache, length: int) -> None:
    """Drop every cache entry past the first `length` slots of every layer (a SlotLayer only
    moves its fill mark)."""
    for layer in _layers(cache):
        layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]


def _copy_to(device: torch.device):
    """The default `to_device(array, name)`: a plain copy of a host array to `device`."""
    return lambda array, _name: torch.as_tensor(array, device=device)


def _pad_left(x: torch.Tensor, width: int) -> torch.Tensor:
    """[B, h, S, D] -> [B, h, width, D] with zero slots on the left."""
    return F.pad(x, (0, 0, width - x.shape[2], 0))


class BatchCache:
    """The batch's cache with its slot mask `valid` [B, S] and each slot's token position
    `positions` [B, S] (both on the device; positions are read by sliding-window masks), and each
    row's count of valid slots `filled` [B] (on the host, so that no step reads the mask back)."""

    def __init__(
        self, cache: DynamicCache, valid: torch.Tensor, filled=None, positions=None
    ) -> None:
        self.cache = cache
        self.valid = valid  # [B, S] bool: slot s of row b holds a real token
        if positions is None:  # a row's valid slots in order, from 0
            positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        self.positions = positions  # [B, S] int64 (any value in invalid slots)
        if filled is None:  # a device read, once per construction
            filled = valid.sum(1).cpu()
        self.filled = np.asarray(filled, dtype=np.int64).reshape(-1).copy()

    @property
    def width(self) -> int:
        return self.valid.shape[1]

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def dense(self) -> bool:
        """No holes or padding: a lone query needs no mask."""
        return bool((self.filled == self.width).all())

    def tree_mask(self, tree_mask: torch.Tensor) -> torch.Tensor:
        """[B, 1, N, S + N] attention mask: valid context slots + the tree's own mask [B, N, N]."""
        B, N, _ = tree_mask.shape
        ctx = self.valid[:, None, None, :].expand(B, 1, N, self.width)
        return torch.cat([ctx, tree_mask[:, None]], dim=-1)

    def keep_accepted(
        self, gather: np.ndarray, valid: np.ndarray, start: torch.Tensor, to_device=None
    ) -> None:
        """Keep tree slots `gather` [B, M] (node indices) after the context; drop the rest.
        `valid` [B, M] (host) marks the kept slots that hold accepted tokens: the accepted path,
        whose slot j holds position start[b] + j (`start` [B]: the rows' positions before the
        step). `to_device(array, name)` moves host arrays to the device (default: a copy)."""
        S = self.width
        B, M = gather.shape
        moved = not (gather == np.arange(M)).all()
        device = self.valid.device
        to_device = to_device or _copy_to(device)
        if moved:
            idx = to_device(gather, "kv_gather")  # [B, M]
        for layer in _layers(self.cache):
            if moved:
                for name in ("keys", "values"):
                    kv = getattr(layer, name)  # [B, h, S + N, D]
                    h, D = kv.shape[1], kv.shape[3]
                    index = idx[:, None, :, None].expand(B, h, M, D)
                    kv[:, :, S : S + M] = kv[:, :, S:].gather(2, index)
            layer.keys = layer.keys[:, :, : S + M]
            layer.values = layer.values[:, :, : S + M]
        new = start[:, None] + torch.arange(M, device=device)[None]  # [B, M]
        self.extend(valid, new, to_device)

    def extend(self, valid: np.ndarray, positions: torch.Tensor, to_device=None) -> None:
        """Record D slots that a forward just appended to every row: `valid` [B, D] (host)
        marks the real ones (a ragged append pads rows on the right, a step's accepted paths
        leave holes), `positions` [B, D] their token positions."""
        to_device = to_device or _copy_to(self.valid.device)
        self.valid = torch.cat([self.valid, to_device(valid, "kv_valid")], dim=1)
        self.positions = torch.cat([self.positions, positions], dim=1)
        self.filled += valid.sum(1)

    def select(self, rows) -> torch.Tensor:
        """Keep only batch rows `rows` (host ints; a finished request stops costing compute).
        Returns the device index it used, for the caller's own per-row tensors."""
        rows = [int(r) for r in rows]
        idx = to_device_async(rows, self.valid.device)
        for layer in _layers(self.cache):
            layer.keys = layer.keys[idx]
            layer.values = layer.values[idx]
        self.valid = self.valid[idx]
        self.positions = self.positions[idx]
        self.filled = self.filled[rows]
        return idx

    def merge(self, other: BatchCache) -> None:
        """Append `other`'s rows; both are left-padded to the wider slot axis."""
        width = max(self.width, other.width)
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache), strict=True):
            for name in ("keys", "values"):
                a, b = getattr(mine, name), getattr(theirs, name)
                setattr(mine, name, torch.cat([_pad_left(a, width), _pad_left(b, width)], 0))
        valid = [F.pad(v.valid, (width - v.width, 0)) for v in (self, other)]
        pos = [F.pad(v.positions, (width - v.width, 0)) for v in (self, other)]
        self.valid, self.positions = torch.cat(valid), torch.cat(pos)
        self.filled = np.concatenate([self.filled, other.filled])

    def waste(self) -> float:
        """Fraction of slots that are holes or padding (from the host counts: no device read)."""
        return 1.0 - float(self.filled.sum()) / max(self.batch * self.width, 1)

    def compact(self) -> None:
        """Squeeze out holes: every row's valid slots, in order, right-aligned."""
        keep = int(self.filled.max(initial=0))
        order = torch.sort(self.valid.to(torch.int8), dim=1, stable=True).indices  # holes first
        idx = order[:, self.width - keep :]  # [B, keep]
        for layer in _layers(self.cache):
            for name in ("keys", "values"):
                kv = getattr(layer, name)
                B, h, _, D = kv.shape
                setattr(layer, name, kv.gather(2, idx[:, None, :, None].expand(B, h, keep, D)))
        self.valid = self.valid.gather(1, idx)
        self.positions = self.positions.gather(1, idx)
