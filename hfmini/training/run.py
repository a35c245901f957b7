"""One training run's state: `Run` (what `setup` fixed, plus what the loop moves on: its `state`,
what a checkpoint needs to resume exactly, and its `window`, what accumulates between two
logging steps), and what saves it (`save`, `save_to_resume`) or stops it
(`stop_agreed`, `check_finite`). The loop, validation and the export read and change a Run; none
of them holds state of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from hfmini.config import Config
from hfmini.data.training_data import TEXT_FORMAT, TrainingData
from hfmini.errors import HfminiError
from hfmini.outputs.checkpoint import TrainState, save_checkpoint
from hfmini.outputs.hub import push_snapshot
from hfmini.run_folder import list_checkpoints
from hfmini.training.accelerator import inference_model
from hfmini.training.budget import Progress, RunLength, TrainClock
from hfmini.training.ema import WeightAverage
from hfmini.training.interrupt import StopRequest
from hfmini.training.tracking import RunLogger

logger = logging.getLogger("hfmini")


@dataclass
class LogWindow:
    """What the loop accumulates between two logging steps. The tensors stay on the device and
    are read only at logging steps, to avoid a host sync per step."""

    loss_sum: torch.Tensor  # () summed item losses (objectives.LossSum) since the last log
    items: torch.Tensor  # () items (label tokens) those losses sum over, this process
    step_items: torch.Tensor  # () items of the optimizer step being accumulated, this process
    first_bad_step: torch.Tensor  # () first optimizer step whose loss was not finite; -1: none
    grad_norm: torch.Tensor | None = None  # () the latest optimizer step's gradient norm
    # The objective's other sums since the last log (LossSum.metrics), this process.
    metric_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    micro_batches: int = 0
    tokens: int = 0  # over all processes
    started: float = field(default_factory=time.perf_counter)

    def restart(self) -> None:
        self.loss_sum.zero_()
        self.items.zero_()
        for value in self.metric_sums.values():
            value.zero_()
        self.micro_batches = self.tokens = 0
        self.started = time.perf_counter()


@dataclass
class Run:
    """One training run. Built by `setup`; afterwards the loop changes `state` and `window`, and
    each optimizer step moves `progress`, `clock` and the weight average along."""

    config: Config
    accelerator: Accelerator
    model: torch.nn.Module  # prepared (DDP/FSDP/compiled) model used for training steps
    objective: Callable[[torch.nn.Module, dict], object]  # the batch's LossSum (objectives.py)
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    train_loader: DataLoader
    batches_per_epoch: int  # of this process; 0 when unknown ahead (a stream)
    data: TrainingData
    tokenizer: PreTrainedTokenizerBase
    token_bytes: torch.Tensor  # (vocab,) UTF-8 bytes per token id, for bits per byte
    run_logger: RunLogger
    ema: WeightAverage | None  # when ema_decay > 0
    length: RunLength  # max_steps and/or the time budget
    progress: Progress  # step and fraction done, read by the scheduler and the weight average
    clock: TrainClock  # seconds of training steps, over every session of the run
    tokens_per_step: int  # over all processes and accumulation micro-batches
    flops_per_token: float
    peak_flops: float
    state: TrainState
    window: LogWindow
    base_model: str | None = None  # the Hub id fine-tuned from, for the model card

    @property
    def is_chat(self) -> bool:
        """Trained on examples rendered by a chat template."""
        return self.data.format != TEXT_FORMAT and bool(self.tokenizer.chat_template)


def stop_agreed(run: Run, stop: StopRequest) -> bool:
    """Did any process get a signal? Multi-process, accelerate's trigger: one tiny all-reduce."""
    acc = run.accelerator
    if stop.requested:
        acc.set_trigger()
    if acc.num_processes == 1:
        return stop.requested
    # The all-reduce's answer, never this process's flag alone: a signal landing between the two
    # lines above must wait for the next question, or this process would stop and the others not.
    if not acc.check_trigger():
        return False
    stop.told_by_another()  # so that rank 0 reports the checkpoint whoever was signalled
    return True


def check_finite(run: Run) -> None:
    """Stop with a one-line error if a loss since the start was not finite (a host sync)."""
    bad_step = int(run.window.first_bad_step.item())
    if bad_step >= 0:
        newest = list_checkpoints(run.config.train.output_dir)
        kept = f"the last good checkpoint is {newest[-1]}" if newest else "no checkpoint was saved"
        raise HfminiError(
            f"loss became non-finite at step {bad_step}: lower learning_rate or raise warmup_steps;"
            f" {kept}"
        )


def save(run: Run) -> Path:
    """A resumable checkpoint of the current step (with the logging window, so that logged
    losses after a resume are exactly those of an uninterrupted run)."""
    state, args = run.state, run.config.train
    state.loss_since_log = float(run.window.loss_sum.item())
    state.items_since_log = int(run.window.items.item())
    state.metrics_since_log = {k: float(v.item()) for k, v in run.window.metric_sums.items()}
    state.batches_since_log = run.window.micro_batches
    state.train_seconds = run.clock.seconds()
    path = save_checkpoint(
        run.accelerator,
        args.output_dir,
        state,
        run.scheduler,
        run.tokenizer,
        args.save_total_limit,
        run.ema,
        run.config.to_dict(),
        data_position=run.data.position(),
        objective_state=(
            run.objective.state_dict() if hasattr(run.objective, "state_dict") else None
        ),
    )
    logger.info("checkpoint saved: %s", path)
    if args.push_to_hub and args.hub_strategy == "every_save" and run.accelerator.is_main_process:
        model, _ = inference_model(run.accelerator, run.model)
        push_snapshot(model, run.tokenizer, args.hub_model_id, args.hub_private_repo, state.step)
    return path


def save_to_resume(run: Run, saved: bool, stop: StopRequest) -> None:
    """Checkpoint (unless `saved`: this step's is on disk) and note it in `stop`, whose owner
    prints how to resume once everything is closed (trainer.py)."""
    check_finite(run)
    stop.saved_to = save(run) if not saved else list_checkpoints(run.config.train.output_dir)[-1]
    stop.stopped_at = run.state.step
