"""Small checks the argument groups share."""

from __future__ import annotations

from hfmini.errors import HfminiError


def require_positive(obj: object, name: str) -> None:
    """`obj.name` > 0, else a one-line error naming the key."""
    value = getattr(obj, name)
    if not value > 0:
        raise HfminiError(f"{name} must be positive, got {value}")
