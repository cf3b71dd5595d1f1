"""Speculative sampling reproduces the target's distribution exactly: statistical proof.

The joint distribution of the first 3 generated tokens (8-token vocabulary: 512 cells) from
`rr.generate(temperature=...)` is compared with plain `model.generate(do_sample=True)` on
20,000 samples each: a chi-square test of homogeneity (p > 0.01) and the total-variation
distance against a bound derived from the sample size. The same test must *reject* the
p/q acceptance rule applied to beam-search drafts (ReDrafter's published sampling mode), which
is biased because beam-search drafts are not samples from the drafter.

TV bound under H0 (both samples from the same distribution p, n samples each):
E|p̂_i - q̂_i| <= sqrt(2 p_i / n), so E[TV] <= 0.5 * sqrt(2 / n) * sum_i sqrt(p_i); changing one
of the 2n samples moves TV by at most 1/n, so by McDiarmid P(TV >= E[TV] + t) <= exp(-n t^2);
t = sqrt(ln(1000) / n) gives a bound that a correct sampler exceeds with probability < 0.1%.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import redrafter_rs as rr
from helpers import assert_same_distribution, chi2_homogeneity, tiny_llama, tv_distance
from redrafter_rs.drafters.search import beam_search

pytestmark = pytest.mark.slow  # 20,000-sample statistical tests (tens of seconds in all)

N_SAMPLES = 20_000
NEW = 3
V = 8
PROMPT = torch.tensor([[3, 1, 4]])


@pytest.fixture(scope="module")
def model():
    m = tiny_llama(seed=11, vocab_size=V, initializer_range=0.1)
    m.generation_config.eos_token_id = None  # every sample has exactly 3 new tokens
    m.generation_config.pad_token_id = 0
    return m


@pytest.fixture(scope="module")
def drafter(model):
    torch.manual_seed(2)
    d = rr.RecurrentDrafter.for_target(model).eval()
    with torch.no_grad():
        d.head.weight.mul_(4.0)  # a confident (and wrong-ish) drafter: large bias for p/q
    return d


def _codes(seqs: torch.Tensor) -> np.ndarray:
    """First 3 new tokens of each row as one cell index in [0, V^3)."""
    new = seqs[:, PROMPT.shape[1] : PROMPT.shape[1] + NEW].numpy()
    return (new * V ** np.arange(NEW)[::-1]).sum(1)


def _counts(codes: np.ndarray) -> np.ndarray:
    return np.bincount(codes, minlength=V**NEW).astype(np.float64)


def _plain_samples(model, settings: dict, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    ids = PROMPT.repeat(N_SAMPLES, 1)
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=NEW,
        top_k=settings.get("top_k", 0), **{k: v for k, v in settings.items() if k != "top_k"},
    )  # fmt: skip
    return _counts(_codes(out))


def _spec_samples(
    model, drafter, settings: dict, seed: int, biased=False, nodes=None, seeded=False
):
    """N_SAMPLES speculative samples; `seeded`: request r carries its own seed (seed, r) and
    the per-position noise of seeded sampling, instead of one shared generator."""
    ids = PROMPT.repeat(N_SAMPLES, 1)
    gen = None if seeded else torch.Generator().manual_seed(seed)
    params = rr.SamplingParams(**settings)
    config = rr.SpecConfig(beam_width=3, beam_length=3, max_new_tokens=NEW, tree_nodes=nodes)
    if biased:
        proposer = LogQDrafter(drafter)
        engine = rr.SpeculativeGenerator(
            model, proposer, config, acceptor=BiasedPQAcceptor(proposer)
        )
    else:
        engine = rr.SpeculativeGenerator(model, drafter, config)
    for row in range(N_SAMPLES):
        if seeded:
            params = rr.SamplingParams(**settings, seed=seed * N_SAMPLES + row)
        engine.add(row, ids[row], params, generator=gen)
    while engine.has_unfinished():
        engine.step()
    done = engine.pop_finished()
    seqs = torch.tensor([PROMPT[0].tolist() + done[r].tokens for r in range(N_SAMPLES)])
    accepted = sum(sum(done[r].stats.accepted_per_step) for r in range(N_SAMPLES))
    return _counts(_codes(seqs)), accepted


SETTINGS = [
    {"temperature": 0.5},
    {"temperature": 1.0},
    {"temperature": 1.0, "top_p": 0.9},
    {"temperature": 0.8, "top_k": 5, "min_p": 0.05},
]


@pytest.mark.parametrize(
    "settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items())
)
def test_speculative_sampling_matches_plain_sampling(model, drafter, settings):
    plain = _plain_samples(model, settings, seed=1)
    spec, accepted = _spec_samples(model, drafter, settings, seed=2)
    assert accepted > N_SAMPLES // 10  # the draft tree really was used, not only bonus tokens
    assert_same_distribution(plain, spec, N_SAMPLES, str(settings))


def test_best_nodes_tree_sampling_matches_plain_sampling(model, drafter):
    # a tree whose branches end at different depths: the same test, one setting
    settings = {"temperature": 1.0}
    plain = _plain_samples(model, settings, seed=1)
    spec, accepted = _spec_samples(model, drafter, settings, seed=6, nodes=4)
    assert accepted > N_SAMPLES // 10
    assert_same_distribution(plain, spec, N_SAMPLES, f"best-nodes {settings}")


@pytest.mark.parametrize("settings", [SETTINGS[1], SETTINGS[3]], ids=["T=1.0", "T=0.8,k=5,min_p"])
def test_seeded_sampling_matches_plain_sampling(model, drafter, settings):
    # one seed per request: over seeds, the per-position noise still gives exact samples
    plain = _plain_samples(model, settings, seed=7)
    spec, accepted = _spec_samples(model, drafter, settings, seed=8, seeded=True)
    assert accepted > N_SAMPLES // 10
    assert_same_distribution(plain, spec, N_SAMPLES, f"seeded {settings}")


@pytest.mark.parametrize("settings", SETTINGS[:2], ids=["T=0.5", "T=1.0"])
def test_the_same_test_rejects_the_biased_pq_rule(model, drafter, settings):
    plain = _plain_samples(model, settings, seed=3)
    biased, _ = _spec_samples(model, drafter, settings, seed=4, biased=True)
    p_value = chi2_homogeneity(plain, biased)
    tv = tv_distance(plain, biased)
    print(f"\nbiased p/q {settings}: chi2 p = {p_value:.2e}, TV = {tv:.4f}")
    assert p_value < 1e-6


def test_a_seeded_generator_is_reproducible(model, drafter):
    # unseeded requests draw from the generator the caller passes
    a = rr.generate(model, drafter, PROMPT, max_new_tokens=12, temperature=1.0,
                    generator=torch.Generator().manual_seed(5))  # fmt: skip
    b = rr.generate(model, drafter, PROMPT, max_new_tokens=12, temperature=1.0,
                    generator=torch.Generator().manual_seed(5))  # fmt: skip
    c = rr.generate(model, drafter, PROMPT, max_new_tokens=12, temperature=1.0,
                    generator=torch.Generator().manual_seed(6))  # fmt: skip
    assert torch.equal(a.sequences, b.sequences)
    assert not torch.equal(a.sequences, c.sequences)


class LogQDrafter:
    """The drafter's beam search, keeping the drafter's probabilities q of each beam's tokens
    for the biased acceptor below."""

    def __init__(self, drafter) -> None:
        self.drafter = drafter
        self.q = None

    def draft(self, hidden, root, *, embed, beam_width, beam_length, context=None):
        beams, log_q = beam_search(
            self.drafter, embed, hidden, root, beam_width, beam_length, return_log_probs=True
        )
        self.q = log_q.exp()  # [B, W, L-1, V]
        return beams


class BiasedPQAcceptor:
    """ReDrafter's published sampling rule on beam-search drafts (known to be biased):
    accept draft x with probability min(1, P(x) / Q(x)), keep the longest accepted prefix over
    beams, then draw the next token from norm(relu(P - Q)) at the first rejection (or from P
    after a fully accepted beam). Used only to show that the statistical test can fail."""

    def __init__(self, proposer: LogQDrafter) -> None:
        self.proposer = proposer

    def accept(self, step: rr.VerifiedStep):
        params, gen = step.requests[0].params, step.requests[0].generator
        scores = params.warpers()(None, step.target.logits(step.hidden).flatten(0, 1))
        probs = torch.softmax(scores, -1).view(*step.hidden.shape[:2], -1)  # [B, N, V]
        beams = torch.from_numpy(step.beams)
        return self._pq_accept(step.tree, beams, probs, self.proposer.q, gen)

    @staticmethod
    def _pq_accept(tree, beams, probs, q, gen):
        B, W, L = beams.shape
        unpack = torch.from_numpy(tree.unpacker)  # [B, W, L]
        p_parent = probs.gather(1, unpack[:, :, :-1].reshape(B, -1, 1).expand(-1, -1, V))
        p_parent = p_parent.view(B, W, L - 1, V)  # target distribution before each draft token
        x = beams[:, :, 1:]  # [B, W, L-1]
        ratio = p_parent.gather(-1, x[..., None])[..., 0] / q.gather(-1, x[..., None])[..., 0]
        ok = torch.rand(ratio.shape, generator=gen) < ratio
        n = ok.long().cumprod(-1).sum(-1)  # [B, W]
        best = n.argmax(-1)  # [B]
        rows = torch.arange(B)
        nb = n[rows, best]
        last = unpack[rows, best, nb]  # node of the last accepted token
        p_last = probs[rows, last]  # [B, V]
        q_next = q[rows, best, nb.clamp(max=L - 2)]
        resid = torch.where((nb < L - 1)[:, None], (p_last - q_next).clamp(min=0), p_last)
        resid = torch.where(resid.sum(-1, keepdim=True) > 0, resid, p_last)
        bonus = torch.multinomial(resid / resid.sum(-1, keepdim=True), 1, generator=gen)[:, 0]
        kept = (nb + 1).numpy()
        M = int(kept.max())
        path = unpack[rows, best, :M].numpy()  # [B, M]: nodes of the best beam
        gather = np.where(np.arange(M)[None] < kept[:, None], path, last.numpy()[:, None])
        tokens = np.full((B, L), -1)
        for b in range(B):
            tokens[b, : nb[b]] = beams[b, best[b], 1 : nb[b] + 1].numpy()
            tokens[b, nb[b]] = bonus[b]
        return SimpleNamespace(
            kv_gather=gather, kv_valid=np.arange(M)[None] < kept[:, None], kept=kept,
            last_node=last.numpy(), bonus=bonus.numpy(), tokens=tokens, num_accepted=nb.numpy(),
        )  # fmt: skip


def test_draft_model_sampling_matches_plain_sampling(model):
    """A separate small LM proposes (drafters/draft_model.py): the same test, one setting."""
    from redrafter_rs.drafters.draft_model import DraftModelDrafter

    draft = tiny_llama(seed=12, vocab_size=V, initializer_range=0.1, num_hidden_layers=1)
    settings = {"temperature": 1.0}
    plain = _plain_samples(model, settings, seed=1)
    spec, accepted = _spec_samples(model, DraftModelDrafter(draft), settings, seed=7)
    assert accepted > N_SAMPLES // 10
    assert_same_distribution(plain, spec, N_SAMPLES, f"draft model {settings}")
