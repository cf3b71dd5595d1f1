"""A thin view of a Hugging Face causal LM as a speculative-decoding target.

Runs the decoder body (not the `*ForCausalLM` wrapper) so that only the final-normed hidden
state is produced, then applies the LM head to exactly the rows that need logits.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import DynamicCache

from redrafter_rs.engine.cache import SlotCache
from redrafter_rs.errors import RedrafterError, check


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

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def sliding_window(self) -> int | None:
        """The attention window of sliding-window layers, if the model has any."""
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

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: DynamicCache,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, T, H] for `input_ids` [B, T]; appends T entries to `cache`."""
        if attention_mask is not None and attention_mask.dim() == 4:
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

    def _mask_for_backend(self, mask: torch.Tensor) -> torch.Tensor:
        """Boolean [B, 1, Q, K] (True = attend) as the attention backend expects it."""
        if self.attn_impl in ("sdpa", "flex_attention") or self.attn_impl is None:
            return mask
        if self.attn_impl == "eager":
            dtype = self.embed.weight.dtype
            additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
            return additive.masked_fill_(~mask, torch.finfo(dtype).min)
        raise RedrafterError(
            f"attention implementation {self.attn_impl!r} cannot take a tree attention mask; "
            "load the target with attn_implementation='sdpa' or 'eager'"
        )
