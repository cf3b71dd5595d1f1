"""Command-line flags shared by every subcommand, defined once (demo, generate, bench,
bench-core, train): the same name, type check, default meaning and help everywhere."""

from __future__ import annotations

import argparse

from redrafter_rs._validate import positive_int


def add_threads(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)"
    )


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads from `--threads` (None: leave torch's default)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def add_drafter(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--drafter", default=None, help="drafter directory (default: the shipped one)")


def add_draft_model(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    from redrafter_rs.drafters.draft_model import DRAFT_MODEL_HELP

    p.add_argument("--draft-model", default=None, metavar="SPEC", help=DRAFT_MODEL_HELP)


def add_max_new_tokens(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, default: int, what: str = "new tokens"
) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=default, help=what)


def add_model(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, default: str | None, what: str
) -> None:
    p.add_argument("--model", default=default, help=what)
