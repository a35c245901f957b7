"""Text in, blocks of token ids out, with `datasets` doing the heavy lifting and the caching.

    source rows ─► chunk (≤ CHUNK_CHARS, cut at blank lines) ─► [hold out a tail for validation]
                ─► tokenize (batched map, num_proc, EOS after each document) ─► pack into blocks

Sources: the built-in Shakespeare corpus (default), local files (.txt one document per file,
.json/.jsonl/.csv/.parquet one document per row), or a Hub dataset. Every step before packing is a
cached `datasets` operation, so a second run on the same inputs reads Arrow files instead of
tokenizing again. Packing is a reshape of the flat token stream: only the final partial block of
the training split is dropped (and counted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hfmini.errors import HfminiError

logger = logging.getLogger(__name__)

# Documents are cut into chunks of at most this many characters (before blank lines where
# possible) so that tokenization parallelises across processes and a validation tail can be held
# out even from a single text file. Cutting just before a line break leaves the byte-level BPE
# tokenization unchanged; only a hard cut inside a very long line can change it, at that point.
CHUNK_CHARS = 4096

BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class PreparedData:
    """Training blocks and the validation stream, as views into flat int32 token tensors."""

    train_tokens: torch.Tensor  # (n_train_blocks * block_size,) int32
    eval_tokens: torch.Tensor  # (n_validation_tokens,) int32; scored in blocks, tail included
    block_size: int
    dropped_train_tokens: int  # the final partial block, not trained on
    train_bytes: int  # UTF-8 bytes of training text, for throughput figures

    @property
    def num_train_blocks(self) -> int:
        return self.train_tokens.numel() // self.block_size


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
# Loading raw text


def _hf_cache_root() -> Path:
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))


def _shakespeare_files() -> dict[str, str]:
    """Write the built-in corpus once as JSON lines (one play per line) and return the paths.

    Going through files, not `Dataset.from_dict`, gives datasets a stable fingerprint, so the
    tokenized result is cached across runs like any other local file.
    """
    from hfmini.shakespeare import load_plays

    folder = _hf_cache_root() / "hfmini" / "shakespeare-v1"
    paths = {split: folder / f"{split}.jsonl" for split in ("train", "validation")}
    if not all(path.is_file() for path in paths.values()):
        folder.mkdir(parents=True, exist_ok=True)
        for split, plays in load_plays().items():
            tmp = paths[split].with_suffix(f".tmp{os.getpid()}")
            with tmp.open("w", encoding="utf-8") as handle:
                for play, text in plays.items():
                    handle.write(json.dumps({"play": play, "text": text}) + "\n")
            os.replace(tmp, paths[split])
    return {split: str(path) for split, path in paths.items()}


def _check_readable(path: Path, what: str) -> None:
    """Open and read a byte now, so a permission problem is reported before any work."""
    try:
        with path.open("rb") as handle:
            first = handle.read(1)
    except OSError as err:
        raise HfminiError(
            f"{what} {path} cannot be read ({err.strerror}): check its permissions"
        ) from None
    if not first:
        raise HfminiError(f"{what} {path} is empty: add text to it or leave it out")


def expand_data_files(patterns: list[str], what: str) -> list[str]:
    """Files and directories → a sorted list of readable, non-empty files of one format."""
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.suffix.lower() in BUILDERS and p.is_file()
            )
            if not found:
                raise HfminiError(
                    f"{what} directory {pattern} has no {'/'.join(BUILDERS)} files: add some "
                    "or point at the files directly"
                )
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in BUILDERS:
                raise HfminiError(
                    f"{what} {pattern} has an unsupported extension: use one of "
                    f"{', '.join(BUILDERS)}"
                )
            files.append(path)
        else:
            raise HfminiError(f"{what} {pattern} does not exist: check the path")
    for path in files:
        _check_readable(path, what)
    builders = {BUILDERS[f.suffix.lower()] for f in files}
    if len(builders) > 1:
        raise HfminiError(f"{what} mixes formats ({', '.join(sorted(builders))}): use one format")
    return [str(f) for f in files]


def count_invalid_utf8(path: str, block: int = 1 << 20) -> int:
    """Bytes of `path` that are not valid UTF-8. Streams the file once (about 1 GB/s)."""
    import codecs

    bad = 0

    def count(error: UnicodeDecodeError):
        nonlocal bad
        bad += error.end - error.start
        return "\ufffd", error.end

    codecs.register_error("hfmini_count", count)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="hfmini_count")
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            decoder.decode(chunk)
    decoder.decode(b"", final=True)
    return bad


def _warn_invalid_utf8(files: list[str]) -> None:
    """Invalid bytes are replaced by U+FFFD (never a crash); say so once, with the count."""
    counts = {f: count_invalid_utf8(f) for f in files if Path(f).suffix.lower() != ".parquet"}
    bad = {f: n for f, n in counts.items() if n}
    if bad:
        first = next(iter(bad))
        logger.warning(
            "%d bytes that are not valid UTF-8 in %d file(s) (first: %s) were replaced with "
            "U+FFFD; re-encode the files as UTF-8 to keep them",
            sum(bad.values()),
            len(bad),
            first,
        )


def _load_local(data_files: dict[str, list[str]]):
    from datasets import load_dataset

    builder = BUILDERS[Path(data_files["train"][0]).suffix.lower()]
    if "validation" in data_files:
        if BUILDERS[Path(data_files["validation"][0]).suffix.lower()] != builder:
            raise HfminiError("train_file and validation_file must have the same format")
    _warn_invalid_utf8([f for files in data_files.values() for f in files])
    kwargs = {} if builder == "parquet" else {"encoding_errors": "replace"}
    if builder == "text":
        kwargs["sample_by"] = "document"
    # datasets logs a parse failure with its traceback before raising; our message replaces it.
    datasets_logger = logging.getLogger("datasets")
    level = datasets_logger.level
    datasets_logger.setLevel(logging.CRITICAL)
    try:
        return load_dataset(builder, data_files=data_files, **kwargs)
    except Exception as err:  # malformed JSON/CSV/Parquet: name the files, not the internals
        reason = str(err.__cause__ or err).splitlines()[0][:200]
        files = ", ".join(f for group in data_files.values() for f in group)[:200]
        raise HfminiError(
            f"could not read {files} as {builder} ({reason}): check that the files are valid "
            f"{builder}"
        ) from None
    finally:
        datasets_logger.setLevel(level)


def _load_hub(name: str, config_name: str | None):
    import datasets
    from datasets import load_dataset

    try:
        return load_dataset(name, config_name)
    except Exception as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        if datasets.config.HF_HUB_OFFLINE or datasets.config.HF_DATASETS_OFFLINE:
            raise HfminiError(
                f"dataset {name!r} is not in the local cache and the Hub cannot be reached "
                "(offline mode): train on local files with --train_file PATH instead"
            ) from None
        raise HfminiError(
            f"could not load dataset {name!r} from the Hub ({reason}): check the name, the "
            "network, or use local files with --train_file"
        ) from None


def load_raw_datasets(data_args):
    """A DatasetDict with 'train', and 'validation' when the source has one; one document a row."""
    from datasets import DatasetDict

    if data_args.train_file:
        data_files = {"train": expand_data_files(data_args.train_file, "train_file")}
        if data_args.validation_file:
            data_files["validation"] = expand_data_files(
                data_args.validation_file, "validation_file"
            )
        raw = _load_local(data_files)
    elif data_args.dataset_name:
        raw = _load_hub(data_args.dataset_name, data_args.dataset_config_name)
    else:
        raw = _load_local(_shakespeare_files_as_lists())
    if not isinstance(raw, DatasetDict) or "train" not in raw:
        raise HfminiError("the dataset has no 'train' split: name the files with train_file")
    splits = {"train": raw["train"]}
    for name in ("validation", "valid", "dev", "test"):
        if name in raw:
            splits["validation"] = raw[name]
            break
    column = data_args.text_column
    for split, ds in splits.items():
        if column not in ds.column_names:
            raise HfminiError(
                f"text_column {column!r} is not in the {split} data; its columns are "
                f"{', '.join(ds.column_names)}: set --text_column to one of them"
            )
    return DatasetDict(splits)


def _shakespeare_files_as_lists() -> dict[str, list[str]]:
    return {split: [path] for split, path in _shakespeare_files().items()}


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

    return raw.map(
        _chunk_batch,
        batched=True,
        # max_chars travels in fn_kwargs so that it is part of the cache fingerprint.
        fn_kwargs={"text_column": text_column, "max_chars": CHUNK_CHARS},
        remove_columns=next(iter(raw.values())).column_names,
        # Explicit features keep the columns even when every document is empty.
        features=Features({"text": Value("string"), "doc_end": Value("bool")}),
        num_proc=num_proc,
        desc="Chunking documents",
    )


def hold_out_validation(chunks, percentage: float):
    """Without a validation split, hold out the last `percentage` % of chunks (contiguous, so it
    never shares a paragraph with training and the tokenizer never sees it)."""
    from datasets import DatasetDict

    if "validation" in chunks:
        return chunks
    train = chunks["train"]
    if train.num_rows < 2:
        raise HfminiError(
            f"the training text is too short to hold out {percentage:g}% for validation "
            f"({train.num_rows} chunk of ≤{CHUNK_CHARS} characters): add text or set validation_file"
        )
    held_out = min(train.num_rows - 1, max(1, round(train.num_rows * percentage / 100)))
    cut = train.num_rows - held_out
    return DatasetDict(
        {"train": train.select(range(cut)), "validation": train.select(range(cut, train.num_rows))}
    )


def _tokenize_batch(batch: dict, tokenizer) -> dict:
    # The Rust tokenizer directly: no per-call Python wrapping and no max-length warnings.
    encodings = tokenizer.backend_tokenizer.encode_batch(batch["text"], add_special_tokens=False)
    eos = [tokenizer.eos_token_id]
    return {
        "input_ids": [
            e.ids + eos if end else e.ids
            for e, end in zip(encodings, batch["doc_end"], strict=True)
        ]
    }


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


def flat_tokens(tokenized) -> torch.Tensor:
    """All token ids of a tokenized split, concatenated: (n_tokens,) int32.

    Reads the Arrow column without Python lists; costs one copy of the ids (4 bytes/token).
    """
    import pyarrow.compute as pc

    if tokenized.num_rows == 0:
        return torch.zeros(0, dtype=torch.int32)
    column = tokenized.with_format("arrow")[:]["input_ids"]
    values = pc.list_flatten(column)
    chunks = [chunk.to_numpy(zero_copy_only=False) for chunk in values.chunks] or [np.array([])]
    return torch.from_numpy(np.concatenate(chunks).astype(np.int32, copy=False))


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


def prepare_eval_tokens(data_args, tokenizer) -> torch.Tensor:
    """The validation token stream of a data source, tokenized with a trained model's tokenizer.

    `validation_file` alone is enough; otherwise the source's validation split (or held-out tail)
    is used, exactly as in training.
    """
    from datasets import DatasetDict

    if data_args.validation_file:
        files = expand_data_files(data_args.validation_file, "validation_file")
        raw = DatasetDict({"validation": _load_local({"train": files})["train"]})
        if data_args.text_column not in raw["validation"].column_names:
            raise HfminiError(
                f"text_column {data_args.text_column!r} is not in {files[0]}; its columns are "
                f"{', '.join(raw['validation'].column_names)}: set --text_column"
            )
    else:
        raw = load_raw_datasets(data_args)
    chunks = chunk_documents(raw, data_args.text_column, data_args.preprocessing_num_workers)
    chunks = hold_out_validation(chunks, data_args.validation_split_percentage)
    split = DatasetDict({"validation": chunks["validation"]})
    tokens = flat_tokens(
        tokenize_chunks(split, tokenizer, data_args.preprocessing_num_workers)["validation"]
    )
    if tokens.numel() < 2:
        raise HfminiError(f"the validation text has {tokens.numel()} tokens: add text to score")
    return tokens


def prepare_data(data_args, tokenizer_factory) -> tuple[PreparedData, object]:
    """Load, chunk, split, build the tokenizer (on train only), tokenize and pack.

    `tokenizer_factory(train_chunks)` returns the tokenizer; it sees training text only.
    Returns (PreparedData, tokenizer).
    """
    raw = load_raw_datasets(data_args)
    chunks = chunk_documents(raw, data_args.text_column, data_args.preprocessing_num_workers)
    chunks = hold_out_validation(chunks, data_args.validation_split_percentage)
    tokenizer = tokenizer_factory(chunks["train"])
    tokenized = tokenize_chunks(chunks, tokenizer, data_args.preprocessing_num_workers)
    train_tokens, dropped = pack(flat_tokens(tokenized["train"]), data_args.block_size, "train")
    eval_tokens = flat_tokens(tokenized["validation"])
    if eval_tokens.numel() < data_args.block_size:
        raise HfminiError(
            f"the validation split has {eval_tokens.numel()} tokens, fewer than one block of "
            f"{data_args.block_size}: lower block_size or add validation text"
        )
    if dropped:
        logger.info("dropped the final partial training block: %d tokens", dropped)
    prepared = PreparedData(
        train_tokens=train_tokens,
        eval_tokens=eval_tokens,
        block_size=data_args.block_size,
        dropped_train_tokens=dropped,
        train_bytes=text_bytes(chunks["train"]),
    )
    return prepared, tokenizer
