"""Teacher outputs for drafter distillation, cached on disk in chunks.

A record is one position t of one token sequence x_0..x_{n-1} run through the frozen target:

    hidden[t]      [H]  the target's final-normed hidden state at t (fp16)
    next_token[t]       x_{t+1}, the token that follows t in the sequence
    topk_ids[t]    [K]  the target's K most likely next tokens at t (int32, best first)
    topk_logits[t] [K]  their logits (fp16)

Records of one sequence are contiguous; `seq_offsets` [S+1] marks where each sequence starts, so
a drafter trained at anchor t for depth i reads hidden[t], next_token[t..t+i-1] and the teacher
distribution at t+i without crossing into the next sequence.

A cache directory holds `chunk-NNNNNN.safetensors` files and `manifest.json` (written last and
atomically, so a chunk counts only once it is complete). Producers are resumable: the manifest
records how many input items (prompts or texts) the finished chunks cover.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from redrafter_rs._io import atomic_write, atomic_write_json
from redrafter_rs.drafters.recurrent import embedding_probe, target_embedding, target_mismatch
from redrafter_rs.engine.target import Target
from redrafter_rs.errors import RedrafterError, check

MANIFEST = "manifest.json"
CACHE_FORMAT = 1


@dataclass
class SequenceRecord:
    """Teacher outputs for the recorded positions of one sequence."""

    hidden: torch.Tensor  # [n, H] fp16
    next_token: torch.Tensor  # [n] int32
    topk_ids: torch.Tensor  # [n, K] int32
    topk_logits: torch.Tensor  # [n, K] fp16

    def __len__(self) -> int:
        return int(self.next_token.numel())


@dataclass
class Manifest:
    kind: str  # "selfdistill" or "text"
    top_k: int
    hidden_size: int
    vocab_size: int
    embedding_probe: list[float]
    items_done: int = 0  # input items (prompts / text windows) covered by the finished chunks
    chunks: list[dict] = field(default_factory=list)  # {"file", "positions", "sequences"}
    settings: dict = field(default_factory=dict)  # producer settings (for the model card)

    @property
    def positions(self) -> int:
        return sum(c["positions"] for c in self.chunks)


def new_manifest(model: nn.Module, kind: str, top_k: int, settings: dict) -> Manifest:
    weight = target_embedding(model).weight
    return Manifest(
        kind=kind,
        top_k=top_k,
        hidden_size=int(weight.shape[1]),
        vocab_size=int(weight.shape[0]),
        embedding_probe=embedding_probe(weight),
        settings=settings,
    )


def read_manifest(directory: str | Path) -> Manifest | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        check(raw.pop("format", None) == CACHE_FORMAT, f"unknown teacher cache format in {path}")
        return Manifest(**raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise RedrafterError(f"teacher cache: {path} is corrupt ({e})") from e


def check_manifest_target(manifest: Manifest, model: nn.Module, directory: Path) -> None:
    """Refuse a cache made with a different target."""
    weight = target_embedding(model).weight
    why = target_mismatch(
        weight, manifest.vocab_size, manifest.hidden_size, manifest.embedding_probe
    )
    check(
        why is None,
        f"teacher cache {directory} was made with a different target model ({why} mismatch)",
    )


class ChunkWriter:
    """Buffers sequence records and writes a chunk every `chunk_positions` positions."""

    def __init__(self, directory: str | Path, manifest: Manifest, chunk_positions: int) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self.chunk_positions = chunk_positions
        self.buffer: list[SequenceRecord] = []
        self.items_in_buffer = 0

    def add(self, records: list[SequenceRecord], items: int) -> None:
        """Add the records of `items` finished input items; flush when the chunk is full."""
        self.buffer.extend(r for r in records if len(r))
        self.items_in_buffer += items
        if sum(len(r) for r in self.buffer) >= self.chunk_positions:
            self.flush()

    def flush(self) -> None:
        if not self.items_in_buffer:
            return
        index = len(self.manifest.chunks)
        name = f"chunk-{index:06d}.safetensors"
        if self.buffer:
            save_chunk(self.directory / name, self.buffer)
            info = {
                "file": name,
                "positions": sum(len(r) for r in self.buffer),
                "sequences": len(self.buffer),
            }
            self.manifest.chunks.append(info)
        self.manifest.items_done += self.items_in_buffer
        write_manifest(self.directory, self.manifest)
        self.buffer, self.items_in_buffer = [], 0


def write_manifest(directory: Path, manifest: Manifest) -> None:
    atomic_write_json(directory / MANIFEST, {"format": CACHE_FORMAT, **asdict(manifest)})


def save_chunk(path: Path, records: list[SequenceRecord]) -> None:
    from safetensors.torch import save_file

    lengths = torch.tensor([0] + [len(r) for r in records], dtype=torch.int64)
    tensors = {
        "hidden": torch.cat([r.hidden for r in records]).to(torch.float16).contiguous(),
        "next_token": torch.cat([r.next_token for r in records]).to(torch.int32).contiguous(),
        "topk_ids": torch.cat([r.topk_ids for r in records]).to(torch.int32).contiguous(),
        "topk_logits": torch.cat([r.topk_logits for r in records]).to(torch.float16).contiguous(),
        "seq_offsets": lengths.cumsum(0),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def load_chunks(directory: str | Path, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """All finished chunks of a cache, concatenated (seq_offsets made global)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = read_manifest(directory)
    check(manifest is not None, f"teacher cache: no {MANIFEST} in {directory}")
    check(manifest.chunks, f"teacher cache: {directory} has no finished chunks yet")
    if model is not None:
        check_manifest_target(manifest, model, directory)
    parts: list[dict[str, torch.Tensor]] = []
    for info in manifest.chunks:
        try:
            parts.append(load_file(str(directory / info["file"])))
        except (SafetensorError, OSError) as e:
            raise RedrafterError(f"teacher cache: chunk {info['file']} is unreadable ({e})") from e
    return concat_chunks(parts)


def concat_chunks(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Loaded chunks (or caches) as one, `seq_offsets` made global."""
    offsets, base = [torch.zeros(1, dtype=torch.int64)], 0
    for part in parts:
        offsets.append(part["seq_offsets"][1:] + base)
        base += int(part["seq_offsets"][-1])
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "seq_offsets"}
    out["seq_offsets"] = torch.cat(offsets)
    return out


# ---- teacher forcing over text ----------------------------------------------------------------
def record_positions(
    hidden: torch.Tensor, logits: torch.Tensor, next_token: torch.Tensor, top_k: int
) -> SequenceRecord:
    """A record from hidden [n, H], logits [n, V] and next tokens [n]."""
    values, ids = logits.float().topk(top_k, dim=-1)  # [n, K]
    return SequenceRecord(
        hidden=hidden.detach().to(torch.float16).cpu(),
        next_token=next_token.to(torch.int32).cpu(),
        topk_ids=ids.to(torch.int32).cpu(),
        topk_logits=values.to(torch.float16).cpu(),
    )


@torch.no_grad()
def teacher_force(
    model: nn.Module, windows: list[list[int]], top_k: int, start: list[int] | None = None
) -> list[SequenceRecord]:
    """Teacher outputs for token windows (one batch, right-padded); positions >= start[b] only."""
    target = Target(model)
    B, T = len(windows), max(len(w) for w in windows)
    ids = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, w in enumerate(windows):
        ids[b, : len(w)] = torch.tensor(w)
        mask[b, : len(w)] = 1
    ids, mask = ids.to(target.device), mask.to(target.device)
    hidden = target.forward(ids, target.new_cache(), attention_mask=mask)  # [B, T, H]
    records = []
    for b, w in enumerate(windows):
        lo, hi = (start[b] if start else 0), len(w) - 1  # the last token has no successor
        h = hidden[b, lo:hi]  # [n, H]
        records.append(record_positions(h, target.logits(h), ids[b, lo + 1 : hi + 1], top_k))
    return records


def text_windows(token_lists: Iterable[list[int]], window: int) -> Iterator[list[int]]:
    """Split token lists into windows of at most `window` tokens (short tails dropped)."""
    for tokens in token_lists:
        for lo in range(0, len(tokens), window):
            piece = tokens[lo : lo + window]
            if len(piece) >= 16:
                yield piece
