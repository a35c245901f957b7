"""hfmini's metrics as local `evaluate` modules, loadable offline by path.

Hub metric names (`evaluate.load("perplexity")`) download code and fail without a network; these
folders ship inside the package and are loaded with `evaluate.load(metric_path("bits_per_byte"))`.
Both take summed negative log-likelihoods, so they work for any model and tokenizer.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path


def metric_path(name: str) -> str:
    return str(Path(__file__).parent / name)


@cache
def load_metric(name: str):
    """The evaluate.Metric for `name` (bits_per_byte or perplexity), loaded once per process."""
    import evaluate

    return evaluate.load(metric_path(name))
