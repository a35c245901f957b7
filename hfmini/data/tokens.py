"""Text to token ids: batched through the Rust tokenizer, cached by `datasets`, and written once per
split as a flat file of ids read through a memory map.

The token files' pages are the OS's page cache, shared by every process on the machine and
dropped under memory pressure: a corpus larger than RAM trains with the process's own memory
flat.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from hfmini.data.chunks import CHUNK_CHARS, split_document
from hfmini.data.datasets_cache import datasets_cache_full, map_cache_space
from hfmini.errors import disk_full


def encode_batch(tokenizer, texts: list[str]) -> list:
    """The Rust tokenizer directly, without special tokens: no per-call Python wrapping and no
    max-length warnings; `encode_batch_fast` (tokenizers ≥ 0.20) skips the character offsets,
    which nothing here reads, and is faster by about a quarter."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return encode(texts, add_special_tokens=False)


def bos_ids(tokenizer) -> list[int]:
    """The ids a tokenizer puts before every text it encodes for its model (Llama's <s>, Llama
    3's <|begin_of_text|>, from its post-processor or add_bos_token); [] for GPT-2's. Texts are
    encoded without special tokens here (pieces must join), so each document gets them once."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's full definition (vocabulary, merges, normalisation, specials)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def _tokenize_batch(batch: dict, tokenizer) -> dict:
    encodings = encode_batch(tokenizer, batch["text"])
    bos, eos = bos_ids(tokenizer), [tokenizer.eos_token_id]
    return {
        "input_ids": [
            (bos if start else []) + e.ids + (eos if end else [])
            for e, start, end in zip(encodings, batch["doc_start"], batch["doc_end"], strict=True)
        ]
    }


def tokenize_chunks(chunks, tokenizer, num_proc: int | None):
    """Batched, cached tokenization; EOS after each document's last chunk. int32 on disk.

    The cache key is the chunks' fingerprint plus the tokenizer's definition, set explicitly:
    hashing the tokenizer object itself differs between a freshly trained and a reloaded one.
    """
    from datasets import DatasetDict, Features, Sequence, Value

    tokenizer_hash = tokenizer_fingerprint(tokenizer)
    with map_cache_space(chunks, "the tokenized data"):
        return DatasetDict(
            {
                split: ds.map(
                    _tokenize_batch,
                    batched=True,
                    fn_kwargs={"tokenizer": tokenizer},
                    remove_columns=["text", "doc_start", "doc_end"],
                    features=Features({"input_ids": Sequence(Value("int32"))}),
                    num_proc=num_proc,
                    new_fingerprint=hashlib.sha256(
                        f"{ds._fingerprint}-{tokenizer_hash}-tokenize-v2".encode()
                    ).hexdigest()[:16],
                    desc=f"Tokenizing {split}",
                )
                for split, ds in chunks.items()
            }
        )


def tokenize_documents(
    texts: list[str | None],
    tokenizer,
    doc_ends: list[bool] | None = None,
    doc_starts: list[bool] | None = None,
) -> list[int]:
    """Token ids of a batch of documents, each followed by EOS (as `tokenize_chunks` does); empty ones
    add nothing. Long documents are cut into chunks first, as in `chunk_documents`, so tokenization is
    the same as the prepared path's. `doc_ends[i]` False: texts[i] is a piece of a .txt file that
    the next text continues (no EOS after it); `doc_starts[i]` False: it continues the previous
    one (no BOS before it, for tokenizers that add one: bos_ids)."""
    pieces, starts, ends = [], [], []
    doc_ends = doc_ends or [True] * len(texts)
    doc_starts = doc_starts or [True] * len(texts)
    for text, doc_start, doc_end in zip(texts, doc_starts, doc_ends, strict=True):
        if not text:
            continue
        parts = split_document(text, CHUNK_CHARS)
        pieces += parts
        starts += [doc_start] + [False] * (len(parts) - 1)
        ends += [False] * (len(parts) - 1) + [doc_end]
    encodings = encode_batch(tokenizer, pieces)
    bos = bos_ids(tokenizer) if pieces else []
    ids: list[int] = []
    for encoding, start, end in zip(encodings, starts, ends, strict=True):
        if start:
            ids += bos
        ids += encoding.ids
        if end:
            ids.append(tokenizer.eos_token_id)
    return ids


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


def row_lengths(tokenized, column: str = "input_ids") -> np.ndarray:
    """(rows,) int64 the length of each row's list in `column`, read from Arrow, no Python lists."""
    return np.asarray(
        tokenized.with_format("arrow")[:][column].combine_chunks().value_lengths(),
        dtype=np.int64,
    )
