"""Documents in, blocks of token ids out, with `datasets` doing the heavy lifting and the caching.

    load_sources (sources.py) ─► chunk (≤ CHUNK_CHARS, cut at blank lines) ─► [hold out a tail
    for validation] ─► tokenizer (trained on a sample of the train chunks of at most
    tokenizer_train_bytes, or loaded) ─► tokenize (batched map, num_proc, EOS after each
    document) ─► token file per split (memory-mapped) ─► pack into blocks

`prepare_data` runs those stages in that order for training; `prepare_eval_tokens` runs them for
`hfmini eval` with a trained model's tokenizer. Every step up to the token files is cached on
disk (`datasets` Arrow files, then one flat file of ids per split beside them), so a second run
on the same inputs reads files instead of tokenizing again, and no stage holds the corpus in
memory: the token files are read through a memory map, pages shared by every process of the
machine. Packing is a view of the flat stream: only the final partial block of the training
split is dropped (and counted).
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hfmini.errors import HfminiError, disk_full

logger = logging.getLogger(__name__)

# Documents are cut into chunks of at most this many characters (before blank lines where
# possible) so that tokenization parallelises across processes and a validation tail can be held
# out even from a single text file. Cutting just before a line break leaves the byte-level BPE
# tokenization unchanged; only a hard cut inside a very long line can change it, at that point.
CHUNK_CHARS = 4096
CHUNK_BATCH_DOCUMENTS = 32


@dataclass
class PreparedData:
    """Training blocks and the validation stream, as views into flat int32 token tensors."""

    # Memory-mapped token files (uint16, or int32 for vocabularies over 65,536), see token_file.
    train_tokens: torch.Tensor  # (n_train_blocks * block_size,)
    eval_tokens: torch.Tensor  # (n_validation_tokens,); scored in blocks, tail included
    block_size: int
    dropped_train_tokens: int  # the final partial block, not trained on
    train_bytes: int  # UTF-8 bytes of training text, for throughput figures

    @property
    def num_train_blocks(self) -> int:
        return self.train_tokens.numel() // self.block_size

    def fingerprint(self) -> str:
        """A hash of both token streams as int32, to tell data apart on resume. One pass over the
        tokens, a slice at a time (memory stays flat; about a second per GB of tokens)."""
        digest = hashlib.sha256()
        step = 1 << 24
        for tokens in (self.train_tokens, self.eval_tokens):
            for start in range(0, tokens.numel(), step):
                digest.update(tokens[start : start + step].to(torch.int32).numpy().tobytes())
        return digest.hexdigest()[:16]


class BlockDataset(torch.utils.data.Dataset):
    """Block i of a flat token tensor as {"input_ids": (block_size,) int64}."""

    def __init__(self, tokens: torch.Tensor, block_size: int):
        self.tokens = tokens
        self.block_size = block_size

    def __len__(self) -> int:
        return self.tokens.numel() // self.block_size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = index * self.block_size
        return {"input_ids": self.tokens[start : start + self.block_size].long()}


# ---------------------------------------------------------------------------------------------
# Chunking, validation split, tokenization, packing


def _boundary_before(text: str, separator: str, start: int, end: int) -> int:
    """The last index in (start, end) where `separator` begins right after a non-space character,
    or -1. Byte-level BPE pre-tokens never join a non-space character to the whitespace after it,
    so cutting there leaves the tokenization of both sides unchanged."""
    cut = text.rfind(separator, start + 1, end)
    while cut > start and text[cut - 1].isspace():
        cut = text.rfind(separator, start + 1, cut)
    return cut


def split_document(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Cut text into pieces of at most max_chars whose concatenation is the text: before a blank
    line where possible (tokenization unchanged), else before a line break, else a hard cut."""
    pieces = []
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = _boundary_before(text, "\n\n", start, end)
        if cut <= start:
            cut = _boundary_before(text, "\n", start, end)
        if cut <= start:
            cut = end
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _chunk_batch(batch: dict, text_column: str, max_chars: int) -> dict:
    texts, ends = [], []
    for text in batch[text_column]:
        if not text:
            continue  # an empty or missing document adds nothing, not even an EOS
        pieces = split_document(text, max_chars)
        texts.extend(pieces)
        ends.extend([False] * (len(pieces) - 1) + [True])
    return {"text": texts, "doc_end": ends}


def chunk_documents(raw, text_column: str, num_proc: int | None):
    """Rows of any shape → rows of ('text' ≤ CHUNK_CHARS, 'doc_end') in document order."""
    from datasets import Features, Value

    with _map_cache_space(raw, "the chunked documents"):
        return raw.map(
            _chunk_batch,
            batched=True,
            # Documents, not chunks: a batch of whole .txt files is held in memory at once, so
            # it is kept small (datasets' default of 1000 rows could be gigabytes).
            batch_size=CHUNK_BATCH_DOCUMENTS,
            # max_chars travels in fn_kwargs so that it is part of the cache fingerprint.
            fn_kwargs={"text_column": text_column, "max_chars": CHUNK_CHARS},
            remove_columns=next(iter(raw.values())).column_names,
            # Explicit features keep the columns even when every document is empty.
            features=Features({"text": Value("string"), "doc_end": Value("bool")}),
            num_proc=num_proc,
            desc="Chunking documents",
        )


def hold_out_validation(
    chunks, percentage: float, unit: str = f"chunks of ≤{CHUNK_CHARS} characters"
):
    """Without a validation split, hold out the last `percentage` % of chunks (contiguous, so it
    never shares a paragraph with training and the tokenizer never sees it), or of rows."""
    from datasets import DatasetDict

    if "validation" in chunks:
        return chunks
    train = chunks["train"]
    if train.num_rows < 2:
        raise HfminiError(
            f"the training text is too short to hold out {percentage:g}% for validation "
            f"({train.num_rows} of {unit}): add data or set validation_file"
        )
    held_out = min(train.num_rows - 1, max(1, round(train.num_rows * percentage / 100)))
    cut = train.num_rows - held_out
    return DatasetDict(
        {"train": train.select(range(cut)), "validation": train.select(range(cut, train.num_rows))}
    )


def _tokenize_batch(batch: dict, tokenizer) -> dict:
    encodings = encode_batch(tokenizer, batch["text"])
    eos = [tokenizer.eos_token_id]
    return {
        "input_ids": [
            e.ids + eos if end else e.ids
            for e, end in zip(encodings, batch["doc_end"], strict=True)
        ]
    }


def encode_batch(tokenizer, texts: list[str]) -> list:
    """The Rust tokenizer directly, without special tokens: no per-call Python wrapping and no
    max-length warnings; `encode_batch_fast` (tokenizers ≥ 0.20) skips the character offsets,
    which nothing here reads, and is faster by about a quarter."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return encode(texts, add_special_tokens=False)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's full definition (vocabulary, merges, normalisation, specials)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def tokenize_chunks(chunks, tokenizer, num_proc: int | None):
    """Batched, cached tokenization; EOS after each document's last chunk. int32 on disk.

    The cache key is the chunks' fingerprint plus the tokenizer's definition, set explicitly:
    hashing the tokenizer object itself differs between a freshly trained and a reloaded one.
    """
    from datasets import DatasetDict, Features, Sequence, Value

    tokenizer_hash = tokenizer_fingerprint(tokenizer)
    with _map_cache_space(chunks, "the tokenized data"):
        return DatasetDict(
            {
                split: ds.map(
                    _tokenize_batch,
                    batched=True,
                    fn_kwargs={"tokenizer": tokenizer},
                    remove_columns=["text", "doc_end"],
                    features=Features({"input_ids": Sequence(Value("int32"))}),
                    num_proc=num_proc,
                    new_fingerprint=hashlib.sha256(
                        f"{ds._fingerprint}-{tokenizer_hash}-tokenize-v1".encode()
                    ).hexdigest()[:16],
                    desc=f"Tokenizing {split}",
                )
                for split, ds in chunks.items()
            }
        )


@contextmanager
def _map_cache_space(splits, what: str):
    """Around a `datasets.map` over `splits`: on a full disk, remove the temporary file the map
    leaves behind and name the cache that is full.

    map writes its result to a `tmp*` file beside the source's cache files and renames it when
    done; on a full disk datasets (5.2) fails a second time while closing that file and never
    removes it, leaving up to the size of the result on the full disk.
    """
    folders = {Path(f["filename"]).parent for ds in splits.values() for f in ds.cache_files}
    before = {path for folder in folders for path in folder.glob("tmp*")}
    try:
        yield
    except Exception as err:
        if not disk_full(err):
            raise
        for folder in folders:
            for path in set(folder.glob("tmp*")) - before:
                path.unlink(missing_ok=True)
        from hfmini.sources import datasets_cache_full

        raise datasets_cache_full(what) from None


# Token files: a split's token ids, flat, beside its Arrow cache. Read through a memory map, so the
# pages are the OS's page cache, shared by every process on the machine and dropped under memory
# pressure: a corpus larger than RAM trains with the process's own memory flat.
TOKEN_FILE_BATCH_ROWS = 10_000  # rows converted per write: a few MB of ids at a time


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (GPT-2's 50,257 do), as nanoGPT stores them; else int32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def token_file(tokenized, vocab_size: int) -> torch.Tensor:
    """A tokenized split's ids as one memory-mapped tensor (n_tokens,), written once beside the
    split's Arrow cache and read in place afterwards (a second run, another process).

    A split held in memory (no cache file) is flattened in memory instead."""
    if not tokenized.cache_files:
        return flat_tokens(tokenized)
    dtype = token_dtype(vocab_size)
    folder = Path(tokenized.cache_files[0]["filename"]).parent
    path = folder / f"tokens-{tokenized._fingerprint}-{dtype.name}.bin"
    if not path.is_file():
        _write_token_file(tokenized, path, dtype)
    if path.stat().st_size == 0:
        return torch.zeros(0, dtype=torch.int32)
    # Copy-on-write: the array is writable for torch (no warning), the file is never written.
    return torch.from_numpy(np.memmap(path, dtype=dtype, mode="c"))


def _write_token_file(tokenized, path: Path, dtype: np.dtype) -> None:
    """Stream the ids into `path` (via a temporary file and a rename: a concurrent reader never
    sees half a file). Memory: one batch of rows at a time."""
    import os

    import pyarrow.compute as pc

    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as handle:
            arrow = tokenized.with_format("arrow")
            for batch in arrow.iter(batch_size=TOKEN_FILE_BATCH_ROWS):
                values = pc.list_flatten(batch["input_ids"]).to_numpy(zero_copy_only=False)
                handle.write(values.astype(dtype, copy=False).tobytes())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if disk_full(err):
            from hfmini.sources import datasets_cache_full

            raise datasets_cache_full("the token files") from None
        raise


def flat_tokens(tokenized, column: str = "input_ids", dtype=torch.int32) -> torch.Tensor:
    """All values of a list column of a split (token ids by default), concatenated: (n,) `dtype`.

    Reads the Arrow column without Python lists; costs one copy of the values in memory.
    """
    import pyarrow.compute as pc

    if tokenized.num_rows == 0:
        return torch.zeros(0, dtype=dtype)
    values = pc.list_flatten(tokenized.with_format("arrow")[:][column])
    chunks = [chunk.to_numpy(zero_copy_only=False) for chunk in values.chunks] or [np.array([])]
    return torch.from_numpy(np.concatenate(chunks)).to(dtype)


def pack(tokens: torch.Tensor, block_size: int, split: str) -> tuple[torch.Tensor, int]:
    """Trim a flat stream to whole blocks; returns (trimmed tokens, dropped token count)."""
    n_blocks = tokens.numel() // block_size
    if n_blocks == 0:
        raise HfminiError(
            f"the {split} split has {tokens.numel()} tokens, fewer than one block of {block_size}: "
            f"lower block_size or add text"
        )
    return tokens[: n_blocks * block_size], tokens.numel() - n_blocks * block_size


def text_bytes(chunks) -> int:
    import pyarrow.compute as pc

    if chunks.num_rows == 0:
        return 0
    column = chunks.with_format("arrow")[:]["text"]
    return int(pc.sum(pc.binary_length(column)).as_py() or 0)


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
    rows go to `hfmini.sft.prepare_examples` instead (PreparedExamples, tokenizer)."""
    from hfmini.sft import data_format, prepare_examples
    from hfmini.sources import check_text_column, check_text_values, load_raw
    from hfmini.tokenizer import tokenizer_for_run

    if config.data.streaming:
        from hfmini.streaming import prepare_stream

        return prepare_stream(config, resume_path)
    raw, origins = load_raw(config.data)
    if data_format(raw["train"].column_names, config.data.text_column) != "language_modeling":
        return prepare_examples(config, raw, origins, resume_path)
    check_text_column(raw, config.data.text_column, "")
    check_text_values(raw, config.data.text_column, origins)
    chunks = chunk_and_split(raw, config.data)
    sample = tokenizer_sample(chunks["train"], config.model, resume_path)
    tokenizer = tokenizer_for_run(config.model, sample, config.context_length(), resume_path)
    return tokenize_and_pack(chunks, tokenizer, config.data), tokenizer


def prepare_eval_tokens(data_args, tokenizer) -> torch.Tensor:
    """The validation token stream of a data source, tokenized with a trained model's tokenizer.

    `validation_file` alone is enough; otherwise the source's validation split (or held-out tail)
    is used, exactly as in training (a streamed run's: the blocks it scored).
    """
    from datasets import DatasetDict

    from hfmini.sources import load_sources, load_validation_files

    if data_args.streaming:
        from hfmini.streaming import stream_eval_tokens

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
