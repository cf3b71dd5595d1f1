"""A thin view of a Hugging Face causal LM as a speculative-decoding target.

Runs the decoder body (not the `*ForCausalLM` wrapper) so that only the final-normed hidden
state is produced, then applies the LM head to exactly the rows that need logits.

Which models can be a target (docs/design.md §4): decoder-only attention models whose layers are
full or sliding-window attention over a KV cache the engine can cut back after verification.
Sliding-window layers get their own tree mask (a key at position k is visible from a query at
position q when q - k < window, as in transformers), so they run at any context the model
supports: one mask for every layer (Mistral, Phi-3, Mixtral, Qwen3-MoE: `sliding_window` set), or
a mask per layer type (`config.layer_types`: Gemma-2/3, Qwen2/3) passed as transformers' mapping.
Refused at construction, with the reason: encoder-decoder models, models without a KV cache
(RWKV-style recurrent state cannot be rolled back past a rejected draft), layer types other than
full and sliding attention (Mamba, Jamba, Bamba, RecurrentGemma: linear-attention or hybrid
layers), and attention backends that take no explicit 4D mask.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import DynamicCache

from redrafter_rs.engine.cache import BatchCache, SlotCache
from redrafter_rs.errors import RedrafterError, check

MASK_BACKENDS = ("sdpa", "eager", "flex_attention")  # attention backends that take a 4D mask
LAYER_TYPES = ("full_attention", "sliding_attention")


def left_pad(prompts, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded batch: ids [B, T] (pad_id where padded) and attention mask [B, T] from
    prompts of different lengths (lists of ids or 1-D tensors), on the CPU."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.as_tensor(p, dtype=torch.long)
        mask[i, T - len(p) :] = 1
    return ids, mask


def _cache_kwarg(decoder: nn.Module) -> str:
    """The forward argument that takes the KV cache: `cache` in recent transformers (5.24 has it
    and deprecates `past_key_values`, to be removed in 5.40), `past_key_values` before."""
    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class Target:
    """Wraps `model` (an HF `PreTrainedModel` for causal LM). Holds no state between calls."""

    def __init__(self, model: nn.Module) -> None:
        check(
            hasattr(model, "get_input_embeddings") and hasattr(model, "get_output_embeddings"),
            f"target must be a Hugging Face causal LM, got {type(model).__name__}",
        )
        self.model = model
        self.config = model.config
        self.decoder = model.base_model
        self.embed = model.get_input_embeddings()
        self.lm_head = model.get_output_embeddings()
        check(self.lm_head is not None, "target model has no output embeddings (LM head)")
        self.vocab_size, self.hidden_size = self.embed.weight.shape
        self.softcap = getattr(self.config, "final_logit_softcapping", None)
        self.attn_impl = getattr(self.config, "_attn_implementation", "sdpa")
        self.max_positions = getattr(self.config, "max_position_embeddings", None)
        self._cache_kwarg = _cache_kwarg(self.decoder)
        self._check_supported(model)
        types = set(getattr(self.config, "layer_types", None) or ())
        # transformers' per-layer-type mask mapping, for models whose layers differ
        self.per_layer_type = "sliding_attention" in types

    def _check_supported(self, model: nn.Module) -> None:
        """Refuse, with the reason, a model the engine cannot verify trees on (at construction,
        not inside a step)."""
        name = type(model).__name__
        check(
            not getattr(self.config, "is_encoder_decoder", False),
            f"{name} is an encoder-decoder model; redrafter-rs speculates for decoder-only causal "
            "LMs",
        )
        params = inspect.signature(self.decoder.forward).parameters
        check(
            self._cache_kwarg in params,
            f"{name} takes no KV cache (its forward has no `cache` or `past_key_values`): a "
            "recurrent state cannot be rolled back to the accepted prefix after a rejected "
            "draft; redrafter-rs needs an attention KV cache",
        )
        other = sorted(set(getattr(self.config, "layer_types", None) or ()) - set(LAYER_TYPES))
        check(
            not other,
            f"{name} has layer types {other}: the engine verifies trees only on full and "
            "sliding-window attention layers, whose KV cache it can cut back to the accepted "
            "prefix (a recurrent or linear-attention state cannot drop a rejected draft)",
        )
        check(
            self.attn_impl in MASK_BACKENDS or self.attn_impl is None,
            f"attention implementation {self.attn_impl!r} cannot take a tree attention mask; "
            "load the target with attn_implementation='sdpa' or 'eager'",
        )

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def sliding_window(self) -> int | None:
        """The attention window of sliding-window layers, if the model has any: a query at
        position q sees keys at positions k with q - k < window."""
        window = getattr(self.config, "sliding_window", None)
        layer_types = getattr(self.config, "layer_types", None) or []
        if not window or getattr(self.config, "use_sliding_window", True) is False:
            return None
        if layer_types and "sliding_attention" not in layer_types:
            return None
        return int(window)

    def new_cache(self) -> DynamicCache:
        """A cache of plain full-attention layers in pre-allocated buffers (the engine manages
        slots and masks; appending costs O(new tokens), not a copy of the whole cache)."""
        return SlotCache()

    def prefill(self, prompts) -> tuple[BatchCache, torch.Tensor, torch.Tensor]:
        """A left-padded batched forward over `prompts` (lists of ids) into a new cache:
        (BatchCache, each row's next position [b], each row's last hidden state [b, H])."""
        ids, mask = left_pad(prompts)
        filled = mask.sum(1).numpy()  # [b] valid slots per row, counted on the host
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # [b, T]
        cache = self.new_cache()
        hidden = self.forward(ids, cache, mask, position_ids=positions)  # [b, T, H]
        return BatchCache(cache, mask.bool(), filled, positions), mask.sum(1), hidden[:, -1]

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: DynamicCache,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, T, H] for `input_ids` [B, T]; appends T entries to `cache`."""
        if isinstance(attention_mask, dict):  # one 4D mask per layer type
            attention_mask = {k: self._mask_for_backend(m) for k, m in attention_mask.items()}
        elif attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = self._mask_for_backend(attention_mask)
        out = self.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{self._cache_kwarg: cache},
        )
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits [..., V] from final hidden states [..., H], in the LM head's dtype
        (engine/sampling.py converts to fp32 before choosing)."""
        logits = self.lm_head(hidden)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def tree_masks(self, mask: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor):
        """The forward's mask argument from the tree mask [B, 1, N, K] (True = attend), the
        queries' positions [B, N] and the keys' [B, K]: the mask itself for full attention; for
        sliding-window layers also q - k < window, as one mask (every layer slides) or as
        transformers' mapping {layer type: mask}."""
        window = self.sliding_window
        if window is None:
            return mask
        near = (q_pos[:, None, :, None] - k_pos[:, None, None, :]) < window  # [B, 1, N, K]
        sliding = mask & near
        if self.per_layer_type:
            return {"full_attention": mask, "sliding_attention": sliding}
        return sliding

    def _mask_for_backend(self, mask: torch.Tensor) -> torch.Tensor:
        """Boolean [B, 1, Q, K] (True = attend) as the attention backend expects it."""
        if self.attn_impl in ("sdpa", "flex_attention") or self.attn_impl is None:
            return mask
        if self.attn_impl == "eager":
            dtype = self.embed.weight.dtype
            additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
            return additive.masked_fill_(~mask, torch.finfo(dtype).min)
        raise RedrafterError(  # refused at construction; kept for a backend switched later
            f"attention implementation {self.attn_impl!r} cannot take a tree attention mask; "
            "load the target with attn_implementation='sdpa' or 'eager'"
        )
