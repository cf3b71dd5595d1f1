"""Test-only drafters that make the engine's acceptance paths observable."""

from __future__ import annotations

import torch


class OracleDrafter:
    """Proposes the target's own greedy continuation as beam 0 (others: random tokens).

    `reference` is the full plain-greedy output [T_prompt + new] of the target for the prompt;
    with it every draft token is accepted, exercising the all-accepted path and the bonus token.
    """

    uses_context = True

    def __init__(self, reference: torch.Tensor, vocab_size: int, seed: int = 0) -> None:
        self.reference = reference.flatten().tolist()
        self.vocab_size = vocab_size
        self.gen = torch.Generator().manual_seed(seed)

    def draft(self, hidden, root, *, embed, beam_width, beam_length, context):
        (ctx,) = context  # prompt + emitted tokens, the last one being `root`
        pos = ctx.numel()
        truth = self.reference[pos : pos + beam_length - 1]
        truth += [0] * (beam_length - 1 - len(truth))
        beams = torch.randint(0, self.vocab_size, (1, beam_width, beam_length), generator=self.gen)
        beams[:, :, 0] = root.cpu()
        beams[0, 0, 1:] = torch.tensor(truth)
        return beams.to(root.device)


class NoisyOracleDrafter(OracleDrafter):
    """Each step every beam copies a random-length prefix of the true continuation and then
    diverges: acceptance is partial, lands on any beam (so accepted tree nodes are not
    contiguous in the packed order), and beams share prefixes (so the tree de-duplicates)."""

    def draft(self, hidden, root, *, embed, beam_width, beam_length, context):
        (ctx,) = context
        pos = ctx.numel()
        truth = self.reference[pos : pos + beam_length - 1]
        truth = torch.tensor(truth + [0] * (beam_length - 1 - len(truth)))
        beams = torch.randint(0, self.vocab_size, (1, beam_width, beam_length), generator=self.gen)
        beams[:, :, 0] = root.cpu()
        keep = torch.randint(0, beam_length, (beam_width,), generator=self.gen)
        for w in range(beam_width):
            beams[0, w, 1 : 1 + int(keep[w])] = truth[: int(keep[w])]
        return beams.to(root.device)
