"""Shared test helpers: the tiny random Llama, test-only drafters that make the engine's
acceptance paths observable, a step-API driver, and the statistics of the sampling tests.

Test modules import these from here (`from helpers import ...`), never from another test module
or from conftest.py (which holds the fixtures only).
"""

from __future__ import annotations

import math
import string

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from redrafter_rs.bench.oracle import OracleDrafter  # noqa: F401 (the library's, for the tests)


def tiny_llama(seed: int = 0, vocab_size: int = 96, **overrides) -> LlamaForCausalLM:
    """A 2-layer random Llama (fp32, eager-free sdpa attention) with peaky logits."""
    torch.manual_seed(seed)
    overrides.setdefault("initializer_range", 0.2)
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    config = LlamaConfig(**{**settings, **overrides})
    return LlamaForCausalLM(config).eval()


class NoisyOracleDrafter(OracleDrafter):
    """Every beam copies a random-length prefix of the true continuation, then diverges:
    acceptance is partial, lands on any beam (so accepted tree nodes are not contiguous in the
    packed order), rows accept different amounts, and beams share prefixes."""

    def draft(self, hidden, root, *, embed, beam_width, beam_length, context, request_ids=None):
        beams = self.random_beams(root, beam_width, beam_length)
        for b, ctx in enumerate(context):
            truth = self.truth(ctx.tolist(), beam_length - 1)
            keep = torch.randint(0, beam_length, (beam_width,), generator=self.gen)
            for w in range(beam_width):
                beams[b, w, 1 : 1 + int(keep[w])] = truth[: int(keep[w])]
        return beams.to(root.device)


def run_rows_equal(gen, prompts, refs) -> None:
    """Add one request per prompt to the step API `gen`, step until done, and check each row's
    tokens against `refs`."""
    for row, p in enumerate(prompts):
        gen.add(row, p)
    while gen.has_unfinished():
        gen.step()
    done = gen.pop_finished()
    for row, ref in enumerate(refs):
        assert done[row].tokens == ref, row


# ---- statistics of sampled sequences (tests/test_sampling.py's module docs derive the bound) ----
def joint_counts(seqs: torch.Tensor, prompt_len: int, new: int, vocab: int) -> np.ndarray:
    """Counts [vocab**new] of the joint value of the first `new` generated tokens per row."""
    tokens = seqs[:, prompt_len : prompt_len + new].numpy()
    codes = (tokens * vocab ** np.arange(new)[::-1]).sum(1)
    return np.bincount(codes, minlength=vocab**new).astype(np.float64)


def plain_sample_counts(model, prompt: torch.Tensor, n: int, new: int, settings: dict, seed: int):
    """`joint_counts` of n plain `model.generate(do_sample=True)` samples after prompt [1, T]."""
    torch.manual_seed(seed)
    ids = prompt.repeat(n, 1)
    kwargs = {"top_k": 0, **settings}  # transformers' default top_k=50 would truncate
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=new, **kwargs
    )
    return joint_counts(out, prompt.shape[1], new, model.config.vocab_size)


def chi2_homogeneity(a: np.ndarray, b: np.ndarray, min_count: float = 10.0) -> float:
    """p-value of the chi-square test that counts `a` and `b` come from one distribution.

    Cells with fewer than `min_count` pooled samples are merged into one cell.
    """
    pooled = a + b
    big = pooled >= min_count
    a = np.append(a[big], a[~big].sum())
    b = np.append(b[big], b[~big].sum())
    keep = (a + b) > 0
    a, b = a[keep], b[keep]
    na, nb = a.sum(), b.sum()
    p = (a + b) / (na + nb)
    stat = ((a - na * p) ** 2 / (na * p)).sum() + ((b - nb * p) ** 2 / (nb * p)).sum()
    df = len(a) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), torch.tensor(stat / 2.0)))


def tv_distance(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a / a.sum() - b / b.sum()).sum())


def tv_bound(a: np.ndarray, b: np.ndarray, n: int) -> float:
    """Total variation that two n-sample histograms of one distribution exceed w.p. < 0.1%."""
    pooled = (a + b) / (a.sum() + b.sum())
    return 0.5 * math.sqrt(2 / n) * float(np.sqrt(pooled).sum()) + math.sqrt(math.log(1000) / n)


def assert_same_distribution(plain: np.ndarray, spec: np.ndarray, n: int, label: str) -> None:
    """Chi-square homogeneity (p > 0.01) and total variation below `tv_bound`."""
    p_value = chi2_homogeneity(plain, spec)
    tv, bound = tv_distance(plain, spec), tv_bound(plain, spec, n)
    print(f"\n{label}: chi2 p = {p_value:.4f}, TV = {tv:.4f} (bound {bound:.4f})")
    assert p_value > 0.01
    assert tv < bound


def char_tokenizer(vocab_size: int = 96):
    """A real `PreTrainedTokenizerFast`: one token per character, `vocab_size` ids (the tiny
    models' vocabulary), and a simple chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<s>": 2}
    for c in string.ascii_letters + string.digits + " .,!?'-:;\n" + string.punctuation:
        if len(vocab) < vocab_size:
            vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="?"
    )
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return tok
