"""The learning-rate schedule: transformers' `lr_scheduler_type` over the run's steps, or laid out
over its progress (budget.py) when it has a time budget.

The rule with both max_steps and max_train_minutes: the schedule follows whichever bound is
further along at each step (progress is the further of step / max_steps and seconds / budget),
since which one ends the run is only known at its end (the pace of a step is not known ahead).
While max_steps leads, and so for a run that max_steps ends throughout, the learning rate at each
step is the one `get_scheduler` gives over max_steps, warmup included; once the clock leads, the
rest of the schedule is laid out over the time left."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from hfmini.errors import HfminiError
from hfmini.training.budget import Progress, RunLength


def warmup_steps_for(warmup: float, total_steps: int) -> int:
    """transformers' reading of warmup_steps: at least 1 counts steps, below 1 a fraction."""
    steps = int(warmup) if warmup >= 1 else math.ceil(warmup * total_steps)
    return min(steps, total_steps)


def build_scheduler(optimizer, args, length: RunLength, progress: Progress):
    """The learning-rate schedule: transformers' `lr_scheduler_type`, over the run's steps, or
    over its progress (budget.py) when it has a time budget. Stepped once per optimizer step,
    after `progress` is updated."""
    from transformers import get_scheduler

    if not length.has_budget:
        try:
            return get_scheduler(
                args.lr_scheduler_type,
                optimizer,
                num_warmup_steps=warmup_steps_for(args.warmup_steps, length.total_steps),
                num_training_steps=length.total_steps,
            )
        except ValueError as err:
            raise HfminiError(f"lr_scheduler_type {args.lr_scheduler_type!r}: {err}") from None
    shape = _schedule_shape(args.lr_scheduler_type)
    warmup, in_steps = args.warmup_steps, args.warmup_steps >= 1
    if length.total_steps is not None:
        # Both bounds: warmup is the fraction of max_steps that the step schedule warms up for,
        # so a run that max_steps ends gets transformers' schedule over max_steps exactly.
        warmup = warmup_steps_for(warmup, length.total_steps) / length.total_steps
        in_steps = False

    def factor(_: int) -> float:
        if in_steps:  # time only, warmup in steps: then the shape over the whole run
            return min(1.0, progress.step / warmup) * shape(progress.done)
        if progress.done < warmup:  # warmup over the first fraction of the run
            return progress.done / warmup
        if warmup >= 1.0:  # warmup spans the whole run
            return 1.0
        return shape((progress.done - warmup) / (1.0 - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# Positions of a named schedule sampled when it is laid out over a fraction of the run.
_SHAPE_RESOLUTION = 1_000_000


def _schedule_shape(name: str) -> Callable[[float], float]:
    """transformers' schedule `name` without warmup, as a function of the fraction done (0 to 1):
    the factor its LambdaLR gives a run of _SHAPE_RESOLUTION steps at that step."""
    from transformers import get_scheduler

    throwaway = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        scheduler = get_scheduler(
            name, throwaway, num_warmup_steps=0, num_training_steps=_SHAPE_RESOLUTION
        )
    except ValueError as err:
        raise HfminiError(f"lr_scheduler_type {name!r}: {err}") from None
    if type(scheduler) is not torch.optim.lr_scheduler.LambdaLR:
        raise HfminiError(
            f"lr_scheduler_type {name!r} cannot be laid out over a time budget: choose linear, "
            "cosine, polynomial, constant or constant_with_warmup, or set max_steps instead of "
            "max_train_minutes"
        )
    at_step = scheduler.lr_lambdas[0]
    return lambda done: at_step(round(min(1.0, max(0.0, done)) * _SHAPE_RESOLUTION))
