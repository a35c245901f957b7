"""Streaming (`streaming: true`): documents are read, tokenized and cut into blocks as training
goes; nothing is prepared ahead and nothing grows with the corpus.

    load_dataset(..., streaming=True) ─► split_dataset_by_node (each process its own part) ─►
    [validation: the source's own split, else the first documents, held out] ─► BlockStream:
    documents in batches ─► chunk + tokenize (EOS after each document) ─► blocks ─► a shuffle
    buffer of blocks ─► DataLoader

The run is counted in max_steps; at the end of the stream a new pass starts. Resume is exact: a
checkpoint keeps each process's stream state (`BlockStream.state_dict`: the `datasets` iterator's
position after the last batch of documents read, the tokens of that batch not yet in a block, the
shuffle buffer and its generator) and the stream restarts there instead of replaying.

Validation is the first validation_blocks blocks of the validation documents, held in memory.
Costs: a document is tokenized once per pass; the shuffle buffer holds `shuffle_blocks` blocks.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from hfmini.data.blocks import TokenValidation
from hfmini.data.readers import (
    DOC_END,
    DOC_START,
    count_invalid_utf8,
    expand_data_files,
    file_reader,
    invalid_utf8_error,
    load_hub,
    text_documents,
)
from hfmini.data.splits import VALIDATION_SPLIT_NAMES
from hfmini.data.tokens import tokenize_documents
from hfmini.data.training_data import TEXT_FORMAT
from hfmini.errors import HfminiError

logger = logging.getLogger("hfmini.data")

DOCUMENT_BATCH = 64  # documents read and tokenized together (the unit a resume restarts from)
# ... or fewer once they hold this many characters: 64 pieces of a big .txt file would be 64 MB
# of text, and their ids as Python ints several times that.
BATCH_CHARS = 1 << 20

SHUFFLE_BLOCKS = 1024  # blocks in the shuffle buffer: a few MB at context 1024

VALIDATION_BLOCKS = 100  # validation blocks when max_eval_samples is not set


class BlockStream(torch.utils.data.IterableDataset):
    """Blocks of `block_size` token ids cut from a stream of documents, drawn at random from a
    buffer: {"input_ids": (block_size,) int64}. Endless: pass after pass over the documents.

    Iterated in the training process itself (DataLoader num_workers 0), so that its state
    between two blocks handed out is exactly what the run has consumed."""

    def __init__(self, documents, tokenizer, text_column: str, block_size: int, seed: int):
        self.documents = documents  # a datasets IterableDataset: this process's part
        self.tokenizer = tokenizer
        self.text_column = text_column
        self.block_size = block_size
        self.generator = torch.Generator().manual_seed(seed)
        self.start = copy.deepcopy(documents.state_dict())  # a pass begins here
        self.position: dict | None = None  # the documents' state after the last batch read
        self.passes = 0
        self.pending: list[int] = []  # tokens read but not yet cut into a block
        self.buffer: list[torch.Tensor] = []

    def state_dict(self) -> dict:
        """Where the stream stands between two blocks handed out (what a checkpoint keeps)."""
        empty = torch.zeros(0, self.block_size, dtype=torch.int64)
        return {
            "position": self.position,
            "passes": self.passes,
            "pending": torch.tensor(self.pending, dtype=torch.int64),
            "buffer": torch.stack(self.buffer) if self.buffer else empty,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]
        self.passes = state["passes"]
        self.pending = state["pending"].tolist()
        self.buffer = list(state["buffer"])
        self.generator.set_state(state["generator"])

    def _document_batches(self):
        """((texts, doc_ends, doc_starts), the documents' state after them), from where the
        stream stands; at
        the end of the documents a new pass starts from their beginning."""
        while True:
            self.documents.load_state_dict(self.position or self.start)
            batch, read, chars = ([], [], []), 0, 0
            for row in readable(self.documents):
                text = text_of(row, self.text_column)
                batch[0].append(text)
                batch[1].append(row.get(DOC_END, True))
                batch[2].append(row.get(DOC_START, True))
                read += 1
                chars += len(text or "")
                if len(batch[0]) == DOCUMENT_BATCH or chars >= BATCH_CHARS:
                    yield batch, copy.deepcopy(self.documents.state_dict())
                    batch, chars = ([], [], []), 0
            if batch[0]:
                yield batch, copy.deepcopy(self.documents.state_dict())
            if read == 0 and self.position is None:
                raise HfminiError("the training stream holds no documents: check the data source")
            self.passes += 1
            self.position = None

    def _fill(self, batches) -> None:
        """Read documents until the shuffle buffer is full."""
        while len(self.buffer) < SHUFFLE_BLOCKS:
            (texts, ends, starts), position = next(batches)
            self.pending += tokenize_documents(texts, self.tokenizer, ends, starts)
            self.position = position
            usable = len(self.pending) - len(self.pending) % self.block_size
            for start in range(0, usable, self.block_size):
                block = self.pending[start : start + self.block_size]
                self.buffer.append(torch.tensor(block, dtype=torch.int64))
            self.pending = self.pending[usable:]

    def __iter__(self):
        batches = self._document_batches()
        while True:
            self._fill(batches)
            index = int(torch.randint(len(self.buffer), (1,), generator=self.generator))
            block = self.buffer[index]
            self.buffer[index] = self.buffer[-1]  # swap-remove: O(1)
            self.buffer.pop()
            yield {"input_ids": block}


@dataclass
class StreamingData:
    """What a streaming run trains and validates on (a TrainingData, see training_data.py)."""

    format: ClassVar[str] = TEXT_FORMAT
    # Each process reads its own part of the stream (split_dataset_by_node): accelerate must not
    # shard the loader again.
    sharded_by_accelerate: ClassVar[bool] = False

    stream: BlockStream
    eval_tokens: torch.Tensor  # (n,) int32: the validation blocks, held in memory
    block_size: int
    train_bytes: int = 0  # unknown ahead of time
    dropped_train_tokens: int = 0
    key: str = ""  # the source, the tokenizer and the shape of the stream

    @property
    def num_train_blocks(self) -> int | None:
        return None  # unknown: the run is counted in max_steps

    @property
    def train_tokens(self) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.int32)

    @property
    def validation(self) -> TokenValidation:
        return TokenValidation(self.eval_tokens, self.block_size)

    def fingerprint(self) -> str:
        """A hash of `key`: the stream's contents are not read."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:16]

    def train_loader(self, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
        # Iterated in this process: the stream's position is the run's (a checkpoint keeps it).
        generator = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(self.stream, batch_size=batch_size, generator=generator)

    def epoch_batches(self, loader, epoch: int, consumed: int, accelerator) -> Iterator[dict]:
        """The stream restores its own position (restore_position), so `epoch` and `consumed`
        are not needed; its loader is not prepared, so batches move to the device here."""
        for batch in loader:
            yield {k: v.to(accelerator.device) for k, v in batch.items()}

    def epochs_done(self, epoch: int, consumed: int, batches_per_epoch: int) -> float:
        return self.stream.passes

    def position(self) -> dict:
        return self.stream.state_dict()

    def restore_position(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def describe(self) -> str:
        return (
            f"data: streamed in blocks of {self.block_size} tokens (each process its own part), "
            f"{self.eval_tokens.numel()} validation tokens"
        )


def readable(documents):
    """The rows of a stream; a file that disappears or cannot be read any more mid-run is one
    line, not a traceback (a checkpoint resumes once it is back)."""
    try:
        yield from documents
    except (OSError, UnicodeDecodeError) as err:
        name = getattr(err, "filename", None) or ""
        raise HfminiError(
            f"a streamed file {name} can no longer be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120] if str(err) else ''}): restore it and resume from "
            "the last checkpoint (--resume_from_checkpoint latest)"
        ) from None


def open_streams(data_args) -> tuple:
    """(train documents, validation documents or None) as datasets IterableDatasets."""
    from datasets import load_dataset

    if data_args.train_file:
        from pathlib import Path

        files = {"train": expand_data_files(data_args.train_file, "train_file")}
        if data_args.validation_file:
            files["validation"] = expand_data_files(data_args.validation_file, "validation_file")
        builder, kwargs = file_reader(Path(files["train"][0]))
        if builder == "json":
            # pyarrow's JSON reader fails on a bad byte mid-run; one decoding pass (C, about a
            # second a GB) names the file and line now instead.
            for file in (f for split_files in files.values() for f in split_files):
                if count_invalid_utf8(file):
                    raise invalid_utf8_error(file)
        if builder == "text":  # in pieces, as the prepared path reads them
            raw = {split: text_documents(f, streaming=True) for split, f in files.items()}
        else:
            # Each split alone: together, datasets casts the validation rows to the train
            # columns and fails mid-stream when they differ.
            raw = {
                split: load_dataset(builder, data_files={split: f}, streaming=True, **kwargs)[split]
                for split, f in files.items()
            }
    else:
        raw = load_hub(data_args.dataset_name, data_args.dataset_config_name, streaming=True)
    validation = next((raw[s] for s in VALIDATION_SPLIT_NAMES if s in raw), None)
    return raw["train"], validation


def check_stream_columns(documents, column: str, what: str = "training") -> None:
    """The first row holds the text column; instruction and chat rows are not streamed yet."""
    first = next(iter(readable(documents)), None)
    if first is None:
        raise HfminiError(f"the {what} stream holds no documents: check the data source")
    if column in first:
        return
    if "messages" in first or "prompt" in first:
        raise HfminiError(
            "streaming reads plain text only: prompt-completion and conversational rows need the "
            "prepared path; drop --streaming"
        )
    raise HfminiError(
        f"text_column {column!r} is not in the streamed {'' if what == 'training' else what + ' '}"
        f"data; its columns are "
        f"{', '.join(first)}: set --text_column to one of them (in every file)"
    )


def text_of(row: dict, column: str) -> str | None:
    """A streamed row's text; a number or a list there is one line, not a tokenizer traceback."""
    value = row[column]
    if value is None or isinstance(value, str):
        return value
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise HfminiError(
        f"a streamed row's text_column {column!r} holds {type(value).__name__} {shown}, not "
        "text: make every text value a string (null skips a row); drop --streaming for the "
        "file and row"
    )


def take_tokens(documents, tokenizer, text_column: str, count: int) -> tuple[torch.Tensor, int]:
    """The first `count` tokens of a document stream (fewer if it ends) and the documents read:
    only as many as those tokens need. One document at a time: validation is a few hundred
    blocks at most, so the per-call cost does not matter here."""
    ids: list[int] = []
    read = 0
    for row in readable(documents):
        if len(ids) >= count:
            break
        end, start = row.get(DOC_END, True), row.get(DOC_START, True)
        ids += tokenize_documents([text_of(row, text_column)], tokenizer, [end], [start])
        read += 1
    return torch.tensor(ids[:count], dtype=torch.int32), read


def tokenizer_texts(documents, text_column: str, budget: int):
    """(the first documents, up to `budget` bytes of them (0: all), their bytes): the sample a
    tokenizer trained from scratch learns from."""
    texts, total = [], 0
    for row in readable(documents):
        text = text_of(row, text_column) or ""
        texts.append(text)
        total += len(text.encode("utf-8"))
        if budget and total >= budget:
            break
    return texts, total


def validation_tokens(data_args, tokenizer, train, validation) -> tuple[torch.Tensor, int]:
    """(the validation tokens, the train documents they took: 0 when the source has a validation
    split): the first max_eval_samples blocks (VALIDATION_BLOCKS when unset)."""
    column, block = data_args.text_column, data_args.block_size
    wanted = (data_args.max_eval_samples or VALIDATION_BLOCKS) * block
    held_out = 0
    if validation is not None:
        tokens, _ = take_tokens(validation, tokenizer, column, wanted)
    else:
        tokens, held_out = hold_out_tokens(data_args, tokenizer, train, wanted)
    if tokens.numel() < block:
        fix = "lower block_size or add validation text"
        if validation is None:
            fix = (
                f"(the stream's first {held_out} documents, validation_split_percentage "
                f"{data_args.validation_split_percentage:g}%): set validation_file, lower "
                "block_size or add text"
            )
        raise HfminiError(
            f"the validation stream has {tokens.numel()} tokens, fewer than one block of "
            f"{block} {fix}"
        )
    return tokens, held_out


def hold_out_tokens(data_args, tokenizer, train, wanted: int) -> tuple[torch.Tensor, int]:
    """(validation tokens, documents held out) from the first documents of the training stream,
    at most validation_split_percentage % of its documents, as the prepared path holds out at
    most that share of its chunks (splits.py). Checking the share reads up to (100 / percentage
    - 1) × as many documents again, untokenized; only a stream shorter than that is counted whole.
    """
    percentage = data_args.validation_split_percentage
    tokens, held_out = take_tokens(train, tokenizer, data_args.text_column, wanted)
    needed = -(-held_out * (100 - percentage) // percentage)  # documents left for training
    left = sum(1 for _ in readable(train.skip(held_out).take(int(needed))))
    if left >= needed:
        return tokens, held_out
    total = held_out + left
    if total < 2:
        raise HfminiError(
            f"the training stream holds {total} document(s), too few to hold out "
            f"{percentage:g}% for validation: set validation_file or add data"
        )
    capped = min(total - 1, max(1, round(total * percentage / 100)))
    tokens, held_out = take_tokens(train.take(capped), tokenizer, data_args.text_column, wanted)
    logger.warning(
        "validation: %d tokens from the first %d of the stream's %d documents "
        "(validation_split_percentage %g%%), fewer than the %d asked: set validation_file to "
        "score more",
        tokens.numel(),
        held_out,
        total,
        percentage,
        wanted,
    )
    return tokens, held_out
