"""Small checks the argument groups share."""

from __future__ import annotations

import math

from hfmini.errors import HfminiError


def require_positive(obj: object, name: str) -> None:
    """`obj.name` > 0, else a one-line error naming the key."""
    value = getattr(obj, name)
    if not value > 0:
        raise HfminiError(f"{name} must be positive, got {value}")


def require_finite_non_negative(obj: object, name: str, zero_means: str | None = None) -> None:
    """`obj.name` a number >= 0 and finite: YAML reads `.nan`, `.inf` and `nan` as floats, and
    every comparison with NaN is False, so a plain `< 0` test lets it through."""
    value = getattr(obj, name)
    if not (math.isfinite(value) and value >= 0):
        meaning = f" (0: {zero_means})" if zero_means else ""
        raise HfminiError(f"{name} must be >= 0 and finite{meaning}, got {value}")


def check_lora_rank(rank: int, width: int) -> None:
    """A LoRA rank above the model's width adds parameters (r × (d_in + d_out) per layer) but no
    capacity: B A cannot have a rank above min(d_in, d_out), which is at most the width."""
    if rank > width:
        suggestion = min(16, width)
        raise HfminiError(
            f"lora_r {rank} is larger than the model's width {width}: a rank above the width "
            f"adds adapter parameters but no capacity; set lora_r to at most {width} "
            f"(e.g. {suggestion})"
        )
