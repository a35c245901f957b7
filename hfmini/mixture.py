"""Several text sources mixed by weight into one training set (`dataset_mixture`).

    "file=data/books,weight=2"      ─► expand_data_files + load_local (as train_file)
    "dataset=ID,config=C,split=S"   ─► datasets.load_dataset (as dataset_name: a Hub id or a
                                        local dataset folder)
        each source ─► its split, its text column only (renamed to the run's text_column),
                       values checked ─► shuffled, round(weight × rows) rows kept
    all sources     ─► concatenate_datasets, shuffled ─► DatasetDict {"train", maybe "validation"}

A weight is the fraction of a source's rows kept, as in open-r1's `dataset_mixture` (TRL script
arguments); above 1, which open-r1 refuses, it repeats rows (whole passes over the shuffled rows,
then a part of one). Rows are what the reader
yields: a line of .jsonl/.csv/.parquet, a whole .txt file. Validation rows are never weighted.
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass

from hfmini.errors import HfminiError

logger = logging.getLogger("hfmini.data")

# Every shuffle of the mixture uses this seed, not the run's: the mixture stays the same rows when
# only `seed` changes, and a resumed run sees the same data (alignment-handbook also uses 42).
MIXTURE_SEED = 42

# Entry keys: a source (exactly one), then options.
SOURCE_KEYS = ("file", "dataset")
OPTION_KEYS = ("config", "split", "text_column", "weight")
EXAMPLE = "'file=data/books,weight=0.5'"


@dataclass(frozen=True)
class MixtureSource:
    """One parsed `dataset_mixture` entry."""

    kind: str  # "file" or "dataset"
    name: str  # the path or dataset id
    config: str | None = None
    split: str = "train"
    text_column: str | None = None  # None: the run's text_column
    weight: float = 1.0

    def label(self) -> str:
        """How messages and the log name the source."""
        return self.name + (f" ({self.config})" if self.config else "")


def parse_entry(entry: str) -> MixtureSource:
    """`key=value,key=value` → MixtureSource; a mistake is one line naming the entry."""
    entry = str(entry)
    if entry.lstrip().startswith("{"):
        # A YAML mapping arrives here as its Python text: say what to write instead.
        raise HfminiError(
            f"dataset_mixture entry {entry} is a mapping; entries are strings such as {EXAMPLE} "
            "(the same in YAML and on the command line)"
        )
    values: dict[str, str] = {}
    for item in entry.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not value:
            problem = "has no value" if sep else "is not key=value"
            raise HfminiError(
                f"dataset_mixture entry {entry!r}: {item.strip()!r} {problem}; write entries "
                f"such as {EXAMPLE}"
            )
        if key not in SOURCE_KEYS + OPTION_KEYS:
            nearest = difflib.get_close_matches(key, SOURCE_KEYS + OPTION_KEYS, n=1)
            hint = f"did you mean {nearest[0]!r}? " if nearest else ""
            raise HfminiError(
                f"dataset_mixture entry {entry!r}: unknown key {key!r}; {hint}keys are "
                f"{', '.join(SOURCE_KEYS + OPTION_KEYS)}"
            )
        if key in values:
            raise HfminiError(f"dataset_mixture entry {entry!r} gives {key} twice: keep one")
        values[key] = value
    kinds = [key for key in SOURCE_KEYS if key in values]
    if len(kinds) != 1:
        raise HfminiError(
            f"dataset_mixture entry {entry!r} needs one source: file=PATH (local files or a "
            "folder) or dataset=ID (a Hub id or a dataset folder)"
        )
    kind = kinds[0]
    if kind == "file" and ("config" in values or "split" in values):
        raise HfminiError(
            f"dataset_mixture entry {entry!r}: config and split go with dataset=ID; the rows of "
            "file= sources are all training rows"
        )
    return MixtureSource(
        kind=kind,
        name=values[kind],
        config=values.get("config"),
        split=values.get("split", "train"),
        text_column=values.get("text_column"),
        weight=_weight(values.get("weight", "1"), entry),
    )


def _weight(text: str, entry: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise HfminiError(
            f"dataset_mixture entry {entry!r}: weight {text!r} is not a number; give the fraction "
            "of the source's rows to keep, e.g. weight=0.5"
        ) from None
    if not (weight > 0 and math.isfinite(weight)):
        raise HfminiError(
            f"dataset_mixture entry {entry!r}: weight must be a positive number (the fraction of "
            f"the source's rows kept; above 1 repeats rows), got {text}"
        )
    return weight


def parse_mixture(entries: list[str]) -> list[MixtureSource]:
    if not entries:
        raise HfminiError(f"dataset_mixture is empty: give one entry per source, e.g. {EXAMPLE}")
    return [parse_entry(entry) for entry in entries]


def load_mixture(data_args) -> tuple:
    """(DatasetDict {"train", maybe "validation"} with one column, text_column; origins), as
    `sources.load_raw` returns. Validation: validation_file, else every source's own validation
    split, else none (data.py then holds out the mixture's tail)."""
    from datasets import DatasetDict, concatenate_datasets

    from hfmini.sources import expand_data_files

    sources = parse_mixture(data_args.dataset_mixture)
    # Every local path is checked before any source is read: a typo in the last entry fails now.
    files = {
        s: expand_data_files([s.name], "dataset_mixture file") for s in sources if s.kind == "file"
    }
    validation_files = None
    if data_args.validation_file:
        validation_files = expand_data_files(data_args.validation_file, "validation_file")
    loaded = [_load_source(s, files.get(s), data_args.text_column) for s in sources]
    kept = [_weighted(train, source) for (train, _), source in zip(loaded, sources, strict=True)]
    validation, origin = _validation(sources, [v for _, v in loaded], validation_files, data_args)
    # One shuffle of the whole: sources interleave, and a held-out tail samples all of them.
    splits = {"train": concatenate_datasets(kept).shuffle(seed=MIXTURE_SEED)}
    origins = {"train": ("dataset_mixture", None)}
    if validation is not None:
        splits["validation"], origins["validation"] = validation, origin
    return DatasetDict(splits), origins


def _validation(sources: list[MixtureSource], own: list, validation_files, data_args) -> tuple:
    """(validation split or None, its origin): validation_file, else every source's own split
    concatenated (unweighted), else None for data.py to hold out the mixture's tail."""
    from datasets import concatenate_datasets

    from hfmini.sources import load_local

    if validation_files:
        origin = ("validation_file", validation_files)
        validation = load_local({"validation": validation_files})["validation"]
        column = data_args.text_column
        fix = "set --text_column to one of them"
        validation = _text_only(
            validation, column, column, "validation_file", {"validation": origin}, "validation", fix
        )
    elif all(v is not None for v in own):
        origin = ("dataset_mixture", None)
        validation = concatenate_datasets(own)
    else:
        _check_no_repeats(sources, own)
        logger.info("dataset_mixture: validation will be held out of the mixture")
        return None, None
    logger.info("dataset_mixture: validation is %d rows of %s", validation.num_rows, origin[0])
    return validation, origin


def _load_source(source: MixtureSource, files: list[str] | None, run_column: str) -> tuple:
    """(train, validation or None) of one source, each holding only `run_column`, text checked."""
    from hfmini.sources import _load_hub, load_local

    what = f"dataset_mixture source {source.label()}"
    if source.kind == "file":
        train = load_local({"train": files})["train"]
        origins = {"train": ("dataset_mixture file", files)}
        validation = None
    else:
        raw = _load_hub(source.name, source.config)
        if source.split not in raw:
            raise HfminiError(
                f"{what} has no split {source.split!r}; its splits are {', '.join(raw)}: set "
                "split= in its entry to one of them"
            )
        train = raw[source.split]
        names = [
            n for n in ("validation", "valid", "dev", "test") if n in raw and n != source.split
        ]
        validation = raw[names[0]] if names else None
        origins = {"train": (what, None), "validation": (what, None)}
    column = source.text_column or run_column
    train = _text_only(train, column, run_column, what, origins)
    if validation is not None:
        validation = _text_only(validation, column, run_column, what, origins, "validation")
    return train, validation


def _text_only(
    ds, column: str, run_column: str, what: str, origins: dict, split: str = "train", fix: str = ""
):
    """`ds` with only `column`, checked to hold text, renamed to `run_column`, typed string (so
    that sources read by different builders concatenate)."""
    from datasets import Value

    from hfmini.sources import check_text_values

    if column not in ds.column_names:
        raise HfminiError(
            f"{what} has no column {column!r}; its columns are {', '.join(ds.column_names)}: "
            + (fix or "set text_column= in its entry to the column holding the text")
        )
    ds = ds.select_columns([column])
    check_text_values({split: ds}, column, origins)
    if column != run_column:
        ds = ds.rename_column(column, run_column)
    if ds.features[run_column] != Value("string"):
        ds = ds.cast_column(run_column, Value("string"))  # large_string, null: rewrites the column
    return ds


def _check_no_repeats(sources: list[MixtureSource], validations: list) -> None:
    """A held-out tail of a mixture that repeats rows would also hold copies of training rows."""
    repeated = [s for s in sources if s.weight > 1]
    if not repeated:
        return
    lacking = [s.label() for s, v in zip(sources, validations, strict=True) if v is None]
    raise HfminiError(
        f"dataset_mixture weight {repeated[0].weight:g} repeats the rows of "
        f"{repeated[0].label()}, and validation would be held out of the mixture (no "
        f"validation split in {', '.join(lacking)}), so copies of training rows would be "
        "scored: set validation_file, or keep every weight at most 1"
    )


def _weighted(ds, source: MixtureSource):
    """round(weight × rows) rows of `ds`: a seeded permutation, cycled through when weight > 1, so
    each row appears floor(weight) or ceil(weight) times."""
    import numpy as np

    rows = ds.num_rows
    keep = math.floor(source.weight * rows + 0.5)
    if keep == 0:
        raise HfminiError(
            f"dataset_mixture source {source.label()}: weight {source.weight:g} keeps none of its "
            f"{rows} rows: raise the weight (weights count rows, and a .txt file is one row)"
            if rows
            else f"dataset_mixture source {source.label()} has no rows: add text or drop it"
        )
    order = np.random.default_rng(MIXTURE_SEED).permutation(rows)
    logger.info(
        "dataset_mixture: %s: %d of %d rows kept (weight %g)",
        source.label(),
        keep,
        rows,
        source.weight,
    )
    return ds.select(np.resize(order, keep))
