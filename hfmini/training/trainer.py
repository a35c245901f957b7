"""Training, end to end: `run_training` (setup → score the start → train → finish) and `main`, the
entry point of `recipes/train.py` and `hfmini train`.

    accelerate launch recipes/train.py --config recipes/shakespeare/config.yaml [--key value ...]

The same code runs as one process, under `accelerate launch` on many GPUs/nodes, and under
`torchrun` on CPU machines (gloo data parallel). Its stages: setup.py (a `Run`), loop.py (the
optimizer steps), objectives.py (the loss of a batch), validation.py, finish.py (the export).
"""

from __future__ import annotations

import logging
import os
import sys
import time

from hfmini.config import Config, parse_config
from hfmini.errors import HfminiError
from hfmini.outputs.output_dir import OutputDirLock
from hfmini.training.finish import finish
from hfmini.training.interrupt import StopRequest
from hfmini.training.loop import train
from hfmini.training.setup import setup
from hfmini.training.validation import score_start

logger = logging.getLogger("hfmini")


def run_training(config: Config) -> dict:
    """The whole run. Returns the final validation metrics (empty if stopped by a signal).

    The main process (rank 0, as launchers number them) holds output_dir's lock throughout.
    """
    main_process = os.environ.get("RANK", "0") == "0"
    with StopRequest() as stop, OutputDirLock(config.train.output_dir, main_process):
        run = setup(config)
        try:
            completed = score_start(run, stop) and train(run, stop)
            metrics = finish(run, stop) if completed else {}
        finally:
            run.accelerator.end_training()
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recipes/train.py` and `hfmini train`: errors print one line, exit 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork for datasets.map
    started = time.perf_counter()
    try:
        config = parse_config(argv)
        metrics = run_training(config)
    except HfminiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
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
