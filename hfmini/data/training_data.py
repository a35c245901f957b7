"""What the training loop needs from training data, whatever its kind: one typed interface.

    kind          class (module)                train batches (B, T)                 validation
    text          PreparedData (blocks.py)      input_ids                            TokenValidation
    examples      PreparedExamples (packing.py) input_ids, labels, position_ids      ExampleValidation
    a stream      StreamingData (streaming.py)  input_ids                            TokenValidation

The loop (hfmini.training) reads only these members; it never asks which kind it holds.
`hfmini.data.prepare.prepare_data` builds the right one from the run's configuration.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch

from hfmini.errors import HfminiError

TEXT_FORMAT = "language_modeling"  # data_format of plain text (blocks and streams)


class ValidationSet(Protocol):
    """The held-out data, as units scored together in batches (blocks of a token stream, or
    example sequences): what `hfmini.training.evaluation.score_validation` reads."""

    def units(self) -> list:
        """Every scoring unit, in order (shared round-robin across processes)."""

    def batches(self, units: list, batch_size: int) -> list[list]:
        """`units` grouped into the batches a forward pass takes."""

    def batch(self, group: list) -> dict[str, torch.Tensor]:
        """input_ids and labels (IGNORE_INDEX where not scored), maybe position_ids: (B, T)."""


class TrainingData(Protocol):
    block_size: int  # tokens per training sequence (at most, for examples)
    format: str  # TEXT_FORMAT, "prompt_completion" or "conversational" (sft.data_format)
    train_bytes: int  # UTF-8 bytes of the training text; 0 when unknown ahead (a stream)
    dropped_train_tokens: int  # not trained on (a final partial block, truncated examples)
    # Whether accelerate shards the train loader across processes; False when the data reads
    # its own part per process (a stream).
    sharded_by_accelerate: bool

    @property
    def num_train_blocks(self) -> int | None:
        """Training sequences; None when not known ahead (a stream: the run counts steps)."""

    @property
    def train_tokens(self) -> torch.Tensor:
        """(n,) the training tokens held (empty for a stream)."""

    @property
    def eval_tokens(self) -> torch.Tensor:
        """(n,) the validation tokens."""

    @property
    def validation(self) -> ValidationSet: ...

    def fingerprint(self) -> str:
        """A hash that tells this data apart from other data (checked on resume)."""

    def train_loader(self, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
        """The training batches, shuffled by a generator of their own seeded with `seed`."""

    def epoch_batches(self, loader, epoch: int, consumed: int, accelerator) -> Iterable[dict]:
        """The batches of `epoch` after the `consumed` already trained on, on the device."""

    def epochs_done(self, epoch: int, consumed: int, batches_per_epoch: int) -> float:
        """Passes over the training data so far, for the log."""

    def position(self) -> dict | None:
        """Where reading stands, beyond the epoch counters (a stream's state; None else)."""

    def restore_position(self, state: dict) -> None: ...

    def describe(self) -> str:
        """The start-up log line about the data."""


def epoch_of_shuffled_loader(loader, epoch: int, consumed: int, accelerator) -> Iterable[dict]:
    """A prepared (accelerate-sharded, device-placing) loader's batches of `epoch`: its shuffle
    set for that epoch, the `consumed` first batches skipped when resuming mid-epoch."""
    loader.set_epoch(epoch)
    if consumed:
        return accelerator.skip_first_batches(loader, consumed)
    return loader


class InMemoryData:
    """The members shared by the kinds whose training sequences are known ahead (text blocks,
    examples): a shuffled loader that accelerate shards, epochs counted in its batches.
    Subclasses provide `train_dataset()`, `collate`, and the fields of TrainingData."""

    sharded_by_accelerate = True

    def train_dataset(self) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return torch.utils.data.default_collate(rows)

    def train_loader(self, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
        loader = torch.utils.data.DataLoader(
            self.train_dataset(),
            collate_fn=self.collate,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,  # fixed shapes: no recompilation for a ragged last batch
            # Its own generator: starting an epoch (or a resumed one) then draws nothing from the
            # global RNG, whose restored state must go to dropout exactly as in an unbroken run.
            generator=torch.Generator().manual_seed(seed),
        )
        if len(loader) == 0:
            raise HfminiError(
                f"the train split has {self.num_train_blocks} blocks, fewer than one batch of "
                f"{batch_size}: lower per_device_train_batch_size or block_size"
            )
        return loader

    epoch_batches = staticmethod(epoch_of_shuffled_loader)

    def epochs_done(self, epoch: int, consumed: int, batches_per_epoch: int) -> float:
        return epoch + consumed / max(1, batches_per_epoch)

    def position(self) -> dict | None:
        return None  # the epoch counters and the loader's seed say where reading stands

    def restore_position(self, state: dict) -> None:
        pass  # nothing to restore: position() is None

    def describe(self) -> str:
        tokens = self.train_tokens.numel()
        return (
            f"data: {self.num_train_blocks} training blocks of {self.block_size} tokens "
            f"({tokens / 1e6:.2f}M tokens, "
            f"{self.train_bytes / max(1, tokens + self.dropped_train_tokens):.2f} bytes/token), "
            f"{self.eval_tokens.numel()} validation tokens"
        )
