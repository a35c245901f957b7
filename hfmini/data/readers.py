"""Reading rows: local files by the `datasets` builder their extension names (text, json, csv,
parquet, arrow), optionally compressed (.gz, .bz2, .xz, .zst, .lz4), and Hub datasets.

    train_file / validation_file ─► expand folders, check format and readability, count bad UTF-8
                                 ─► datasets.load_dataset(builder, data_files=...)
    dataset_name                 ─► datasets.load_dataset (Hub, or its local cache when offline)
"""

from __future__ import annotations

import logging
from pathlib import Path

from hfmini.data.datasets_cache import datasets_cache_full
from hfmini.errors import HfminiError, disk_full

logger = logging.getLogger("hfmini.data")


# The `datasets` builders that yield rows of text; other builders (images, audio...) do not.
TEXT_BUILDERS = ("text", "json", "csv", "parquet", "arrow")

# A .txt file is one document, read in pieces of at most this many characters cut where
# split_document cuts (before a blank line, else before a line break): a row never holds more
# than about 1 MB however large the file, and the pieces' tokens join exactly as the whole
# file's would (no end-of-text between pieces of one file). A line longer than this is cut before
# a space; only a run without spaces this long is cut inside, which can change its tokenization
# at that one point.
TEXT_PIECE_CHARS = 1 << 20
# The columns marking a .txt file's first piece (a BOS precedes it, for tokenizers that add one)
# and its last (the document's end-of-text follows it).
DOC_START = "hfmini_doc_start"
DOC_END = "hfmini_doc_end"
# Pieces the Arrow writer holds before it writes: a few MB.
TEXT_PIECES_PER_WRITE = 8


def _boundary_before(text: str, separator: str, start: int, end: int) -> int:
    """The last index in (start, end) where `separator` begins right after a non-space character,
    or -1. Byte-level BPE pre-tokens never join a non-space character to the whitespace after it,
    so cutting there leaves the tokenization of both sides unchanged."""
    cut = text.rfind(separator, start + 1, end)
    while cut > start and text[cut - 1].isspace():
        cut = text.rfind(separator, start + 1, cut)
    return cut


def split_document(text: str, max_chars: int) -> list[str]:
    """Cut text into pieces of at most max_chars whose concatenation is the text: before a blank
    line where possible (tokenization unchanged), else before a line break, else (one long line)
    before a space, else a hard cut."""
    pieces = []
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = _boundary_before(text, "\n\n", start, end)
        if cut <= start:
            cut = _boundary_before(text, "\n", start, end)
        if cut <= start:
            cut = _boundary_before(text, " ", start, end)
        if cut <= start:
            cut = end
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _compression(path: Path) -> str | None:
    """The compression protocol a file's last suffix names (gzip, zstd...), or None."""
    from datasets.utils.file_utils import SINGLE_FILE_COMPRESSION_EXTENSION_TO_PROTOCOL

    return SINGLE_FILE_COMPRESSION_EXTENSION_TO_PROTOCOL.get(path.suffix.lower().lstrip("."))


def file_format(path: Path) -> tuple[str, dict] | None:
    """(datasets builder, its keyword arguments) for a data file, or None if it holds no text.

    `.jsonl.gz` is a compressed `.jsonl`: the format comes from the suffix before the compression.
    """
    from datasets.packaged_modules import _EXTENSION_TO_MODULE

    name = path.name[: -len(path.suffix)] if _compression(path) else path.name
    suffix = Path(name).suffix
    builder, kwargs = _EXTENSION_TO_MODULE.get(
        suffix, _EXTENSION_TO_MODULE.get(suffix.lower(), ("", {}))
    )
    return (builder, kwargs) if builder in TEXT_BUILDERS else None


def _format_key(path: Path) -> str:
    """Files of one key can be read together (.csv and .tsv are both csv, but not alike)."""
    builder, kwargs = file_format(path)
    return builder + "".join(f" {k}={v!r}" for k, v in sorted(kwargs.items()))


def _format_names() -> str:
    from datasets.packaged_modules import _EXTENSION_TO_MODULE

    return ", ".join(
        sorted(ext for ext, (b, _) in _EXTENSION_TO_MODULE.items() if b in TEXT_BUILDERS)
    )


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
            found = sorted(p for p in path.rglob("*") if p.is_file() and file_format(p))
            if not found:
                raise HfminiError(
                    f"{what} directory {pattern} has no text data files ({_format_names()}, "
                    "optionally compressed): add some or point at the files directly"
                )
            files.extend(found)
        elif path.is_file():
            if file_format(path) is None:
                raise HfminiError(
                    f"{what} {pattern} is not a text format that datasets reads: use one of "
                    f"{_format_names()} (optionally .gz, .bz2, .xz or .zst)"
                )
            files.append(path)
        else:
            raise HfminiError(f"{what} {pattern} does not exist: check the path")
    for path in files:
        _check_readable(path, what)
    formats = {_format_key(f) for f in files}
    if len(formats) > 1:
        raise HfminiError(f"{what} mixes formats ({', '.join(sorted(formats))}): use one format")
    return [str(f) for f in files]


def count_invalid_utf8(path: str, block: int = 1 << 20) -> int:
    """Bytes of `path` (decompressed) that are not valid UTF-8. Streams the file once."""
    import codecs

    import fsspec

    bad = 0

    def count(error: UnicodeDecodeError):
        nonlocal bad
        bad += error.end - error.start
        return "\ufffd", error.end

    codecs.register_error("hfmini_count", count)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="hfmini_count")
    with fsspec.open(path, "rb", compression=_compression(Path(path))) as handle:
        while chunk := handle.read(block):
            decoder.decode(chunk)
    decoder.decode(b"", final=True)
    return bad


def first_invalid_utf8(path: str, block: int = 1 << 20) -> tuple[int, int] | None:
    """(line, byte in that line), both from 1, of the first bytes of `path` (decompressed) that are
    not valid UTF-8, or None. Streams the file once; only run on files known to hold some."""
    import codecs

    import fsspec

    decoder = codecs.getincrementaldecoder("utf-8")()
    lines, line_start, offset = 1, 0, 0
    with fsspec.open(path, "rb", compression=_compression(Path(path))) as handle:
        while chunk := handle.read(block):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                # The decoder may hold up to 3 bytes of the previous chunk: clamp to this one.
                at = max(0, err.start - len(err.object) + len(chunk))
                before = chunk[:at]
                newline = before.rfind(b"\n")
                if newline >= 0:
                    line_start = offset + newline + 1
                return lines + before.count(b"\n"), offset + at - line_start + 1
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                line_start = offset + newline + 1
            lines += chunk.count(b"\n")
            offset += len(chunk)
    return None


def first_bad_json_line(path: str) -> tuple[int, str] | None:
    """(line, reason) of the first line of a JSON lines file that is not a JSON object, or None
    (also for a .json file that is one document). A Python pass: only on the error path."""
    import json

    import fsspec

    name = Path(path).name
    if _compression(Path(path)):
        name = name[: -len(Path(path).suffix)]  # a.jsonl.gz is a JSON lines file
    if Path(name).suffix.lower() not in (".jsonl", ".ndjson"):
        return None
    with fsspec.open(path, "rt", compression=_compression(Path(path)), encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as err:
                column = getattr(err, "colno", None)
                where = f" at byte {column} of the line" if column else ""
                return number, f"{getattr(err, 'msg', str(err))}{where}"
            if not isinstance(value, dict):
                return number, f"a JSON {type(value).__name__}, not an object with fields"
    return None


def invalid_utf8_error(path: str) -> HfminiError:
    """A JSON file is refused at its first invalid byte: pyarrow's JSON reader cannot replace
    them, and a guess at the encoding would change the text silently."""
    found = first_invalid_utf8(path) or (0, 0)
    return HfminiError(
        f"{path} line {found[0]} is not valid UTF-8 (byte {found[1]} of the line): re-encode the "
        "file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or fix that line"
    )


def _warn_invalid_utf8(files: list[str]) -> None:
    """Invalid bytes are replaced by U+FFFD (never a crash); say so once, with the count. JSON
    files are refused instead, naming the line (invalid_utf8_error)."""
    binary = ("parquet", "arrow")  # columnar files store strings already validated
    counts = {f: count_invalid_utf8(f) for f in files if file_format(Path(f))[0] not in binary}
    bad = {f: n for f, n in counts.items() if n}
    for f in bad:
        if file_format(Path(f))[0] == "json":
            raise invalid_utf8_error(f)
    if bad:
        first = next(iter(bad))
        logger.warning(
            "%d bytes that are not valid UTF-8 in %d file(s) (first: %s) were replaced with "
            "U+FFFD; re-encode the files as UTF-8 to keep them",
            sum(bad.values()),
            len(bad),
            first,
        )


def _check_decompressor(files: list[str]) -> None:
    """A missing optional decompressor is named with its install command, before any work."""
    import importlib.util

    modules = {"zstd": "zstandard", "lz4": "lz4"}
    for f in files:
        module = modules.get(_compression(Path(f)) or "")
        if module and importlib.util.find_spec(module) is None:
            raise HfminiError(f"{f} is compressed with {module}: pip install {module}")


def file_reader(path: Path) -> tuple[str, dict]:
    """The datasets builder for a data file and the keyword arguments hfmini reads it with."""
    builder, builder_kwargs = file_format(path)
    kwargs = dict(builder_kwargs)
    if builder in ("text", "json", "csv"):
        kwargs["encoding_errors"] = "replace"
    if builder == "text":
        # Only for file_and_row; .txt files are read by text_pieces (text_documents).
        kwargs["sample_by"] = "document"
    return builder, kwargs


def text_pieces(files: list[str], stamps: list[tuple], piece_chars: int):
    """Rows {"text": piece, DOC_END: whether it is its file's last} of .txt files (optionally
    compressed), read piece by piece: memory is one piece, whatever the file's size.

    Decoded as datasets' text builder decodes (UTF-8, bad bytes replaced, universal newlines:
    CRLF reads as LF), so the text is the same. `stamps` (size, mtime) only key the cache."""
    import fsspec

    del stamps
    for file in files:
        first = True
        compression = _compression(Path(file))
        with fsspec.open(
            file, "rt", compression=compression, encoding="utf-8", errors="replace"
        ) as f:
            rest = ""
            while data := f.read(piece_chars):
                pieces = split_document(rest + data, piece_chars)
                for piece in pieces[:-1]:
                    yield {"text": piece, DOC_START: first, DOC_END: False}
                    first = False
                rest = pieces[-1]  # may continue in the next read
            if rest:
                yield {"text": rest, DOC_START: first, DOC_END: True}


def _text_generator_kwargs(files: list[str]) -> dict:
    stamps = []
    for file in files:
        stat = Path(file).stat()
        stamps.append((stat.st_size, stat.st_mtime_ns))
    return {"files": files, "stamps": stamps, "piece_chars": TEXT_PIECE_CHARS}


def text_documents(files: list[str], streaming: bool = False):
    """.txt files → a Dataset (or, streaming, an IterableDataset) of pieces: see text_pieces.
    Cached by the files' paths, sizes and modification times."""
    import hashlib

    from datasets import Dataset, Features, IterableDataset, Value

    features = Features({"text": Value("string"), DOC_START: Value("bool"), DOC_END: Value("bool")})
    gen_kwargs = _text_generator_kwargs(files)
    if streaming:
        return IterableDataset.from_generator(text_pieces, features=features, gen_kwargs=gen_kwargs)
    key = f"{gen_kwargs}-text-pieces-v2"
    return Dataset.from_generator(
        text_pieces,
        features=features,
        gen_kwargs=gen_kwargs,
        fingerprint=hashlib.sha256(key.encode()).hexdigest()[:16],
        writer_batch_size=TEXT_PIECES_PER_WRITE,
    )


def load_local(data_files: dict[str, list[str]]):
    """Local files (already expanded) → DatasetDict with the same split names."""
    from datasets import load_dataset

    all_files = [f for files in data_files.values() for f in files]
    builder, kwargs = file_reader(Path(all_files[0]))
    if len({_format_key(Path(f)) for f in all_files}) > 1:
        raise HfminiError("train_file and validation_file must have the same format")
    _check_decompressor(all_files)
    _warn_invalid_utf8(all_files)
    # datasets logs a parse failure with its traceback before raising; our message replaces it.
    datasets_logger = logging.getLogger("datasets")
    level = datasets_logger.level
    datasets_logger.setLevel(logging.CRITICAL)
    try:
        from datasets import DatasetDict

        if builder == "text":
            return DatasetDict({split: text_documents(f) for split, f in data_files.items()})
        if builder == "json":
            return DatasetDict({split: _json_files(f, kwargs) for split, f in data_files.items()})
        return load_dataset(builder, data_files=data_files, **kwargs)
    except HfminiError:
        raise
    except Exception as err:  # malformed JSON/CSV/Parquet: name the files, not the internals
        if disk_full(err):
            raise datasets_cache_full("the Arrow copy of the data") from None
        if builder == "json":
            for file in all_files:
                if found := first_bad_json_line(file):
                    raise HfminiError(
                        f"{file} line {found[0]} is not valid JSON ({found[1]}): fix or remove "
                        "the line"
                    ) from None
        reason = str(err.__cause__ or err).splitlines()[0][:200] if str(err) else type(err).__name__
        files = ", ".join(all_files)[:200]
        raise HfminiError(
            f"could not read {files} as {builder} ({reason}): check that the files are valid "
            f"{builder}"
        ) from None
    finally:
        datasets_logger.setLevel(level)


def _is_text(feature) -> bool:
    from datasets import Value

    return isinstance(feature, Value) and feature.dtype in ("string", "large_string", "null")


def _json_files(files: list[str], kwargs: dict):
    """JSON files one by one, then concatenated: read together, datasets types each column from
    the first file and silently casts a later file's numbers to text ("42"). A column that is
    text in one file and holds something else in another is one line naming that file and row
    (a Python scan of that file's column, on this error path only)."""
    import json

    from datasets import concatenate_datasets, load_dataset

    parts = [load_dataset("json", data_files={"train": [f]}, **kwargs)["train"] for f in files]
    columns = {c for part in parts for c in part.column_names}
    for column in sorted(columns):
        typed = [(f, p) for f, p in zip(files, parts, strict=True) if column in p.column_names]
        texts = [f for f, p in typed if _is_text(p.features[column])]
        if not texts or len(texts) == len(typed):
            continue
        for file, part in typed:
            for row, value in enumerate(part[column]):
                if value is not None and not isinstance(value, str):
                    shown = json.dumps(value, default=str)
                    shown = shown if len(shown) <= 40 else shown[:37] + "..."
                    raise HfminiError(
                        f"{file} row {row + 1}: column {column!r} holds {shown}, not text as in "
                        f"{texts[0]}: make every value of the column a string (null skips a row)"
                    )
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def load_hub(name: str, config_name: str | None, streaming: bool = False):
    import datasets
    from datasets import load_dataset

    try:
        return load_dataset(name, config_name, streaming=streaming)
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


def file_and_row(files: list[str], row: int) -> tuple[str, int]:
    """The file a row of a split read from `files` comes from, and its row in that file (datasets
    reads the files in order). Loads each file alone: only on the error path."""
    from datasets import load_dataset

    for file in files[:-1]:
        builder, kwargs = file_reader(Path(file))
        rows = load_dataset(builder, data_files={"train": [file]}, **kwargs)["train"].num_rows
        if row < rows:
            return file, row
        row -= rows
    return files[-1], row


def row_location(origins: dict, split: str, row: int) -> str:
    """Where row `row` (0-based) of `split` came from, for an error: "the training data
    path.jsonl row 7" when it was read from files, else "... (train split) row 7". `origins`
    maps a split to (what it is, its files or None)."""
    what, files = origins.get(split, (f"the {split} data", None))
    if files:
        file, line = file_and_row(files, row)
        return f"{what} {file} row {line + 1}"
    return f"{what} ({split} split) row {row + 1}"
