"""Test-only drafters that make the engine's acceptance paths observable, and a step-API driver."""

from __future__ import annotations

import torch


class OracleDrafter:
    """Proposes the target's own greedy continuation as beam 0 (other beams: random tokens).

    `references` are full plain-greedy outputs (prompt + new tokens) of the target, one per
    prompt; each row's context (prompt + emitted tokens) picks the reference it is a prefix of.
    With it every draft token is accepted: the all-accepted path and the bonus token.
    """

    uses_context = True

    def __init__(self, references, vocab_size: int, seed: int = 0) -> None:
        if isinstance(references, torch.Tensor) and references.dim() == 1:
            references = [references]
        self.references = [list(map(int, r)) for r in references]
        self.vocab_size = vocab_size
        self.gen = torch.Generator().manual_seed(seed)

    def truth(self, ctx: list[int], n: int) -> torch.Tensor:
        """The n reference tokens after `ctx` (zeros where none is known)."""
        pos = len(ctx)
        for ref in self.references:
            if ref[:pos] == ctx:
                got = ref[pos : pos + n]
                return torch.tensor(got + [0] * (n - len(got)), dtype=torch.long)
        return torch.zeros(n, dtype=torch.long)

    def random_beams(self, root, W: int, L: int) -> torch.Tensor:
        beams = torch.randint(0, self.vocab_size, (root.numel(), W, L), generator=self.gen)
        beams[:, :, 0] = root.cpu()[:, None]
        return beams

    def draft(self, hidden, root, *, embed, beam_width, beam_length, context, request_ids=None):
        beams = self.random_beams(root, beam_width, beam_length)
        for b, ctx in enumerate(context):
            beams[b, 0, 1:] = self.truth(ctx.tolist(), beam_length - 1)
        return beams.to(root.device)


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
