"""Timing helpers shared by the sections: rounds that alternate variants, one optimizer step of
hfmini's training step, the first batches of a run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from hfmini.training.loop import training_step
from hfmini.training.run import Run

REPO_RECIPE = "recipes/shakespeare/config.yaml"


# Long enough that torch_compile auto decides as for a real run, as in bench_training.
LONG_RUN_STEPS = "100000"


def timed_rounds(variants: dict, rounds: int, steps_per_round: int, tokens_per_step: int) -> dict:
    """Alternate the variants round by round; returns median tokens/s of each."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in variants.items():
            synchronize()
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            synchronize()
            rates[name].append(steps_per_round * tokens_per_step / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def synchronize() -> None:
    """Wait for queued CUDA work, so that a round's time holds its own steps and no others."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def optimizer_step(run: Run, batches: list[dict[str, torch.Tensor]]) -> Callable[[], None]:
    """One optimizer step of hfmini's `training_step` per call, cycling through `batches`."""

    accumulation = run.config.train.gradient_accumulation_steps
    position = 0

    def step() -> None:
        nonlocal position
        for _ in range(accumulation):
            training_step(run, batches[position % len(batches)])
            position += 1

    return step


def first_batches(run: Run, count: int = 8) -> list[dict[str, torch.Tensor]]:
    """The first `count` (or fewer) batches of the run's loader, on its device."""
    return [batch for _, batch in zip(range(count), run.train_loader, strict=False)]


class VocabularyOnly:
    """What build_model needs of a tokenizer: its size and special ids (all 0, like ours)."""

    bos_token_id = eos_token_id = pad_token_id = 0

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size
