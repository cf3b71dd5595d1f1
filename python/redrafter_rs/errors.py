"""The package's one error type (raised by the Rust core and by the Python layer alike)."""

from redrafter_rs._core import RedrafterError

__all__ = ["RedrafterError"]


def check(condition: bool, message: str) -> None:
    """Raise `RedrafterError(message)` unless `condition` holds."""
    if not condition:
        raise RedrafterError(message)
