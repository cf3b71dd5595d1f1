"""The architecture matrix: every decoder-only family a user is likely to bring, as a tiny random
model built here (no downloads), through greedy equality with `model.generate` (batch 1 and a
left-padded batch of 3, each row against the model alone), a seeded sampling run against plain
seeded decoding, and the step API with a request joining mid-run. Sliding-window families
(Mistral, Gemma-2/3, Qwen2 with windows) run well past their window. Families that cannot work
are refused at construction with the reason. The README's family table lists the same set.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import redrafter_rs as rr
from helpers import NoisyOracleDrafter
from redrafter_rs import RedrafterError
from redrafter_rs.engine.sampling import sample_seeded
from redrafter_rs.engine.target import left_pad

V = 96
NEW = 24
WINDOW = 8  # sliding windows far below prompt + NEW
COMMON = dict(
    vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
)  # fmt: skip
MIXED = ["sliding_attention", "full_attention"]

# family -> (config class, model class, config overrides, attention implementation)
FAMILIES = {
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {}, "sdpa"),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {"sliding_window": WINDOW}, "sdpa"),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {}, "sdpa"),
    "qwen2-sliding": (
        tf.Qwen2Config, tf.Qwen2ForCausalLM,
        {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}, "sdpa",
    ),
    "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, {"head_dim": 16}, "sdpa"),
    # Gemma-2's attention logit soft-capping runs on the eager backend only (transformers)
    "gemma2": (
        tf.Gemma2Config, tf.Gemma2ForCausalLM,
        {"head_dim": 16, "sliding_window": WINDOW, "layer_types": MIXED}, "eager",
    ),
    "gemma3": (
        tf.Gemma3TextConfig, tf.Gemma3ForCausalLM,
        {"head_dim": 16, "sliding_window": WINDOW, "layer_types": MIXED}, "sdpa",
    ),
    "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, {"pad_token_id": 0}, "sdpa"),
    "olmo2": (tf.Olmo2Config, tf.Olmo2ForCausalLM, {}, "sdpa"),
    "granite": (tf.GraniteConfig, tf.GraniteForCausalLM, {}, "sdpa"),
    "stablelm": (tf.StableLmConfig, tf.StableLmForCausalLM, {}, "sdpa"),
    "gpt-neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM, {}, "sdpa"),
    "mixtral": (
        tf.MixtralConfig, tf.MixtralForCausalLM,
        {"num_local_experts": 4, "num_experts_per_tok": 2}, "sdpa",
    ),
    "qwen3-moe": (
        tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM,
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16},
        "sdpa",
    ),
}  # fmt: skip


def build(family: str, seed: int = 0):
    config_cls, model_cls, overrides, attn = FAMILIES[family]
    config = config_cls(**{**COMMON, **overrides})
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.generation_config.eos_token_id = None  # random weights: every budget runs to its end
    model.generation_config.pad_token_id = 0
    return model


def prompts(seed: int, lengths=(5, 11, 3)) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, V, (n,), generator=gen) for n in lengths]


def alone(model, prompt: torch.Tensor, n: int = NEW) -> list[int]:
    out = model.generate(prompt[None], do_sample=False, max_new_tokens=n, min_new_tokens=n)
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model = build(request.param)
    ps = prompts(1)
    refs = [alone(model, p) for p in ps]
    return request.param, model, ps, refs


def _drafters(model, ps, refs):
    full = [torch.cat([p, torch.tensor(r)]) for p, r in zip(ps, refs, strict=True)]
    return {
        "noisy-oracle": NoisyOracleDrafter(full, V),  # partial acceptance at every depth
        "rnn": rr.RecurrentDrafter.for_target(model),
    }


def test_greedy_batch_1_and_a_left_padded_batch_of_3(family):
    name, model, ps, refs = family
    for label, drafter in _drafters(model, ps, refs).items():
        out = rr.generate(model, drafter, ps[0][None], max_new_tokens=NEW, beam_width=3,
                          beam_length=4)  # fmt: skip
        assert out.sequences[0, len(ps[0]) :].tolist() == refs[0], (name, label)
        ids, mask = left_pad(ps)
        out = rr.generate(model, drafter, ids, mask, max_new_tokens=NEW, beam_width=3,
                          beam_length=4)  # fmt: skip
        T = ids.shape[1]
        for row, ref in enumerate(refs):
            assert out.sequences[row, T:].tolist() == ref, (name, label, row)
        assert out.stats.tau > 1.0 or label == "rnn", (name, out.stats.tau)


def test_seeded_sampling_equals_plain_seeded_decoding(family):
    name, model, ps, _ = family
    params = rr.SamplingParams(temperature=0.8, seed=11)
    prompt = ps[1].tolist()
    seq = list(prompt)
    with torch.no_grad():  # plain decoding: a full forward per token, no cache, no engine
        for _ in range(12):
            logits = model(torch.tensor([seq])).logits[0, -1]
            seq.append(sample_seeded(logits, params, len(seq)))
    drafter = rr.RecurrentDrafter.for_target(model)
    out = rr.generate(model, drafter, torch.tensor([prompt]), max_new_tokens=12,
                      temperature=0.8, seed=11)  # fmt: skip
    assert out.sequences[0, len(prompt) :].tolist() == seq[len(prompt) :], name


def test_step_api_with_a_request_joining_mid_run(family):
    name, model, ps, refs = family
    drafter = _drafters(model, ps, refs)["noisy-oracle"]
    gen = rr.SpeculativeGenerator(model, drafter, rr.SpecConfig(3, 4, NEW))
    gen.add(0, ps[0])
    gen.add(1, ps[1])
    for step in range(200):
        if step == 2:
            gen.add(2, ps[2])
        gen.step()
        if not gen.has_unfinished():
            break
    done = gen.pop_finished()
    assert [done[i].tokens for i in range(3)] == refs, name


# ---- refused at construction, with the reason --------------------------------------------------
def test_a_state_space_model_is_refused_at_construction():
    config = tf.MambaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, state_size=4)
    model = tf.MambaForCausalLM(config).eval()
    with pytest.raises(RedrafterError, match=r"layer types \['linear_attention'\].*recurrent"):
        rr.SpeculativeGenerator(model, rr.RetrievalDrafter())


def test_a_model_without_a_kv_cache_is_refused_at_construction():
    config = tf.RwkvConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                           attention_hidden_size=32, intermediate_size=64)  # fmt: skip
    model = tf.RwkvForCausalLM(config).eval()
    with pytest.raises(RedrafterError, match="takes no KV cache"):
        rr.SpeculativeGenerator(model, rr.RetrievalDrafter())


def test_an_encoder_decoder_model_is_refused_at_construction():
    config = tf.T5Config(vocab_size=V, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16)
    model = tf.T5ForConditionalGeneration(config).eval()
    with pytest.raises(RedrafterError, match="encoder-decoder"):
        rr.SpeculativeGenerator(model, rr.RetrievalDrafter())


def test_a_backend_without_4d_masks_is_refused_at_construction():
    model = build("llama")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(RedrafterError, match="flash_attention_2"):
        rr.SpeculativeGenerator(model, rr.RecurrentDrafter.for_target(model))


def test_unknown_layer_types_are_refused_at_construction():
    model = build("qwen3")
    model.config.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(RedrafterError, match="linear_attention"):
        rr.SpeculativeGenerator(model, rr.RecurrentDrafter.for_target(model))


def test_a_longer_prompt_joins_a_running_sliding_window_batch():
    """A request whose prompt is wider than the running rows' cache joins mid-run (both sides
    are left-padded to the wider slot axis, token positions included), and the window masks,
    which read those positions, keep every row equal to model.generate alone."""
    model = build("mistral")
    short, long = prompts(4, lengths=(2, 3))[0], prompts(5, lengths=(30,))[0]
    refs = [alone(model, short), alone(model, long)]
    drafter = NoisyOracleDrafter(
        [torch.cat([p, torch.tensor(r)]) for p, r in zip((short, long), refs, strict=True)], V
    )
    gen = rr.SpeculativeGenerator(model, drafter, rr.SpecConfig(3, 4, NEW))
    gen.add(0, short)
    gen.step()
    gen.step()
    assert gen.batch.cache.width < len(long)  # the joining row is the wider one
    gen.add(1, long)
    while gen.has_unfinished():
        gen.step()
    done = gen.pop_finished()
    assert [done[0].tokens, done[1].tokens] == refs
