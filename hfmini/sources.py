"""Where the text comes from: local files, a Hub dataset or the built-in corpus, as a DatasetDict.

    train_file / validation_file ─► expand folders, check format and readability, count bad UTF-8
    dataset_name                 ─► datasets.load_dataset (Hub, or its local cache when offline)
    dataset_mixture              ─► each source as above, weighted and concatenated (mixture.py)
    neither                      ─► the built-in Shakespeare plays, written once as JSON lines
                                 ─► DatasetDict {"train", maybe "validation"}: one document a row

Local files are read by the `datasets` builder their extension names (text, json, csv, parquet,
arrow), optionally compressed (.gz, .bz2, .xz, .zst, .lz4): what `load_dataset` reads.
This stage only loads; chunking, the validation split and tokenization come after (`data.py`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from hfmini.config import hfmini_cache_dir
from hfmini.errors import HfminiError, cache_full, disk_full

logger = logging.getLogger("hfmini.data")

# The `datasets` builders that yield rows of text; other builders (images, audio...) do not.
TEXT_BUILDERS = ("text", "json", "csv", "parquet", "arrow")
TEXT_FILES_PER_WRITE = 8


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


def _warn_invalid_utf8(files: list[str]) -> None:
    """Invalid bytes are replaced by U+FFFD (never a crash); say so once, with the count."""
    binary = ("parquet", "arrow")  # columnar files store strings already validated
    counts = {f: count_invalid_utf8(f) for f in files if file_format(Path(f))[0] not in binary}
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


def _check_decompressor(files: list[str]) -> None:
    """A missing optional decompressor is named with its install command, before any work."""
    import importlib.util

    modules = {"zstd": "zstandard", "lz4": "lz4"}
    for f in files:
        module = modules.get(_compression(Path(f)) or "")
        if module and importlib.util.find_spec(module) is None:
            raise HfminiError(f"{f} is compressed with {module}: pip install {module}")


def _reader(path: Path) -> tuple[str, dict]:
    """The datasets builder for a data file and the keyword arguments hfmini reads it with."""
    builder, builder_kwargs = file_format(path)
    kwargs = dict(builder_kwargs)
    if builder in ("text", "json", "csv"):
        kwargs["encoding_errors"] = "replace"
    if builder == "text":
        kwargs["sample_by"] = "document"
        # A row is a whole file here, and the Arrow writer holds writer_batch_size rows before
        # it writes (datasets' default: 1000 files in memory at once).
        kwargs["writer_batch_size"] = TEXT_FILES_PER_WRITE
    return builder, kwargs


def load_local(data_files: dict[str, list[str]]):
    """Local files (already expanded) → DatasetDict with the same split names."""
    from datasets import load_dataset

    all_files = [f for files in data_files.values() for f in files]
    builder, kwargs = _reader(Path(all_files[0]))
    if len({_format_key(Path(f)) for f in all_files}) > 1:
        raise HfminiError("train_file and validation_file must have the same format")
    _check_decompressor(all_files)
    _warn_invalid_utf8(all_files)
    # datasets logs a parse failure with its traceback before raising; our message replaces it.
    datasets_logger = logging.getLogger("datasets")
    level = datasets_logger.level
    datasets_logger.setLevel(logging.CRITICAL)
    try:
        return load_dataset(builder, data_files=data_files, **kwargs)
    except Exception as err:  # malformed JSON/CSV/Parquet: name the files, not the internals
        if disk_full(err):
            raise datasets_cache_full("the Arrow copy of the data") from None
        reason = str(err.__cause__ or err).splitlines()[0][:200] if str(err) else type(err).__name__
        files = ", ".join(all_files)[:200]
        raise HfminiError(
            f"could not read {files} as {builder} ({reason}): check that the files are valid "
            f"{builder}"
        ) from None
    finally:
        datasets_logger.setLevel(level)


def _load_hub(name: str, config_name: str | None, streaming: bool = False):
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


def shakespeare_files() -> dict[str, list[str]]:
    """Write the built-in corpus once as JSON lines (one play per line) and return the paths.

    Going through files, not `Dataset.from_dict`, gives datasets a stable fingerprint, so the
    tokenized result is cached across runs like any other local file.
    """
    from hfmini.shakespeare import load_plays

    folder = hfmini_cache_dir() / "shakespeare-v1"
    paths = {split: folder / f"{split}.jsonl" for split in ("train", "validation")}
    if not all(path.is_file() for path in paths.values()):
        for split, plays in load_plays().items():
            tmp = paths[split].with_suffix(f".tmp{os.getpid()}")
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tmp.open("w", encoding="utf-8") as handle:
                    for play, text in plays.items():
                        handle.write(json.dumps({"play": play, "text": text}) + "\n")
                os.replace(tmp, paths[split])
            except OSError as err:
                tmp.unlink(missing_ok=True)
                if disk_full(err):
                    raise cache_full("the built-in corpus", folder) from None
                raise
    return {split: [str(path)] for split, path in paths.items()}


def check_text_column(splits: dict, column: str, where: str) -> None:
    for split, ds in splits.items():
        if column not in ds.column_names:
            raise HfminiError(
                f"text_column {column!r} is not in the {split} data{where}; its columns are "
                f"{', '.join(ds.column_names)}: set --text_column to one of them"
            )


def load_raw(data_args) -> tuple:
    """(DatasetDict with 'train', and 'validation' when the source has one; origins), the rows
    as the source holds them. `origins` maps a split to (what, files) for error messages:
    ("train_file", [paths]), (a dataset name, None), or ("dataset_mixture", None)."""
    from datasets import DatasetDict

    if data_args.dataset_mixture:
        from hfmini.mixture import load_mixture

        return load_mixture(data_args)
    if data_args.train_file:
        data_files = {"train": expand_data_files(data_args.train_file, "train_file")}
        if data_args.validation_file:
            data_files["validation"] = expand_data_files(
                data_args.validation_file, "validation_file"
            )
        raw = load_local(data_files)
    elif data_args.dataset_name:
        raw = _load_hub(data_args.dataset_name, data_args.dataset_config_name)
    else:
        raw = load_local(shakespeare_files())
    if not isinstance(raw, DatasetDict) or "train" not in raw:
        raise HfminiError("the dataset has no 'train' split: name the files with train_file")
    splits = {"train": raw["train"]}
    for name in ("validation", "valid", "dev", "test"):
        if name in raw:
            splits["validation"] = raw[name]
            break
    if data_args.train_file:
        names = {"train": "train_file", "validation": "validation_file"}
        origins = {split: (names[split], files) for split, files in data_files.items()}
    else:
        source = (
            f"dataset {data_args.dataset_name}" if data_args.dataset_name else "built-in corpus"
        )
        origins = {split: (source, None) for split in splits}
    return DatasetDict(splits), origins


def load_sources(data_args):
    """A DatasetDict with 'train', and 'validation' when the source has one; one document a row
    in `text_column` (checked)."""
    raw, origins = load_raw(data_args)
    check_text_column(raw, data_args.text_column, "")
    check_text_values(raw, data_args.text_column, origins)
    return raw


def load_validation_files(data_args):
    """`validation_file` alone, as a DatasetDict {"validation"} (for `hfmini eval`)."""
    from datasets import DatasetDict

    files = expand_data_files(data_args.validation_file, "validation_file")
    raw = DatasetDict({"validation": load_local({"train": files})["train"]})
    check_text_column(raw, data_args.text_column, f" ({files[0]})")
    check_text_values(raw, data_args.text_column, {"validation": ("validation_file", files)})
    return raw


def datasets_cache_full(what: str):
    """The error for a full disk under the datasets cache (HF_HOME/datasets by default)."""
    import datasets

    variable = "HF_DATASETS_CACHE" if os.environ.get("HF_DATASETS_CACHE") else "HF_HOME"
    return cache_full(what, datasets.config.HF_DATASETS_CACHE, variable)


def check_text_values(splits: dict, column: str, origins: dict) -> None:
    """Every text value is a string or null; otherwise name the file and row of the first that is
    not, before the chunking map fails on it with a pyarrow traceback.

    `origins` maps a split to (what, files): ("train_file", [paths]), or (a dataset name, None).
    A column that datasets typed as strings passes at no cost; JSON rows that mix strings with
    numbers or lists come out typed `Json`, and those are scanned (in Python, on this error path).
    datasets types a column from the first file: when that file holds only strings, a later
    file's numbers and lists are cast to their JSON text ("42") and pass as text.
    """
    for split, ds in splits.items():
        found = _first_non_string(ds, column)
        if found is None:
            continue
        row, value = found
        what, files = origins.get(split, (f"the {split} data", None))
        where = f"{what} ({split} split) row {row + 1}"
        if files:
            file, row = file_and_row(files, row)
            where = f"{what} {file} row {row + 1}"
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        fix = "make every text value a string (null skips a row)"
        if not files:
            fix = "set --text_column to a column of text"
        raise HfminiError(
            f"{where}: text_column {column!r} holds {_kind(value)} ({shown}), not text: {fix}"
        )


def _kind(value) -> str:
    """A value's kind as JSON names it."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _first_non_string(ds, column: str) -> tuple[int, object] | None:
    """(row, value) of the first value of `column` that is neither a string nor null, or None."""
    from datasets import Value

    feature = ds.features[column]
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string", "null"):
        return None
    batch_size = 1000
    for start, batch in enumerate(ds.select_columns([column]).iter(batch_size=batch_size)):
        for offset, value in enumerate(batch[column]):
            if value is not None and not isinstance(value, str):
                return start * batch_size + offset, value
    return None


def file_and_row(files: list[str], row: int) -> tuple[str, int]:
    """The file a row of a split read from `files` comes from, and its row in that file (datasets
    reads the files in order). Loads each file alone: only on the error path."""
    from datasets import load_dataset

    for file in files[:-1]:
        builder, kwargs = _reader(Path(file))
        rows = load_dataset(builder, data_files={"train": [file]}, **kwargs)["train"].num_rows
        if row < rows:
            return file, row
        row -= rows
    return files[-1], row
