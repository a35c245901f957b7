"""The composer of the data stage: the one place the data primitives are put together.

    prepare_data(config) ─► streaming?          prepare_stream: open, split by process, validation
                         ─► load_raw ─► format?  prepare_examples: check rows, hold out, tokenizer
                                                 + chat template, render and tokenize, pack
                         ─► text                 check, chunk_and_split, tokenizer (trained on a
                                                 sample of the train chunks, or loaded),
                                                 tokenize_and_pack
    ─► (a TrainingData, the tokenizer)

`prepare_eval_tokens` and `eval_examples` run the same stages for `hfmini eval` with a trained
model's tokenizer. Every step up to the token files is cached on disk (`datasets` Arrow files,
then one flat file of ids per split beside them), so a second run on the same inputs reads files
instead of tokenizing again, and no stage holds the corpus in memory.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from hfmini.data.blocks import PreparedData, pack
from hfmini.data.chunks import chunk_documents, text_bytes
from hfmini.data.packing import PreparedExamples, SequenceDataset, sequences_of
from hfmini.data.preference import (
    PreparedPairs,
    check_pair_rows,
    is_preference,
    pair_rows,
    pair_text_batch,
    tokenize_pairs,
)
from hfmini.data.prompts import (
    PreparedPrompts,
    PromptSet,
    check_prompt_rows,
    is_prompt_only,
    prompt_text_batch,
    tokenize_prompts,
)
from hfmini.data.readers import expand_data_files, load_local
from hfmini.data.sft import (
    check_splits,
    data_format,
    needs_chat_template,
    tokenize_rows,
    tokenizer_text_batch,
)
from hfmini.data.sources import load_raw, load_sources, load_validation_files
from hfmini.data.splits import hold_out_validation
from hfmini.data.streaming import (
    BlockStream,
    StreamingData,
    check_stream_columns,
    open_streams,
    tokenizer_texts,
    validation_tokens,
)
from hfmini.data.text_columns import check_text_column, check_text_values
from hfmini.data.tokens import flat_tokens, token_file, tokenize_chunks, tokenizer_fingerprint
from hfmini.errors import HfminiError
from hfmini.models.chat_template import apply_template
from hfmini.models.tokenizer import token_byte_lengths, tokenizer_for_run

logger = logging.getLogger("hfmini.data")


def tokenizer_sample(train_chunks, model_args, resume_path: Path | None = None):
    """The train chunks a new tokenizer learns from: all of them up to tokenizer_train_bytes,
    else every k-th chunk (spread over the whole split) to about that many bytes. Logged."""
    budget = model_args.tokenizer_train_bytes
    trains_one = model_args.tokenizer_name is None and model_args.from_scratch
    if not trains_one or resume_path is not None or budget == 0:
        return train_chunks
    total = text_bytes(train_chunks)
    if total <= budget:
        return train_chunks
    stride = -(-total // budget)  # ceil
    sample = train_chunks.select(range(0, train_chunks.num_rows, stride))
    logger.info(
        "tokenizer: trains on every %d-th chunk, %.1f MB of the %.1f MB of training text "
        "(tokenizer_train_bytes %d)",
        stride,
        text_bytes(sample) / 1e6,
        total / 1e6,
        budget,
    )
    return sample


def chunk_and_split(raw, data_args):
    """Documents → chunks, with a validation split held out when the source has none."""
    chunks = chunk_documents(raw, data_args.text_column, data_args.preprocessing_num_workers)
    return hold_out_validation(chunks, data_args.validation_split_percentage)


def tokenize_and_pack(chunks, tokenizer, data_args) -> PreparedData:
    """Tokenize both splits (cached) and pack the training split into blocks."""
    block_size = data_args.block_size
    tokenized = tokenize_chunks(chunks, tokenizer, data_args.preprocessing_num_workers)
    train_tokens, dropped = pack(
        token_file(tokenized["train"], len(tokenizer)), block_size, "train"
    )
    eval_tokens = token_file(tokenized["validation"], len(tokenizer))
    if eval_tokens.numel() < block_size:
        raise HfminiError(
            f"the validation split has {eval_tokens.numel()} tokens, fewer than one block of "
            f"{block_size}: lower block_size or add validation text"
        )
    if dropped:
        logger.info("dropped the final partial training block: %d tokens", dropped)
    return PreparedData(
        train_tokens=train_tokens,
        eval_tokens=eval_tokens,
        block_size=block_size,
        dropped_train_tokens=dropped,
        train_bytes=text_bytes(chunks["train"]),
    )


def prepare_data(config, resume_path: Path | None = None) -> tuple[PreparedData, object]:
    """The whole data stage of a training run, top to bottom: load the sources, chunk and split,
    get the tokenizer (the resumed run's, a named one, or trained on the train split only), then
    tokenize and pack. Returns (PreparedData, tokenizer). Prompt-completion and conversational
    rows go to `hfmini.data.sft.prepare_examples` instead (PreparedExamples, tokenizer)."""

    if config.data.streaming:
        return prepare_stream(config, resume_path)
    raw, origins = load_raw(config.data)
    columns = raw["train"].column_names
    check_method_fits_data(config, columns)
    if is_prompt_only(columns):
        return prepare_prompts(config, raw, origins, resume_path)
    if is_preference(columns):
        return prepare_pairs(config, raw, origins, resume_path)
    if data_format(raw["train"].column_names, config.data.text_column) != "language_modeling":
        return prepare_examples(config, raw, origins, resume_path)
    check_text_column(raw, config.data.text_column, "")
    check_text_values(raw, config.data.text_column, origins)
    chunks = chunk_and_split(raw, config.data)
    sample = tokenizer_sample(chunks["train"], config.model, resume_path)
    tokenizer = tokenizer_for_run(config.model, sample, config.context_length(), resume_path)
    return tokenize_and_pack(chunks, tokenizer, config.data), tokenizer


def split_rows_and_tokenizer(config, raw, text_batch, resume_path=None):
    """Rows held out for validation (unless the source has a split), and the run's tokenizer:
    loaded, or trained on the train rows' text, which `text_batch` collects from a batch."""
    splits = hold_out_validation(raw, config.data.validation_split_percentage, "rows")
    texts = splits["train"].map(
        text_batch,
        batched=True,
        remove_columns=splits["train"].column_names,
        desc="Collecting text for the tokenizer",
    )
    tokenizer = tokenizer_for_run(config.model, texts, config.context_length(), resume_path)
    return splits, tokenizer


def prepare_examples(config, raw, origins: dict, resume_path=None) -> tuple[PreparedExamples, Any]:
    """The data stage for prompt-completion and conversational rows, top to bottom."""
    data_args = config.data
    fmt = data_format(raw["train"].column_names, data_args.text_column)
    answers_only = (
        data_args.assistant_only_loss if fmt == "conversational" else data_args.completion_only_loss
    )
    check_splits(raw, origins, fmt, answers_only)
    splits, tokenizer = split_rows_and_tokenizer(config, raw, tokenizer_text_batch, resume_path)
    origin = "none needed"
    if needs_chat_template(fmt, raw["train"]):
        origin = apply_template(tokenizer, data_args.chat_template)
    logger.info("data: %s rows; chat template: %s", fmt.replace("_", "-"), origin)
    tokenized = tokenize_rows(splits, fmt, tokenizer, data_args.preprocessing_num_workers)
    block = data_args.block_size
    train, truncated, cut = sequences_of(
        tokenized["train"], block, data_args.packing, answers_only, "train"
    )
    validation, _, _ = sequences_of(
        tokenized["validation"], block, data_args.packing, True, "validation"
    )
    share = float(train.trained.sum()) / max(1, train.tokens.numel())
    logger.info(
        "examples: %d train in %d sequences of at most %d tokens (%s), %d validation; the loss "
        "covers %.0f%% of the training tokens (%s)",
        len(train.lengths),
        len(train),
        block,
        "packed" if data_args.packing else "one a sequence",
        len(validation.lengths),
        100 * share,
        "answers only" if answers_only else "all of every example",
    )
    if truncated:
        logger.warning(
            "%d training examples are longer than block_size %d and were cut (%d tokens)",
            truncated,
            block,
            cut,
        )
    byte_lengths = torch.tensor(token_byte_lengths(tokenizer), dtype=torch.int64)
    prepared = PreparedExamples(
        train_sequences=train,
        eval_sequences=validation,
        block_size=block,
        format=fmt,
        pad_id=tokenizer.pad_token_id,
        train_bytes=int(byte_lengths[train.tokens.long()].sum()),
        truncated_examples=truncated,
        dropped_train_tokens=cut,
    )
    return prepared, tokenizer


def check_method_fits_data(config, columns: list[str]) -> None:
    """Reward functions and prompt-only rows go together (GRPO); either alone is a mistake."""
    args = config.train
    if is_prompt_only(columns) and not args.is_grpo:
        raise HfminiError(
            "the rows have a prompt and no answer, which GRPO learns from by sampling answers "
            "and scoring them: add --reward_funcs path/to/rewards.py:function (or give "
            "completion, chosen/rejected or messages columns to learn from answers)"
        )
    if args.is_grpo and not is_prompt_only(columns):
        raise HfminiError(
            f"reward_funcs are set (GRPO), but the data has answers ({', '.join(columns)}): "
            "GRPO needs prompt-only rows (a prompt column and no completion); drop reward_funcs "
            "to learn from the answers"
        )


def prepare_prompts(config, raw, origins: dict, resume_path=None) -> tuple[PreparedPrompts, Any]:
    """The data stage for GRPO's prompt-only rows, top to bottom."""
    data_args, args = config.data, config.train
    conversational = check_prompt_rows(raw, origins)
    splits, tokenizer = split_rows_and_tokenizer(config, raw, prompt_text_batch, resume_path)
    origin = apply_template(tokenizer, data_args.chat_template) if conversational else "none needed"
    room = data_args.block_size - args.max_completion_length
    if room < 1:
        raise HfminiError(
            f"max_completion_length {args.max_completion_length} leaves no room for a prompt in "
            f"block_size {data_args.block_size} (prompt + completion): lower "
            "max_completion_length or raise block_size"
        )
    max_prompt = min(room, data_args.max_prompt_length or room)
    tokenized = tokenize_prompts(splits, tokenizer, max_prompt, data_args.preprocessing_num_workers)
    train = PromptSet(tokenized["train"], splits["train"])
    validation = PromptSet(tokenized["validation"], splits["validation"])
    logger.info(
        "data: prompts (%s) for GRPO, loss_type %s; chat template: %s; %d train, %d held out, "
        "each at most %d tokens + %d sampled%s",
        "conversational" if conversational else "standard",
        args.loss_type,
        origin,
        len(train),
        len(validation),
        max_prompt,
        args.max_completion_length,
        f"; {train.cut} prompt tokens cut from the left to fit" if train.cut else "",
    )
    byte_lengths = torch.tensor(token_byte_lengths(tokenizer), dtype=torch.int64)
    prepared = PreparedPrompts(
        train_prompts=train,
        eval_prompts=validation,
        block_size=data_args.block_size,
        pad_id=tokenizer.pad_token_id,
        train_bytes=int(byte_lengths[train.tokens.long()].sum()),
        num_generations=args.num_generations,
        num_iterations=args.num_iterations,
        accumulation=args.gradient_accumulation_steps,
        conversational=conversational,
        dropped_train_tokens=train.cut,
    )
    return prepared, tokenizer


def prepare_pairs(config, raw, origins: dict, resume_path=None) -> tuple[PreparedPairs, Any]:
    """The data stage for preference rows (prompt, chosen, rejected), top to bottom."""
    data_args = config.data
    conversational = check_pair_rows(raw, origins)
    implicit = "prompt" not in raw["train"].column_names
    splits, tokenizer = split_rows_and_tokenizer(config, raw, pair_text_batch, resume_path)
    origin = apply_template(tokenizer, data_args.chat_template) if conversational else "none needed"
    logger.info(
        "data: preference pairs (%s%s) for loss_type %s; chat template: %s",
        "conversational" if conversational else "standard",
        ", implicit prompt: the shared beginning" if implicit else "",
        config.train.loss_type,
        origin,
    )
    tokenized = tokenize_pairs(
        splits,
        tokenizer,
        data_args.pair_length,
        data_args.max_prompt_length,
        data_args.preprocessing_num_workers,
    )
    train, cut = pair_rows(tokenized["train"], "train")
    validation, _ = pair_rows(tokenized["validation"], "validation")
    dropped = splits["train"].num_rows - len(train)
    logger.info(
        "pairs: %d train, %d validation, prompt + answer at most %d tokens%s",
        len(train),
        len(validation),
        data_args.pair_length,
        f"; {cut} answer tokens cut to fit" if cut else "",
    )
    if dropped or splits["validation"].num_rows - len(validation):
        logger.warning(
            "dropped %d train and %d validation pairs whose prompt leaves no room for an answer "
            "in max_length %d: raise max_length or set max_prompt_length to keep them",
            dropped,
            splits["validation"].num_rows - len(validation),
            data_args.pair_length,
        )
    byte_lengths = torch.tensor(token_byte_lengths(tokenizer), dtype=torch.int64)
    prepared = PreparedPairs(
        train_pairs=train,
        eval_pairs=validation,
        block_size=data_args.pair_length,
        pad_id=tokenizer.pad_token_id,
        train_bytes=int(byte_lengths[train.rows.tokens.long()].sum()),
        dropped_pairs=dropped,
        dropped_train_tokens=cut,
    )
    return prepared, tokenizer


def prepare_stream(config, resume_path=None) -> tuple[StreamingData, object]:
    """The data stage of a streaming run: open the stream, this process's part of it, the
    validation blocks, the tokenizer (loaded, or trained on the stream's first
    tokenizer_train_bytes), the block stream."""
    import pyarrow as pa
    from accelerate import PartialState
    from datasets import Dataset
    from datasets.distributed import split_dataset_by_node

    data_args, state = config.data, PartialState()
    column, block = data_args.text_column, data_args.block_size
    train, validation = open_streams(data_args)
    check_stream_columns(train, column)
    if validation is not None:
        check_stream_columns(validation, column, "validation")
    source = data_args.dataset_name or repr(sorted(data_args.train_file or []))
    budget = config.model.tokenizer_train_bytes
    texts, total = [], 0
    if config.model.from_scratch and config.model.tokenizer_name is None and resume_path is None:
        texts, total = tokenizer_texts(train, column, budget)
        logger.info("tokenizer: trains on the stream's first %.1f MB", total / 1e6)
    # A fingerprint from the source, so that the trained tokenizer is cached across runs.
    sample_key = hashlib.sha256(f"{source}-{data_args.dataset_config_name}-{budget}".encode())
    table = pa.table({"text": pa.array(texts, pa.string())})
    sample = Dataset(table, fingerprint=sample_key.hexdigest())
    tokenizer = tokenizer_for_run(config.model, sample, config.context_length(), resume_path)
    eval_tokens, held_out = validation_tokens(data_args, tokenizer, train, validation)
    if held_out:  # the first documents are validation, and training skips them
        train = train.skip(held_out)
        logger.info("validation: the stream's first %d documents, held out", held_out)
    part = split_dataset_by_node(train, rank=state.process_index, world_size=state.num_processes)
    stream = BlockStream(part, tokenizer, column, block, config.train.seed + state.process_index)
    identity = f"{source}-{data_args.dataset_config_name}-{tokenizer_fingerprint(tokenizer)}"
    identity += f"-{block}-{state.num_processes}"
    return StreamingData(stream, eval_tokens, block, key=identity), tokenizer


def prepare_eval_tokens(data_args, tokenizer) -> torch.Tensor:
    """The validation token stream of a data source, tokenized with a trained model's tokenizer.

    `validation_file` alone is enough; otherwise the source's validation split (or held-out tail)
    is used, exactly as in training (a streamed run's: the blocks it scored).
    """
    from datasets import DatasetDict

    if data_args.streaming:
        return stream_eval_tokens(data_args, tokenizer)
    if data_args.validation_file:
        raw = load_validation_files(data_args)
    else:
        raw = load_sources(data_args)
    chunks = chunk_and_split(raw, data_args)
    validation = DatasetDict({"validation": chunks["validation"]})
    tokenized = tokenize_chunks(validation, tokenizer, data_args.preprocessing_num_workers)
    tokens = flat_tokens(tokenized["validation"])
    if tokens.numel() < 2:
        raise HfminiError(f"the validation text has {tokens.numel()} tokens: add text to score")
    return tokens


def eval_examples(data_args, tokenizer, block_size: int) -> SequenceDataset | None:
    """`hfmini eval`: the validation examples of a data source (validation_file alone, or the
    split training used), rendered with a trained model's tokenizer and template; None when the
    data is plain text."""
    from datasets import DatasetDict

    if data_args.validation_file:
        files = expand_data_files(data_args.validation_file, "validation_file")
        raw = DatasetDict({"validation": load_local({"train": files})["train"]})
        origins = {"validation": ("validation_file", files)}
    else:
        raw, origins = load_raw(data_args)
    columns = next(iter(raw.values())).column_names
    if is_prompt_only(columns):  # GRPO's held-out prompts, scored as training scored them
        check_prompt_rows(raw, origins)
        if "validation" not in raw:
            raw = hold_out_validation(raw, data_args.validation_split_percentage, "rows")
        validation = DatasetDict({"validation": raw["validation"]})
        tokenized = tokenize_prompts(
            validation, tokenizer, block_size, data_args.preprocessing_num_workers
        )
        return PromptSet(tokenized["validation"], raw["validation"]).as_sequences()
    if is_preference(columns):  # the chosen answers of the held-out pairs, as training scored
        check_pair_rows(raw, origins)
        if "validation" not in raw:
            raw = hold_out_validation(raw, data_args.validation_split_percentage, "rows")
        validation = DatasetDict({"validation": raw["validation"]})
        tokenized = tokenize_pairs(
            validation,
            tokenizer,
            min(data_args.pair_length, block_size),
            data_args.max_prompt_length,
            data_args.preprocessing_num_workers,
        )
        return pair_rows(tokenized["validation"], "validation")[0].chosen_only()
    fmt = data_format(columns, data_args.text_column)
    if fmt == "language_modeling":
        return None
    check_splits(raw, origins, fmt, True)
    if "validation" not in raw:
        raw = hold_out_validation(raw, data_args.validation_split_percentage, "rows")
    validation = DatasetDict({"validation": raw["validation"]})
    tokenized = tokenize_rows(validation, fmt, tokenizer, data_args.preprocessing_num_workers)
    dataset, _, _ = sequences_of(
        tokenized["validation"], block_size, data_args.packing, True, "validation"
    )
    return dataset


def stream_eval_tokens(data_args, tokenizer) -> torch.Tensor:
    """`hfmini eval` of a streamed run: the same validation tokens its training scored."""
    train, validation = open_streams(data_args)
    check_stream_columns(train, data_args.text_column)
    if validation is not None:
        check_stream_columns(validation, data_args.text_column, "validation")
    return validation_tokens(data_args, tokenizer, train, validation)[0]
