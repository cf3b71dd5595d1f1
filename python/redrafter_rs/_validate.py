"""One copy of each argument rule, for the Python API and the command line alike.

Every helper raises `RedrafterError` naming the argument and what was expected; the `arg_*`
factories wrap the same rules as argparse `type=` callables, so a bad flag gets argparse's
"invalid value" message and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable, Hashable

from redrafter_rs.errors import RedrafterError


def _describe(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def is_int(value: object) -> bool:
    """An integer that is not a bool (numpy integer scalars included; not 0-d tensors)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int in [low, high] (either bound optional); bools and floats are refused."""
    if not is_int(value):
        raise RedrafterError(f"{name} must be an integer, got {_describe(value)}")
    value = int(value)
    if low is not None and value < low:
        raise RedrafterError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise RedrafterError(f"{name} must be <= {high}, got {value}")
    return value


def check_optional_int(name: str, value: object, *, low: int | None = None) -> int | None:
    return None if value is None else check_int(name, value, low=low)


def check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """`value` as a finite float in [low, high] (or (low, high] with `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RedrafterError(f"{name} must be a number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise RedrafterError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise RedrafterError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise RedrafterError(f"{name} must be <= {high}, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise RedrafterError(f"{name} must be true or false, got {_describe(value)}")
    return value


def check_hashable(name: str, value: object) -> Hashable:
    try:
        hash(value)
    except TypeError:
        raise RedrafterError(
            f"{name} must be hashable (a str, an int or a tuple, say), got {_describe(value)}"
        ) from None
    return value


def check_drafter(drafter: object, *, optional: bool = True) -> None:
    """A drafter is None (where allowed) or an object with a callable `draft`."""
    if drafter is None and optional:
        return
    if not callable(getattr(drafter, "draft", None)):
        what = "None or " if optional else ""
        raise RedrafterError(
            f"drafter must be {what}a drafter with a draft() method (RecurrentDrafter, "
            f"RetrievalDrafter, ...), got {_describe(drafter)[:120]}"
        )


# ---- argparse types -----------------------------------------------------------------------
def _arg(
    rule: Callable[[str, object], object], what: str, convert: Callable[[str], object]
) -> Callable[[str], object]:
    def parse(text: str):
        try:
            number = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        try:
            return rule("value", number)
        except RedrafterError as e:
            raise argparse.ArgumentTypeError(str(e).replace("value ", "", 1)) from None

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def arg_int(low: int | None = None) -> Callable[[str], object]:
    """argparse type: an integer >= low."""
    what = "an integer" if low is None else f"an integer >= {low}"
    return _arg(lambda n, v: check_int(n, v, low=low), what, int)


def arg_float(low: float | None = None, *, low_open: bool = False) -> Callable[[str], object]:
    """argparse type: a finite number >= low (> low with `low_open`)."""
    return _arg(lambda n, v: check_float(n, v, low=low, low_open=low_open), "number", float)


positive_int = arg_int(1)
nonnegative_int = arg_int(0)
positive_float = arg_float(0.0, low_open=True)
