"""Config: the three argument groups of one run, the checks that span them, and what derives from
them (the learning rate default, the context of a model built from scratch, tokens per step)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from hfmini.config.data_args import DataArguments
from hfmini.config.defaults import DEFAULT_LEARNING_RATES
from hfmini.config.model_args import ModelArguments
from hfmini.config.train_args import TrainArguments
from hfmini.errors import HfminiError


@dataclass
class Config:
    """Everything one run needs; `to_dict()` is what trackers and the model card record."""

    data: DataArguments
    model: ModelArguments
    train: TrainArguments

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.data),
            **dataclasses.asdict(self.model),
            **dataclasses.asdict(self.train),
        }

    def to_flat_dict(self) -> dict[str, str | int | float | bool]:
        """to_dict() with lists joined and None spelled out: TensorBoard's hparams take scalars."""
        return {
            key: ", ".join(map(str, value))
            if isinstance(value, list)
            else ("None" if value is None else value)
            for key, value in self.to_dict().items()
        }

    def __post_init__(self) -> None:
        """Checks that span two argument groups; run for a Config built in Python too."""
        if self.train.learning_rate is None:
            self.train.learning_rate = DEFAULT_LEARNING_RATES[self.training_kind()]
        # Fine-tuning: the model's own context is checked against block_size once it is read.
        if self.model.from_scratch and self.data.block_size > self.context_length():
            raise HfminiError(
                f"block_size {self.data.block_size} is above the model's context n_positions "
                f"{self.context_length()}: lower block_size or raise n_positions"
            )
        if self.data.streaming and self.train.max_steps <= 0 and not self.train.max_train_minutes:
            raise HfminiError(
                "streaming reads the data as training goes, so its length is unknown: set "
                "max_steps (the run's length in optimizer steps) or max_train_minutes"
            )

    def context_length(self) -> int:
        """The context of a model built from scratch."""
        return self.model.n_positions or self.data.block_size

    def training_kind(self) -> str:
        """scratch, full (fine-tuning every weight) or lora."""
        if self.model.from_scratch:
            return "scratch"
        return "lora" if self.model.use_peft else "full"

    def tokens_per_step(self, num_processes: int) -> int:
        """Tokens per optimizer step over all processes and accumulation micro-batches."""
        args = self.train
        return (
            args.per_device_train_batch_size
            * self.data.block_size
            * args.gradient_accumulation_steps
            * num_processes
        )

    def total_train_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps the run will take: max_steps, or epochs over the sharded data."""
        if self.train.max_steps > 0:
            return self.train.max_steps
        steps_per_epoch = math.ceil(batches_per_epoch / self.train.gradient_accumulation_steps)
        return max(1, math.ceil(self.train.num_train_epochs * steps_per_epoch))
