"""Training objectives: the loss of one micro-batch, computed in one named place.

    loss = run.objective(model, batch)        # () scalar; the training step backpropagates it

Next-token prediction (`next_token_loss`) is the objective of every run today: text blocks,
prompt-completion and conversations alike (their labels say which tokens count). Another
objective (a preference loss, a policy-gradient loss) is a function of the same shape, chosen in
`objective_for`; the loop around it — accumulation, clipping, the time budget, checkpoints and
exact resume, the weight average, tracking — stays shared.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hfmini.config import Config
from hfmini.data.packing import IGNORE_INDEX

Objective = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch as the model's keyword arguments. Text blocks: every token is a label. Examples:
    their labels and position ids (which keep packed examples apart), and the loss averaged over
    the label count clamped to 1, so a micro-batch whose answers were all cut off gives 0, not
    0/0."""
    if "labels" not in batch:
        return {"input_ids": batch["input_ids"], "labels": batch["input_ids"]}
    labels = batch["labels"]  # (B, T)
    count = (labels[:, 1:] != IGNORE_INDEX).sum().clamp(min=1)  # on the device: no host sync
    return {**batch, "num_items_in_batch": count}


def next_token_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of each label given the tokens before it: () scalar.

    No KV cache in training: building one each forward costs time and, under FSDP with
    torch.compile, recompiles every block (the cache's layer index differs per block). Without a
    cache and an attention_mask, position ids that restart mark packed examples."""
    return model(**model_inputs(batch), use_cache=False).loss


def objective_for(config: Config) -> Objective:
    """The run's objective; next-token prediction for every kind of data hfmini trains on now."""
    return next_token_loss
