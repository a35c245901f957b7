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

import logging
import math

from hfmini.config.mixture import MixtureSource, parse_mixture
from hfmini.data.readers import expand_data_files, load_hub, load_local
from hfmini.data.splits import VALIDATION_SPLIT_NAMES
from hfmini.data.text_columns import check_text_values
from hfmini.errors import HfminiError

logger = logging.getLogger("hfmini.data.prepare")

# Every shuffle of the mixture uses this seed, not the run's: the mixture stays the same rows when
# only `seed` changes, and a resumed run sees the same data (alignment-handbook also uses 42).
MIXTURE_SEED = 42


def load_mixture(data_args) -> tuple:
    """(DatasetDict {"train", maybe "validation"} with one column, text_column; origins), as
    `sources.load_raw` returns. Validation: validation_file, else every source's own validation
    split, else none (splits.hold_out_validation then takes the mixture's tail)."""
    from datasets import DatasetDict, concatenate_datasets

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
    concatenated (unweighted), else None for splits.hold_out_validation to take the mixture's tail."""
    from datasets import concatenate_datasets

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
    what = f"dataset_mixture source {source.label()}"
    if source.kind == "file":
        train = load_local({"train": files})["train"]
        origins = {"train": ("dataset_mixture file", files)}
        validation = None
    else:
        raw = load_hub(source.name, source.config)
        if source.split not in raw:
            raise HfminiError(
                f"{what} has no split {source.split!r}; its splits are {', '.join(raw)}: set "
                "split= in its entry to one of them"
            )
        train = raw[source.split]
        names = [n for n in VALIDATION_SPLIT_NAMES if n in raw and n != source.split]
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
