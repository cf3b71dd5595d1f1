"""Draft-model mode: a separate small causal LM (or a cheap copy of the target) proposes into the
same tree (docs/design.md §6).

`DraftModelDrafter(draft_model)` runs any Hugging Face causal LM that shares the target's
tokenizer: per step it proposes W beams of L tokens by beam search over its own next-token
log-probabilities (or a best-nodes tree of N tokens), from the root, the target's own next token.
Exact by construction: the target verifies every proposal, so the draft model only decides how
many tokens a step keeps.

Its KV cache follows the engine's requests: rows are keyed by request id, a new request is
prefilled with its context (prompt + emitted tokens, the root excluded), and at every step each
row first appends the tokens accepted since its last draft (a ragged append in one forward, rows
padded on the right and masked). The search then feeds the root and every depth's W beam tokens
as one forward each, under a tree attention mask (each token sees the context and its own beam's
earlier tokens), and those entries are cut off again afterwards. A finished request's row leaves
at once (`release`). Sliding-window draft models get their window masks as the target does.

Two drafts that need no second model:
- `early_exit(target, layers=k)`: the target's own first k decoder layers, its final norm and its
  LM head (self-speculation as in LayerSkip; the weights are shared, nothing is copied).
- `quantized_copy(target)`: an int8 copy of the target (torch dynamic quantization of its linear
  layers; CPU).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Hashable, Sequence

import numpy as np
import torch
from torch import nn

from redrafter_rs.drafters.protocol import require_context
from redrafter_rs.drafters.search import search_beams, search_best_nodes
from redrafter_rs.engine.cache import BatchCache, crop
from redrafter_rs.engine.target import Target
from redrafter_rs.engine.transfer import to_device_async
from redrafter_rs.errors import RedrafterError, check


class _TreeSteps:
    """The draft LM as search `Steps`: every call feeds one token per live path [B, w] at
    depth d (positions pos + d) under a tree mask; a path's state is its ancestry over the
    tree slots fed so far [B, w, K] (bool)."""

    def __init__(self, lm: Target, cache: BatchCache, pos: torch.Tensor) -> None:
        self.lm, self.cache, self.pos = lm, cache, pos  # pos [B]: the root's position
        self.size = lm.vocab_size
        self.depth = 0
        self.slot_pos: list[torch.Tensor] = []  # positions of the tree slots fed, per call

    def initial(self) -> torch.Tensor:
        return torch.zeros(len(self.pos), 1, 0, dtype=torch.bool, device=self.pos.device)

    def step(self, state: torch.Tensor, last: torch.Tensor):
        B, w = last.shape
        q_pos = (self.pos + self.depth)[:, None].expand(B, w)  # [B, w]
        own = torch.eye(w, dtype=torch.bool, device=last.device).expand(B, w, w)
        tree = torch.cat([state, own], dim=-1)  # [B, w, K + w]: ancestors, then itself
        mask = self.cache.tree_mask(tree)  # [B, 1, w, S + K + w]
        self.slot_pos.append(q_pos)
        k_pos = torch.cat([self.cache.positions, *self.slot_pos], dim=1)
        hidden = self.lm.forward(
            last, self.cache.cache, self.lm.tree_masks(mask, q_pos, k_pos), position_ids=q_pos
        )
        log_q = torch.log_softmax(self.lm.logits(hidden).float(), dim=-1)  # [B, w, V]
        self.depth += 1
        return tree, log_q

    def tokens(self, index: torch.Tensor) -> torch.Tensor:
        return index


class DraftModelDrafter:
    """Proposals from a separate causal LM with the target's tokenizer (see the module docs).

    `draft_model`: a Hugging Face causal LM on the target's device. `tokenizer` and
    `target_tokenizer` (optional): when both are given, their vocabularies must be identical;
    the vocabulary sizes of the two models must match in any case (checked against the target).
    """

    uses_context = True
    drafts_trees = True

    def __init__(self, draft_model: nn.Module, tokenizer=None, target_tokenizer=None) -> None:
        self.model = draft_model
        self.lm = Target(draft_model)  # the same checks as a target: a KV cache, 4D masks
        if tokenizer is not None and target_tokenizer is not None:
            check(
                tokenizer.get_vocab() == target_tokenizer.get_vocab(),
                "the draft model's tokenizer differs from the target's: a draft model must "
                "share the target's vocabulary (token ids mean the same text)",
            )
        self.__rows: list[Hashable] = []  # request id per cache row
        self._index: dict[Hashable, int] = {}  # request id -> cache row
        self._released: set[Hashable] = set()  # finished rows, dropped at the next draft
        self._cache: BatchCache | None = None

    def check_target(self, model: nn.Module) -> None:
        target = Target(model) if not isinstance(model, Target) else model
        check(
            self.lm.vocab_size == target.vocab_size,
            f"the draft model's vocabulary ({self.lm.vocab_size} tokens) differs from the "
            f"target's ({target.vocab_size}): a draft model must share the target's tokenizer",
        )
        check(
            self.lm.device == target.device,
            f"the draft model is on {self.lm.device}, the target on {target.device}: move "
            "them to the same device",
        )

    # ---- the drafter protocol -----------------------------------------------------------
    @torch.no_grad()
    def draft(
        self,
        hidden: torch.Tensor,
        root: torch.Tensor,
        *,
        embed: nn.Module,
        beam_width: int,
        beam_length: int,
        context: Sequence[torch.Tensor] | None = None,
        request_ids: Sequence[Hashable] | None = None,
        tree_nodes: int | None = None,
    ) -> torch.Tensor:
        """Beams [B, W, L] (or a best-nodes tree [B, N, L]) starting with `root` [B]."""
        require_context(self, context, request_ids)
        contexts = [torch.as_tensor(c).reshape(-1).cpu() for c in context]
        self._align(list(request_ids), contexts)
        self._catch_up(contexts)
        cache = self._cache
        width = cache.width
        pos = to_device_async(cache.filled, self.lm.device)  # [B] the root's position
        steps = _TreeSteps(self.lm, cache, pos)
        root = root.to(self.lm.device)
        try:
            if tree_nodes is None:
                beams = search_beams(steps, root, beam_width, beam_length)
            else:
                beams = search_best_nodes(steps, root, tree_nodes, beam_width, beam_length)
        finally:
            crop(cache.cache, width)  # the drafted tokens' entries leave the cache again
        return beams

    def release(self, request_id: Hashable) -> None:
        """Drop a finished request's row (the engine calls this when it ends). Rows leave in
        one batch at the next draft (a row at a time would cost O(batch) each); the cache is
        freed at once when no live row is left."""
        if request_id in self._index:
            self._released.add(request_id)
            if len(self._released) == len(self._rows):
                self._keep([])

    # ---- the cache ----------------------------------------------------------------------
    @property
    def _rows(self) -> list[Hashable]:
        return self.__rows

    @_rows.setter
    def _rows(self, rows: list[Hashable]) -> None:
        self.__rows = rows
        self._index = {r: i for i, r in enumerate(rows)}

    def _keep(self, rows: list[Hashable]) -> None:
        """Keep (and order) the cache rows of `rows`, all of which are cached."""
        if not rows:
            self._rows, self._cache = [], None
            self._released.clear()
            return
        if rows == self._rows:
            return
        self._cache.select([self._index[r] for r in rows])
        self._rows = rows

    def _align(self, request_ids: list[Hashable], contexts: list[torch.Tensor]) -> None:
        """Cache rows for exactly `request_ids`, in that order: new requests are prefilled
        with their context less the root, requests gone from the batch are dropped."""
        check(
            len(set(request_ids)) == len(request_ids),
            "DraftModelDrafter.draft: request_ids must be distinct",
        )
        wanted = set(request_ids)
        released, self._released = self._released, set()  # a reused id starts afresh
        new = [i for i, rid in enumerate(request_ids) if rid not in self._index or rid in released]
        self._keep([r for r in self._rows if r in wanted and r not in released])
        stale = [
            i
            for i, rid in enumerate(request_ids)
            if rid in self._index and self._cache.filled[self._index[rid]] >= len(contexts[i])
        ]  # a reused id whose context is shorter than what is cached: start it again
        if stale:
            gone = {request_ids[i] for i in stale}
            self._keep([r for r in self._rows if r not in gone])
            new += stale
        if new:
            self._prefill([request_ids[i] for i in new], [contexts[i][:-1] for i in new])
        self._keep(request_ids)

    def _prefill(self, ids: list[Hashable], prompts: list[torch.Tensor]) -> None:
        check(
            all(len(p) >= 1 for p in prompts),
            "DraftModelDrafter: a request's context must hold the prompt and the root",
        )
        part, _, _ = self.lm.prefill([p.tolist() for p in prompts])
        if self._cache is None:
            self._cache = part
        else:
            self._cache.merge(part)
        self._rows = self._rows + ids

    def _catch_up(self, contexts: list[torch.Tensor]) -> None:
        """Append each row's context tokens since its last draft (the root excluded), ragged
        rows padded on the right, in one forward."""
        cache = self._cache
        need = [c[int(n) : len(c) - 1] for c, n in zip(contexts, cache.filled, strict=True)]
        D = max(len(t) for t in need)
        if D == 0:
            return
        device = self.lm.device
        B = len(need)
        tokens = torch.zeros(B, D, dtype=torch.long)
        valid = np.zeros((B, D), dtype=bool)
        for b, t in enumerate(need):
            tokens[b, : len(t)] = t
            valid[b, : len(t)] = True
        valid_d = to_device_async(valid, device, torch.bool)
        positions = to_device_async(cache.filled, device)[:, None] + torch.arange(D, device=device)
        causal = torch.ones(D, D, dtype=torch.bool, device=device).tril()
        eye = torch.eye(D, dtype=torch.bool, device=device)
        # a padding query sees only itself: its (unused) entries stay finite
        chunk = (causal & valid_d[:, None, :]) | eye  # [B, D, D]
        mask = cache.tree_mask(chunk)  # [B, 1, D, S + D]
        k_pos = torch.cat([cache.positions, positions], dim=1)
        self.lm.forward(
            tokens.to(device),
            cache.cache,
            self.lm.tree_masks(mask, positions, k_pos),
            position_ids=positions,
        )
        cache.extend(valid, positions)  # each row's count of cached context tokens grows
        if cache.waste() > 0.5:  # ragged appends leave holes: squeeze them now and then
            cache.compact()


def _decoder_layers(model: nn.Module) -> tuple[nn.Module, str]:
    """The decoder body of `model` and the name of its layer list."""
    base = model.base_model
    for name in ("layers", "h", "blocks"):
        if isinstance(getattr(base, name, None), nn.ModuleList):
            return base, name
    raise RedrafterError(
        f"{type(model).__name__}: no decoder layer list (layers / h / blocks) to exit early from"
    )


def early_exit(model: nn.Module, layers: int) -> nn.Module:
    """The target's first `layers` decoder layers with its final norm and LM head, as a causal
    LM that shares the target's weights (LayerSkip-style self-speculation; nothing is copied,
    the target is unchanged)."""
    base, name = _decoder_layers(model)
    total = len(getattr(base, name))
    check(
        isinstance(layers, int) and 1 <= layers < total,
        f"early_exit: layers must be in [1, {total - 1}] for a target of {total} layers, "
        f"got {layers!r}",
    )
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:layers]
    shallow_base = copy.copy(base)
    shallow_base._modules = dict(base._modules)
    shallow_base._modules[name] = nn.ModuleList(list(getattr(base, name))[:layers])
    shallow_base.config = config
    shallow = copy.copy(model)
    shallow._modules = dict(model._modules)
    prefix = model.base_model_prefix
    shallow._modules[prefix] = shallow_base
    shallow.config = config
    return shallow


def quantized_copy(model: nn.Module) -> nn.Module:
    """An int8 copy of `model` for drafting on the CPU: torch's dynamic quantization of every
    linear layer (weights int8, activations quantized on the fly); the target is unchanged."""
    check(
        next(model.parameters()).device.type == "cpu",
        "quantized_copy: torch dynamic int8 quantization runs on the CPU only",
    )
    try:  # deprecated in torch (torchao replaces it) but still shipped; a clean error if gone
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:
        raise RedrafterError(
            "quantized_copy needs torch.ao.quantization.quantize_dynamic, which this torch "
            f"({torch.__version__}) no longer ships; draft with early_exit() or a small LM"
        ) from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        return quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8).eval()


DRAFT_MODEL_HELP = (
    "draft-model mode: DIR (a Hugging Face causal LM with the target's tokenizer), "
    "early-exit:K (the target's first K layers + its LM head) or int8 (an int8 copy of the "
    "target, CPU)"
)


def from_spec(spec: str, target: nn.Module, target_tokenizer=None) -> tuple[DraftModelDrafter, str]:
    """(drafter, label) for a command-line draft-model spec (`DRAFT_MODEL_HELP`)."""
    from pathlib import Path

    text = str(spec).strip()
    if text == "int8":
        return DraftModelDrafter(quantized_copy(target)), "int8"
    if text.startswith("early-exit:"):
        k = text.partition(":")[2]
        check(k.isdigit(), f"--draft-model {spec!r}: early-exit:K needs a layer count K")
        return DraftModelDrafter(early_exit(target, int(k))), f"early-exit-{int(k)}"
    path = Path(text)
    check(
        (path / "config.json").is_file(),
        f"--draft-model {spec!r}: not a model directory (no config.json), early-exit:K or int8",
    )
    from transformers import AutoTokenizer

    from redrafter_rs.models import load_causal_lm

    weight = target.get_input_embeddings().weight
    model = load_causal_lm(path, dtype=weight.dtype, device=weight.device)
    tokenizer = AutoTokenizer.from_pretrained(path) if target_tokenizer is not None else None
    return DraftModelDrafter(model, tokenizer, target_tokenizer), path.name
