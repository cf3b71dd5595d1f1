"""The oracle drafter: a known continuation as beam 0, at no drafting cost.

It measures the engine's ceiling (`redrafter bench --oracle`: every draft token accepted, so the
step cost alone limits the speedup) and makes acceptance paths observable in tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class OracleDrafter:
    """Proposes a reference continuation as beam 0; the other beams are random tokens.

    `references` are full sequences (prompt + new tokens), e.g. plain greedy outputs. Each row's
    context (prompt + emitted tokens) picks the reference it is a prefix of; with a single
    reference and no prefix match (the output drifted from it), the reference's tokens at the
    same position are proposed. Past the reference's end, or with no reference, drafts are 0s.
    """

    uses_context = True

    def __init__(self, references: Sequence = (), vocab_size: int = 1, seed: int = 0) -> None:
        self.references = references
        self.vocab_size = vocab_size
        self.gen = torch.Generator().manual_seed(seed)

    @property
    def references(self) -> list[list[int]]:
        return self._references

    @references.setter
    def references(self, references) -> None:
        if isinstance(references, torch.Tensor) and references.dim() == 1:
            references = [references]
        self._references = [list(map(int, r)) for r in references]

    def truth(self, ctx: list[int], n: int) -> torch.Tensor:
        """The n reference tokens after `ctx` (zeros where none is known)."""
        pos = len(ctx)
        got: list[int] = []
        for ref in self._references:
            if ref[:pos] == ctx:
                got = ref[pos : pos + n]
                break
        else:
            if len(self._references) == 1:
                got = self._references[0][pos : pos + n]
        return torch.tensor(got + [0] * (n - len(got)), dtype=torch.long)

    def random_beams(self, root: torch.Tensor, W: int, L: int) -> torch.Tensor:
        beams = torch.randint(0, self.vocab_size, (root.numel(), W, L), generator=self.gen)
        beams[:, :, 0] = root.cpu()[:, None]
        return beams

    def draft(self, hidden, root, *, embed, beam_width, beam_length, context, request_ids=None):
        """Host beams (no wait for the device): the root is each context's last token."""
        host_root = torch.tensor([int(ctx[-1]) for ctx in context], dtype=torch.long)
        beams = self.random_beams(host_root, beam_width, beam_length)
        for b, ctx in enumerate(context):
            beams[b, 0, 1:] = self.truth(ctx.tolist(), beam_length - 1)
        return beams
