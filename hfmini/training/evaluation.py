"""Validation loss, perplexity and bits per byte: of a run's validation set as it trains, and of a
saved model (`hfmini eval`).

Bits per byte is the headline figure because it does not depend on the tokenizer:

    bits_per_byte = total NLL in nats / (ln 2 × UTF-8 bytes of the text scored)

"The text scored" is the bytes of the predicted tokens (the labels): every token of a block after
its first, or the answers of examples. EOS tokens between documents are predicted and their NLL
counted, but they stand for no bytes of text.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from hfmini.config import DataArguments, read_yaml
from hfmini.data.blocks import TokenValidation
from hfmini.data.packing import ExampleValidation
from hfmini.data.prepare import eval_examples, prepare_eval_tokens
from hfmini.data.training_data import ValidationSet
from hfmini.errors import HfminiError
from hfmini.models.sampling import load_model_and_tokenizer
from hfmini.models.size import context_length
from hfmini.models.tokenizer import token_byte_lengths
from hfmini.run_folder import TRAINING_CONFIG_FILE
from hfmini.training.metrics import load_metric


def metrics_from_sums(nll: float, tokens: float, n_bytes: float) -> dict[str, float]:
    """Loss, perplexity and bits per byte from summed NLL, through hfmini's `evaluate` modules."""

    perplexity = load_metric("perplexity").compute(nll=[nll], num_tokens=[tokens])
    bits = load_metric("bits_per_byte").compute(nll=[nll], num_bytes=[n_bytes])
    return {
        "eval_loss": perplexity["loss"],
        "perplexity": perplexity["perplexity"],
        "bits_per_byte": bits["bits_per_byte"],
        "eval_tokens": tokens,
        "eval_bytes": n_bytes,
    }


def _spread(items: list, max_items: int | None) -> list:
    """At most `max_items`, evenly spaced: a cheap estimate that still samples the whole split."""
    if max_items is None or len(items) <= max_items:
        return items
    stride = len(items) / max_items
    return [items[int(i * stride)] for i in range(max_items)]


def _shares(items: list, accelerator) -> list[list]:
    """Round-robin shares of `items`, one per process."""
    if accelerator is None or accelerator.num_processes <= 1:
        return [items]
    return [items[i :: accelerator.num_processes] for i in range(accelerator.num_processes)]


@torch.no_grad()
def _score(model, groups: list, run_by_all: int, make_batch, token_bytes, accelerator, should_stop):
    """Summed NLL, target count and target bytes over the labels (not -100) of every batch that
    `make_batch(group)` builds, reduced across processes; None if `should_stop` said so.

    `should_stop` may be a collective (an all-reduce): it is asked only before the first
    `run_by_all` batches, which every process runs."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # float64 sums, except on Apple's MPS, which has no float64.
    dtype = torch.float32 if device.type == "mps" else torch.float64
    token_bytes = token_bytes.to(device, dtype)
    sums = torch.zeros(3, dtype=dtype, device=device)  # nll, predicted tokens, bytes
    for i, group in enumerate(groups):
        if should_stop is not None and i < run_by_all and should_stop():
            model.train(was_training)
            return None
        batch = {k: v.to(device) for k, v in make_batch(group).items()}
        labels = batch.pop("labels")
        # Blocks are whole (padding only ever follows the scored tokens, which causal attention
        # never looks back at), so the mask is all ones: said explicitly, transformers does not
        # warn about padding, and its SDPA path still takes the causal fast path.
        batch.setdefault("attention_mask", torch.ones_like(batch["input_ids"]))
        logits = model(**batch, use_cache=False).logits[:, :-1].float()  # (B, T-1, V)
        targets = labels[:, 1:]  # (B, T-1)
        scored = targets != -100
        nll = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum"
        )
        sums += torch.stack(
            [
                nll.to(dtype),
                scored.sum().to(dtype),
                token_bytes[targets.clamp(min=0)][scored].sum(),
            ]
        )
    if accelerator is not None and accelerator.num_processes > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    model.train(was_training)
    return sums


def score_validation(
    model,
    validation: ValidationSet,
    batch_size: int,
    token_bytes: torch.Tensor,
    accelerator=None,
    max_blocks: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, float] | None:
    """Score the labels of a validation set (hfmini.data.training_data.ValidationSet: blocks of a
    token stream, or example sequences) with `model`; its units are shared round-robin across
    processes and the sums reduced, so every process returns the same figures. `max_blocks`
    scores at most that many units, spread over the whole set.

    `should_stop` (the same answer on every process) is asked before each batch that all
    processes run; True ends the evaluation early with None, so a signal need not wait for it.
    Cost: one forward pass per unit, logits of (batch, block, vocab) floats at a time.
    """
    shares = _shares(_spread(validation.units(), max_blocks), accelerator)
    mine = shares[accelerator.process_index if len(shares) > 1 else 0]
    run_by_all = min(len(validation.batches(share, batch_size)) for share in shares)
    groups = validation.batches(mine, batch_size)
    sums = _score(
        model, groups, run_by_all, validation.batch, token_bytes, accelerator, should_stop
    )
    return None if sums is None else metrics_from_sums(*sums.tolist())


# ---------------------------------------------------------------------------------------------
# a saved model, scored as training scored it (`hfmini eval`)


def eval_data_args(model_dir: str | Path, validation_file, text_column):
    """The data source recorded in the model's training_config.yaml, with command-line overrides."""
    import dataclasses

    recorded = {}
    config_file = Path(model_dir) / TRAINING_CONFIG_FILE
    if config_file.is_file():
        recorded = _read_training_config(config_file)
    names = {f.name for f in dataclasses.fields(DataArguments)}
    values = {k: v for k, v in recorded.items() if k in names}
    _check_recorded_types(values, config_file)
    if validation_file:
        values["validation_file"] = validation_file
        values["train_file"] = values.get("train_file") or validation_file
        values.pop("dataset_name", None)
        values.pop("dataset_mixture", None)
        values["streaming"] = False  # the file named is scored whole
    if text_column:
        values["text_column"] = text_column
    return DataArguments(**values)


_FIX_RECORD = "fix it, or delete it and pass --validation_file"


def _read_training_config(config_file: Path) -> dict:

    recorded = read_yaml(config_file, str(config_file), _FIX_RECORD) or {}
    if not isinstance(recorded, dict):
        raise HfminiError(
            f"{config_file} must be a mapping of key: value, got a {type(recorded).__name__}: "
            f"{_FIX_RECORD}"
        )
    return recorded


def _check_recorded_types(values: dict, config_file: Path) -> None:
    """Each recorded value has its DataArguments field's type (int, float, str, list[str], None)."""
    import types
    import typing

    def fits(value, kind) -> bool:
        if kind is type(None):
            return value is None
        if typing.get_origin(kind) is list:
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        if isinstance(value, bool):
            return kind is bool
        return isinstance(value, int | float) if kind is float else isinstance(value, kind)

    hints = typing.get_type_hints(DataArguments)
    for key, value in values.items():
        kinds = typing.get_args(hints[key]) if isinstance(hints[key], types.UnionType) else ()
        kinds = kinds or (hints[key],)
        if not any(fits(value, kind) for kind in kinds):
            names = [k.__name__ if isinstance(k, type) else str(k) for k in kinds]
            expected = " or ".join(names).replace("NoneType", "None")
            raise HfminiError(
                f"{config_file}: {key} must be {expected}, got {value!r}: {_FIX_RECORD}"
            )


def evaluate_model(
    model_dir: str | Path,
    validation_file: list[str] | None = None,
    text_column: str | None = None,
    block_size: int | None = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """Score a saved model (`hfmini eval`): by default on the validation split it was trained
    with, as recorded in its training_config.yaml; else on `validation_file`. Returns eval_loss,
    perplexity, bits_per_byte and the token and byte counts scored."""

    if batch_size <= 0:
        raise HfminiError(f"batch_size must be positive, got {batch_size}")
    model, tokenizer = load_model_and_tokenizer(model_dir)
    # A text stream is scored in blocks of the model's whole context unless told otherwise.
    context = context_length(model.config)
    stream_block = block_size or context
    if not 2 <= stream_block <= context:
        raise HfminiError(
            f"block_size must be between 2 and the model's context {context}, got {stream_block}"
        )
    data_args = eval_data_args(model_dir, validation_file, text_column)
    token_bytes = torch.tensor(token_byte_lengths(tokenizer), dtype=torch.float64)
    # Prompt-completion or conversations: the answers are scored, as in training.
    examples = eval_examples(data_args, tokenizer, block_size or data_args.block_size)
    if examples is not None:
        validation = ExampleValidation(examples, tokenizer.pad_token_id)
        return score_validation(model, validation, batch_size, token_bytes)
    tokens = prepare_eval_tokens(data_args, tokenizer)
    # Bits per byte divides by the bytes of the predicted tokens: all but the first of each block.
    # (A count per token id, not a byte count per token: no tensor the size of the stream.)
    counts = torch.bincount(tokens, minlength=len(token_bytes)).double()
    scored = counts @ token_bytes - token_bytes[tokens[::stream_block].long()].sum()
    if scored <= 0:
        raise HfminiError(
            f"the validation text is too short to score: its {tokens.numel()} tokens leave no "
            "text to predict after the first token of a block; add text"
        )
    return score_validation(model, TokenValidation(tokens, stream_block), batch_size, token_bytes)
