"""How long a run is, and how far it has come: optimizer steps, minutes of training, or both.

A run ends at `max_steps` (or its epochs), at `max_train_minutes` of training, whichever comes
first. Its progress, a fraction from 0 to 1, is the further of the two:

    progress = max(step / total_steps, seconds / budget_seconds)

The learning-rate schedule, its warmup and the weight average are laid out over that fraction, so
a run with a time budget ends annealed on a slow CPU and on a fast one alike; only the number of
steps differs (logged and recorded in the model card).

Training time counts optimizer steps only: validation, sampling and checkpoints pause the clock,
and torch.compile compiles before it starts (loop.compile_before_the_clock).
The seconds already trained are kept in every checkpoint, so a resumed run stops exactly where the
unbroken one would have.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class TrainClock:
    """Seconds spent in training steps over every session of a run (a resume adds to them)."""

    def __init__(self, seconds: float = 0.0):
        self.before = seconds  # seconds trained before the current stretch
        self.since: float | None = None  # perf_counter() when the current stretch started

    @property
    def running(self) -> bool:
        return self.since is not None

    def start(self) -> None:
        if self.since is None:
            self.since = time.perf_counter()

    def stop(self) -> None:
        if self.since is not None:
            self.before += time.perf_counter() - self.since
            self.since = None

    def seconds(self) -> float:
        running = time.perf_counter() - self.since if self.since is not None else 0.0
        return self.before + running

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside does not count as training (validation, sampling, checkpoints)."""
        was_running = self.since is not None
        self.stop()
        try:
            yield
        finally:
            if was_running:
                self.start()


@dataclass(frozen=True)
class RunLength:
    """The bounds of a run: optimizer steps (None: no bound in steps) and seconds of training
    (None: no time budget). At least one is set."""

    total_steps: int | None
    budget_seconds: float | None

    @property
    def has_budget(self) -> bool:
        return self.budget_seconds is not None

    def progress(self, step: int, seconds: float) -> float:
        """The fraction of the run done, 0 to 1: the further of steps and time."""
        done = 0.0
        if self.total_steps is not None:
            done = step / self.total_steps
        if self.budget_seconds is not None:
            done = max(done, seconds / self.budget_seconds)
        return min(1.0, done)

    def describe(self) -> str:
        """'3,000 steps', '5 minutes of training' or both, for the log."""
        parts = []
        if self.total_steps is not None:
            parts.append(f"{self.total_steps:,} steps")
        if self.budget_seconds is not None:
            parts.append(f"{self.budget_seconds / 60:g} minutes of training")
        return " or ".join(parts) + (", whichever comes first" if len(parts) == 2 else "")


@dataclass
class Progress:
    """Where the run is, as the schedule and the weight average read it after each optimizer
    step. Every process holds the same values (loop.agree_on_progress)."""

    step: int = 0
    done: float = 0.0  # RunLength.progress: the fraction of the run done

    @property
    def finished(self) -> bool:
        return self.done >= 1.0


def run_length(config, batches_per_epoch: int) -> RunLength:
    """The bounds of the run `config` describes: max_steps (or, with no time budget, epochs over
    `batches_per_epoch`) and max_train_minutes."""
    args = config.train
    budget = args.max_train_minutes * 60 if args.max_train_minutes else None
    steps = None
    if args.max_steps > 0 or budget is None:
        steps = config.total_train_steps(batches_per_epoch)
    return RunLength(total_steps=steps, budget_seconds=budget)
