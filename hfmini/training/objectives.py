"""Training objectives: the loss of one micro-batch, computed in one named place.

    loss = run.objective(model, batch)   # LossSum: () summed loss, () items it sums over

An objective returns a sum, not a mean: the training step divides the sums of a whole optimizer
step (every micro-batch of the accumulation window, every process) by their item count, so each
item (a label token) weighs alike however the step is split (as transformers' Trainer does with
num_items_in_batch over the window).

Next-token prediction (`next_token_loss`) is the objective of text blocks, prompt-completion
and conversations alike (their labels say which tokens count); preference pairs take a pair loss
(training/preference.py: its items are pairs). Each is a callable of the same shape, chosen in
`objective_for`; the loop around it — accumulation, clipping, the time budget, checkpoints and
exact resume, the weight average, tracking — stays shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from hfmini.config import Config
from hfmini.data.packing import IGNORE_INDEX


@dataclass
class LossSum:
    """A micro-batch's loss as a sum over its items, and how many items it sums over."""

    total: torch.Tensor  # () the summed loss
    items: torch.Tensor  # () the item count (label tokens, or pairs), on the device: no host sync
    # More sums over the same items, logged as train/<name> divided by the items (a preference
    # loss's rewards and log-probs); detached.
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


Objective = Callable[[torch.nn.Module, dict[str, torch.Tensor]], LossSum]


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch as the model's keyword arguments, the loss summed over its labels
    (num_items_in_batch 1). Text blocks: every token is a label. Examples: their labels and
    position ids (which keep packed examples apart)."""
    labels = batch.get("labels", batch["input_ids"])  # (B, T)
    return {**batch, "labels": labels, "num_items_in_batch": 1}


def label_count(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """() the labels a batch's loss sums over: every position after the first that is not
    IGNORE_INDEX."""
    labels = batch.get("labels", batch["input_ids"])  # (B, T)
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def next_token_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossSum:
    """Summed cross-entropy of each label given the tokens before it, and the label count.

    No KV cache in training: building one each forward costs time and, under FSDP with
    torch.compile, recompiles every block (the cache's layer index differs per block). Without a
    cache and an attention_mask, position ids that restart mark packed examples."""
    total = model(**model_inputs(batch), use_cache=False).loss
    return LossSum(total, label_count(batch))


def objective_for(config: Config) -> Objective:
    """The objective of text, prompt-completion and conversations: next-token prediction.
    (Preference pairs take training/preference.py's PreferenceObjective, chosen in setup.)"""
    return next_token_loss
