"""Where the text comes from: local files, a Hub dataset or the built-in corpus, as a DatasetDict.

    train_file / validation_file ─► expand folders, check format and readability, count bad UTF-8
    dataset_name                 ─► datasets.load_dataset (Hub, or its local cache when offline)
    dataset_mixture              ─► each source as above, weighted and concatenated (mixture.py)
    neither                      ─► the built-in Shakespeare plays, written once as JSON lines
                                 ─► DatasetDict {"train", maybe "validation"}: one document a row

Local files are read by the `datasets` builder their extension names (text, json, csv, parquet,
arrow), optionally compressed (.gz, .bz2, .xz, .zst, .lz4): what `load_dataset` reads.
This stage only loads; chunking, the validation split and tokenization come after (composed
in prepare.py).
"""

from __future__ import annotations

import json
import os

from hfmini.cache import hfmini_cache_dir
from hfmini.data.mixture import load_mixture
from hfmini.data.readers import expand_data_files, load_hub, load_local
from hfmini.data.shakespeare import load_plays
from hfmini.data.splits import TRAIN_SPLIT, VALIDATION_SPLIT, VALIDATION_SPLIT_NAMES
from hfmini.data.text_columns import check_text_column, check_text_values
from hfmini.errors import HfminiError, cache_full, disk_full


def shakespeare_files() -> dict[str, list[str]]:
    """Write the built-in corpus once as JSON lines (one play per line) and return the paths.

    Going through files, not `Dataset.from_dict`, gives datasets a stable fingerprint, so the
    tokenized result is cached across runs like any other local file.
    """
    folder = hfmini_cache_dir() / "shakespeare-v1"
    paths = {split: folder / f"{split}.jsonl" for split in (TRAIN_SPLIT, VALIDATION_SPLIT)}
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


def load_raw(data_args) -> tuple:
    """(DatasetDict with 'train', and 'validation' when the source has one; origins), the rows
    as the source holds them. `origins` maps a split to (what, files) for error messages:
    ("train_file", [paths]), (a dataset name, None), or ("dataset_mixture", None)."""
    from datasets import DatasetDict

    if data_args.dataset_mixture:
        return load_mixture(data_args)
    if data_args.train_file:
        data_files = {"train": expand_data_files(data_args.train_file, "train_file")}
        if data_args.validation_file:
            data_files["validation"] = expand_data_files(
                data_args.validation_file, "validation_file"
            )
        raw = load_local(data_files)
    elif data_args.dataset_name:
        raw = load_hub(data_args.dataset_name, data_args.dataset_config_name)
    else:
        raw = load_local(shakespeare_files())
    if not isinstance(raw, DatasetDict) or "train" not in raw:
        raise HfminiError("the dataset has no 'train' split: name the files with train_file")
    splits = {"train": raw["train"]}
    for name in VALIDATION_SPLIT_NAMES:
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
