"""Training, end to end: `run_training` (setup → score the start → train → finish) and `main`, the
entry point of `recipes/train.py` and `hfmini train`.

    python recipes/train.py --config recipes/shakespeare/config.yaml [--key value ...]

The same code runs as one process, under `accelerate launch` on many GPUs/nodes, and under
`torchrun` on CPU machines (gloo data parallel). Its stages: setup.py (a `Run`), loop.py (the
optimizer steps), objectives.py (the loss of a batch), validation.py, finish.py (the export).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

from hfmini.config import Config, parse_config
from hfmini.errors import HfminiError
from hfmini.outputs.output_dir import OutputDirLock
from hfmini.training.finish import finish
from hfmini.training.interrupt import Interrupted, StopRequest, resume_command
from hfmini.training.loop import train
from hfmini.training.setup import setup
from hfmini.training.validation import score_start

logger = logging.getLogger("hfmini")


def run_training(config: Config, stop: StopRequest | None = None) -> dict:
    """The whole run. Returns the final validation metrics (empty if stopped by a signal).

    The main process (rank 0, as launchers number them) holds output_dir's lock throughout.
    `stop`: the caller's signal handling, already entered (`main`'s); else this run's own. A
    signal during setup raises Interrupted: until the first step there is nothing to save.
    """
    main_process = os.environ.get("RANK", "0") == "0"
    own = stop is None
    handling = StopRequest() if own else contextlib.nullcontext(stop)
    with handling as stop, OutputDirLock(config.train.output_dir, main_process):
        run = setup(config)
        stop.training()
        try:
            completed = score_start(run, stop) and train(run, stop)
            metrics = finish(run, stop) if completed else {}
        finally:
            run.accelerator.end_training()
    if own and stop.saved_to is not None:  # called from Python: `main` is not there to say it
        logger.info(
            "stopped at step %d; checkpoint saved to %s (resume_from_checkpoint='latest')",
            stop.stopped_at,
            stop.saved_to,
        )
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recipes/train.py` and `hfmini train`: errors print one line, exit 2; a
    signal ends on one line (the checkpoint and the command that resumes), exit 130 or 143."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork for datasets.map
    started = time.perf_counter()
    stop, config = StopRequest(), None
    try:
        with stop:
            config = parse_config(argv)
            metrics = run_training(config, stop)
            if stop.requested and not metrics:
                # Said while the handling is in place: a launcher's repeat of the signal, or a
                # second Ctrl-C close behind the first, must not cut the resume line short.
                return stopped(stop)
    except HfminiError as err:
        # A mistake in the settings is the same on every process: rank 0 says it once.
        if config is not None or os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        return interrupted(err, stop)
    if metrics:
        before = metrics.get("start_bits_per_byte")
        logger.info(
            "done in %.1f min: validation loss %.4f, bits per byte %s%.4f",
            (time.perf_counter() - started) / 60,
            metrics["eval_loss"],
            f"{before:.4f} → " if before is not None else "",
            metrics["bits_per_byte"],
        )
    return 0


def stopped(stop: StopRequest) -> int:
    """The last line after a signal stopped the run: what was saved and how to go on."""
    if os.environ.get("RANK", "0") == "0":
        if stop.saved_to is None:
            done = "stopped before the first step, nothing to resume"
        else:
            done = f"checkpoint saved to {stop.saved_to} (step {stop.stopped_at})"
        again = resume_command() if stop.saved_to else "the same command"
        print(f"{stop.signal_name}: {done}; to go on: {again}", file=sys.stderr, flush=True)
    return stop.exit_code


def interrupted(err: KeyboardInterrupt, stop: StopRequest) -> int:
    """A signal before the first step, or Ctrl-C pressed again: one line, 128 + the signal."""
    name, code = (err.args[0], err.exit_code) if isinstance(err, Interrupted) else ("SIGINT", 130)
    if stop.saved_to is not None:  # pressed again while the resume line was being written
        stopped(stop)
    elif stop.requested:
        print(f"{name}: aborted without saving", file=sys.stderr, flush=True)
    else:
        print(f"{name}: stopped before training began, nothing saved", file=sys.stderr)
    return code
