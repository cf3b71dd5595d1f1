"""Drafters shipped inside the package."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from redrafter_rs.drafter import CONFIG_NAME, RecurrentDrafter

ASSETS = Path(__file__).parent / "assets"
DEFAULT_DRAFTER = ASSETS / "smollm2-135m-instruct-drafter"


def load_default_drafter(model: nn.Module, *, seed: int = 0) -> RecurrentDrafter:
    """The shipped drafter for the default model; an untrained one (with a warning) if absent."""
    if (DEFAULT_DRAFTER / CONFIG_NAME).is_file():
        return RecurrentDrafter.from_pretrained(DEFAULT_DRAFTER, target=model)
    print(
        "redrafter: no trained drafter is shipped yet; using an untrained one "
        "(output stays identical, only speed suffers)",
        file=sys.stderr,
    )
    torch.manual_seed(seed)
    return RecurrentDrafter.for_target(model).eval()
