"""The speculative decoding engine: scheduling requests, the decode step (propose, pack, verify,
accept, upkeep), the batch's KV cache, the target view, token choice and the adaptive shape
policy (docs/design.md §2-§4, §7-§8).
"""
