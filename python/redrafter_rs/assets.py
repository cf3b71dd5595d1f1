"""Drafters shipped inside the package."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from redrafter_rs.drafters.recurrent import CONFIG_NAME, RecurrentDrafter

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


def load_drafter(
    model: nn.Module, directory: str | Path | None = None, *, model_name: str = "default"
) -> tuple[RecurrentDrafter | None, str]:
    """The drafter for `model` (the target) and a label for reports: the one in `directory`
    if given (refused if made for another target), else for the default model the shipped one
    (`load_default_drafter`), else None ("none": no drafter for `model_name`)."""
    from redrafter_rs.models import is_default_model

    if directory:
        return RecurrentDrafter.from_pretrained(directory, target=model), str(directory)
    if not is_default_model(model_name):
        return None, "none"
    drafter = load_default_drafter(model)
    shipped = (DEFAULT_DRAFTER / CONFIG_NAME).is_file()
    label = f"shipped ({DEFAULT_DRAFTER.name})" if shipped else "untrained (none shipped yet)"
    return drafter, label
